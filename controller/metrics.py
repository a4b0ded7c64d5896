"""Prometheus metrics under controller-runtime's names and labels.

Existing controller-runtime dashboards and alerts work unchanged because the names
(`controller_runtime_reconcile_total{controller,result}`, `workqueue_depth{name,controller}`,
`leader_election_master_status{name}`...) and buckets match. Each `Metrics` owns its own
`CollectorRegistry`: no global registry, so tests and two managers in one process do not
collide. Our informer counters, which controller-runtime lacks, carry a `kaito_` prefix.
"""

from __future__ import annotations

from collections.abc import Callable

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest

RECONCILE_BUCKETS = (
    0.005, 0.01, 0.025, 0.05, 0.1, 0.15, 0.2, 0.25, 0.3, 0.35, 0.4, 0.45, 0.5, 0.6, 0.7,
    0.8, 0.9, 1.0, 1.25, 1.5, 1.75, 2.0, 2.5, 3.0, 3.5, 4.0, 4.5, 5, 6, 7, 8, 9, 10, 15,
    20, 25, 30, 40, 50, 60,
)
# prometheus.ExponentialBuckets(10e-9, 10, 12), as controller-runtime's workqueue uses.
WORKQUEUE_BUCKETS = tuple(10e-9 * 10**i for i in range(12))


class Metrics:
    """Every collector the controller runtime exports, in one registry."""

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry if registry is not None else CollectorRegistry()
        r = self.registry
        self.reconcile_total = Counter(
            "controller_runtime_reconcile_total",
            "Total number of reconciliations per controller",
            ["controller", "result"], registry=r,
        )
        self.reconcile_errors_total = Counter(
            "controller_runtime_reconcile_errors_total",
            "Total number of reconciliation errors per controller",
            ["controller"], registry=r,
        )
        self.terminal_reconcile_errors_total = Counter(
            "controller_runtime_terminal_reconcile_errors_total",
            "Total number of terminal reconciliation errors per controller",
            ["controller"], registry=r,
        )
        self.reconcile_time_seconds = Histogram(
            "controller_runtime_reconcile_time_seconds",
            "Length of time per reconciliation per controller",
            ["controller"], buckets=RECONCILE_BUCKETS, registry=r,
        )
        self.max_concurrent_reconciles = Gauge(
            "controller_runtime_max_concurrent_reconciles",
            "Maximum number of concurrent reconciles per controller",
            ["controller"], registry=r,
        )
        self.active_workers = Gauge(
            "controller_runtime_active_workers",
            "Number of currently used workers per controller",
            ["controller"], registry=r,
        )
        self.workqueue_depth = Gauge(
            "workqueue_depth", "Current depth of workqueue", ["name", "controller"], registry=r,
        )
        self.workqueue_adds_total = Counter(
            "workqueue_adds_total", "Total number of adds handled by workqueue",
            ["name", "controller"], registry=r,
        )
        self.workqueue_queue_duration_seconds = Histogram(
            "workqueue_queue_duration_seconds",
            "How long in seconds an item stays in workqueue before being requested",
            ["name", "controller"], buckets=WORKQUEUE_BUCKETS, registry=r,
        )
        self.workqueue_work_duration_seconds = Histogram(
            "workqueue_work_duration_seconds",
            "How long in seconds processing an item from workqueue takes",
            ["name", "controller"], buckets=WORKQUEUE_BUCKETS, registry=r,
        )
        self.workqueue_unfinished_work_seconds = Gauge(
            "workqueue_unfinished_work_seconds",
            "How many seconds of work has been done that is in progress and hasn't been "
            "observed by work_duration",
            ["name", "controller"], registry=r,
        )
        self.workqueue_longest_running_processor_seconds = Gauge(
            "workqueue_longest_running_processor_seconds",
            "How many seconds has the longest running processor for workqueue been running",
            ["name", "controller"], registry=r,
        )
        self.workqueue_retries_total = Counter(
            "workqueue_retries_total", "Total number of retries handled by workqueue",
            ["name", "controller"], registry=r,
        )
        self.leader_election_master_status = Gauge(
            "leader_election_master_status",
            "Gauge of if the reporting system is master of the relevant lease, 0 indicates "
            "backup, 1 indicates master. 'name' is the string used to identify the lease.",
            ["name"], registry=r,
        )
        self.rest_client_requests_total = Counter(
            "rest_client_requests_total",
            "Number of HTTP requests, partitioned by status code, method, and host.",
            ["code", "method", "host"], registry=r,
        )
        self.informer_relists_total = Counter(
            "kaito_informer_relists_total", "Full lists the informer made (start and 410 Gone)",
            ["resource"], registry=r,
        )
        self.informer_watch_restarts_total = Counter(
            "kaito_informer_watch_restarts_total", "Watches the informer had to (re)open",
            ["resource", "reason"], registry=r,
        )
        self.informer_events_total = Counter(
            "kaito_informer_events_total", "Watch events the informer applied",
            ["resource", "type"], registry=r,
        )
        self.informer_cached_objects = Gauge(
            "kaito_informer_cached_objects", "Objects the informer's cache holds now",
            ["informer"], registry=r,
        )

    def queue_metrics(self, name: str) -> QueueMetrics:
        return QueueMetrics(self, name)

    def exposition(self) -> bytes:
        """The Prometheus text format of every collector."""
        return generate_latest(self.registry)


class QueueMetrics:
    """The workqueue collectors bound to one queue name."""

    def __init__(self, metrics: Metrics, name: str) -> None:
        labels = {"name": name, "controller": name}
        self.depth = metrics.workqueue_depth.labels(**labels)
        self.adds = metrics.workqueue_adds_total.labels(**labels)
        self.queue_duration = metrics.workqueue_queue_duration_seconds.labels(**labels)
        self.work_duration = metrics.workqueue_work_duration_seconds.labels(**labels)
        self.retries = metrics.workqueue_retries_total.labels(**labels)
        self._unfinished = metrics.workqueue_unfinished_work_seconds.labels(**labels)
        self._longest = metrics.workqueue_longest_running_processor_seconds.labels(**labels)

    def bind_in_flight(
        self, unfinished_seconds: Callable[[], float], longest_seconds: Callable[[], float]
    ) -> None:
        """Compute the in-flight gauges at scrape time from the queue's own state."""
        self._unfinished.set_function(unfinished_seconds)
        self._longest.set_function(longest_seconds)
