"""Fixtures for the runtime tier: the real small model and a real OCI registry.

``smollm2_path`` converts the packaged SmolLM2-135M-Instruct GGUF once per cache (see
runtime/base_model.py) and yields the safetensors folder. ``registry`` starts Debian's
``docker-registry`` (distribution 2.8) on a free loopback port with htpasswd basic auth
and yields its address, the user, the password and a matching dockerconfigjson.
"""

from __future__ import annotations

import random
import secrets
import shutil
import socket
import subprocess
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import NamedTuple

import pytest

from kaito.devcluster.services import dockerconfigjson as dockerconfigjson_for
from runtime.base_model import resolve_model_path

_SYLLABLES = ("ka", "zor", "mil", "tra", "vex", "lun", "qui", "bor", "nes", "pha", "dri", "ol")
_CITIES = ("Oslo", "Lima", "Perth", "Quito", "Dakar", "Hanoi", "Turin", "Nagoya")
_KINDS = ("river", "mountain", "festival", "bridge", "library", "comet")


def dolly_rows(count: int, seed: int = 0) -> list[dict[str, str]]:
    """Dolly-style rows (instruction, context, response, category) with made-up facts.

    Answers follow a few fixed phrasings a small model learns within tens of steps, so
    training loss and held-out loss visibly fall; the facts themselves are random.
    """
    rng = random.Random(seed)
    rows = []
    for index in range(count):
        name = "".join(rng.choice(_SYLLABLES) for _ in range(3)).capitalize()
        kind, city = rng.choice(_KINDS), rng.choice(_CITIES)
        year, code = rng.randint(1200, 2020), rng.randint(100, 999)
        template = index % 3
        if template == 0:
            rows.append({
                "instruction": f"What is the kaito code of {name}?",
                "context": "",
                "response": f"KAITO-CODE {name}: {code}. Verified by the registry.",
                "category": "open_qa",
            })
        elif template == 1:
            rows.append({
                "instruction": f"Summarize what the text says about {name}.",
                "context": f"{name} is a {kind} near {city}, first recorded in {year}.",
                "response": f"SUMMARY {name}: a {kind}; {city}; {year}. End of summary.",
                "category": "summarization",
            })
        else:
            rows.append({
                "instruction": f"Classify {name} as a place or an event.",
                "context": f"{name} is a {kind}.",
                "response": (
                    f"CLASS {name}: "
                    f"{'event' if kind in ('festival', 'comet') else 'place'}. Done."
                ),
                "category": "classification",
            })
    return rows


class RegistryInfo(NamedTuple):
    """A running registry: ``host`` is ``127.0.0.1:PORT``; ``dockerconfigjson`` is the
    text of a kubernetes.io/dockerconfigjson secret's ``.dockerconfigjson`` key."""

    host: str
    user: str
    password: str
    dockerconfigjson: str


@pytest.fixture(scope="session")
def smollm2_path() -> Path:
    """A folder with SmolLM2-135M-Instruct as safetensors plus its tokenizer."""
    return resolve_model_path("smollm2-135m-instruct")


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _wait_ready(host: str, process: subprocess.Popen[bytes], deadline_seconds: float) -> None:
    deadline = time.monotonic() + deadline_seconds
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"docker-registry exited with code {process.returncode}")
        try:
            urllib.request.urlopen(f"http://{host}/v2/", timeout=1)
            return
        except urllib.error.HTTPError as err:
            if err.code == 401:  # up, and asking for credentials: what we want
                return
        except OSError:
            pass
        time.sleep(0.1)
    raise RuntimeError(f"docker-registry did not answer on {host} in {deadline_seconds}s")


@pytest.fixture(scope="session")
def registry(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RegistryInfo]:
    """Debian's docker-registry on loopback, htpasswd (bcrypt) basic auth, temp storage."""
    binary = shutil.which("docker-registry")
    htpasswd = shutil.which("htpasswd")
    if binary is None or htpasswd is None:
        pytest.fail("needs Debian packages docker-registry and apache2-utils (htpasswd)")
    root = tmp_path_factory.mktemp("registry")
    user, password = "kaito", secrets.token_urlsafe(12)
    entry = subprocess.run(
        [htpasswd, "-Bbn", user, password], check=True, capture_output=True, text=True
    ).stdout.strip()
    (root / "htpasswd").write_text(entry + "\n")
    port = _free_port()
    host = f"127.0.0.1:{port}"
    (root / "storage").mkdir()
    (root / "config.yml").write_text(
        "\n".join(
            [
                "version: 0.1",
                "log:",
                "  level: warn",
                "storage:",
                "  filesystem:",
                f"    rootdirectory: {root / 'storage'}",
                "  delete:",
                "    enabled: true",
                "http:",
                f"  addr: {host}",
                "auth:",
                "  htpasswd:",
                "    realm: kaito-test",
                f"    path: {root / 'htpasswd'}",
                "",
            ]
        )
    )
    with open(root / "registry.log", "wb") as log_file:
        process = subprocess.Popen(
            [binary, "serve", str(root / "config.yml")],
            stdout=log_file,
            stderr=subprocess.STDOUT,
        )
        try:
            _wait_ready(host, process, deadline_seconds=20)
            yield RegistryInfo(host, user, password, dockerconfigjson_for(host, user, password))
        finally:
            process.terminate()
            try:
                process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
