"""Reading what a command wrote to stderr as the shared log layout (crds/logs.py): every
line a JSON record, errors found by their fields rather than by grepping free text."""

from __future__ import annotations

import json
from typing import Any

from crds.logs import RECORD_KEYS


def records(stderr: str) -> list[dict[str, Any]]:
    """Every non-blank line as a record; a line in any other form fails the test."""
    found: list[dict[str, Any]] = []
    for line in stderr.splitlines():
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except ValueError:
            raise AssertionError(f"not a JSON log line: {line!r}") from None
        assert isinstance(record, dict) and list(record)[:4] == list(RECORD_KEYS), line
        found.append(record)
    return found


def error_record(stderr: str) -> dict[str, Any]:
    """The one error record of a failed command."""
    errors = [record for record in records(stderr) if record["level"] == "error"]
    assert len(errors) == 1, f"expected one error record, got {errors}"
    return errors[0]
