"""The generated CRDs install on a real kube-apiserver and behave as upstream's do."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest
import yaml

from kaito.devcluster import LocalCluster

pytestmark = pytest.mark.envtest

REPO = Path(__file__).resolve().parents[2]
SEED = REPO / "examples/fine-tuning/kaito_workspace_tuning_phi_3.yaml"


def install_crds(control_plane: LocalCluster) -> None:
    """Applies config/crd (kustomize) and waits until the Workspace API is served."""
    control_plane.kubectl("apply", "-k", str(REPO / "config/crd"))
    for name in ("workspaces.kaito.sh", "nodeclaims.karpenter.sh", "machines.karpenter.sh"):
        control_plane.kubectl(
            "wait", "--for=condition=Established", f"crd/{name}", "--timeout=60s"
        )
    deadline = time.monotonic() + 30
    while control_plane.kubectl("get", "wk", "-A", check=False).returncode != 0:
        assert time.monotonic() < deadline, "workspaces never served"
        time.sleep(0.2)


def test_seed_applies_and_round_trips(control_plane: LocalCluster, namespace: str) -> None:
    install_crds(control_plane)
    control_plane.kubectl("apply", "-n", namespace, "-f", str(SEED))
    stored = json.loads(
        control_plane.kubectl(
            "get", "workspace.v1alpha1.kaito.sh", "workspace-tuning-phi-3", "-n", namespace,
            "-o", "json",
        ).stdout
    )
    seed = yaml.safe_load(SEED.read_text())
    assert stored["tuning"] == seed["tuning"]
    assert stored["resource"]["labelSelector"] == seed["resource"]["labelSelector"]
    # v1beta1 is the storage version; both are served with the same shape.
    beta = json.loads(
        control_plane.kubectl(
            "get", "workspace.v1beta1.kaito.sh", "workspace-tuning-phi-3", "-n", namespace,
            "-o", "json",
        ).stdout
    )
    assert beta["apiVersion"] == "kaito.sh/v1beta1" and beta["tuning"] == seed["tuning"]


def test_printer_columns_and_short_names(control_plane: LocalCluster, namespace: str) -> None:
    install_crds(control_plane)
    control_plane.kubectl("apply", "-n", namespace, "-f", str(SEED))
    header = control_plane.kubectl("get", "wk", "-n", namespace).stdout.splitlines()[0].split()
    assert header == [
        "NAME", "INSTANCE", "RESOURCEREADY", "INFERENCEREADY", "WORKSPACEREADY", "AGE"
    ]
    wide = control_plane.kubectl("get", "wks", "-n", namespace, "-o", "wide").stdout
    for column in ("JOBSTARTED", "WORKSPACESUCCEEDED", "STATE", "TARGETNODECOUNT"):
        assert column in wide.splitlines()[0]
    assert "Standard_NC6s_v3" in wide


def test_kubectl_explain_prints_descriptions(control_plane: LocalCluster) -> None:
    install_crds(control_plane)
    deadline = time.monotonic() + 30
    while True:
        result = control_plane.kubectl("explain", "workspace.tuning", check=False)
        if result.returncode == 0 or time.monotonic() > deadline:
            break
        time.sleep(0.5)  # the OpenAPI document is published a moment after Established
    assert result.returncode == 0, result.stderr
    assert "Fine-tuning: exclusive with inference." in result.stdout
    assert "The tuning method: lora or qlora." in result.stdout
    explained = control_plane.kubectl("explain", "workspace.tuning.input").stdout
    assert "http(s) URLs of data files" in explained


def test_status_is_a_subresource(control_plane: LocalCluster, namespace: str) -> None:
    install_crds(control_plane)
    control_plane.kubectl("apply", "-n", namespace, "-f", str(SEED))
    patch = json.dumps({"status": {"state": "Pending", "targetNodeCount": 1}})
    control_plane.kubectl(
        "patch", "wk", "workspace-tuning-phi-3", "-n", namespace, "--type=merge",
        "--subresource=status", "-p", patch,
    )
    # A write to the main resource does not touch status.
    control_plane.kubectl(
        "patch", "wk", "workspace-tuning-phi-3", "-n", namespace, "--type=merge",
        "-p", json.dumps({"status": {"state": "Hacked"}}),
    )
    stored = json.loads(
        control_plane.kubectl(
            "get", "wk", "workspace-tuning-phi-3", "-n", namespace, "-o", "json"
        ).stdout
    )
    assert stored["status"] == {"state": "Pending", "targetNodeCount": 1}


def test_nodeclaim_crd_accepts_a_kaito_nodeclaim(control_plane: LocalCluster) -> None:
    install_crds(control_plane)
    claim = {
        "apiVersion": "karpenter.sh/v1",
        "kind": "NodeClaim",
        "metadata": {"name": "ws-crd-test", "labels": {"karpenter.sh/nodepool": "kaito"}},
        "spec": {
            "requirements": [{"key": "node.kubernetes.io/instance-type", "operator": "In",
                              "values": ["Standard_NC6s_v3"]}],
            "taints": [{"key": "sku", "value": "gpu", "effect": "NoSchedule"}],
            "resources": {"requests": {"nvidia.com/gpu": 1, "storage": "120Gi"}},
            "nodeClassRef": {"group": "karpenter.azure.com", "kind": "AKSNodeClass",
                             "name": "default"},
        },
    }
    control_plane.apply(claim)
    try:
        got = json.loads(
            control_plane.kubectl("get", "nodeclaim", "ws-crd-test", "-o", "json").stdout
        )
        assert got["spec"]["resources"]["requests"]["nvidia.com/gpu"] == 1
    finally:
        control_plane.kubectl("delete", "nodeclaim", "ws-crd-test", check=False)
