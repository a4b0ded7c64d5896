"""The container's termination message: the one line `kubectl describe` and the Workspace
controller show for why a pod's container failed; and `command_failed`, which says a
runtime command's failure in both places it is read: that message and the log.

Kubernetes reads ``/dev/termination-log`` (``terminationMessagePath``) when the container
exits; the Workspace controller copies it into the workspace's condition and an Event.
Outside a pod the file is usually not writable, and that is fine.
"""

from __future__ import annotations

import logging
import os
from typing import Any

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


def command_failed(log: logging.Logger, command: str, message: str, exit_code: int, *,
                   termination_log: str | None = None, **fields: Any) -> int:
    """Report a failed run of ``command`` (``kaito fetch``...): an error record in the
    shared log layout ("command failed", the ``command``, ``error``, ``exit_code`` and
    ``fields``) and ``<command>: <message>`` as the termination message. Returns
    ``exit_code``, for ``return command_failed(...)``."""
    log.error("command failed", extra={"command": command, "error": message,
                                       "exit_code": exit_code, **fields})
    write_termination_message(f"{command}: {message}\n", termination_log)
    return exit_code
