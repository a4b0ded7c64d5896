"""`kaito dev up --real-node` / `down` and the image registry (kaito/devcluster/devcli.py):
`down` stops the registry when `up` started it, also after a start that failed, and
leaves alone one that already ran."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from kaito.devcluster import devcli
from kaito.devcluster.images import ProjectImages


class _Plane:
    kubeconfig = Path("/k")
    server = "https://10.244.0.1:6443"
    log_dir = Path("/l")

    def pids(self) -> dict[str, int]:
        return {}


class _Real:
    workdir = Path("/w")
    cluster = _Plane()

    class node:
        node_name = "kaito-gpu-0"


@pytest.fixture
def stopped(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    calls: list[str] = []
    monkeypatch.setattr(devcli, "stop_registry", lambda: calls.append("stop-registry"))
    monkeypatch.setattr(devcli, "tear_down_recorded_node", lambda force: [])
    return calls


def _images(started: bool) -> ProjectImages:
    return ProjectImages("127.0.0.1:5001", {"pause": "127.0.0.1:5001/pause:1"},
                         started_registry=started)


@pytest.mark.parametrize("started", [True, False])
def test_down_stops_the_registry_only_when_up_started_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, stopped: list[str], started: bool
) -> None:
    def start(workdir: Path, **options: Any) -> _Real:
        workdir.mkdir(parents=True)  # as the real node's folder is made
        return _Real()

    monkeypatch.setattr(devcli, "start_real_cluster", start)
    devcli.ensure_up(tmp_path / "dev", gpu_nodes=0, instance_type="x", real_node=True,
                     images=_images(started))
    devcli._stop(tmp_path / "dev")
    assert stopped == (["stop-registry"] if started else [])


def test_a_failed_start_still_lets_down_stop_the_registry_it_started(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, stopped: list[str]
) -> None:
    def fails(*args: Any, **kwargs: Any) -> None:
        raise RuntimeError("kube-proxy: process exited early")

    monkeypatch.setattr(devcli, "start_real_cluster", fails)
    with pytest.raises(RuntimeError):
        devcli.ensure_up(tmp_path / "dev", gpu_nodes=0, instance_type="x", real_node=True,
                         images=_images(True))
    devcli._stop(tmp_path / "dev")
    assert stopped == ["stop-registry"]
