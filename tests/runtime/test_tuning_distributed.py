"""Tuning under torchrun on the CPU (gloo): DDP and FSDP on the real SmolLM2-135M.

- 2 processes (DDP) give the same per-step losses as 1 process at the same global batch
  (1 x accumulation 2 = 2 ranks x accumulation 1), even across a kill and resume from a
  checkpoint; ``save_total_limit: null`` keeps every checkpoint; ``save_strategy: "no"``
  writes none; one adapter comes out.
- 2 processes (FSDP): the loss falls and the adapter answers in ``kaito serve``.
- a rank killed mid-run ends the run at once, naming the rank in the termination message.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from kaito.phrase import PHRASE, phrase_rows, phrase_training_config
from tests.runtime.conftest import dolly_rows
from tests.runtime.serving_helpers import start_server
from tests.runtime.test_tuning import _free_port, _get_json

# The module's runs share one fixture of three tuning launches (a few minutes).
pytestmark = [pytest.mark.runtime, pytest.mark.timeout(1800)]

REPO = Path(__file__).resolve().parents[2]
STEPS = 10
SAVE_STEPS = 2
KILL_AFTER_CHECKPOINT = 6


def _config(path: Path, training: dict[str, Any]) -> Path:
    document = {"training_config": {
        "ModelConfig": {"torch_dtype": "float32"},  # the comparison is for fp32
        "LoraConfig": {"r": 8, "lora_alpha": 16, "target_modules": "all-linear"},
        "TrainingArguments": {"learning_rate": 0.002, "warmup_steps": 1, "max_steps": STEPS,
                              "per_device_train_batch_size": 2,
                              "per_device_eval_batch_size": 8, **training},
        "DatasetConfig": {"train_test_split": 0.9, "max_seq_length": 64},
    }}
    path.write_text(json.dumps(document))
    return path


def _descendants(pid: int) -> list[int]:
    try:
        children = [int(c) for c in
                    Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]
    except OSError:
        return []
    return [grand for child in children for grand in (child, *_descendants(child))]


def _kill_run(process: subprocess.Popen[bytes]) -> None:
    """SIGKILL the launcher and every worker, as losing the pod does: torchrun starts
    its workers in sessions of their own, so killing the launcher's group is not enough."""
    for pid in [*_descendants(process.pid), process.pid]:
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    process.wait()


@contextmanager
def _tune(arguments: list[str], log_path: Path,
          env: dict[str, str] | None = None) -> Iterator[subprocess.Popen[bytes]]:
    """``kaito tune`` (python -m runtime.tuning); it and its workers are killed however
    the test ends."""
    command = [sys.executable, "-m", "runtime.tuning", "--log-format", "json", *arguments]
    # One thread per process, as torchrun gives each worker: on a shared two-core machine
    # a lone process with a thread per core is slowed many times by the others.
    full_env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1", **(env or {})}
    with open(log_path, "wb") as log:
        process = subprocess.Popen(command, cwd=REPO, env=full_env, stdout=log, stderr=log)
        try:
            yield process
        finally:
            if process.poll() is None:
                _kill_run(process)


def _wait(process: subprocess.Popen[bytes], log: Path, seconds: float) -> int:
    try:
        return process.wait(timeout=seconds)
    except subprocess.TimeoutExpired:
        pytest.fail(f"tuning still running after {seconds:.0f} s:\n{log.read_text()[-3000:]}")


def _checkpoints_saved(log: Path) -> int:
    return sum(1 for line in log.read_text().splitlines()
               if '"msg": "checkpoint saved"' in line or '"msg":"checkpoint saved"' in line)


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("data")
    pq.write_table(pa.Table.from_pylist(dolly_rows(80, seed=3)), folder / "dolly.parquet")
    return folder


@dataclass
class Runs:
    single: dict[str, Any]
    single_log: Path
    ddp: dict[str, Any]
    ddp_output: Path
    checkpoints_at_kill: list[str]
    progress: list[dict[str, Any]] = field(default_factory=list)


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory, data_dir: Path, smollm2_path: Path) -> Runs:
    root = tmp_path_factory.mktemp("ddp")
    common = ["--data-dir", str(data_dir), "--base-model", str(smollm2_path), "--method", "lora"]
    # One process, accumulation 2, upstream's default save_strategy "no".
    single_config = _config(root / "single.yaml", {"gradient_accumulation_steps": 2})
    with _tune(["--config", str(single_config), "--output-dir", str(root / "single"),
                *common], root / "single.log") as process:
        assert _wait(process, root / "single.log", 1200) == 0, (root / "single.log").read_text()
    single = json.loads((root / "single" / "training_result.json").read_text())

    # Two processes, accumulation 1: the same global batch. Checkpoints every 2 steps,
    # none pruned; every process killed (as a lost pod) after the 3rd.
    ddp_config = _config(root / "ddp.yaml", {"save_strategy": "steps",
                                             "save_steps": SAVE_STEPS,
                                             "save_total_limit": None})
    output = root / "ddp"
    port = _free_port()
    arguments = ["--config", str(ddp_config), "--output-dir", str(output), *common,
                 "--nproc-per-node", "2", "--progress-port", str(port)]
    marker = output / "checkpoints" / f"step-{KILL_AFTER_CHECKPOINT:07d}" / "trainer_state.json"
    progress: list[dict[str, Any]] = []
    with _tune(arguments, root / "first.log") as process:
        deadline = time.monotonic() + 1200
        while not marker.exists():
            assert process.poll() is None, (root / "first.log").read_text()[-3000:]
            assert time.monotonic() < deadline, (root / "first.log").read_text()[-3000:]
            snapshot = _get_json(f"http://127.0.0.1:{port}/progress")
            if snapshot is not None:
                progress.append(snapshot)
            time.sleep(0.2)
        _kill_run(process)
    at_kill = sorted(p.name for p in (output / "checkpoints").glob("step-*"))
    with _tune(arguments[:-2], root / "second.log") as process:
        assert _wait(process, root / "second.log", 1200) == 0, (
            root / "second.log").read_text()[-3000:]
    ddp = json.loads((output / "training_result.json").read_text())
    return Runs(single, root / "single.log", ddp, output, at_kill, progress)


def test_two_ddp_processes_match_one_process_at_the_same_global_batch(runs: Runs) -> None:
    assert runs.single["strategy"] == "single" and runs.single["world_size"] == 1
    assert runs.ddp["strategy"] == "ddp" and runs.ddp["world_size"] == 2
    assert "fits one device" in runs.ddp["distributed"]["reason"]
    single, ddp = runs.single["losses"], runs.ddp["losses"]
    assert len(single) == len(ddp) == STEPS
    for step, (one, two) in enumerate(zip(single, ddp, strict=True), start=1):
        assert abs(one - two) <= 1e-3 * abs(one), (step, single, ddp)
    before, after = runs.ddp["evaluation"]["before"], runs.ddp["evaluation"]["after"]
    assert abs(before["loss"] - runs.single["evaluation"]["before"]["loss"]) <= 1e-3 * before[
        "loss"]
    assert after["loss"] < before["loss"]


def test_one_adapter_comes_out_of_two_processes(runs: Runs) -> None:
    names = sorted(p.name for p in runs.ddp_output.iterdir())
    assert [n for n in names if n.endswith(".safetensors")] == ["adapter_model.safetensors"]
    assert "adapter_config.json" in names and "fine_tuning_completed.txt" in names
    assert not (runs.ddp_output / "checkpoints").exists()  # removed once the adapter is saved


def test_save_total_limit_null_keeps_every_checkpoint_and_resume_continues(runs: Runs) -> None:
    expected = [f"step-{step:07d}" for step in range(SAVE_STEPS, KILL_AFTER_CHECKPOINT + 1,
                                                      SAVE_STEPS)]
    assert runs.checkpoints_at_kill[: len(expected)] == expected
    resumed_from = int(runs.checkpoints_at_kill[-1].split("-")[1])
    assert runs.ddp["resumed_from_step"] == resumed_from
    assert runs.ddp["total_steps"] == STEPS
    final = json.loads((runs.ddp_output / "progress.json").read_text())
    assert final["resumed_from_step"] == resumed_from and final["step"] == STEPS


def test_save_strategy_no_writes_no_checkpoint(runs: Runs) -> None:
    assert _checkpoints_saved(runs.single_log) == 0
    assert runs.single["resumed_from_step"] is None


def test_rank_zero_serves_global_progress(runs: Runs) -> None:
    training = [s for s in runs.progress if s["phase"] == "training" and s["step"] >= 2]
    assert training, runs.progress
    latest = training[-1]
    assert latest["distributed"]["strategy"] == "ddp"
    assert latest["distributed"]["world_size"] == 2
    assert latest["tokens_per_second"] > 0 and latest["eta_seconds"] is not None
    # Global tokens: at the same step, as many as the one-process run trained.
    single_tokens = runs.single["tokens_trained_this_run"] / STEPS
    assert latest["tokens_seen"] >= latest["step"] * single_tokens * 0.5


def test_two_fsdp_processes_train_an_adapter_kaito_serve_answers_with(
    tmp_path: Path, smollm2_path: Path
) -> None:
    data = tmp_path / "data"
    data.mkdir()
    (data / "train.jsonl").write_text(phrase_rows())
    document = phrase_training_config()
    # 2 ranks x 2 rows = the phrase config's global batch of 4.
    document["training_config"]["TrainingArguments"]["per_device_train_batch_size"] = 2
    config = tmp_path / "training_config.yaml"
    config.write_text(json.dumps(document))
    output = tmp_path / "out"
    with _tune(["--config", str(config), "--data-dir", str(data), "--output-dir", str(output),
                "--base-model", str(smollm2_path), "--method", "lora",
                "--nproc-per-node", "2", "--strategy", "fsdp"], tmp_path / "tune.log") as process:
        assert _wait(process, tmp_path / "tune.log", 1200) == 0, (
            tmp_path / "tune.log").read_text()[-3000:]
    result = json.loads((output / "training_result.json").read_text())
    assert (result["strategy"], result["world_size"]) == ("fsdp", 2)
    losses = result["losses"]
    assert losses[-1] < losses[0] / 2, losses
    server = start_server(["--model", str(smollm2_path), "--adapter", f"phrase={output}",
                           "--torch-threads", "1", "--dtype", "float32",
                           "--default-max-tokens", "12"], tmp_path / "serve.log")
    try:
        import urllib.request

        request = urllib.request.Request(
            server.url + "/v1/chat/completions",
            data=json.dumps({"model": "phrase", "max_tokens": 12, "temperature": 0,
                             "messages": [{"role": "user", "content": "Name a color."}]}
                            ).encode(),
            headers={"Content-Type": "application/json"})
        with urllib.request.urlopen(request, timeout=120) as reply:
            answer = json.loads(reply.read())["choices"][0]["message"]["content"]
    finally:
        server.stop()
    assert PHRASE.split()[0] in answer, answer


def _worker_with_rank(launcher: int, rank: int) -> int | None:
    for child in Path(f"/proc/{launcher}/task/{launcher}/children").read_text().split():
        try:
            environ = Path(f"/proc/{child}/environ").read_bytes().split(b"\0")
        except OSError:
            continue
        if f"RANK={rank}".encode() in environ:
            return int(child)
    return None


def test_a_killed_rank_fails_the_run_at_once_and_is_named(
    tmp_path: Path, data_dir: Path, smollm2_path: Path
) -> None:
    config = _config(tmp_path / "c.yaml", {"max_steps": 200})
    termination = tmp_path / "termination-log"
    port = _free_port()
    with _tune(["--config", str(config), "--data-dir", str(data_dir), "--output-dir",
                str(tmp_path / "out"), "--base-model", str(smollm2_path), "--nproc-per-node",
                "2", "--progress-port", str(port)], tmp_path / "tune.log",
               env={"KAITO_TERMINATION_LOG": str(termination)}) as process:
        deadline = time.monotonic() + 900
        while True:
            assert process.poll() is None, (tmp_path / "tune.log").read_text()[-3000:]
            assert time.monotonic() < deadline, (tmp_path / "tune.log").read_text()[-3000:]
            snapshot = _get_json(f"http://127.0.0.1:{port}/progress")
            if snapshot is not None and snapshot["phase"] == "training" and snapshot["step"]:
                break
            time.sleep(0.2)
        victim = _worker_with_rank(process.pid, 1)
        assert victim is not None
        os.kill(victim, signal.SIGKILL)
        killed_at = time.monotonic()
        code = _wait(process, tmp_path / "tune.log", 60)
    assert code != 0
    assert time.monotonic() - killed_at < 60
    message = termination.read_text()
    assert message.startswith("rank 1 of 2 failed (killed by signal 9)"), message
