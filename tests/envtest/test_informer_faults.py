"""The informer survives kube-apiserver and etcd restarts, and 410 Gone.

Each outage test runs the ConfigMap-copy controller on a private control plane, stops a
component mid-run, changes objects while the informer is still reconnecting (its
backoff outlasts the restart), and checks that the controller converges on every change
with no key ever reconciled concurrently and nothing lost afterwards.
"""

from __future__ import annotations

import asyncio
import contextlib
from typing import Any

import pytest

from controller.informer import Informer
from controller.kube import CONFIGMAPS, KubeClient, KubeError
from controller.metrics import Metrics
from kaito.devcluster import LocalCluster
from tests.envtest.test_controller_converge import (
    copies,
    create_all,
    expected_copies_match,
    running_manager,
    source,
    wait_until_async,
)

pytestmark = pytest.mark.envtest


async def retrying(action: Any, attempts: int = 40) -> Any:
    """Test-side writes right after a restart may hit a dead pooled connection."""
    for attempt in range(attempts):
        try:
            return await action()
        except KubeError:
            if attempt == attempts - 1:
                raise
            await asyncio.sleep(0.25)
    return None


async def outage_scenario(
    cluster: LocalCluster, namespace: str, stop: Any, start: Any
) -> None:
    cluster.kubectl("create", "namespace", namespace)
    options = {"backoff_max_seconds": 4.0, "read_timeout_seconds": 10.0,
               "inactivity_timeout_seconds": 15.0}
    async with running_manager(cluster, namespace, workers=4,
                               informer_options=options) as (manager, _, recorder, client):
        expected = {f"src-{i:02d}": {"v": "1"} for i in range(20)}
        await create_all(client, [source(n, namespace, **d) for n, d in expected.items()])

        async def converged() -> bool:
            return expected_copies_match(await copies(client, namespace), expected)

        await wait_until_async(converged, timeout=60, what="initial convergence")
        informer = manager.informers[0]
        watches_before = informer.watch_count

        await asyncio.to_thread(stop)
        await asyncio.sleep(3)  # the informer notices and starts backing off
        await asyncio.to_thread(start)

        # Changes made while the informer is still reconnecting.
        for i in range(10):
            name = f"src-{i:02d}"
            await retrying(lambda n=name: client.patch(
                CONFIGMAPS, n, {"data": {"v": "during-outage"}}, namespace))
            expected[name] = {"v": "during-outage"}
        for i in range(15, 20):
            name = f"src-{i:02d}"
            await retrying(lambda n=name: client.delete(CONFIGMAPS, n, namespace))
            del expected[name]
        for i in range(20, 25):
            name = f"src-{i:02d}"
            await retrying(lambda n=name: client.create(CONFIGMAPS, source(n, namespace, v="new")))
            expected[name] = {"v": "new"}

        await wait_until_async(converged, timeout=60, what="convergence after the outage")
        assert informer.watch_count > watches_before, "the watch was re-established"

        # Nothing is lost after recovery: a fresh change still flows through the watch.
        await client.patch(CONFIGMAPS, "src-00", {"data": {"v": "after"}}, namespace)
        expected["src-00"] = {"v": "after"}
        await wait_until_async(converged, timeout=30, what="a change after recovery")
        assert recorder.overlaps == []


async def test_apiserver_restart_mid_run(private_control_plane: LocalCluster) -> None:
    cluster = private_control_plane
    await outage_scenario(cluster, "outage-apiserver", cluster.stop_apiserver,
                          cluster.start_apiserver)


async def test_etcd_restart_mid_run(private_control_plane: LocalCluster) -> None:
    cluster = private_control_plane
    await outage_scenario(cluster, "outage-etcd", cluster.stop_etcd, cluster.start_etcd)


async def test_410_gone_relists_without_hot_loop(private_control_plane: LocalCluster) -> None:
    """Compact etcd, restart kube-apiserver: its fresh watch cache starts past every
    version the informer knows, so the resumed watch gets 410 Gone and must relist -
    once, without a reconnect loop - and then keep delivering events."""
    cluster = private_control_plane
    namespace = "gone"
    cluster.kubectl("create", "namespace", namespace)
    metrics = Metrics()
    async with await KubeClient.from_kubeconfig(cluster.kubeconfig) as client:
        await create_all(client, [source(f"before-{i}", namespace) for i in range(5)])
        informer = Informer(client, CONFIGMAPS, namespace=namespace, metrics=metrics,
                            backoff_max_seconds=2.0)
        task = asyncio.create_task(informer.run())
        try:
            await asyncio.wait_for(informer.wait_synced(), 30)
            assert informer.relist_count == 1
            await asyncio.to_thread(cluster.compact_etcd)
            await asyncio.to_thread(cluster.stop_apiserver)
            await asyncio.to_thread(cluster.start_apiserver)
            # Written before the informer is back: only the relist can bring it in.
            await retrying(lambda: client.create(CONFIGMAPS, source("during", namespace)))
            await wait_until_async(lambda: asyncio.sleep(0, informer.relist_count == 2),
                                   timeout=30, what="the relist after 410")
            await wait_until_async(
                lambda: asyncio.sleep(0, f"{namespace}/during" in informer.cache),
                timeout=30, what="the object written during the outage")
            watches_after_relist = informer.watch_count
            await client.create(CONFIGMAPS, source("after", namespace))
            await wait_until_async(
                lambda: asyncio.sleep(0, f"{namespace}/after" in informer.cache),
                timeout=30, what="a watch event after the relist")
            await asyncio.sleep(2)
            assert informer.relist_count == 2, "one relist, no loop"
            assert informer.watch_count - watches_after_relist <= 1, "no hot reconnect loop"
            assert not task.done(), "the informer is still running"
            assert len(informer.cache) == 7
            gone = metrics.registry.get_sample_value(
                "kaito_informer_watch_restarts_total", {"resource": "configmaps", "reason": "gone"})
            assert gone == 1
        finally:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
