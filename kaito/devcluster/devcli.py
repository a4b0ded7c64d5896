"""`kaito dev up|down|status`: the test tiers' local cluster, for humans.

`up` starts etcd, kube-apiserver, kube-controller-manager, kube-scheduler and kwok in
the background with simulated GPU nodes, writes their pids to a state file and prints
the KUBECONFIG to use with kubectl; `down` stops them and removes the folder.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import time
from pathlib import Path

from kaito.devcluster.cluster import LocalCluster, find_binaries

DEFAULT_DIR = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "kaito-dev"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("action", choices=["up", "down", "status"])
    parser.add_argument("--dir", type=Path, default=DEFAULT_DIR,
                        help=f"work folder of the cluster (default {DEFAULT_DIR})")
    parser.add_argument("--gpu-nodes", type=int, default=1,
                        help="simulated GPU nodes to create on up (default 1)")
    parser.add_argument("--instance-type", default="Standard_NC6s_v3",
                        help="instance type label of the simulated nodes")


def _state_path(directory: Path) -> Path:
    return directory / "state.json"


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _read_state(directory: Path) -> dict[str, object] | None:
    try:
        state: dict[str, object] = json.loads(_state_path(directory).read_text())
    except FileNotFoundError:
        return None
    return state


def _running_pids(state: dict[str, object]) -> dict[str, int]:
    pids = state.get("pids")
    if not isinstance(pids, dict):
        return {}
    return {name: int(pid) for name, pid in pids.items() if _alive(int(pid))}


def up(args: argparse.Namespace) -> int:
    state = _read_state(args.dir)
    if state and _running_pids(state):
        print(f"already up; export KUBECONFIG={state['kubeconfig']}")
        return 0
    if args.dir.exists():
        down(args, quiet=True)
    started = time.monotonic()
    cluster = LocalCluster(args.dir, find_binaries(), with_nodes=True)
    cluster.start()
    for index in range(args.gpu_nodes):
        cluster.create_gpu_node(f"gpu-node-{index}", instance_type=args.instance_type)
    _state_path(args.dir).write_text(json.dumps({
        "kubeconfig": str(cluster.kubeconfig),
        "server": cluster.server,
        "pids": cluster.pids(),
    }, indent=2))
    print(f"local cluster up in {time.monotonic() - started:.1f} s at {cluster.server}")
    print(f"logs: {cluster.log_dir}")
    print(f"export KUBECONFIG={cluster.kubeconfig}")
    return 0


def down(args: argparse.Namespace, *, quiet: bool = False) -> int:
    state = _read_state(args.dir)
    pids = _running_pids(state) if state else {}
    for pid in pids.values():
        os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + 15
    while any(_alive(pid) for pid in pids.values()) and time.monotonic() < deadline:
        time.sleep(0.2)
    for pid in pids.values():
        if _alive(pid):
            os.kill(pid, signal.SIGKILL)
    if args.dir.exists():
        import shutil

        shutil.rmtree(args.dir, ignore_errors=True)
    if not quiet:
        print(f"local cluster down ({len(pids)} processes stopped)")
    return 0


def status(args: argparse.Namespace) -> int:
    state = _read_state(args.dir)
    if not state:
        print("not running")
        return 1
    pids = _running_pids(state)
    for name in ("etcd", "kube-apiserver", "kube-controller-manager", "kube-scheduler", "kwok"):
        print(f"{name:24} {'running' if name in pids else 'stopped'}")
    print(f"export KUBECONFIG={state['kubeconfig']}")
    return 0 if pids else 1


def run(args: argparse.Namespace) -> int:
    action = {"up": up, "down": down, "status": status}[args.action]
    return action(args)
