"""The real node's start order (kaito/devcluster/realnode.py): the host is recorded before
anything changes, and a failure at any later step (the bridge and guard included) undoes
what was made; a start that could not take the machine touches nothing, not even the
record of the node that holds it."""

from __future__ import annotations

from pathlib import Path

import pytest

from kaito.devcluster import realnode
from kaito.devcluster.cluster import LocalCluster
from kaito.devcluster.realnode import RealCluster, RealNodeError


@pytest.fixture
def steps(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> list[str]:
    done: list[str] = []
    record = tmp_path / "record.json"
    monkeypatch.setattr(realnode, "RECORD_PATH", record)

    def acquire(self: realnode.RealNodeHost) -> None:
        done.append("acquire")
        self._lock = open(tmp_path / "lock", "a+")  # noqa: SIM115 - released by restore

    def restore(self: realnode.RealNodeHost, node_dirs: tuple[Path, ...]) -> list[str]:
        done.append("restore")
        self.release()
        return []

    monkeypatch.setattr(realnode.RealNodeHost, "acquire", acquire)
    monkeypatch.setattr(realnode.RealNodeHost, "take_snapshot", lambda self: done.append(
        "snapshot"))
    monkeypatch.setattr(realnode.RealNodeHost, "restore", restore)
    def node_stop(self: realnode.RealNode) -> list[str]:
        done.append("node stop")
        return []

    monkeypatch.setattr(realnode.RealNode, "stop", node_stop)
    monkeypatch.setattr(LocalCluster, "stop", lambda self: done.append("plane stop"))
    monkeypatch.setattr(LocalCluster, "start", lambda self: done.append("plane"))
    monkeypatch.setattr(realnode.RealNode, "start", lambda self: done.append("node"))
    return done


def _cluster(tmp_path: Path) -> RealCluster:
    return RealCluster(tmp_path / "work", tmp_path / "bin", sandbox_image="pause")


def test_a_failure_making_the_bridge_and_guard_is_undone(
    steps: list[str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def prepare(self: realnode.RealNodeHost) -> None:
        steps.append("bridge")
        raise RealNodeError("iptables -N KAITO-POD-GUARD failed")

    monkeypatch.setattr(realnode.RealNodeHost, "prepare", prepare)
    with pytest.raises(RealNodeError):
        _cluster(tmp_path).start()
    assert steps == ["acquire", "snapshot", "bridge", "node stop", "plane stop", "restore"]
    assert not realnode.RECORD_PATH.exists()


def test_the_record_is_written_before_the_first_change(
    steps: list[str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    seen: list[bool] = []
    monkeypatch.setattr(realnode.RealNodeHost, "prepare",
                        lambda self: seen.append(realnode.RECORD_PATH.exists()))
    cluster = _cluster(tmp_path)
    cluster.start()
    assert seen == [True]
    assert steps == ["acquire", "snapshot", "plane", "node"]
    cluster.stop()
    cluster.stop()  # a second stop has nothing left to do
    assert steps[-3:] == ["node stop", "plane stop", "restore"]
    assert steps.count("restore") == 1


def test_a_start_that_cannot_take_the_machine_touches_nothing(
    steps: list[str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    realnode.RECORD_PATH.write_text("{}")  # the running node's record

    def busy(self: realnode.RealNodeHost) -> None:
        raise RealNodeError("another real node runs on this machine")

    monkeypatch.setattr(realnode.RealNodeHost, "acquire", busy)
    cluster = _cluster(tmp_path)
    with pytest.raises(RealNodeError):
        cluster.start()
    assert cluster.stop() == []
    assert steps == [] and realnode.RECORD_PATH.exists()
