"""How a tuning run spreads over its processes: one process, DDP or FSDP (pure).

- one process: nothing to distribute;
- DDP (``DistributedDataParallel``): every rank holds the whole model and trains its
  share of each batch; gradients are averaged. The fastest when the model fits one device;
- FSDP (``fully_shard``, full shard): each rank holds 1/W of every weight and gathers a
  layer's weights only while computing it; for a model that does not fit one device.
  Only the LoRA weights are trainable; compute precision is ``runtime.precision``'s.
- QLoRA trains with DDP only: its 4-bit bitsandbytes weights are not sharded by FSDP here.

The fit test is deliberately coarse (weights in the compute dtype plus a margin for the
adapter's optimizer state and activations, against one device's memory; on a CPU the
host's memory shared by the node's processes): admission (presets/memory.py) holds the
detailed estimate. ``KAITO_TUNING_STRATEGY`` / ``--strategy`` forces either, for tests.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any, Literal

from crds.tuning_config import ConfigError

Requested = Literal["auto", "ddp", "fsdp"]
REQUESTED = ("auto", "ddp", "fsdp")
# Room beyond the weights for the adapter, its optimizer state and activations.
FIT_MARGIN = 1.25
GIB = 2**30


@dataclass(frozen=True)
class StrategyChoice:
    """The chosen strategy (``single``, ``ddp`` or ``fsdp``), the world size and why."""

    strategy: str
    world_size: int
    reason: str
    warning: str | None = None

    def as_dict(self) -> dict[str, Any]:
        """What the log, ``/progress`` and ``training_result.json`` show."""
        return {key: value for key, value in asdict(self).items() if value is not None}


def training_bytes(weight_bytes: int) -> int:
    """The coarse per-device need of an unsharded run: weights plus a margin."""
    return int(weight_bytes * FIT_MARGIN)


def choose_strategy(
    requested: str,
    *,
    method: str,
    world_size: int,
    weight_bytes: int,
    device_bytes: int | None,
) -> StrategyChoice:
    """The strategy for ``world_size`` processes; raises ConfigError for an impossible ask.

    ``weight_bytes`` is the base model's size in the compute dtype; ``device_bytes`` the
    memory one process may use (None: unknown, assume it fits).
    """
    if requested not in REQUESTED:
        raise ConfigError(f"tuning strategy {requested!r}: use one of {list(REQUESTED)}")
    if method == "qlora" and requested == "fsdp":
        raise ConfigError("QLoRA trains with DDP only (FSDP does not shard 4-bit "
                          "bitsandbytes weights here): use method lora for FSDP")
    need_gib = training_bytes(weight_bytes) / GIB
    have = f"{device_bytes / GIB:.1f} GiB" if device_bytes is not None else "unknown memory"
    fits = device_bytes is None or training_bytes(weight_bytes) <= device_bytes
    if world_size == 1:
        warning = None if fits else (
            f"the model needs about {need_gib:.1f} GiB and the device has {have}: "
            "run more processes (FSDP) or use a larger device")
        return StrategyChoice("single", 1, "one process", warning)
    if requested != "auto":
        return StrategyChoice(requested, world_size, f"{requested} requested")
    if method == "qlora":
        if fits:
            return StrategyChoice("ddp", world_size, "QLoRA trains with DDP only")
        return StrategyChoice(
            "ddp", world_size, "QLoRA trains with DDP only",
            f"QLoRA trains with DDP only and the model needs about {need_gib:.1f} GiB "
            f"per device of {have}: it may not fit (use LoRA, which FSDP can shard)")
    if fits:
        return StrategyChoice(
            "ddp", world_size, f"the model fits one device (about {need_gib:.1f} GiB of {have})")
    return StrategyChoice(
        "fsdp", world_size,
        f"the model does not fit one device (about {need_gib:.1f} GiB of {have}): "
        f"sharded over {world_size} processes")
