"""A tuning job over long rows: they are truncated or dropped, and the counts show in
``training_result.json`` and ``progress.json`` (the model and trainer are stand-ins, so
this runs without torch; tests/runtime runs the real ones)."""

from __future__ import annotations

import json
import sys
import types
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, ClassVar

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from runtime.progress import ProgressTracker
from runtime.tuning import job
from runtime.tuning.data import DataError
from tests.unit.test_tuning_encoding import CharTokenizer

pytestmark = pytest.mark.unit


class _Outcome:
    total_steps, start_step, losses, tokens_trained = 3, 0, [2.0, 1.5, 1.0], 300
    seconds_per_step, tokens_per_second = 0.1, 1000.0
    eval_before: dict[str, float] | None = None
    eval_after: dict[str, float] | None = None


class _Trainer:
    trained_on: ClassVar[list[Any]] = []

    def __init__(self, model: Any, config: Any, train: list[Any], held_out: list[Any],
                 **kwargs: Any) -> None:
        _Trainer.trained_on = train
        self.checkpoint_root = kwargs["output_dir"] / "checkpoints"

    def train(self) -> _Outcome:
        return _Outcome()


class _Model:
    def named_parameters(self) -> list[Any]:
        return []

    def save_pretrained(self, folder: Path, **kwargs: Any) -> None:
        (folder / "adapter_config.json").write_text("{}")
        (folder / "adapter_model.safetensors").write_bytes(b"")


class _Precision:
    dtype = "float32"

    def as_dict(self) -> dict[str, Any]:
        return {"dtype": "float32", "requested": "auto"}


class _Loaded:
    model, precision, device, dtype = _Model(), _Precision(), "cpu", "float32"


@contextmanager
def _quiet() -> Iterator[None]:
    yield


@pytest.fixture
def stand_ins(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Path:
    model_dir = tmp_path / "model"
    model_dir.mkdir()
    (model_dir / "config.json").write_text(json.dumps({"max_position_embeddings": 4096}))
    model = types.ModuleType("runtime.tuning.model")
    model.load_tokenizer = lambda path: CharTokenizer()  # type: ignore[attr-defined]
    model.load_for_training = lambda path, config, *a, **k: _Loaded()  # type: ignore[attr-defined]
    model.training_precision = lambda config, device: _Precision()  # type: ignore[attr-defined]
    model.quiet_library_deprecations = _quiet  # type: ignore[attr-defined]
    trainer = types.ModuleType("runtime.tuning.trainer")
    trainer.Trainer = _Trainer  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "runtime.tuning.model", model)
    monkeypatch.setitem(sys.modules, "runtime.tuning.trainer", trainer)
    monkeypatch.setattr(job, "resolve_model_path", lambda name: model_dir)
    monkeypatch.setattr(job, "check_training_argument_keys", lambda config: None)
    return model_dir


def _rows(long_answers: int, long_prompts: int) -> list[dict[str, Any]]:
    rows = [{"instruction": f"Say {i}.", "context": "", "response": f"{i}."} for i in range(6)]
    rows += [{"instruction": "Tell a story.", "context": "", "response": "word " * 200}
             for _ in range(long_answers)]
    rows += [{"instruction": "Summarize.", "context": "passage " * 200, "response": "Done."}
             for _ in range(long_prompts)]
    return rows


def _request(tmp_path: Path, rows: list[dict[str, Any]]) -> job.JobRequest:
    (tmp_path / "data").mkdir(exist_ok=True)
    pq.write_table(pa.Table.from_pylist(rows), tmp_path / "data" / "dolly.parquet")
    config = tmp_path / "training_config.yaml"
    config.write_text("training_config:\n  DatasetConfig:\n    max_seq_length: 128\n")
    return job.JobRequest(config_path=config, data_dir=tmp_path / "data",
                          output_dir=tmp_path / "out", base_model="stand-in", method="lora")


def test_long_rows_are_truncated_or_dropped_and_reported(
    stand_ins: Path, tmp_path: Path
) -> None:
    request = _request(tmp_path, _rows(long_answers=2, long_prompts=1))
    progress = ProgressTracker(tmp_path / "out" / "progress.json")
    job.run_job(request, progress)
    result = json.loads((tmp_path / "out" / job.RESULT_FILE).read_text())
    data = result["data"]
    assert (data["rows"], data["kept"], data["truncated"], data["dropped"]) == (9, 8, 2, 1)
    assert data["max_seq_length"] == 128 and data["longest_tokens"] > 1000
    dolly = tmp_path / "data" / "dolly.parquet"
    assert data["dropped_rows"] == [f"{dolly} row 8 column 'response'"]
    assert result["examples"] == {"train": 8, "held_out": 0}
    assert all(len(item.input_ids) <= 128 for item in _Trainer.trained_on)
    snapshot = json.loads((tmp_path / "out" / job.PROGRESS_FILE).read_text())
    assert snapshot["data"] == data and snapshot["phase"] == "succeeded"
    assert 'kaito_tuning_rows{outcome="dropped"} 1.0' in _metrics(progress)


def test_a_dataset_of_only_overlong_prompts_fails_before_loading_the_model(
    stand_ins: Path, tmp_path: Path
) -> None:
    request = _request(tmp_path, _rows(long_answers=0, long_prompts=3)[6:])
    with pytest.raises(DataError, match="every row's prompt fills max_seq_length 128"):
        job.run_job(request, ProgressTracker(tmp_path / "out" / "progress.json"))
    assert not (tmp_path / "out" / job.RESULT_FILE).exists()


def _metrics(progress: ProgressTracker) -> str:
    from prometheus_client.exposition import generate_latest

    return generate_latest(progress.registry).decode()
