"""The serving benchmark: a smoke run through benchmarks/run.py (our server at 1 and 2
clients, streamed, and the in-process engine), and how rounds become rows. The llama.cpp
side is not run here: its server needs llama.cpp compiled (benchmarks/venv.sh, minutes),
which only `make bench` pays for."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from benchmarks.serving_bench import alternate, rows, summarise
from tests.bench_support import measures, run_smoke


def test_serving_benchmark_compares_concurrency_and_http_overhead(tmp_path: Path) -> None:
    rows = measures(run_smoke("serving", tmp_path), "serving")
    assert rows["2 clients vs one at a time"]["reference_name"] == "same server, 1 client"
    assert rows["HTTP overhead at 1 client"]["reference_name"] == "in-process generate"


def test_rounds_alternate_which_side_and_phase_goes_first() -> None:
    assert alternate(["ours", "llama_cpp"], 0) == ["ours", "llama_cpp"]
    assert alternate(["ours", "llama_cpp"], 1) == ["llama_cpp", "ours"]
    assert alternate([1, 4, 16], 2) == [1, 4, 16]


def _phase(tokens_per_second: float) -> dict[str, Any]:
    return {"tokens_per_second": tokens_per_second}


def test_rows_are_medians_over_rounds_so_one_disturbed_round_does_not_move_them() -> None:
    rounds = {
        "ours": {"1": [_phase(20), _phase(2), _phase(22)],
                 "16": [_phase(70), _phase(66), _phase(7)]},
        "llama_cpp": {"1": [_phase(80), _phase(75), _phase(8)],
                      "16": [_phase(40), _phase(4), _phase(44)]},
    }
    first_tokens = {"ours": [0.1, 0.2, 0.3, 9.0], "llama_cpp": [0.5, 0.6, 0.7, 0.8]}
    pairs = [{"http_ms_per_token": h, "engine_ms_per_token": e}
             for h, e in [(31, 30), (300, 29), (33, 32), (30, 31), (29, 300)]]
    details = summarise(rounds, first_tokens, pairs, 16)

    by_measure = {r.measure: r for r in rows(details)}
    concurrency = by_measure["16 clients vs one at a time"]
    assert (concurrency.ours, concurrency.reference) == (66, 20)
    assert concurrency.is_goal_met
    assert by_measure["1 client(s), generated tokens/s"].reference == 75
    assert by_measure["16 client(s), generated tokens/s"].reference == 40
    overhead = by_measure["HTTP overhead at 1 client"]
    assert (overhead.ours, overhead.reference) == (31, 31)
    assert overhead.is_goal_met
    assert details["ours"]["streamed"]["samples"] == 4
    assert details["ours"]["phases"]["16"]["rounds"][2] == _phase(7)  # raw rounds kept
