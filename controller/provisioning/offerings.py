"""Instance types the cloud just refused for quota or capacity, remembered for a while.

Karpenter's "unavailable offerings" cache: a claim's owner deletes a refused claim and
makes a new one, often at once; asking the cloud again within minutes only repeats the
refusal and spends API quota. So a refusal with a capacity or quota code marks the
instance type unavailable for `ttl_seconds`, and claims for it are refused with the
same reason and message without a cloud call.
"""

from __future__ import annotations

import time
from collections.abc import Callable

from controller.provisioning.backend import LaunchFailed

CAPACITY_ERROR_CODES = frozenset({
    "QuotaExceeded", "SkuNotAvailable", "AllocationFailed", "ZonalAllocationFailed",
    "OverconstrainedAllocationRequest", "OverconstrainedZonalAllocationRequest",
})


class UnavailableOfferings:
    def __init__(self, ttl_seconds: float = 180.0,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self._ttl_seconds = ttl_seconds
        self._clock = clock
        self._refusals: dict[str, tuple[float, LaunchFailed]] = {}

    def remember(self, instance_type: str, refusal: LaunchFailed) -> None:
        if refusal.reason in CAPACITY_ERROR_CODES and self._ttl_seconds > 0:
            self._refusals[instance_type.lower()] = (self._clock() + self._ttl_seconds,
                                                     refusal)

    def refusal(self, instance_type: str) -> LaunchFailed | None:
        """The remembered refusal for this instance type, while it lasts."""
        entry = self._refusals.get(instance_type.lower())
        if entry is None:
            return None
        expires_at, refusal = entry
        if self._clock() >= expires_at:
            del self._refusals[instance_type.lower()]
            return None
        return refusal
