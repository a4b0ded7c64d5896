"""The base model resolver: local folders as is, the small preset converted once."""

from __future__ import annotations

import json
import multiprocessing
import time
from pathlib import Path
from typing import Any

import pytest

from runtime.base_model import BaseModelError, materialize, resolve_model_path

pytestmark = pytest.mark.runtime


def test_local_folder_is_returned_unchanged(tmp_path: Path) -> None:
    assert resolve_model_path(str(tmp_path)) == tmp_path


def test_unknown_name_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(BaseModelError, match="neither an existing folder nor a known preset"):
        resolve_model_path("no-such-model", cache_dir=tmp_path)


def test_preset_is_plain_safetensors_that_generates(smollm2_path: Path) -> None:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    assert (smollm2_path / "model.safetensors").is_file()
    config = json.loads((smollm2_path / "config.json").read_text())
    assert "quantization_config" not in config
    assert not list(smollm2_path.glob("*.gguf"))
    tokenizer: Any = AutoTokenizer.from_pretrained(smollm2_path)
    model: Any = AutoModelForCausalLM.from_pretrained(smollm2_path)
    prompt: Any = tokenizer.apply_chat_template(
        [{"role": "user", "content": "What is the capital of France?"}],
        add_generation_prompt=True,
        return_tensors="pt",
        return_dict=True,
    )
    output = model.generate(**prompt, max_new_tokens=8, do_sample=False)
    answer = tokenizer.decode(output[0, prompt["input_ids"].shape[1] :], skip_special_tokens=True)
    assert "Paris" in answer
    # A second resolve is a cache hit and returns at once.
    started = time.monotonic()
    assert resolve_model_path("smollm2-135m-instruct") == smollm2_path
    assert time.monotonic() - started < 1


def _slow_build(staging: Path) -> None:
    # Records every build so the test can count them across processes.
    counter = staging.parent / "builds.log"
    with open(counter, "a") as handle:
        handle.write("build\n")
    time.sleep(0.5)
    (staging / "weights.bin").write_bytes(b"x" * 1000)


def _materialize_in_child(target: str) -> None:
    result = materialize(Path(target), _slow_build)
    assert (result / "weights.bin").stat().st_size == 1000


def test_concurrent_processes_build_once(tmp_path: Path) -> None:
    target = tmp_path / "model"
    context = multiprocessing.get_context("spawn")
    workers = [context.Process(target=_materialize_in_child, args=(str(target),)) for _ in range(3)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join(timeout=60)
        assert worker.exitcode == 0
    assert (tmp_path / "builds.log").read_text().count("build") == 1
    assert sorted(path.name for path in tmp_path.iterdir()) == [
        "builds.log",
        "model",
        "model.lock",
    ]


def test_failed_build_leaves_nothing_behind(tmp_path: Path) -> None:
    def broken(staging: Path) -> None:
        (staging / "half.bin").write_bytes(b"x")
        raise RuntimeError("disk full")

    with pytest.raises(RuntimeError, match="disk full"):
        materialize(tmp_path / "model", broken)
    assert sorted(path.name for path in tmp_path.iterdir()) == ["model.lock"]
    def working(staging: Path) -> None:
        (staging / "ok").write_text("1")

    result = materialize(tmp_path / "model", working)
    assert (result / "ok").read_text() == "1"
