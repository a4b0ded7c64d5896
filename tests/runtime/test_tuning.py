"""LoRA and QLoRA on the real SmolLM2-135M-Instruct, through the CLI the pod runs.

The LoRA run is killed (SIGKILL) right after its first checkpoint and restarted, so one
run shows: loss falls, held-out loss improves, the step counter continues after the
restart, progress is served over HTTP, and the adapter changes the model's answers.
The QLoRA run packs sequences and pushes its adapter to a real registry.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from runtime.oci import ANNOTATION_BASE_MODEL, ANNOTATION_DATASET_DIGEST, pull_adapter
from tests.runtime.conftest import RegistryInfo, dolly_rows

pytestmark = pytest.mark.runtime

REPO = Path(__file__).resolve().parents[2]
TOTAL_STEPS = 12
SAVE_STEPS = 4


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _write_config(path: Path, training: dict[str, Any], dataset: dict[str, Any],
                  quantization: dict[str, Any] | None = None) -> Path:
    document: dict[str, Any] = {
        "training_config": {
            # No torch_dtype: the runtime picks what this CPU computes fast.
            "LoraConfig": {"r": 8, "lora_alpha": 16, "target_modules": "all-linear"},
            "TrainingArguments": {
                "learning_rate": 0.002,
                "warmup_steps": 1,
                "per_device_eval_batch_size": 16,
                **training,
            },
            "DatasetConfig": {"train_test_split": 0.9, "max_seq_length": 256, **dataset},
        }
    }
    if quantization is not None:
        # qlora's config must say how to quantize, as upstream's webhook requires.
        document["training_config"]["QuantizationConfig"] = quantization
    path.write_text(json.dumps(document))  # JSON is YAML
    return path


def _tune_command(config: Path, data: Path, out: Path, model: Path, *extra: str) -> list[str]:
    return [
        sys.executable, "-m", "runtime.tuning", "--config", str(config), "--data-dir",
        str(data), "--output-dir", str(out), "--base-model", str(model), *extra,
    ]


class ProgressWatch:
    """Fails a wait only when the job stops moving, not after a wall clock tuned on one
    CPU: the allowed stall grows with the step time the job itself reports."""

    MIN_STALL_SECONDS = 240.0
    STEPS_OF_STALL = 6

    def __init__(self, process: subprocess.Popen[bytes], log: Path, port: int) -> None:
        self.process, self.log, self.port = process, log, port
        self._last_change = time.monotonic()
        self._last_state: tuple[Any, ...] | None = None
        self.stall_seconds = self.MIN_STALL_SECONDS

    def poll(self, *, must_run: bool = True) -> dict[str, Any] | None:
        """One look: raise if the process died (when ``must_run``) or stalled; return its
        progress, if it answered."""
        if must_run:
            assert self.process.poll() is None, self.log.read_text()[-3000:]
        snapshot = _get_json(f"http://127.0.0.1:{self.port}/progress")
        now = time.monotonic()
        if snapshot is not None:
            state = (snapshot["phase"], snapshot["step"])
            if state != self._last_state:
                self._last_state, self._last_change = state, now
            step_seconds = snapshot.get("seconds_per_step") or 0.0
            self.stall_seconds = max(self.MIN_STALL_SECONDS, self.STEPS_OF_STALL * step_seconds)
        assert now - self._last_change < self.stall_seconds, (
            f"no progress for {self.stall_seconds:.0f} s (last {self._last_state})\n"
            + self.log.read_text()[-3000:]
        )
        return snapshot


@contextmanager
def _tuning_process(command: list[str], log_path: Path) -> Iterator[subprocess.Popen[bytes]]:
    """The tuning CLI as a child process, killed and reaped however the test ends."""
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    with open(log_path, "wb") as log:
        process = subprocess.Popen(command, cwd=REPO, env=env, stderr=log)
        try:
            yield process
        finally:
            if process.poll() is None:
                process.kill()
            process.wait()


def _get_json(url: str) -> dict[str, Any] | None:
    try:
        with urllib.request.urlopen(url, timeout=2) as response:
            body: dict[str, Any] = json.loads(response.read())
            return body
    except OSError:
        return None


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("data")
    pq.write_table(pa.Table.from_pylist(dolly_rows(240, seed=7)), folder / "dolly.parquet")
    return folder


@dataclass
class Run:
    output: Path
    killed_at_step: int
    first_run: list[dict[str, Any]] = field(default_factory=list)
    second_run: list[dict[str, Any]] = field(default_factory=list)
    metrics_text: str = ""
    result: dict[str, Any] = field(default_factory=dict)


@pytest.fixture(scope="module")
def lora_run(
    tmp_path_factory: pytest.TempPathFactory, data_dir: Path, smollm2_path: Path
) -> Run:
    root = tmp_path_factory.mktemp("lora")
    config = _write_config(
        root / "training_config.yaml",
        {"per_device_train_batch_size": 4, "max_steps": TOTAL_STEPS,
         "save_strategy": "steps", "save_steps": SAVE_STEPS},
        {},
    )
    output = root / "out"
    first_checkpoint = output / "checkpoints" / f"step-{SAVE_STEPS:07d}" / "trainer_state.json"

    port = _free_port()
    command = _tune_command(config, data_dir, output, smollm2_path, "--method", "lora",
                            "--progress-port", str(port))
    run = Run(output=output, killed_at_step=0)
    with _tuning_process(command, root / "first.log") as process:
        watch = ProgressWatch(process, root / "first.log", port)
        while not first_checkpoint.exists():
            snapshot = watch.poll()
            if snapshot is not None:
                run.first_run.append(snapshot)
                if snapshot["phase"] == "training" and not run.metrics_text:
                    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics") as reply:
                        run.metrics_text = reply.read().decode()
            time.sleep(0.5)
        process.send_signal(signal.SIGKILL)
        process.wait()
    run.killed_at_step = json.loads((output / "progress.json").read_text())["step"]

    port = _free_port()
    command[-1] = str(port)
    with _tuning_process(command, root / "second.log") as process:
        watch = ProgressWatch(process, root / "second.log", port)
        while process.poll() is None:
            snapshot = watch.poll(must_run=False)
            if snapshot is not None:
                run.second_run.append(snapshot)
            time.sleep(0.5)
    assert process.returncode == 0, (root / "second.log").read_text()[-3000:]
    run.result = json.loads((output / "training_result.json").read_text())
    return run


def test_precision_follows_the_cpu(lora_run: Run) -> None:
    from runtime.precision import cpu_capability

    capability = cpu_capability()
    precision = lora_run.result["precision"]
    expected = "bfloat16" if capability.has_native_bfloat16 else "float32"
    assert precision["dtype"] == lora_run.result["dtype"] == expected
    assert precision["requested"] == "auto" and precision["capability"] == capability.name
    training = [s for s in lora_run.second_run if s["phase"] == "training"]
    assert training[-1]["precision"]["dtype"] == expected


def test_loss_falls_and_held_out_loss_improves(lora_run: Run) -> None:
    result = lora_run.result
    losses = result["losses"]
    assert len(losses) == TOTAL_STEPS
    assert sum(losses[-3:]) / 3 < sum(losses[:3]) / 3
    before, after = result["evaluation"]["before"], result["evaluation"]["after"]
    assert after["loss"] < before["loss"]
    assert after["perplexity"] < before["perplexity"]
    assert (lora_run.output / "adapter_config.json").is_file()
    assert (lora_run.output / "adapter_model.safetensors").is_file()
    assert (lora_run.output / "fine_tuning_completed.txt").is_file()


def test_restart_resumes_from_the_last_checkpoint(lora_run: Run) -> None:
    assert SAVE_STEPS <= lora_run.killed_at_step < TOTAL_STEPS
    result = lora_run.result
    assert result["resumed_from_step"] == SAVE_STEPS
    assert result["total_steps"] == TOTAL_STEPS
    training = [s for s in lora_run.second_run if s["phase"] == "training"]
    assert training and min(s["step"] for s in training) >= SAVE_STEPS
    assert training[0]["resumed_from_step"] == SAVE_STEPS
    assert max(s["step"] for s in lora_run.second_run) == TOTAL_STEPS
    assert not (lora_run.output / "checkpoints").exists()  # cleaned up after success


def test_progress_is_served_as_json_and_prometheus(lora_run: Run) -> None:
    training = [s for s in lora_run.first_run if s["phase"] == "training" and s["step"] >= 2]
    assert training, lora_run.first_run
    latest = training[-1]
    assert latest["total_steps"] == TOTAL_STEPS
    assert latest["tokens_per_second"] > 0 and latest["eta_seconds"] is not None
    assert latest["learning_rate"] > 0 and latest["loss"] > 0
    assert latest["evaluation"]["before"]["loss"] > 0
    phases = {s["phase"] for s in lora_run.first_run}
    assert "training" in phases
    assert "kaito_tuning_total_steps 12.0" in lora_run.metrics_text
    assert 'kaito_tuning_phase{kaito_tuning_phase="training"} 1.0' in lora_run.metrics_text
    final = json.loads((lora_run.output / "progress.json").read_text())
    assert final["phase"] == "succeeded" and final["step"] == TOTAL_STEPS


def test_adapter_loads_with_peft_and_changes_answers(lora_run: Run, smollm2_path: Path) -> None:
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from runtime.tuning.model import quiet_library_deprecations

    tokenizer: Any = AutoTokenizer.from_pretrained(smollm2_path)
    base: Any = AutoModelForCausalLM.from_pretrained(smollm2_path)
    with quiet_library_deprecations():
        model: Any = PeftModel.from_pretrained(base, lora_run.output)
    model.eval()
    prefixes = ("KAITO-CODE", "SUMMARY", "CLASS")
    changed, learned = 0, 0
    for row in dolly_rows(240, seed=7)[:3]:
        content = row["instruction"] + (f"\n\n{row['context']}" if row["context"] else "")
        prompt = tokenizer.apply_chat_template(
            [{"role": "user", "content": content}], add_generation_prompt=True,
            return_tensors="pt", return_dict=True,
        )
        width = prompt["input_ids"].shape[1]
        with quiet_library_deprecations():
            tuned = model.generate(**prompt, max_new_tokens=12, do_sample=False)
            with model.disable_adapter():
                plain = model.generate(**prompt, max_new_tokens=12, do_sample=False)
        tuned_text = tokenizer.decode(tuned[0, width:], skip_special_tokens=True)
        plain_text = tokenizer.decode(plain[0, width:], skip_special_tokens=True)
        changed += tuned_text != plain_text
        learned += tuned_text.strip().startswith(prefixes)
    assert changed == 3
    assert learned >= 2


@pytest.mark.timeout(1800)  # bounded by its 4 steps; generous for the slowest CPU
def test_qlora_with_packing_trains_and_pushes(
    tmp_path: Path, data_dir: Path, smollm2_path: Path, registry: RegistryInfo
) -> None:
    config = _write_config(
        tmp_path / "training_config.yaml",
        {"per_device_train_batch_size": 2, "max_steps": 4},
        {"packing": True, "train_test_split": 0.95},
        quantization={"load_in_4bit": True, "bnb_4bit_quant_type": "nf4",
                      "bnb_4bit_use_double_quant": True},
    )
    secret = tmp_path / "dockerconfigjson"
    secret.write_text(registry.dockerconfigjson)
    output = tmp_path / "out"
    reference = f"{registry.host}/adapters/smollm2-dolly:v1"
    completed = subprocess.run(
        _tune_command(config, data_dir, output, smollm2_path, "--method", "qlora",
                      "--push-to", reference, "--push-secret", str(secret)),
        cwd=REPO, env={**os.environ, "PYTHONPATH": str(REPO)}, capture_output=True, text=True,
        timeout=1700, check=False,
    )
    assert completed.returncode == 0, completed.stderr[-3000:]
    result = json.loads((output / "training_result.json").read_text())
    assert result["method"] == "qlora" and result["hyperparameters"]["load_in_4bit"] is True
    assert result["hyperparameters"]["packing"] is True
    assert result["evaluation"]["after"]["loss"] < result["evaluation"]["before"]["loss"]
    # The sentinel names the pushed artifact by digest; pull it and compare bytes.
    artifact = json.loads((output / "fine_tuning_completed.txt").read_text())["artifact"]
    assert artifact.startswith(f"{registry.host}/adapters/smollm2-dolly@sha256:")
    pulled = pull_adapter(artifact, tmp_path / "pulled", registry.dockerconfigjson)
    assert sorted(p.name for p in pulled.files) == [
        "adapter_config.json", "adapter_model.safetensors", "training_result.json",
    ]
    for path in pulled.files:
        assert path.read_bytes() == (output / path.name).read_bytes()
    assert pulled.annotations[ANNOTATION_BASE_MODEL] == str(smollm2_path)
    assert pulled.annotations[ANNOTATION_DATASET_DIGEST] == result["dataset_digest"]
