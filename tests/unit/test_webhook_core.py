"""Defaulting, update rules, warnings and the URL check, as pure functions."""

from __future__ import annotations

import copy
from typing import Any

import pytest

from crds.addresses import parse_networks, url_problem
from crds.workspace import Workspace
from presets.catalog import load_catalog
from tests.unit.test_webhook_cases import (
    INFERENCE,
    SEED,
    _adapter,
    _edit,
    run_webhook,
    training_config,
)
from webhook.defaulting import default, deprecation_warnings
from webhook.tuning_config import (
    TrainingConfig,
    computes_in_bfloat16,
    config_shape,
    parse_tuning_config,
)
from webhook.validation import admission_warnings, validate

pytestmark = pytest.mark.unit


def _defaulted(raw: dict[str, Any], old: dict[str, Any] | None = None) -> dict[str, Any]:
    ws = default(Workspace.model_validate(raw), load_catalog(),
                 old=Workspace.model_validate(old) if old else None)
    return ws.to_dict()


def test_tuning_defaults_pick_the_cheapest_sku_that_fits() -> None:
    got = _defaulted(_edit(SEED, resource__instanceType=None))
    assert got["resource"]["instanceType"] == "Standard_NC4as_T4_v3"
    assert got["resource"]["count"] == 1
    assert run_webhook(_edit(SEED, resource__instanceType=None), None) == []


def test_inference_defaults_fill_sku_count_and_strength() -> None:
    raw = _edit(INFERENCE, resource__instanceType=None, inference__preset={"name": "phi-4"},
                inference__adapters=[_adapter("a"), _adapter("b", "0.25")])
    got = _defaulted(raw)
    assert got["resource"]["instanceType"] == "Standard_NC24ads_A100_v4"
    assert got["resource"]["count"] == 1
    assert [a["strength"] for a in got["inference"]["adapters"]] == ["1.0", "0.25"]
    # On a 16 GiB SKU phi-4 does not fit one node: count stays one replica (never the
    # nodes a model would span: nothing here serves across nodes) and validation refuses.
    small = _defaulted(_edit(INFERENCE, resource__instanceType="Standard_NC6s_v3",
                             inference__preset={"name": "phi-4"}))
    assert small["resource"]["count"] == 1


def test_defaults_never_override_the_user() -> None:
    raw = _edit(INFERENCE, resource__count=3, resource__instanceType="Standard_NC96ads_A100_v4")
    got = _defaulted(raw)
    assert got["resource"]["count"] == 3
    assert got["resource"]["instanceType"] == "Standard_NC96ads_A100_v4"
    assert _defaulted(SEED)["resource"]["instanceType"] == "Standard_NC6s_v3"


def test_update_carries_over_webhook_defaults() -> None:
    old = _defaulted(_edit(SEED, resource__instanceType=None))
    replaced = _edit(SEED, resource__instanceType=None)
    assert run_webhook(replaced, None, old_raw=old) == []


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"resource__instanceType": "Standard_NC24ads_A100_v4"}, "resource.instanceType: Forbidden"),
        ({"resource__count": 2}, "resource.count: Forbidden"),
        ({"resource__labelSelector": {"matchLabels": {"app": "other"}}},
         "resource.labelSelector: Forbidden"),
        ({"tuning__preset": {"name": "phi-3-mini-4k-instruct"}}, "tuning.preset: Forbidden"),
        ({"tuning__method": "lora"}, "tuning.method: Forbidden"),
        ({"tuning__input__name": "renamed"}, "tuning.input.name: Forbidden"),
        ({"tuning": None, "inference": {"preset": {"name": "phi-3-mini-4k-instruct"}}},
         "inference and tuning cannot be switched on or off"),
    ],
)
def test_immutable_fields_on_update(change: dict[str, Any], message: str) -> None:
    old = _defaulted(SEED)
    errors = run_webhook(_edit(old, **change), None, old_raw=old)
    assert any(message in e for e in errors), errors


def test_inference_preset_is_immutable() -> None:
    old = _defaulted(INFERENCE)
    new = _edit(old, inference__preset={"name": "phi-3-mini-128k-instruct"})
    assert "inference.preset: Forbidden: field is immutable" in run_webhook(new, None, old)


def test_mutable_fields_may_change() -> None:
    old = _defaulted(SEED)
    new = _edit(old, tuning__input__urls=["https://example.com/other.parquet"],
                tuning__output__image="r.io/other:2")
    assert run_webhook(new, None, old_raw=old) == []
    old_inference = _defaulted(INFERENCE)
    with_adapter = _edit(old_inference, inference__adapters=[_adapter("x")])
    assert run_webhook(with_adapter, None, old_raw=old_inference) == []


def test_seed_on_v100_is_admitted_with_a_float16_warning() -> None:
    ws = default(Workspace.model_validate(SEED), load_catalog())
    assert validate(ws, None, load_catalog()) == []
    warnings = admission_warnings(ws, load_catalog())
    assert warnings == ["Standard_NC6s_v3 (V100) has no bfloat16: tuning runs in float16 instead"]
    on_a100 = _edit(SEED, resource__instanceType="Standard_NC24ads_A100_v4")
    assert admission_warnings(Workspace.model_validate(on_a100), load_catalog()) == []


def test_deprecated_fields_warn() -> None:
    raw = _edit(INFERENCE, resource__count=1, resource__preferredNodes=["n1"])
    warnings = deprecation_warnings(Workspace.model_validate(raw))
    assert len(warnings) == 2 and all("deprecated" in w for w in warnings)
    assert deprecation_warnings(Workspace.model_validate(INFERENCE)) == []


def test_gated_preset_without_secret_warns() -> None:
    raw = _edit(INFERENCE, inference__preset={"name": "llama-3.1-8b-instruct"})
    warnings = admission_warnings(Workspace.model_validate(raw), load_catalog())
    assert any("modelAccessSecret" in w for w in warnings)


def test_config_drives_the_memory_estimate() -> None:
    preset = load_catalog().preset("phi-3-mini-4k-instruct")
    assert preset is not None
    config, errors = parse_tuning_config("c", training_config({
        "ModelConfig": {"torch_dtype": "float16"},
        "QuantizationConfig": {"load_in_4bit": True, "bnb_4bit_compute_dtype": "float16"},
        "TrainingArguments": {"per_device_train_batch_size": 8, "gradient_checkpointing": False},
        "LoraConfig": {"r": 32},
        "DatasetConfig": {"max_seq_length": 1024},
    }), "qlora")
    assert errors == [] and isinstance(config, TrainingConfig)
    shape = config_shape(config, "qlora", preset)
    assert (shape.batch_size, shape.seq_len, shape.lora_rank, shape.gradient_checkpointing) == (
        8, 1024, 32, False)
    assert not computes_in_bfloat16(config)


def test_valid_user_config_is_admitted() -> None:
    raw = _edit(SEED, tuning__config="cfg")
    data = training_config({
        "ModelConfig": {"torch_dtype": "bfloat16"},
        "QuantizationConfig": {"load_in_4bit": True, "bnb_4bit_quant_type": "nf4"},
        "TrainingArguments": {"output_dir": "/mnt/results", "per_device_train_batch_size": 2},
        "DataCollator": None,
    })
    assert run_webhook(raw, data) == []


@pytest.mark.parametrize(
    ("url", "problem"),
    [
        ("https://huggingface.co/datasets/x/resolve/main/a.parquet", None),
        ("http://example.com:8080/a.csv", None),
        ("https://8.8.8.8/a.csv", None),
        ("https://134744072/a.csv", None),  # 8.8.8.8
        ("file:///etc/passwd", "must be an http or https URL"),
        ("https://", "has no host"),
        ("http://LOCALHOST./x", ("host 'localhost.': address 127.0.0.1 is not a public address "
                                "(loopback)")),
        ("http://api.localhost/x", ("host 'api.localhost': address 127.0.0.1 is not a public "
                                   "address (loopback)")),
        ("http://[::1]/x", "host '::1': address ::1 is not a public address (loopback)"),
        ("http://2130706433/x", ("host '2130706433': address 127.0.0.1 is not a public address "
                                "(loopback)")),
        ("http://0x7f000001/x", ("host '0x7f000001': address 127.0.0.1 is not a public address "
                                "(loopback)")),
        ("http://0.0.0.0/x", ("host '0.0.0.0': address 0.0.0.0 is not a public address "
                             "(unspecified)")),
        ("http://0/x", "host '0': address 0.0.0.0 is not a public address (unspecified)"),
        ("http://[::ffff:169.254.169.254]/x",
         ("host '::ffff:169.254.169.254': address 169.254.169.254 (via ::ffff:a9fe:a9fe) is not "
         "a public address (link-local, where the cloud metadata service is)")),
        ("http://metadata.google.internal/x", ("host 'metadata.google.internal': address "
         "169.254.169.254 is not a public address (link-local, where the cloud metadata "
         "service is)")),
        ("http://192.168.1.1/x", ("host '192.168.1.1': address 192.168.1.1 is not a public "
                                 "address (private)")),
        ("http://172.16.0.1/x", ("host '172.16.0.1': address 172.16.0.1 is not a public "
                                "address (private)")),
        ("http://[fd00::1]/x", ("host 'fd00::1': address fd00::1 is not a public address "
                               "(private)")),
        ("http://198.18.0.1/x", ("host '198.18.0.1': address 198.18.0.1 is not a public "
                                "address (private)")),  # benchmarking
        ("http://224.0.0.1/x", ("host '224.0.0.1': address 224.0.0.1 is not a public address "
                               "(multicast)")),
        ("http://[64:ff9b::a00:1]/x", ("host '64:ff9b::a00:1': address 10.0.0.1 (via "
         "64:ff9b::a00:1) is not a public address (private)")),
        ("http://example.com:99999/x", "is not a valid URL"),
    ],
)
def test_url_problem(url: str, problem: str | None) -> None:
    assert url_problem(url) == problem


def test_the_allow_list_is_the_only_way_around_the_address_rule() -> None:
    allowed = parse_networks(["10.0.0.0/8, 127.0.0.1/32"])
    assert url_problem("http://10.1/d", allowed) is None
    assert url_problem("http://0x7f.1/d", allowed) is None
    assert url_problem("http://localhost/d", allowed) is None
    assert url_problem("http://[::ffff:10.0.0.1]/d", allowed) is None
    assert url_problem("http://127.0.0.2/d", allowed) is not None
    assert url_problem("http://192.168.0.1/d", allowed) is not None


def test_validate_does_not_mutate_its_input() -> None:
    raw = copy.deepcopy(SEED)
    ws = Workspace.model_validate(raw)
    before = ws.to_dict()
    default(ws, load_catalog())
    validate(ws, None, load_catalog())
    assert ws.to_dict() == before


def test_defaulting_leaves_the_reviewed_object_as_it_was() -> None:
    # default() copies only what it fills in: the parsed review object must not change.
    raw = _edit(INFERENCE, resource__instanceType=None, inference__preset={"name": "phi-4"},
                inference__adapters=[_adapter("a"), _adapter("b", "0.25")])
    ws = Workspace.model_validate(raw)
    before = ws.to_dict()
    defaulted = default(ws, load_catalog(), old=Workspace.model_validate(
        _edit(raw, resource__count=2)))
    assert ws.to_dict() == before
    assert defaulted.resource is not None and defaulted.resource.count == 2
    assert defaulted.inference is not None and defaulted.inference.adapters is not None
    assert [a.strength for a in defaulted.inference.adapters] == ["1.0", "0.25"]


def test_gradient_checkpointing_in_the_config_shrinks_the_estimate() -> None:
    raw = _edit(SEED, tuning__config="cfg", tuning__preset={"name": "phi-3-medium-128k-instruct"},
                resource__instanceType="Standard_NV36ads_A10_v5")
    heavy: dict[str, dict[str, Any]] = {"QuantizationConfig": {"load_in_4bit": True},
             "TrainingArguments": {"per_device_train_batch_size": 4},
             "DatasetConfig": {"max_seq_length": 2048}}
    errors = run_webhook(raw, training_config(heavy))
    assert any("Standard_NV36ads_A10_v5 has 24 GiB" in e for e in errors)
    heavy["TrainingArguments"]["gradient_checkpointing"] = True
    assert run_webhook(raw, training_config(heavy)) == []


def test_metadata_only_update_is_admitted_even_if_rules_now_fail() -> None:
    # The tuning ConfigMap was deleted after creation; the controller adds a finalizer.
    old = _defaulted(_edit(SEED, tuning__config="gone"))
    new = _edit(old, metadata={"name": SEED["metadata"]["name"], "finalizers": ["kaito.sh/x"]})
    assert run_webhook(new, None, old_raw=old) == []
    # A spec change is checked again, and fails on the missing ConfigMap.
    changed = _edit(new, tuning__input__urls=["https://example.com/b.parquet"])
    assert any("tuning.config: Not found" in e for e in run_webhook(changed, None, old_raw=old))


def test_ddp_find_unused_parameters_is_admitted_without_a_warning() -> None:
    # It reaches DistributedDataParallel when tuning runs in several processes.
    raw = _edit(SEED, tuning__config="cfg")
    data = training_config({"QuantizationConfig": {"load_in_4bit": True},
                            "TrainingArguments": {"ddp_find_unused_parameters": True}})
    assert run_webhook(raw, data) == []
    warnings = admission_warnings(Workspace.model_validate(raw), load_catalog(),
                                  tuning_config_data=data)
    assert not [w for w in warnings if "ddp_find_unused_parameters" in w], warnings


def test_fp16_on_a_gpu_without_bfloat16_is_honoured_without_a_warning() -> None:
    # runtime.precision honours bf16/fp16: asking for float16 on a V100 needs no warning,
    # asking for bfloat16 there gets float16 and says so.
    raw = _edit(SEED, tuning__config="cfg")
    fp16 = training_config({"QuantizationConfig": {"load_in_4bit": True},
                            "TrainingArguments": {"fp16": True}})
    ws = Workspace.model_validate(raw)
    assert admission_warnings(ws, load_catalog(), tuning_config_data=fp16) == []
    bf16 = training_config({"QuantizationConfig": {"load_in_4bit": True},
                            "TrainingArguments": {"bf16": True}})
    assert admission_warnings(ws, load_catalog(), tuning_config_data=bf16) == [
        "Standard_NC6s_v3 (V100) has no bfloat16: tuning runs in float16 instead"]
