"""The precision rule: what each device computes in, for each request (capability injected)."""

from __future__ import annotations

import pytest

from runtime.precision import (
    DeviceCapability,
    PrecisionError,
    choose_precision,
    cpu_capability,
    normalise_dtype,
    requested_training_dtype,
)
from runtime.tuning.config import ConfigError, parse_training_config

AVX2 = DeviceCapability("cpu", "avx2", has_native_bfloat16=False)
AVX512 = DeviceCapability("cpu", "avx512", has_native_bfloat16=False)
AMX = DeviceCapability("cpu", "amx", has_native_bfloat16=True)
V100 = DeviceCapability("cuda", "Tesla V100-SXM2-16GB", has_native_bfloat16=False)
A100 = DeviceCapability("cuda", "NVIDIA A100-SXM4-80GB", has_native_bfloat16=True)


@pytest.mark.parametrize(
    ("requested", "capability", "dtype", "warns"),
    [
        ("auto", AVX2, "float32", False),
        ("auto", AVX512, "float32", False),
        ("auto", AMX, "bfloat16", False),
        ("auto", V100, "float16", False),
        ("auto", A100, "bfloat16", False),
        (None, AVX2, "float32", False),
        ("bfloat16", AVX2, "bfloat16", True),  # honoured, but slow: say so
        ("bf16", AMX, "bfloat16", False),
        ("bfloat16", V100, "float16", True),  # no bfloat16 kernels: the webhook's promise
        ("float16", AVX2, "float16", True),
        ("float16", V100, "float16", False),
        ("float32", AMX, "float32", False),
        ("fp32", A100, "float32", False),
    ],
)
def test_choice(requested: str | None, capability: DeviceCapability, dtype: str,
                warns: bool) -> None:
    precision = choose_precision(requested, capability)
    assert precision.dtype == dtype
    assert (precision.warning is not None) is warns
    record = precision.as_dict()
    assert record["dtype"] == dtype and record["capability"] == capability.name
    assert record["requested"] == normalise_dtype(requested)


def test_slow_bfloat16_warning_names_the_cpu_and_the_fix() -> None:
    warning = choose_precision("bfloat16", AVX2).warning or ""
    assert "cpu avx2 without native bfloat16" in warning and "torch_dtype: auto" in warning


def test_unknown_dtype_is_a_clear_error() -> None:
    with pytest.raises(PrecisionError, match="unsupported dtype 'float8'; use one of"):
        normalise_dtype("float8")


@pytest.mark.parametrize(
    ("torch_dtype", "bf16", "fp16", "requested"),
    [
        (None, False, False, "auto"),
        ("auto", True, False, "bfloat16"),
        ("auto", False, True, "float16"),
        ("float32", True, False, "float32"),  # an explicit torch_dtype wins
        ("torch.bfloat16", False, False, "bfloat16"),
    ],
)
def test_training_request(torch_dtype: str | None, bf16: bool, fp16: bool,
                          requested: str) -> None:
    assert requested_training_dtype(torch_dtype, bf16, fp16) == requested


def test_config_defaults_to_auto_and_rejects_bad_dtypes() -> None:
    config = parse_training_config(None, "qlora")
    assert config.model.torch_dtype == "auto"
    assert config.quantization.bnb_4bit_compute_dtype == "auto"
    with pytest.raises(ConfigError, match="ModelConfig.torch_dtype: unsupported dtype 'fp8'"):
        parse_training_config({"training_config": {"ModelConfig": {"torch_dtype": "fp8"}}},
                              "lora")
    with pytest.raises(ConfigError, match="bf16 and fp16 are both true"):
        parse_training_config(
            {"training_config": {"TrainingArguments": {"bf16": True, "fp16": True}}}, "lora")


def test_forced_cpu_capability(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("KAITO_FORCE_CPU_CAPABILITY", "AVX2")
    assert cpu_capability() == DeviceCapability("cpu", "avx2", False, is_forced=True)
    monkeypatch.setenv("KAITO_FORCE_CPU_CAPABILITY", "amx")
    assert cpu_capability().has_native_bfloat16
    monkeypatch.setenv("KAITO_FORCE_CPU_CAPABILITY", "sse9")
    with pytest.raises(PrecisionError, match="KAITO_FORCE_CPU_CAPABILITY='sse9'"):
        cpu_capability()
