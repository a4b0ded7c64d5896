"""The table of invalid workspaces (one per rule) and the pure validator run over it.

The envtest tier (tests/envtest/test_webhook.py) applies the same table through the real
kube-apiserver with `kubectl apply --dry-run=server`.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import yaml

from crds.workspace import Workspace
from presets.catalog import load_catalog
from webhook.defaulting import default
from webhook.errors import join
from webhook.tuning_config import CONFIG_KEY, TrainingConfig, parse_tuning_config
from webhook.validation import validate

pytestmark = pytest.mark.unit

REPO = Path(__file__).resolve().parents[2]
SEED: dict[str, Any] = yaml.safe_load(
    (REPO / "examples/fine-tuning/kaito_workspace_tuning_phi_3.yaml").read_text()
)
CONFIG_NAME = "my-tuning-config"

INFERENCE: dict[str, Any] = {
    "apiVersion": "kaito.sh/v1beta1",
    "kind": "Workspace",
    "metadata": {"name": "workspace-phi-3-mini"},
    "resource": {
        "instanceType": "Standard_NC24ads_A100_v4",
        "labelSelector": {"matchLabels": {"apps": "phi-3"}},
    },
    "inference": {"preset": {"name": "phi-3-mini-4k-instruct"}},
}


def training_config(sections: dict[str, Any]) -> dict[str, str]:
    """ConfigMap data holding these training_config sections."""
    return {CONFIG_KEY: yaml.safe_dump({"training_config": sections})}


QLORA_OK = {"QuantizationConfig": {"load_in_4bit": True}}


@dataclass
class Case:
    """An invalid workspace, the text its denial must contain, and the ConfigMap it needs."""

    id: str
    workspace: dict[str, Any]
    message: str
    configmap: dict[str, str] | None = None
    extra: dict[str, Any] = field(default_factory=dict)


def _edit(base: dict[str, Any], **changes: Any) -> dict[str, Any]:
    """A deep copy of base with dotted paths set (value None deletes the key)."""
    doc = copy.deepcopy(base)
    for dotted, value in changes.items():
        keys = dotted.split("__")
        node = doc
        for key in keys[:-1]:
            node = node.setdefault(key, {})
        if value is None:
            node.pop(keys[-1], None)
        else:
            node[keys[-1]] = value
    return doc


def _tuning(**changes: Any) -> dict[str, Any]:
    return _edit(SEED, **changes)


def _inference(**changes: Any) -> dict[str, Any]:
    return _edit(INFERENCE, **changes)


def _adapter(name: str, strength: str | None = None) -> dict[str, Any]:
    adapter: dict[str, Any] = {"source": {"name": name, "image": f"r.io/{name}:1"}}
    if strength is not None:
        adapter["strength"] = strength
    return adapter


INVALID_CASES: list[Case] = [
    Case("name-not-dns-label", _tuning(metadata={"name": "workspace.tuning"}),
         'metadata.name: Invalid value: "workspace.tuning"'),
    Case("neither-inference-nor-tuning", _tuning(tuning=None),
         "inference: Required value: exactly one of inference or tuning must be set"),
    Case("both-inference-and-tuning",
         _tuning(inference={"preset": {"name": "phi-3-mini-4k-instruct"}}),
         "exactly one of inference or tuning must be set"),
    Case("selector-only-reserved-keys",
         _inference(resource__labelSelector={"matchLabels": {"kaito.sh/workspace": "x"}}),
         "resource.labelSelector: Invalid value"),
    Case("selector-empty", _inference(resource__labelSelector={}),
         "resource.labelSelector: Required value"),
    Case("unknown-instance-type", _inference(resource__instanceType="Standard_D2s_v3"),
         'resource.instanceType: Unsupported value: "Standard_D2s_v3"'),
    Case("inference-neither-preset-nor-template", _inference(inference={"config": "x"}),
         "inference: Required value: exactly one of preset or template must be set"),
    Case("inference-preset-and-template",
         _inference(inference__template={"spec": {"containers": []}}),
         "inference: Invalid value: exactly one of preset or template must be set"),
    Case("inference-unknown-preset", _inference(inference__preset={"name": "gpt-5"}),
         'inference.preset.name: Unsupported value: "gpt-5"'),
    Case("inference-gpu-memory-too-small",
         _inference(resource__instanceType="Standard_NC6s_v3", resource__count=1,
                    inference__preset={"name": "phi-4"}),
         "resource.instanceType: Invalid value: Insufficient total GPU memory: preset phi-4 "
         "needs 30 GiB of GPU memory; one Standard_NC6s_v3 node has 16 GiB and this operator "
         "serves a model on one node only: use Standard_NC12s_v3 (32 GiB) or larger"),
    Case("inference-fits-only-across-nodes",
         _inference(resource__instanceType="Standard_NC6s_v3", resource__count=2,
                    inference__preset={"name": "phi-4"}),
         "one Standard_NC6s_v3 node has 16 GiB and this operator serves a model on one "
         "node only: use Standard_NC12s_v3 (32 GiB) or larger"),
    Case("too-many-adapters",
         _inference(inference__adapters=[_adapter(f"a{i}") for i in range(11)]),
         "inference.adapters: Too many: 11: must have at most 10 items"),
    Case("duplicate-adapter-names",
         _inference(inference__adapters=[_adapter("same"), _adapter("same")]),
         'inference.adapters[1].source.name: Duplicate value: "same"'),
    Case("adapter-strength-out-of-range",
         _inference(inference__adapters=[_adapter("a", "1.5")]),
         'inference.adapters[0].strength: Invalid value: "1.5"'),
    Case("adapter-without-source", _inference(inference__adapters=[{"strength": "0.5"}]),
         "inference.adapters[0].source.name: Required value"),
    Case("adapter-with-template",
         _inference(inference={"template": {"spec": {"containers": []}},
                               "adapters": [_adapter("a")]}),
         "inference.adapters: Forbidden: adapters need inference.preset"),
    Case("tuning-method-unknown", _tuning(tuning__method="full"),
         'tuning.method: Unsupported value: "full"'),
    Case("tuning-method-missing", _tuning(tuning__method=None),
         "tuning.method: Unsupported value"),
    Case("tuning-preset-missing", _tuning(tuning__preset=None),
         "tuning.preset: Required value"),
    Case("tuning-preset-unknown", _tuning(tuning__preset={"name": "gpt-5"}),
         'tuning.preset.name: Unsupported value: "gpt-5"'),
    Case("tuning-preset-without-tuning-support",
         _tuning(tuning__preset={"name": "llama-3.1-8b-instruct"},
                 resource__instanceType="Standard_NC24ads_A100_v4"),
         "tuning.preset.name: Invalid value: \"llama-3.1-8b-instruct\": preset does not support"),
    Case("tuning-count-above-one", _tuning(resource__count=2),
         "resource.count: Invalid value: 2: tuning runs on one node"),
    Case("tuning-input-missing", _tuning(tuning__input=None), "tuning.input: Required value"),
    Case("tuning-input-urls-and-image",
         _tuning(tuning__input__image="r.io/data:1"),
         "tuning.input: Invalid value: [\"urls\", \"image\"]: exactly one of urls, image or "
         "volumeSource"),
    Case("tuning-input-empty", _tuning(tuning__input={"name": "d"}),
         "tuning.input: Invalid value: exactly one of urls, image or volumeSource"),
    Case("tuning-url-not-http", _tuning(tuning__input__urls=["ftp://example.com/d.parquet"]),
         'tuning.input.urls[0]: Invalid value: "ftp://example.com/d.parquet": must be an http or '
         "https URL"),
    Case("tuning-url-localhost",
         _tuning(tuning__input__urls=["https://example.com/a.csv", "http://localhost:8080/d"]),
         "tuning.input.urls[1]: Invalid value: \"http://localhost:8080/d\": host 'localhost': "
         "address 127.0.0.1 is not a public address (loopback)"),
    Case("tuning-url-loopback-ip", _tuning(tuning__input__urls=["http://127.0.0.1/d.parquet"]),
         "address 127.0.0.1 is not a public address (loopback)"),
    Case("tuning-url-cloud-metadata",
         _tuning(tuning__input__urls=["http://169.254.169.254/metadata/instance"]),
         "tuning.input.urls[0]: Invalid value: \"http://169.254.169.254/metadata/instance\": "
         "host '169.254.169.254': address 169.254.169.254 is not a public address (link-local"),
    Case("tuning-url-private", _tuning(tuning__input__urls=["https://10.1.2.3/d.parquet"]),
         "address 10.1.2.3 is not a public address (private); an operator can allow a network "
         "with KAITO_WEBHOOK_FETCH_ALLOW_CIDRS"),
    # Spellings the C resolver reads as non-public addresses (admitted before).
    Case("tuning-url-short-loopback", _tuning(tuning__input__urls=["http://127.1/d.parquet"]),
         "tuning.input.urls[0]: Invalid value: \"http://127.1/d.parquet\": host '127.1': "
         "address 127.0.0.1 is not a public address (loopback)"),
    Case("tuning-url-octal-loopback", _tuning(tuning__input__urls=["http://0177.0.0.1/d"]),
         "host '0177.0.0.1': address 127.0.0.1 is not a public address (loopback)"),
    Case("tuning-url-short-private", _tuning(tuning__input__urls=["http://10.1/d"]),
         "host '10.1': address 10.0.0.1 is not a public address (private)"),
    Case("tuning-url-cgnat", _tuning(tuning__input__urls=["http://100.64.0.1/d"]),
         "address 100.64.0.1 is not a public address (shared address space (CGNAT))"),
    Case("tuning-output-missing", _tuning(tuning__output=None), "tuning.output: Required value"),
    Case("tuning-output-image-and-volume",
         _tuning(tuning__output__volumeSource={"emptyDir": {}}),
         "tuning.output: Invalid value: exactly one of image or volumeSource"),
    Case("tuning-output-image-without-push-secret",
         _tuning(tuning__output__imagePushSecret=None),
         "tuning.output.imagePushSecret: Required value"),
    Case("tuning-config-missing", _tuning(tuning__config="no-such-config"),
         "tuning.config: Not found: ConfigMap 'no-such-config' does not exist"),
    Case("tuning-config-unknown-section", _tuning(tuning__config=CONFIG_NAME),
         "tuning.config: Invalid value: training_config.yaml of ConfigMap 'my-tuning-config': "
         "unknown sections ['Evil']; allowed: ['ModelConfig', 'QuantizationConfig',",
         configmap=training_config({**QLORA_OK, "Evil": {"x": 1}})),
    Case("tuning-config-load-in-4bit-not-bool", _tuning(tuning__config=CONFIG_NAME),
         "QuantizationConfig.load_in_4bit must be a boolean",
         configmap=training_config({"QuantizationConfig": {"load_in_4bit": "yes"}})),
    Case("tuning-config-both-4bit-and-8bit", _tuning(tuning__config=CONFIG_NAME),
         "QuantizationConfig: load_in_4bit and load_in_8bit are both true",
         configmap=training_config({"QuantizationConfig": {"load_in_4bit": True,
                                                           "load_in_8bit": True}})),
    Case("tuning-config-lora-quantized",
         _tuning(tuning__config=CONFIG_NAME, tuning__method="lora",
                 resource__instanceType="Standard_NC24ads_A100_v4"),
         "method lora forbids QuantizationConfig.load_in_4bit/load_in_8bit (use method qlora)",
         configmap=training_config({"QuantizationConfig": {"load_in_4bit": True}})),
    Case("tuning-config-qlora-unquantized", _tuning(tuning__config=CONFIG_NAME),
         "method qlora needs QuantizationConfig.load_in_4bit or load_in_8bit set to true",
         configmap=training_config({"LoraConfig": {"r": 16}})),
    Case("tuning-config-qlora-4bit-false", _tuning(tuning__config=CONFIG_NAME),
         "method qlora needs QuantizationConfig.load_in_4bit or load_in_8bit set to true",
         configmap=training_config({"QuantizationConfig": {"load_in_4bit": False}})),
    # The runtime refuses this key (SFTConfig has it, TrainingArguments does not); the
    # webhook once read it for its memory estimate.
    Case("tuning-config-max-seq-length-in-training-arguments",
         _tuning(tuning__config=CONFIG_NAME),
         "TrainingArguments: unknown keys ['max_seq_length'] (max_seq_length belongs in "
         "DatasetConfig)",
         configmap=training_config({**QLORA_OK,
                                    "TrainingArguments": {"max_seq_length": 512}})),
    Case("tuning-config-unknown-training-argument", _tuning(tuning__config=CONFIG_NAME),
         "TrainingArguments: unknown keys ['learning_rat']",
         configmap=training_config({**QLORA_OK, "TrainingArguments": {"learning_rat": 1e-4}})),
    Case("tuning-config-bf16-and-fp16", _tuning(tuning__config=CONFIG_NAME),
         "TrainingArguments: bf16 and fp16 are both true; choose one",
         configmap=training_config({**QLORA_OK,
                                    "TrainingArguments": {"bf16": True, "fp16": True}})),
    Case("tuning-config-unknown-dtype", _tuning(tuning__config=CONFIG_NAME),
         "ModelConfig.torch_dtype: unsupported dtype 'float8'",
         configmap=training_config({**QLORA_OK, "ModelConfig": {"torch_dtype": "float8"}})),
    Case("tuning-config-short-max-seq-length", _tuning(tuning__config=CONFIG_NAME),
         "DatasetConfig.max_seq_length: Input should be greater than 8",
         configmap=training_config({**QLORA_OK, "DatasetConfig": {"max_seq_length": 4}})),
    Case("tuning-config-output-dir-escapes-mnt", _tuning(tuning__config=CONFIG_NAME),
         "TrainingArguments.output_dir '/mnt/../etc' must stay under /mnt",
         configmap=training_config({**QLORA_OK, "TrainingArguments": {"output_dir": "/mnt/../etc"}})),
    Case("tuning-config-not-yaml", _tuning(tuning__config=CONFIG_NAME),
         "training_config.yaml of ConfigMap 'my-tuning-config': not valid YAML at line 1",
         configmap={CONFIG_KEY: "training_config: [unclosed"}),
    Case("tuning-memory-estimate-too-big",
         _tuning(tuning__config=CONFIG_NAME, tuning__preset={"name": "phi-3-medium-128k-instruct"}),
         "qlora of phi-3-medium-128k-instruct at batch 4, seq 2048 needs about 92.3 GiB per GPU; "
         "Standard_NC6s_v3 has 16 GiB; the smallest instance type that fits is "
         "Standard_NC40ads_H100_v5 (1x H100 94 GiB)",
         configmap=training_config({**QLORA_OK,
                                    "TrainingArguments": {"per_device_train_batch_size": 4},
                                    "DatasetConfig": {"max_seq_length": 2048}})),
]


def run_webhook(raw: dict[str, Any], configmap: dict[str, str] | None,
                old_raw: dict[str, Any] | None = None) -> list[str]:
    """What the two webhooks do, without a server: default, then validate."""
    catalog = load_catalog()
    ws = Workspace.model_validate(raw)
    old = Workspace.model_validate(old_raw) if old_raw is not None else None
    config: TrainingConfig | None = None
    if ws.tuning is not None and ws.tuning.config:
        config, _ = parse_tuning_config(ws.tuning.config, configmap, ws.tuning.method)
    defaulted = default(ws, catalog, old=old, tuning_config=config)
    return [str(e) for e in validate(defaulted, old, catalog, tuning_config_data=configmap)]


def test_table_has_at_least_30_distinct_rules() -> None:
    assert len(INVALID_CASES) >= 30
    assert len({case.id for case in INVALID_CASES}) == len(INVALID_CASES)


@pytest.mark.parametrize("case", INVALID_CASES, ids=lambda c: c.id)
def test_invalid_workspace_is_denied_with_its_message(case: Case) -> None:
    errors = run_webhook(case.workspace, case.configmap)
    assert errors, "expected a denial"
    assert case.message in "; ".join(errors)


def test_seed_is_admitted() -> None:
    assert run_webhook(SEED, None) == []


def test_join_names_every_field() -> None:
    ws = Workspace.model_validate(_tuning(tuning__input=None, tuning__output=None))
    message = join(validate(ws, None, load_catalog()))
    assert "tuning.input: Required value" in message
    assert "tuning.output: Required value" in message
