"""`kaito dev up` starts a cluster a human can use with kubectl; `down` stops it."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.e2e

REPO = Path(__file__).resolve().parents[2]


def _kaito(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "kaito", *args], cwd=REPO,
                          capture_output=True, text=True, timeout=300, check=False)


def test_dev_up_prints_a_kubeconfig_kubectl_can_use(tmp_path: Path, k8s_binaries: Path) -> None:
    workdir = tmp_path / "dev"
    try:
        up = _kaito("dev", "up", "--dir", str(workdir), "--gpu-nodes", "2")
        assert up.returncode == 0, up.stderr
        match = re.search(r"export KUBECONFIG=(\S+)", up.stdout)
        assert match, up.stdout
        nodes = subprocess.run(
            [str(k8s_binaries / "kubectl"), "--kubeconfig", match.group(1),
             "get", "nodes", "-o", "json"],
            capture_output=True, text=True, check=True, timeout=60,
        )
        names = sorted(n["metadata"]["name"] for n in json.loads(nodes.stdout)["items"])
        assert names == ["gpu-node-0", "gpu-node-1"]
        assert _kaito("dev", "status", "--dir", str(workdir)).returncode == 0
    finally:
        down = _kaito("dev", "down", "--dir", str(workdir))
    assert down.returncode == 0, down.stderr
    assert not workdir.exists()
    assert _kaito("dev", "status", "--dir", str(workdir)).returncode == 1
