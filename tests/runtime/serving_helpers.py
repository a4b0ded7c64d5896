"""Helpers for the serving runtime tests: run ``python -m runtime.serving`` as a real
process on loopback, and train a tiny adapter with the tuning CLI.

The adapter's data teaches one fixed reply ("PINEAPPLE PROTOCOL ENGAGED.") to every
question, so a test can tell an adapter answer from a base-model answer unambiguously.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path

from kaito.phrase import PHRASE, TRAIN_QUESTIONS, phrase_rows, phrase_training_config

__all__ = ["PHRASE", "TRAIN_QUESTIONS"]  # the serving tests take them from here

REPO = Path(__file__).resolve().parents[2]
def free_port() -> int:
    """A TCP port free on loopback right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@dataclass
class ServerProcess:
    """A running server: its URL, process and log file."""

    url: str
    process: subprocess.Popen[bytes]
    log_path: Path

    def log_tail(self, size: int = 4000) -> str:
        return self.log_path.read_text(errors="replace")[-size:]

    def stop(self) -> None:
        self.process.terminate()
        try:
            self.process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()


def start_server(args: list[str], log_path: Path, *, ready_seconds: float = 180) -> ServerProcess:
    """Start ``python -m runtime.serving`` with ``args`` and wait for ``/health`` 200."""
    port = free_port()
    command = [sys.executable, "-m", "runtime.serving", "--host", "127.0.0.1",
               "--port", str(port), *args]
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    log = open(log_path, "wb")  # noqa: SIM115 - closed with the process
    process = subprocess.Popen(command, cwd=REPO, env=env, stdout=log, stderr=subprocess.STDOUT)
    log.close()
    server = ServerProcess(f"http://127.0.0.1:{port}", process, log_path)
    deadline = time.monotonic() + ready_seconds
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError("server exited early:\n" + server.log_tail())
        try:
            with urllib.request.urlopen(server.url + "/health", timeout=2) as response:
                if response.status == 200:
                    return server
        except (urllib.error.URLError, OSError):
            pass
        time.sleep(0.25)
    server.stop()
    raise RuntimeError("server not healthy in time:\n" + server.log_tail())


def _tuning_fingerprint(base_model: Path, config_text: str, data_text: str) -> str:
    """A digest of everything the adapter depends on, tuning code included."""
    digest = hashlib.sha256()
    for source in sorted((REPO / "runtime" / "tuning").rglob("*.py")):
        digest.update(source.read_bytes())
    digest.update(str(base_model.resolve()).encode())
    digest.update(config_text.encode())
    digest.update(data_text.encode())
    return digest.hexdigest()[:16]


def train_phrase_adapter(base_model: Path, workdir: Path) -> Path:
    """Train (with the tuning CLI) a LoRA adapter answering every question with PHRASE.

    Training takes minutes on a busy CPU, so the result is cached under
    ``~/.cache/kaito-test-adapters/<digest>``; the digest covers the tuning runtime's
    source, the base model, the config and the data, so any change retrains.
    """
    rows = phrase_rows()
    config_text = json.dumps(phrase_training_config())  # JSON is YAML
    cache = Path.home() / ".cache" / "kaito-test-adapters" / _tuning_fingerprint(
        base_model, config_text, rows)
    if (cache / "adapter_model.safetensors").is_file():
        return cache
    data = workdir / "data"
    data.mkdir(parents=True, exist_ok=True)
    (data / "train.jsonl").write_text(rows)
    config = workdir / "training_config.yaml"
    config.write_text(config_text)
    output = workdir / "adapter"
    command = [sys.executable, "-m", "runtime.tuning", "--config", str(config),
               "--data-dir", str(data), "--output-dir", str(output),
               "--base-model", str(base_model), "--method", "lora", "--log-format", "text"]
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    result = subprocess.run(command, cwd=REPO, env=env, capture_output=True, text=True,
                            timeout=600, check=False)
    if result.returncode != 0:
        raise RuntimeError("tuning failed:\n" + result.stderr[-4000:])
    cache.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(dir=cache.parent))
    for name in ("adapter_config.json", "adapter_model.safetensors"):
        shutil.copy2(output / name, staging / name)
    try:
        staging.rename(cache)
    except OSError:  # another run cached it first
        shutil.rmtree(staging, ignore_errors=True)
    return cache
