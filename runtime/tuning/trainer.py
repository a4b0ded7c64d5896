"""The training loop: token-weighted loss, checkpoints, resume, held-out evaluation.

A small loop of our own instead of ``transformers.Trainer``: it takes the loss over the
target tokens of a whole accumulation group (not a mean of per-batch means), pads each
batch only to its own longest row, reports progress every step, and checkpoints the
adapter, optimizer, scheduler and RNG state into the output volume so a restarted pod
continues from the last checkpoint with the same step counter and the same data order.

Under torchrun the same loop runs on every rank (runtime/tuning/schedule.py says which
micro-batches each trains; distributed.py wraps the model with DDP or FSDP). The loss of
a step is normalised by the target tokens of the whole global group, so W ranks compute
the same loss as one process with W times the accumulation. Rank 0 alone writes
checkpoints and reports progress; evaluation is split over the ranks and its sums
all-reduced (every rank must take part in an FSDP forward anyway, and W ranks evaluate
W times faster than rank 0 alone while the others wait).
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import os
import shutil
import time
import warnings
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from runtime.progress import ProgressTracker
from runtime.tuning import distributed, schedule
from runtime.tuning.config import TrainingConfig
from runtime.tuning.distributed import World
from runtime.tuning.encoding import Batch, Encoded, collate, plan_epoch
from runtime.tuning.model import quiet_library_deprecations

log = logging.getLogger(__name__)

CHECKPOINTS_DIR = "checkpoints"
_STATE_FILE = "trainer_state.json"


@dataclass
class TrainingOutcome:
    total_steps: int
    start_step: int
    losses: list[float] = field(default_factory=list)
    tokens_trained: int = 0
    train_seconds: float = 0.0
    eval_before: dict[str, float] | None = None
    eval_after: dict[str, float] | None = None

    @property
    def seconds_per_step(self) -> float | None:
        steps = self.total_steps - self.start_step
        return self.train_seconds / steps if steps else None

    @property
    def tokens_per_second(self) -> float | None:
        return self.tokens_trained / self.train_seconds if self.train_seconds else None


def _to_tensors(batch: Batch, device: torch.device) -> dict[str, torch.Tensor]:
    tensors = {
        "input_ids": torch.tensor(batch.input_ids, device=device),
        "labels": torch.tensor(batch.labels, device=device),
    }
    if batch.attention_mask is not None:
        tensors["attention_mask"] = torch.tensor(batch.attention_mask, device=device)
    if batch.position_ids is not None:
        tensors["position_ids"] = torch.tensor(batch.position_ids, device=device)
    return tensors


def _keep_quantized_layers_in_train_mode(model: Any) -> None:
    """bitsandbytes repacks 4-bit weights on CPU into an inference-only layout on the
    first eval-mode forward, and backward through that layout is silently wrong; the
    quantized layers (which have no dropout) therefore stay in train mode during eval."""
    try:
        from bitsandbytes.nn.modules import Linear4bit
    except ImportError:
        return
    for module in model.modules():
        if isinstance(module, Linear4bit):
            module.train()


def _target_count(batch: Batch) -> int:
    # The model shifts labels by one: the first column is never a target.
    return sum(1 for row in batch.labels for label in row[1:] if label != -100)


class Trainer:
    """Trains ``model`` (a peft model) on ``train`` and evaluates on ``held_out``."""

    def __init__(
        self,
        model: Any,
        config: TrainingConfig,
        train: Sequence[Encoded],
        held_out: Sequence[Encoded],
        *,
        output_dir: Path,
        pad_token_id: int,
        fingerprint: str,
        progress: ProgressTracker,
        device: torch.device,
        dtype: torch.dtype,
        world: World | None = None,
        strategy: str = "single",
    ) -> None:
        if not train:
            raise ValueError("no training examples")
        self.world = world or World()
        self.strategy = strategy
        self.model = model
        # What forward/backward go through: a DDP wrapper, or the model (FSDP shards it
        # in place; one process trains it as is).
        self.train_model = distributed.wrap(
            model, strategy, device, dtype,
            find_unused_parameters=config.training.ddp_find_unused_parameters)
        self.config = config
        self.train_items = list(train)
        self.held_out = list(held_out)
        self.output_dir = output_dir
        self.checkpoint_root = output_dir / CHECKPOINTS_DIR
        self.pad_token_id = pad_token_id
        self.fingerprint = fingerprint
        self.progress = progress
        self.device = device
        args = config.training
        data = config.dataset
        # The plan of the epoch being trained, made once per epoch: re-planning on every
        # step re-sorted (and, with packing, re-binned) the whole dataset each step.
        self._planned: tuple[int, list[list[list[Encoded]]]] | None = None
        self.batches_per_epoch = len(self._plan(0))
        self.accumulation = args.gradient_accumulation_steps
        updates_per_epoch = schedule.updates_per_epoch(
            self.batches_per_epoch, self.accumulation, self.world.world_size)
        if args.max_steps > 0:
            self.total_steps = args.max_steps
        else:
            self.total_steps = max(1, math.ceil(updates_per_epoch * args.num_train_epochs))
        self.save_every = schedule.checkpoint_interval(
            args.save_strategy, args.save_steps, self.total_steps, updates_per_epoch)
        logging_steps = args.logging_steps
        self._log_every = max(
            1, math.ceil(logging_steps * self.total_steps if logging_steps < 1 else logging_steps)
        )
        params = [p for p in model.parameters() if p.requires_grad]
        self.optimizer = torch.optim.AdamW(
            params,
            lr=args.learning_rate,
            betas=(args.adam_beta1, args.adam_beta2),
            eps=args.adam_epsilon,
            weight_decay=args.weight_decay,
        )
        from transformers import get_scheduler

        self.scheduler = get_scheduler(
            args.lr_scheduler_type,
            optimizer=self.optimizer,
            num_warmup_steps=args.warmup_steps_for(self.total_steps),
            num_training_steps=self.total_steps,
        )
        # float16 weights need loss scaling; bfloat16 and float32 do not.
        if strategy == "fsdp":
            from torch.distributed.fsdp.sharded_grad_scaler import ShardedGradScaler

            self.scaler: Any = ShardedGradScaler(device.type, enabled=dtype == torch.float16)
        else:
            self.scaler = torch.amp.GradScaler(device.type, enabled=dtype == torch.float16)
        self._max_seq_length = data.max_seq_length

    def _plan(self, epoch: int) -> list[list[list[Encoded]]]:
        if self._planned is not None and self._planned[0] == epoch:
            return self._planned[1]
        data = self.config.dataset
        plan = plan_epoch(
            self.train_items,
            self.config.training.per_device_train_batch_size,
            seed=data.shuffle_seed,
            epoch=epoch,
            shuffle=data.shuffle_dataset,
            packing=data.packing,
            max_seq_length=data.max_seq_length,
        )
        self._planned = (epoch, plan)
        return plan

    # -- evaluation ---------------------------------------------------------------------

    @torch.no_grad()
    def evaluate(self) -> dict[str, float] | None:
        """Token-weighted held-out loss and perplexity; None without held-out data.

        The batches are dealt round-robin to the ranks and the sums all-reduced; a rank
        short of a batch repeats one with weight 0, as FSDP needs every rank in every
        forward."""
        if not self.held_out:
            return None
        was_training = self.model.training
        self.model.eval()
        _keep_quantized_layers_in_train_mode(self.model)
        size = self.config.training.per_device_eval_batch_size
        ordered = sorted(self.held_out, key=lambda item: len(item.input_ids))
        chunks = [ordered[start : start + size] for start in range(0, len(ordered), size)]
        world = self.world
        rounds = math.ceil(len(chunks) / world.world_size)
        total_loss, total_tokens = 0.0, 0
        for turn in range(rounds):
            index = turn * world.world_size + world.rank
            counted = index < len(chunks)
            batch = collate(
                [[item] for item in chunks[index if counted else 0]],
                self.pad_token_id,
                self.config.collator.pad_to_multiple_of,
            )
            count = _target_count(batch)
            output = self.model(
                **_to_tensors(batch, self.device), use_cache=False, num_items_in_batch=count
            )
            if counted:
                total_loss += float(output.loss) * count
                total_tokens += count
        if was_training:
            self.model.train()
        total_loss, summed_tokens = distributed.sum_floats(
            world, [total_loss, float(total_tokens)], self.device)
        loss = total_loss / summed_tokens
        return {"loss": round(loss, 6), "perplexity": round(math.exp(min(loss, 50.0)), 4)}

    # -- checkpoints --------------------------------------------------------------------

    def latest_checkpoint(self) -> Path | None:
        """The newest complete checkpoint (rank 0's output; other ranks have none)."""
        if not self.checkpoint_root.is_dir():
            return None
        complete = [
            path for path in self.checkpoint_root.glob("step-*") if (path / _STATE_FILE).is_file()
        ]
        return max(complete, key=lambda path: int(path.name.split("-")[1]), default=None)

    def save_checkpoint(self, step: int, extra_state: dict[str, Any]) -> Path:
        """Write adapter + optimizer + scheduler + RNG state; rename into place at the end.
        Every rank gathers (FSDP shards are collected); rank 0 alone writes."""
        from safetensors.torch import save_file

        adapter = distributed.trainable_state(self.model)
        optimizer_state = distributed.optimizer_state(self.optimizer)
        target = self.checkpoint_root / f"step-{step:07d}"
        if not self.world.is_main:
            return target
        staging = self.checkpoint_root / f".tmp-step-{step:07d}"
        shutil.rmtree(staging, ignore_errors=True)
        staging.mkdir(parents=True)
        save_file(adapter, str(staging / "adapter.safetensors"))
        torch.save(
            {
                "optimizer": optimizer_state,
                "scheduler": self.scheduler.state_dict(),
                "scaler": self.scaler.state_dict(),
                "rng_cpu": torch.get_rng_state(),
                "rng_cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
            },
            staging / "optimizer.pt",
        )
        state = {
            "step": step,
            "total_steps": self.total_steps,
            "fingerprint": self.fingerprint,
            "world_size": self.world.world_size,
            "strategy": self.strategy,
            **extra_state,
        }
        (staging / _STATE_FILE).write_text(json.dumps(state, indent=2))
        os.replace(staging, target)
        self._prune_checkpoints()
        log.info("checkpoint saved", extra={"step": step, "path": str(target)})
        return target

    def _prune_checkpoints(self) -> None:
        complete = {
            int(p.name.split("-")[1]): p
            for p in self.checkpoint_root.glob("step-*") if (p / _STATE_FILE).is_file()
        }
        limit = self.config.training.save_total_limit
        for step in schedule.checkpoints_to_prune(list(complete), limit):
            shutil.rmtree(complete[step], ignore_errors=True)

    def _read_checkpoint(self, checkpoint: Path | None) -> dict[str, Any] | None:
        """Rank 0: the checkpoint's contents, or None to start over."""
        from safetensors.torch import load_file

        if checkpoint is None:
            return None
        state: dict[str, Any] = json.loads((checkpoint / _STATE_FILE).read_text())
        if state.get("fingerprint") != self.fingerprint or state.get("total_steps") != (
            self.total_steps
        ) or state.get("world_size", 1) != self.world.world_size:
            log.warning(
                "checkpoint is from a different configuration, dataset or world size, "
                "starting over",
                extra={"checkpoint": str(checkpoint)},
            )
            return None
        return {
            "state": state,
            "adapter": load_file(str(checkpoint / "adapter.safetensors")),
            "saved": torch.load(checkpoint / "optimizer.pt", map_location="cpu",
                                weights_only=False),
        }

    def restore(self, checkpoint: Path | None) -> dict[str, Any] | None:
        """Load a checkpoint (rank 0 reads it, every rank gets it); None: start over."""
        contents = distributed.broadcast_object(
            self.world, self._read_checkpoint(checkpoint) if self.world.is_main else None)
        if contents is None:
            return None
        state: dict[str, Any] = contents["state"]
        distributed.load_trainable_state(self.model, contents["adapter"])
        saved = contents["saved"]
        distributed.load_optimizer_state(self.optimizer, saved["optimizer"])
        self.scheduler.load_state_dict(saved["scheduler"])
        self.scaler.load_state_dict(saved["scaler"])
        torch.set_rng_state(saved["rng_cpu"])
        if saved["rng_cuda"] and torch.cuda.is_available():
            torch.cuda.set_rng_state_all(saved["rng_cuda"])
        return state

    # -- training -----------------------------------------------------------------------

    def _micro_batches(self, step: int) -> list[Batch]:
        """This rank's micro-batches of optimizer step ``step`` (0-based), replayable."""
        world = self.world
        return [
            collate(self._rows(index), self.pad_token_id,
                    self.config.collator.pad_to_multiple_of)
            for index in schedule.micro_batch_indices(
                step, self.accumulation, world.world_size, world.rank)
        ]

    def _rows(self, index: int) -> list[list[Encoded]]:
        epoch, position = divmod(index, self.batches_per_epoch)
        return self._plan(epoch)[position]

    def _group_counts(self, step: int) -> tuple[int, int]:
        """Target tokens and real tokens of the whole step, over all ranks (every rank
        plans the same epoch, so this needs no communication)."""
        targets, tokens = 0, 0
        for index in schedule.step_indices(step, self.accumulation, self.world.world_size):
            for row in self._rows(index):
                targets += sum(item.target_tokens for item in row)
                tokens += sum(len(item.input_ids) for item in row)
        return targets, tokens

    def _no_sync(self, is_last: bool) -> contextlib.AbstractContextManager[None]:
        """DDP averages gradients once per step, not on every accumulated backward."""
        if self.strategy == "ddp" and not is_last:
            return self.train_model.no_sync()  # type: ignore[no-any-return]
        return contextlib.nullcontext()

    def _train_step(self, step: int, outcome: TrainingOutcome) -> None:
        micro = self._micro_batches(step)
        group_targets, step_tokens = self._group_counts(step)
        # DDP and FSDP average the ranks' gradients; each rank's loss is already a share
        # of the global group's, so scale back to their sum.
        scale = float(self.world.world_size)
        local_loss = 0.0
        for position, batch in enumerate(micro):
            with quiet_library_deprecations(), self._no_sync(position == len(micro) - 1):
                output = self.train_model(
                    **_to_tensors(batch, self.device),
                    use_cache=False,
                    num_items_in_batch=group_targets,
                )
                self.scaler.scale(output.loss * scale).backward()
            local_loss += float(output.loss.detach())
        (step_loss,) = distributed.sum_floats(self.world, [local_loss], self.device)
        max_grad_norm = self.config.training.max_grad_norm
        if max_grad_norm and max_grad_norm > 0:
            self.scaler.unscale_(self.optimizer)
            params = [p for p in self.model.parameters() if p.requires_grad]
            torch.nn.utils.clip_grad_norm_(params, max_grad_norm)
        self.scaler.step(self.optimizer)
        self.scaler.update()
        learning_rate = float(self.scheduler.get_last_lr()[0])
        self.scheduler.step()
        self.optimizer.zero_grad(set_to_none=True)
        done = step + 1
        outcome.losses.append(round(step_loss, 6))
        outcome.tokens_trained += step_tokens
        self.progress.record_step(
            done,
            loss=step_loss,
            learning_rate=learning_rate,
            tokens=step_tokens,
            epoch=done * self.accumulation / self.batches_per_epoch,
        )
        if self.world.is_main and (done % self._log_every == 0 or done == self.total_steps):
            snapshot = self.progress.snapshot()
            log.info(
                "training progress",
                extra={key: snapshot[key] for key in (
                    "step", "total_steps", "loss", "learning_rate", "tokens_per_second",
                    "eta_seconds",
                )},
            )
        if schedule.is_checkpoint_step(done, self.save_every, self.total_steps):
            self.save_checkpoint(done, {"eval_before": outcome.eval_before, "losses": outcome.losses})

    def train(self) -> TrainingOutcome:
        start_step = 0
        extra: dict[str, Any] = {}
        checkpoint = self.latest_checkpoint() if self.world.is_main else None
        restored = self.restore(checkpoint)
        if restored is not None:
            start_step = int(restored["step"])
            extra = {"eval_before": restored.get("eval_before"), "losses": restored["losses"]}
            log.info("resumed from checkpoint", extra={"step": start_step})
        elif checkpoint is not None:
            shutil.rmtree(self.checkpoint_root, ignore_errors=True)
        outcome = TrainingOutcome(total_steps=self.total_steps, start_step=start_step)
        if restored is None:
            self.progress.set_phase("evaluating", "held-out loss before training")
            outcome.eval_before = self.evaluate()
        else:
            outcome.eval_before = extra["eval_before"]
            outcome.losses = list(extra["losses"])
        if outcome.eval_before:
            self.progress.record_evaluation("before", **outcome.eval_before)

        self.progress.set_phase("training")
        self.progress.begin_training(self.total_steps, start_step)
        self.train_model.train()
        started = time.monotonic()
        with warnings.catch_warnings():
            # A backward through an op without autograd support yields wrong gradients
            # with only a warning; fail the job instead of training garbage.
            warnings.filterwarnings("error", message=r".*autograd kernel was not registered.*")
            for step in range(start_step, self.total_steps):
                self._train_step(step, outcome)
        outcome.train_seconds = time.monotonic() - started
        self.progress.set_phase("evaluating", "held-out loss after training")
        outcome.eval_after = self.evaluate()
        if outcome.eval_after:
            self.progress.record_evaluation("after", **outcome.eval_after)
        return outcome
