"""The names a training config or a server flag may give a floating-point dtype.

Pure name rules, shared by the admission webhook and the pods: ``bf16`` means
``bfloat16``, an unknown name is refused with the list of valid ones, and a training
config's ``torch_dtype`` and ``bf16``/``fp16`` flags combine into one request. Which
dtype a device then computes in is ``runtime.precision``'s business (it needs torch).
"""

from __future__ import annotations

DTYPE_NAMES: dict[str, str] = {
    "auto": "auto",
    "bfloat16": "bfloat16",
    "bf16": "bfloat16",
    "float16": "float16",
    "fp16": "float16",
    "half": "float16",
    "float32": "float32",
    "fp32": "float32",
    "float": "float32",
}


class PrecisionError(ValueError):
    """The requested dtype is not one we know; the message lists the valid names."""


def normalise_dtype(name: str | None) -> str:
    """``bf16`` → ``bfloat16`` and so on; None → ``auto``."""
    if name is None:
        return "auto"
    key = str(name).strip().lower().removeprefix("torch.")
    if key not in DTYPE_NAMES:
        raise PrecisionError(
            f"unsupported dtype {name!r}; use one of {sorted(DTYPE_NAMES)}"
        )
    return DTYPE_NAMES[key]


def requested_training_dtype(torch_dtype: str | None, bf16: bool, fp16: bool) -> str:
    """The training request from the config: an explicit ``torch_dtype`` wins, then the
    ``bf16``/``fp16`` TrainingArguments flags, else ``auto``."""
    if bf16 and fp16:
        raise PrecisionError("TrainingArguments: bf16 and fp16 are both true; choose one")
    explicit = normalise_dtype(torch_dtype)
    if explicit != "auto":
        return explicit
    if bf16:
        return "bfloat16"
    if fp16:
        return "float16"
    return "auto"
