"""Progress: rates and ETA from a sliding window, the JSON file and the HTTP endpoints."""

from __future__ import annotations

import json
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from runtime.progress import ProgressServer, ProgressTracker

pytestmark = pytest.mark.unit


class FakeClock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_rates_eta_and_file(tmp_path: Path) -> None:
    clock = FakeClock()
    path = tmp_path / "progress.json"
    tracker = ProgressTracker(path, clock=clock, wall_clock=lambda: 1.0e9)
    tracker.set_phase("training")
    tracker.begin_training(total_steps=10, start_step=0)
    for step in range(1, 5):
        clock.now += 2.0
        tracker.record_step(step, loss=3.0 - step * 0.1, learning_rate=1e-3, tokens=500,
                            epoch=step / 10)
    state = json.loads(path.read_text())
    assert state["phase"] == "training"
    assert (state["step"], state["total_steps"]) == (4, 10)
    assert state["tokens_per_second"] == 250.0
    assert state["seconds_per_step"] == 2.0
    assert state["eta_seconds"] == 12.0  # 6 steps left at 2 s
    assert state["loss"] == pytest.approx(2.6)
    assert state["updated_at"] == 1.0e9


def test_resumed_run_reports_its_start_and_own_speed() -> None:
    clock = FakeClock()
    tracker = ProgressTracker(clock=clock)
    tracker.begin_training(total_steps=12, start_step=4)
    clock.now += 3.0
    tracker.record_step(5, loss=1.0, learning_rate=1e-4, tokens=300, epoch=0.5)
    state = tracker.snapshot()
    assert state["resumed_from_step"] == 4
    assert state["seconds_per_step"] == 3.0 and state["eta_seconds"] == 21.0
    assert state["tokens_seen"] == 300


def test_unknown_phase_is_rejected() -> None:
    with pytest.raises(ValueError, match="unknown phase"):
        ProgressTracker().set_phase("dancing")


def test_http_endpoints_serve_json_and_prometheus() -> None:
    tracker = ProgressTracker()
    tracker.set_phase("training")
    tracker.begin_training(total_steps=3, start_step=0)
    tracker.record_step(1, loss=2.5, learning_rate=2e-4, tokens=100, epoch=0.3)
    tracker.record_evaluation("before", loss=3.5, perplexity=33.1)
    server = ProgressServer(tracker, host="127.0.0.1", port=0).start()
    try:
        base = f"http://127.0.0.1:{server.port}"
        with urllib.request.urlopen(base + "/progress", timeout=5) as response:
            body = json.loads(response.read())
        assert body["step"] == 1 and body["total_steps"] == 3
        assert body["evaluation"]["before"]["loss"] == 3.5
        with urllib.request.urlopen(base + "/metrics", timeout=5) as response:
            metrics = response.read().decode()
        assert "kaito_tuning_step 1.0" in metrics
        assert "kaito_tuning_total_steps 3.0" in metrics
        assert "kaito_tuning_loss 2.5" in metrics
        assert 'kaito_tuning_phase{kaito_tuning_phase="training"} 1.0' in metrics
        assert 'kaito_tuning_eval_loss{when="before"} 3.5' in metrics
        assert "kaito_tuning_tokens_total 100.0" in metrics
        with pytest.raises(urllib.error.HTTPError) as missing:
            urllib.request.urlopen(base + "/nope", timeout=5)
        assert missing.value.code == 404
        missing.value.close()
    finally:
        server.stop()
