"""Work queue and rate limiter semantics (client-go's, in asyncio)."""

from __future__ import annotations

import asyncio
import random

import pytest

from controller.metrics import Metrics
from controller.ratelimit import (
    BucketRateLimiter,
    ItemExponentialFailureRateLimiter,
    MaxOfRateLimiter,
    default_controller_rate_limiter,
)
from controller.workqueue import ShutDown, WorkQueue

pytestmark = pytest.mark.unit


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def sample(metrics: Metrics, metric: str, name: str) -> float:
    # controller-runtime labels workqueue series with the queue (= controller) name twice.
    value = metrics.registry.get_sample_value(metric, {"name": name, "controller": name})
    return 0.0 if value is None else value


# -- rate limiters ---------------------------------------------------------------------


def test_exponential_backoff_doubles_from_5ms_and_caps_at_1000s() -> None:
    limiter = ItemExponentialFailureRateLimiter()
    delays = [limiter.when("a") for _ in range(20)]
    assert delays[:4] == pytest.approx([0.005, 0.01, 0.02, 0.04])
    assert delays[17] == pytest.approx(655.36)
    assert delays[18] == 1000.0 and delays[19] == 1000.0
    assert limiter.num_requeues("a") == 20
    assert limiter.when("b") == pytest.approx(0.005)  # per item
    limiter.forget("a")
    assert limiter.num_requeues("a") == 0
    assert limiter.when("a") == pytest.approx(0.005)


def test_exponential_backoff_survives_huge_failure_counts() -> None:
    limiter = ItemExponentialFailureRateLimiter(0.005, 1000.0)
    for _ in range(2000):
        delay = limiter.when("x")
    assert delay == 1000.0


def test_token_bucket_allows_burst_100_then_10_per_second() -> None:
    clock = FakeClock()
    bucket = BucketRateLimiter(qps=10, burst=100, clock=clock)
    assert [bucket.when(i) for i in range(100)] == [0.0] * 100
    assert bucket.when("101st") == pytest.approx(0.1)
    assert bucket.when("102nd") == pytest.approx(0.2)
    clock.now += 1.0  # ten tokens refill, two were already promised: eight left
    assert [bucket.when(i) for i in range(8)] == [0.0] * 8
    assert bucket.when("ninth") == pytest.approx(0.1)
    clock.now += 100.0  # refills to the burst, never beyond it
    assert [bucket.when(i) for i in range(100)] == [0.0] * 100
    assert bucket.when("over") > 0


def test_max_of_uses_the_longest_delay() -> None:
    clock = FakeClock()
    limiter = default_controller_rate_limiter(clock=clock)
    # 100 different failing keys: per-item backoff is 5 ms each, the bucket is still full.
    assert [limiter.when(i) for i in range(100)] == pytest.approx([0.005] * 100)
    # The bucket now dominates the per-item 5 ms.
    assert limiter.when("storm") == pytest.approx(0.1)
    combined = MaxOfRateLimiter(ItemExponentialFailureRateLimiter(1.0, 10.0))
    assert combined.when("k") == 1.0 and combined.num_requeues("k") == 1
    combined.forget("k")
    assert combined.num_requeues("k") == 0


def test_rate_limiters_reject_nonsense() -> None:
    with pytest.raises(ValueError):
        ItemExponentialFailureRateLimiter(0.0, 1.0)
    with pytest.raises(ValueError):
        BucketRateLimiter(qps=0)
    with pytest.raises(ValueError):
        MaxOfRateLimiter()


# -- queue -----------------------------------------------------------------------------


async def test_adds_are_deduplicated_and_fifo() -> None:
    metrics = Metrics()
    queue = WorkQueue("q", metrics=metrics.queue_metrics("q"))
    for key in ["a", "b", "a", "c", "b", "a"]:
        queue.add(key)
    assert len(queue) == 3
    assert sample(metrics, "workqueue_depth", name="q") == 3
    assert sample(metrics, "workqueue_adds_total", name="q") == 3
    assert [await queue.get() for _ in range(3)] == ["a", "b", "c"]
    assert sample(metrics, "workqueue_depth", name="q") == 0
    assert sample(metrics, "workqueue_queue_duration_seconds_count", name="q") == 3


async def test_key_added_while_processing_waits_for_done() -> None:
    queue = WorkQueue("q")
    queue.add("a")
    assert await queue.get() == "a"
    queue.add("a")  # an event arrives while a worker holds "a"
    assert len(queue) == 0, "a second worker must not get the key in flight"
    second_worker = asyncio.create_task(queue.get())
    await asyncio.sleep(0.01)
    assert not second_worker.done()
    queue.done("a")
    assert await asyncio.wait_for(second_worker, 1) == "a"
    queue.done("a")
    assert len(queue) == 0 and queue.processing == frozenset()


async def test_done_for_unknown_key_is_an_error() -> None:
    queue = WorkQueue("q")
    with pytest.raises(ValueError, match="not being processed"):
        queue.done("ghost")


async def test_many_workers_never_share_a_key() -> None:
    queue = WorkQueue("q")
    in_flight: set[str] = set()
    overlaps: list[str] = []
    processed: dict[str, int] = {}
    rng = random.Random(7)

    async def worker() -> None:
        while True:
            try:
                key = str(await queue.get())
            except ShutDown:
                return
            if key in in_flight:
                overlaps.append(key)
            in_flight.add(key)
            await asyncio.sleep(rng.random() / 500)
            if rng.random() < 0.3:
                queue.add(key)  # re-added while in flight
            in_flight.discard(key)
            processed[key] = processed.get(key, 0) + 1
            queue.done(key)

    workers = [asyncio.create_task(worker()) for _ in range(8)]
    for _ in range(2000):
        queue.add(f"k{rng.randrange(20)}")
        if rng.random() < 0.2:
            await asyncio.sleep(0)
    while len(queue) or queue.processing:
        await asyncio.sleep(0.01)
    queue.shutdown()
    await asyncio.gather(*workers)
    assert overlaps == []
    assert set(processed) == {f"k{i}" for i in range(20)}


async def test_add_after_delays_and_earliest_time_wins() -> None:
    queue = WorkQueue("q")
    queue.add_after("slow", 0.3)
    queue.add_after("slow", 0.05)  # earlier wins
    queue.add_after("slow", 5.0)  # later is ignored
    assert len(queue) == 0 and queue.waiting_count == 1
    started = asyncio.get_running_loop().time()
    assert await asyncio.wait_for(queue.get(), 1) == "slow"
    waited = asyncio.get_running_loop().time() - started
    assert 0.04 <= waited < 0.28
    queue.done("slow")
    queue.add_after("now", 0)
    assert len(queue) == 1


async def test_add_after_for_a_queued_key_does_not_duplicate() -> None:
    queue = WorkQueue("q")
    queue.add("a")
    queue.add_after("a", 0.01)
    await asyncio.sleep(0.05)
    assert len(queue) == 1


async def test_rate_limited_adds_back_off_per_item() -> None:
    metrics = Metrics()
    queue = WorkQueue(
        "q",
        rate_limiter=ItemExponentialFailureRateLimiter(0.02, 1.0),
        metrics=metrics.queue_metrics("q"),
    )
    loop = asyncio.get_running_loop()
    gaps = []
    queue.add("k")
    key = await queue.get()
    for _ in range(3):
        failed_at = loop.time()
        queue.add_rate_limited(key)
        queue.done(key)
        key = await asyncio.wait_for(queue.get(), 2)
        gaps.append(loop.time() - failed_at)
    assert queue.num_requeues("k") == 3
    assert gaps[0] >= 0.019 and gaps[1] >= 0.039 and gaps[2] >= 0.079
    assert sample(metrics, "workqueue_retries_total", name="q") == 3
    queue.forget("k")
    assert queue.num_requeues("k") == 0
    queue.done(key)


async def test_shutdown_wakes_workers_and_refuses_new_work() -> None:
    queue = WorkQueue("q")
    waiting = [asyncio.create_task(queue.get()) for _ in range(3)]
    await asyncio.sleep(0)
    queue.add("x")
    assert await asyncio.wait_for(waiting[0], 1) == "x"
    queue.add_after("later", 0.01)
    queue.shutdown()
    for task in waiting[1:]:
        with pytest.raises(ShutDown):
            await asyncio.wait_for(task, 1)
    queue.add("y")
    assert len(queue) == 0
    with pytest.raises(ShutDown):
        await queue.get()
    queue.done("x")  # the in-flight worker can still finish


async def test_cancelled_getter_passes_its_wakeup_on() -> None:
    queue = WorkQueue("q")
    first = asyncio.create_task(queue.get())
    second = asyncio.create_task(queue.get())
    await asyncio.sleep(0)
    queue.add("a")
    first.cancel()  # cancelled after being woken: the key must reach `second`
    assert await asyncio.wait_for(second, 1) == "a"
    with pytest.raises(asyncio.CancelledError):
        await first


async def test_in_flight_gauges_report_running_work() -> None:
    metrics = Metrics()
    queue = WorkQueue("q", metrics=metrics.queue_metrics("q"))
    queue.add("a")
    await queue.get()
    await asyncio.sleep(0.05)
    assert sample(metrics, "workqueue_longest_running_processor_seconds", name="q") >= 0.04
    assert sample(metrics, "workqueue_unfinished_work_seconds", name="q") >= 0.04
    queue.done("a")
    assert sample(metrics, "workqueue_unfinished_work_seconds", name="q") == 0
    assert sample(metrics, "workqueue_work_duration_seconds_count", name="q") == 1
