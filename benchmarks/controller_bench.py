"""Controller runtime benchmark: convergence throughput and cache memory.

1. Throughput: N source ConfigMaps exist; a manager running the ConfigMap-copy
   controller starts and we time until its own cache holds N correct copies. Runs
   alternate 1 worker and 8 workers (fresh namespaces, same control plane, same run),
   `--repeat` times each; medians are reported. `--reconcile-latency-ms` adds a sleep
   to every reconcile, standing in for a slow cloud API call.
2. Memory: M ConfigMaps (~300 bytes of data and a few labels each) are listed into an
   informer in a fresh child process; its RSS growth divided by M is the memory per
   cached object (a fresh process, so freed heap from creating them cannot hide it).

Starts its own etcd + kube-apiserver (kaito.devcluster) unless --kubeconfig is given.
Usage: python -m benchmarks.controller_bench [--objects 1000] [--cache-objects 5000]
       [--repeat 3] [--reconcile-latency-ms 0] [--json out.json]
Rows: 8 workers' throughput against 1 worker's (goal ≥ 4), and the cache's RSS per
object against the object's own size as JSON.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import json
import logging
import statistics
import sys
import tempfile
import tracemalloc
from pathlib import Path
from typing import Any

# Run as a script, `benchmarks/` is sys.path[0]: measure this checkout, not whichever
# one the shared editable install points at.
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.common import Goal, Row, row, write_result
from controller.cache import Cache
from controller.configmap_copy import COPY_OF_LABEL, SOURCE_LABEL, setup_configmap_copy
from controller.informer import Informer
from controller.kube import CONFIGMAPS, NAMESPACES, KubeClient
from controller.manager import Manager
from controller.reconcile import Reconciler, Request, Result

log = logging.getLogger("bench")


def rss_bytes() -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise RuntimeError("no VmRSS in /proc/self/status")


async def create_many(client: KubeClient, bodies: list[dict[str, Any]], parallel: int = 32) -> None:
    gate = asyncio.Semaphore(parallel)

    async def one(body: dict[str, Any]) -> None:
        async with gate:
            await client.create(CONFIGMAPS, body)

    await asyncio.gather(*(one(body) for body in bodies))


async def make_namespace(client: KubeClient, name: str) -> None:
    await client.create(NAMESPACES, {"apiVersion": "v1", "kind": "Namespace",
                                     "metadata": {"name": name}})


def source_body(name: str, namespace: str) -> dict[str, Any]:
    return {"apiVersion": "v1", "kind": "ConfigMap",
            "metadata": {"name": name, "namespace": namespace,
                         "labels": {SOURCE_LABEL: "true"}},
            "data": {"model": "phi-3-mini", "index": name}}


class Delayed:
    """Adds a fixed latency to every reconcile (a stand-in for a slow external call)."""

    def __init__(self, inner: Reconciler, latency_seconds: float) -> None:
        self.inner = inner
        self.latency_seconds = latency_seconds

    async def reconcile(self, request: Request) -> Result:
        await asyncio.sleep(self.latency_seconds)
        return await self.inner.reconcile(request)


async def throughput(
    client: KubeClient, objects: int, workers: int, run: int, latency_seconds: float
) -> dict[str, Any]:
    namespace = f"bench-w{workers}-r{run}"
    await make_namespace(client, namespace)
    await create_many(client, [source_body(f"src-{i:05d}", namespace) for i in range(objects)])
    manager = Manager(client, port=0, bind_host="127.0.0.1")
    controller = setup_configmap_copy(
        manager, namespace=namespace, identity="bench", workers=workers,
        reconciler_wrapper=(lambda inner: Delayed(inner, latency_seconds))
        if latency_seconds else None,
    )
    informer = manager.informer(CONFIGMAPS, namespace)
    loop = asyncio.get_running_loop()
    started = loop.time()
    task = asyncio.create_task(manager.run())
    try:
        while True:
            copy_count = sum(
                1 for obj in informer.cache.objects(namespace)
                if COPY_OF_LABEL in (obj["metadata"].get("labels") or {})
            )
            is_idle = len(controller.queue) == 0 and not controller.queue.processing
            if copy_count == objects and is_idle:
                break
            await asyncio.sleep(0.05)
        elapsed = loop.time() - started
    finally:
        manager.stop()
        await task
    reconciles = manager.metrics.registry.get_sample_value(
        "controller_runtime_reconcile_total",
        {"controller": "configmap-copy", "result": "success"}) or 0
    return {"workers": workers, "objects": objects, "seconds": round(elapsed, 2),
            "objects_per_second": round(objects / elapsed, 1), "reconciles": int(reconciles)}


async def create_cache_objects(client: KubeClient, namespace: str, objects: int) -> None:
    await make_namespace(client, namespace)
    payload = "x" * 256
    bodies = [{"apiVersion": "v1", "kind": "ConfigMap",
               "metadata": {"name": f"cm-{i:05d}", "namespace": namespace,
                            "labels": {"app": "bench", "shard": str(i % 16)}},
               "data": {"payload": payload, "index": str(i)}} for i in range(objects)]
    await create_many(client, bodies)


async def measure_cache(kubeconfig: Path, namespace: str) -> dict[str, Any]:
    """Runs in a fresh child process: RSS before and after one informer syncs."""
    client = await KubeClient.from_kubeconfig(kubeconfig)
    await client.get(NAMESPACES, namespace)  # warm the connection and the code paths
    gc.collect()
    before = rss_bytes()
    informer = Informer(client, CONFIGMAPS, namespace=namespace)
    task = asyncio.create_task(informer.run())
    await informer.wait_synced()
    gc.collect()
    after = rss_bytes()
    # Live Python bytes held by the cache (RSS also counts allocator slack left by the
    # transient list pages): build a second cache under tracemalloc from the first.
    tracemalloc.start()
    copy = Cache()
    for obj in informer.cache:
        copy.upsert(json.loads(json.dumps(obj)))
    live_bytes = tracemalloc.get_traced_memory()[0]
    tracemalloc.stop()
    cached = len(informer.cache)
    sample_size = len(json.dumps(informer.cache.get(f"{namespace}/cm-00000")))
    task.cancel()
    try:
        await task
    except asyncio.CancelledError:
        pass
    await client.close()
    return {"objects": cached, "rss_growth_bytes": after - before,
            "bytes_per_object": round((after - before) / cached),
            "live_bytes_per_object": round(live_bytes / cached),
            "json_bytes_per_object": sample_size}


async def run(
    kubeconfig: Path, objects: int, cache_objects: int, repeat: int, latency_seconds: float
) -> dict[str, Any]:
    async with await KubeClient.from_kubeconfig(kubeconfig) as client:
        runs: dict[int, list[float]] = {1: [], 8: []}
        for run_index in range(repeat):
            for workers in (1, 8):
                result = await throughput(client, objects, workers, run_index, latency_seconds)
                print(json.dumps(result), flush=True)
                runs[workers].append(result["objects_per_second"])
        await create_cache_objects(client, "bench-mem", cache_objects)
    child = await asyncio.create_subprocess_exec(
        sys.executable, __file__, "--measure-cache", "bench-mem", "--kubeconfig", str(kubeconfig),
        stdout=asyncio.subprocess.PIPE,
    )
    stdout, _ = await child.communicate()
    if child.returncode != 0:
        raise RuntimeError(f"cache measurement failed with exit code {child.returncode}")
    memory = json.loads(stdout.decode().strip().splitlines()[-1])
    print(json.dumps(memory), flush=True)
    return {"median_objects_per_second": {w: statistics.median(v) for w, v in runs.items()},
            "runs": runs, "memory": memory}


def rows(results: dict[str, Any]) -> list[Row]:
    one, eight = (results["median_objects_per_second"][w] for w in (1, 8))
    latency = results["reconcile_latency_ms"]
    memory = results["memory"]
    where = f", +{latency:g} ms per reconcile" if latency else ""
    return [
        row("controller", f"converge {results['objects']} objects, 8 workers{where}", "obj/s",
            eight, one, "same controller, 1 worker", Goal(">=", 4)),
        row("controller", "cache RSS per object", "bytes", memory["bytes_per_object"],
            memory["json_bytes_per_object"], "the object as JSON"),
    ]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--kubeconfig", type=Path)
    parser.add_argument("--objects", type=int, default=1000)
    parser.add_argument("--cache-objects", type=int, default=5000)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--reconcile-latency-ms", type=float, default=0.0)
    parser.add_argument("--json", type=Path, help="write rows and measurements here")
    parser.add_argument("--measure-cache", metavar="NAMESPACE", help=argparse.SUPPRESS)
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    if args.measure_cache:
        print(json.dumps(asyncio.run(measure_cache(args.kubeconfig, args.measure_cache))))
        return 0
    options = (args.objects, args.cache_objects, args.repeat, args.reconcile_latency_ms / 1000)
    if args.kubeconfig is not None:
        results = asyncio.run(run(args.kubeconfig, *options))
    else:
        from kaito.devcluster import LocalCluster, find_binaries

        with tempfile.TemporaryDirectory(prefix="controller-bench-") as workdir:
            cluster = LocalCluster(Path(workdir), find_binaries())
            cluster.start()
            try:
                results = asyncio.run(run(cluster.kubeconfig, *options))
            finally:
                cluster.stop()
    results["objects"] = args.objects
    results["reconcile_latency_ms"] = args.reconcile_latency_ms
    write_result(args.json, rows(results), results)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
