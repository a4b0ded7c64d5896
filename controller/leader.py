"""Leader election on a `coordination.k8s.io/v1` Lease.

Our own elector rather than kubernetes_asyncio's, which does not notice a crashed
leader task. The algorithm is client-go's: a candidate takes the Lease when it is free
or when its record has not changed for `leaseDurationSeconds` *as measured on our
monotonic clock since we first saw that record* (so wall-clock skew between replicas
cannot cause two leaders); updates are compare-and-swap on resourceVersion. The leader
renews every retry period and gives up - `LeaderElectionLost` - if it cannot renew
within the renew deadline or sees another holder. Defaults 15/10/2 s.
"""

from __future__ import annotations

import asyncio
import datetime
import logging
import random
from typing import Any

from controller.kube.client import KubeClient
from controller.kube.errors import Conflict, KubeError, NotFound
from controller.kube.resources import LEASES, KubeObject
from controller.metrics import Metrics

log = logging.getLogger(__name__)

JITTER_FACTOR = 1.2


class LeaderElectionLost(Exception):
    """This process held the lease and lost it; it must stop acting as leader."""


def micro_time(now: datetime.datetime | None = None) -> str:
    """A metav1.MicroTime string."""
    moment = now or datetime.datetime.now(datetime.UTC)
    return moment.astimezone(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


class LeaseElector:
    """Acquires, renews and releases one Lease for `identity`."""

    def __init__(
        self,
        client: KubeClient,
        *,
        namespace: str,
        name: str,
        identity: str,
        lease_duration_seconds: float = 15.0,
        renew_deadline_seconds: float = 10.0,
        retry_period_seconds: float = 2.0,
        metrics: Metrics | None = None,
    ) -> None:
        if not identity:
            raise ValueError("leader election needs a non-empty identity")
        if lease_duration_seconds <= renew_deadline_seconds:
            raise ValueError("lease duration must be greater than the renew deadline")
        if renew_deadline_seconds <= JITTER_FACTOR * retry_period_seconds:
            raise ValueError("renew deadline must exceed 1.2 x the retry period")
        if retry_period_seconds <= 0:
            raise ValueError("retry period must be positive")
        self._client = client
        self.namespace = namespace
        self.name = name
        self.identity = identity
        self.lease_duration_seconds = lease_duration_seconds
        self.renew_deadline_seconds = renew_deadline_seconds
        self.retry_period_seconds = retry_period_seconds
        self._metrics = metrics
        self._is_leader = False
        self._observed_record: tuple[Any, ...] | None = None
        self._observed_time = 0.0
        self._observed_expiry = 0.0
        self.observed_holder = ""
        self._status_gauge = (
            metrics.leader_election_master_status.labels(name=name) if metrics else None
        )
        if self._status_gauge is not None:
            self._status_gauge.set(0)

    @property
    def is_leader(self) -> bool:
        return self._is_leader

    def _set_leader(self, is_leader: bool) -> None:
        self._is_leader = is_leader
        if self._status_gauge is not None:
            self._status_gauge.set(1 if is_leader else 0)

    async def acquire(self) -> None:
        """Return once this process holds the lease."""
        log.info("waiting for leadership", extra={"lease": self.name, "identity": self.identity})
        while True:
            if await self._attempt():
                self._set_leader(True)
                log.info("became leader", extra={"lease": self.name, "identity": self.identity})
                return
            delay = self.retry_period_seconds * random.uniform(1.0, JITTER_FACTOR)
            # Try again right when the holder's lease runs out, not up to a period later.
            expires_in = self._observed_expiry - asyncio.get_running_loop().time()
            if 0 < expires_in < delay:
                delay = expires_in + 0.05
            await asyncio.sleep(delay)

    async def hold(self) -> None:
        """Renew until the lease is lost, then raise `LeaderElectionLost` (never returns)."""
        loop = asyncio.get_running_loop()
        while True:
            await asyncio.sleep(self.retry_period_seconds)
            deadline = loop.time() + self.renew_deadline_seconds
            while not await self._attempt(deadline):
                if self.observed_holder and self.observed_holder != self.identity:
                    break  # someone else holds it: no point retrying
                if loop.time() + self.retry_period_seconds >= deadline:
                    break
                await asyncio.sleep(self.retry_period_seconds)
            else:
                continue
            self._set_leader(False)
            log.error(
                "leader election lost",
                extra={"lease": self.name, "identity": self.identity,
                       "holder": self.observed_holder},
            )
            raise LeaderElectionLost(f"lost lease {self.namespace}/{self.name}")

    async def release(self) -> bool:
        """Hand the lease back (holder cleared, 1 s duration) so a peer takes over at once."""
        if not self._is_leader:
            return False
        self._set_leader(False)
        try:
            async with asyncio.timeout(self.renew_deadline_seconds):
                lease = await self._client.get(LEASES, self.name, self.namespace)
                spec = lease.get("spec") or {}
                if spec.get("holderIdentity") != self.identity:
                    return False
                now = micro_time()
                lease["spec"] = {
                    "leaseDurationSeconds": 1,
                    "acquireTime": now,
                    "renewTime": now,
                    "leaseTransitions": spec.get("leaseTransitions", 0),
                }
                await self._client.replace(LEASES, lease)
        except (KubeError, TimeoutError) as exc:
            log.warning("could not release lease", extra={"lease": self.name, "error": str(exc)})
            return False
        log.info("released lease", extra={"lease": self.name, "identity": self.identity})
        return True

    async def _attempt(self, deadline: float | None = None) -> bool:
        loop = asyncio.get_running_loop()
        budget = self.renew_deadline_seconds if deadline is None else deadline - loop.time()
        if budget <= 0:
            return False
        try:
            async with asyncio.timeout(budget):
                return await self._try_acquire_or_renew()
        except (KubeError, TimeoutError) as exc:
            log.warning(
                "lease update failed",
                extra={"lease": self.name, "error": str(exc) or type(exc).__name__},
            )
            return False

    def _observe(self, spec: dict[str, Any]) -> None:
        record = (
            spec.get("holderIdentity"), spec.get("renewTime"), spec.get("acquireTime"),
            spec.get("leaseDurationSeconds"), spec.get("leaseTransitions"),
        )
        if record != self._observed_record:
            self._observed_record = record
            self._observed_time = asyncio.get_running_loop().time()
        self.observed_holder = str(spec.get("holderIdentity") or "")
        duration = float(spec.get("leaseDurationSeconds") or self.lease_duration_seconds)
        self._observed_expiry = self._observed_time + duration

    async def _try_acquire_or_renew(self) -> bool:
        now = micro_time()
        try:
            lease = await self._client.get(LEASES, self.name, self.namespace)
        except NotFound:
            body: KubeObject = {
                "apiVersion": "coordination.k8s.io/v1",
                "kind": "Lease",
                "metadata": {"name": self.name, "namespace": self.namespace},
                "spec": {
                    "holderIdentity": self.identity,
                    "leaseDurationSeconds": int(self.lease_duration_seconds),
                    "acquireTime": now,
                    "renewTime": now,
                    "leaseTransitions": 0,
                },
            }
            try:
                created = await self._client.create(LEASES, body)
            except Conflict:
                return False
            self._observe(created.get("spec") or {})
            return True
        spec = lease.get("spec") or {}
        self._observe(spec)
        holder = self.observed_holder
        loop_now = asyncio.get_running_loop().time()
        if holder and holder != self.identity and self._observed_expiry > loop_now:
            return False
        is_renewal = holder == self.identity
        transitions = int(spec.get("leaseTransitions") or 0)
        lease["spec"] = {
            "holderIdentity": self.identity,
            "leaseDurationSeconds": int(self.lease_duration_seconds),
            "acquireTime": spec.get("acquireTime", now) if is_renewal else now,
            "renewTime": now,
            "leaseTransitions": transitions if is_renewal else transitions + 1,
        }
        try:
            updated = await self._client.replace(LEASES, lease)
        except Conflict:
            return False
        self._observe(updated.get("spec") or {})
        return True
