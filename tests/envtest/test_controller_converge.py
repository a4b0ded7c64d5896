"""The ConfigMap-copy controller converges on a real kube-apiserver.

500 sources created at once end with 500 correct copies, no key is ever reconciled by
two workers at once (the recorder checks every call), updates and deletes follow, and
/metrics, /healthz and /readyz answer with controller-runtime's metric names.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Callable
from typing import Any

import aiohttp
import pytest
from prometheus_client.parser import text_string_to_metric_families

from controller.controller import Controller
from controller.kube import CONFIGMAPS, KubeClient
from controller.leader import LeaseElector
from controller.manager import Manager
from controller.metrics import Metrics
from controller.reconcile import Reconciler, Request, Result
from kaito.devcluster import LocalCluster
from tests.envtest.configmap_copy import (
    COPIED_BY_ANNOTATION,
    COPY_OF_LABEL,
    SOURCE_LABEL,
    setup_configmap_copy,
)

pytestmark = pytest.mark.envtest


class ConcurrencyRecorder:
    """Wraps a reconciler; records every call and any key seen twice in flight."""

    def __init__(self, inner: Reconciler) -> None:
        self.inner = inner
        self.in_flight: set[str] = set()
        self.overlaps: list[str] = []
        self.calls = 0
        self.errors = 0
        self.max_parallel = 0

    async def reconcile(self, request: Request) -> Result:
        key = request.key
        if key in self.in_flight:
            self.overlaps.append(key)
        self.in_flight.add(key)
        self.calls += 1
        self.max_parallel = max(self.max_parallel, len(self.in_flight))
        try:
            return await self.inner.reconcile(request)
        except asyncio.CancelledError:
            raise
        except Exception:
            self.errors += 1
            raise
        finally:
            self.in_flight.discard(key)


def source(name: str, namespace: str, **data: str) -> dict[str, Any]:
    return {"apiVersion": "v1", "kind": "ConfigMap",
            "metadata": {"name": name, "namespace": namespace, "labels": {SOURCE_LABEL: "true"}},
            "data": data}


async def create_all(client: KubeClient, bodies: list[dict[str, Any]], parallel: int = 32) -> None:
    gate = asyncio.Semaphore(parallel)

    async def one(body: dict[str, Any]) -> None:
        async with gate:
            await client.create(CONFIGMAPS, body)

    await asyncio.gather(*(one(body) for body in bodies))


async def copies(client: KubeClient, namespace: str) -> dict[str, dict[str, Any]]:
    page = await client.list_all(CONFIGMAPS, namespace, label_selector=COPY_OF_LABEL)
    return {item["metadata"]["labels"][COPY_OF_LABEL]: item for item in page.items}


async def wait_until_async(
    check: Callable[[], Any], *, timeout: float, interval: float = 0.25, what: str = "condition"
) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    last_error: Exception | None = None
    while True:
        try:
            if await check():
                return
        except Exception as exc:  # noqa: BLE001 - the API may be restarting; keep polling
            last_error = exc
        if loop.time() > deadline:
            raise AssertionError(
                f"timed out after {timeout}s waiting for {what} (last error: {last_error!r})"
            )
        await asyncio.sleep(interval)


def expected_copies_match(
    found: dict[str, dict[str, Any]], expected: dict[str, dict[str, str]]
) -> bool:
    return set(found) == set(expected) and all(
        (found[name].get("data") or {}) == data for name, data in expected.items()
    )


@contextlib.asynccontextmanager
async def running_manager(
    control_plane: LocalCluster, namespace: str, *, workers: int,
    elector_lease: str | None = None, identity: str = "test", **manager_options: Any,
) -> AsyncIterator[tuple[Manager, Controller, ConcurrencyRecorder, KubeClient]]:
    recorders: list[ConcurrencyRecorder] = []

    def wrap(inner: Reconciler) -> Reconciler:
        recorders.append(ConcurrencyRecorder(inner))
        return recorders[-1]

    metrics = Metrics()
    async with await KubeClient.from_kubeconfig(control_plane.kubeconfig,
                                                metrics=metrics) as client:
        elector = LeaseElector(
            client, namespace=namespace, name=elector_lease, identity=identity, metrics=metrics,
        ) if elector_lease else None
        manager = Manager(client, port=0, bind_host="127.0.0.1", elector=elector,
                          metrics=metrics, **manager_options)
        controller = setup_configmap_copy(
            manager, namespace=namespace, identity=identity, workers=workers,
            reconciler_wrapper=wrap,
        )
        task = asyncio.create_task(manager.run(), name="test-manager")
        try:
            await asyncio.wait_for(manager.started.wait(), 30)
            yield manager, controller, recorders[0], client
        finally:
            manager.stop()
            await asyncio.wait_for(task, 60)


async def scrape(port: int, path: str) -> tuple[int, str]:
    async with (
        aiohttp.ClientSession() as session,
        session.get(f"http://127.0.0.1:{port}{path}") as response,
    ):
        return response.status, await response.text()


def metric_values(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    values = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            values[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return values


async def test_500_objects_converge_without_concurrent_reconciles(
    control_plane: LocalCluster, namespace: str
) -> None:
    total = 500
    async with running_manager(control_plane, namespace, workers=8,
                               elector_lease="copy-leader") as (manager, _, recorder, client):
        status, _ = await scrape(manager.bound_port or 0, "/healthz")
        assert status == 200
        await wait_until_async(lambda: asyncio.sleep(0, manager.is_ready), timeout=30,
                               what="cache sync")
        expected = {f"src-{i:03d}": {"index": str(i), "payload": "x" * 64} for i in range(total)}
        loop = asyncio.get_running_loop()
        started = loop.time()
        await create_all(client, [source(name, namespace, **data)
                                  for name, data in expected.items()])

        async def converged() -> bool:
            return expected_copies_match(await copies(client, namespace), expected)

        await wait_until_async(converged, timeout=120, interval=0.5, what="500 copies")
        elapsed = loop.time() - started
        print(f"\n500 objects converged in {elapsed:.1f}s "
              f"({total / elapsed:.0f} objects/s, {recorder.calls} reconciles, "
              f"max {recorder.max_parallel} in parallel)")
        assert recorder.overlaps == [], "a key was reconciled by two workers at once"
        assert recorder.max_parallel > 1, "the 8 workers did run in parallel"

        # Updates and deletes converge too.
        for i in range(50):
            name = f"src-{i:03d}"
            await client.patch(CONFIGMAPS, name, {"data": {"index": "changed"}}, namespace)
            expected[name] = {"index": "changed", "payload": "x" * 64}
        for i in range(450, 500):
            await client.delete(CONFIGMAPS, f"src-{i:03d}", namespace)
            del expected[f"src-{i:03d}"]
        await wait_until_async(converged, timeout=60, interval=0.5, what="updates and deletes")
        assert recorder.overlaps == []
        found = await copies(client, namespace)
        assert {c["metadata"]["annotations"][COPIED_BY_ANNOTATION] for c in found.values()} == {
            "test"
        }
        owner = found["src-000"]["metadata"]["ownerReferences"][0]
        assert owner["kind"] == "ConfigMap" and owner["name"] == "src-000"

        status, _ = await scrape(manager.bound_port or 0, "/readyz")
        assert status == 200
        ctrl = (("controller", "configmap-copy"),)
        queue = (("controller", "configmap-copy"), ("name", "configmap-copy"))

        def outcomes(values: dict[tuple[str, tuple[tuple[str, str], ...]], float]) -> float:
            return sum(value for (name, labels), value in values.items()
                       if name == "controller_runtime_reconcile_total" and ctrl[0] in labels)

        async def metrics_caught_up() -> bool:
            # Every reconcile the recorder saw finish is counted once, by its outcome.
            _, text = await scrape(manager.bound_port or 0, "/metrics")
            return not recorder.in_flight and outcomes(metric_values(text)) == recorder.calls

        await wait_until_async(metrics_caught_up, timeout=30, what="metrics = reconciles")
        status, text = await scrape(manager.bound_port or 0, "/metrics")
        assert status == 200
        values = metric_values(text)
        success = values[("controller_runtime_reconcile_total",
                          tuple(sorted((*ctrl, ("result", "success")))))]
        assert success >= 550
        assert values[("controller_runtime_reconcile_time_seconds_count", ctrl)] >= success
        # Errors (e.g. a 409 from a racing write) are counted exactly, not merely present.
        assert values[("controller_runtime_reconcile_errors_total", ctrl)] == recorder.errors
        assert values.get(("controller_runtime_reconcile_total",
                           tuple(sorted((*ctrl, ("result", "error"))))), 0) == recorder.errors
        assert values[("controller_runtime_max_concurrent_reconciles", ctrl)] == 8
        assert values[("workqueue_adds_total", queue)] >= 550
        assert values[("workqueue_depth", queue)] == 0
        assert values[("workqueue_queue_duration_seconds_count", queue)] >= 550
        assert values[("workqueue_work_duration_seconds_count", queue)] >= 550
        assert ("workqueue_retries_total", queue) in values
        assert ("workqueue_longest_running_processor_seconds", queue) in values
        assert values[("leader_election_master_status", (("name", "copy-leader"),))] == 1
        assert values[("kaito_informer_relists_total", (("resource", "configmaps"),))] >= 1
        created = sum(value for (name, labels), value in values.items()
                      if name == "rest_client_requests_total"
                      and ("code", "201") in labels and ("method", "POST") in labels)
        assert created >= 1000, "500 sources by the test and 500 copies by the controller"
