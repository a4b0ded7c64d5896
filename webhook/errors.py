"""Field errors: what a validation rule reports, worded like the API server's own errors.

A message always starts with the field path (`tuning.input.urls[0]`), then the kind of
problem (`Invalid value`, `Required value`, ...), so a user can find the line to fix.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Literal

ErrorType = Literal[
    "Invalid value", "Required value", "Unsupported value", "Forbidden", "Too many",
    "Duplicate value", "Not found",
]


@dataclass(frozen=True)
class FieldError:
    """One problem with one field."""

    path: str
    type: ErrorType
    detail: str
    value: object = None

    def __str__(self) -> str:
        shown = ""
        if self.value is not None and self.type in ("Invalid value", "Unsupported value",
                                                      "Duplicate value"):
            shown = f" {json.dumps(self.value, default=str)}:"
        return f"{self.path}: {self.type}:{shown} {self.detail}"


def join(errors: list[FieldError]) -> str:
    """All errors as one message (the API server shows it after 'denied the request:')."""
    return "; ".join(str(error) for error in errors)
