"""Controller runtime benchmark: convergence throughput and cache memory.

1. Throughput: N source ConfigMaps exist; a manager running the ConfigMap-copy
   controller starts and we time until its own cache holds N correct copies. Run with
   1 worker and with 8 workers (separate namespaces, same control plane, same run).
2. Memory: M ConfigMaps (~300 bytes of data and a few labels each) are listed into a
   fresh informer; RSS growth divided by M is the memory per cached object.

Starts its own etcd + kube-apiserver (kaito.devcluster) unless --kubeconfig is given.
Usage: python benchmarks/controller_bench.py [--objects 1000] [--cache-objects 5000]
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import json
import logging
import tempfile
from pathlib import Path
from typing import Any

from controller.configmap_copy import COPY_OF_LABEL, SOURCE_LABEL, setup_configmap_copy
from controller.informer import Informer
from controller.kube import CONFIGMAPS, NAMESPACES, KubeClient
from controller.manager import Manager

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


async def throughput(client: KubeClient, objects: int, workers: int) -> dict[str, Any]:
    namespace = f"bench-w{workers}"
    await make_namespace(client, namespace)
    await create_many(client, [source_body(f"src-{i:05d}", namespace) for i in range(objects)])
    manager = Manager(client, port=0, bind_host="127.0.0.1")
    controller = setup_configmap_copy(manager, namespace=namespace, identity="bench",
                                      workers=workers)
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


async def memory(client: KubeClient, objects: int) -> dict[str, Any]:
    namespace = "bench-mem"
    await make_namespace(client, namespace)
    payload = "x" * 256
    bodies = [{"apiVersion": "v1", "kind": "ConfigMap",
               "metadata": {"name": f"cm-{i:05d}", "namespace": namespace,
                            "labels": {"app": "bench", "shard": str(i % 16)}},
               "data": {"payload": payload, "index": str(i)}} for i in range(objects)]
    await create_many(client, bodies)
    del bodies
    gc.collect()
    before = rss_bytes()
    informer = Informer(client, CONFIGMAPS, namespace=namespace)
    task = asyncio.create_task(informer.run())
    await informer.wait_synced()
    gc.collect()
    after = rss_bytes()
    cached = len(informer.cache)
    sample_size = len(json.dumps(informer.cache.get(f"{namespace}/cm-00000")))
    task.cancel()
    try:
        await task
    except asyncio.CancelledError:
        pass
    return {"objects": cached, "rss_growth_bytes": after - before,
            "bytes_per_object": round((after - before) / cached),
            "json_bytes_per_object": sample_size}


async def run(kubeconfig: Path, objects: int, cache_objects: int) -> dict[str, Any]:
    async with await KubeClient.from_kubeconfig(kubeconfig) as client:
        results: dict[str, Any] = {"throughput": []}
        for workers in (1, 8):
            result = await throughput(client, objects, workers)
            print(json.dumps(result), flush=True)
            results["throughput"].append(result)
        results["memory"] = await memory(client, cache_objects)
        print(json.dumps(results["memory"]), flush=True)
        return results


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--kubeconfig", type=Path)
    parser.add_argument("--objects", type=int, default=1000)
    parser.add_argument("--cache-objects", type=int, default=5000)
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    if args.kubeconfig is not None:
        results = asyncio.run(run(args.kubeconfig, args.objects, args.cache_objects))
    else:
        from kaito.devcluster import LocalCluster, find_binaries

        with tempfile.TemporaryDirectory(prefix="controller-bench-") as workdir:
            cluster = LocalCluster(Path(workdir), find_binaries())
            cluster.start()
            try:
                results = asyncio.run(run(cluster.kubeconfig, args.objects, args.cache_objects))
            finally:
                cluster.stop()
    one, eight = results["throughput"]
    print(f"converged: 1 worker {one['objects_per_second']} obj/s, "
          f"8 workers {eight['objects_per_second']} obj/s "
          f"(x{eight['objects_per_second'] / one['objects_per_second']:.1f}); "
          f"cache: {results['memory']['bytes_per_object']} bytes/object RSS "
          f"({results['memory']['json_bytes_per_object']} bytes as JSON)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
