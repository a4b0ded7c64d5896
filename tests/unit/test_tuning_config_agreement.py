"""The webhook and the tuning pod read training_config.yaml with one schema.

Generated configs (valid and broken, lora and qlora) go through both: the runtime's
``load_training_config`` (what the pod runs first) and the webhook's ``validate`` of a
Workspace naming that ConfigMap. Whatever the webhook admits, the runtime loads; whatever
the runtime refuses, the webhook denies, on ``tuning.config``, with the runtime's message.
"""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Any

import pytest
import yaml
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from crds.workspace import Workspace
from presets.catalog import load_catalog
from runtime.tuning.config import CONFIG_KEY, ConfigError, load_training_config
from tests.unit.test_webhook_cases import SEED, _edit
from webhook.validation import validate

pytestmark = pytest.mark.unit

_VALUES = st.one_of(st.booleans(), st.integers(-2, 4096), st.sampled_from(
    ["auto", "bf16", "float16", "float8", "nf4", "/mnt/out", "/etc", "../x", "linear", ""]),
    st.none(), st.floats(-1, 2, allow_nan=False))
_KEYS = {
    "ModelConfig": ["torch_dtype", "local_files_only", "device_map", "trust_remote_code",
                    "attn_implementation"],
    "QuantizationConfig": ["load_in_4bit", "load_in_8bit", "bnb_4bit_quant_type",
                           "bnb_4bit_compute_dtype", "bnb_4bit_use_double_quant"],
    "LoraConfig": ["r", "lora_alpha", "lora_dropout", "bias", "use_rslora"],
    "TrainingArguments": ["output_dir", "per_device_train_batch_size", "num_train_epochs",
                          "learning_rate", "bf16", "fp16", "ddp_find_unused_parameters",
                          "max_seq_length", "warmup_ratio", "report_to", "not_a_key",
                          "gradient_checkpointing", "save_strategy"],
    "DatasetConfig": ["max_seq_length", "packing", "train_test_split", "shuffle_dataset"],
    "DataCollator": ["mlm", "pad_to_multiple_of"],
    "Bogus": ["x"],
}


@st.composite
def _section(draw: st.DrawFn, name: str) -> dict[str, Any] | None:
    if draw(st.integers(0, 9)) == 0:
        return None
    keys = draw(st.lists(st.sampled_from(_KEYS[name]), max_size=4, unique=True))
    return {key: draw(_VALUES) for key in keys}


@st.composite
def _config_text(draw: st.DrawFn) -> str:
    shape = draw(st.integers(0, 19))
    if shape == 0:
        return "training_config: [unclosed"
    if shape == 1:
        return yaml.safe_dump({"something_else": {}})
    if shape == 2:
        return yaml.safe_dump({"training_config": ["a", "list"]})
    names = draw(st.lists(st.sampled_from(sorted(_KEYS)), max_size=5, unique=True))
    weights = [name for name in names if name != "Bogus" or draw(st.integers(0, 4)) == 0]
    body = {name: draw(_section(name)) for name in weights}
    if draw(st.booleans()):  # often a quantization section that fits one of the methods
        body["QuantizationConfig"] = {"load_in_4bit": draw(st.booleans())}
    return yaml.safe_dump({"training_config": body})


def _runtime_error(text: str, method: str) -> str | None:
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / CONFIG_KEY
        path.write_text(text)
        try:
            load_training_config(path, method)  # type: ignore[arg-type]
        except ConfigError as error:
            return str(error).removeprefix(f"{path}: ")
    return None


def _webhook_errors(text: str, method: str) -> list[str]:
    raw = _edit(SEED, tuning__config="cfg", tuning__method=method,
                resource__instanceType="Standard_NC96ads_A100_v4")
    errors = validate(Workspace.model_validate(raw), None, load_catalog(),
                      tuning_config_data={CONFIG_KEY: text})
    return [str(error) for error in errors if error.path == "tuning.config"]


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(_config_text(), st.sampled_from(["lora", "qlora"]))
@example("training_config:\n  LoraConfig: {r: 16}\n", "qlora")
@example("training_config:\n  TrainingArguments: {max_seq_length: 512}\n", "lora")
@example("training_config:\n  QuantizationConfig: {load_in_4bit: true}\n", "lora")
def test_the_webhook_denies_what_the_runtime_refuses_with_its_message(
    text: str, method: str
) -> None:
    refused = _runtime_error(text, method)
    denied = _webhook_errors(text, method)
    if refused is None:
        assert denied == []
    else:
        assert len(denied) == 1
        assert denied[0].startswith("tuning.config: Invalid value: ")
        assert denied[0].endswith(f"{CONFIG_KEY} of ConfigMap 'cfg': {refused}")
