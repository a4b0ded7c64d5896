"""The tuning ConfigMap at admission: the runtime's schema, its messages, its memory knobs.

Pure: the caller fetches the ConfigMap's data (or learns it is missing) and hands it in.
The rules are ``crds.tuning_config``'s, the very schema the tuning pod loads, so a config
is denied here exactly when the pod would refuse it, with the pod's message after the
field path. This module adds only what admission needs on top: the ConfigMap lookup, the
memory knobs for the GPU-fit estimate, and warnings for settings the pod will not honour.
"""

from __future__ import annotations

import functools

from crds.dtypes import requested_training_dtype
from crds.tuning_config import (
    CONFIG_KEY,
    ConfigError,
    Method,
    TrainingConfig,
    parse_training_config_text,
)
from presets.catalog import ModelPreset
from presets.memory import DEFAULT_TUNING_SEQ_LEN, TuningShape
from webhook.errors import FieldError

__all__ = ["CONFIG_KEY", "TrainingConfig", "computes_in_bfloat16", "config_shape",
           "config_warnings", "default_shape", "parse_tuning_config"]

_PATH = "tuning.config"


def parse_tuning_config(
    name: str, data: dict[str, str] | None, method: str | None
) -> tuple[TrainingConfig | None, list[FieldError]]:
    """The ConfigMap's config (data None: it does not exist) for ``method``, or the
    runtime's error as a field error. A method other than lora/qlora checks only the
    rules that do not depend on it (the method itself is denied elsewhere)."""
    if data is None:
        return None, [FieldError(_PATH, "Not found", f"ConfigMap {name!r} does not exist in the "
                                                     "workspace's namespace")]
    text = data.get(CONFIG_KEY)
    if text is None:
        return None, [FieldError(_PATH, "Invalid value", f"ConfigMap {name!r} has no key "
                                                         f"{CONFIG_KEY}")]
    known_method: Method | None = None
    if method == "lora":
        known_method = "lora"
    elif method == "qlora":
        known_method = "qlora"
    config, problem = _parsed(text, known_method)
    if problem is not None:
        return None, [FieldError(_PATH, "Invalid value",
                                 f"{CONFIG_KEY} of ConfigMap {name!r}: {problem}")]
    return config, []


@functools.lru_cache(maxsize=256)
def _parsed(text: str, method: Method | None) -> tuple[TrainingConfig | None, str | None]:
    """Parsing is most of an admission's cost and the same text (the operator's default
    template) comes with nearly every review: parse each text once. The config returned
    is shared between reviews, so it is read, never changed."""
    try:
        return parse_training_config_text(text, method), None
    except ConfigError as error:
        return None, str(error)


def default_seq_len(preset: ModelPreset) -> int:
    return min(preset.context_length, DEFAULT_TUNING_SEQ_LEN)


def default_shape(method: str, preset: ModelPreset) -> TuningShape:
    """The memory knobs of the method's default config (batch 1)."""
    return TuningShape(method=method, seq_len=default_seq_len(preset))


def config_shape(config: TrainingConfig, method: str, preset: ModelPreset) -> TuningShape:
    """The memory knobs of this config, as the runtime will run it (the sequence length
    is capped by the model's context, as the runtime caps it)."""
    return TuningShape(
        method=method,
        batch_size=config.training.per_device_train_batch_size,
        seq_len=min(config.dataset.max_seq_length, preset.context_length),
        lora_rank=config.lora.r,
        gradient_checkpointing=config.training.gradient_checkpointing,
    )


def computes_in_bfloat16(config: TrainingConfig | None) -> bool:
    """Whether the config asks for bfloat16 where the device has it: explicitly, or by
    leaving the dtype ``auto`` (the default config does)."""
    if config is None:
        return True
    requested = requested_training_dtype(config.model.torch_dtype, config.training.bf16,
                                         config.training.fp16)
    compute = config.quantization.bnb_4bit_compute_dtype
    return requested in ("auto", "bfloat16") or (
        config.quantization.is_quantized and compute in ("bf16", "bfloat16"))


def config_warnings(config: TrainingConfig) -> list[str]:
    """What the tuning pod will accept but not act on (it logs the same)."""
    return [f"{_PATH}: {message}" for message in config.training.ignored_settings()]
