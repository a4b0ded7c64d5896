"""The tuning job's ``training_config.yaml`` schema, as the runtime imports it.

The schema lives in ``crds.tuning_config`` so that the admission webhook denies exactly
what this runtime would refuse, with the same message; this module keeps the runtime's
imports where they were.
"""

from __future__ import annotations

from crds.tuning_config import (
    CONFIG_KEY,
    SECTIONS,
    TRAINING_ARGUMENT_KEYS,
    ConfigError,
    DataCollatorSection,
    DatasetSection,
    LoraSection,
    Method,
    ModelSection,
    QuantizationSection,
    TrainingConfig,
    TrainingSection,
    load_training_config,
    parse_training_config,
    parse_training_config_text,
)

__all__ = [
    "CONFIG_KEY",
    "SECTIONS",
    "TRAINING_ARGUMENT_KEYS",
    "ConfigError",
    "DataCollatorSection",
    "DatasetSection",
    "LoraSection",
    "Method",
    "ModelSection",
    "QuantizationSection",
    "TrainingConfig",
    "TrainingSection",
    "load_training_config",
    "parse_training_config",
    "parse_training_config_text",
]
