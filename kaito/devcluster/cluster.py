"""A local Kubernetes cluster made of real control-plane processes.

`LocalCluster.start()` brings up etcd and kube-apiserver (what envtest runs); with
`with_nodes=True` it adds kube-controller-manager, kube-scheduler and kwok, so pods
are scheduled onto simulated nodes (e.g. nodes reporting `nvidia.com/gpu` capacity)
and reach Running. Everything lives in one work folder: certificates, the admin
kubeconfig, etcd's data and one log per process.
"""

from __future__ import annotations

import base64
import json
import os
import shutil
import ssl
import subprocess
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import yaml

from kaito.devcluster.pki import CertificateAuthority, write_service_account_keys
from kaito.devcluster.process import ManagedProcess, free_port, wait_until

REPO_ROOT = Path(__file__).resolve().parents[2]
BINARY_NAMES = (
    "etcd", "kube-apiserver", "kube-controller-manager", "kube-scheduler", "kubectl", "kwok",
)
KWOK_NODE_ANNOTATION = "kwok.x-k8s.io/node"
SERVICE_CIDR = "10.96.0.0/16"
POD_CIDR = "10.244.0.0/16"


def find_binaries() -> Path:
    """The folder with the control-plane binaries, building them on first use.

    KUBEBUILDER_ASSETS wins when it holds them all; otherwise hack/k8s-binaries.sh
    builds them from Go modules into a cache outside the repository.
    """
    assets = os.environ.get("KUBEBUILDER_ASSETS")
    if assets and all((Path(assets) / name).exists() for name in BINARY_NAMES):
        return Path(assets)
    script = REPO_ROOT / "hack" / "k8s-binaries.sh"
    result = subprocess.run(
        ["bash", str(script)], check=False, stdout=subprocess.PIPE, text=True
    )
    if result.returncode != 0:
        raise RuntimeError(f"{script} failed with exit code {result.returncode}")
    return Path(result.stdout.strip().splitlines()[-1])


def kwok_gpu_node(
    name: str,
    *,
    gpus: int = 1,
    instance_type: str = "Standard_NC6s_v3",
    labels: dict[str, str] | None = None,
    taints: list[dict[str, str]] | None = None,
    pods: int = 110,
) -> dict[str, Any]:
    """A Node that kwok runs (its annotation) and that reports `nvidia.com/gpu`."""
    resources = {"cpu": "32", "memory": "256Gi", "pods": str(pods), "nvidia.com/gpu": str(gpus)}
    return {
        "apiVersion": "v1",
        "kind": "Node",
        "metadata": {
            "name": name,
            "annotations": {KWOK_NODE_ANNOTATION: "fake"},
            "labels": {
                "type": "kwok",
                "kubernetes.io/hostname": name,
                "kubernetes.io/os": "linux",
                "kubernetes.io/arch": "amd64",
                "node.kubernetes.io/instance-type": instance_type,
                **(labels or {}),
            },
        },
        "spec": {"taints": taints or []},
        "status": {"capacity": resources, "allocatable": resources},
    }


class LocalCluster:
    def __init__(
        self, workdir: Path, bin_dir: Path, *, with_nodes: bool = False,
        address: str = "127.0.0.1",
    ) -> None:
        """``address``: where the apiserver listens and what it advertises. Loopback
        suits simulated nodes; a real node's pods cannot reach the host's loopback, so
        the real-node tier passes the bridge's address (kaito/devcluster/realnode.py)."""
        self.workdir = workdir
        self.bin_dir = bin_dir
        self.with_nodes = with_nodes
        self.address = address
        self.pki_dir = workdir / "pki"
        self.log_dir = workdir / "logs"
        self.kubeconfig = workdir / "kubeconfig"
        self.etcd_port = free_port()
        self.etcd_peer_port = free_port()
        self.apiserver_port = free_port()
        self.server = f"https://{address}:{self.apiserver_port}"
        self.etcd_url = f"http://127.0.0.1:{self.etcd_port}"
        self.processes: dict[str, ManagedProcess] = {}

    # ---- lifecycle -------------------------------------------------------------
    def start(self) -> None:
        for folder in (self.pki_dir, self.log_dir):
            folder.mkdir(parents=True, exist_ok=True)
        self._write_pki()
        self._write_kubeconfig()
        self.processes["etcd"] = self._process("etcd", self._etcd_argv())
        self.processes["kube-apiserver"] = self._process("kube-apiserver", self._apiserver_argv())
        try:
            self.start_etcd()
            self.start_apiserver()
            if self.with_nodes:
                self._start_node_components()
        except BaseException:
            self.stop()
            raise

    def stop(self) -> None:
        for name in reversed(list(self.processes)):
            self.processes[name].stop()

    def pids(self) -> dict[str, int]:
        return {name: p.pid for name, p in self.processes.items() if p.pid and p.is_running()}

    def destroy(self) -> None:
        self.stop()
        shutil.rmtree(self.workdir, ignore_errors=True)

    # ---- fault injection (same ports and data on restart) -----------------------
    def start_etcd(self) -> None:
        process = self.processes["etcd"]
        process.start()
        wait_until(self._etcd_is_healthy, timeout_seconds=60, what="etcd", process=process)

    def stop_etcd(self) -> None:
        self.processes["etcd"].stop()

    def kill_etcd(self) -> None:
        self.processes["etcd"].kill()

    def start_apiserver(self) -> None:
        process = self.processes["kube-apiserver"]
        process.start()
        wait_until(self._apiserver_is_ready, timeout_seconds=120, what="kube-apiserver",
                   process=process)

    def stop_apiserver(self) -> None:
        self.processes["kube-apiserver"].stop()

    def kill_apiserver(self) -> None:
        self.processes["kube-apiserver"].kill()

    def compact_etcd(self) -> int:
        """Compacts etcd at its current revision, so older watches get 410 Gone."""
        key = base64.b64encode(b"/").decode()
        header = self._etcd_post("/v3/kv/range", {"key": key, "limit": 1})["header"]
        revision = int(header["revision"])
        self._etcd_post("/v3/kv/compaction", {"revision": revision, "physical": True})
        return revision

    # ---- clients ------------------------------------------------------------------
    def kubectl(
        self, *args: str, input: str | None = None, check: bool = True, timeout: float = 120
    ) -> subprocess.CompletedProcess[str]:
        result = subprocess.run(
            [str(self.bin_dir / "kubectl"), "--kubeconfig", str(self.kubeconfig), *args],
            input=input, capture_output=True, text=True, timeout=timeout, check=False,
        )
        if check and result.returncode != 0:
            raise RuntimeError(
                f"kubectl {' '.join(args)} failed ({result.returncode}): {result.stderr.strip()}"
            )
        return result

    def apply(self, manifest: dict[str, Any] | list[dict[str, Any]]) -> None:
        documents = manifest if isinstance(manifest, list) else [manifest]
        self.kubectl("apply", "-f", "-", input=yaml.safe_dump_all(documents))

    def create_gpu_node(
        self,
        name: str,
        *,
        gpus: int = 1,
        instance_type: str = "Standard_NC6s_v3",
        labels: dict[str, str] | None = None,
        taints: list[dict[str, str]] | None = None,
    ) -> None:
        """A kwok-simulated node that reports `nvidia.com/gpu` capacity."""
        if not self.with_nodes:
            raise RuntimeError("create_gpu_node needs a cluster started with with_nodes=True")
        node = kwok_gpu_node(name, gpus=gpus, instance_type=instance_type, labels=labels,
                             taints=taints)
        self.kubectl("create", "-f", "-", input=json.dumps(node))

    # ---- internals ------------------------------------------------------------
    def _process(self, name: str, argv: list[str]) -> ManagedProcess:
        return ManagedProcess(name, argv, self.log_dir / f"{name}.log")

    def _write_pki(self) -> None:
        ca = CertificateAuthority(self.pki_dir)
        self.ca_path = ca.cert_path
        self.serving = ca.issue(
            "apiserver", "kube-apiserver",
            dns_names=("localhost", "kubernetes", "kubernetes.default",
                       "kubernetes.default.svc", "kubernetes.default.svc.cluster.local"),
            ip_addresses=tuple(dict.fromkeys(("127.0.0.1", "10.96.0.1", self.address))),
            is_server=True,
        )
        self.admin = ca.issue("admin", "kaito-dev-admin", organization="system:masters")
        # What the apiserver shows kubelets (logs, exec, port-forward) when a real one runs.
        self.kubelet_client = ca.issue(
            "apiserver-kubelet-client", "kube-apiserver-kubelet-client",
            organization="system:masters")
        self.ca = ca
        self.ca_key_path = ca.key_path
        self.service_account = write_service_account_keys(self.pki_dir)

    def _write_kubeconfig(self) -> None:
        config = {
            "apiVersion": "v1",
            "kind": "Config",
            "clusters": [{"name": "kaito-dev", "cluster": {
                "server": self.server, "certificate-authority": str(self.ca_path)}}],
            "users": [{"name": "admin", "user": {
                "client-certificate": str(self.admin.cert_path),
                "client-key": str(self.admin.key_path)}}],
            "contexts": [{"name": "kaito-dev", "context": {
                "cluster": "kaito-dev", "user": "admin"}}],
            "current-context": "kaito-dev",
        }
        self.kubeconfig.write_text(yaml.safe_dump(config))
        self.kubeconfig.chmod(0o600)

    def _etcd_argv(self) -> list[str]:
        peer = f"http://127.0.0.1:{self.etcd_peer_port}"
        return [
            str(self.bin_dir / "etcd"),
            "--name=default",
            f"--data-dir={self.workdir / 'etcd'}",
            f"--listen-client-urls={self.etcd_url}",
            f"--advertise-client-urls={self.etcd_url}",
            f"--listen-peer-urls={peer}",
            f"--initial-advertise-peer-urls={peer}",
            f"--initial-cluster=default={peer}",
            "--unsafe-no-fsync=true",  # test data: speed over durability
            "--log-level=warn",
        ]

    def _apiserver_argv(self) -> list[str]:
        sa = self.service_account
        return [
            str(self.bin_dir / "kube-apiserver"),
            f"--etcd-servers={self.etcd_url}",
            f"--bind-address={self.address}",
            f"--advertise-address={self.address}",
            f"--secure-port={self.apiserver_port}",
            f"--cert-dir={self.pki_dir}",
            f"--tls-cert-file={self.serving.cert_path}",
            f"--tls-private-key-file={self.serving.key_path}",
            f"--client-ca-file={self.ca_path}",
            f"--service-account-key-file={sa.cert_path}",
            f"--service-account-signing-key-file={sa.key_path}",
            "--service-account-issuer=https://kubernetes.default.svc.cluster.local",
            f"--service-cluster-ip-range={SERVICE_CIDR}",
            "--authorization-mode=Node,RBAC",
            "--allow-privileged=true",
            "--profiling=false",
            f"--kubelet-client-certificate={self.kubelet_client.cert_path}",
            f"--kubelet-client-key={self.kubelet_client.key_path}",
            f"--kubelet-certificate-authority={self.ca_path}",
            # No DNS for node names here: reach kubelets by their InternalIP.
            "--kubelet-preferred-address-types=InternalIP,Hostname",
            # A loopback address cannot be the `kubernetes` Service's endpoint; a bridge
            # address can, and real pods reach the apiserver through it.
            *(["--endpoint-reconciler-type=none"] if self.address.startswith("127.") else []),
        ]

    def _start_node_components(self) -> None:
        kubeconfig = str(self.kubeconfig)
        sa = self.service_account
        components = {
            "kube-controller-manager": [
                str(self.bin_dir / "kube-controller-manager"),
                f"--kubeconfig={kubeconfig}",
                f"--authentication-kubeconfig={kubeconfig}",
                f"--authorization-kubeconfig={kubeconfig}",
                "--bind-address=127.0.0.1",
                f"--secure-port={free_port()}",
                "--leader-elect=false",
                f"--service-account-private-key-file={sa.key_path}",
                f"--root-ca-file={self.ca_path}",
                f"--cluster-signing-cert-file={self.ca_path}",
                f"--cluster-signing-key-file={self.ca_key_path}",
                "--use-service-account-credentials=false",
                "--controllers=*,-nodeipam,-cloud-node-lifecycle",
                # client-go's default 20/s would make the Deployment and ReplicaSet
                # controllers, not ours, the bottleneck of any test with many workspaces.
                "--kube-api-qps=500",
                "--kube-api-burst=1000",
                f"--service-cluster-ip-range={SERVICE_CIDR}",
            ],
            "kube-scheduler": [
                str(self.bin_dir / "kube-scheduler"),
                f"--kubeconfig={kubeconfig}",
                "--kube-api-qps=500",
                "--kube-api-burst=1000",
                f"--authentication-kubeconfig={kubeconfig}",
                f"--authorization-kubeconfig={kubeconfig}",
                "--bind-address=127.0.0.1",
                f"--secure-port={free_port()}",
                "--leader-elect=false",
            ],
            "kwok": [
                str(self.bin_dir / "kwok"),
                f"--kubeconfig={kubeconfig}",
                "--manage-all-nodes=false",
                f"--manage-nodes-with-annotation-selector={KWOK_NODE_ANNOTATION}=fake",
                "--manage-nodes-with-label-selector=",
                "--disregard-status-with-annotation-selector=kwok.x-k8s.io/status=custom",
                "--disregard-status-with-label-selector=",
                f"--cidr={POD_CIDR}",
                "--node-ip=10.0.0.1",
                "--node-lease-duration-seconds=40",
                f"--server-address=127.0.0.1:{free_port()}",
            ],
        }
        for name, argv in components.items():
            process = self._process(name, argv)
            self.processes[name] = process
            process.start()
        # The controller-manager is ready once it has made the default service account.
        wait_until(
            lambda: self.kubectl("get", "serviceaccount", "default", "-n", "default",
                                 check=False).returncode == 0,
            timeout_seconds=120, what="kube-controller-manager",
            process=self.processes["kube-controller-manager"],
        )

    def _etcd_is_healthy(self) -> bool:
        try:
            with urllib.request.urlopen(f"{self.etcd_url}/health", timeout=2) as response:
                return bool(json.load(response).get("health") == "true")
        except (OSError, ValueError):
            return False

    def _etcd_post(self, path: str, body: dict[str, Any]) -> dict[str, Any]:
        request = urllib.request.Request(
            self.etcd_url + path, data=json.dumps(body).encode(), method="POST",
            headers={"Content-Type": "application/json"},
        )
        with urllib.request.urlopen(request, timeout=10) as response:
            result: dict[str, Any] = json.load(response)
            return result

    def _ssl_context(self) -> ssl.SSLContext:
        context = ssl.create_default_context(cafile=str(self.ca_path))
        context.load_cert_chain(str(self.admin.cert_path), str(self.admin.key_path))
        return context

    def _apiserver_is_ready(self) -> bool:
        try:
            with urllib.request.urlopen(
                f"{self.server}/readyz", timeout=2, context=self._ssl_context()
            ) as response:
                return bool(response.status == 200)
        except (OSError, urllib.error.URLError):
            return False
