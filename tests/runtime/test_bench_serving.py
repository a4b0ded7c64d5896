"""Smoke run of the serving benchmark: our server at 1 and 2 clients, streamed, and the
in-process engine. The llama.cpp side is not run here: its server needs llama.cpp
compiled (benchmarks/venv.sh, minutes), which only `make bench` pays for."""

from __future__ import annotations

from pathlib import Path

from tests.bench_support import measures, run_smoke


def test_serving_benchmark_compares_concurrency_and_http_overhead(tmp_path: Path) -> None:
    rows = measures(run_smoke("serving", tmp_path), "serving")
    assert rows["2 clients vs one at a time"]["reference_name"] == "same server, 1 client"
    assert rows["HTTP overhead at 1 client"]["reference_name"] == "in-process generate"
