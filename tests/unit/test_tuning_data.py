"""Data files: every format read, every bad case rejected with file, row and column."""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from pathlib import Path

import pyarrow as pa
import pyarrow.csv as pa_csv
import pyarrow.ipc as pa_ipc
import pyarrow.parquet as pq
import pytest

from runtime.tuning.config import DatasetSection
from runtime.tuning.data import DataError, RowFormat, detect_columns, load_dataset, read_table

pytestmark = pytest.mark.unit

DOLLY = [
    {"instruction": "Name a colour.", "context": "", "response": "Blue.", "category": "qa"},
    {"instruction": "Summarise.", "context": "Cats sleep a lot.", "response": "Cats nap.",
     "category": "summarization"},
]
MESSAGES = [
    {"messages": [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello"}]}
]


def write(path: Path, rows: Sequence[Mapping[str, object]]) -> Path:
    table = pa.Table.from_pylist([dict(row) for row in rows])
    path.parent.mkdir(parents=True, exist_ok=True)
    suffix = path.name.split("?")[0].rsplit(".", 1)[-1]
    if suffix == "parquet":
        pq.write_table(table, path)
    elif suffix == "csv":
        pa_csv.write_csv(table, path)
    elif suffix == "arrow":
        with pa_ipc.new_stream(path, table.schema) as writer:
            writer.write_table(table)
    elif suffix == "jsonl":
        path.write_text("".join(json.dumps(dict(row)) + "\n" for row in rows))
    else:
        path.write_text(json.dumps([dict(row) for row in rows]))
    return path


@pytest.mark.parametrize(
    "name", ["d.parquet", "d.csv", "d.arrow", "d.jsonl", "d.json", "d.parquet?download=true"]
)
def test_every_file_type_reads_dolly_rows(tmp_path: Path, name: str) -> None:
    write(tmp_path / "data" / name, DOLLY)
    dataset = load_dataset(tmp_path / "data", DatasetSection())
    assert len(dataset.examples) == 2
    second = dataset.examples[1]
    assert second.messages == (("user", "Summarise.\n\nCats sleep a lot."), ("assistant", "Cats nap."))
    assert dataset.examples[0].messages[0] == ("user", "Name a colour.")
    assert dataset.digest.startswith("sha256:")


def test_formats_are_detected_from_columns(tmp_path: Path) -> None:
    config = DatasetSection()
    assert detect_columns(tmp_path, ["messages"], config).row_format is RowFormat.MESSAGES
    assert (
        detect_columns(tmp_path, ["prompt", "completion"], config).row_format
        is RowFormat.PROMPT_COMPLETION
    )
    assert detect_columns(tmp_path, ["instruction", "response"], config).row_format is (
        RowFormat.DOLLY
    )
    assert detect_columns(tmp_path, ["text", "id"], config).row_format is RowFormat.TEXT
    renamed = DatasetSection(text_column="body")
    assert detect_columns(tmp_path, ["body"], renamed).main == "body"


def test_messages_prompt_completion_and_text(tmp_path: Path) -> None:
    write(tmp_path / "a.parquet", MESSAGES)
    write(tmp_path / "b.jsonl", [{"prompt": "2+2=", "completion": "4"}])
    write(tmp_path / "c.csv", [{"text": "Plain text to learn."}])
    dataset = load_dataset(tmp_path, DatasetSection())
    chat, pair, text = dataset.examples
    assert chat.messages == (("user", "Hi"), ("assistant", "Hello"))
    assert (pair.prompt, pair.completion) == ("2+2=", "4")
    assert (text.prompt, text.completion) == ("", "Plain text to learn.")


def test_messages_stored_as_json_text_in_csv(tmp_path: Path) -> None:
    write(tmp_path / "a.csv", [{"messages": json.dumps(MESSAGES[0]["messages"])}])
    assert load_dataset(tmp_path, DatasetSection()).examples[0].messages[1][1] == "Hello"


def test_wrong_columns_name_the_file_and_columns(tmp_path: Path) -> None:
    write(tmp_path / "bad.parquet", [{"question": "q", "answer": "a"}])
    with pytest.raises(DataError, match=r"bad.parquet: columns \['answer', 'question'\] match no"):
        load_dataset(tmp_path, DatasetSection())


def test_empty_file(tmp_path: Path) -> None:
    (tmp_path / "empty.jsonl").write_text("")
    with pytest.raises(DataError, match="empty.jsonl: file is empty"):
        load_dataset(tmp_path, DatasetSection())


def test_file_with_header_but_no_rows(tmp_path: Path) -> None:
    (tmp_path / "rows.csv").write_text("instruction,response\n")
    with pytest.raises(DataError, match="rows.csv: file has no rows"):
        load_dataset(tmp_path, DatasetSection())


def test_non_utf8_names_the_line(tmp_path: Path) -> None:
    (tmp_path / "latin1.jsonl").write_bytes(
        b'{"text": "fine"}\n{"text": "caf\xe9"}\n'
    )
    with pytest.raises(DataError, match=r"latin1.jsonl: not UTF-8 text: invalid byte 0xe9 at line 2"):
        load_dataset(tmp_path, DatasetSection())


@pytest.mark.parametrize(
    ("row", "message"),
    [
        ({"instruction": "Do it", "response": ""}, "row 1 column 'response': empty value"),
        ({"instruction": None, "response": "ok"}, "row 1 column 'instruction': empty value"),
    ],
)
def test_empty_values_name_row_and_column(tmp_path: Path, row: dict[str, object], message: str) -> None:
    write(tmp_path / "d.jsonl", [{"instruction": "Fine", "response": "Yes"}, row])
    with pytest.raises(DataError, match=message):
        load_dataset(tmp_path, DatasetSection())


@pytest.mark.parametrize(
    ("messages", "message"),
    [
        ([{"role": "user", "content": "only a question"}], "no assistant message"),
        ([{"role": "robot", "content": "x"}], "message 0 has role 'robot'"),
        ([{"role": "user", "content": "q"}, {"role": "assistant", "content": " "}],
         r"message 1 \(assistant\) has empty content"),
        ([], "expected a non-empty list"),
    ],
)
def test_bad_conversations(tmp_path: Path, messages: list[object], message: str) -> None:
    (tmp_path / "chat.jsonl").write_text(
        json.dumps(MESSAGES[0]) + "\n" + json.dumps({"messages": messages}) + "\n"
    )
    with pytest.raises(DataError, match=f"chat.jsonl row 1 column 'messages': {message}"):
        load_dataset(tmp_path, DatasetSection())


def test_unsupported_and_missing_files(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="no data files"):
        load_dataset(tmp_path, DatasetSection())
    (tmp_path / ".hidden").write_text("ignored")
    (tmp_path / "notes.txt").write_text("x")
    with pytest.raises(DataError, match="notes.txt: unsupported file type"):
        load_dataset(tmp_path, DatasetSection())
    with pytest.raises(DataError, match="does not exist"):
        load_dataset(tmp_path / "nope", DatasetSection())


def test_corrupt_parquet_names_the_file(tmp_path: Path) -> None:
    (tmp_path / "broken.parquet").write_bytes(b"PAR1 not really parquet")
    with pytest.raises(DataError, match="broken.parquet: cannot read as parquet"):
        read_table(tmp_path / "broken.parquet")


def test_a_jsonl_row_of_another_shape_is_named_by_its_line_and_column(tmp_path: Path) -> None:
    """Arrow says 'changed from array to string in row 2' (its own 0-based count inside a
    block); the user gets the line an editor shows and the column."""
    from runtime.tuning.data import DataError, read_table

    good = '{"messages": [{"role": "user", "content": "hi"}]}'
    path = tmp_path / "train.jsonl"
    rows = [good, good, '{"messages": "not a list"}', good]
    path.write_text("".join(row + "\n" for row in rows))
    with pytest.raises(DataError) as caught:
        read_table(path)
    assert "row 3, column 'messages': a string, where row 1 has a list" in str(caught.value)
    path.write_text(good + "\n{broken\n")
    with pytest.raises(DataError, match="row 2: not valid JSON"):
        read_table(path)
