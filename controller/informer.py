"""An informer: list, then watch, keeping a `Cache` current and telling handlers.

The loop follows client-go's reflector and kopf's watcher: a paginated list fills the
cache (and, on a relist, replays the differences as events), then a watch with
bookmarks resumes from the list's resourceVersion, tracking the version of every event
so a reconnect loses nothing. A 410 Gone (version compacted away) triggers a relist; a
dropped, truncated or silent stream triggers a reconnect with capped exponential
backoff; the service-account token is re-read before each reconnect. Two timers guard a
half-open connection: the socket read timeout and an event inactivity deadline.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
from collections.abc import Callable
from typing import TypedDict

from controller.cache import Cache, IndexFunc, object_key, strip_managed_fields
from controller.kube.client import KubeClient, WatchEvent
from controller.kube.errors import ApiUnavailable, Gone, KubeError, TooManyRequests
from controller.kube.resources import KubeObject, ResourceType
from controller.metrics import Metrics
from controller.predicates import Event, EventType

log = logging.getLogger(__name__)

EventHandler = Callable[[Event], None]
Transform = Callable[[KubeObject], KubeObject]


class InformerOptions(TypedDict, total=False):
    """Tuning knobs a manager passes to every informer it creates."""

    watch_timeout_seconds: float
    read_timeout_seconds: float
    inactivity_timeout_seconds: float
    backoff_initial_seconds: float
    backoff_max_seconds: float
    page_size: int


class _WatchRestart(Exception):
    """Internal: a requested watch restart interrupted the stream."""


class Informer:
    """Keeps `cache` in step with one resource (optionally one namespace / selector)."""

    def __init__(
        self,
        client: KubeClient,
        resource: ResourceType,
        *,
        namespace: str | None = None,
        label_selector: str | None = None,
        field_selector: str | None = None,
        indexers: dict[str, IndexFunc] | None = None,
        transform: Transform | None = strip_managed_fields,
        metrics: Metrics | None = None,
        watch_timeout_seconds: float = 300.0,
        read_timeout_seconds: float = 70.0,
        inactivity_timeout_seconds: float = 70.0,
        backoff_initial_seconds: float = 0.2,
        backoff_max_seconds: float = 30.0,
        page_size: int = 500,
    ) -> None:
        if namespace and not resource.namespaced:
            raise ValueError(f"{resource.kind} is cluster-scoped; cannot watch one namespace")
        if min(watch_timeout_seconds, read_timeout_seconds, inactivity_timeout_seconds) <= 0:
            raise ValueError("informer timeouts must be positive")
        self.resource = resource
        self.namespace = namespace
        self.label_selector = label_selector
        # e.g. metadata.name=X: one object, which RBAC can grant by resourceNames.
        self.field_selector = field_selector
        self.cache = Cache(indexers)
        self._client = client
        self._transform = transform
        self._metrics = metrics
        self._watch_timeout_seconds = watch_timeout_seconds
        self._read_timeout_seconds = read_timeout_seconds
        self._inactivity_timeout_seconds = inactivity_timeout_seconds
        self._backoff_initial_seconds = backoff_initial_seconds
        self._backoff_max_seconds = backoff_max_seconds
        self._page_size = page_size
        self._handlers: list[EventHandler] = []
        self._synced = asyncio.Event()
        self._resource_version: str | None = None
        self._stream_task: asyncio.Task[None] | None = None
        self._restart_version: str | None = None
        self.relist_count = 0
        self.watch_count = 0
        if metrics is not None:
            metrics.informer_cached_objects.labels(informer=self.name).set_function(
                lambda: len(self.cache))

    def __repr__(self) -> str:
        return f"Informer({self.resource}, namespace={self.namespace!r})"

    @property
    def name(self) -> str:
        return f"{self.resource}/{self.namespace or '*'}"

    @property
    def has_synced(self) -> bool:
        return self._synced.is_set()

    @property
    def resource_version(self) -> str | None:
        return self._resource_version

    async def wait_synced(self) -> None:
        await self._synced.wait()

    def add_handler(self, handler: EventHandler) -> None:
        """Register `handler`; objects already cached are replayed to it as creates."""
        self._handlers.append(handler)
        for obj in self.cache:
            self._call(handler, Event(EventType.CREATE, obj))

    def restart_watch(self, resource_version: str | None = None) -> None:
        """Drop the current watch and resume from `resource_version` (default: the last).

        For fault injection and operations: resuming from a compacted version makes
        the server answer 410 Gone, which must end in a relist.
        """
        if resource_version is not None:
            self._restart_version = resource_version
        if self._stream_task is not None and not self._stream_task.done():
            self._stream_task.cancel(msg="restart requested")

    async def run(self) -> None:
        """List and watch until cancelled; never returns otherwise."""
        consecutive_failures = 0
        needs_list = True
        while True:
            reason = "timeout"
            try:
                if needs_list:
                    await self._list()
                    needs_list = False
                progressed = await self._watch()
                if progressed:
                    consecutive_failures = 0
                else:
                    consecutive_failures += 1  # closed at once: do not spin
            except Gone:
                reason = "gone"
                needs_list = True
                log.info("resource version expired, relisting", extra={"informer": self.name})
                consecutive_failures += 1
            except _WatchRestart:
                reason = "restart"
                consecutive_failures = 0
            except (KubeError, TimeoutError) as exc:
                reason = "error"
                consecutive_failures += 1
                log.warning(
                    "watch failed, reconnecting",
                    extra={"informer": self.name, "error": str(exc) or type(exc).__name__,
                           "failures": consecutive_failures},
                )
                if isinstance(exc, TooManyRequests):
                    await asyncio.sleep(min(exc.retry_after_seconds, self._backoff_max_seconds))
            if self._metrics is not None:
                self._metrics.informer_watch_restarts_total.labels(
                    resource=str(self.resource), reason=reason
                ).inc()
            # The first failure after progress retries at once (a 410 relists right away);
            # repeated failures back off exponentially with jitter.
            if consecutive_failures > 1:
                await asyncio.sleep(self._backoff_seconds(consecutive_failures - 1))
            self._client.refresh_credentials()

    def _backoff_seconds(self, failures: int) -> float:
        delay = min(self._backoff_initial_seconds * 2.0 ** min(failures - 1, 30),
                    self._backoff_max_seconds)
        return delay * random.uniform(0.8, 1.2)

    async def _list(self) -> None:
        page = await self._client.list_all(
            self.resource, self.namespace, label_selector=self.label_selector,
            page_size=self._page_size, **self._field_selector_arg(),
        )
        objects = [self._prepare(obj) for obj in page.items]
        delta = self.cache.replace(objects)
        self._resource_version = page.resource_version
        self.relist_count += 1
        if self._metrics is not None:
            self._metrics.informer_relists_total.labels(resource=str(self.resource)).inc()
        log.info(
            "listed",
            extra={"informer": self.name, "objects": len(objects),
                   "resource_version": page.resource_version},
        )
        for obj in delta.added:
            self._dispatch(Event(EventType.CREATE, obj))
        for old, new in delta.updated:
            self._dispatch(Event(EventType.UPDATE, new, old))
        for obj in delta.deleted:
            self._dispatch(Event(EventType.DELETE, obj))
        self._synced.set()

    async def _watch(self) -> bool:
        """One watch; True when it delivered events or lasted (i.e. made progress)."""
        if self._restart_version is not None:
            self._resource_version, self._restart_version = self._restart_version, None
        self.watch_count += 1
        loop = asyncio.get_running_loop()
        started = loop.time()
        timeout_seconds = int(self._watch_timeout_seconds * random.uniform(1.0, 2.0))
        delivered = 0

        async def consume() -> None:
            nonlocal delivered
            stream = self._client.watch(
                self.resource, self.namespace,
                resource_version=self._resource_version or "0",
                label_selector=self.label_selector,
                timeout_seconds=timeout_seconds,
                **self._field_selector_arg(),
                read_timeout_seconds=self._read_timeout_seconds,
            )
            async with contextlib.aclosing(stream):
                async with asyncio.timeout_at(
                    loop.time() + self._inactivity_timeout_seconds
                ) as guard:
                    async for event in stream:
                        guard.reschedule(loop.time() + self._inactivity_timeout_seconds)
                        self._apply(event)
                        delivered += 1

        self._stream_task = asyncio.create_task(consume(), name=f"informer-watch-{self.name}")
        try:
            await asyncio.shield(self._stream_task)
        except asyncio.CancelledError:
            current = asyncio.current_task()
            if current is not None and current.cancelling():
                self._stream_task.cancel()
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await self._stream_task
                raise
            raise _WatchRestart() from None
        except TimeoutError as exc:
            raise ApiUnavailable("watch inactive for too long") from exc
        finally:
            self._stream_task = None
        return delivered > 0 or loop.time() - started >= 1.0

    def _field_selector_arg(self) -> dict[str, str]:
        # Only when set, so clients (and test doubles) without field selectors still work.
        return {"field_selector": self.field_selector} if self.field_selector else {}

    def _prepare(self, obj: KubeObject) -> KubeObject:
        return self._transform(obj) if self._transform is not None else obj

    def _apply(self, event: WatchEvent) -> None:
        metadata = event.object.get("metadata") or {}
        version = metadata.get("resourceVersion")
        if event.type == "BOOKMARK":
            if version:
                self._resource_version = str(version)
            return
        if event.type not in ("ADDED", "MODIFIED", "DELETED"):
            log.warning("unknown watch event", extra={"informer": self.name, "type": event.type})
            return
        obj = self._prepare(event.object)
        obj.setdefault("apiVersion", self.resource.api_version)
        obj.setdefault("kind", self.resource.kind)
        if event.type == "DELETED":
            old = self.cache.delete(object_key(obj))
            self._dispatch(Event(EventType.DELETE, old if old is not None else obj))
        else:
            previous = self.cache.upsert(obj)
            if previous is None:
                self._dispatch(Event(EventType.CREATE, obj))
            else:
                self._dispatch(Event(EventType.UPDATE, obj, previous))
        if version:
            self._resource_version = str(version)
        if self._metrics is not None:
            self._metrics.informer_events_total.labels(
                resource=str(self.resource), type=event.type
            ).inc()

    def _dispatch(self, event: Event) -> None:
        for handler in self._handlers:
            self._call(handler, event)

    def _call(self, handler: EventHandler, event: Event) -> None:
        try:
            handler(event)
        except Exception:
            log.exception("event handler failed", extra={"informer": self.name})
