"""Packing and gradient checkpointing change speed and memory, never the loss.

On the real model: examples packed into one row (restarting position ids, no attention
mask) give the same summed loss as the same examples padded in a batch, so packed
examples do not attend to each other; and a step with gradient checkpointing gives the
same loss and gradients as one without.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch

from runtime.tuning.config import parse_training_config
from runtime.tuning.data import Example
from runtime.tuning.encoding import collate, encode_examples, pack
from runtime.tuning.model import load_for_training, load_tokenizer, quiet_library_deprecations

pytestmark = pytest.mark.runtime


def _examples() -> list[Example]:
    return [
        Example(f"t row {i}", "messages", messages=(("user", question), ("assistant", answer)))
        for i, (question, answer) in enumerate([
            ("What is two plus two?", "Four."),
            ("Name a primary colour.", "Red is a primary colour."),
            ("Say hello in French.", "Bonjour!"),
        ])
    ]


def _summed_loss(model: Any, batch: Any) -> torch.Tensor:
    tensors = {"input_ids": torch.tensor(batch.input_ids), "labels": torch.tensor(batch.labels)}
    if batch.attention_mask is not None:
        tensors["attention_mask"] = torch.tensor(batch.attention_mask)
    if batch.position_ids is not None:
        tensors["position_ids"] = torch.tensor(batch.position_ids)
    with quiet_library_deprecations():
        output = model(**tensors, use_cache=False, num_items_in_batch=1)
    loss: torch.Tensor = output.loss  # the sum over target tokens, as num_items is 1
    return loss


def _config(gradient_checkpointing: bool) -> Any:
    return parse_training_config(
        {"training_config": {
            "ModelConfig": {"torch_dtype": "float32"},
            "LoraConfig": {"r": 4, "lora_alpha": 8, "target_modules": ["q_proj", "v_proj"]},
            "TrainingArguments": {"gradient_checkpointing": gradient_checkpointing},
        }},
        "lora",
    )


def test_packed_rows_give_the_same_loss_as_padded_rows(smollm2_path: Path) -> None:
    tokenizer = load_tokenizer(smollm2_path)
    items = encode_examples(tokenizer, _examples(), max_seq_length=512)
    model = load_for_training(smollm2_path, _config(False)).model
    model.eval()
    with torch.no_grad():
        padded = _summed_loss(model, collate([[item] for item in items], tokenizer.pad_token_id))
        rows = pack(items, max_seq_length=512)
        assert len(rows) == 1  # all three share one row
        packed_batch = collate(rows, tokenizer.pad_token_id)
        assert packed_batch.attention_mask is None
        packed = _summed_loss(model, packed_batch)
    assert packed.item() == pytest.approx(padded.item(), rel=1e-4)


def test_gradient_checkpointing_gives_the_same_step(smollm2_path: Path) -> None:
    tokenizer = load_tokenizer(smollm2_path)
    items = encode_examples(tokenizer, _examples(), max_seq_length=512)
    batch = collate([[item] for item in items], tokenizer.pad_token_id)
    results = []
    for enabled in (False, True):
        model = load_for_training(smollm2_path, _config(enabled)).model
        model.train()
        assert model.base_model.model.is_activation_checkpointing is enabled
        loss = _summed_loss(model, batch)
        loss.backward()  # type: ignore[no-untyped-call]
        grads = [p.grad.detach().clone() for p in model.parameters() if p.requires_grad]
        results.append((loss.item(), grads))
    (plain_loss, plain_grads), (checkpointed_loss, checkpointed_grads) = results
    assert checkpointed_loss == pytest.approx(plain_loss, rel=1e-5)
    for plain, checkpointed in zip(plain_grads, checkpointed_grads, strict=True):
        torch.testing.assert_close(checkpointed, plain, rtol=1e-3, atol=1e-5)
