"""`kaito dev up --real-node` then `kaito dev down` leaves the host as it found it.

A snapshot of what a node changes (iptables rules without counters, the sysctls it
touches, mounts, links, cgroups, the sockets its processes listen on) is taken before
`up` and compared with one after `down`: after a full start, after a start that fails
half way (kube-proxy refuses a flag, after the kubelet has changed the host), and after
a start that fails while the bridge and guard are being made. A rule somebody else adds
during the session survives the teardown. These run before the session's real cluster
(test_real_pods.py) starts: one real node per machine.
"""

from __future__ import annotations

import ipaddress
import os
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from kaito.devcluster.host import (
    CGROUP_ROOT,
    IPTABLES_COMMANDS,
    WATCHED_PATHS,
    iptables_dump,
    links,
    mount_points,
    node_cgroups,
    normalised_iptables,
    read_sysctls,
)
from kaito.devcluster.images import local_registry, project_images
from kaito.devcluster.realnode import GUARD_CHAIN, KUBE_PROXY_ARGS_ENV, RECORD_PATH
from tests.kubelet.conftest import private_workdir

pytestmark = pytest.mark.timeout(1800)
NODE_PROCESSES = frozenset({"kubelet", "kube-proxy", "containerd", "containerd-shim"})
POD_NETWORK = ipaddress.ip_network("10.244.0.0/16")
SOMEONE_ELSES_RULE = ["-s", "192.0.2.7/32", "-m", "comment", "--comment",
                      "someone else", "-j", "DROP"]


def _listening(dev_dir: Path) -> list[str]:
    """TCP sockets listening for the node's processes, on the pod network, for the
    image registry, or for any process started from the dev folder."""
    inodes: dict[str, tuple[str, str]] = {}  # inode -> (address, port) in hex
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        for line in Path(table).read_text().splitlines()[1:]:
            fields = line.split()
            if fields[3] == "0A":  # LISTEN
                address, port = fields[1].split(":")
                inodes[fields[9]] = (address, port)
    found: set[str] = set()
    registry_port = int(local_registry().rsplit(":", 1)[1])
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            comm = (entry / "comm").read_text().strip()
            cmdline = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode()
            fds = [os.readlink(fd) for fd in (entry / "fd").iterdir()]
        except OSError:
            continue
        for target in fds:
            inode = target[len("socket:["):-1] if target.startswith("socket:[") else None
            if inode not in inodes:
                continue
            address_hex, port_hex = inodes[inode]
            port_number = int(port_hex, 16)
            ip = _address(address_hex)
            if (comm in NODE_PROCESSES or str(dev_dir) in cmdline
                    or (ip is not None and ip in POD_NETWORK)
                    or (comm == "docker-registry" and port_number == registry_port)):
                found.add(f"{comm} {ip}:{port_number}")
    return sorted(found)


def _address(text: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    raw = bytes.fromhex(text)
    if len(raw) == 4:
        return ipaddress.IPv4Address(raw[::-1])
    words = b"".join(raw[i:i + 4][::-1] for i in range(0, 16, 4))
    return ipaddress.IPv6Address(words)


def _cgroups() -> list[str]:
    tops = [str(p) for controller in CGROUP_ROOT.iterdir() if controller.is_dir()
            for p in controller.iterdir() if p.is_dir()]
    return sorted(set(tops) | set(node_cgroups()))


def host_snapshot(dev_dir: Path) -> dict[str, Any]:
    return {
        "iptables": {save: normalised_iptables(iptables_dump(save))
                     for save, _, _ in IPTABLES_COMMANDS},
        "sysctls": read_sysctls(),
        "mounts": sorted(mount_points()),
        "links": links(),
        "cgroups": _cgroups(),
        "listening": _listening(dev_dir),
        "paths": [p for p in WATCHED_PATHS if os.path.lexists(p)],
        "record": RECORD_PATH.exists(),
    }


def _differences(before: dict[str, Any], after: dict[str, Any]) -> dict[str, Any]:
    after = dict(after)
    # A sysctl that appears with its kernel module (br_netfilter, nf_conntrack loaded by
    # the first rule that needs it) was not set by anyone: compare the ones there before.
    after["sysctls"] = {name: after["sysctls"].get(name) for name in before["sysctls"]}
    return {key: {"before": before[key], "after": after[key]}
            for key in before if before[key] != after[key]}


def _kaito(*args: str, env: dict[str, str] | None = None, check: bool = True
           ) -> subprocess.CompletedProcess[str]:
    result = subprocess.run([sys.executable, "-m", "kaito", *args], capture_output=True,
                            text=True, timeout=1200, check=False,
                            env={**os.environ, **(env or {})})
    if check and result.returncode != 0:
        raise AssertionError(f"kaito {' '.join(args)} failed ({result.returncode}):\n"
                             f"{result.stdout[-3000:]}\n{result.stderr[-5000:]}")
    return result


def _iptables(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["iptables", "-w", *args], capture_output=True, text=True,
                          check=check)


@pytest.fixture(scope="module")
def dev_dir() -> Iterator[Path]:
    if os.geteuid() != 0:
        pytest.fail("a real node needs root")
    if RECORD_PATH.exists():
        pytest.fail(f"a real node runs on this machine ({RECORD_PATH}): stop it first")
    # Built and pushed first, so the snapshots below see no image build's mounts.
    project_images()
    root = private_workdir("dev")
    directory = root / "cluster"
    yield directory
    _kaito("dev", "down", "--dir", str(directory), check=False)
    shutil.rmtree(root, ignore_errors=True)


def test_up_and_down_leave_the_host_as_it_was_and_keep_others_rules(dev_dir: Path) -> None:
    before = host_snapshot(dev_dir)
    try:
        _kaito("dev", "up", "--real-node", "--dir", str(dev_dir))
        during = host_snapshot(dev_dir)
        # The snapshot sees the node (else the comparison below could not fail).
        assert "cni0" in during["links"] and "cni0" not in before["links"]
        assert GUARD_CHAIN in str(during["iptables"]["iptables-save"])
        assert any("kubelet" in s for s in during["listening"]), during["listening"]
        assert any("/kubepods" in c for c in during["cgroups"])
        # Somebody else adds rules during the session, one in a chain the node also uses.
        _iptables("-t", "filter", "-A", "INPUT", *SOMEONE_ELSES_RULE)
        _iptables("-t", "mangle", "-A", "POSTROUTING", *SOMEONE_ELSES_RULE)
    finally:
        down = _kaito("dev", "down", "--dir", str(dev_dir), check=False)
    try:
        assert down.returncode == 0, down.stderr
        assert _iptables("-t", "filter", "-C", "INPUT", *SOMEONE_ELSES_RULE,
                         check=False).returncode == 0, "another's rule was removed"
        assert _iptables("-t", "mangle", "-C", "POSTROUTING", *SOMEONE_ELSES_RULE,
                         check=False).returncode == 0, "another's rule was removed"
    finally:
        _iptables("-t", "filter", "-D", "INPUT", *SOMEONE_ELSES_RULE, check=False)
        _iptables("-t", "mangle", "-D", "POSTROUTING", *SOMEONE_ELSES_RULE, check=False)
    assert _differences(before, host_snapshot(dev_dir)) == {}


def test_a_start_that_fails_half_way_is_undone(dev_dir: Path) -> None:
    before = host_snapshot(dev_dir)
    # kube-proxy starts last: by then the kubelet has set sysctls, chains, mounts, cgroups.
    failed = _kaito("dev", "up", "--real-node", "--dir", str(dev_dir),
                    env={KUBE_PROXY_ARGS_ENV: "--no-such-flag"}, check=False)
    assert failed.returncode != 0
    assert "kube-proxy" in failed.stderr and "no-such-flag" in failed.stderr, \
        failed.stderr[-3000:]
    assert "cni0" not in links()
    _kaito("dev", "down", "--dir", str(dev_dir))
    assert _differences(before, host_snapshot(dev_dir)) == {}


def test_a_start_that_fails_making_the_bridge_and_guard_is_undone(dev_dir: Path) -> None:
    # Somebody else's chain of the guard's name: creating the guard fails after the bridge.
    _iptables("-t", "mangle", "-N", GUARD_CHAIN)
    try:
        before = host_snapshot(dev_dir)
        failed = _kaito("dev", "up", "--real-node", "--dir", str(dev_dir), check=False)
        assert failed.returncode != 0
        assert GUARD_CHAIN in failed.stderr, failed.stderr[-3000:]
        assert _differences(before, host_snapshot(dev_dir)) == {}
        _kaito("dev", "down", "--dir", str(dev_dir))
        after = host_snapshot(dev_dir)
        # Their chain is still there: it was not ours to remove.
        assert _iptables("-t", "mangle", "-S", GUARD_CHAIN, check=False).returncode == 0
    finally:
        _iptables("-t", "mangle", "-X", GUARD_CHAIN, check=False)
    assert _differences(before, after) == {}
