"""A controller: watches feed a work queue; N workers run the reconciler on its keys.

The mirror of controller-runtime's internal controller. Events pass the watch's
predicates, are mapped to `Request`s and enqueued by key; workers start only once every
watched informer has synced, so a reconciler never acts on a half-filled cache. The
reconcile outcome decides the key's fate: success forgets its backoff, an exception
retries it rate-limited, a `TerminalError` drops it, `requeue_after_seconds` schedules
it. `shutdown()` stops handing out keys and lets in-flight reconciles finish.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Iterable
from typing import Protocol

from controller.handlers import MapFunc, enqueue_object
from controller.metrics import Metrics
from controller.predicates import Event, Predicate
from controller.ratelimit import RateLimiter
from controller.reconcile import Reconciler, Request, Result, TerminalError
from controller.workqueue import ShutDown, WorkQueue

log = logging.getLogger(__name__)

EventHandler = Callable[[Event], None]


class EventSource(Protocol):
    """What a controller watches: an informer, in practice."""

    @property
    def has_synced(self) -> bool: ...

    async def wait_synced(self) -> None: ...

    def add_handler(self, handler: EventHandler) -> None:
        """Register `handler`; objects already known are replayed to it as creates."""


class Controller:
    """Runs `reconciler` on keys from its watches with `workers` concurrent workers."""

    def __init__(
        self,
        name: str,
        reconciler: Reconciler,
        *,
        workers: int = 1,
        metrics: Metrics | None = None,
        rate_limiter: RateLimiter | None = None,
    ) -> None:
        if workers < 1:
            raise ValueError("a controller needs at least one worker")
        if not name:
            raise ValueError("a controller needs a name")
        self.name = name
        self.workers = workers
        self._reconciler = reconciler
        self._metrics = metrics
        self.queue = WorkQueue(
            name,
            rate_limiter=rate_limiter,
            metrics=metrics.queue_metrics(name) if metrics is not None else None,
        )
        self._sources: list[EventSource] = []
        self._pending_handlers: list[tuple[EventSource, EventHandler]] = []
        self.terminal_errors: dict[str, str] = {}
        if metrics is not None:
            metrics.max_concurrent_reconciles.labels(controller=name).set(workers)
            metrics.active_workers.labels(controller=name).set(0)
            for result in ("success", "error", "requeue", "requeue_after"):
                metrics.reconcile_total.labels(controller=name, result=result)
            metrics.reconcile_errors_total.labels(controller=name)
            metrics.terminal_reconcile_errors_total.labels(controller=name)

    @property
    def has_synced(self) -> bool:
        return all(source.has_synced for source in self._sources)

    def watch(
        self,
        source: EventSource,
        map_func: MapFunc = enqueue_object,
        predicates: Iterable[Predicate] = (),
    ) -> None:
        """Enqueue `map_func(event)` for every event from `source` that passes `predicates`.

        As in controller-runtime, the handler is attached when the controller starts
        (on the leader only), and the source replays what it already holds, so a
        standby replica does not pile keys into a queue nobody works on.
        """
        checks = tuple(predicates)

        def handle(event: Event) -> None:
            if all(check(event) for check in checks):
                for request in map_func(event):
                    self.queue.add(request.key)

        self._sources.append(source)
        self._pending_handlers.append((source, handle))

    async def run(self) -> None:
        """Wait for the caches, then work until `shutdown()` (returns) or cancellation."""
        pending, self._pending_handlers = self._pending_handlers, []
        for source, handler in pending:
            source.add_handler(handler)
        for source in self._sources:
            await source.wait_synced()
        log.info("starting workers", extra={"controller": self.name, "workers": self.workers})
        async with asyncio.TaskGroup() as group:
            for index in range(self.workers):
                group.create_task(self._work(), name=f"controller-{self.name}-worker-{index}")
        log.info("workers stopped", extra={"controller": self.name})

    def shutdown(self) -> None:
        self.queue.shutdown()

    async def _work(self) -> None:
        while True:
            try:
                key = await self.queue.get()
            except ShutDown:
                return
            try:
                await self._reconcile_key(str(key))
            finally:
                self.queue.done(key)
            # A queue with keys waiting hands the next one out without a suspension, and a
            # reconcile with nothing to write may not suspend either: let the event loop
            # run (probes, /metrics, informers) between two, or a long queue starves it.
            await asyncio.sleep(0)

    async def _reconcile_key(self, key: str) -> None:
        try:
            request = Request.from_key(key)
        except ValueError:
            log.error("dropping malformed key", extra={"controller": self.name, "key": key})
            self.queue.forget(key)
            return
        loop = asyncio.get_running_loop()
        started = loop.time()
        metrics = self._metrics
        if metrics is not None:
            metrics.active_workers.labels(controller=self.name).inc()
        try:
            result = await self._reconciler.reconcile(request)
        except asyncio.CancelledError:
            raise
        except TerminalError as exc:
            self._record_error(key, terminal=True)
            self.terminal_errors[key] = str(exc)
            log.error(
                "reconcile failed terminally",
                extra={"controller": self.name, "key": key, "error": str(exc)},
            )
            self.queue.forget(key)
        except Exception as exc:  # noqa: BLE001 - any reconcile failure is retried
            self._record_error(key, terminal=False)
            log.warning(
                "reconcile failed, will retry",
                extra={
                    "controller": self.name, "key": key, "error": repr(exc),
                    "retries": self.queue.num_requeues(key),
                },
            )
            self.queue.add_rate_limited(key)
        else:
            self.terminal_errors.pop(key, None)
            self._apply_result(key, result)
        finally:
            if metrics is not None:
                metrics.active_workers.labels(controller=self.name).dec()
                metrics.reconcile_time_seconds.labels(controller=self.name).observe(
                    loop.time() - started
                )

    def _record_error(self, key: str, *, terminal: bool) -> None:
        if self._metrics is None:
            return
        self._metrics.reconcile_total.labels(controller=self.name, result="error").inc()
        self._metrics.reconcile_errors_total.labels(controller=self.name).inc()
        if terminal:
            self._metrics.terminal_reconcile_errors_total.labels(controller=self.name).inc()

    def _apply_result(self, key: str, result: Result) -> None:
        if result.requeue_after_seconds:
            outcome = "requeue_after"
            self.queue.forget(key)
            self.queue.add_after(key, result.requeue_after_seconds)
        elif result.requeue:
            outcome = "requeue"
            self.queue.add_rate_limited(key)
        else:
            outcome = "success"
            self.queue.forget(key)
        if self._metrics is not None:
            self._metrics.reconcile_total.labels(controller=self.name, result=outcome).inc()
