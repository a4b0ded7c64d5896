"""Unit tests of the serving CLI's settings: adapter flags, adapter folders, bad input."""

from __future__ import annotations

from pathlib import Path

import pytest

from runtime.serving.__main__ import main
from runtime.serving.loader import AdapterSpec
from runtime.serving.settings import ServingSettings
from tests.log_lines import error_record

pytestmark = pytest.mark.unit


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("a=/x/y", AdapterSpec("a", Path("/x/y"), 1.0)),
        ("a=/x/y:0.25", AdapterSpec("a", Path("/x/y"), 0.25)),
        ("a=/x:y", AdapterSpec("a", Path("/x:y"), 1.0)),  # a colon inside the path
        ("tuned", AdapterSpec("tuned", Path("/mnt/adapter/tuned"), 1.0)),
        ("tuned:0.5", AdapterSpec("tuned", Path("/mnt/adapter/tuned"), 0.5)),
    ],
)
def test_adapter_flag_forms(text: str, expected: AdapterSpec) -> None:
    assert AdapterSpec.parse(text, Path("/mnt/adapter")) == expected


@pytest.mark.parametrize("text", ["=/x", "a=", "a=/x:1.5", "bad name=/x", "a:", "a:-1"])
def test_bad_adapter_flags(text: str) -> None:
    with pytest.raises(ValueError):
        AdapterSpec.parse(text, Path("/mnt/adapter"))


def test_adapter_dir_is_scanned_and_flags_override_strength(tmp_path: Path) -> None:
    for name in ("one", "two", "not-an-adapter"):
        (tmp_path / name).mkdir()
    (tmp_path / "one" / "adapter_config.json").write_text("{}")
    (tmp_path / "two" / "adapter_config.json").write_text("{}")
    settings = ServingSettings(model="m", adapter_dir=tmp_path, adapters=["two:0.3"])
    assert settings.adapter_specs() == [
        AdapterSpec("two", tmp_path / "two", 0.3), AdapterSpec("one", tmp_path / "one", 1.0)]


def test_environment_supplies_defaults(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("KAITO_SERVING_MODEL", "smollm2-135m-instruct")
    monkeypatch.setenv("KAITO_SERVING_MAX_BATCH_SIZE", "8")
    settings = ServingSettings()
    assert (settings.model, settings.max_batch_size, settings.port) == (
        "smollm2-135m-instruct", 8, 5000)


@pytest.mark.parametrize(
    "argv",
    [
        [],  # neither --model nor --tgi-url
        ["--model", "m", "--port", "70000"],
        ["--model", "m", "--max-batch-size", "0"],
        ["--model", "m", "--adapter", "x=/a", "--adapter", "x=/b"],
        ["--tgi-url", "http://tgi", "--adapter", "x=/a"],
        ["--model", "m", "--adapter", "x=/a:7"],
    ],
)
def test_bad_settings_exit_2(argv: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    assert main(argv) == 2
    error = error_record(capsys.readouterr().err)
    assert error["msg"] == "invalid settings" and error["error"]
