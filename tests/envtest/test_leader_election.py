"""Leader election on a real Lease, with real `python -m controller` processes.

Two managers share one Lease: exactly one reconciles; SIGKILL on the leader hands the
lease over within the lease duration plus a few seconds; SIGTERM drains and releases
the lease; a manager whose lease is taken from it stops.
"""

from __future__ import annotations

import asyncio
import datetime
import os
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from controller.kube import CONFIGMAPS, LEASES, KubeClient, NotFound
from controller.leader import LeaderElectionLost, LeaseElector, micro_time
from controller.manager import Manager
from controller.metrics import Metrics
from kaito.devcluster import LocalCluster
from kaito.devcluster.process import free_port
from tests.envtest.configmap_copy import COPIED_BY_ANNOTATION, setup_configmap_copy
from tests.envtest.test_controller_converge import (
    copies,
    metric_values,
    scrape,
    source,
    wait_until_async,
)

pytestmark = pytest.mark.envtest

REPO_ROOT = Path(__file__).resolve().parents[2]
LEASE = "copy-leader"
LEASE_DURATION_SECONDS = 15


class ControllerProcess:
    def __init__(self, identity: str, cluster: LocalCluster, namespace: str, logs: Path):
        self.identity = identity
        self.port = free_port()
        self.log_path = logs / f"controller-{identity}.log"
        self._log = self.log_path.open("w")
        argv = [
            sys.executable, "-m", "tests.envtest.copy_controller",
            "--kubeconfig", str(cluster.kubeconfig), "--namespace", namespace,
            "--leader-elect", "--lease-namespace", namespace, "--lease-name", LEASE,
            "--identity", identity, "--port", str(self.port), "--bind-host", "127.0.0.1",
            "--workers", "2", "--log-format", "text",
        ]
        env = {**os.environ, "KAITO_GRACEFUL_SHUTDOWN_SECONDS": "10"}
        self.process = subprocess.Popen(argv, cwd=REPO_ROOT, env=env, stdout=self._log,
                                        stderr=subprocess.STDOUT)

    async def metrics(self) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
        status, text = await scrape(self.port, "/metrics")
        assert status == 200
        return metric_values(text)

    async def successes(self) -> float:
        values = await self.metrics()
        return values.get(("controller_runtime_reconcile_total",
                           (("controller", "configmap-copy"), ("result", "success"))), 0.0)

    async def master_status(self) -> float:
        return (await self.metrics())[("leader_election_master_status", (("name", LEASE),))]

    def close(self) -> None:
        if self.process.poll() is None:
            self.process.kill()
            self.process.wait(10)
        self._log.close()


async def lease_holder(client: KubeClient, namespace: str) -> str:
    try:
        lease = await client.get(LEASES, LEASE, namespace)
    except NotFound:
        return ""
    return str((lease.get("spec") or {}).get("holderIdentity") or "")


async def test_one_leader_reconciles_and_hands_over_on_kill(
    control_plane: LocalCluster, namespace: str, tmp_path: Path
) -> None:
    processes = [ControllerProcess(name, control_plane, namespace, tmp_path)
                 for name in ("alpha", "beta")]
    by_identity = {p.identity: p for p in processes}
    try:
        async with await KubeClient.from_kubeconfig(control_plane.kubeconfig) as client:
            async def has_leader() -> bool:
                return await lease_holder(client, namespace) in by_identity

            await wait_until_async(has_leader, timeout=30, what="a leader")
            leader = by_identity[await lease_holder(client, namespace)]
            follower = next(p for p in processes if p is not leader)

            async def both_serving() -> bool:
                return all([(await scrape(p.port, "/readyz"))[0] == 200 for p in processes])

            await wait_until_async(both_serving, timeout=30, what="both caches synced")

            names = [f"src-{i}" for i in range(10)]
            for name in names:
                await client.create(CONFIGMAPS, source(name, namespace, v=name))

            async def copied(expected: set[str], by: str) -> bool:
                found = await copies(client, namespace)
                return set(found) >= expected and all(
                    found[n]["metadata"]["annotations"][COPIED_BY_ANNOTATION] == by
                    for n in expected)

            await wait_until_async(lambda: copied(set(names), leader.identity), timeout=30,
                                   what="copies by the leader")
            assert await leader.successes() >= 10
            assert await follower.successes() == 0, "the standby must not reconcile"
            follower_adds = (await follower.metrics()).get(
                ("workqueue_adds_total",
                 (("controller", "configmap-copy"), ("name", "configmap-copy"))), 0.0)
            assert follower_adds == 0, "the standby queues nothing until it leads"
            assert await leader.master_status() == 1
            assert await follower.master_status() == 0

            # Kill the leader without letting it release the lease.
            leader.process.send_signal(signal.SIGKILL)
            loop = asyncio.get_running_loop()
            killed_at = loop.time()

            async def follower_leads() -> bool:
                return await lease_holder(client, namespace) == follower.identity

            await wait_until_async(follower_leads, timeout=LEASE_DURATION_SECONDS + 15,
                                   interval=0.2, what="handover")
            handover_seconds = loop.time() - killed_at
            print(f"\nlease handed over {handover_seconds:.1f}s after SIGKILL")
            assert handover_seconds <= LEASE_DURATION_SECONDS + 5
            await client.create(CONFIGMAPS, source("after-handover", namespace, v="x"))
            await wait_until_async(
                lambda: copied({"after-handover"}, follower.identity), timeout=30,
                what="a copy by the new leader")
            assert await follower.master_status() == 1

            # SIGTERM: drain, release the lease, exit 0.
            follower.process.send_signal(signal.SIGTERM)
            code = await asyncio.to_thread(follower.process.wait, 30)
            assert code == 0, follower.log_path.read_text()[-3000:]
            assert await lease_holder(client, namespace) == "", "lease released on SIGTERM"
    finally:
        for process in processes:
            process.close()


async def test_a_stolen_lease_stops_the_manager(
    control_plane: LocalCluster, namespace: str
) -> None:
    async with await KubeClient.from_kubeconfig(control_plane.kubeconfig) as client:
        metrics = Metrics()
        elector = LeaseElector(client, namespace=namespace, name=LEASE, identity="victim",
                               lease_duration_seconds=4, renew_deadline_seconds=3,
                               retry_period_seconds=0.5, metrics=metrics)
        manager = Manager(client, metrics=metrics, elector=elector, port=0,
                          bind_host="127.0.0.1")
        setup_configmap_copy(manager, namespace=namespace, identity="victim",
                                          workers=1)
        task = asyncio.create_task(manager.run())

        async def leads() -> bool:
            return elector.is_leader and await lease_holder(client, namespace) == "victim"

        await wait_until_async(leads, timeout=30, what="leadership")
        lease: dict[str, Any] = await client.get(LEASES, LEASE, namespace)
        now = micro_time(datetime.datetime.now(datetime.UTC))
        lease["spec"].update(holderIdentity="intruder", renewTime=now, acquireTime=now,
                             leaseDurationSeconds=60)
        await client.replace(LEASES, lease)
        with pytest.raises(LeaderElectionLost):
            await asyncio.wait_for(task, 10)
        assert not elector.is_leader
        assert metrics.registry.get_sample_value(
            "leader_election_master_status", {"name": LEASE}) == 0
        assert await lease_holder(client, namespace) == "intruder", "never released"
