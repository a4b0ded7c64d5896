"""Examples to token ids with a loss mask, then into batches with no padding waste.

Loss is computed only on what the model should learn to say: the assistant turns of a
conversation (rendered with the tokenizer's own chat template, including the end-of-turn
token) or the completion of a prompt/completion pair; plain text learns every token.

A row longer than ``max_seq_length`` is truncated as TRL does (``keep_start``): the
prompt's head and as much of the answer as fits stay; a row with no answer token left
is dropped. Real data has a long tail (Dolly's context passages run to thousands of
words), so one long row must not fail a job; a :class:`LengthReport` counts what was cut
and dropped for ``training_result.json`` and the progress endpoint.

Batching: without packing, examples are grouped by length (shuffled in megabatches, then
sorted inside each) and padded only to the longest row of their own batch. With packing,
examples are placed first-fit-decreasing into rows of ``max_seq_length`` tokens; each
example restarts ``position_ids`` at 0, which transformers turns into a block-diagonal
causal mask, so packed examples never attend to each other. Pure Python: no torch.
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Protocol

from runtime.tuning.data import DataError, Example

IGNORE_INDEX = -100
# How many affected rows a report names (the counts cover them all).
REPORTED_ROWS = 5


class ChatTokenizer(Protocol):
    """The slice of a Hugging Face fast tokenizer this module uses."""

    eos_token_id: int | None
    pad_token_id: int | None

    def __call__(self, text: str, **kwargs: Any) -> Any: ...

    def apply_chat_template(self, conversation: Any, **kwargs: Any) -> Any: ...


@dataclass(frozen=True)
class Encoded:
    """One example as token ids; ``labels`` is ``IGNORE_INDEX`` where no loss is taken."""

    input_ids: list[int]
    labels: list[int]
    source: str

    @property
    def target_tokens(self) -> int:
        return sum(1 for label in self.labels[1:] if label != IGNORE_INDEX)


@dataclass(frozen=True)
class Batch:
    """Rows padded to the batch's longest; ``position_ids`` set when rows are packed."""

    input_ids: list[list[int]]
    labels: list[list[int]]
    attention_mask: list[list[int]] | None
    position_ids: list[list[int]] | None
    real_tokens: int  # the rows' own tokens, not padding (packed rows have no mask to count)


def _tokenize_with_offsets(tokenizer: ChatTokenizer, text: str) -> tuple[list[int], list[int]]:
    encoding = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
    starts = [int(start) for start, _ in encoding["offset_mapping"]]
    return list(encoding["input_ids"]), starts


def _render(tokenizer: ChatTokenizer, turns: Sequence[tuple[str, str]], *, prompt: bool) -> str:
    messages = [{"role": role, "content": content} for role, content in turns]
    text = tokenizer.apply_chat_template(
        messages, tokenize=False, add_generation_prompt=prompt
    )
    assert isinstance(text, str)
    return text


def encode_chat(tokenizer: ChatTokenizer, example: Example) -> Encoded:
    """Render the conversation; label only the characters each assistant turn adds."""
    turns = example.messages
    full = _render(tokenizer, turns, prompt=False)
    spans: list[tuple[int, int]] = []
    for index, (role, _) in enumerate(turns):
        if role != "assistant":
            continue
        before = _render(tokenizer, turns[:index], prompt=True) if index else ""
        through = _render(tokenizer, turns[: index + 1], prompt=False)
        if not (full.startswith(through) and through.startswith(before)):
            raise DataError(
                f"{example.source} column '{example.column}': the tokenizer's chat template "
                "does not render conversations prefix by prefix, so assistant turns cannot "
                "be located"
            )
        spans.append((len(before), len(through)))
    input_ids, starts = _tokenize_with_offsets(tokenizer, full)
    labels = [IGNORE_INDEX] * len(input_ids)
    for position, start in enumerate(starts):
        if any(begin <= start < end for begin, end in spans):
            labels[position] = input_ids[position]
    return Encoded(input_ids, labels, example.source)


def encode_completion(tokenizer: ChatTokenizer, example: Example) -> Encoded:
    """Prompt tokens (no loss) then completion tokens and EOS (loss)."""
    prompt_ids: list[int] = []
    if example.prompt:
        prompt_ids = list(tokenizer(example.prompt, add_special_tokens=False)["input_ids"])
    completion_ids = list(tokenizer(example.completion, add_special_tokens=False)["input_ids"])
    if tokenizer.eos_token_id is not None:
        completion_ids.append(tokenizer.eos_token_id)
    return Encoded(
        prompt_ids + completion_ids,
        [IGNORE_INDEX] * len(prompt_ids) + completion_ids,
        example.source,
    )


@dataclass(frozen=True)
class LengthReport:
    """What fitting the rows into ``max_seq_length`` tokens did."""

    rows: int
    max_seq_length: int
    truncated: int = 0
    dropped: int = 0
    tokens_cut: int = 0
    longest_tokens: int = 0
    truncated_rows: tuple[str, ...] = ()
    dropped_rows: tuple[str, ...] = ()

    @property
    def kept(self) -> int:
        return self.rows - self.dropped

    def as_dict(self) -> dict[str, Any]:
        """What ``training_result.json`` and ``/progress`` show under ``data``."""
        return {
            "rows": self.rows,
            "kept": self.kept,
            "truncated": self.truncated,
            "dropped": self.dropped,
            "tokens_cut": self.tokens_cut,
            "longest_tokens": self.longest_tokens,
            "max_seq_length": self.max_seq_length,
            "truncated_rows": list(self.truncated_rows),
            "dropped_rows": list(self.dropped_rows),
        }


@dataclass(frozen=True)
class EncodedData:
    """The examples that will be trained on, and how their lengths were fitted."""

    items: list[Encoded]
    report: LengthReport


def truncate(item: Encoded, max_seq_length: int) -> Encoded | None:
    """The first ``max_seq_length`` tokens (TRL's ``keep_start``), or None when none of
    them is a target: the prompt alone fills the context, so nothing would be learned."""
    if len(item.input_ids) <= max_seq_length:
        return item
    cut = Encoded(item.input_ids[:max_seq_length], item.labels[:max_seq_length], item.source)
    return cut if cut.target_tokens > 0 else None


def encode_dataset(
    tokenizer: ChatTokenizer, examples: Sequence[Example], max_seq_length: int
) -> EncodedData:
    """Encode every example and fit it into ``max_seq_length`` tokens.

    A row with no target at all (an empty answer) is bad data and an error; a row that
    loses every target only to the length limit is dropped; so is the job, with an
    error, when no row is left."""
    encoded: list[Encoded] = []
    truncated: list[str] = []
    dropped: list[str] = []
    tokens_cut = longest = 0
    for example in examples:
        item = encode_chat(tokenizer, example) if example.is_chat else encode_completion(
            tokenizer, example
        )
        if item.target_tokens == 0:
            raise DataError(f"{example.source} column '{example.column}': nothing to learn")
        length = len(item.input_ids)
        longest = max(longest, length)
        fitted = truncate(item, max_seq_length)
        if fitted is None:
            dropped.append(f"{example.source} column '{example.column}'")
            continue
        if fitted is not item:
            truncated.append(f"{example.source} column '{example.column}'")
            tokens_cut += length - max_seq_length
        encoded.append(fitted)
    report = LengthReport(
        rows=len(examples),
        max_seq_length=max_seq_length,
        truncated=len(truncated),
        dropped=len(dropped),
        tokens_cut=tokens_cut,
        longest_tokens=longest,
        truncated_rows=tuple(truncated[:REPORTED_ROWS]),
        dropped_rows=tuple(dropped[:REPORTED_ROWS]),
    )
    if examples and not encoded:
        raise DataError(
            f"every row's prompt fills max_seq_length {max_seq_length} "
            "(DatasetConfig.max_seq_length) before its answer starts, so nothing is left "
            f"to train on ({len(dropped)} rows dropped; first: {dropped[0]})"
        )
    return EncodedData(encoded, report)


def encode_examples(
    tokenizer: ChatTokenizer, examples: Sequence[Example], max_seq_length: int
) -> list[Encoded]:
    """The examples :func:`encode_dataset` keeps."""
    return encode_dataset(tokenizer, examples, max_seq_length).items


def split_train_eval(
    items: Sequence[Encoded], train_fraction: float, seed: int, *, shuffle: bool
) -> tuple[list[Encoded], list[Encoded]]:
    """Deterministic split; a fraction below 1 always leaves at least one eval row."""
    order = list(range(len(items)))
    if shuffle:
        random.Random(seed).shuffle(order)
    if train_fraction >= 1 or len(items) < 2:
        return [items[i] for i in order], []
    train_count = min(len(items) - 1, max(1, int(len(items) * train_fraction)))
    return [items[i] for i in order[:train_count]], [items[i] for i in order[train_count:]]


def pack(items: Sequence[Encoded], max_seq_length: int) -> list[list[Encoded]]:
    """First-fit-decreasing bins of at most ``max_seq_length`` tokens."""
    bins: list[list[Encoded]] = []
    room: list[int] = []
    for item in sorted(items, key=lambda it: len(it.input_ids), reverse=True):
        size = len(item.input_ids)
        for index, free in enumerate(room):
            if size <= free:
                bins[index].append(item)
                room[index] -= size
                break
        else:
            bins.append([item])
            room.append(max_seq_length - size)
    return bins


def _pad_to(length: int, multiple: int | None) -> int:
    if multiple:
        return -(-length // multiple) * multiple
    return length


def collate(
    rows: Sequence[Sequence[Encoded]], pad_token_id: int, pad_to_multiple_of: int | None = None
) -> Batch:
    """One batch. A row of one example is padded; a row of several is packed."""
    is_packed = any(len(row) > 1 for row in rows)
    flat_ids = [[tok for item in row for tok in item.input_ids] for row in rows]
    width = _pad_to(max(len(ids) for ids in flat_ids), pad_to_multiple_of)
    input_ids, labels, masks, positions = [], [], [], []
    for row, ids in zip(rows, flat_ids, strict=True):
        padding = width - len(ids)
        row_labels: list[int] = []
        row_positions: list[int] = []
        for item in row:
            # The first token of an example is never a target: in a packed row it would
            # be predicted from the previous example's last token.
            row_labels.extend([IGNORE_INDEX, *item.labels[1:]])
            row_positions.extend(range(len(item.input_ids)))
        input_ids.append(ids + [pad_token_id] * padding)
        labels.append(row_labels + [IGNORE_INDEX] * padding)
        masks.append([1] * len(ids) + [0] * padding)
        positions.append(row_positions + list(range(padding)))
    real_tokens = sum(len(ids) for ids in flat_ids)
    if is_packed:
        # No attention mask: transformers derives the block-diagonal mask from the
        # restarting position ids; padding (at the end, its own block) is never attended.
        return Batch(input_ids, labels, attention_mask=None, position_ids=positions,
                     real_tokens=real_tokens)
    return Batch(input_ids, labels, attention_mask=masks, position_ids=None,
                 real_tokens=real_tokens)


def plan_epoch(
    items: Sequence[Encoded],
    batch_size: int,
    *,
    seed: int,
    epoch: int,
    shuffle: bool,
    packing: bool,
    max_seq_length: int,
) -> list[list[list[Encoded]]]:
    """The batches of one epoch, as rows of examples; the same for the same seed/epoch.

    Resuming replays the plan and skips the batches already trained, so the data order
    of a resumed run matches the uninterrupted one.
    """
    rng = random.Random(seed * 1_000_003 + epoch)
    rows: list[list[Encoded]]
    if packing:
        rows = pack(items, max_seq_length)
    else:
        order = list(range(len(items)))
        if shuffle:
            rng.shuffle(order)
        # Length grouping: sort inside megabatches so each batch pads little, while
        # the megabatches keep the epoch's order random.
        megabatch = batch_size * 16
        grouped: list[int] = []
        for start in range(0, len(order), megabatch):
            chunk = order[start : start + megabatch]
            grouped.extend(sorted(chunk, key=lambda i: len(items[i].input_ids), reverse=True))
        rows = [[items[i]] for i in grouped]
    batches = [rows[start : start + batch_size] for start in range(0, len(rows), batch_size)]
    if shuffle:
        rng.shuffle(batches)
    return batches
