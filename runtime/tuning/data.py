"""Training data: files in, validated examples out, all before the first training step.

Files are parquet, json/jsonl, csv or arrow (read with pyarrow). Each file's columns pick
its format: conversational ``messages``, ``prompt``/``completion``, dolly-style
``instruction``/``context``/``response``, or plain ``text``. Every problem (no rows, bad
encoding, a format that matches nothing, an empty or malformed value) is a
:class:`DataError` whose message names the file, the row and the column, so the job fails
in seconds instead of training on garbage (upstream passes such rows through silently).
Tokenising is in encoding.py; this module needs no torch.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from enum import Enum
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.csv as pa_csv
import pyarrow.ipc as pa_ipc
import pyarrow.json as pa_json
import pyarrow.parquet as pq

from runtime.tuning.config import DatasetSection

SUFFIXES = (".parquet", ".jsonl", ".json", ".csv", ".arrow")
ROLES = ("system", "user", "assistant", "tool")


class DataError(Exception):
    """Training data is unusable. The message names the file, and the row and column."""


class RowFormat(Enum):
    MESSAGES = "messages"
    PROMPT_COMPLETION = "prompt/completion"
    DOLLY = "instruction/context/response"
    TEXT = "text"


@dataclass(frozen=True)
class Columns:
    """Which columns of a file feed a :class:`RowFormat`."""

    row_format: RowFormat
    main: str  # messages, completion, response or text: named when a row is too long
    prompt: str | None = None
    context: str | None = None


@dataclass(frozen=True)
class Example:
    """One training example before tokenising.

    Either ``messages`` (a conversation; loss on the assistant turns) or ``prompt`` +
    ``completion`` (loss on the completion; ``prompt`` empty for plain text).
    """

    source: str  # "file row N"
    column: str
    messages: tuple[tuple[str, str], ...] = ()
    prompt: str = ""
    completion: str = ""

    @property
    def is_chat(self) -> bool:
        return bool(self.messages)


@dataclass
class Dataset:
    """Every example of every file, plus a digest of the files' bytes."""

    examples: list[Example]
    digest: str
    files: list[Path] = field(default_factory=list)


def _data_suffix(path: Path) -> str:
    # Files downloaded from URLs keep the query string ("x.parquet?download=true").
    return Path(path.name.split("?", 1)[0]).suffix.lower()


def find_data_files(data_dir: Path) -> list[Path]:
    """All data files under ``data_dir`` (recursive, sorted); hidden files are skipped."""
    if not data_dir.is_dir():
        raise DataError(f"{data_dir}: data folder does not exist")
    files: list[Path] = []
    for path in sorted(data_dir.rglob("*")):
        relative = path.relative_to(data_dir)
        if not path.is_file() or any(part.startswith(".") for part in relative.parts):
            continue
        if _data_suffix(path) not in SUFFIXES:
            raise DataError(
                f"{path}: unsupported file type; expected one of {', '.join(SUFFIXES)}"
            )
        files.append(path)
    if not files:
        raise DataError(f"{data_dir}: no data files ({', '.join(SUFFIXES)})")
    return files


def _check_utf8(path: Path, raw: bytes) -> str:
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as err:
        line = raw.count(b"\n", 0, err.start) + 1
        raise DataError(
            f"{path}: not UTF-8 text: invalid byte 0x{raw[err.start]:02x} at line {line} "
            f"(byte offset {err.start})"
        ) from err


def read_table(path: Path) -> pa.Table:
    """Read one data file into an arrow table; every failure names the file."""
    raw = path.read_bytes()
    if not raw.strip():
        raise DataError(f"{path}: file is empty")
    suffix = _data_suffix(path)
    try:
        if suffix == ".parquet":
            table = pq.read_table(pa.BufferReader(raw))
        elif suffix == ".arrow":
            table = _read_arrow(raw)
        elif suffix == ".csv":
            _check_utf8(path, raw)
            table = pa_csv.read_csv(pa.BufferReader(raw))
        else:
            text = _check_utf8(path, raw)
            table = _read_json(text, raw)
    except DataError:
        raise
    except (pa.ArrowException, ValueError) as err:
        raise DataError(f"{path}: cannot read as {suffix[1:]}: {err}") from err
    if table.num_rows == 0:
        raise DataError(f"{path}: file has no rows")
    return table


def _read_arrow(raw: bytes) -> pa.Table:
    try:
        return pa_ipc.open_file(pa.BufferReader(raw)).read_all()
    except pa.ArrowInvalid:
        # Hugging Face datasets write the streaming IPC format under .arrow.
        return pa_ipc.open_stream(pa.BufferReader(raw)).read_all()


def _read_json(text: str, raw: bytes) -> pa.Table:
    stripped = text.lstrip()
    if stripped.startswith("["):  # one JSON array of objects
        rows = json.loads(text)
        if not all(isinstance(row, dict) for row in rows):
            raise ValueError("a JSON array file must hold objects")
        return pa.Table.from_pylist(rows)
    try:
        return pa_json.read_json(pa.BufferReader(raw))
    except pa.ArrowInvalid as err:
        # Arrow's message counts rows from 0 inside its block; say it the user's way.
        problem = json_lines_problem(text)
        if problem is None:
            raise
        raise ValueError(problem) from err


def _json_kind(value: object) -> str:
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, int | float):
        return "a number"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, list):
        return "a list"
    if isinstance(value, dict):
        return "an object"
    return "null"


def json_lines_problem(text: str) -> str | None:
    """The first row (counted from 1, as an editor shows lines) that is not a JSON object,
    or whose column holds another kind of value than earlier rows did; None if all agree."""
    first_seen: dict[str, tuple[str, int]] = {}
    for number, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as err:
            return f"row {number}: not valid JSON ({err.msg} at column {err.colno})"
        if not isinstance(row, dict):
            return f"row {number}: each line must be a JSON object, found {_json_kind(row)}"
        for column, value in row.items():
            if value is None:
                continue
            kind = _json_kind(value)
            seen_kind, seen_row = first_seen.setdefault(column, (kind, number))
            if kind != seen_kind:
                return (f"row {number}, column {column!r}: {kind}, where row {seen_row} "
                        f"has {seen_kind}")
    return None


def detect_columns(path: Path, names: Sequence[str], config: DatasetSection) -> Columns:
    """Pick the row format from the file's columns (configured names win)."""
    present = set(names)

    def pick(configured: str | None, default: str) -> str:
        return configured or default

    messages = pick(config.messages_column, "messages")
    prompt, completion = pick(config.prompt_column, "prompt"), pick(
        config.completion_column, "completion"
    )
    instruction, response = pick(config.instruction_column, "instruction"), pick(
        config.response_column, "response"
    )
    context = pick(config.context_column, "context")
    text = pick(config.text_column, "text")
    if messages in present:
        return Columns(RowFormat.MESSAGES, main=messages)
    if prompt in present and completion in present:
        return Columns(RowFormat.PROMPT_COMPLETION, main=completion, prompt=prompt)
    if instruction in present and response in present:
        return Columns(
            RowFormat.DOLLY,
            main=response,
            prompt=instruction,
            context=context if context in present else None,
        )
    if text in present:
        return Columns(RowFormat.TEXT, main=text)
    raise DataError(
        f"{path}: columns {sorted(present)} match no known format; expected "
        f"'{messages}', or '{prompt}'+'{completion}', or '{instruction}'+'{response}' "
        f"(+ optional '{context}'), or '{text}'"
    )


def _string(path: Path, row: int, column: str, value: Any, *, allow_empty: bool = False) -> str:
    if isinstance(value, bytes):
        try:
            value = value.decode("utf-8")
        except UnicodeDecodeError as err:
            raise DataError(f"{path} row {row} column '{column}': not UTF-8 text") from err
    if value is None or (isinstance(value, str) and not value.strip() and not allow_empty):
        raise DataError(f"{path} row {row} column '{column}': empty value")
    if not isinstance(value, str):
        raise DataError(
            f"{path} row {row} column '{column}': expected text, got {type(value).__name__}"
        )
    return value


def _messages(path: Path, row: int, column: str, value: Any) -> tuple[tuple[str, str], ...]:
    where = f"{path} row {row} column '{column}'"
    if isinstance(value, str):  # csv/jsonl files may hold the conversation as JSON text
        try:
            value = json.loads(value)
        except json.JSONDecodeError as err:
            raise DataError(f"{where}: not a list of {{role, content}} messages") from err
    if not isinstance(value, list) or not value:
        raise DataError(f"{where}: expected a non-empty list of {{role, content}} messages")
    turns: list[tuple[str, str]] = []
    for index, message in enumerate(value):
        if not isinstance(message, dict):
            raise DataError(f"{where}: message {index} is not a {{role, content}} object")
        role, content = message.get("role"), message.get("content")
        if role not in ROLES:
            raise DataError(f"{where}: message {index} has role {role!r}; expected {ROLES}")
        if not isinstance(content, str) or not content.strip():
            raise DataError(f"{where}: message {index} ({role}) has empty content")
        turns.append((role, content))
    if not any(role == "assistant" for role, _ in turns):
        raise DataError(f"{where}: no assistant message to learn from")
    return tuple(turns)


def table_examples(path: Path, table: pa.Table, columns: Columns) -> list[Example]:
    """Validate every row of ``table`` and turn it into an :class:`Example`."""
    examples: list[Example] = []
    for row, record in enumerate(table.to_pylist()):
        source = f"{path} row {row}"
        main = columns.main
        if columns.row_format is RowFormat.MESSAGES:
            turns = _messages(path, row, main, record.get(main))
            examples.append(Example(source, main, messages=turns))
        elif columns.row_format is RowFormat.PROMPT_COMPLETION:
            assert columns.prompt is not None
            prompt_value, completion_value = record.get(columns.prompt), record.get(main)
            if isinstance(prompt_value, list) and isinstance(completion_value, list):
                turns = _messages(path, row, columns.prompt, prompt_value + completion_value)
                examples.append(Example(source, main, messages=turns))
                continue
            prompt = _string(path, row, columns.prompt, prompt_value)
            completion = _string(path, row, main, completion_value)
            examples.append(Example(source, main, prompt=prompt, completion=completion))
        elif columns.row_format is RowFormat.DOLLY:
            assert columns.prompt is not None
            instruction = _string(path, row, columns.prompt, record.get(columns.prompt))
            context = ""
            if columns.context is not None and record.get(columns.context) is not None:
                context = _string(
                    path, row, columns.context, record.get(columns.context), allow_empty=True
                )
            response = _string(path, row, main, record.get(main))
            user = f"{instruction}\n\n{context}" if context.strip() else instruction
            examples.append(
                Example(source, main, messages=(("user", user), ("assistant", response)))
            )
        else:
            text = _string(path, row, main, record.get(main))
            examples.append(Example(source, main, completion=text))
    return examples


def digest_files(files: Iterable[Path]) -> str:
    """``sha256:<hex>`` over the files' names and bytes: the artifact's dataset digest."""
    hasher = hashlib.sha256()
    for path in files:
        hasher.update(path.name.encode() + b"\0")
        with open(path, "rb") as handle:
            for chunk in iter(lambda: handle.read(1 << 20), b""):
                hasher.update(chunk)
    return "sha256:" + hasher.hexdigest()


def load_dataset(data_dir: Path, config: DatasetSection) -> Dataset:
    """Read and validate every data file under ``data_dir``."""
    files = find_data_files(data_dir)
    examples: list[Example] = []
    for path in files:
        table = read_table(path)
        columns = detect_columns(path, table.column_names, config)
        examples.extend(table_examples(path, table, columns))
    return Dataset(examples=examples, digest=digest_files(files), files=files)
