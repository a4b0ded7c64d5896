"""Prometheus metrics of the serving runtime, on a registry owned by one app.

Requests (by endpoint and status code), prompt and generated tokens, time to first
token, queue depth, running sequences and batch size per decode step. Each app has its
own ``CollectorRegistry`` so several servers (tests, the TGI proxy pair) never collide.
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest

_LATENCY_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)
_BATCH_BUCKETS = (1, 2, 4, 8, 12, 16, 24, 32, 64)


class ServingMetrics:
    """The collectors; also implements ``engine.EngineMetrics``."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.requests = Counter(
            "kaito_serving_requests_total",
            "HTTP requests answered, by endpoint and status code.",
            ["endpoint", "code"],
            registry=self.registry,
        )
        self.prompt_tokens = Counter(
            "kaito_serving_prompt_tokens_total",
            "Prompt tokens of finished generations.",
            registry=self.registry,
        )
        self.generation_tokens = Counter(
            "kaito_serving_generation_tokens_total",
            "Tokens generated.",
            registry=self.registry,
        )
        self.time_to_first_token = Histogram(
            "kaito_serving_time_to_first_token_seconds",
            "Seconds from a request entering the queue to its first token.",
            buckets=_LATENCY_BUCKETS,
            registry=self.registry,
        )
        self.queue_depth = Gauge(
            "kaito_serving_queue_depth",
            "Requests waiting to join the running batch.",
            registry=self.registry,
        )
        self.running = Gauge(
            "kaito_serving_running_requests",
            "Requests in the running batch.",
            registry=self.registry,
        )
        self.batch_size = Histogram(
            "kaito_serving_batch_size",
            "Sequences per decode step.",
            buckets=_BATCH_BUCKETS,
            registry=self.registry,
        )

    def observe_queue(self, waiting: int, running: int) -> None:
        """Record the queue depth and running count."""
        self.queue_depth.set(waiting)
        self.running.set(running)

    def observe_batch(self, size: int) -> None:
        """Record one decode step's batch size."""
        self.batch_size.observe(size)

    def observe_first_token(self, seconds: float) -> None:
        """Record a time to first token."""
        self.time_to_first_token.observe(seconds)

    def observe_finished(self, prompt_tokens: int, generated_tokens: int) -> None:
        """Count a finished generation's tokens."""
        self.prompt_tokens.inc(prompt_tokens)
        self.generation_tokens.inc(generated_tokens)

    def render(self) -> bytes:
        """The text exposition format."""
        return generate_latest(self.registry)
