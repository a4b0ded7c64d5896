"""The tuning ConfigMap (`training_config.yaml`): parsed, checked, and read for memory knobs.

Pure: the caller fetches the ConfigMap's data (or learns it is missing) and hands it in.
The file has one top-level key, `training_config`, whose sections map onto Hugging Face
classes; only the six sections upstream allows may appear.
"""

from __future__ import annotations

import posixpath
from dataclasses import dataclass, field
from typing import Any

import yaml

from presets.catalog import ModelPreset
from presets.memory import DEFAULT_LORA_RANK, DEFAULT_TUNING_SEQ_LEN, TuningShape
from webhook.errors import FieldError

CONFIG_KEY = "training_config.yaml"
ALLOWED_SECTIONS = (
    "ModelConfig", "QuantizationConfig", "LoraConfig", "TrainingArguments", "DatasetConfig",
    "DataCollator",
)
_PATH = "tuning.config"


@dataclass(frozen=True)
class TuningConfig:
    """The sections of a valid training config."""

    sections: dict[str, dict[str, Any]] = field(default_factory=dict)

    def _get(self, section: str, key: str) -> Any:
        return self.sections.get(section, {}).get(key)

    def shape(self, method: str, preset: ModelPreset) -> TuningShape:
        """The memory knobs of this config (method defaults where it says nothing)."""
        batch = self._get("TrainingArguments", "per_device_train_batch_size")
        seq = (
            self._get("DatasetConfig", "max_seq_length")
            or self._get("TrainingArguments", "max_seq_length")
            or self._get("TrainingArguments", "max_length")
        )
        rank = self._get("LoraConfig", "r")
        checkpointing = self._get("TrainingArguments", "gradient_checkpointing")
        return TuningShape(
            method=method,
            batch_size=batch if _is_positive_int(batch) else 1,
            seq_len=seq if _is_positive_int(seq) else default_seq_len(preset),
            lora_rank=rank if _is_positive_int(rank) else DEFAULT_LORA_RANK,
            gradient_checkpointing=checkpointing is True,
        )

    def uses_bfloat16(self) -> bool:
        """Whether the config asks for bfloat16 anywhere the GPU would have to compute it."""
        dtypes = (
            self._get("ModelConfig", "torch_dtype"),
            self._get("ModelConfig", "dtype"),
            self._get("QuantizationConfig", "bnb_4bit_compute_dtype"),
        )
        return any(d in ("bfloat16", "bf16") for d in dtypes) or self._get(
            "TrainingArguments", "bf16"
        ) is True


def default_seq_len(preset: ModelPreset) -> int:
    return min(preset.context_length, DEFAULT_TUNING_SEQ_LEN)


def default_shape(method: str, preset: ModelPreset) -> TuningShape:
    """The memory knobs of the method's default config (batch 1)."""
    return TuningShape(method=method, seq_len=default_seq_len(preset))


def _is_positive_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value > 0


def parse_tuning_config(
    name: str, data: dict[str, str] | None
) -> tuple[TuningConfig | None, list[FieldError]]:
    """Parses the ConfigMap's data (None: it does not exist) into a config or errors."""
    if data is None:
        return None, [FieldError(_PATH, "Not found", f"ConfigMap {name!r} does not exist in the "
                                                     "workspace's namespace")]
    text = data.get(CONFIG_KEY)
    if text is None:
        return None, [FieldError(_PATH, "Invalid value", f"ConfigMap {name!r} has no key "
                                                         f"{CONFIG_KEY}")]
    try:
        document = yaml.safe_load(text)
    except yaml.YAMLError as error:
        mark = getattr(error, "problem_mark", None)
        where = f" at line {mark.line + 1}" if mark is not None else ""
        return None, [FieldError(_PATH, "Invalid value", f"{CONFIG_KEY} is not valid YAML{where}")]
    if not isinstance(document, dict) or not isinstance(document.get("training_config"), dict):
        return None, [FieldError(_PATH, "Invalid value", f"{CONFIG_KEY} must hold a mapping "
                                                         "under the key training_config")]
    errors: list[FieldError] = []
    sections: dict[str, dict[str, Any]] = {}
    for section, body in document["training_config"].items():
        if section not in ALLOWED_SECTIONS:
            errors.append(FieldError(
                _PATH, "Invalid value",
                f"unknown section {section!r} in {CONFIG_KEY} (allowed: "
                f"{', '.join(ALLOWED_SECTIONS)})",
            ))
        elif body is None:
            sections[str(section)] = {}
        elif not isinstance(body, dict):
            errors.append(FieldError(_PATH, "Invalid value", f"section {section} must be a mapping"))
        else:
            sections[str(section)] = body
    return (None if errors else TuningConfig(sections)), errors


def check_tuning_config(config: TuningConfig, method: str) -> list[FieldError]:
    """Rules on a parsed config for this tuning method."""
    errors: list[FieldError] = []
    quant = config.sections.get("QuantizationConfig", {})
    flags: dict[str, bool] = {}
    for key in ("load_in_4bit", "load_in_8bit"):
        if key not in quant:
            continue
        if not isinstance(quant[key], bool):
            errors.append(FieldError(
                _PATH, "Invalid value",
                f"QuantizationConfig.{key} must be a boolean, not {quant[key]!r}",
            ))
        else:
            flags[key] = quant[key]
    if flags.get("load_in_4bit") and flags.get("load_in_8bit"):
        errors.append(FieldError(_PATH, "Invalid value",
                                 "QuantizationConfig.load_in_4bit and load_in_8bit cannot both "
                                 "be true"))
    elif method == "lora" and any(flags.values()):
        errors.append(FieldError(_PATH, "Invalid value",
                                 "lora tunes 16-bit weights: QuantizationConfig.load_in_4bit and "
                                 "load_in_8bit must be false (use method qlora)"))
    elif method == "qlora" and not errors and not any(flags.values()):
        errors.append(FieldError(_PATH, "Invalid value",
                                 "qlora needs QuantizationConfig.load_in_4bit or load_in_8bit "
                                 "set to true"))
    training = config.sections.get("TrainingArguments", {})
    output_dir = training.get("output_dir")
    if output_dir is not None:
        normalized = posixpath.normpath(posixpath.join("/mnt", str(output_dir)))
        if not isinstance(output_dir, str) or not (
            normalized == "/mnt" or normalized.startswith("/mnt/")
        ):
            errors.append(FieldError(_PATH, "Invalid value",
                                     f"TrainingArguments.output_dir {output_dir!r} must stay "
                                     "under /mnt"))
    batch = training.get("per_device_train_batch_size")
    if batch is not None and not _is_positive_int(batch):
        errors.append(FieldError(_PATH, "Invalid value",
                                 "TrainingArguments.per_device_train_batch_size must be a "
                                 f"positive integer, not {batch!r}"))
    return errors
