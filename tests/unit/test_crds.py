"""The Workspace API: models accept upstream's objects, and the committed CRDs match them."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml
from pydantic import ValidationError

from crds.generate import render_crd_files, render_crds, write_crds
from crds.karpenter import Machine, NodeClaim
from crds.meta import Condition, find_condition, is_condition_true, set_condition
from crds.workspace import Workspace

pytestmark = pytest.mark.unit

REPO = Path(__file__).resolve().parents[2]
SEED = REPO / "examples/fine-tuning/kaito_workspace_tuning_phi_3.yaml"
BASES = REPO / "config/crd/bases"


def _workspace_crd() -> dict[str, Any]:
    doc: dict[str, Any] = yaml.safe_load(render_crd_files()["kaito.sh_workspaces.yaml"])
    return doc


def test_committed_crds_match_the_models() -> None:
    expected = render_crd_files()
    committed = {path.name: path.read_text() for path in sorted(BASES.glob("*.yaml"))}
    assert committed == expected, "CRDs drifted from crds/: run `kaito crds --write`"


def test_render_crds_is_one_stream_of_all_crds(tmp_path: Path) -> None:
    names = [doc["metadata"]["name"] for doc in yaml.safe_load_all(render_crds())]
    assert names == ["workspaces.kaito.sh", "nodeclaims.karpenter.sh", "machines.karpenter.sh"]
    written = write_crds(tmp_path / "out")
    assert sorted(p.name for p in written) == sorted(render_crd_files())
    assert all(p.read_text() == render_crd_files()[p.name] for p in written)


def test_seed_example_is_the_seed_document_yaml() -> None:
    seed_doc = (REPO.parent / "shared/seed/fine-tuning-with-kaito.md")
    text = SEED.read_text()
    assert text.startswith("apiVersion: kaito.sh/v1alpha1\nkind: Workspace\n")
    if seed_doc.exists():
        # The example is copied verbatim from the seed's quick start.
        assert text.strip() in seed_doc.read_text()


def test_seed_round_trips_through_the_model_without_loss() -> None:
    raw = yaml.safe_load(SEED.read_text())
    ws = Workspace.model_validate(raw)
    assert ws.tuning is not None and ws.tuning.method == "qlora"
    assert ws.tuning.output is not None
    assert ws.tuning.output.image_push_secret == "ACR_REGISTRY_SECRET_HERE"
    assert ws.resource is not None and ws.resource.instance_type == "Standard_NC6s_v3"
    assert ws.to_dict() == raw


def test_every_reference_field_is_accepted() -> None:
    raw = {
        "apiVersion": "kaito.sh/v1beta1",
        "kind": "Workspace",
        "metadata": {"name": "full", "namespace": "default", "managedFields": [{"x": 1}]},
        "resource": {
            "instanceType": "Standard_NC24ads_A100_v4",
            "count": 1,
            "labelSelector": {
                "matchLabels": {"app": "x"},
                "matchExpressions": [{"key": "a", "operator": "In", "values": ["b"]}],
            },
            "preferredNodes": ["node-a"],
        },
        "inference": {
            "preset": {
                "name": "phi-3-mini-4k-instruct",
                "accessMode": "private",
                "presetOptions": {
                    "image": "r.io/m:1",
                    "imagePullSecrets": ["s"],
                    "modelAccessSecret": "hf",
                },
            },
            "config": "inference-params",
            "adapters": [
                {
                    "source": {
                        "name": "a1",
                        "image": "r.io/a:1",
                        "imagePullSecrets": ["s"],
                        "volumeSource": {"emptyDir": {}},
                    },
                    "strength": "0.5",
                }
            ],
        },
        "tuning": {
            "preset": {"name": "phi-3-mini-4k-instruct"},
            "method": "lora",
            "config": "my-config",
            "input": {
                "name": "d",
                "urls": ["https://e.com/a.parquet"],
                "image": "r.io/d:1",
                "imagePullSecrets": ["s"],
                "volumeSource": {"persistentVolumeClaim": {"claimName": "pvc"}},
            },
            "output": {
                "image": "r.io/o:1",
                "imagePushSecret": "push",
                "volumeSource": {"emptyDir": {}},
            },
        },
        "status": {
            "workerNodes": ["n1"],
            "state": "Running",
            "targetNodeCount": 1,
            "conditions": [
                {
                    "type": "ResourceReady",
                    "status": "True",
                    "lastTransitionTime": "2024-01-01T00:00:00Z",
                    "reason": "Ok",
                    "message": "",
                    "observedGeneration": 1,
                }
            ],
        },
    }
    ws = Workspace.model_validate(raw)
    assert ws.to_dict() == raw
    assert ws.status is not None and is_condition_true(ws.status.conditions, "ResourceReady")


def test_wrong_types_are_rejected_with_the_field_path() -> None:
    with pytest.raises(ValidationError) as caught:
        Workspace.model_validate({"resource": {"count": "many", "labelSelector": {}}})
    assert caught.value.errors()[0]["loc"] == ("resource", "count")


def test_crd_shape_matches_upstream() -> None:
    crd = _workspace_crd()
    spec = crd["spec"]
    assert spec["names"]["shortNames"] == ["wk", "wks"]
    assert spec["names"]["categories"] == ["workspace"]
    assert spec["scope"] == "Namespaced"
    versions = {v["name"]: v for v in spec["versions"]}
    assert set(versions) == {"v1alpha1", "v1beta1"}
    assert [v["name"] for v in spec["versions"] if v["storage"]] == ["v1beta1"]
    assert versions["v1alpha1"]["schema"] == versions["v1beta1"]["schema"]
    for version in versions.values():
        assert version["subresources"] == {"status": {}}
        columns = {c["name"].upper(): c.get("priority", 0) for c in version["additionalPrinterColumns"]}
        for name in ("INSTANCE", "RESOURCEREADY", "INFERENCEREADY", "WORKSPACEREADY", "AGE"):
            assert columns[name] == 0
        for name in ("JOBSTARTED", "WORKSPACESUCCEEDED", "STATE"):
            assert name in columns
    schema = versions["v1beta1"]["schema"]["openAPIV3Schema"]
    assert "spec" not in schema["properties"]
    assert set(schema["properties"]) >= {"resource", "inference", "tuning", "status"}


def _walk(node: dict[str, Any], path: str) -> list[tuple[str, dict[str, Any]]]:
    found = [(path, node)]
    for name, sub in node.get("properties", {}).items():
        found.extend(_walk(sub, f"{path}.{name}"))
    if "items" in node:
        found.extend(_walk(node["items"], f"{path}[]"))
    return found


def test_crd_schema_is_structural_and_described() -> None:
    schema = _workspace_crd()["spec"]["versions"][1]["schema"]["openAPIV3Schema"]
    for path, node in _walk(schema, "workspace"):
        assert "$ref" not in node and "default" not in node, path
        assert "type" in node or node.get("x-kubernetes-int-or-string"), path
        is_scalar_item = path.endswith("[]") and node.get("type") != "object"
        if path.startswith(("workspace.tuning", "workspace.resource", "workspace.inference")) and (
            not is_scalar_item
        ):
            assert node.get("description"), f"{path} has no description for kubectl explain"
    tuning_input = schema["properties"]["tuning"]["properties"]["input"]
    assert "urls" in tuning_input["properties"]
    assert tuning_input["properties"]["volumeSource"]["x-kubernetes-preserve-unknown-fields"]


def test_karpenter_objects_parse() -> None:
    claim = NodeClaim.model_validate(
        {
            "apiVersion": "karpenter.sh/v1",
            "kind": "NodeClaim",
            "metadata": {"name": "ws-abc", "labels": {"karpenter.sh/nodepool": "kaito"}},
            "spec": {
                "requirements": [
                    {
                        "key": "node.kubernetes.io/instance-type",
                        "operator": "In",
                        "values": ["Standard_NC6s_v3"],
                    }
                ],
                "taints": [{"key": "sku", "value": "gpu", "effect": "NoSchedule"}],
                "resources": {"requests": {"storage": "120Gi", "nvidia.com/gpu": 1}},
                "nodeClassRef": {"group": "karpenter.azure.com", "kind": "AKSNodeClass",
                                 "name": "default"},
            },
            "status": {"nodeName": "n1", "providerID": "azure:///x", "capacity": {"cpu": "6"}},
        }
    )
    assert claim.status is not None and claim.status.provider_id == "azure:///x"
    dumped = claim.model_dump(by_alias=True, exclude_none=True)
    assert dumped["spec"]["nodeClassRef"]["kind"] == "AKSNodeClass"
    machine = Machine.model_validate(
        {
            "apiVersion": "karpenter.sh/v1alpha5",
            "kind": "Machine",
            "metadata": {"name": "ws-m"},
            "spec": {"machineTemplateRef": {"name": "default"}},
            "status": {"conditions": [{"type": "Ready", "status": "True", "severity": ""}]},
        }
    )
    assert machine.spec.machine_template_ref is not None
    crds = {doc["metadata"]["name"]: doc for doc in yaml.safe_load_all(render_crds())}
    assert crds["nodeclaims.karpenter.sh"]["spec"]["scope"] == "Cluster"
    assert crds["machines.karpenter.sh"]["spec"]["versions"][0]["name"] == "v1alpha5"


def _condition(type_: str, status: str, when: str, reason: str = "R") -> Condition:
    return Condition.model_validate({"type": type_, "status": status, "lastTransitionTime": when,
                                     "reason": reason, "message": ""})


def test_set_condition_keeps_transition_time_when_status_is_unchanged() -> None:
    first = set_condition(None, _condition("ResourceReady", "False", "t1"))
    assert [c.type for c in first] == ["ResourceReady"]
    same = set_condition(first, _condition("ResourceReady", "False", "t2", reason="Still"))
    assert same[0].last_transition_time == "t1" and same[0].reason == "Still"
    flipped = set_condition(same, _condition("ResourceReady", "True", "t3"))
    assert flipped[0].last_transition_time == "t3"
    both = set_condition(flipped, _condition("JobStarted", "True", "t4"))
    assert [c.type for c in both] == ["ResourceReady", "JobStarted"]
    assert find_condition(both, "JobStarted") is not None
    assert find_condition(both, "Nope") is None
    assert first == [_condition("ResourceReady", "False", "t1")]  # inputs are not mutated


def test_conditions_are_a_list_map_keyed_by_type() -> None:
    schema = _workspace_crd()["spec"]["versions"][1]["schema"]["openAPIV3Schema"]
    conditions = schema["properties"]["status"]["properties"]["conditions"]
    assert conditions["x-kubernetes-list-type"] == "map"
    assert conditions["x-kubernetes-list-map-keys"] == ["type"]
    assert set(conditions["items"]["required"]) >= {"type", "status"}
