"""An asyncio rate-limiting work queue with client-go's semantics.

Keys, not events, are queued: adding a key that is already waiting is a no-op, and a key
added while a worker holds it is parked ("dirty") and handed out again only after that
worker calls `done` - so no key is ever processed by two workers at once. `add_after`
delays an add (the earliest pending time wins) and `add_rate_limited` delays it by the
rate limiter's verdict, which is how failed reconciles back off.
"""

from __future__ import annotations

import asyncio
import heapq
import itertools
from collections import deque
from collections.abc import Callable, Hashable

from controller.metrics import QueueMetrics
from controller.ratelimit import RateLimiter, default_controller_rate_limiter


class ShutDown(Exception):
    """The queue is shut down: `get` has nothing more to hand out."""


class WorkQueue:
    """De-duplicating FIFO of keys with delayed and rate-limited adds."""

    def __init__(
        self,
        name: str,
        *,
        rate_limiter: RateLimiter | None = None,
        metrics: QueueMetrics | None = None,
        clock: Callable[[], float] | None = None,
    ) -> None:
        self.name = name
        self._rate_limiter = rate_limiter if rate_limiter is not None else (
            default_controller_rate_limiter()
        )
        self._metrics = metrics
        self._clock = clock
        self._queue: deque[Hashable] = deque()
        self._dirty: set[Hashable] = set()
        self._processing: set[Hashable] = set()
        self._added_at: dict[Hashable, float] = {}
        self._started_at: dict[Hashable, float] = {}
        self._getters: deque[asyncio.Future[None]] = deque()
        self._is_shutting_down = False
        # Delayed adds: key -> ready time, a heap of (ready, seq, key), one timer handle.
        self._waiting: dict[Hashable, float] = {}
        self._heap: list[tuple[float, int, Hashable]] = []
        self._seq = itertools.count()
        self._timer: asyncio.TimerHandle | None = None
        if metrics is not None:
            metrics.bind_in_flight(self._unfinished_seconds, self._longest_running_seconds)

    # -- introspection -------------------------------------------------------------------

    def __len__(self) -> int:
        """Keys ready to be handed out (not counting delayed or in-flight ones)."""
        return len(self._queue)

    @property
    def processing(self) -> frozenset[Hashable]:
        return frozenset(self._processing)

    @property
    def waiting_count(self) -> int:
        return len(self._waiting)

    def num_requeues(self, key: Hashable) -> int:
        return self._rate_limiter.num_requeues(key)

    def _now(self) -> float:
        return self._clock() if self._clock is not None else asyncio.get_running_loop().time()

    def _unfinished_seconds(self) -> float:
        if not self._started_at:
            return 0.0
        now = self._now()
        return sum(now - started for started in self._started_at.values())

    def _longest_running_seconds(self) -> float:
        if not self._started_at:
            return 0.0
        return self._now() - min(self._started_at.values())

    # -- adding --------------------------------------------------------------------------

    def add(self, key: Hashable) -> None:
        if self._is_shutting_down or key in self._dirty:
            return
        if self._metrics is not None:
            self._metrics.adds.inc()
        self._dirty.add(key)
        if key in self._processing:
            return  # re-queued by done()
        self._enqueue(key)

    def _enqueue(self, key: Hashable) -> None:
        self._queue.append(key)
        self._added_at.setdefault(key, self._now())
        if self._metrics is not None:
            self._metrics.depth.inc()
        self._wake_one_getter()

    def add_after(self, key: Hashable, delay_seconds: float) -> None:
        """Add `key` once `delay_seconds` have passed; an earlier pending time wins."""
        if self._is_shutting_down:
            return
        if delay_seconds <= 0:
            self.add(key)
            return
        ready_at = self._now() + delay_seconds
        current = self._waiting.get(key)
        if current is not None and current <= ready_at:
            return
        self._waiting[key] = ready_at
        heapq.heappush(self._heap, (ready_at, next(self._seq), key))
        self._arm_timer()

    def add_rate_limited(self, key: Hashable) -> None:
        """Retry `key` after the rate limiter's backoff (counts as a retry)."""
        if self._is_shutting_down:
            return
        if self._metrics is not None:
            self._metrics.retries.inc()
        self.add_after(key, self._rate_limiter.when(key))

    def forget(self, key: Hashable) -> None:
        """Clear `key`'s failure history (its backoff starts over next time)."""
        self._rate_limiter.forget(key)

    def _arm_timer(self) -> None:
        while self._heap and self._waiting.get(self._heap[0][2]) != self._heap[0][0]:
            heapq.heappop(self._heap)  # superseded by an earlier time for that key
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if not self._heap:
            return
        loop = asyncio.get_running_loop()
        delay = max(0.0, self._heap[0][0] - self._now())
        self._timer = loop.call_later(delay, self._release_ready)

    def _release_ready(self) -> None:
        self._timer = None
        now = self._now()
        while self._heap and self._heap[0][0] <= now:
            ready_at, _, key = heapq.heappop(self._heap)
            if self._waiting.get(key) == ready_at:
                del self._waiting[key]
                self.add(key)
        self._arm_timer()

    # -- handing out ---------------------------------------------------------------------

    def _wake_one_getter(self) -> None:
        while self._getters:
            getter = self._getters.popleft()
            if not getter.done():
                getter.set_result(None)
                return

    async def get(self) -> Hashable:
        """The next key; it belongs to the caller until `done(key)`. Raises `ShutDown`."""
        while not self._queue:
            if self._is_shutting_down:
                raise ShutDown(self.name)
            getter = asyncio.get_running_loop().create_future()
            self._getters.append(getter)
            try:
                await getter
            except asyncio.CancelledError:
                if getter.done() and not getter.cancelled():
                    self._wake_one_getter()  # pass our wake-up on to another worker
                raise
        if self._is_shutting_down:
            raise ShutDown(self.name)
        key = self._queue.popleft()
        now = self._now()
        if self._metrics is not None:
            self._metrics.depth.dec()
            added_at = self._added_at.get(key)
            if added_at is not None:
                self._metrics.queue_duration.observe(now - added_at)
        self._added_at.pop(key, None)
        self._processing.add(key)
        self._dirty.discard(key)
        self._started_at[key] = now
        if self._queue:
            self._wake_one_getter()
        return key

    def done(self, key: Hashable) -> None:
        """The worker is finished with `key`; a re-add made meanwhile is queued now."""
        if key not in self._processing:
            raise ValueError(f"done({key!r}) for a key that is not being processed")
        self._processing.discard(key)
        started_at = self._started_at.pop(key, None)
        if self._metrics is not None and started_at is not None:
            self._metrics.work_duration.observe(self._now() - started_at)
        if key in self._dirty and not self._is_shutting_down:
            self._enqueue(key)

    def shutdown(self) -> None:
        """Stop handing out keys; workers blocked in `get` get `ShutDown`."""
        self._is_shutting_down = True
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        self._waiting.clear()
        self._heap.clear()
        while self._getters:
            getter = self._getters.popleft()
            if not getter.done():
                getter.set_result(None)
