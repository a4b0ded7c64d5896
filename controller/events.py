"""Kubernetes Events (events.k8s.io/v1) for the steps a user wants in `kubectl describe`.

One recorder per controller. It remembers what it last said about each object, so a
resync that observes the same situation says nothing new: Events mark steps and changes,
they are not a log. Events are written in the background (a reconcile does not wait for
them); a failure to write one is logged and never fails a reconcile.
"""

from __future__ import annotations

import asyncio
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
    """Says what changed about an object as an Event, without making the reconcile wait.

    ``record`` decides at once (an unchanged reason + note says nothing) and queues the
    Event; ``senders`` background tasks write the queue out, as client-go's broadcaster
    does, so a reconcile's round trips to the apiserver are its own writes only. A full
    queue drops the Event with a warning; a failed write is logged, and the object may be
    told again by a later pass.
    """

    def __init__(self, client: KubeClient, controller: str, instance: str, *,
                 senders: int = 4, queue_size: int = 1000) -> None:
        if senders < 1 or queue_size < 1:
            raise ValueError("need senders >= 1 and queue_size >= 1")
        self._client = client
        self._controller = controller
        self._instance = instance
        self._said: OrderedDict[tuple[str, str], str] = OrderedDict()
        self._senders = senders
        self._queue_size = queue_size
        self._queue: asyncio.Queue[tuple[dict[str, Any], tuple[str, str], str]] | None = None
        self._tasks: list[asyncio.Task[None]] = []

    async def record(
        self, regarding: Mapping[str, Any], event_type: str, reason: str, note: str,
        *, action: str = "Reconcile",
    ) -> bool:
        """Queue the Event unless it repeats the last one for this object and reason;
        returns whether it was queued."""
        uid = str((regarding.get("metadata") or {}).get("uid", ""))
        key = (uid, reason)
        if self._said.get(key) == note:
            return False
        event = build_event(regarding, event_type, reason, note, action=action,
                            controller=self._controller, instance=self._instance,
                            now=time.time())
        queue = self._started()
        try:
            queue.put_nowait((event, key, note))
        except asyncio.QueueFull:
            log.warning("event dropped: too many waiting to be written",
                        extra={"reason": reason, "waiting": queue.qsize()})
            return False
        self._said[key] = note
        self._said.move_to_end(key)
        while len(self._said) > _REMEMBERED_OBJECTS:
            self._said.popitem(last=False)
        return True

    def _started(self) -> asyncio.Queue[tuple[dict[str, Any], tuple[str, str], str]]:
        if self._queue is None:
            self._queue = asyncio.Queue(self._queue_size)
            self._tasks = [asyncio.create_task(self._send(self._queue), name=f"events-{i}")
                           for i in range(self._senders)]
        return self._queue

    async def _send(self, queue: asyncio.Queue[tuple[dict[str, Any], tuple[str, str], str]]
                    ) -> None:
        while True:
            event, key, note = await queue.get()
            try:
                await self._client.create(EVENTS, event)
            except KubeError as error:
                log.warning("event not recorded",
                            extra={"reason": event["reason"], "error": str(error)})
                if self._said.get(key) == note:
                    del self._said[key]  # so that a later pass may say it again
            finally:
                queue.task_done()

    async def flush(self) -> None:
        """Wait until every queued Event has been written (or has failed)."""
        if self._queue is not None:
            await self._queue.join()

    async def close(self, timeout_seconds: float = 5.0) -> None:
        """Write what is queued (for at most ``timeout_seconds``), then stop the senders."""
        if self._queue is None:
            return
        try:
            await asyncio.wait_for(self.flush(), timeout_seconds)
        except TimeoutError:
            log.warning("events not written at shutdown", extra={"waiting": self._queue.qsize()})
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        self._queue, self._tasks = None, []

    def forget(self, uid: str) -> None:
        """Drop what was said about a deleted object."""
        for key in [key for key in self._said if key[0] == uid]:
            del self._said[key]
