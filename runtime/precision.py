"""Which floating-point precision a pod computes in, chosen from the device it runs on.

bfloat16 is only fast where the hardware has it: on a CPU without AVX-512 BF16 or AMX a
LoRA step measured 31x slower in bfloat16 than in float32, and a GPU before Ampere (V100,
T4) has no bfloat16 kernels at all. So ``auto`` (the default) means:

- CPU: bfloat16 where the CPU has native bfloat16 (AVX-512 BF16 or AMX), else float32;
- CUDA: bfloat16 where the GPU supports it, else float16 (training adds loss scaling).

An explicit dtype (``ModelConfig.torch_dtype``, ``TrainingArguments.bf16``/``fp16``, the
server's ``--dtype``) is honoured, with a warning when it will be slow; the one exception
is bfloat16 on a GPU without it, which becomes float16 (what the webhook promises for
such SKUs). ``choose_precision`` is pure; ``detect_capability`` is the one place that
asks torch (or ``KAITO_FORCE_CPU_CAPABILITY``, which pretends to be a given CPU so both
paths stay tested on any machine).
"""

from __future__ import annotations

import logging
import os
from dataclasses import asdict, dataclass
from typing import Any, Literal

# The pure name rules live in crds (the webhook applies them too); re-exported here.
from crds.dtypes import DTYPE_NAMES, PrecisionError, normalise_dtype, requested_training_dtype

__all__ = [
    "CPU_CAPABILITIES",
    "DTYPE_NAMES",
    "FORCE_CPU_CAPABILITY_ENV",
    "DeviceCapability",
    "Precision",
    "PrecisionError",
    "choose_precision",
    "cpu_capability",
    "detect_capability",
    "normalise_dtype",
    "requested_training_dtype",
    "resolve",
]

log = logging.getLogger(__name__)

FORCE_CPU_CAPABILITY_ENV = "KAITO_FORCE_CPU_CAPABILITY"
# Values for KAITO_FORCE_CPU_CAPABILITY, lower case, as torch names its CPU capabilities;
# the last two are the CPUs with native bfloat16.
CPU_CAPABILITIES = ("default", "avx2", "avx512", "avx512_bf16", "amx")
_NATIVE_BF16_CPU = ("avx512_bf16", "amx")


@dataclass(frozen=True)
class DeviceCapability:
    """What the device can compute fast. ``name`` is the CPU capability or GPU name."""

    device_type: Literal["cpu", "cuda"]
    name: str
    has_native_bfloat16: bool
    is_forced: bool = False


@dataclass(frozen=True)
class Precision:
    """The chosen dtype, why, and whether training needs a loss scaler."""

    dtype: str  # "bfloat16" | "float16" | "float32"
    requested: str  # normalised request, "auto" when nothing was asked
    device_type: str
    capability: str
    reason: str
    warning: str | None = None

    def as_dict(self) -> dict[str, Any]:
        """What ``training_result.json``, ``/progress`` and the server's ``/info`` show."""
        return {key: value for key, value in asdict(self).items() if value is not None}

    def torch_dtype(self) -> Any:
        import torch

        return getattr(torch, self.dtype)


def choose_precision(requested: str | None, capability: DeviceCapability) -> Precision:
    """The dtype to compute in on ``capability`` for the request (pure)."""
    wanted = normalise_dtype(requested)
    on_cpu = capability.device_type == "cpu"
    where = f"{capability.device_type} {capability.name}"

    def pick(dtype: str, reason: str, warning: str | None = None) -> Precision:
        return Precision(dtype, wanted, capability.device_type, capability.name, reason, warning)

    if wanted == "auto":
        if capability.has_native_bfloat16:
            return pick("bfloat16", f"{where} has native bfloat16")
        if on_cpu:
            return pick("float32", f"{where} has no native bfloat16")
        return pick("float16", f"{where} has no bfloat16")
    if wanted == "bfloat16" and not capability.has_native_bfloat16:
        if on_cpu:
            return pick(
                "bfloat16", "requested",
                f"bfloat16 requested on {where} without native bfloat16: expect it to be "
                "many times slower than float32 (set torch_dtype: auto)",
            )
        return pick(
            "float16", "requested bfloat16, which this GPU lacks",
            f"{where} has no bfloat16: computing in float16 instead",
        )
    if wanted == "float16" and on_cpu:
        return pick(
            "float16", "requested",
            f"float16 requested on {where}: CPUs compute float16 slowly and some "
            "operations lack float16 kernels (set torch_dtype: auto)",
        )
    return pick(wanted, "requested")


def _forced_cpu_capability() -> str | None:
    value = os.environ.get(FORCE_CPU_CAPABILITY_ENV, "").strip().lower()
    if not value:
        return None
    if value not in CPU_CAPABILITIES:
        raise PrecisionError(
            f"{FORCE_CPU_CAPABILITY_ENV}={value!r}: use one of {list(CPU_CAPABILITIES)}"
        )
    return value


def cpu_capability() -> DeviceCapability:
    """This CPU's capability as torch dispatches it (AVX2, AVX512...) and whether it
    has native bfloat16 (AVX-512 BF16 or AMX)."""
    forced = _forced_cpu_capability()
    if forced is not None:
        return DeviceCapability("cpu", forced, forced in _NATIVE_BF16_CPU, is_forced=True)
    import torch

    # get_cpu_capability() follows ATEN_CPU_CAPABILITY, so a CPU pinned to AVX2 kernels
    # also counts as one without bfloat16.
    dispatch = str(torch.backends.cpu.get_cpu_capability()).lower()
    name = dispatch
    native = False
    if dispatch.startswith("avx512"):
        if torch.cpu._is_amx_tile_supported():
            name, native = "amx", True
        elif torch.cpu._is_avx512_bf16_supported():
            name, native = "avx512_bf16", True
    return DeviceCapability("cpu", name, native)


def detect_capability(device_type: str) -> DeviceCapability:
    """The capability of the device ``cpu`` or ``cuda`` (the current GPU)."""
    if device_type == "cuda":
        import torch

        return DeviceCapability(
            "cuda", torch.cuda.get_device_name(), bool(torch.cuda.is_bf16_supported())
        )
    return cpu_capability()


def resolve(requested: str | None, device_type: str) -> Precision:
    """Detect the device, choose, and log the choice (with its warning, if any)."""
    precision = choose_precision(requested, detect_capability(device_type))
    level = logging.WARNING if precision.warning else logging.INFO
    log.log(level, "precision chosen", extra=precision.as_dict())
    return precision
