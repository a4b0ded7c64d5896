"""Smoke run of the webhook benchmark: the real app and the reference handler over TLS on
loopback, a load generator process, a few hundred requests (about 5 s)."""

from __future__ import annotations

from pathlib import Path

from benchmarks.webhook_latency import round_order
from tests.bench_support import measures, run_smoke


def test_webhook_benchmark_measures_both_endpoints_against_the_reference(
        tmp_path: Path) -> None:
    rows = measures(run_smoke("webhook", tmp_path), "webhook")
    for endpoint in ("validate", "mutate"):
        assert rows[f"/{endpoint} p99 latency"]["goal"] == "≤ 1.5"
        assert rows[f"/{endpoint} throughput"]["reference_name"] == "minimal aiohttp TLS handler"
        assert rows[f"/{endpoint} server CPU per request"]["ours"] > 0


def test_rounds_rotate_the_order_so_each_target_takes_each_place() -> None:
    names = ["reference", "validate", "mutate"]
    orders = [round_order(names, index) for index in range(3)]
    assert orders[0] == names
    for place in range(3):
        assert sorted(order[place] for order in orders) == sorted(names)
