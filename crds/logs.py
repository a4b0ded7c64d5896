"""The one log record layout of every Kaito process: controller, webhook, provisioner,
and the tuning, fetch and serving runtimes.

It lives in ``crds`` because the log layout is a contract between components, like the
API types, and ``crds`` is the one package each of them may import (it imports nothing of
ours; the runtime images may not import ``kaito``). JSON lines with the keys ``ts`` (UTC,
RFC 3339 with milliseconds), ``level`` (lower case), ``logger`` and ``msg``, the keys of
controller-runtime's zap encoder, then the record's ``extra`` fields, then ``exception``
when there is one. Messages stay constant; data goes in ``extra``.

Python warnings (a library's DeprecationWarning, torch's UserWarnings) are records too,
from the ``py.warnings`` logger with the message "python warning": otherwise they reach
stderr as free text between the JSON lines, which a log pipeline cannot parse.
"""

from __future__ import annotations

import json
import logging
import sys
import time
import warnings
from typing import Any, Literal, TextIO

#: The keys every JSON record starts with, in this order.
RECORD_KEYS = ("ts", "level", "logger", "msg")
LogFormat = Literal["json", "text"]

_STANDARD_ATTRS = frozenset(vars(logging.makeLogRecord({}))) | {"message", "asctime"}


def extra_fields(record: logging.LogRecord) -> dict[str, Any]:
    """The fields a call passed in ``extra``: the record's attributes logging did not set."""
    return {key: value for key, value in vars(record).items()
            if key not in _STANDARD_ATTRS and not key.startswith("_")}


def _timestamp(record: logging.LogRecord) -> str:
    seconds = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
    return f"{seconds}.{int(record.msecs):03d}Z"


class JsonFormatter(logging.Formatter):
    """One JSON object per line: ``ts``, ``level``, ``logger``, ``msg``, extra fields."""

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "ts": _timestamp(record),
            "level": record.levelname.lower(),
            "logger": record.name,
            "msg": record.getMessage(),
        }
        for key, value in extra_fields(record).items():
            entry.setdefault(key, value)  # an extra named like a record key loses
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        return json.dumps(entry, default=str)


class TextFormatter(logging.Formatter):
    """The same fields for a person at a terminal: ``ts level logger: msg key=value...``."""

    def format(self, record: logging.LogRecord) -> str:
        fields = extra_fields(record)
        line = f"{_timestamp(record)} {record.levelname.lower()} {record.name}: "
        line += record.getMessage()
        if fields:
            line += " " + " ".join(f"{key}={value}" for key, value in fields.items())
        if record.exc_info:
            line += "\n" + self.formatException(record.exc_info)
        return line


WARNINGS_LOGGER = "py.warnings"  # the name logging.captureWarnings uses


def log_warning(message: Warning | str, category: type[Warning], filename: str, lineno: int,
                file: TextIO | None = None, line: str | None = None) -> None:
    """``warnings.showwarning`` in the shared layout: a constant message, the warning's
    text, category and source location as fields (``file`` and ``line`` are unused)."""
    logging.getLogger(WARNINGS_LOGGER).warning("python warning", extra={
        "category": category.__name__, "warning": str(message),
        "source": f"{filename}:{lineno}"})


def configure_logging(
    level: str | int = "INFO", fmt: LogFormat = "json", stream: TextIO | None = None
) -> None:
    """Send every logger's records, and Python's warnings, to stderr (or ``stream``) in
    the shared layout."""
    handler = logging.StreamHandler(stream if stream is not None else sys.stderr)
    handler.setFormatter(JsonFormatter() if fmt == "json" else TextFormatter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper() if isinstance(level, str) else level)
    warnings.showwarning = log_warning
