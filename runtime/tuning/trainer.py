"""The training loop: token-weighted loss, checkpoints, resume, held-out evaluation.

A small loop of our own instead of ``transformers.Trainer``: it takes the loss over the
target tokens of a whole accumulation group (not a mean of per-batch means), pads each
batch only to its own longest row, reports progress every step, and checkpoints the
adapter, optimizer, scheduler and RNG state into the output volume so a restarted pod
continues from the last checkpoint with the same step counter and the same data order.
"""

from __future__ import annotations

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
from runtime.tuning.config import TrainingConfig
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
    ) -> None:
        if not train:
            raise ValueError("no training examples")
        self.model = model
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
        updates_per_epoch = math.ceil(self.batches_per_epoch / self.accumulation)
        if args.max_steps > 0:
            self.total_steps = args.max_steps
        else:
            self.total_steps = max(1, math.ceil(updates_per_epoch * args.num_train_epochs))
        self.save_every = self._checkpoint_interval(updates_per_epoch)
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

    def _checkpoint_interval(self, updates_per_epoch: int) -> int:
        """Steps between checkpoints. With upstream's default ``save_strategy: no`` a
        checkpoint is still written about every tenth of the run, so a restarted pod
        resumes; checkpoints are removed once the adapter is saved."""
        args = self.config.training
        if args.save_strategy == "steps":
            steps = args.save_steps
            return max(1, math.ceil(steps * self.total_steps if steps < 1 else steps))
        if args.save_strategy == "epoch":
            return max(1, updates_per_epoch)
        return max(1, math.ceil(self.total_steps / 10))

    # -- evaluation ---------------------------------------------------------------------

    @torch.no_grad()
    def evaluate(self) -> dict[str, float] | None:
        """Token-weighted held-out loss and perplexity; None without held-out data."""
        if not self.held_out:
            return None
        was_training = self.model.training
        self.model.eval()
        _keep_quantized_layers_in_train_mode(self.model)
        size = self.config.training.per_device_eval_batch_size
        ordered = sorted(self.held_out, key=lambda item: len(item.input_ids))
        total_loss, total_tokens = 0.0, 0
        for start in range(0, len(ordered), size):
            batch = collate(
                [[item] for item in ordered[start : start + size]],
                self.pad_token_id,
                self.config.collator.pad_to_multiple_of,
            )
            count = _target_count(batch)
            output = self.model(
                **_to_tensors(batch, self.device), use_cache=False, num_items_in_batch=count
            )
            total_loss += float(output.loss) * count
            total_tokens += count
        if was_training:
            self.model.train()
        loss = total_loss / total_tokens
        return {"loss": round(loss, 6), "perplexity": round(math.exp(min(loss, 50.0)), 4)}

    # -- checkpoints --------------------------------------------------------------------

    def latest_checkpoint(self) -> Path | None:
        if not self.checkpoint_root.is_dir():
            return None
        complete = [
            path for path in self.checkpoint_root.glob("step-*") if (path / _STATE_FILE).is_file()
        ]
        return max(complete, key=lambda path: int(path.name.split("-")[1]), default=None)

    def save_checkpoint(self, step: int, extra_state: dict[str, Any]) -> Path:
        """Write adapter + optimizer + scheduler + RNG state; rename into place at the end."""
        from safetensors.torch import save_file

        target = self.checkpoint_root / f"step-{step:07d}"
        staging = self.checkpoint_root / f".tmp-step-{step:07d}"
        shutil.rmtree(staging, ignore_errors=True)
        staging.mkdir(parents=True)
        adapter = {
            name: tensor.detach().to("cpu").contiguous()
            for name, tensor in self.model.named_parameters()
            if tensor.requires_grad
        }
        save_file(adapter, str(staging / "adapter.safetensors"))
        torch.save(
            {
                "optimizer": self.optimizer.state_dict(),
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
            **extra_state,
        }
        (staging / _STATE_FILE).write_text(json.dumps(state, indent=2))
        os.replace(staging, target)
        self._prune_checkpoints()
        log.info("checkpoint saved", extra={"step": step, "path": str(target)})
        return target

    def _prune_checkpoints(self) -> None:
        keep = self.config.training.save_total_limit or 2
        complete = sorted(
            (p for p in self.checkpoint_root.glob("step-*") if (p / _STATE_FILE).is_file()),
            key=lambda path: int(path.name.split("-")[1]),
        )
        for old in complete[:-keep]:
            shutil.rmtree(old, ignore_errors=True)

    def restore(self, checkpoint: Path) -> dict[str, Any] | None:
        """Load a checkpoint; None (start over) if it belongs to another config or data."""
        from safetensors.torch import load_file

        state: dict[str, Any] = json.loads((checkpoint / _STATE_FILE).read_text())
        if state.get("fingerprint") != self.fingerprint or state.get("total_steps") != (
            self.total_steps
        ):
            log.warning(
                "checkpoint is from a different configuration or dataset, starting over",
                extra={"checkpoint": str(checkpoint)},
            )
            return None
        adapter = load_file(str(checkpoint / "adapter.safetensors"))
        named = dict(self.model.named_parameters())
        with torch.no_grad():
            for name, tensor in adapter.items():
                named[name].copy_(tensor.to(named[name].device))
        saved = torch.load(checkpoint / "optimizer.pt", map_location="cpu", weights_only=False)
        self.optimizer.load_state_dict(saved["optimizer"])
        self.scheduler.load_state_dict(saved["scheduler"])
        self.scaler.load_state_dict(saved["scaler"])
        torch.set_rng_state(saved["rng_cpu"])
        if saved["rng_cuda"] and torch.cuda.is_available():
            torch.cuda.set_rng_state_all(saved["rng_cuda"])
        return state

    # -- training -----------------------------------------------------------------------

    def _micro_batches(self, step: int) -> list[Batch]:
        """The micro-batches of optimizer step ``step`` (0-based), replayable on resume."""
        batches: list[Batch] = []
        for index in range(step * self.accumulation, (step + 1) * self.accumulation):
            epoch, position = divmod(index, self.batches_per_epoch)
            batches.append(
                collate(
                    self._plan(epoch)[position],
                    self.pad_token_id,
                    self.config.collator.pad_to_multiple_of,
                )
            )
        return batches

    def _train_step(self, step: int, outcome: TrainingOutcome) -> None:
        micro = self._micro_batches(step)
        group_targets = sum(_target_count(batch) for batch in micro)
        step_loss, step_tokens = 0.0, 0
        for batch in micro:
            with quiet_library_deprecations():
                output = self.model(
                    **_to_tensors(batch, self.device),
                    use_cache=False,
                    num_items_in_batch=group_targets,
                )
            self.scaler.scale(output.loss).backward()
            step_loss += float(output.loss.detach())
            step_tokens += batch.real_tokens
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
        if done % self._log_every == 0 or done == self.total_steps:
            snapshot = self.progress.snapshot()
            log.info(
                "training progress",
                extra={key: snapshot[key] for key in (
                    "step", "total_steps", "loss", "learning_rate", "tokens_per_second",
                    "eta_seconds",
                )},
            )
        if done % self.save_every == 0 and done < self.total_steps:
            self.save_checkpoint(done, {"eval_before": outcome.eval_before, "losses": outcome.losses})

    def train(self) -> TrainingOutcome:
        start_step = 0
        extra: dict[str, Any] = {}
        checkpoint = self.latest_checkpoint()
        restored = self.restore(checkpoint) if checkpoint is not None else None
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
        self.model.train()
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
