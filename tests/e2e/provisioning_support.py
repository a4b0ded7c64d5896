"""What the provisioner's cluster tests share: the provisioner as a process running as its
own ServiceAccount (a token kubeconfig, the shipped RBAC), NodeClaims, polling helpers.
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import yaml

from kaito.devcluster import LocalCluster
from tests.e2e.components import ComponentProcess, wait_for

__all__ = ["ComponentProcess", "ProvisionerProcess", "wait_for"]

REPO = Path(__file__).resolve().parents[2]
NAMESPACE = "kaito-system"
SERVICE_ACCOUNT = "kaito-gpu-provisioner"
GPU_TAINT = {"key": "sku", "value": "gpu", "effect": "NoSchedule"}


def get(cluster: LocalCluster, *args: str) -> Any:
    result = cluster.kubectl("get", *args, "-o", "json", check=False)
    return json.loads(result.stdout) if result.returncode == 0 else None


def condition(obj: dict[str, Any] | None, condition_type: str) -> dict[str, Any] | None:
    for found in ((obj or {}).get("status") or {}).get("conditions") or []:
        if found.get("type") == condition_type:
            return dict(found)
    return None


def is_true(obj: dict[str, Any] | None, condition_type: str) -> bool:
    found = condition(obj, condition_type)
    return found is not None and found.get("status") == "True"


def node_claim(name: str, instance_type: str = "Standard_NC6s_v3",
               labels: dict[str, str] | None = None) -> dict[str, Any]:
    """A NodeClaim shaped like the ones the Workspace controller makes."""
    return {
        "apiVersion": "karpenter.sh/v1", "kind": "NodeClaim",
        "metadata": {"name": name, "labels": {"karpenter.sh/nodepool": "kaito",
                                              **(labels or {})}},
        "spec": {
            "requirements": [
                {"key": "node.kubernetes.io/instance-type", "operator": "In",
                 "values": [instance_type]},
                {"key": "karpenter.sh/nodepool", "operator": "In", "values": ["kaito"]},
                {"key": "kubernetes.io/os", "operator": "In", "values": ["linux"]}],
            "taints": [GPU_TAINT],
            "resources": {"requests": {"storage": "120Gi"}},
            "nodeClassRef": {"group": "kaito.sh", "kind": "KaitoNodeClass", "name": "default"},
        },
    }


def install(cluster: LocalCluster, workdir: Path) -> Path:
    """CRDs, the provisioner's ServiceAccount and RBAC as shipped; a kubeconfig with
    that ServiceAccount's token (so the provisioner has exactly its RBAC)."""
    cluster.kubectl("apply", "-f", str(REPO / "config" / "crd" / "bases"))
    if get(cluster, "namespace", NAMESPACE) is None:
        cluster.kubectl("create", "namespace", NAMESPACE)
    cluster.kubectl("apply", "-f", str(REPO / "config" / "rbac" / "provisioner_role.yaml"))
    token = cluster.kubectl("create", "token", SERVICE_ACCOUNT, "-n", NAMESPACE,
                            "--duration", "2h").stdout.strip()
    config = {
        "apiVersion": "v1", "kind": "Config",
        "clusters": [{"name": "e2e", "cluster": {
            "server": cluster.server, "certificate-authority": str(cluster.ca_path)}}],
        "users": [{"name": SERVICE_ACCOUNT, "user": {"token": token}}],
        "contexts": [{"name": "e2e", "context": {"cluster": "e2e", "user": SERVICE_ACCOUNT}}],
        "current-context": "e2e",
    }
    path = workdir / "provisioner.kubeconfig"
    path.write_text(yaml.safe_dump(config))
    path.chmod(0o600)
    return path


class ProvisionerProcess(ComponentProcess):
    """`python -m controller.provisioning` as a process: restartable, killable, scrapable."""

    def __init__(self, kubeconfig: Path, log_path: Path, *, args: list[str],
                 env: dict[str, str] | None = None) -> None:
        super().__init__("controller.provisioning", kubeconfig, log_path, args=args, env=env)


def delete_claims(cluster: LocalCluster, names: list[str], timeout: float = 60) -> None:
    for name in names:
        cluster.kubectl("delete", "nodeclaim", name, "--wait=false", check=False)
    wait_for("the claims gone", lambda: not any(
        get(cluster, "nodeclaim", name) for name in names), timeout=timeout)


@contextlib.contextmanager
def running_provisioner(cluster: LocalCluster, workdir: Path, *, args: list[str],
                        env: dict[str, str]) -> Iterator[ProvisionerProcess]:
    """The provisioner as installed (its ServiceAccount and RBAC), started; on the way out
    it first deletes the claims left, so that no claim with its finalizer outlives it."""
    process = ProvisionerProcess(install(cluster, workdir), workdir / "provisioner.log",
                                 args=args, env=env)
    process.start()
    try:
        yield process
    finally:
        claims = (get(cluster, "nodeclaims", "-l", "karpenter.sh/nodepool=kaito")
                  or {"items": []})["items"]
        try:
            delete_claims(cluster, [c["metadata"]["name"] for c in claims])
        finally:
            process.stop()
            print(process.tail())
