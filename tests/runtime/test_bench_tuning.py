"""Smoke run of the tuning benchmark: a few LoRA steps of our loop and of a plain
transformers Trainer + peft on SmolLM2-135M, the loss of both on the same rows in the
same order, and packing against padding."""

from __future__ import annotations

from pathlib import Path

from tests.bench_support import measures, run_smoke


def test_tuning_benchmark_compares_our_loop_with_the_trainer(tmp_path: Path) -> None:
    rows = measures(run_smoke("tuning", tmp_path), "tuning")
    assert rows["lora batch 2 tokens/s"]["reference_name"] == "transformers Trainer + peft"
    losses = [name for name in rows if name.startswith("lora batch 1, same rows in the same "
                                                       "order: loss at step ")]
    assert len(losses) == 1
    # Same rows, order, seed, initial adapter and schedule: the losses must agree.
    assert 0.98 <= rows[losses[0]]["ratio"] <= 1.02
    assert rows["packing, length-skewed rows, batch 2"]["reference_name"] == "ours, padding"
