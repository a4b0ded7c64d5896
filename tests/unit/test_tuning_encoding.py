"""Loss masks, truncation to max_seq_length, splits, packing and batching (a character-level tokenizer
stands in for the real one here; tests/runtime checks the real SmolLM2 tokenizer)."""

from __future__ import annotations

import random
import re
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from runtime.tuning.config import DatasetSection
from runtime.tuning.data import DataError, Example, load_dataset
from runtime.tuning.encoding import (
    IGNORE_INDEX,
    Encoded,
    collate,
    encode_dataset,
    encode_examples,
    pack,
    plan_epoch,
    split_train_eval,
)

pytestmark = pytest.mark.unit

_SPECIAL = re.compile(r"<\|[a-z_]+\|>|.", re.DOTALL)


class CharTokenizer:
    """One token per character; ``<|...|>`` markers are single special tokens."""

    eos_token_id: int | None = 1
    pad_token_id: int | None = 0

    def __call__(self, text: str, **kwargs: Any) -> dict[str, list[Any]]:
        ids, offsets = [], []
        for match in _SPECIAL.finditer(text):
            token = match.group()
            ids.append(2 if len(token) > 1 else ord(token) + 10)
            offsets.append((match.start(), match.end()))
        return {"input_ids": ids, "offset_mapping": offsets}

    def apply_chat_template(self, conversation: Any, **kwargs: Any) -> str:
        text = "".join(f"<|{m['role']}|>{m['content']}<|end|>" for m in conversation)
        if kwargs.get("add_generation_prompt"):
            text += "<|assistant|>"
        return text


def decode_targets(item: Encoded) -> str:
    return "".join(
        "#" if label == 2 else chr(label - 10) if label > 2 else "$"
        for label in item.labels
        if label != IGNORE_INDEX
    )


def test_chat_loss_covers_only_assistant_turns_and_their_end_marker() -> None:
    example = Example(
        "f row 0", "messages",
        messages=(("system", "sys"), ("user", "hi"), ("assistant", "yo"), ("user", "again"),
                  ("assistant", "ok")),
    )
    (item,) = encode_examples(CharTokenizer(), [example], max_seq_length=500)
    assert decode_targets(item) == "yo#ok#"  # '#' is the <|end|> token
    assert len(item.input_ids) == len(item.labels)


def test_completion_loss_covers_completion_and_eos() -> None:
    example = Example("f row 0", "completion", prompt="2+2=", completion="4")
    (item,) = encode_examples(CharTokenizer(), [example], max_seq_length=50)
    assert decode_targets(item) == "4$"  # '$' is EOS
    assert item.input_ids[:4] == [ord(c) + 10 for c in "2+2="]


def test_plain_text_learns_every_token() -> None:
    example = Example("f row 0", "text", completion="abc")
    (item,) = encode_examples(CharTokenizer(), [example], max_seq_length=50)
    assert decode_targets(item) == "abc$"


def test_a_long_completion_keeps_the_prompt_and_the_head_of_the_answer() -> None:
    examples = [
        Example("data.parquet row 0", "response", prompt="Q:", completion="short"),
        Example("data.parquet row 1", "response", prompt="Q:", completion="x" * 40),
    ]
    fitted = encode_dataset(CharTokenizer(), examples, max_seq_length=32)
    short, long = fitted.items
    assert decode_targets(short) == "short$"
    assert len(long.input_ids) == 32 and long.input_ids[:2] == [ord("Q") + 10, ord(":") + 10]
    assert decode_targets(long) == "x" * 30  # the answer's head; no EOS: it was cut
    assert fitted.report.as_dict() == {
        "rows": 2, "kept": 2, "truncated": 1, "dropped": 0, "tokens_cut": 11,
        "longest_tokens": 43, "max_seq_length": 32,
        "truncated_rows": ["data.parquet row 1 column 'response'"], "dropped_rows": [],
    }


def test_a_row_whose_prompt_fills_the_context_is_dropped() -> None:
    examples = [
        Example("d row 0", "messages", messages=(("user", "c" * 40), ("assistant", "yes"))),
        Example("d row 1", "messages", messages=(("user", "hi"), ("assistant", "yes"))),
    ]
    fitted = encode_dataset(CharTokenizer(), examples, max_seq_length=32)
    assert [item.source for item in fitted.items] == ["d row 1"]
    assert (fitted.report.dropped, fitted.report.truncated, fitted.report.kept) == (1, 0, 1)
    assert fitted.report.dropped_rows == ("d row 0 column 'messages'",)
    # One answer token left is still something to learn (the first token never is).
    # <|user|> + 28 c + <|end|> + <|assistant|> is 31 tokens of prompt.
    edge = Example("d row 2", "messages", messages=(("user", "c" * 28), ("assistant", "yes")))
    (kept,) = encode_examples(CharTokenizer(), [edge], max_seq_length=32)
    assert decode_targets(kept) == "y"


def test_a_chat_cut_mid_conversation_keeps_the_earlier_turns() -> None:
    example = Example(
        "f row 0", "messages",
        messages=(("user", "hi"), ("assistant", "yo"), ("user", "again"),
                  ("assistant", "z" * 50)),
    )
    (item,) = encode_examples(CharTokenizer(), [example], max_seq_length=40)
    assert len(item.input_ids) == 40
    assert decode_targets(item).startswith("yo#zzz")


def test_when_every_row_is_dropped_the_job_fails_naming_one() -> None:
    examples = [Example(f"d row {i}", "response", prompt="p" * 40, completion="a")
                for i in range(3)]
    with pytest.raises(DataError, match=r"every row's prompt fills max_seq_length 32 "
                       r"\(DatasetConfig.max_seq_length\) before its answer starts.*3 rows "
                       r"dropped; first: d row 0 column 'response'"):
        encode_dataset(CharTokenizer(), examples, max_seq_length=32)


def test_the_seed_shaped_dataset_with_a_long_tail_trains_without_failing(
    tmp_path: Path,
) -> None:
    # The seed's data is Dolly 15k in conversational form: a `messages` column of
    # system/user/assistant turns, the user turn holding the context passage. Context
    # lengths follow a log-normal long tail, as Dolly's do (most short, a few huge).
    rng = random.Random(7)
    rows = []
    for index in range(400):
        context_words = int(rng.lognormvariate(3.5, 1.3)) if index % 3 else 0
        answer_words = int(rng.lognormvariate(3.0, 0.9)) + 1
        context = " ".join("ctx" for _ in range(context_words))
        user = f"Question {index}?" + (f"\n\n{context}" if context else "")
        messages = [
            {"role": "system", "content": "You are helpful."},
            {"role": "user", "content": user},
            {"role": "assistant", "content": " ".join("ans" for _ in range(answer_words))},
        ]
        rows.append({"messages": messages, "category": "closed_qa"})
    (tmp_path / "data").mkdir()
    pq.write_table(pa.Table.from_pylist(rows), tmp_path / "data" / "train.parquet")
    dataset = load_dataset(tmp_path / "data", DatasetSection())
    fitted = encode_dataset(CharTokenizer(), dataset.examples, max_seq_length=1024)
    report = fitted.report
    assert report.rows == 400 and report.truncated > 0 and report.dropped > 0
    assert report.kept == len(fitted.items) == 400 - report.dropped
    assert report.longest_tokens > 4 * 1024
    assert all(len(item.input_ids) <= 1024 and item.target_tokens > 0 for item in fitted.items)
    assert len(report.truncated_rows) == min(report.truncated, 5)
    assert "train.parquet row " in report.truncated_rows[0]
    # Truncation keeps each row's head: its system turn and question come first.
    head = CharTokenizer()("<|system|>You are helpful.<|end|><|user|>Question")["input_ids"]
    assert all(item.input_ids[:len(head)] == head for item in fitted.items)


def test_template_that_does_not_render_prefixes_is_rejected() -> None:
    class Reordering(CharTokenizer):
        def apply_chat_template(self, conversation: Any, **kwargs: Any) -> str:
            return "".join(reversed(super().apply_chat_template(conversation, **kwargs)))

    example = Example("f row 3", "messages", messages=(("user", "a"), ("assistant", "b")))
    with pytest.raises(DataError, match="f row 3 column 'messages': the tokenizer's chat"):
        encode_examples(Reordering(), [example], max_seq_length=100)


def _items(lengths: list[int]) -> list[Encoded]:
    return [
        Encoded(list(range(3, 3 + n)), list(range(3, 3 + n)), f"row {i}")
        for i, n in enumerate(lengths)
    ]


def test_split_is_deterministic_and_keeps_one_held_out_row() -> None:
    items = _items([5] * 10)
    train, held = split_train_eval(items, 0.9, seed=1, shuffle=True)
    assert (len(train), len(held)) == (9, 1)
    again = split_train_eval(items, 0.9, seed=1, shuffle=True)
    assert [i.source for i in again[1]] == [i.source for i in held]
    everything, none = split_train_eval(items, 1.0, seed=1, shuffle=True)
    assert len(everything) == 10 and none == []


def test_padding_is_per_batch_and_masked() -> None:
    batch = collate([[item] for item in _items([3, 5])], pad_token_id=0)
    assert [len(row) for row in batch.input_ids] == [5, 5]
    assert batch.attention_mask == [[1, 1, 1, 0, 0], [1, 1, 1, 1, 1]]
    assert batch.labels[0] == [IGNORE_INDEX, 4, 5, IGNORE_INDEX, IGNORE_INDEX]
    assert batch.position_ids is None and batch.real_tokens == 8
    rounded = collate([[item] for item in _items([3, 5])], pad_token_id=0, pad_to_multiple_of=8)
    assert len(rounded.input_ids[0]) == 8


def test_packed_rows_restart_positions_and_mask_boundaries() -> None:
    rows = pack(_items([4, 3, 2]), max_seq_length=6)
    assert sorted(sum(len(i.input_ids) for i in row) for row in rows) == [3, 6]
    batch = collate(rows, pad_token_id=0)
    assert batch.attention_mask is None
    assert batch.position_ids is not None
    assert batch.position_ids[0] == [0, 1, 2, 3, 0, 1]
    # first token of every example is never a target
    assert batch.labels[0] == [IGNORE_INDEX, 4, 5, 6, IGNORE_INDEX, 4]
    # the short row's padding is its own block starting at 0, never attended by real rows
    assert batch.position_ids[1] == [0, 1, 2, 0, 1, 2]
    assert batch.labels[1][3:] == [IGNORE_INDEX] * 3
    # tokens/s counts the examples' tokens, not the short row's padding
    assert batch.real_tokens == 9


def test_length_grouping_keeps_padding_small_and_epochs_reproducible() -> None:
    lengths = [3 + (i * 37) % 60 for i in range(200)]
    items = _items(lengths)
    plan = plan_epoch(items, 8, seed=3, epoch=0, shuffle=True, packing=False, max_seq_length=64)
    assert sorted(item.source for batch in plan for row in batch for item in row) == sorted(
        item.source for item in items
    )
    padded = sum(
        len(batch) * max(len(row[0].input_ids) for row in batch) for batch in plan
    )
    assert padded <= sum(lengths) * 1.15  # naive random batching wastes ~50% here
    same = plan_epoch(items, 8, seed=3, epoch=0, shuffle=True, packing=False, max_seq_length=64)
    other = plan_epoch(items, 8, seed=3, epoch=1, shuffle=True, packing=False, max_seq_length=64)
    assert [[r[0].source for r in b] for b in same] == [[r[0].source for r in b] for b in plan]
    assert [[r[0].source for r in b] for b in other] != [[r[0].source for r in b] for b in plan]


def test_the_trainer_plans_each_epoch_once(monkeypatch: pytest.MonkeyPatch,
                                          tmp_path: Path) -> None:
    """Re-planning on every step re-sorted (with packing, re-binned) the whole dataset."""
    import torch

    from runtime.progress import ProgressTracker
    from runtime.tuning import trainer as trainer_module
    from runtime.tuning.config import parse_training_config

    calls: list[int] = []

    def counting_plan(*args: Any, **kwargs: Any) -> Any:
        calls.append(kwargs["epoch"])
        return plan_epoch(*args, **kwargs)

    monkeypatch.setattr(trainer_module, "plan_epoch", counting_plan)
    config = parse_training_config(
        {"training_config": {"TrainingArguments": {"per_device_train_batch_size": 2,
                                                   "max_steps": 12}}}, "lora")
    trainer = trainer_module.Trainer(
        torch.nn.Linear(2, 2), config, _items([3, 4, 5, 6, 7, 8, 9, 10]), [],
        output_dir=tmp_path, pad_token_id=0, fingerprint="x", progress=ProgressTracker(None),
        device=torch.device("cpu"), dtype=torch.float32)
    replayed = [trainer._micro_batches(step) for step in range(12)]
    assert calls == [0, 1, 2]  # 4 batches per epoch, 12 steps: 3 epochs, each planned once
    assert trainer._micro_batches(1) == replayed[1]  # going back replans that epoch, same
