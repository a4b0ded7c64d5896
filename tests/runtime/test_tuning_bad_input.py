"""Bad data and config fail fast through the real entry point, before any training."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from runtime.tuning.__main__ import EXIT_BAD_INPUT, main
from tests.log_lines import error_record
from tests.runtime.conftest import RegistryInfo, dockerconfigjson_for, dolly_rows

pytestmark = pytest.mark.runtime

CONFIG = {"training_config": {"DatasetConfig": {"max_seq_length": 128}}}


def _run(tmp_path: Path, model: Path, capsys: pytest.CaptureFixture[str],
         *extra: str) -> tuple[int, str]:
    config = tmp_path / "training_config.yaml"
    if not config.exists():
        config.write_text(json.dumps(CONFIG))
    started = time.monotonic()
    code = main([
        "--config", str(config), "--data-dir", str(tmp_path / "data"),
        "--output-dir", str(tmp_path / "out"), "--base-model", str(model), "--method", "lora",
        *extra,
    ])
    assert time.monotonic() - started < 60  # fails before loading the model or training
    assert not (tmp_path / "out" / "adapter_model.safetensors").exists()
    assert not (tmp_path / "out" / "checkpoints").exists()
    progress = json.loads((tmp_path / "out" / "progress.json").read_text())
    assert progress["phase"] == "failed" and progress["step"] == 0
    error = error_record(capsys.readouterr().err)
    assert error["msg"] in ("invalid input, nothing trained", "push failed")
    return code, error["error"]


def test_wrong_columns(tmp_path: Path, smollm2_path: Path, capsys: pytest.CaptureFixture[str],
                       monkeypatch: pytest.MonkeyPatch) -> None:
    termination_log = tmp_path / "termination-log"
    monkeypatch.setenv("KAITO_TERMINATION_LOG", str(termination_log))
    (tmp_path / "data").mkdir()
    pq.write_table(pa.Table.from_pylist([{"question": "q", "answer": "a"}]),
                   tmp_path / "data" / "qa.parquet")
    code, err = _run(tmp_path, smollm2_path, capsys)
    assert code == EXIT_BAD_INPUT
    assert "qa.parquet: columns ['answer', 'question'] match no known format" in err
    # What the Workspace controller shows in the condition and the Event.
    message = termination_log.read_text()
    assert message.startswith("invalid input, nothing trained: ")
    assert "qa.parquet: columns ['answer', 'question'] match no known format" in message


def test_empty_file(tmp_path: Path, smollm2_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "train.jsonl").write_bytes(b"")
    code, err = _run(tmp_path, smollm2_path, capsys)
    assert code == EXIT_BAD_INPUT and "train.jsonl: file is empty" in err


def test_non_utf8(tmp_path: Path, smollm2_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "train.csv").write_bytes(
        b"instruction,response\nSay hi,hi\nSay caf\xe9,caf\xe9\n"
    )
    code, err = _run(tmp_path, smollm2_path, capsys)
    assert code == EXIT_BAD_INPUT
    assert "train.csv: not UTF-8 text: invalid byte 0xe9 at line 3" in err


def test_row_longer_than_the_context(
    tmp_path: Path, smollm2_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # A long row is truncated, not fatal (below, and tests/unit/test_tuning_encoding.py);
    # only data whose every prompt fills the context leaves nothing to train on, and that
    # fails fast, naming a row.
    (tmp_path / "data").mkdir()
    rows = dolly_rows(20)
    for row in rows:
        row["context"] = "word " * 400  # far past max_seq_length 128 with the real tokenizer
    pq.write_table(pa.Table.from_pylist(rows), tmp_path / "data" / "dolly.parquet")
    code, err = _run(tmp_path, smollm2_path, capsys)
    assert code == EXIT_BAD_INPUT
    assert "every row's prompt fills max_seq_length 128 (DatasetConfig.max_seq_length)" in err
    assert "20 rows dropped; first: " in err and "dolly.parquet row 0 column 'response'" in err


def test_the_real_tokenizer_truncates_a_long_answer_and_drops_a_long_prompt(
    tmp_path: Path, smollm2_path: Path
) -> None:
    from runtime.tuning.config import DatasetSection
    from runtime.tuning.data import load_dataset
    from runtime.tuning.encoding import IGNORE_INDEX, encode_dataset
    from runtime.tuning.model import load_tokenizer

    tokenizer = load_tokenizer(smollm2_path)
    rows = dolly_rows(30)
    rows[3]["response"] = "word " * 400
    rows[7]["context"] = "word " * 400
    (tmp_path / "data").mkdir()
    pq.write_table(pa.Table.from_pylist(rows), tmp_path / "data" / "dolly.parquet")
    dataset = load_dataset(tmp_path / "data", DatasetSection())
    fitted = encode_dataset(tokenizer, dataset.examples, max_seq_length=128)
    report = fitted.report
    assert (report.rows, report.kept, report.truncated, report.dropped) == (30, 29, 1, 1)
    assert report.dropped_rows[0].endswith("dolly.parquet row 7 column 'response'")
    (cut,) = [item for item in fitted.items if " row 3" in item.source]
    assert len(cut.input_ids) == 128
    text = tokenizer.decode(cut.input_ids)
    assert rows[3]["instruction"] in text  # the prompt's head is kept whole
    learned = tokenizer.decode([t for t in cut.labels if t != IGNORE_INDEX])
    assert learned.startswith("word word") and "<|im_end|>" not in learned


def test_empty_value(tmp_path: Path, smollm2_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (tmp_path / "data").mkdir()
    rows = dolly_rows(10)
    rows[4]["instruction"] = "   "
    pq.write_table(pa.Table.from_pylist(rows), tmp_path / "data" / "dolly.parquet")
    code, err = _run(tmp_path, smollm2_path, capsys)
    assert code == EXIT_BAD_INPUT and "dolly.parquet row 4 column 'instruction': empty value" in err


def test_config_contradicting_the_method(
    tmp_path: Path, smollm2_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    (tmp_path / "data").mkdir()
    pq.write_table(pa.Table.from_pylist(dolly_rows(5)), tmp_path / "data" / "d.parquet")
    (tmp_path / "training_config.yaml").write_text(
        "training_config:\n  QuantizationConfig:\n    load_in_4bit: true\n"
    )
    code, err = _run(tmp_path, smollm2_path, capsys)
    assert code == EXIT_BAD_INPUT and "method lora forbids" in err
    (tmp_path / "training_config.yaml").write_text(
        "training_config:\n  TrainingArguments:\n    not_a_real_argument: 1\n"
    )
    code, err = _run(tmp_path, smollm2_path, capsys)
    assert code == EXIT_BAD_INPUT and "unknown keys ['not_a_real_argument']" in err


def test_real_chat_template_masks_all_but_the_assistant(smollm2_path: Path) -> None:
    from runtime.tuning.data import Example
    from runtime.tuning.encoding import IGNORE_INDEX, encode_examples
    from runtime.tuning.model import load_tokenizer

    tokenizer = load_tokenizer(smollm2_path)
    example = Example(
        "f row 0", "messages",
        messages=(("user", "Name a colour."), ("assistant", "Blue."), ("user", "Another?"),
                  ("assistant", "Green.")),
    )
    (item,) = encode_examples(tokenizer, [example], max_seq_length=256)
    learned = tokenizer.decode([t for t in item.labels if t != IGNORE_INDEX])
    assert learned == "Blue.<|im_end|>\nGreen.<|im_end|>\n"


def test_refused_push_credentials_fail_before_training(
    tmp_path: Path, smollm2_path: Path, capsys: pytest.CaptureFixture[str],
    registry: RegistryInfo,
) -> None:
    """The registry is asked first: a wrong password costs seconds, not a training run,
    and exits 2 (the Job fails at once; the same secret would be refused again)."""
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "train.jsonl").write_text(
        "".join(json.dumps(row) + "\n" for row in dolly_rows(8)))
    secret = tmp_path / "secret.json"
    secret.write_text(dockerconfigjson_for(registry.host, registry.user, "wrong-password"))
    code, err = _run(tmp_path, smollm2_path, capsys, "--push-to",
                     f"{registry.host}/adapters/never:1", "--push-secret", str(secret))
    assert code == EXIT_BAD_INPUT
    assert "the registry refused the push credentials" in err
    assert f"registry {registry.host} rejected the credentials of user 'kaito'" in err
    assert "wrong-password" not in err
