"""A real node beside the local control plane: containerd, a kubelet and kube-proxy.

kwok nodes run no code; this node runs the pods the operator makes, for real, on this
machine's CPU. What is real: the kubelet (v1.35, built from the same go.mod as the
control plane), containerd and runc from Debian, the bridge CNI plugin, kube-proxy's
iptables Services. What is simulated: the GPU. The node advertises `nvidia.com/gpu` the
way Kubernetes documents extended resources (a capacity in the node's status) and
carries NVIDIA GPU feature discovery's labels, so the operator's pods schedule on it.

Facts this rests on (each was a hard failure without it, see
shared/reference/real-node.md): pods cannot reach the host's loopback, so the bridge
`cni0` (10.244.0.1) exists before the apiserver, which listens and advertises there;
the kubelet needs `failCgroupV1: false` and the cgroupfs driver here; containerd needs
`restrict_oom_score_adj` (no CAP_SYS_RESOURCE). Pod traffic may not leave the machine:
a guard chain in mangle POSTROUTING drops anything from the pod range that is not
going to the bridge or loopback (not filter OUTPUT, which would also catch the host's
own DNS). Every host change is recorded first (host.py) and restored by `stop()`.
"""

from __future__ import annotations

import fcntl
import json
import os
import shlex
import signal
import subprocess
import time
from pathlib import Path
from typing import IO, Any

import yaml

from kaito.devcluster.cluster import LocalCluster
from kaito.devcluster.host import HostSnapshot
from kaito.devcluster.process import ManagedProcess, free_port, wait_until

BRIDGE = "cni0"
BRIDGE_ADDRESS = "10.244.0.1"
POD_SUBNET = "10.244.0.0/24"
CLUSTER_CIDR = "10.244.0.0/16"
GUARD_CHAIN = "KAITO-POD-GUARD"
CNI_BIN_DIR = "/usr/lib/cni"
DEFAULT_NODE_NAME = "kaito-gpu-0"
CACHE_ROOT = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "kaito-node"
LOCK_PATH = Path("/run/lock/kaito-real-node.lock")
# What runs and where, so a node whose owner died (a killed test run) can be cleaned up.
RECORD_PATH = Path("/run/lock/kaito-real-node.json")
# The host before the node: beside the record, not in the node's folder, so it survives
# whatever happens to that folder (a test runner's clean-up of old temporary folders).
SNAPSHOT_PATH = Path("/run/lock/kaito-real-node-host.json")
# Extra kube-proxy flags (e.g. `--v=4` to debug Services); the kubelet tier also uses it
# to make a start fail half way, after the kubelet has changed the host.
KUBE_PROXY_ARGS_ENV = "KAITO_REAL_NODE_KUBE_PROXY_ARGS"


class RealNodeError(RuntimeError):
    """The real node cannot start here; the message says why and what to do."""


def _run(argv: list[str], *, check: bool = True, timeout: float = 120,
         input_text: str | None = None) -> subprocess.CompletedProcess[str]:
    result = subprocess.run(argv, capture_output=True, text=True, timeout=timeout,
                            check=False, input=input_text)
    if check and result.returncode != 0:
        raise RealNodeError(f"{' '.join(argv)} failed ({result.returncode}): "
                            f"{(result.stderr or result.stdout).strip()[-2000:]}")
    return result


# ---- pure builders of the node's configuration files -----------------------------
def containerd_config(*, root: Path, state: Path, socket: Path, cni_conf_dir: Path,
                      sandbox_image: str, image_registry: str | None) -> str:
    """containerd 1.6's config: CRI on cgroupfs, no oom_score_adj writes, our CNI folder.

    ``image_registry`` (host:port of the local plain-HTTP registry that holds the
    project's images) is the mirror for `localhost/...` and `docker.io/...` images, so a
    pod naming `curlimages/curl` gets the local image and nothing is fetched from outside.
    """
    cri = 'plugins."io.containerd.grpc.v1.cri"'
    lines = [
        "version = 2",
        f'root = "{root}"',
        f'state = "{state}"',
        "[grpc]",
        f'  address = "{socket}"',
        "[plugins.\"io.containerd.internal.v1.opt\"]",
        f'  path = "{state}/opt"',
        f"[{cri}]",
        f'  sandbox_image = "{sandbox_image}"',
        "  restrict_oom_score_adj = true",
        "  enable_cdi = false",
        f"[{cri}.containerd]",
        '  snapshotter = "overlayfs"',
        '  default_runtime_name = "runc"',
        f"[{cri}.containerd.runtimes.runc]",
        '  runtime_type = "io.containerd.runc.v2"',
        f"[{cri}.containerd.runtimes.runc.options]",
        "  SystemdCgroup = false",
        f"[{cri}.cni]",
        f'  bin_dir = "{CNI_BIN_DIR}"',
        f'  conf_dir = "{cni_conf_dir}"',
    ]
    if image_registry:
        for name in ("localhost", "docker.io", image_registry):
            lines += [f'[{cri}.registry.mirrors."{name}"]',
                      f'  endpoint = ["http://{image_registry}"]']
    return "\n".join(lines) + "\n"


def cni_config(data_dir: Path) -> dict[str, Any]:
    return {
        "cniVersion": "0.4.0",
        "name": "kaito",
        "plugins": [
            {"type": "bridge", "bridge": BRIDGE, "isGateway": True, "ipMasq": False,
             "hairpinMode": True,
             "ipam": {"type": "host-local", "dataDir": str(data_dir),
                      "ranges": [[{"subnet": POD_SUBNET, "gateway": BRIDGE_ADDRESS}]],
                      "routes": [{"dst": "0.0.0.0/0"}]}},
            {"type": "portmap", "capabilities": {"portMappings": True}},
        ],
    }


def kubelet_config(*, ca: Path, cert: Path, key: Path, socket: Path, pod_logs: Path,
                   volume_plugins: Path, port: int, healthz_port: int) -> dict[str, Any]:
    return {
        "apiVersion": "kubelet.config.k8s.io/v1beta1",
        "kind": "KubeletConfiguration",
        "failCgroupV1": False,  # this machine has cgroup v1 controllers
        "cgroupDriver": "cgroupfs",  # no systemd as PID 1
        "failSwapOn": False,
        "resolvConf": "",  # no cluster DNS; pods use ClusterIPs and env variables
        "address": BRIDGE_ADDRESS,
        "port": port,
        "readOnlyPort": 0,
        "healthzBindAddress": "127.0.0.1",
        "healthzPort": healthz_port,
        "authentication": {"anonymous": {"enabled": False}, "webhook": {"enabled": True},
                           "x509": {"clientCAFile": str(ca)}},
        "authorization": {"mode": "Webhook"},
        "tlsCertFile": str(cert),
        "tlsPrivateKeyFile": str(key),
        "containerRuntimeEndpoint": f"unix://{socket}",
        "podLogsDir": str(pod_logs),
        "volumePluginDir": str(volume_plugins),
        "runtimeRequestTimeout": "15m",  # multi-GB images
        "serializeImagePulls": True,
        # The images are large and the disk is shared: never garbage-collect them here,
        # never evict for disk.
        "imageGCHighThresholdPercent": 100,
        "imageGCLowThresholdPercent": 99,
        "evictionHard": {"memory.available": "200Mi", "nodefs.available": "1%",
                         "imagefs.available": "1%"},
        "maxPods": 110,
    }


def kube_proxy_config(*, kubeconfig: Path, node_name: str, healthz_port: int,
                      metrics_port: int) -> dict[str, Any]:
    return {
        "apiVersion": "kubeproxy.config.k8s.io/v1alpha1",
        "kind": "KubeProxyConfiguration",
        "mode": "iptables",
        "clusterCIDR": CLUSTER_CIDR,
        "hostnameOverride": node_name,
        "bindAddress": BRIDGE_ADDRESS,
        "healthzBindAddress": f"127.0.0.1:{healthz_port}",
        "metricsBindAddress": f"127.0.0.1:{metrics_port}",
        "clientConnection": {"kubeconfig": str(kubeconfig)},
        "iptables": {"localhostNodePorts": False, "masqueradeAll": False},
        # Zero: leave the host's conntrack sysctls alone.
        "conntrack": {"maxPerCore": 0, "min": 0, "tcpEstablishedTimeout": "0s",
                      "tcpCloseWaitTimeout": "0s"},
        "oomScoreAdj": 0,
    }


def gpu_node_labels(*, instance_type: str, gpu_count: int, gpu_product: str,
                    gpu_memory_mib: int) -> dict[str, str]:
    """What a GPU node carries in a real cluster (GPU feature discovery's labels)."""
    return {
        "node.kubernetes.io/instance-type": instance_type,
        "nvidia.com/gpu.count": str(gpu_count),
        "nvidia.com/gpu.product": gpu_product,
        "nvidia.com/gpu.memory": str(gpu_memory_mib),
        "nvidia.com/gpu.present": "true",
        "kaito.sh/real-node": "true",
    }


def guard_rules() -> list[list[str]]:
    """The guard chain: pod traffic may go to the bridge or loopback, nowhere else."""
    chain = ["iptables", "-w", "-t", "mangle"]
    return [
        [*chain, "-N", GUARD_CHAIN],
        [*chain, "-A", GUARD_CHAIN, "-o", BRIDGE, "-j", "RETURN"],
        [*chain, "-A", GUARD_CHAIN, "-o", "lo", "-j", "RETURN"],
        [*chain, "-A", GUARD_CHAIN, "-s", CLUSTER_CIDR, "-j", "DROP"],
        [*chain, "-A", "POSTROUTING", "-j", GUARD_CHAIN],
    ]


# ---- the node -------------------------------------------------------------------
class RealNodeHost:
    """The host side that must exist before the apiserver: the bridge and the guard.

    Holds an exclusive lock (one real node per machine) and the snapshot of the host
    taken before anything changed.
    """

    def __init__(self, workdir: Path) -> None:
        self.workdir = workdir
        self.snapshot_path = SNAPSHOT_PATH
        self._lock: IO[str] | None = None

    def acquire(self) -> None:
        """Takes the one-node-per-machine lock and clears a node whose owner died; changes
        nothing of its own, so a failure here leaves nothing to restore."""
        if os.geteuid() != 0:
            raise RealNodeError("a real node needs root (kubelet, containerd, iptables)")
        LOCK_PATH.parent.mkdir(parents=True, exist_ok=True)
        lock = LOCK_PATH.open("a+")
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            lock.close()
            raise RealNodeError(
                f"another real node runs on this machine ({LOCK_PATH} is held); "
                "stop it first (`kaito dev down`)") from None
        self._lock = lock
        try:
            if Path(f"/sys/class/net/{BRIDGE}").exists() or RECORD_PATH.exists():
                tear_down_recorded_node()
            if Path(f"/sys/class/net/{BRIDGE}").exists():
                raise RealNodeError(
                    f"the bridge {BRIDGE} exists but no real node recorded it: remove it "
                    f"(`ip link delete {BRIDGE}`) if nothing else uses it")
        except BaseException:
            self.release()
            raise

    @property
    def is_held(self) -> bool:
        return self._lock is not None

    def take_snapshot(self) -> None:
        """Records the host before anything changes (restore() undoes what differs)."""
        self.workdir.mkdir(parents=True, exist_ok=True)
        HostSnapshot.take().save(self.snapshot_path)

    def prepare(self) -> None:
        """The bridge and the guard chain; after take_snapshot, so restore() undoes them."""
        _run(["ip", "link", "add", BRIDGE, "type", "bridge"])
        _run(["ip", "addr", "add", f"{BRIDGE_ADDRESS}/24", "dev", BRIDGE])
        _run(["ip", "link", "set", BRIDGE, "up"])
        for rule in guard_rules():
            _run(rule)

    def release(self) -> None:
        if self._lock is not None:
            self._lock.close()
            self._lock = None

    def restore(self, node_dirs: tuple[Path, ...]) -> list[str]:
        snapshot = HostSnapshot.load(self.snapshot_path)
        done = snapshot.restore(node_dirs=node_dirs) if snapshot else []
        self.snapshot_path.unlink(missing_ok=True)
        self.release()
        return done


class RealNode:
    """containerd + kubelet + kube-proxy registered as one GPU-labelled node."""

    def __init__(
        self,
        cluster: LocalCluster,
        workdir: Path,
        *,
        sandbox_image: str,
        images: dict[str, str] | None = None,
        image_registry: str | None = None,
        node_name: str = DEFAULT_NODE_NAME,
        gpu_count: int = 1,
        instance_type: str = "Standard_NC6s_v3",
        gpu_product: str = "Tesla-V100-PCIE-16GB",
        gpu_memory_mib: int = 16384,
        extra_labels: dict[str, str] | None = None,
        cache_root: Path = CACHE_ROOT,
    ) -> None:
        self.cluster = cluster
        self.workdir = workdir
        self.sandbox_image = sandbox_image
        self.images = images or {}
        self.image_registry = image_registry
        self.node_name = node_name
        self.gpu_count = gpu_count
        self.labels = {
            **gpu_node_labels(instance_type=instance_type, gpu_count=gpu_count,
                              gpu_product=gpu_product, gpu_memory_mib=gpu_memory_mib),
            **(extra_labels or {}),
        }
        self.containerd_root = cache_root / "containerd"  # images survive a teardown
        self.state_dir = workdir / "containerd-state"
        self.socket = workdir / "containerd.sock"
        self.kubelet_root = workdir / "kubelet"
        self.log_dir = workdir / "logs"
        self.processes: dict[str, ManagedProcess] = {}

    @property
    def node_dirs(self) -> tuple[Path, ...]:
        return (self.kubelet_root, self.state_dir, self.workdir, Path("/run/containerd"))

    # ---- start ---------------------------------------------------------------------
    def start(self) -> None:
        for folder in (self.log_dir, self.containerd_root, self.state_dir, self.kubelet_root):
            folder.mkdir(parents=True, exist_ok=True)
        self._start_containerd()
        self._load_images()
        self._start_kubelet()
        self._wait_node_ready()
        self._advertise_gpus()
        self._start_kube_proxy()

    def _process(self, name: str, argv: list[str]) -> ManagedProcess:
        process = ManagedProcess(name, argv, self.log_dir / f"{name}.log")
        self.processes[name] = process
        process.start()
        return process

    def ctr(self, *args: str, timeout: float = 1800) -> subprocess.CompletedProcess[str]:
        return _run(["ctr", "--address", str(self.socket), "-n", "k8s.io", *args],
                    timeout=timeout)

    def _start_containerd(self) -> None:
        cni_dir = self.workdir / "cni" / "net.d"
        cni_dir.mkdir(parents=True, exist_ok=True)
        (cni_dir / "10-kaito.conflist").write_text(
            json.dumps(cni_config(self.workdir / "cni" / "networks"), indent=1))
        config = self.workdir / "containerd.toml"
        config.write_text(containerd_config(
            root=self.containerd_root, state=self.state_dir, socket=self.socket,
            cni_conf_dir=cni_dir, sandbox_image=self.sandbox_image,
            image_registry=self.image_registry))
        process = self._process("containerd", ["containerd", "--config", str(config)])
        wait_until(lambda: self.socket.exists() and _run(
            ["ctr", "--address", str(self.socket), "version"], check=False).returncode == 0,
            timeout_seconds=60, what="containerd", process=process)

    def _load_images(self) -> None:
        """Pulls each image from the local registry (only layers containerd lacks travel)
        and tags it with the name pods use."""
        present = set(self.ctr("images", "list", "-q").stdout.split())
        for name, source in self.images.items():
            if name in present:
                continue
            if source not in present:
                self.ctr("images", "pull", "--plain-http", source)
            if source != name:
                self.ctr("images", "tag", "--force", source, name)

    def _start_kubelet(self) -> None:
        ca = self.cluster.ca
        pki = self.workdir / "pki"
        pki.mkdir(parents=True, exist_ok=True)
        client = ca.issue("kubelet-client", f"system:node:{self.node_name}",
                          organization="system:nodes", directory=pki)
        serving = ca.issue("kubelet-serving", self.node_name,
                           dns_names=(self.node_name,), ip_addresses=(BRIDGE_ADDRESS,),
                           is_server=True, directory=pki)
        kubeconfig = self._kubeconfig("kubelet", client.cert_path, client.key_path)
        self.port = free_port()
        config_path = self.workdir / "kubelet.yaml"
        config_path.write_text(yaml.safe_dump(kubelet_config(
            ca=self.cluster.ca_path, cert=serving.cert_path, key=serving.key_path,
            socket=self.socket, pod_logs=self.workdir / "pod-logs",
            volume_plugins=self.workdir / "volume-plugins", port=self.port,
            healthz_port=free_port())))
        labels = ",".join(f"{k}={v}" for k, v in self.labels.items()
                          if not k.startswith("node.kubernetes.io/"))
        self._process("kubelet", [
            str(self.cluster.bin_dir / "kubelet"),
            f"--config={config_path}",
            f"--kubeconfig={kubeconfig}",
            f"--root-dir={self.kubelet_root}",
            f"--hostname-override={self.node_name}",
            f"--node-ip={BRIDGE_ADDRESS}",
            f"--node-labels={labels}",
            "--v=1",
        ])

    def _kubeconfig(self, user: str, cert: Path, key: Path) -> Path:
        config = {
            "apiVersion": "v1", "kind": "Config",
            "clusters": [{"name": "local", "cluster": {
                "server": self.cluster.server,
                "certificate-authority": str(self.cluster.ca_path)}}],
            "users": [{"name": user, "user": {"client-certificate": str(cert),
                                              "client-key": str(key)}}],
            "contexts": [{"name": user, "context": {"cluster": "local", "user": user}}],
            "current-context": user,
        }
        path = self.workdir / f"{user}.kubeconfig"
        path.write_text(yaml.safe_dump(config))
        path.chmod(0o600)
        return path

    def _wait_node_ready(self) -> None:
        def is_ready() -> bool:
            result = self.cluster.kubectl(
                "get", "node", self.node_name, "-o",
                "jsonpath={.status.conditions[?(@.type=='Ready')].status}", check=False)
            return result.stdout.strip() == "True"
        wait_until(is_ready, timeout_seconds=120, what=f"node {self.node_name}",
                   process=self.processes["kubelet"])

    def _advertise_gpus(self) -> None:
        """The documented way to advertise an extended resource: the node's status."""
        patch = [{"op": "add", "path": "/status/capacity/nvidia.com~1gpu",
                  "value": str(self.gpu_count)}]
        self.cluster.kubectl("patch", "node", self.node_name, "--subresource=status",
                             "--type=json", "-p", json.dumps(patch))
        self.cluster.kubectl("label", "node", self.node_name, "--overwrite",
                             *(f"{k}={v}" for k, v in self.labels.items()))

        def allocatable() -> bool:
            result = self.cluster.kubectl(
                "get", "node", self.node_name, "-o",
                r"jsonpath={.status.allocatable.nvidia\.com/gpu}", check=False)
            return result.stdout.strip() == str(self.gpu_count)
        wait_until(allocatable, timeout_seconds=60, what="nvidia.com/gpu allocatable")

    def _start_kube_proxy(self) -> None:
        proxy_cert = self.cluster.ca.issue("kube-proxy", "system:kube-proxy",
                                           organization="system:node-proxier",
                                           directory=self.workdir / "pki")
        kubeconfig = self._kubeconfig("kube-proxy", proxy_cert.cert_path, proxy_cert.key_path)
        config_path = self.workdir / "kube-proxy.yaml"
        healthz = free_port()
        config_path.write_text(yaml.safe_dump(kube_proxy_config(
            kubeconfig=kubeconfig, node_name=self.node_name, healthz_port=healthz,
            metrics_port=free_port())))
        process = self._process("kube-proxy", [
            str(self.cluster.bin_dir / "kube-proxy"), f"--config={config_path}", "--v=1",
            *shlex.split(os.environ.get(KUBE_PROXY_ARGS_ENV, ""))])

        def synced() -> bool:
            result = _run(["iptables", "-w", "-t", "nat", "-S", "KUBE-SERVICES"],
                          check=False)
            return result.returncode == 0 and "default/kubernetes" in result.stdout
        wait_until(synced, timeout_seconds=60, what="kube-proxy", process=process)

    # ---- stop ------------------------------------------------------------------------
    def stop(self) -> list[str]:
        """Stops the node's processes and containers; returns what it cleaned."""
        done = stop_node_processes(
            {name: p.pid for name, p in self.processes.items() if p.pid},
            socket=self.socket)
        for process in self.processes.values():
            process.stop()  # reaps the children stopped above
        return done

    def pids(self) -> dict[str, int]:
        return {name: p.pid for name, p in self.processes.items() if p.pid and p.is_running()}


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def _terminate(pids: list[int], grace_seconds: float = 15) -> None:
    for pid in pids:
        try:
            os.kill(pid, signal.SIGTERM)
        except ProcessLookupError:
            pass
    deadline = time.monotonic() + grace_seconds
    while any(_alive(pid) for pid in pids) and time.monotonic() < deadline:
        time.sleep(0.2)
    for pid in pids:
        if _alive(pid):
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass


def _shim_pids(socket: Path) -> list[int]:
    """containerd's runc shims for this node (they outlive containerd by design)."""
    pids = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            cmdline = (entry / "cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        if cmdline and cmdline[0].endswith(b"containerd-shim-runc-v2") and \
                str(socket).encode() in b" ".join(cmdline):
            pids.append(int(entry.name))
    return pids


def stop_node_processes(pids: dict[str, int], *, socket: Path) -> list[str]:
    """kubelet first (no restarts), then every container, then containerd.

    Works from recorded pids alone, so `kaito dev down` in another process can call it.
    """
    done: list[str] = []
    for name in ("kubelet", "kube-proxy"):
        if name in pids:
            _terminate([pids[name]])
    # kube-proxy's rules go with the host restore (only the ones it added this time):
    # `kube-proxy --cleanup` would also delete KUBE- chains that were there before.
    if socket.exists():
        ctr = ["ctr", "--address", str(socket), "-n", "k8s.io"]
        tasks = _run([*ctr, "tasks", "list", "-q"], check=False).stdout.split()
        for task in tasks:
            _run([*ctr, "tasks", "kill", "-s", "SIGKILL", task], check=False)
        deadline = time.monotonic() + 30
        while tasks and time.monotonic() < deadline:
            time.sleep(0.5)
            tasks = [t for t in _run([*ctr, "tasks", "list"], check=False).stdout.splitlines()[1:]
                     if "RUNNING" in t]
        for task in _run([*ctr, "tasks", "list", "-q"], check=False).stdout.split():
            _run([*ctr, "tasks", "delete", "-f", task], check=False)
        containers = _run([*ctr, "containers", "list", "-q"], check=False).stdout.split()
        for container in containers:
            _run([*ctr, "containers", "delete", container], check=False)
        done.append(f"{len(containers)} containers removed")
    if "containerd" in pids:
        _terminate([pids["containerd"]])
    shims = _shim_pids(socket)
    _terminate(shims, grace_seconds=5)
    if shims:
        done.append(f"{len(shims)} shims stopped")
    return done


class RealCluster:
    """The control plane on the bridge address plus one real node, started in order."""

    def __init__(self, workdir: Path, bin_dir: Path, *, owner_pid: int | None = None,
                 **node_options: Any) -> None:
        """``owner_pid``: a process whose death orphans the node (a test run), so the next
        start may clean it up; None for a node that `kaito dev down` stops."""
        self.workdir = workdir
        self.owner_pid = owner_pid
        self.host = RealNodeHost(workdir)
        self.cluster = LocalCluster(workdir / "control-plane", bin_dir, with_nodes=True,
                                    address=BRIDGE_ADDRESS)
        self.node = RealNode(self.cluster, workdir / "node", **node_options)

    def start(self) -> None:
        self.host.acquire()
        try:
            self.host.take_snapshot()
            self._record()  # before the first change: a killed start is found and undone
            self.host.prepare()
            self.cluster.start()
            self._record()
            self.node.start()
            self._record()
        except BaseException:
            self.stop()
            raise

    def _record(self) -> None:
        record = {
            "workdir": str(self.workdir),
            "owner_pid": self.owner_pid,
            "control_plane_pids": self.cluster.pids(),
            "node_pids": self.node.pids(),
            "socket": str(self.node.socket),
            "node_dirs": [str(d) for d in self.node.node_dirs],
        }
        RECORD_PATH.write_text(json.dumps(record, indent=1))

    def stop(self) -> list[str]:
        if not self.host.is_held:  # never started, or stopped: the record is not ours
            return []
        done = self.node.stop()
        self.cluster.stop()
        done += self.host.restore(self.node.node_dirs)
        RECORD_PATH.unlink(missing_ok=True)
        return done

    def pids(self) -> dict[str, int]:
        return {**self.cluster.pids(), **self.node.pids()}


def tear_down_recorded_node(record_path: Path = RECORD_PATH, *, force: bool = False
                            ) -> list[str]:
    """Stops the recorded real node (its containers, kube-proxy's rules, containerd, the
    control plane) and restores the host; returns what it restored.

    Without ``force`` (a new node starting) it refuses while a recorded process runs and
    its owner lives: a test run's node, or one started by `kaito dev up --real-node`,
    which only `kaito dev down` (``force``) stops.
    """
    try:
        record = json.loads(record_path.read_text())
    except (FileNotFoundError, ValueError):
        return []
    node_pids = {k: int(v) for k, v in record.get("node_pids", {}).items()}
    plane_pids = {k: int(v) for k, v in record.get("control_plane_pids", {}).items()}
    alive = [name for name, pid in {**plane_pids, **node_pids}.items() if _alive(pid)]
    owner = record.get("owner_pid")  # None: owned by `kaito dev up` until `kaito dev down`
    if alive and not force and (owner is None or _alive(int(owner))):
        raise RealNodeError(f"a real node runs on this machine ({', '.join(sorted(alive))}); "
                            "stop it first (`kaito dev down`)")
    done = stop_node_processes(node_pids, socket=Path(record["socket"]))
    _terminate(list(plane_pids.values()))
    host = RealNodeHost(Path(record["workdir"]))
    done += host.restore(tuple(Path(d) for d in record.get("node_dirs", [])))
    record_path.unlink(missing_ok=True)
    return done
