"""`kaito dev up|down|status`: the test tiers' local cluster, for humans.

`up` starts etcd, kube-apiserver, kube-controller-manager, kube-scheduler and kwok in
the background with simulated GPU nodes, writes their pids to a state file and prints
the KUBECONFIG to use with kubectl; `down` stops them and removes the folder.

`up --real-node` adds a real node (kaito/devcluster/realnode.py): containerd, a kubelet
and kube-proxy that run pods on this machine, with the project's images loaded from the
local image registry (hack/images.sh). `down` then also stops every container and puts
back what the node changed on the host.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import time
from pathlib import Path

from kaito.devcluster.cluster import LocalCluster, find_binaries
from kaito.devcluster.images import ProjectImages, project_images, stop_registry
from kaito.devcluster.realnode import RealCluster, tear_down_recorded_node

DEFAULT_DIR = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "kaito-dev"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("action", choices=["up", "down", "status"])
    parser.add_argument("--dir", type=Path, default=DEFAULT_DIR,
                        help=f"work folder of the cluster (default {DEFAULT_DIR})")
    parser.add_argument("--gpu-nodes", type=int, default=1,
                        help="simulated GPU nodes to create on up (default 1)")
    parser.add_argument("--instance-type", default="Standard_NC6s_v3",
                        help="instance type label of the simulated nodes")
    parser.add_argument("--real-node", action="store_true",
                        help="add a real node (containerd + kubelet + kube-proxy) that runs "
                             "pods on this machine; needs root")


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


def ensure_up(
    directory: Path, *, gpu_nodes: int, instance_type: str, real_node: bool = False,
    images: ProjectImages | None = None,
) -> dict[str, object]:
    """Starts the cluster unless it already runs; returns its state."""
    state = _read_state(directory)
    if state and _running_pids(state):
        if real_node and not state.get("real_node"):
            raise SystemExit("a cluster without a real node runs here: `kaito dev down` first")
        return {**state, "is_reused": True}
    if directory.exists():
        _stop(directory)
    started = time.monotonic()
    node_state: dict[str, object] = {}
    if real_node:
        images = images or project_images()
        if images.started_registry:
            # Recorded before the node starts: a failed start is undone by `down` too.
            directory.mkdir(parents=True, exist_ok=True)
            _state_path(directory).write_text(json.dumps({"started_registry": True}))
        real = start_real_cluster(directory / "real", instance_type=instance_type,
                                  images=images)
        cluster = real.cluster
        # The node's processes and paths are in its record (realnode.RECORD_PATH).
        node_state = {"real_node": {"workdir": str(real.workdir),
                                    "node_name": real.node.node_name}}
    else:
        cluster = LocalCluster(directory, find_binaries(), with_nodes=True)
        cluster.start()
    for index in range(gpu_nodes):
        cluster.create_gpu_node(f"gpu-node-{index}", instance_type=instance_type)
    state = {
        "kubeconfig": str(cluster.kubeconfig),
        "server": cluster.server,
        "logs": str(cluster.log_dir),
        "pids": cluster.pids(),
        "started_seconds": round(time.monotonic() - started, 1),
        "started_registry": bool(images and images.started_registry),
        **node_state,
    }
    _state_path(directory).write_text(json.dumps(state, indent=2))
    return state


def add_process(directory: Path, name: str, pid: int) -> None:
    """Records a helper process (e.g. the demo's webhook) for `down` to stop."""
    state = _read_state(directory) or {}
    pids = state.setdefault("pids", {})
    assert isinstance(pids, dict)
    pids[name] = pid
    _state_path(directory).write_text(json.dumps(state, indent=2))


def start_real_cluster(
    workdir: Path, *, instance_type: str, images: ProjectImages | None = None
) -> RealCluster:
    """The control plane on the bridge plus a real node with the project's images (built
    and pushed here unless given)."""
    images = images or project_images()
    real = RealCluster(
        workdir, find_binaries(), sandbox_image=images.pods["pause"],
        images=images.pull_map(), image_registry=images.registry,
        instance_type=instance_type,
        # The node provisioner's pool backend lends this node to NodeClaims.
        extra_labels={"kaito.sh/pool": "true"})
    real.start()
    return real


def up(args: argparse.Namespace) -> int:
    state = ensure_up(args.dir, gpu_nodes=0 if args.real_node else args.gpu_nodes,
                      instance_type=args.instance_type, real_node=args.real_node)
    if state.get("is_reused"):
        print(f"already up at {state['server']}")
    else:
        print(f"local cluster up in {state['started_seconds']} s at {state['server']}")
    print(f"logs: {state.get('logs')}")
    print(f"export KUBECONFIG={state['kubeconfig']}")
    return 0


def down(args: argparse.Namespace) -> int:
    stopped = _stop(args.dir)
    print(f"local cluster down ({stopped} processes stopped)")
    return 0


def _stop(directory: Path) -> int:
    state = _read_state(directory)
    if state and state.get("real_node"):
        # The node first (containers, kube-proxy's rules, containerd, the control plane),
        # then the host is restored; the demo's helpers go with the pids below.
        for change in tear_down_recorded_node(force=True):
            print(f"restored: {change}")
    pids = _running_pids(state) if state else {}
    for pid in pids.values():
        os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + 15
    while any(_alive(pid) for pid in pids.values()) and time.monotonic() < deadline:
        time.sleep(0.2)
    for pid in pids.values():
        if _alive(pid):
            os.kill(pid, signal.SIGKILL)
    if state and state.get("started_registry"):
        stop_registry()  # `up` started the image registry: it goes too
        print("restored: image registry stopped")
    shutil.rmtree(directory, ignore_errors=True)
    return len(pids)


def status(args: argparse.Namespace) -> int:
    state = _read_state(args.dir)
    if not state:
        print("not running")
        return 1
    pids = _running_pids(state)
    recorded = state.get("pids")
    for name in recorded if isinstance(recorded, dict) else {}:
        print(f"{name:24} {'running' if name in pids else 'stopped'}")
    print(f"export KUBECONFIG={state['kubeconfig']}")
    return 0 if pids else 1


def run(args: argparse.Namespace) -> int:
    action = {"up": up, "down": down, "status": status}[args.action]
    return action(args)
