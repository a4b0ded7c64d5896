"""Prometheus metrics under controller-runtime's webhook names, so existing dashboards work.

- controller_runtime_webhook_requests_total{webhook, code}: requests by HTTP status code
- controller_runtime_webhook_latency_seconds{webhook}: time to answer
- controller_runtime_webhook_requests_in_flight{webhook}: requests being answered
"""

from __future__ import annotations

from dataclasses import dataclass, field

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest


@dataclass
class WebhookMetrics:
    """The webhook's metrics in their own registry (no process-global state)."""

    registry: CollectorRegistry = field(default_factory=CollectorRegistry)

    def __post_init__(self) -> None:
        self.requests_total = Counter(
            "controller_runtime_webhook_requests_total",
            "Total number of admission requests by HTTP status code.",
            ["webhook", "code"], registry=self.registry,
        )
        self.latency_seconds = Histogram(
            "controller_runtime_webhook_latency_seconds",
            "Histogram of the latency of processing admission requests",
            ["webhook"], registry=self.registry,
        )
        self.in_flight = Gauge(
            "controller_runtime_webhook_requests_in_flight",
            "Current number of admission requests being served.",
            ["webhook"], registry=self.registry,
        )

    def render(self) -> bytes:
        return generate_latest(self.registry)
