"""Prometheus metrics of the provisioner, beside the controller runtime's own.

- ``kaito_nodeclaims{kind,phase}``: claims by lifecycle phase, counted from the informer
  cache at scrape time (never stale, no bookkeeping);
- ``kaito_nodeclaim_ready_seconds{backend}``: seconds from a claim's creation to Ready,
  observed once when Ready turns True;
- ``kaito_provisioner_cloud_requests_total{backend,method,code}``: every cloud API call
  (each HTTP attempt, retries included), by status code; ``code="<error>"`` is a
  connection that failed or broke.
"""

from __future__ import annotations

from collections import Counter as Tally
from collections.abc import Callable, Iterable, Iterator, Mapping
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Histogram
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

from controller.provisioning.claims import parse_claim, phase

READY_BUCKETS = (1, 2, 5, 10, 20, 30, 60, 120, 180, 300, 600, 900, 1200, 1800, 3600)
PHASES = ("Pending", "Launched", "Registered", "Initialized", "Ready", "Failed", "Deleting")


class ClaimCollector(Collector):
    def __init__(self, claims: Callable[[], Iterable[Mapping[str, Any]]]) -> None:
        self._claims = claims

    def collect(self) -> Iterator[GaugeMetricFamily]:
        family = GaugeMetricFamily("kaito_nodeclaims", "Node claims by lifecycle phase",
                                   labels=["kind", "phase"])
        tally: Tally[tuple[str, str]] = Tally()
        kinds: set[str] = set()
        for obj in self._claims():
            try:
                claim = parse_claim(obj)
            except ValueError:
                continue
            kinds.add(claim.kind)
            tally[(claim.kind, phase(claim))] += 1
        for kind in sorted(kinds):
            for name in PHASES:
                family.add_metric([kind, name], tally[(kind, name)])
        yield family


class ProvisioningMetrics:
    def __init__(self, registry: CollectorRegistry, backend: str) -> None:
        self.backend = backend
        self._registry = registry
        self.ready_seconds = Histogram(
            "kaito_nodeclaim_ready_seconds", "Seconds from a node claim's creation to Ready",
            ["backend"], buckets=READY_BUCKETS, registry=registry,
        )
        self.cloud_requests = Counter(
            "kaito_provisioner_cloud_requests_total",
            "Cloud API calls of the node provisioner by method and status code",
            ["backend", "method", "code"], registry=registry,
        )

    def watch_claims(self, claims: Callable[[], Iterable[Mapping[str, Any]]]) -> None:
        self._registry.register(ClaimCollector(claims))

    def count_call(self, method: str, code: str) -> None:
        self.cloud_requests.labels(backend=self.backend, method=method, code=code).inc()
