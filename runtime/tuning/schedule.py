"""Which micro-batches each rank trains, and when checkpoints are written: pure rules.

Global batch semantics, whatever the world size: one optimizer step consumes
``accumulation x world_size`` micro-batches of ``per_device_train_batch_size`` rows from
the epoch plan (``encoding.plan_epoch``), and rank ``r`` takes every ``world_size``-th of
them starting at ``r``. So every row is trained once per epoch on exactly one rank (what
``DistributedSampler`` gives), and a run on W processes sees the same rows at the same
step as one process with W times the accumulation. Every rank plans the same epoch from
the same seed, so no data is sent between ranks.

Checkpoints follow Hugging Face ``TrainingArguments``: ``save_strategy`` "no" never
writes one, "steps" every ``save_steps`` (a fraction below 1 is a share of the run),
"epoch" at each epoch's end; ``save_total_limit`` None keeps them all.
"""

from __future__ import annotations

import math


def micro_batch_indices(step: int, accumulation: int, world_size: int, rank: int) -> list[int]:
    """The epoch-plan positions (counted across epochs) rank ``rank`` trains at ``step``."""
    if not 0 <= rank < world_size:
        raise ValueError(f"rank {rank} outside a world of {world_size}")
    first = step * accumulation * world_size
    return [first + micro * world_size + rank for micro in range(accumulation)]


def step_indices(step: int, accumulation: int, world_size: int) -> range:
    """Every epoch-plan position that optimizer step ``step`` consumes, on all ranks."""
    first = step * accumulation * world_size
    return range(first, first + accumulation * world_size)


def updates_per_epoch(batches_per_epoch: int, accumulation: int, world_size: int) -> int:
    return max(1, math.ceil(batches_per_epoch / (accumulation * world_size)))


def checkpoint_interval(
    save_strategy: str, save_steps: float, total_steps: int, steps_per_epoch: int
) -> int | None:
    """Optimizer steps between checkpoints; None when ``save_strategy`` is "no"."""
    if save_strategy == "no":
        return None
    if save_strategy == "steps":
        return max(1, math.ceil(save_steps * total_steps if save_steps < 1 else save_steps))
    if save_strategy == "epoch":
        return max(1, steps_per_epoch)
    raise ValueError(f"save_strategy {save_strategy!r} is not one this loop runs")


def is_checkpoint_step(done: int, interval: int | None, total_steps: int) -> bool:
    """Whether to checkpoint after ``done`` steps (the last step saves the adapter instead)."""
    return interval is not None and done % interval == 0 and done < total_steps


def checkpoints_to_prune(steps: list[int], save_total_limit: int | None) -> list[int]:
    """The saved steps to delete so at most ``save_total_limit`` remain (oldest first)."""
    if save_total_limit is None:
        return []
    ordered = sorted(steps)
    return ordered[: max(0, len(ordered) - save_total_limit)]
