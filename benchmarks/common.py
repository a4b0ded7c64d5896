"""What every benchmark shares: the row of the table, ratio goals, and the JSON hand-off.

Each benchmark compares our component with a reference measured in the same run on the
same machine (absolute times on a shared two-core machine drift between runs; a ratio
taken minutes apart does not drift much). A benchmark script writes its rows and its raw
measurements as one JSON file (``--json PATH``); ``benchmarks/run.py`` runs them all and
prints one table.
"""

from __future__ import annotations

import json
import operator
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

_COMPARE: dict[str, Callable[[float, float], bool]] = {
    "<=": operator.le, ">=": operator.ge}


@dataclass(frozen=True)
class Goal:
    """``ratio <op> bound``, e.g. ``Goal("<=", 1.5)``; ``between`` means ``low..high``."""

    op: str
    bound: float
    high: float | None = None

    def is_met(self, ratio: float) -> bool:
        if self.op == "between":
            assert self.high is not None
            return self.bound <= ratio <= self.high
        return _COMPARE[self.op](ratio, self.bound)

    def __str__(self) -> str:
        if self.op == "between":
            return f"{self.bound:g}-{self.high:g}"
        return f"{self.op.replace('<=', '≤').replace('>=', '≥')} {self.bound:g}"


@dataclass(frozen=True)
class Row:
    """One line of the table: ours / reference, both measured in this run."""

    benchmark: str
    measure: str
    unit: str
    ours: float
    reference: float
    reference_name: str
    goal: str | None
    is_goal_met: bool | None

    @property
    def ratio(self) -> float:
        return self.ours / self.reference if self.reference else float("nan")

    def as_dict(self) -> dict[str, Any]:
        return {**asdict(self), "ratio": round(self.ratio, 3)}


def row(benchmark: str, measure: str, unit: str, ours: float, reference: float,
        reference_name: str, goal: Goal | None = None) -> Row:
    ratio = ours / reference if reference else float("nan")
    return Row(benchmark, measure, unit, round(ours, 3), round(reference, 3), reference_name,
               str(goal) if goal else None, goal.is_met(ratio) if goal else None)


def percentile(sorted_values: list[float], fraction: float) -> float:
    """Nearest-rank percentile of an already sorted, non-empty list."""
    index = min(len(sorted_values) - 1, max(0, round(fraction * len(sorted_values)) - 1))
    return sorted_values[index]


def write_result(path: Path | None, rows: list[Row], details: dict[str, Any]) -> None:
    """The hand-off to run.py (and a human-readable print when run alone)."""
    document = {"rows": [r.as_dict() for r in rows], "details": details}
    if path is not None:
        path.write_text(json.dumps(document, indent=2))
    for item in rows:
        print(f"{item.measure}: ours {item.ours} {item.unit}, {item.reference_name} "
              f"{item.reference} {item.unit}, ratio {item.ratio:.2f}"
              + (f" (goal {item.goal})" if item.goal else ""), flush=True)
