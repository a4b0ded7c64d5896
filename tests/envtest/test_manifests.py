"""The kustomize manifests apply to a real apiserver and grant least privilege."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest

from kaito.devcluster import LocalCluster

pytestmark = pytest.mark.envtest

REPO = Path(__file__).resolve().parents[2]
CONTROLLER = "system:serviceaccount:kaito-system:kaito-controller"
WEBHOOK = "system:serviceaccount:kaito-system:kaito-webhook"


def _rendered(control_plane: LocalCluster, folder: str) -> str:
    return control_plane.kubectl("kustomize", str(REPO / "config" / folder)).stdout


@pytest.fixture(scope="module")
def installed(
    tmp_path_factory: pytest.TempPathFactory, k8s_binaries: Path
) -> Iterator[LocalCluster]:
    # A control plane of this module's own: the webhook configurations would send every
    # Workspace of the shared one to a webhook Service that does not run here.
    cluster = LocalCluster(tmp_path_factory.mktemp("manifests"), k8s_binaries)
    cluster.start()
    try:
        cluster.kubectl("apply", "-f", "-", input=_rendered(cluster, "default"))
        yield cluster
    finally:
        cluster.stop()


def _can(cluster: LocalCluster, user: str, *args: str) -> bool:
    result = cluster.kubectl("auth", "can-i", "--as", user, *args, check=False)
    return result.stdout.strip() == "yes"


def test_default_bundle_installs(installed: LocalCluster) -> None:
    names = installed.kubectl("get", "deployments", "-n", "kaito-system", "-o", "name").stdout
    assert sorted(names.split()) == ["deployment.apps/kaito-controller",
                                     "deployment.apps/kaito-webhook"]
    installed.kubectl("get", "crd", "workspaces.kaito.sh")


@pytest.mark.parametrize(("user", "verb", "resource", "namespace", "allowed"), [
    (CONTROLLER, "create", "nodeclaims.karpenter.sh", "", True),
    (CONTROLLER, "create", "jobs.batch", "default", True),
    (CONTROLLER, "patch", "workspaces.kaito.sh/status", "default", True),
    (CONTROLLER, "update", "leases.coordination.k8s.io", "kaito-system", True),
    (CONTROLLER, "update", "leases.coordination.k8s.io", "default", False),
    (CONTROLLER, "get", "secrets", "default", False),
    (CONTROLLER, "delete", "nodes", "", False),
    (CONTROLLER, "create", "pods", "default", False),
    (WEBHOOK, "get", "configmaps", "default", True),
    (WEBHOOK, "list", "configmaps", "default", False),
    (WEBHOOK, "watch", "configmaps", "kaito-system", True),  # the tuning templates
    (WEBHOOK, "watch", "configmaps", "default", False),
    (WEBHOOK, "get", "secrets/kaito-webhook-cert", "kaito-system", True),
    (WEBHOOK, "get", "secrets/other", "kaito-system", False),
    (WEBHOOK, "list", "secrets", "kaito-system", False),
    (WEBHOOK, "patch",
     ("validatingwebhookconfigurations.admissionregistration.k8s.io/"
      "kaito-validating-webhook-configuration"), "", True),
    (WEBHOOK, "patch",
     "validatingwebhookconfigurations.admissionregistration.k8s.io/someone-else", "", False),
    (WEBHOOK, "update", "workspaces.kaito.sh", "default", False),
])
def test_rbac_is_least_privilege(
    installed: LocalCluster, user: str, verb: str, resource: str, namespace: str,
    allowed: bool,
) -> None:
    scope = ["-n", namespace] if namespace else []
    assert _can(installed, user, verb, resource, *scope) is allowed


@pytest.mark.parametrize("deployment", ["kaito-controller", "kaito-webhook"])
def test_pods_pass_the_restricted_pod_security_level(
    installed: LocalCluster, deployment: str
) -> None:
    # kaito-system enforces the "restricted" level; the apiserver's PodSecurity admission
    # rejects a pod that could run privileged, as root or with extra capabilities.
    template = json.loads(installed.kubectl(
        "get", "deployment", deployment, "-n", "kaito-system", "-o", "json"
    ).stdout)["spec"]["template"]
    pod = {"apiVersion": "v1", "kind": "Pod",
           "metadata": {"name": f"{deployment}-probe", "namespace": "kaito-system",
                        "labels": template["metadata"]["labels"]},
           "spec": template["spec"]}
    result = installed.kubectl("create", "--dry-run=server", "-f", "-",
                               input=json.dumps(pod), check=False)
    assert result.returncode == 0, result.stderr
    assert "violate" not in result.stderr


def test_a_privileged_pod_is_refused_there(installed: LocalCluster) -> None:
    pod = {"apiVersion": "v1", "kind": "Pod",
           "metadata": {"name": "root-probe", "namespace": "kaito-system"},
           "spec": {"serviceAccountName": "kaito-controller",
                    "containers": [{"name": "c", "image": "x",
                                    "securityContext": {"privileged": True}}]}}
    result = installed.kubectl("create", "--dry-run=server", "-f", "-",
                               input=json.dumps(pod), check=False)
    assert result.returncode != 0
    assert "violates PodSecurity" in result.stderr
