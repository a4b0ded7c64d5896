"""Upstream Kaito's example shapes through the admission functions, the default tuning
configs shipped in config/tuning, BYO mode and GPU partitions.

The same examples table (tests/envtest/upstream_examples.yaml) goes through the real
kube-apiserver in tests/envtest/test_upstream_examples.py.
"""

from __future__ import annotations

import base64
import json
import uuid
from pathlib import Path
from typing import Any

import jsonpatch
import pytest
import yaml

from controller.workspace.nodes import (
    NodePlan,
    byo_fit_problem,
    node_gpu_sku,
    nodes_gpu_sku,
)
from controller.workspace.status import Observed, plan_status
from controller.workspace.tuning import build_default_tuning_config
from crds.tuning_config import (
    CONFIG_KEY,
    DEFAULT_TEMPLATE_NAMES,
    Method,
    default_config_document,
    parse_training_config_text,
    with_target_modules,
)
from crds.workspace import Workspace
from presets.catalog import HfConfigSource, load_catalog
from tests.unit.test_workspace_builders import seed
from webhook.admission import AdmissionOptions, ConfigMapUnavailable, check, mutate
from webhook.review import AdmissionReview

pytestmark = pytest.mark.unit

REPO = Path(__file__).resolve().parents[2]
EXAMPLES: list[dict[str, Any]] = yaml.safe_load(
    (REPO / "tests/envtest/upstream_examples.yaml").read_text())["examples"]
TEMPLATES: list[dict[str, Any]] = [
    doc for doc in yaml.safe_load_all((REPO / "config/tuning/params_templates.yaml").read_text())
    if doc]
OPERATOR_NAMESPACE = "kaito-system"
WS_NAMESPACE = "team-a"


class Reader:
    """ConfigMaps by (namespace, name); the shipped templates in the operator namespace."""

    def __init__(self, with_templates: bool = True) -> None:
        self.data: dict[tuple[str, str], dict[str, str]] = {}
        self.reads: list[tuple[str, str]] = []
        if with_templates:
            for doc in TEMPLATES:
                self.data[(OPERATOR_NAMESPACE, doc["metadata"]["name"])] = doc["data"]

    async def read(self, namespace: str, name: str) -> dict[str, str] | None:
        self.reads.append((namespace, name))
        if namespace == "down":
            raise ConfigMapUnavailable("down")
        return self.data.get((namespace, name))


def _review(obj: dict[str, Any]) -> AdmissionReview:
    return AdmissionReview.model_validate({
        "apiVersion": "admission.k8s.io/v1", "kind": "AdmissionReview",
        "request": {"uid": str(uuid.uuid4()), "operation": "CREATE", "namespace": WS_NAMESPACE,
                    "object": obj}})


async def admit(obj: dict[str, Any], *, mode: str = "nap",
                reader: Reader | None = None) -> tuple[bool, str, dict[str, Any]]:
    """(allowed, denial message + warnings, the object after defaulting) as the API
    server would see them: mutate, apply the patch, validate."""
    reader = reader or Reader()
    options = AdmissionOptions(operator_namespace=OPERATOR_NAMESPACE,
                               node_provisioning=mode != "byo")
    catalog = load_catalog()
    mutated = (await mutate(_review(obj), catalog, reader, options=options))["response"]
    if not mutated["allowed"]:
        return False, mutated["status"]["message"], obj
    if "patch" in mutated:
        patch = json.loads(base64.b64decode(mutated["patch"]))
        obj = jsonpatch.apply_patch(obj, patch)
    checked = (await check(_review(obj), catalog, reader, options=options))["response"]
    text = (checked.get("status") or {}).get("message", "") + " ".join(
        checked.get("warnings") or [])
    return bool(checked["allowed"]), text, obj


@pytest.mark.parametrize("example", EXAMPLES, ids=lambda e: e["id"])
async def test_upstream_example_gets_upstreams_decision(example: dict[str, Any]) -> None:
    reader = Reader()
    if "configmap" in example:
        reader.data[(WS_NAMESPACE, example["configmap"]["name"])] = example["configmap"]["data"]
    is_allowed, text, _ = await admit(example["workspace"], mode=example["mode"], reader=reader)
    assert is_allowed is (example["expect"] == "allow"), text
    if "message" in example:
        assert example["message"] in text


async def test_a_preset_that_fits_only_across_nodes_is_refused_naming_a_one_node_sku() -> None:
    """Upstream's count x node rule would admit phi-4 (~30 GiB) on two 16 GiB nodes; no
    engine here serves one model across nodes, so the AdmissionReview is a denial naming
    the smallest SKU that serves it on one node, and that SKU is admitted."""
    obj = {"apiVersion": "kaito.sh/v1beta1", "kind": "Workspace", "metadata": {"name": "w"},
           "resource": {"instanceType": "Standard_NC6s_v3", "count": 2,
                        "labelSelector": {"matchLabels": {"apps": "phi-4"}}},
           "inference": {"preset": {"name": "phi-4"}}}
    catalog, reader = load_catalog(), Reader()
    options = AdmissionOptions(operator_namespace=OPERATOR_NAMESPACE)
    denied = (await check(_review(obj), catalog, reader, options=options))["response"]
    assert denied["allowed"] is False
    assert denied["status"]["code"] == 422
    assert denied["status"]["message"].endswith(
        "resource.instanceType: Invalid value: Insufficient total GPU memory: preset phi-4 "
        "needs 30 GiB of GPU memory; one Standard_NC6s_v3 node has 16 GiB and this operator "
        "serves a model on one node only: use Standard_NC12s_v3 (32 GiB) or larger")
    is_allowed, text, _ = await admit(
        {**obj, "resource": {**obj["resource"], "instanceType": "Standard_NC12s_v3"}})
    assert is_allowed, text


def test_shipped_templates_are_the_shared_defaults_and_parse_with_the_runtime_schema() -> None:
    by_name = {doc["metadata"]["name"]: doc for doc in TEMPLATES}
    assert set(by_name) == set(DEFAULT_TEMPLATE_NAMES.values())
    for method, name in DEFAULT_TEMPLATE_NAMES.items():
        doc = by_name[name]
        assert doc["metadata"]["namespace"] == OPERATOR_NAMESPACE
        text = doc["data"][CONFIG_KEY]
        assert yaml.safe_load(text) == default_config_document(method)  # type: ignore[arg-type]
        config = parse_training_config_text(text, method)  # type: ignore[arg-type]
        assert config.quantization.load_in_4bit is (method == "qlora")
        assert config.lora.r == 8 and config.training.output_dir == "/mnt/results"


def test_default_kustomization_ships_the_templates() -> None:
    kustomization = yaml.safe_load((REPO / "config/default/kustomization.yaml").read_text())
    assert "../tuning" in kustomization["resources"]


@pytest.mark.parametrize("method", ["lora", "qlora"])
def test_the_controllers_default_config_map_is_the_shipped_template_with_target_modules(
    method: Method,
) -> None:
    # A cluster without the templates (an operator deleted them) tunes with the same config
    # as one with them: the ConfigMap the controller makes holds the shipped template plus
    # the preset's LoRA target modules.
    preset = load_catalog().preset("phi-3-mini-4k-instruct")
    assert preset is not None and preset.lora_target_modules
    shipped = next(doc for doc in TEMPLATES
                   if doc["metadata"]["name"] == DEFAULT_TEMPLATE_NAMES[method])
    expected = yaml.safe_load(
        with_target_modules(str(shipped["data"][CONFIG_KEY]), preset.lora_target_modules))
    built = build_default_tuning_config(seed(), preset, method, "default")
    assert yaml.safe_load(built["data"][CONFIG_KEY]) == expected
    lora = expected["training_config"]["LoraConfig"]
    assert lora["target_modules"] == list(preset.lora_target_modules)


def test_target_modules_of_the_users_config_win() -> None:
    text = yaml.safe_dump({"training_config": {"LoraConfig": {"target_modules": ["q_proj"]}}})
    assert with_target_modules(text, ["qkv_proj"]) == text
    assert with_target_modules("not: [valid", ["a"]) == "not: [valid"


def _tuning(config: str | None = None, method: str = "qlora") -> dict[str, Any]:
    example = next(e for e in EXAMPLES if e["id"] == "tuning-falcon-7b-qlora-template")
    obj: dict[str, Any] = json.loads(json.dumps(example["workspace"]))
    obj["tuning"]["method"] = method
    if config is None:
        obj["tuning"].pop("config")
    else:
        obj["tuning"]["config"] = config
    return obj


async def test_a_template_name_is_found_in_the_operators_namespace() -> None:
    reader = Reader()
    is_allowed, text, _ = await admit(_tuning("qlora-params-template"), reader=reader)
    assert is_allowed, text
    assert (WS_NAMESPACE, "qlora-params-template") in reader.reads
    assert (OPERATOR_NAMESPACE, "qlora-params-template") in reader.reads


async def test_an_empty_config_validates_the_methods_template() -> None:
    reader = Reader()
    reader.data[(OPERATOR_NAMESPACE, "qlora-params-template")] = {
        CONFIG_KEY: yaml.safe_dump({"training_config": {"TrainingArguments": {
            "output_dir": "/etc"}}})}
    is_allowed, text, _ = await admit(_tuning(None), reader=reader)
    assert not is_allowed
    assert "tuning.config" in text and "qlora-params-template" in text


async def test_without_shipped_templates_the_built_in_default_is_used() -> None:
    is_allowed, text, _ = await admit(_tuning(None), reader=Reader(with_templates=False))
    assert is_allowed, text


async def test_a_missing_config_of_another_name_is_still_denied() -> None:
    is_allowed, text, _ = await admit(_tuning("my-own-config"))
    assert not is_allowed
    assert "ConfigMap 'my-own-config' does not exist" in text


async def test_byo_mode_chooses_no_instance_type() -> None:
    obj = {"apiVersion": "kaito.sh/v1beta1", "kind": "Workspace", "metadata": {"name": "w"},
           "resource": {"labelSelector": {"matchLabels": {"a": "b"}}},
           "inference": {"preset": {"name": "phi-4"}}}
    is_allowed, text, stored = await admit(obj, mode="byo")
    assert is_allowed, text
    assert "instanceType" not in stored["resource"]
    is_allowed, _, stored = await admit(obj, mode="nap")
    assert is_allowed and stored["resource"]["instanceType"] == "Standard_NC24ads_A100_v4"


async def test_partition_rules() -> None:
    base = {"apiVersion": "kaito.sh/v1beta1", "kind": "Workspace", "metadata": {"name": "w"},
            "resource": {"labelSelector": {"matchLabels": {"a": "b"}},
                         "partition": {"mode": "mig", "profile": "big"}},
            "inference": {"preset": {"name": "phi-4-mini-instruct"}}}
    is_allowed, text, _ = await admit(base, mode="byo")
    assert not is_allowed and "resource.partition.profile" in text
    with_sku = json.loads(json.dumps(base))
    with_sku["resource"]["partition"]["profile"] = "3g.40gb"
    with_sku["resource"]["instanceType"] = "Standard_NC24ads_A100_v4"
    is_allowed, text, _ = await admit(with_sku, mode="byo")
    assert not is_allowed and "must be empty with resource.partition" in text


async def test_partition_is_immutable() -> None:
    from webhook.validation import validate

    def workspace(profile: str) -> Workspace:
        return Workspace.model_validate({
            "metadata": {"name": "w"},
            "resource": {"labelSelector": {"matchLabels": {"a": "b"}},
                         "partition": {"mode": "mig", "profile": profile}},
            "inference": {"preset": {"name": "phi-4-mini-instruct"}}})

    errors = validate(workspace("3g.40gb"), workspace("2g.20gb"), load_catalog(),
                      node_provisioning=False)
    assert [e.path for e in errors] == ["resource.partition"]


def _node(name: str, labels: dict[str, str], gpus: int = 1) -> dict[str, Any]:
    return {"metadata": {"name": name, "labels": labels},
            "status": {"allocatable": {"nvidia.com/gpu": str(gpus)},
                       "conditions": [{"type": "Ready", "status": "True"}]}}


GFD_A10 = {"nvidia.com/gpu.count": "1", "nvidia.com/gpu.memory": "23028",
           "nvidia.com/gpu.product": "NVIDIA-A10", "apps": "byo"}
GFD_V100 = {"nvidia.com/gpu.count": "2", "nvidia.com/gpu.memory": "16384",
            "nvidia.com/gpu.product": "Tesla-V100-PCIE-16GB", "apps": "byo"}


def test_gpu_labels_make_a_sku() -> None:
    sku = node_gpu_sku(_node("a10", GFD_A10))
    assert sku is not None and sku.gpu_count == 1 and sku.bf16
    assert abs(sku.gpu_memory_gib - 22.49) < 0.01
    v100 = node_gpu_sku(_node("v100", GFD_V100, gpus=2))
    assert v100 is not None and v100.total_gpu_memory_gib == 32 and not v100.bf16
    assert node_gpu_sku(_node("bare", {"apps": "byo"})) is None


def test_byo_fit_from_labels_is_one_node() -> None:
    """Bring-your-own nodes follow the webhook's rule: the model fits one node's GPUs or
    the workspace gets a condition; never several nodes for one replica."""
    catalog = load_catalog()
    ws = Workspace.model_validate({"metadata": {"name": "w", "namespace": "n"},
                                   "resource": {"labelSelector": {"matchLabels": {"apps": "byo"}}},
                                   "inference": {"preset": {"name": "phi-4"}}})
    nodes = [_node("a10-1", GFD_A10), _node("a10-2", GFD_A10), _node("other", {"x": "y"})]
    sku = nodes_gpu_sku(ws, nodes)
    assert sku is not None and sku.gpu_model == "NVIDIA-A10"
    phi4, phi3 = catalog.preset("phi-4"), catalog.preset("phi-3-mini-4k-instruct")
    assert phi4 is not None and phi3 is not None
    assert byo_fit_problem(phi3, sku, is_tuning=False, catalog=catalog) is None
    # ~30Gi on one 22.5Gi node: two such nodes do not serve it together.
    problem = byo_fit_problem(phi4, sku, is_tuning=False, catalog=catalog)
    assert problem == ("preset phi-4 needs 30 GiB of GPU memory; one selected (1x NVIDIA-A10, "
                       "22.5 GiB each) node has 22.5 GiB and this operator serves a model on "
                       "one node only: use Standard_NC12s_v3 (32 GiB) or larger")
    tuning_problem = byo_fit_problem(phi4, sku, is_tuning=True)
    assert tuning_problem is not None and "per GPU" in tuning_problem


def test_too_small_byo_nodes_give_a_clear_condition() -> None:
    plan = NodePlan(target_node_count=1, worker_nodes=["a10-1"],
                    fit_problem="preset phi-4 needs at least 30Gi of GPU memory")
    status = plan_status(Observed(nodes=plan, is_tuning=False))
    verdict = status.conditions["ResourceReady"]
    assert (verdict.status, verdict.reason) == ("False", "InsufficientGPUMemory")
    assert "select larger nodes in resource.labelSelector" in verdict.message
    assert not plan.is_ready


LLAMA_70B_CONFIG = {"hidden_size": 8192, "num_hidden_layers": 80, "num_attention_heads": 64,
                    "num_key_value_heads": 8, "intermediate_size": 28672, "vocab_size": 128256,
                    "max_position_embeddings": 131072}


async def test_a_hugging_face_id_with_a_readable_config_is_sized(tmp_path: Path) -> None:
    model_dir = tmp_path / "someorg" / "big-70b"
    model_dir.mkdir(parents=True)
    (model_dir / "config.json").write_text(json.dumps(LLAMA_70B_CONFIG))
    options = AdmissionOptions(operator_namespace=OPERATOR_NAMESPACE,
                               hf_configs=HfConfigSource((tmp_path,)))
    catalog, reader = load_catalog(), Reader()
    obj = {"apiVersion": "kaito.sh/v1beta1", "kind": "Workspace", "metadata": {"name": "w"},
           "resource": {"labelSelector": {"matchLabels": {"a": "b"}}},
           "inference": {"preset": {"name": "someorg/big-70b"}}}
    mutated = (await mutate(_review(obj), catalog, reader, options=options))["response"]
    stored = jsonpatch.apply_patch(obj, json.loads(base64.b64decode(mutated["patch"])))
    sku = catalog.sku(stored["resource"]["instanceType"])
    assert sku is not None and sku.total_gpu_memory_gib >= 140  # ~131Gi of weights
    checked = (await check(_review(stored), catalog, reader, options=options))["response"]
    assert checked["allowed"]
    assert "memory estimated from its config.json" in " ".join(checked["warnings"])
    small = {**stored, "resource": {**stored["resource"], "instanceType": "Standard_NC6s_v3",
                                    "count": 1}}
    denied = (await check(_review(small), catalog, reader, options=options))["response"]
    assert not denied["allowed"]
    assert "Insufficient total GPU memory" in denied["status"]["message"]


async def test_an_unsized_hugging_face_id_needs_an_instance_type_with_provisioning() -> None:
    obj = {"apiVersion": "kaito.sh/v1beta1", "kind": "Workspace", "metadata": {"name": "w"},
           "resource": {"labelSelector": {"matchLabels": {"a": "b"}}},
           "inference": {"preset": {"name": "someorg/unknown-model"}}}
    is_allowed, text, _ = await admit(obj)
    assert not is_allowed and "resource.instanceType: Required value" in text
    is_allowed, text, _ = await admit(obj, mode="byo")
    assert is_allowed and "could not be read" in text


async def test_tuning_refuses_a_hugging_face_id_and_weights_pvc() -> None:
    obj = _tuning("qlora-params-template")
    obj["tuning"]["preset"] = {"name": "someorg/unknown-model"}
    is_allowed, text, _ = await admit(obj)
    assert not is_allowed and "tuning needs a catalog preset" in text
    obj = _tuning("qlora-params-template")
    obj["tuning"]["preset"]["presetOptions"]["modelWeightsPVC"] = "weights"
    is_allowed, text, _ = await admit(obj)
    assert not is_allowed and "for inference only" in text


@pytest.mark.parametrize("name", sorted(load_catalog().models))
async def test_every_catalog_preset_is_admitted_with_a_chosen_instance_type(name: str) -> None:
    obj = {"apiVersion": "kaito.sh/v1beta1", "kind": "Workspace", "metadata": {"name": "w"},
           "resource": {"labelSelector": {"matchLabels": {"a": "b"}}},
           "inference": {"preset": {"name": name,
                                    "presetOptions": {"modelAccessSecret": "hf-token"}}}}
    is_allowed, text, stored = await admit(obj)
    assert is_allowed, text
    sku = load_catalog().sku(stored["resource"]["instanceType"])
    assert sku is not None and stored["resource"]["count"] >= 1


async def test_a_weights_pvc_is_admitted_with_a_warning_that_it_is_not_used_yet() -> None:
    obj = {"apiVersion": "kaito.sh/v1beta1", "kind": "Workspace", "metadata": {"name": "w"},
           "resource": {"instanceType": "Standard_NC24ads_A100_v4",
                        "labelSelector": {"matchLabels": {"a": "b"}}},
           "inference": {"preset": {"name": "phi-4", "presetOptions": {
               "modelWeightsPVC": "weights", "modelWeightsSubPath": "phi-4"}}}}
    is_allowed, text, _ = await admit(obj)
    assert is_allowed and "modelWeightsPVC is accepted but not used yet" in text
    del obj["inference"]["preset"]["presetOptions"]["modelWeightsPVC"]
    is_allowed, text, _ = await admit(obj)
    assert not is_allowed and "modelWeightsSubPath: Invalid value: needs modelWeightsPVC" in text
