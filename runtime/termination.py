"""The container's termination message: the one line `kubectl describe` and the Workspace
controller show for why a pod's container failed.

Kubernetes reads ``/dev/termination-log`` (``terminationMessagePath``) when the container
exits; the Workspace controller copies it into the workspace's condition and an Event.
Outside a pod the file is usually not writable, and that is fine.
"""

from __future__ import annotations

import os

TERMINATION_LOG = "/dev/termination-log"
_TERMINATION_MESSAGE_LIMIT = 4096  # the kubelet keeps at most 4 KiB


def write_termination_message(message: str, path: str | None = None) -> None:
    """Tell ``kubectl describe`` why the container failed, when the file is writable.
    The path is ``KAITO_TERMINATION_LOG`` when set (tests), else the pod's."""
    path = path or os.environ.get("KAITO_TERMINATION_LOG", TERMINATION_LOG)
    try:
        with open(path, "w", encoding="utf-8") as handle:
            handle.write(message[:_TERMINATION_MESSAGE_LIMIT])
    except OSError:
        pass
