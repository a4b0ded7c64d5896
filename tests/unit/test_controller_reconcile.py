"""The reconcile contract: results, retries with backoff, terminal errors, draining."""

from __future__ import annotations

import asyncio
import itertools
from collections import Counter
from typing import Any

import pytest

from controller.controller import Controller, EventHandler
from controller.metrics import Metrics
from controller.predicates import Event, EventType
from controller.ratelimit import ItemExponentialFailureRateLimiter
from controller.reconcile import Request, Result, TerminalError

pytestmark = pytest.mark.unit


class FakeSource:
    """An already-synced event source the test fires events from."""

    def __init__(self, is_synced: bool = True) -> None:
        self.handlers: list[EventHandler] = []
        self.objects: dict[str, dict[str, Any]] = {}
        self._synced = asyncio.Event()
        if is_synced:
            self._synced.set()

    @property
    def has_synced(self) -> bool:
        return self._synced.is_set()

    async def wait_synced(self) -> None:
        await self._synced.wait()

    def mark_synced(self) -> None:
        self._synced.set()

    def add_handler(self, handler: EventHandler) -> None:
        self.handlers.append(handler)
        for obj in self.objects.values():  # replay, as the informer does
            handler(Event(EventType.CREATE, obj))

    def create(self, name: str, namespace: str = "ns", **meta: object) -> None:
        obj: dict[str, Any] = {"metadata": {"name": name, "namespace": namespace, **meta}}
        self.objects[f"{namespace}/{name}"] = obj
        for handler in self.handlers:
            handler(Event(EventType.CREATE, obj))


class Scripted:
    """A reconciler whose outcome per call is scripted; records calls and overlap."""

    def __init__(self, outcomes: dict[str, list[object]] | None = None, delay: float = 0.0):
        self.outcomes = outcomes or {}
        self.calls: list[tuple[str, float]] = []
        self.in_flight: set[str] = set()
        self.overlaps: list[str] = []
        self.delay = delay

    async def reconcile(self, request: Request) -> Result:
        key = request.key
        if key in self.in_flight:
            self.overlaps.append(key)
        self.in_flight.add(key)
        self.calls.append((key, asyncio.get_running_loop().time()))
        try:
            if self.delay:
                await asyncio.sleep(self.delay)
            script = self.outcomes.get(key)
            outcome = script.pop(0) if script else Result()
            if isinstance(outcome, BaseException):
                raise outcome
            assert isinstance(outcome, Result)
            return outcome
        finally:
            self.in_flight.discard(key)


def value(metrics: Metrics, metric: str, **labels: str) -> float:
    return metrics.registry.get_sample_value(metric, labels) or 0.0


async def run_until(controller: Controller, condition: object, timeout: float = 3.0) -> None:
    task = asyncio.create_task(controller.run())
    try:
        async with asyncio.timeout(timeout):
            while not condition():  # type: ignore[operator]
                await asyncio.sleep(0.005)
    finally:
        controller.shutdown()
        await asyncio.wait_for(task, 2)


def test_request_keys_round_trip_and_reject_garbage() -> None:
    assert Request.from_key("ns/a") == Request("a", "ns")
    assert Request.from_key("node-1") == Request("node-1")
    assert Request("a", "ns").key == "ns/a"
    for bad in ["", "a/b/c", "/a", "ns/"]:
        with pytest.raises(ValueError):
            Request.from_key(bad)
    with pytest.raises(ValueError):
        Result(requeue_after_seconds=-1)


async def test_success_is_counted_and_backoff_forgotten() -> None:
    metrics = Metrics()
    reconciler = Scripted()
    source = FakeSource()
    controller = Controller("demo", reconciler, workers=2, metrics=metrics)
    controller.watch(source)
    source.create("a")
    source.create("b")
    await run_until(controller, lambda: len(reconciler.calls) == 2)
    assert sorted(key for key, _ in reconciler.calls) == ["ns/a", "ns/b"]
    assert value(metrics, "controller_runtime_reconcile_total", controller="demo",
                 result="success") == 2
    assert value(metrics, "controller_runtime_reconcile_time_seconds_count",
                 controller="demo") == 2
    assert value(metrics, "controller_runtime_max_concurrent_reconciles",
                 controller="demo") == 2
    assert controller.queue.num_requeues("ns/a") == 0


async def test_errors_are_retried_with_growing_backoff() -> None:
    metrics = Metrics()
    reconciler = Scripted({"ns/a": [RuntimeError("1"), RuntimeError("2"), RuntimeError("3")]})
    source = FakeSource()
    controller = Controller(
        "demo", reconciler, metrics=metrics,
        rate_limiter=ItemExponentialFailureRateLimiter(0.02, 10.0),
    )
    controller.watch(source)
    source.create("a")
    await run_until(controller, lambda: len(reconciler.calls) == 4)
    times = [t for _, t in reconciler.calls]
    gaps = [later - earlier for earlier, later in itertools.pairwise(times)]
    assert gaps[0] >= 0.019 and gaps[1] >= 0.039 and gaps[2] >= 0.079
    assert value(metrics, "controller_runtime_reconcile_errors_total", controller="demo") == 3
    assert value(metrics, "controller_runtime_reconcile_total", controller="demo",
                 result="error") == 3
    assert value(metrics, "controller_runtime_reconcile_total", controller="demo",
                 result="success") == 1
    assert value(metrics, "workqueue_retries_total", name="demo", controller="demo") == 3
    assert controller.queue.num_requeues("ns/a") == 0, "success resets the backoff"


async def test_terminal_error_is_recorded_and_not_retried() -> None:
    metrics = Metrics()
    reconciler = Scripted({"ns/bad": [TerminalError("spec.model is not a preset")]})
    source = FakeSource()
    controller = Controller("demo", reconciler, metrics=metrics)
    controller.watch(source)
    source.create("bad")
    await run_until(controller, lambda: controller.terminal_errors)
    await asyncio.sleep(0.1)
    assert len(reconciler.calls) == 1
    assert controller.terminal_errors == {"ns/bad": "spec.model is not a preset"}
    assert value(metrics, "controller_runtime_terminal_reconcile_errors_total",
                 controller="demo") == 1
    assert value(metrics, "workqueue_retries_total", name="demo", controller="demo") == 0


async def test_requeue_after_reconciles_again_later() -> None:
    metrics = Metrics()
    reconciler = Scripted({"ns/a": [Result(requeue_after_seconds=0.1), Result()]})
    source = FakeSource()
    controller = Controller("demo", reconciler, metrics=metrics)
    controller.watch(source)
    source.create("a")
    await run_until(controller, lambda: len(reconciler.calls) == 2)
    first, second = (t for _, t in reconciler.calls)
    assert second - first >= 0.09
    assert value(metrics, "controller_runtime_reconcile_total", controller="demo",
                 result="requeue_after") == 1


async def test_requeue_true_retries_rate_limited() -> None:
    reconciler = Scripted({"ns/a": [Result(requeue=True), Result()]})
    source = FakeSource()
    controller = Controller("demo", reconciler,
                            rate_limiter=ItemExponentialFailureRateLimiter(0.01, 1.0))
    controller.watch(source)
    source.create("a")
    await run_until(controller, lambda: len(reconciler.calls) == 2)


async def test_workers_wait_for_the_cache_to_sync() -> None:
    reconciler = Scripted()
    source = FakeSource(is_synced=False)
    controller = Controller("demo", reconciler)
    controller.watch(source)
    source.create("a")
    task = asyncio.create_task(controller.run())
    await asyncio.sleep(0.05)
    assert reconciler.calls == [] and not controller.has_synced
    source.mark_synced()
    async with asyncio.timeout(2):
        while not reconciler.calls:
            await asyncio.sleep(0.005)
    controller.shutdown()
    await task


async def test_events_during_a_reconcile_never_run_the_key_concurrently() -> None:
    reconciler = Scripted(delay=0.01)
    source = FakeSource()
    controller = Controller("demo", reconciler, workers=8)
    controller.watch(source)
    task = asyncio.create_task(controller.run())
    for round_ in range(30):
        for i in range(10):
            source.create(f"o{i}")
        await asyncio.sleep(0.003 * (round_ % 3))
    async with asyncio.timeout(5):
        while len(controller.queue) or controller.queue.processing:
            await asyncio.sleep(0.01)
    controller.shutdown()
    await task
    assert reconciler.overlaps == []
    counts = Counter(key for key, _ in reconciler.calls)
    assert set(counts) == {f"ns/o{i}" for i in range(10)}
    assert max(counts.values()) < 30, "events for a queued key are coalesced"


async def test_shutdown_drains_in_flight_reconciles() -> None:
    reconciler = Scripted(delay=0.2)
    source = FakeSource()
    controller = Controller("demo", reconciler, workers=2)
    controller.watch(source)
    for name in ("a", "b", "c"):
        source.create(name)
    task = asyncio.create_task(controller.run())
    async with asyncio.timeout(2):
        while len(reconciler.in_flight) < 2:
            await asyncio.sleep(0.005)
    controller.shutdown()
    await asyncio.wait_for(task, 2)
    assert reconciler.in_flight == set(), "in-flight reconciles ran to completion"
    assert len(reconciler.calls) == 2, "no new key was started after shutdown"


def test_controller_rejects_bad_configuration() -> None:
    with pytest.raises(ValueError):
        Controller("demo", Scripted(), workers=0)
    with pytest.raises(ValueError):
        Controller("", Scripted())
