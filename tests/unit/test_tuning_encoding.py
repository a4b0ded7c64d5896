"""Loss masks, length checks, splits, packing and batching (a character-level tokenizer
stands in for the real one here; tests/runtime checks the real SmolLM2 tokenizer)."""

from __future__ import annotations

import re
from typing import Any

import pytest

from runtime.tuning.data import DataError, Example
from runtime.tuning.encoding import (
    IGNORE_INDEX,
    Encoded,
    collate,
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


def test_too_long_row_names_file_row_and_column() -> None:
    examples = [
        Example("data.parquet row 0", "response", completion="short"),
        Example("data.parquet row 1", "response", completion="x" * 40),
    ]
    with pytest.raises(
        DataError, match=r"data.parquet row 1 column 'response': 41 tokens, longer than "
        r"max_seq_length 32"
    ):
        encode_examples(CharTokenizer(), examples, max_seq_length=32)


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
