"""Warm start time of the local control plane (binaries already built).

Run: `$(bash hack/venv.sh)/bin/python benchmarks/controlplane_start.py [rounds]`
Prints seconds to a ready kube-apiserver (etcd + apiserver) and to a ready cluster
with controller-manager, scheduler and kwok, as min / median / max over the rounds.
"""

from __future__ import annotations

import statistics
import sys
import tempfile
import time
from pathlib import Path

from kaito.devcluster import LocalCluster, find_binaries


def _time_start(bin_dir: Path, *, with_nodes: bool) -> float:
    with tempfile.TemporaryDirectory() as workdir:
        cluster = LocalCluster(Path(workdir), bin_dir, with_nodes=with_nodes)
        started = time.perf_counter()
        cluster.start()
        elapsed = time.perf_counter() - started
        cluster.stop()
    return elapsed


def main() -> None:
    rounds = int(sys.argv[1]) if len(sys.argv) > 1 else 3
    bin_dir = find_binaries()
    for with_nodes, label in ((False, "etcd + kube-apiserver"),
                              (True, "+ controller-manager, scheduler, kwok")):
        samples = sorted(_time_start(bin_dir, with_nodes=with_nodes) for _ in range(rounds))
        print(f"{label:40} min {samples[0]:5.1f} s  median "
              f"{statistics.median(samples):5.1f} s  max {samples[-1]:5.1f} s  ({rounds} rounds)")


if __name__ == "__main__":
    main()
