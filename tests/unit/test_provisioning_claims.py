"""The provisioner's pure parts: claims, conditions, node and agent-pool builders, settings."""

from __future__ import annotations

from typing import Any

import pytest
from pydantic import ValidationError

from controller.provisioning.agentpool import build_agent_pool
from controller.provisioning.backend import LaunchFailed
from controller.provisioning.claims import (
    NODECLAIM_LABEL,
    node_sync_patch,
    parse_claim,
    phase,
    with_condition,
    with_ready,
)
from controller.provisioning.local import build_kwok_node
from controller.provisioning.offerings import UnavailableOfferings
from controller.provisioning.settings import ProvisionerSettings
from presets.catalog import load_catalog

T0 = 1_780_000_000.0


def _obj(kind: str = "NodeClaim", **status: Any) -> dict[str, Any]:
    return {
        "apiVersion": "karpenter.sh/v1" if kind == "NodeClaim" else "karpenter.sh/v1alpha5",
        "kind": kind,
        "metadata": {"name": "ws0123456789-0", "uid": "u", "resourceVersion": "7",
                     "creationTimestamp": "2026-11-30T06:00:00Z",
                     "labels": {"karpenter.sh/nodepool": "kaito", "app": "phi",
                                "kubernetes.io/os": "linux"}},
        "spec": {"requirements": [
            {"key": "node.kubernetes.io/instance-type", "operator": "In",
             "values": ["Standard_NC12s_v3"]}],
            "taints": [{"key": "sku", "value": "gpu", "effect": "NoSchedule"}]},
        "status": status,
    }


@pytest.mark.parametrize("kind", ["NodeClaim", "Machine"])
def test_both_kinds_parse_to_one_claim(kind: str) -> None:
    claim = parse_claim(_obj(kind, providerID="kwok://x", nodeName="x"))
    assert claim.kind == kind and claim.is_ours
    assert claim.instance_type == "Standard_NC12s_v3"
    assert claim.provider_id == "kwok://x" and claim.node_name == "x"
    assert claim.created_at is not None
    assert claim.taints[0].key == "sku"


def test_a_condition_keeps_its_transition_time_while_its_status_stays() -> None:
    first = with_condition([], "Launched", "Unknown", "Creating", "", T0)
    same = with_condition(first, "Launched", "Unknown", "Creating", "still", T0 + 60)
    assert same[0]["lastTransitionTime"] == first[0]["lastTransitionTime"]
    changed = with_condition(same, "Launched", "True", "Launched", "", T0 + 120)
    assert changed[0]["lastTransitionTime"] != first[0]["lastTransitionTime"]
    assert len(changed) == 1


def test_ready_follows_the_lifecycle_conditions() -> None:
    conditions: list[dict[str, Any]] = []
    for condition_type in ("Launched", "Registered"):
        conditions = with_condition(conditions, condition_type, "True", condition_type, "", T0)
    pending = with_ready(conditions, T0)
    assert pending[-1]["status"] == "Unknown" and "Initialized" in pending[-1]["message"]
    done = with_ready(with_condition(conditions, "Initialized", "True", "I", "", T0), T0)
    assert done[-1] == {"type": "Ready", "status": "True", "reason": "Ready", "message": "",
                        "lastTransitionTime": done[-1]["lastTransitionTime"]}
    failed = with_ready(with_condition([], "Launched", "False", "QuotaExceeded", "no cores",
                                       T0), T0)
    assert (failed[-1]["status"], failed[-1]["reason"], failed[-1]["message"]) == (
        "False", "QuotaExceeded", "no cores")
    claim = parse_claim(_obj(conditions=failed))
    assert phase(claim) == "Failed"


def test_registration_puts_missing_labels_and_taints_on_the_node() -> None:
    claim = parse_claim(_obj())
    node: dict[str, Any] = {
        "metadata": {"name": "n", "resourceVersion": "3", "labels": {"app": "phi"}},
            "spec": {"taints": [{"key": "other", "effect": "NoExecute"}]}}
    patch = node_sync_patch(claim, node)
    assert patch is not None
    assert patch["metadata"]["resourceVersion"] == "3"  # the taint list is compared-and-swapped
    assert patch["metadata"]["labels"] == {
        "karpenter.sh/nodepool": "kaito", "kubernetes.io/os": "linux",
        NODECLAIM_LABEL: claim.name, "node.kubernetes.io/instance-type": "Standard_NC12s_v3",
        "karpenter.sh/registered": "true"}
    assert patch["spec"]["taints"] == [{"key": "other", "effect": "NoExecute"},
                                       {"key": "sku", "value": "gpu", "effect": "NoSchedule"}]
    synced = {"metadata": {**node["metadata"],
                           "labels": {**node["metadata"]["labels"],
                                      **patch["metadata"]["labels"]}},
              "spec": patch["spec"]}
    assert node_sync_patch(claim, synced) is None
    labels_only = node_sync_patch(claim, {**synced, "metadata": {"resourceVersion": "4"}})
    assert labels_only is not None and "resourceVersion" not in labels_only["metadata"]


def test_the_kwok_node_has_the_sku_s_gpus_labels_and_taints() -> None:
    claim = parse_claim(_obj())
    sku = load_catalog().sku("Standard_NC12s_v3")
    assert sku is not None
    node = build_kwok_node(claim, sku)
    assert node["metadata"]["name"] == claim.name
    assert node["metadata"]["annotations"] == {"kwok.x-k8s.io/node": "fake"}
    labels = node["metadata"]["labels"]
    assert labels["node.kubernetes.io/instance-type"] == "Standard_NC12s_v3"
    assert labels["app"] == "phi" and labels[NODECLAIM_LABEL] == claim.name
    assert labels["nvidia.com/gpu.count"] == "2"
    assert labels["nvidia.com/gpu.memory"] == str(16 * 1024)
    assert node["status"]["capacity"]["nvidia.com/gpu"] == "2"
    assert node["spec"]["providerID"] == f"kwok://{claim.name}"
    assert node["spec"]["taints"] == [{"key": "sku", "value": "gpu", "effect": "NoSchedule"}]


def test_the_agent_pool_keeps_labels_aks_allows_and_the_taints() -> None:
    claim = parse_claim(_obj())
    body = build_agent_pool(claim, "Standard_NC12s_v3", os_disk_size_gb=128)
    properties = body["properties"]
    assert properties["count"] == 1 and properties["mode"] == "User"
    assert properties["osDiskSizeGB"] == 128
    assert properties["nodeLabels"] == {"app": "phi", "karpenter.sh/nodepool": "kaito",
                                        NODECLAIM_LABEL: claim.name}
    assert properties["nodeTaints"] == ["sku=gpu:NoSchedule"]
    assert properties["tags"] == {"kaito.sh/nodeclaim": claim.name}


def test_the_aks_backend_needs_its_cluster(monkeypatch: pytest.MonkeyPatch) -> None:
    with pytest.raises(ValidationError, match="subscription_id"):
        ProvisionerSettings(backend="aks")
    monkeypatch.setenv("KAITO_PROVISIONER__AZURE__SUBSCRIPTION_ID", "s")
    monkeypatch.setenv("KAITO_PROVISIONER__AZURE__RESOURCE_GROUP", "rg")
    monkeypatch.setenv("KAITO_PROVISIONER__AZURE__CLUSTER_NAME", "c")
    settings = ProvisionerSettings(backend="aks")
    assert settings.azure.cluster_name == "c"
    assert ProvisionerSettings(backend="local").backend == "local"


def test_a_capacity_refusal_is_remembered_for_its_instance_type_until_it_expires() -> None:
    now = [0.0]
    offerings = UnavailableOfferings(180, clock=lambda: now[0])
    quota = LaunchFailed("QuotaExceeded", "no cores")
    offerings.remember("Standard_NC6s_v3", quota)
    offerings.remember("Standard_NC12s_v3", LaunchFailed("InvalidParameter", "bad"))
    assert offerings.refusal("standard_nc6s_v3") == quota
    assert offerings.refusal("Standard_NC12s_v3") is None  # not a capacity answer
    now[0] = 180.0
    assert offerings.refusal("Standard_NC6s_v3") is None
