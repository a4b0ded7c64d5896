"""Loading the base model for LoRA or QLoRA and wrapping it with a peft adapter.

QLoRA quantizes the frozen base weights to 4-bit NF4 with double quantization through
bitsandbytes (which also runs on CPU). The compute dtype comes from ``runtime.precision``:
what the config asks for, or by default what the device computes fast.
"""

from __future__ import annotations

import logging
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from runtime.precision import Precision, normalise_dtype, requested_training_dtype
from runtime.precision import resolve as resolve_precision
from runtime.tuning.config import TrainingConfig

log = logging.getLogger(__name__)

@contextmanager
def quiet_library_deprecations() -> Iterator[None]:
    """Silence a known peft/transformers version skew: peft still calls the
    ``*gradient_checkpointing*`` names transformers 5 renamed to activation checkpointing."""
    with warnings.catch_warnings():
        warnings.filterwarnings(
            "ignore",
            message=r".*(is_gradient_checkpointing|gradient_checkpointing_enable).*deprecated",
            category=FutureWarning,
        )
        yield


def pick_device() -> torch.device:
    return torch.device("cuda") if torch.cuda.is_available() else torch.device("cpu")


def training_precision(config: TrainingConfig, device: torch.device) -> Precision:
    """The compute dtype for this config on this device (see ``runtime.precision``)."""
    args = config.training
    requested = requested_training_dtype(config.model.torch_dtype, args.bf16, args.fp16)
    return resolve_precision(requested, device.type)


def quantization_compute_dtype(
    config: TrainingConfig, precision: Precision, device: torch.device
) -> torch.dtype:
    """QLoRA's compute dtype: the model's unless the config names another one."""
    requested = normalise_dtype(config.quantization.bnb_4bit_compute_dtype)
    if requested == "auto" or requested == precision.dtype:
        return precision.torch_dtype()  # type: ignore[no-any-return]
    return resolve_precision(requested, device.type).torch_dtype()  # type: ignore[no-any-return]


@dataclass
class LoadedModel:
    model: Any  # a peft PeftModelForCausalLM
    precision: Precision
    device: torch.device

    @property
    def dtype(self) -> torch.dtype:
        return self.precision.torch_dtype()  # type: ignore[no-any-return]


def load_tokenizer(model_path: Path) -> Any:
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(model_path)
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


def load_for_training(
    model_path: Path, config: TrainingConfig, device: torch.device | None = None,
    *, load_device: torch.device | None = None,
) -> LoadedModel:
    """The base model, frozen (and quantized for QLoRA), with a fresh LoRA adapter.
    ``device`` computes (it decides the precision); the weights are placed on
    ``load_device`` (default ``device``): the CPU when FSDP shards them afterwards."""
    from peft import LoraConfig, get_peft_model, prepare_model_for_kbit_training
    from transformers import AutoModelForCausalLM, BitsAndBytesConfig

    device = device or pick_device()
    precision = training_precision(config, device)
    dtype = precision.torch_dtype()
    kwargs: dict[str, Any] = {
        key: value
        for key, value in config.model.extra_keys().items()
        if key not in ("load_in_4bit", "load_in_8bit")
    }
    kwargs.update(
        dtype=dtype,
        local_files_only=config.model.local_files_only,
        trust_remote_code=config.model.trust_remote_code,
        # One pod trains on one device; "auto" would also spread onto the CPU.
        device_map={"": str(load_device or device)},
    )
    quant = config.quantization
    if quant.is_quantized:
        extra = quant.extra_keys()
        kwargs["quantization_config"] = BitsAndBytesConfig(  # type: ignore[no-untyped-call]
            load_in_4bit=quant.load_in_4bit,
            load_in_8bit=quant.load_in_8bit,
            bnb_4bit_quant_type=quant.bnb_4bit_quant_type,
            bnb_4bit_compute_dtype=quantization_compute_dtype(config, precision, device),
            bnb_4bit_use_double_quant=quant.bnb_4bit_use_double_quant,
            **extra,
        )
    torch.manual_seed(config.training.seed)  # the adapter's initial weights
    with quiet_library_deprecations():
        model = AutoModelForCausalLM.from_pretrained(model_path, **kwargs)
        model.config.use_cache = False
        gradient_checkpointing = config.training.gradient_checkpointing
        if quant.is_quantized:
            model = prepare_model_for_kbit_training(  # type: ignore[no-untyped-call]
                model,
                use_gradient_checkpointing=gradient_checkpointing,
                gradient_checkpointing_kwargs={"use_reentrant": False},
            )
        elif gradient_checkpointing:
            # transformers 5 renamed it; older releases only have the old name.
            checkpointing_kwargs = {"use_reentrant": False}
            if hasattr(model, "activation_checkpointing_enable"):
                model.activation_checkpointing_enable(
                    activation_checkpointing_kwargs=checkpointing_kwargs
                )
            else:
                model.gradient_checkpointing_enable(  # type: ignore[no-untyped-call]
                    gradient_checkpointing_kwargs=checkpointing_kwargs
                )
        lora = config.lora
        peft_config = LoraConfig(
            r=lora.r,
            lora_alpha=lora.lora_alpha,
            lora_dropout=lora.lora_dropout,
            target_modules=lora.target_modules,
            bias=lora.bias,
            task_type="CAUSAL_LM",
            **{k: v for k, v in lora.extra_keys().items() if k != "task_type"},
        )
        peft_model = get_peft_model(model, peft_config)
    trainable = sum(p.numel() for p in peft_model.parameters() if p.requires_grad)
    log.info(
        "model ready",
        extra={"dtype": str(dtype), "device": str(device), "trainable_parameters": trainable,
               "quantized": quant.is_quantized},
    )
    return LoadedModel(peft_model, precision, device)
