"""training_config.yaml parsing: upstream's defaults, method rules, errors naming keys."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from runtime.tuning.config import ConfigError, load_training_config, parse_training_config

pytestmark = pytest.mark.unit

# Upstream's qlora-params-template, as shipped in its default ConfigMap.
UPSTREAM_QLORA = """
training_config:
  ModelConfig:
    torch_dtype: "bfloat16"
    local_files_only: true
    device_map: "auto"
  QuantizationConfig:
    load_in_4bit: true
    bnb_4bit_quant_type: "nf4"
    bnb_4bit_compute_dtype: "bfloat16"
    bnb_4bit_use_double_quant: true
  LoraConfig:
    r: 8
    lora_alpha: 8
    lora_dropout: 0.0
  TrainingArguments:
    output_dir: "/mnt/results"
    ddp_find_unused_parameters: false
    save_strategy: "no"
    per_device_train_batch_size: 1
  DataCollator:
    mlm: true
  DatasetConfig:
    shuffle_dataset: true
    train_test_split: 1
"""


def test_upstream_qlora_template_parses_with_its_values() -> None:
    config = parse_training_config(yaml.safe_load(UPSTREAM_QLORA), "qlora")
    assert config.quantization.load_in_4bit is True
    assert config.quantization.bnb_4bit_quant_type == "nf4"
    assert config.lora.r == 8 and config.lora.lora_alpha == 8
    assert config.training.output_dir == "/mnt/results"
    assert config.training.per_device_train_batch_size == 1
    assert config.dataset.train_test_split == 1
    assert config.model.device_map == "auto"


def test_empty_config_gets_upstream_defaults_per_method() -> None:
    lora = parse_training_config({"training_config": {}}, "lora")
    assert lora.quantization.is_quantized is False
    # "auto": bfloat16 where the device has it (upstream's template value), else the
    # device's fast dtype (runtime.precision).
    assert lora.model.torch_dtype == "auto" and lora.model.local_files_only is True
    assert (lora.lora.r, lora.lora.lora_alpha, lora.lora.lora_dropout) == (8, 8, 0.0)
    assert lora.training.num_train_epochs == 3 and lora.training.save_strategy == "no"
    assert lora.dataset.shuffle_dataset is True and lora.collator.mlm is False
    qlora = parse_training_config(None, "qlora")
    assert qlora.quantization.load_in_4bit is True
    assert qlora.quantization.bnb_4bit_use_double_quant is True
    assert qlora.quantization.bnb_4bit_compute_dtype == "auto"


def test_extra_keys_pass_through_for_the_hugging_face_classes() -> None:
    config = parse_training_config(
        {"training_config": {"LoraConfig": {"use_rslora": True},
                             "TrainingArguments": {"report_to": "none"}}},
        "lora",
    )
    assert config.lora.extra_keys() == {"use_rslora": True}
    assert config.training.extra_keys() == {"report_to": "none"}


@pytest.mark.parametrize(
    ("body", "method", "message"),
    [
        ({"Bogus": {}}, "lora", "unknown sections \\['Bogus'\\]"),
        ({"QuantizationConfig": {"load_in_4bit": True}}, "lora", "method lora forbids"),
        ({"QuantizationConfig": {"load_in_4bit": False}}, "qlora", "method qlora needs"),
        ({"QuantizationConfig": {"load_in_4bit": "yes"}}, "qlora", "must be a boolean"),
        (
            {"QuantizationConfig": {"load_in_4bit": True, "load_in_8bit": True}},
            "qlora",
            "both true",
        ),
        (
            {"TrainingArguments": {"per_device_train_batch_size": 0}},
            "lora",
            "TrainingArguments.per_device_train_batch_size",
        ),
        ({"LoraConfig": {"r": "eight"}}, "lora", "LoraConfig.r"),
    ],
)
def test_bad_configs_name_the_key(body: dict[str, object], method: str, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        parse_training_config({"training_config": body}, method)  # type: ignore[arg-type]


def test_file_errors_name_the_file(tmp_path: Path) -> None:
    path = tmp_path / "training_config.yaml"
    path.write_text("training_config: [unclosed")
    with pytest.raises(ConfigError, match="training_config.yaml: not valid YAML"):
        load_training_config(path, "lora")
    path.write_text("something_else: {}\n")
    with pytest.raises(ConfigError, match="training_config.yaml: .*training_config"):
        load_training_config(path, "lora")
    with pytest.raises(ConfigError, match="cannot read"):
        load_training_config(tmp_path / "missing.yaml", "lora")


def test_hyperparameters_summarise_the_adapter() -> None:
    config = parse_training_config(yaml.safe_load(UPSTREAM_QLORA), "qlora")
    summary = config.hyperparameters()
    assert summary["r"] == 8 and summary["load_in_4bit"] is True
    assert summary["per_device_train_batch_size"] == 1


def test_pinned_training_argument_keys_are_the_installed_transformers() -> None:
    import dataclasses

    from transformers import TrainingArguments

    from crds.tuning_config import TRAINING_ARGUMENT_KEYS

    installed = {field.name for field in dataclasses.fields(TrainingArguments)}
    assert installed == TRAINING_ARGUMENT_KEYS


def test_training_arguments_are_checked_when_the_file_is_loaded() -> None:
    body = {"QuantizationConfig": {"load_in_4bit": True},
            "TrainingArguments": {"max_seq_length": 512}}
    with pytest.raises(ConfigError, match=r"TrainingArguments: unknown keys \['max_seq_length'\] "
                                          r"\(max_seq_length belongs in DatasetConfig\)"):
        parse_training_config({"training_config": body}, "qlora")
    legacy = parse_training_config(
        {"training_config": {"TrainingArguments": {"warmup_ratio": 0.1}}}, "lora")
    assert legacy.training.warmup_ratio == 0.1


def test_a_qlora_file_must_say_how_to_quantize() -> None:
    # As upstream's webhook: only the method's own default config (no file) is quantized
    # without saying so.
    with pytest.raises(ConfigError, match="method qlora needs QuantizationConfig"):
        parse_training_config({"training_config": {"LoraConfig": {"r": 16}}}, "qlora")
    assert parse_training_config(None, "qlora").quantization.load_in_4bit is True


def test_ddp_find_unused_parameters_is_honoured_not_reported_as_ignored() -> None:
    """It reaches DistributedDataParallel (runtime/tuning/trainer.py) when tuning runs in
    several processes, so neither the webhook nor the pod says it is ignored."""
    config = parse_training_config(
        {"training_config": {"TrainingArguments": {"ddp_find_unused_parameters": True}}}, "lora")
    assert config.training.ddp_find_unused_parameters is True
    assert config.training.ignored_settings() == []


def test_the_pod_log_does_not_call_ddp_find_unused_parameters_ignored(
    caplog: pytest.LogCaptureFixture,
) -> None:
    from runtime.tuning.job import check_training_argument_keys

    config = parse_training_config(
        {"training_config": {"TrainingArguments": {"ddp_find_unused_parameters": True}}}, "lora")
    with caplog.at_level("WARNING", logger="runtime.tuning.job"):
        check_training_argument_keys(config)
    assert not [r for r in caplog.records if r.getMessage() == "training setting ignored"]
