"""Kubernetes Events (events.k8s.io/v1) for the steps a user wants in `kubectl describe`.

One recorder per controller. It remembers what it last said about each object, so a
resync that observes the same situation says nothing new: Events mark steps and changes,
they are not a log. A failure to write an Event is logged and never fails a reconcile.
"""

from __future__ import annotations

import logging
import secrets
import time
from collections import OrderedDict
from collections.abc import Mapping
from typing import Any

from controller.kube.client import KubeClient
from controller.kube.errors import KubeError
from controller.kube.resources import EVENTS

log = logging.getLogger(__name__)

NORMAL = "Normal"
WARNING = "Warning"
_REMEMBERED_OBJECTS = 10_000


def build_event(
    regarding: Mapping[str, Any], event_type: str, reason: str, note: str, *,
    action: str, controller: str, instance: str, now: float,
) -> dict[str, Any]:
    """The Event object (pure but for the random name suffix)."""
    metadata = regarding.get("metadata") or {}
    namespace = metadata.get("namespace") or "default"
    micro = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(now)) + f".{int(now % 1 * 1e6):06d}Z"
    return {
        "apiVersion": "events.k8s.io/v1",
        "kind": "Event",
        "metadata": {"name": f"{metadata.get('name')}.{secrets.token_hex(8)}",
                     "namespace": namespace},
        "eventTime": micro,
        "reportingController": controller,
        "reportingInstance": instance,
        "action": action,
        "reason": reason,
        "note": note[:1024],
        "type": event_type,
        "regarding": {
            "apiVersion": regarding.get("apiVersion"),
            "kind": regarding.get("kind"),
            "name": metadata.get("name"),
            "namespace": metadata.get("namespace"),
            "uid": metadata.get("uid"),
        },
    }


class EventRecorder:
    """Writes an Event when what is said about an object (reason + note) changes."""

    def __init__(self, client: KubeClient, controller: str, instance: str) -> None:
        self._client = client
        self._controller = controller
        self._instance = instance
        self._said: OrderedDict[tuple[str, str], str] = OrderedDict()

    async def record(
        self, regarding: Mapping[str, Any], event_type: str, reason: str, note: str,
        *, action: str = "Reconcile",
    ) -> bool:
        """Write the Event unless it repeats the last one for this object and reason;
        returns whether it was written."""
        uid = str((regarding.get("metadata") or {}).get("uid", ""))
        key = (uid, reason)
        if self._said.get(key) == note:
            return False
        event = build_event(regarding, event_type, reason, note, action=action,
                            controller=self._controller, instance=self._instance,
                            now=time.time())
        try:
            await self._client.create(EVENTS, event)
        except KubeError as error:
            log.warning("event not recorded", extra={"reason": reason, "error": str(error)})
            return False
        self._said[key] = note
        self._said.move_to_end(key)
        while len(self._said) > _REMEMBERED_OBJECTS:
            self._said.popitem(last=False)
        return True

    def forget(self, uid: str) -> None:
        """Drop what was said about a deleted object."""
        for key in [key for key in self._said if key[0] == uid]:
            del self._said[key]
