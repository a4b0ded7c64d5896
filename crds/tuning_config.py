"""The tuning job's configuration: upstream Kaito's ``training_config.yaml``, one schema.

The file (the ``training_config.yaml`` key of the Workspace's ConfigMap) holds one
top-level key, ``training_config``, with the sections ModelConfig, QuantizationConfig,
LoraConfig, TrainingArguments, DatasetConfig and DataCollator. Upstream hands each
section's keys to the matching Hugging Face class, so any key those classes accept is
allowed here too (``extra="allow"``); the keys the runtime acts on are typed fields with
upstream's defaults (lora-params-template / qlora-params-template).

It lives in crds because two components read it: the admission webhook denies a config
the tuning pod would refuse, with the same message, and the pod (``runtime.tuning``)
loads it. Pure: no torch, no transformers (the TrainingArguments key list is pinned
here and a test compares it with the installed transformers).
"""

from __future__ import annotations

import functools
import math
import posixpath
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from crds.dtypes import PrecisionError, normalise_dtype, requested_training_dtype

Method = Literal["lora", "qlora"]
SECTIONS = (
    "ModelConfig",
    "QuantizationConfig",
    "LoraConfig",
    "TrainingArguments",
    "DatasetConfig",
    "DataCollator",
)


CONFIG_KEY = "training_config.yaml"
OUTPUT_ROOT = "/mnt"
# The fields of transformers' TrainingArguments (5.24); any other key in the section is
# a mistake (max_seq_length, for one, belongs in DatasetConfig). Kept equal to the
# installed transformers by tests/unit/test_tuning_config.py.
TRAINING_ARGUMENT_KEYS = frozenset({
    "accelerator_config", "activation_checkpointing", "activation_checkpointing_kwargs",
    "adam_beta1", "adam_beta2", "adam_epsilon", "auto_find_batch_size",
    "average_tokens_across_devices", "batch_eval_metrics", "bf16", "bf16_full_eval",
    "data_seed", "dataloader_drop_last", "dataloader_in_order",
    "dataloader_multiprocessing_context", "dataloader_num_workers",
    "dataloader_persistent_workers", "dataloader_pin_memory", "dataloader_prefetch_factor",
    "ddp_backend", "ddp_broadcast_buffers", "ddp_bucket_cap_mb", "ddp_find_unused_parameters",
    "ddp_static_graph", "ddp_timeout", "debug", "deepspeed", "disable_tqdm", "do_eval",
    "do_predict", "do_train", "enable_jit_checkpoint", "eval_accumulation_steps",
    "eval_delay", "eval_do_concat_batches", "eval_on_start", "eval_steps", "eval_strategy",
    "eval_use_gather_object", "fp16", "fp16_full_eval", "fsdp", "fsdp_config",
    "full_determinism", "gradient_accumulation_steps", "gradient_checkpointing",
    "gradient_checkpointing_kwargs", "greater_is_better", "hub_always_push", "hub_model_id",
    "hub_private_repo", "hub_revision", "hub_strategy", "hub_token", "ignore_data_skip",
    "include_for_metrics", "include_num_input_tokens_seen", "label_names",
    "label_smoothing_factor", "learning_rate", "length_column_name", "liger_kernel_config",
    "load_best_model_at_end", "local_rank", "log_level", "log_level_replica",
    "log_on_each_node", "logging_first_step", "logging_nan_inf_filter", "logging_steps",
    "logging_strategy", "lr_scheduler_kwargs", "lr_scheduler_type", "max_grad_norm",
    "max_steps", "metric_for_best_model", "neftune_noise_alpha", "num_train_epochs", "optim",
    "optim_args", "optim_target_modules", "output_dir", "parallelism_config",
    "per_device_eval_batch_size", "per_device_train_batch_size", "prediction_loss_only",
    "project", "push_to_hub", "remove_unused_columns", "report_to",
    "restore_callback_states_from_checkpoint", "resume_from_checkpoint", "run_name",
    "save_on_each_node", "save_only_model", "save_steps", "save_strategy",
    "save_total_limit", "seed", "skip_memory_metrics", "tf32", "torch_compile",
    "torch_compile_backend", "torch_compile_mode", "torch_empty_cache_steps",
    "trackio_bucket_id", "trackio_space_id", "trackio_static_space_id",
    "train_sampling_strategy", "use_cache", "use_cpu", "use_liger_kernel", "warmup_steps",
    "weight_decay",
})
# Keys older transformers had, which upstream's templates and docs still use.
_LEGACY_TRAINING_KEYS = frozenset({"warmup_ratio"})


class ConfigError(Exception):
    """The training configuration is unusable; the message names the key."""


class _Section(BaseModel):
    model_config = ConfigDict(extra="allow", populate_by_name=True)

    def extra_keys(self) -> dict[str, Any]:
        """Keys the user set that are not typed fields here (passed through or ignored)."""
        return dict(self.model_extra or {})


class ModelSection(_Section):
    """Keyword arguments for ``AutoModelForCausalLM.from_pretrained``."""

    pretrained_model_name_or_path: str | None = None
    torch_dtype: str = "auto"  # runtime.precision: what the device computes fast
    local_files_only: bool = True
    device_map: str | dict[str, Any] | None = "auto"
    trust_remote_code: bool = False


class QuantizationSection(_Section):
    """Keyword arguments for ``BitsAndBytesConfig``."""

    load_in_4bit: bool = False
    load_in_8bit: bool = False
    bnb_4bit_quant_type: str = "nf4"
    bnb_4bit_compute_dtype: str = "auto"  # auto: the model's compute dtype
    bnb_4bit_use_double_quant: bool = True

    @property
    def is_quantized(self) -> bool:
        return self.load_in_4bit or self.load_in_8bit


class LoraSection(_Section):
    """Keyword arguments for ``peft.LoraConfig`` (task type is always causal LM)."""

    r: int = Field(default=8, gt=0)
    lora_alpha: int = Field(default=8, gt=0)
    lora_dropout: float = Field(default=0.0, ge=0.0, lt=1.0)
    target_modules: list[str] | str | None = None
    bias: Literal["none", "all", "lora_only"] = "none"


class TrainingSection(_Section):
    """The ``transformers.TrainingArguments`` keys this runtime's loop acts on."""

    output_dir: str = "/mnt/results"
    per_device_train_batch_size: int = Field(default=1, gt=0)
    per_device_eval_batch_size: int = Field(default=8, gt=0)
    gradient_accumulation_steps: int = Field(default=1, gt=0)
    num_train_epochs: float = Field(default=3.0, gt=0)
    max_steps: int = -1
    learning_rate: float = Field(default=5e-5, gt=0)
    weight_decay: float = Field(default=0.0, ge=0)
    adam_beta1: float = 0.9
    adam_beta2: float = 0.999
    adam_epsilon: float = 1e-8
    max_grad_norm: float = 1.0
    lr_scheduler_type: str = "linear"
    warmup_steps: int = Field(default=0, ge=0)
    warmup_ratio: float = Field(default=0.0, ge=0, le=1)
    logging_steps: float = Field(default=10, gt=0)
    # As in TrainingArguments: "no" never checkpoints, "steps" every save_steps (a
    # fraction below 1 is a share of the run), "epoch" at each epoch's end;
    # save_total_limit None keeps every checkpoint.
    save_strategy: Literal["no", "steps", "epoch", "best"] = "no"
    save_steps: float = Field(default=500, gt=0)
    save_total_limit: int | None = Field(default=None, gt=0)
    seed: int = 42
    gradient_checkpointing: bool = False
    bf16: bool = False
    fp16: bool = False
    ddp_find_unused_parameters: bool = False

    @model_validator(mode="after")
    def _save_strategy_is_one_this_loop_runs(self) -> TrainingSection:
        if self.save_strategy == "best":
            raise ValueError(
                "save_strategy 'best' needs evaluation during training, which this runtime "
                "does not run (it evaluates before and after): use 'steps', 'epoch' or 'no'"
            )
        return self

    def ignored_settings(self) -> list[str]:
        """Settings the user asked for that the runtime cannot honour (none today:
        ddp_find_unused_parameters goes to DistributedDataParallel when tuning runs in
        several processes). The webhook warns and the pod logs each one."""
        return []

    def warmup_steps_for(self, total_steps: int) -> int:
        if self.warmup_steps:
            return self.warmup_steps
        return math.ceil(total_steps * self.warmup_ratio)


class DatasetSection(_Section):
    """How rows become training examples. Column names default to auto-detection.

    ``max_seq_length`` and ``packing`` extend upstream: a row longer than
    ``max_seq_length`` tokens is truncated as TRL does (the prompt's head and as much of
    the answer as fits; dropped when no answer is left), and both are counted in the
    result; packing concatenates short examples into full-length rows without
    cross-attention.
    """

    dataset_path: str | None = None
    shuffle_dataset: bool = True
    shuffle_seed: int = 42
    train_test_split: float = Field(default=1.0, gt=0, le=1)
    messages_column: str | None = None
    prompt_column: str | None = None
    completion_column: str | None = None
    instruction_column: str | None = None
    context_column: str | None = None
    response_column: str | None = None
    text_column: str | None = None
    max_seq_length: int = Field(default=1024, gt=8)
    packing: bool = False


class DataCollatorSection(_Section):
    """``DataCollatorForLanguageModeling`` keys; ``mlm`` is always false for causal LMs."""

    mlm: bool = False
    pad_to_multiple_of: int | None = Field(default=None, gt=0)


class TrainingConfig(BaseModel):
    """The whole ``training_config`` value after defaults for the method."""

    model_config = ConfigDict(populate_by_name=True, extra="forbid")

    model: ModelSection = Field(default_factory=ModelSection, alias="ModelConfig")
    quantization: QuantizationSection = Field(
        default_factory=QuantizationSection, alias="QuantizationConfig"
    )
    lora: LoraSection = Field(default_factory=LoraSection, alias="LoraConfig")
    training: TrainingSection = Field(
        default_factory=TrainingSection, alias="TrainingArguments"
    )
    dataset: DatasetSection = Field(default_factory=DatasetSection, alias="DatasetConfig")
    collator: DataCollatorSection = Field(
        default_factory=DataCollatorSection, alias="DataCollator"
    )

    @model_validator(mode="after")
    def _quantization_is_one_kind(self) -> TrainingConfig:
        if self.quantization.load_in_4bit and self.quantization.load_in_8bit:
            raise ValueError("QuantizationConfig: load_in_4bit and load_in_8bit are both true")
        return self

    @model_validator(mode="after")
    def _dtypes_are_known(self) -> TrainingConfig:
        for where, name in (
            ("ModelConfig.torch_dtype", self.model.torch_dtype),
            ("QuantizationConfig.bnb_4bit_compute_dtype",
             self.quantization.bnb_4bit_compute_dtype),
        ):
            try:
                normalise_dtype(name)
            except PrecisionError as err:
                raise ValueError(f"{where}: {err}") from None
        try:
            requested_training_dtype(None, self.training.bf16, self.training.fp16)
        except PrecisionError as err:
            raise ValueError(str(err)) from None
        return self

    def hyperparameters(self) -> dict[str, Any]:
        """The knobs that define the adapter, for the artifact's annotations."""
        return {
            "r": self.lora.r,
            "lora_alpha": self.lora.lora_alpha,
            "lora_dropout": self.lora.lora_dropout,
            "target_modules": self.lora.target_modules,
            "learning_rate": self.training.learning_rate,
            "num_train_epochs": self.training.num_train_epochs,
            "max_steps": self.training.max_steps,
            "per_device_train_batch_size": self.training.per_device_train_batch_size,
            "gradient_accumulation_steps": self.training.gradient_accumulation_steps,
            "lr_scheduler_type": self.training.lr_scheduler_type,
            "max_seq_length": self.dataset.max_seq_length,
            "packing": self.dataset.packing,
            "load_in_4bit": self.quantization.load_in_4bit,
            "load_in_8bit": self.quantization.load_in_8bit,
        }


_QLORA_DEFAULTS: dict[str, Any] = {
    "load_in_4bit": True,
    "bnb_4bit_quant_type": "nf4",
    "bnb_4bit_compute_dtype": "auto",
    "bnb_4bit_use_double_quant": True,
}


def _format_validation_error(err: ValidationError) -> str:
    parts = []
    for problem in err.errors():
        message = str(problem["msg"]).removeprefix("Value error, ")
        where = ".".join(str(item) for item in problem["loc"])
        # A rule across sections (a model validator) names its keys in its message.
        parts.append(f"{where}: {message}" if where else message)
    return "; ".join(parts)


def _check_training_arguments(training: dict[str, Any]) -> None:
    unknown = sorted(
        str(key) for key in training
        if key not in TRAINING_ARGUMENT_KEYS and key not in _LEGACY_TRAINING_KEYS
    )
    if unknown:
        hint = (" (max_seq_length belongs in DatasetConfig)"
                if "max_seq_length" in unknown else "")
        raise ConfigError(f"TrainingArguments: unknown keys {unknown}{hint}")
    output_dir = training.get("output_dir")
    if output_dir is not None:
        normalized = posixpath.normpath(posixpath.join(OUTPUT_ROOT, str(output_dir)))
        if not isinstance(output_dir, str) or not (
            normalized == OUTPUT_ROOT or normalized.startswith(OUTPUT_ROOT + "/")
        ):
            raise ConfigError(
                f"TrainingArguments.output_dir {output_dir!r} must stay under {OUTPUT_ROOT}"
            )


def parse_training_config(document: Any, method: Method | None) -> TrainingConfig:
    """Turn the parsed YAML document into a :class:`TrainingConfig` for ``method``.

    No document at all (None) is the method's default config; a document for qlora must
    say how to quantize, as upstream's webhook requires. ``method`` None checks only what
    does not depend on the method (the webhook, when the workspace's method is invalid).
    """
    if document is None:
        document = {"training_config": {}}
        if method == "qlora":
            document["training_config"]["QuantizationConfig"] = dict(_QLORA_DEFAULTS)
    if not isinstance(document, dict) or "training_config" not in document:
        raise ConfigError("the file must have one top-level key, training_config")
    extra_top = sorted(str(key) for key in document if key != "training_config")
    if extra_top:
        raise ConfigError(f"unexpected top-level keys {extra_top}; only training_config")
    body = document["training_config"] or {}
    if not isinstance(body, dict):
        raise ConfigError("training_config must be a mapping of sections")
    unknown = sorted(str(key) for key in body if key not in SECTIONS)
    if unknown:
        raise ConfigError(f"unknown sections {unknown}; allowed: {list(SECTIONS)}")
    for name, value in body.items():
        if value is not None and not isinstance(value, dict):
            raise ConfigError(f"section {name} must be a mapping")
    body = {name: dict(value or {}) for name, value in body.items()}
    quantization = body.get("QuantizationConfig", {})
    for key in ("load_in_4bit", "load_in_8bit"):
        if key in quantization and not isinstance(quantization[key], bool):
            raise ConfigError(f"QuantizationConfig.{key} must be a boolean")
    _check_training_arguments(body.get("TrainingArguments", {}))
    try:
        config = TrainingConfig.model_validate(body)
    except ValidationError as err:
        raise ConfigError(_format_validation_error(err)) from err
    if method == "lora" and config.quantization.is_quantized:
        raise ConfigError("method lora forbids QuantizationConfig.load_in_4bit/load_in_8bit "
                          "(use method qlora)")
    if method == "qlora" and not config.quantization.is_quantized:
        raise ConfigError("method qlora needs QuantizationConfig.load_in_4bit or "
                          "load_in_8bit set to true")
    return config


def parse_training_config_text(text: str, method: Method | None) -> TrainingConfig:
    """Parse the text of ``training_config.yaml`` (the ConfigMap value or the file)."""
    try:
        document = yaml.safe_load(text)
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        where = f" at line {mark.line + 1}" if mark is not None else ""
        raise ConfigError(f"not valid YAML{where}") from err
    return parse_training_config(document, method)


def load_training_config(path: Path, method: Method | None) -> TrainingConfig:
    """Read ``training_config.yaml`` from ``path``; errors name the file."""
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as err:
        raise ConfigError(f"{path}: cannot read: {err.strerror}") from err
    except UnicodeDecodeError as err:
        raise ConfigError(f"{path}: not UTF-8 text") from err
    try:
        return parse_training_config_text(text, method)
    except ConfigError as err:
        raise ConfigError(f"{path}: {err}") from err


# -- the default configs (upstream's lora-params-template / qlora-params-template) -------

DEFAULT_TEMPLATE_NAMES: dict[str, str] = {
    "lora": "lora-params-template",
    "qlora": "qlora-params-template",
}


def template_name(method: str) -> str:
    """The name of the operator's default ConfigMap for ``method`` (lora when unknown)."""
    return DEFAULT_TEMPLATE_NAMES.get(method, DEFAULT_TEMPLATE_NAMES["lora"])


def is_template_name(name: str | None) -> bool:
    return name in DEFAULT_TEMPLATE_NAMES.values()


def default_config_document(method: Method) -> dict[str, Any]:
    """The method's default ``training_config.yaml`` document: upstream's template with
    two changes. Dtypes are ``auto`` (the runtime picks what the GPU computes: V100 and T4
    have no bfloat16), and DataCollator.mlm is false (upstream writes true, which a causal
    LM cannot use; the runtime always trains causally)."""
    quantization: dict[str, Any] = {"load_in_4bit": False}
    if method == "qlora":
        quantization = {"load_in_4bit": True, "bnb_4bit_quant_type": "nf4",
                        "bnb_4bit_compute_dtype": "auto", "bnb_4bit_use_double_quant": True}
    return {"training_config": {
        "ModelConfig": {"torch_dtype": "auto", "local_files_only": True, "device_map": "auto"},
        "QuantizationConfig": quantization,
        "LoraConfig": {"r": 8, "lora_alpha": 8, "lora_dropout": 0.0},
        "TrainingArguments": {"output_dir": "/mnt/results", "ddp_find_unused_parameters": False,
                              "save_strategy": "no", "num_train_epochs": 3,
                              "per_device_train_batch_size": 1},
        "DataCollator": {"mlm": False},
        "DatasetConfig": {"shuffle_dataset": True, "train_test_split": 1},
    }}


@functools.lru_cache(maxsize=4)
def default_config_text(method: Method) -> str:
    """The built-in default as YAML text; made once per method (the webhook asks on every
    review of a workspace without a config, and dumping YAML costs ~2 ms)."""
    return yaml.safe_dump(default_config_document(method), sort_keys=False)


def with_target_modules(text: str, target_modules: list[str] | tuple[str, ...]) -> str:
    """The config text with LoraConfig.target_modules set to the preset's modules, unless
    the config names its own (the user's choice wins). Unparsable text is returned as is:
    the parse that follows reports it."""
    if not target_modules:
        return text
    try:
        document = yaml.safe_load(text)
    except yaml.YAMLError:
        return text
    body = document.get("training_config") if isinstance(document, dict) else None
    if not isinstance(body, dict):
        return text
    lora = body.get("LoraConfig") or {}
    if not isinstance(lora, dict) or lora.get("target_modules"):
        return text
    body["LoraConfig"] = {**lora, "target_modules": list(target_modules)}
    return yaml.safe_dump(document, sort_keys=False)
