"""Smoke run of the controller benchmark on the shared control plane: a few objects
converged with 1 and 8 workers, and the cache's memory per object."""

from __future__ import annotations

from pathlib import Path

from kaito.devcluster import LocalCluster
from tests.bench_support import measures, run_smoke


def test_controller_benchmark_compares_8_workers_with_1(
        tmp_path: Path, control_plane: LocalCluster) -> None:
    document = run_smoke("controller", tmp_path, "--kubeconfig", str(control_plane.kubeconfig))
    rows = measures(document, "controller")
    (converge,) = (row for measure, row in rows.items() if measure.startswith("converge"))
    assert converge["reference_name"] == "same controller, 1 worker"
    assert rows["cache RSS per object"]["unit"] == "bytes"
