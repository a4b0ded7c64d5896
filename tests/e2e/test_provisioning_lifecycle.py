"""The claim reconciler's time-out path with a backend whose node never joins.

In-process on the kwok cluster: the real client, informers, manager and reconciler, and
a backend that reports capacity launched but makes no node, so the claim must end with
Registered=False (RegistrationTimeout), an Event naming the cause, its capacity deleted
and the claim gone, for its owner to make a new one.
"""

from __future__ import annotations

import asyncio
import time

import pytest

from controller.kube.client import KubeClient
from controller.manager import Manager
from controller.provisioning.backend import Launched, LaunchOutcome
from controller.provisioning.claims import Claim
from controller.provisioning.reconciler import LifecycleSettings
from controller.provisioning.setup import setup_provisioner
from kaito.devcluster import LocalCluster
from presets.catalog import GpuSku
from tests.e2e.provisioning_support import REPO, get, node_claim

pytestmark = pytest.mark.e2e


class NodeNeverJoins:
    name = "test"
    owns_node_objects = True

    def __init__(self) -> None:
        self.launched: list[str] = []
        self.deleted: list[str] = []

    async def launch(self, claim: Claim, sku: GpuSku, *, wait_seconds: float) -> LaunchOutcome:
        self.launched.append(claim.name)
        return Launched(provider_id=f"test://{claim.name}", capacity={"nvidia.com/gpu": "1"})

    async def delete(self, claim: Claim) -> bool:
        self.deleted.append(claim.name)
        return True

    async def close(self) -> None:
        return None


async def test_a_node_that_never_joins_ends_in_registration_timeout(
    cluster: LocalCluster,
) -> None:
    name = "claim-never-joins"
    await asyncio.to_thread(cluster.kubectl, "apply", "-f",
                            str(REPO / "config" / "crd" / "bases"))
    backend = NodeNeverJoins()
    async with await KubeClient.from_kubeconfig(cluster.kubeconfig) as client:
        manager = Manager(client, bind_host="127.0.0.1", port=0)
        setup_provisioner(
            manager, identity="test", workers=2, backend_name="test",
            backend_factory=lambda find_node, metrics: backend,
            settings=LifecycleSettings(registration_timeout_seconds=2, recheck_seconds=0.5))
        running = asyncio.create_task(manager.run(), name="manager")
        try:
            await asyncio.wait_for(manager.started.wait(), 30)
            await asyncio.to_thread(cluster.apply, node_claim(name))
            started = time.monotonic()
            while await asyncio.to_thread(get, cluster, "nodeclaim", name) is not None:
                assert time.monotonic() - started < 30, "the claim was not deleted"
                await asyncio.sleep(0.25)
        finally:
            manager.stop()
            await running
    # Deleting capacity is idempotent: a pass on a cache not yet showing the finalizer
    # gone may ask again.
    assert backend.launched[:1] == [name] and set(backend.deleted) == {name}
    events = await asyncio.to_thread(get, cluster, "events.events.k8s.io", "-A",
                                     "--field-selector", f"regarding.name={name}")
    timeouts = [e for e in events["items"] if e["reason"] == "RegistrationTimeout"]
    assert timeouts and "no node joined after 2 s" in timeouts[0]["note"]
