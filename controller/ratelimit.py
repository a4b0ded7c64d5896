"""Work-queue rate limiters, as in client-go's `workqueue` package.

The default controller limiter is the max of a per-item exponential backoff
(5 ms doubling to 1000 s) and an overall token bucket (10 per second, burst 100), so one
failing key backs off on its own while a storm of failures cannot retry faster than the
bucket allows. Limiters are pure: the clock is injected.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Hashable
from typing import Protocol

Clock = Callable[[], float]


class RateLimiter(Protocol):
    def when(self, item: Hashable) -> float:
        """Seconds to wait before `item` may be retried; records one more failure."""

    def forget(self, item: Hashable) -> None:
        """Stop tracking `item` (it succeeded)."""

    def num_requeues(self, item: Hashable) -> int:
        """How many failures are on record for `item`."""


class ItemExponentialFailureRateLimiter:
    """base * 2**failures, capped at max_delay, per item."""

    def __init__(self, base_delay_seconds: float = 0.005, max_delay_seconds: float = 1000.0) -> None:
        if base_delay_seconds <= 0 or max_delay_seconds < base_delay_seconds:
            raise ValueError("need 0 < base_delay_seconds <= max_delay_seconds")
        self._base = base_delay_seconds
        self._max = max_delay_seconds
        self._failures: dict[Hashable, int] = {}

    def when(self, item: Hashable) -> float:
        failures = self._failures.get(item, 0)
        self._failures[item] = failures + 1
        if failures > 1000:  # 2.0**1024 overflows a float; far past any cap anyway
            return self._max
        return min(self._base * 2.0**failures, self._max)

    def forget(self, item: Hashable) -> None:
        self._failures.pop(item, None)

    def num_requeues(self, item: Hashable) -> int:
        return self._failures.get(item, 0)


class BucketRateLimiter:
    """A token bucket shared by all items (golang.org/x/time/rate reservation semantics).

    Every call reserves one token; when the bucket is empty the reservation is in the
    future and `when` returns how far.
    """

    def __init__(self, qps: float = 10.0, burst: int = 100, clock: Clock = time.monotonic) -> None:
        if qps <= 0 or burst < 1:
            raise ValueError("need qps > 0 and burst >= 1")
        self._qps = qps
        self._burst = float(burst)
        self._clock = clock
        self._tokens = float(burst)
        self._last = clock()

    def when(self, item: Hashable) -> float:
        now = self._clock()
        elapsed = max(0.0, now - self._last)
        self._tokens = min(self._burst, self._tokens + elapsed * self._qps)
        self._last = now
        self._tokens -= 1.0
        if self._tokens >= 0:
            return 0.0
        return -self._tokens / self._qps

    def forget(self, item: Hashable) -> None:
        return None

    def num_requeues(self, item: Hashable) -> int:
        return 0


class MaxOfRateLimiter:
    """The longest delay any of the limiters asks for."""

    def __init__(self, *limiters: RateLimiter) -> None:
        if not limiters:
            raise ValueError("MaxOfRateLimiter needs at least one limiter")
        self._limiters = limiters

    def when(self, item: Hashable) -> float:
        return max(limiter.when(item) for limiter in self._limiters)

    def forget(self, item: Hashable) -> None:
        for limiter in self._limiters:
            limiter.forget(item)

    def num_requeues(self, item: Hashable) -> int:
        return max(limiter.num_requeues(item) for limiter in self._limiters)


def default_controller_rate_limiter(clock: Clock = time.monotonic) -> MaxOfRateLimiter:
    """client-go's DefaultTypedControllerRateLimiter: 5 ms → 1000 s, 10/s burst 100."""
    return MaxOfRateLimiter(
        ItemExponentialFailureRateLimiter(0.005, 1000.0),
        BucketRateLimiter(qps=10.0, burst=100, clock=clock),
    )
