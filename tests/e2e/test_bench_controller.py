"""Smoke run of the controller benchmark on the shared kwok cluster: a few Workspaces made
ready by the production controller with 1 and 8 workers, the writes each took, a
restarted controller's no-op resync, memory per cached object, and the webhook's latency
idle and while the 8-worker run converges. Sizes are tiny; the figures are the table's job."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from kaito.devcluster import LocalCluster
from tests.bench_support import measures, run_smoke

pytestmark = pytest.mark.e2e


def test_controller_benchmark_runs_workspaces_through_the_reconciler(
        tmp_path: Path, cluster: LocalCluster) -> None:
    document = run_smoke("controller", tmp_path, "--kubeconfig", str(cluster.kubeconfig))
    rows = measures(document, "controller")
    (converge,) = (r for measure, r in rows.items() if "to ready, 8 workers" in measure)
    assert converge["reference_name"] == "same controller, 1 worker"
    details = document["benchmarks"]["controller"]["details"]
    for run in details["runs"]["1"] + details["runs"]["8"]:
        assert run["writes_per_workspace"] > 0
    assert details["resync"]["resync_writes"] == 0  # a restart writes nothing
    assert details["resync"]["cached_objects"] > details["workspaces"]
    assert details["webhook"]["idle"]["requests"] > 0
    assert details["webhook"]["loaded"]["requests"] > 0
    # What the benchmark made is gone from the shared cluster.
    namespaces = json.loads(cluster.kubectl("get", "namespaces", "-o", "json").stdout)
    leftover = [n["metadata"]["name"] for n in namespaces["items"]
                if n["metadata"]["name"].startswith("bench-")
                and n.get("status", {}).get("phase") != "Terminating"]
    assert leftover == []
    nodes = json.loads(cluster.kubectl("get", "nodes", "-o", "json").stdout)
    assert not [n for n in nodes["items"] if n["metadata"]["name"].startswith("bench-")]
