"""Training progress that the Workspace controller and Prometheus can read from the pod.

The tuning pod reports where it is (phase, step of total, loss, learning rate, tokens/s,
ETA, evaluation) three ways: a JSON file in the output volume (atomically replaced, so a
reader never sees half a file), ``GET /progress`` (the same JSON) and ``GET /metrics``
(Prometheus text) on a small HTTP server the pod exposes. The controller pulls; the pod
has no credentials to write anything anywhere, so it can never touch another workspace's
status. The server is a stdlib threaded server because the training loop is blocking
torch code: a thread beside it is simpler than an event loop around it.

The JSON (file ``<output>/progress.json`` and ``/progress``) has: ``phase`` (one of
PHASES), ``step``, ``total_steps``, ``epoch``, ``loss``, ``learning_rate``,
``tokens_per_second``, ``seconds_per_step``, ``eta_seconds``, ``elapsed_seconds``,
``tokens_seen``, ``resumed_from_step``, ``precision`` (``dtype``, ``requested``,
``device_type``, ``capability``, ``reason``, ``warning``), ``distributed`` (``strategy``:
single, ddp or fsdp, ``world_size``, ``reason``; tokens/s and the ETA count all ranks),
``data`` (how the rows fitted
``max_seq_length``: ``rows``, ``kept``, ``truncated``, ``dropped``, ``tokens_cut``,
``longest_tokens``, ``max_seq_length``, ``truncated_rows``, ``dropped_rows``),
``evaluation`` (``before``/``after`` → ``loss``, ``perplexity``), ``message`` (the error
when failed) and ``updated_at`` (Unix time). The tuning CLI serves it with ``--progress-port`` (or ``KAITO_PROGRESS_PORT``).
"""

from __future__ import annotations

import json
import logging
import os
import tempfile
import threading
import time
from collections import deque
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Gauge
from prometheus_client import Enum as EnumMetric
from prometheus_client.exposition import generate_latest

log = logging.getLogger(__name__)

PHASES = (
    "starting",
    "validating",
    "loading",
    "evaluating",
    "training",
    "saving",
    "pushing",
    "succeeded",
    "failed",
)


class ProgressTracker:
    """Thread-safe progress state; every update refreshes the file and the metrics.

    Rates come from a sliding window of recent steps, so the ETA follows the current
    speed and a resumed run does not count the steps it skipped.
    """

    def __init__(
        self,
        path: Path | None = None,
        *,
        registry: CollectorRegistry | None = None,
        clock: Callable[[], float] = time.monotonic,
        wall_clock: Callable[[], float] = time.time,
        window_steps: int = 20,
    ) -> None:
        self._path = path
        self._clock = clock
        self._wall_clock = wall_clock
        self._lock = threading.Lock()
        self._window: deque[tuple[float, int, int]] = deque(maxlen=window_steps + 1)
        self._started = clock()
        self.registry = registry or CollectorRegistry()
        self._state: dict[str, Any] = {
            "phase": "starting",
            "step": 0,
            "total_steps": None,
            "epoch": 0.0,
            "loss": None,
            "learning_rate": None,
            "tokens_per_second": None,
            "seconds_per_step": None,
            "eta_seconds": None,
            "elapsed_seconds": 0.0,
            "tokens_seen": 0,
            "resumed_from_step": None,
            "precision": None,
            "distributed": None,
            "data": None,
            "evaluation": {},
            "message": None,
            "updated_at": None,
        }
        self._phase = EnumMetric(
            "kaito_tuning_phase", "Phase of the tuning job", states=list(PHASES),
            registry=self.registry,
        )
        self._step = Gauge("kaito_tuning_step", "Optimizer steps done", registry=self.registry)
        self._total = Gauge(
            "kaito_tuning_total_steps", "Optimizer steps planned", registry=self.registry
        )
        self._loss = Gauge("kaito_tuning_loss", "Training loss of the last step",
                           registry=self.registry)
        self._lr = Gauge("kaito_tuning_learning_rate", "Learning rate of the last step",
                         registry=self.registry)
        self._rate = Gauge("kaito_tuning_tokens_per_second", "Recent training throughput",
                           registry=self.registry)
        self._eta = Gauge("kaito_tuning_eta_seconds", "Estimated seconds to finish training",
                          registry=self.registry)
        self._tokens = Counter("kaito_tuning_tokens", "Tokens trained on by this process",
                               registry=self.registry)
        self._eval = Gauge("kaito_tuning_eval_loss", "Held-out loss", ["when"],
                           registry=self.registry)
        self._rows = Gauge("kaito_tuning_rows", "Training data rows by how they fitted "
                           "max_seq_length", ["outcome"], registry=self.registry)
        self._publish()

    def snapshot(self) -> dict[str, Any]:
        with self._lock:
            copy: dict[str, Any] = json.loads(json.dumps(self._state))  # a deep copy
            return copy

    def final_summary(self) -> str:
        """The run's last state as compact JSON, for the container's termination message
        (the controller's only way to see it once the pod has ended; the kubelet keeps
        4 KiB): phase, steps, loss, speed, precision and evaluation."""
        state = self.snapshot()
        keep = ("phase", "step", "total_steps", "loss", "tokens_per_second",
                "resumed_from_step", "evaluation")
        summary: dict[str, Any] = {key: state[key] for key in keep if state.get(key) is not None}
        dtype = (state.get("precision") or {}).get("dtype")
        if dtype:
            summary["precision"] = {"dtype": dtype}
        return json.dumps(summary, separators=(",", ":"))

    def set_phase(self, phase: str, message: str | None = None) -> None:
        if phase not in PHASES:
            raise ValueError(f"unknown phase {phase!r}")
        with self._lock:
            self._state["phase"] = phase
            self._state["message"] = message
            self._phase.state(phase)
        self._publish()

    def record_precision(self, precision: dict[str, Any]) -> None:
        """The dtype training computes in and why (``runtime.precision.Precision``)."""
        with self._lock:
            self._state["precision"] = dict(precision)
        self._publish()

    def record_distribution(self, choice: dict[str, Any]) -> None:
        """How the run is spread: ``strategy`` (single, ddp, fsdp), ``world_size``,
        ``reason`` (``runtime.tuning.strategy.StrategyChoice``)."""
        with self._lock:
            self._state["distributed"] = dict(choice)
        self._publish()

    def record_data(self, lengths: dict[str, Any]) -> None:
        """How the rows fitted ``max_seq_length`` (``encoding.LengthReport.as_dict``)."""
        with self._lock:
            self._state["data"] = dict(lengths)
            kept, truncated = int(lengths["kept"]), int(lengths["truncated"])
            self._rows.labels(outcome="whole").set(kept - truncated)
            self._rows.labels(outcome="truncated").set(truncated)
            self._rows.labels(outcome="dropped").set(int(lengths["dropped"]))
        self._publish()

    def begin_training(self, total_steps: int, start_step: int) -> None:
        with self._lock:
            self._state.update(
                total_steps=total_steps,
                step=start_step,
                resumed_from_step=start_step if start_step else None,
            )
            self._window.clear()
            self._window.append((self._clock(), start_step, 0))
            self._total.set(total_steps)
            self._step.set(start_step)
        self._publish()

    def record_step(
        self, step: int, *, loss: float, learning_rate: float, tokens: int, epoch: float
    ) -> None:
        now = self._clock()
        with self._lock:
            tokens_seen = self._state["tokens_seen"] + tokens
            self._window.append((now, step, tokens_seen))
            first_time, first_step, first_tokens = self._window[0]
            span = now - first_time
            if span > 0 and step > first_step:
                seconds_per_step = span / (step - first_step)
                tokens_per_second = (tokens_seen - first_tokens) / span
                remaining = max(0, (self._state["total_steps"] or step) - step)
                self._state.update(
                    seconds_per_step=round(seconds_per_step, 4),
                    tokens_per_second=round(tokens_per_second, 2),
                    eta_seconds=round(remaining * seconds_per_step, 1),
                )
                self._rate.set(tokens_per_second)
                self._eta.set(remaining * seconds_per_step)
            self._state.update(
                step=step, loss=loss, learning_rate=learning_rate, tokens_seen=tokens_seen,
                epoch=round(epoch, 4),
            )
            self._step.set(step)
            self._loss.set(loss)
            self._lr.set(learning_rate)
            self._tokens.inc(tokens)
        self._publish()

    def record_evaluation(self, when: str, loss: float, perplexity: float) -> None:
        with self._lock:
            self._state["evaluation"][when] = {"loss": loss, "perplexity": perplexity}
            self._eval.labels(when=when).set(loss)
        self._publish()

    def _publish(self) -> None:
        with self._lock:
            self._state["elapsed_seconds"] = round(self._clock() - self._started, 2)
            self._state["updated_at"] = self._wall_clock()
            text = json.dumps(self._state, indent=2, sort_keys=True)
        if self._path is not None:
            write_atomically(self._path, text)


def write_atomically(path: Path, text: str) -> None:
    """Replace ``path`` with ``text`` so readers see the old or the new file, never half."""
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, staging = tempfile.mkstemp(prefix="." + path.name, dir=path.parent)
    try:
        with os.fdopen(handle, "w") as out:
            out.write(text)
        os.replace(staging, path)
    except BaseException:
        Path(staging).unlink(missing_ok=True)
        raise


class ProgressServer:
    """Serves ``/progress`` (JSON), ``/metrics`` (Prometheus) and ``/healthz``."""

    def __init__(self, tracker: ProgressTracker, host: str = "0.0.0.0", port: int = 0) -> None:
        tracker_ref = tracker

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                route = self.path.split("?", 1)[0]
                if route == "/progress":
                    body = json.dumps(tracker_ref.snapshot()).encode()
                    self._reply(200, "application/json", body)
                elif route == "/metrics":
                    self._reply(200, CONTENT_TYPE_LATEST, generate_latest(tracker_ref.registry))
                elif route == "/healthz":
                    self._reply(200, "text/plain", b"ok")
                else:
                    self._reply(404, "text/plain", b"not found")

            def _reply(self, code: int, content_type: str, body: bytes) -> None:
                self.send_response(code)
                self.send_header("Content-Type", content_type)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, format: str, *args: Any) -> None:
                return  # scrapes every few seconds would drown the training log

        self._server = ThreadingHTTPServer((host, port), Handler)
        self._server.daemon_threads = True
        self._thread = threading.Thread(
            target=self._server.serve_forever, name="progress-server", daemon=True
        )

    @property
    def port(self) -> int:
        return int(self._server.server_address[1])

    def start(self) -> ProgressServer:
        self._thread.start()
        log.info("progress server listening", extra={"port": self.port})
        return self

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(timeout=5)
