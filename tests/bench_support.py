"""The smoke runs of `make bench`: each benchmark at tiny sizes through benchmarks/run.py,
so none rots between the (manual) full runs. They check that every row has both sides
measured, not how fast anything is (that is the table's job, on a quiet machine)."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]


def run_smoke(name: str, results_dir: Path, *extra: str, timeout: float = 600) -> dict[str, Any]:
    """`python -m benchmarks.run --smoke --only NAME`; returns its results document."""
    completed = subprocess.run(
        [sys.executable, "-m", "benchmarks.run", "--smoke", "--only", name,
         "--results-dir", str(results_dir), *extra],
        cwd=REPO, env={**os.environ, "PYTHONPATH": str(REPO)}, capture_output=True,
        text=True, timeout=timeout, check=False)
    assert completed.returncode == 0, completed.stdout[-3000:] + completed.stderr[-3000:]
    (path,) = results_dir.glob("*-smoke.json")
    document: dict[str, Any] = json.loads(path.read_text())
    machine = document["machine"]
    assert machine["cpu_model"] and machine["cores"] >= 1
    assert machine["torch_cpu_capability"] and machine["packages"]["aiohttp"]
    assert f"| {name} |" in completed.stdout  # the table was printed
    return document


def measures(document: dict[str, Any], name: str) -> dict[str, dict[str, Any]]:
    """The benchmark's rows by measure, each with both sides measured."""
    rows = document["benchmarks"][name]["rows"]
    for row in rows:
        assert row["ours"] >= 0 and row["reference"] > 0, row
        assert math.isfinite(row["ratio"]), row
    return {row["measure"]: row for row in rows}
