"""The provisioner with its AKS backend, through the real Azure SDK, on the kwok cluster.

The Azure side is our local ARM server (tests/e2e/provisioning_arm.py): when a pool
succeeds it registers the kwok Node AKS would (the pool's labels and taints, a VMSS
provider ID), so the claim goes on to Ready. The provisioner is a separate process, as
in production, under its own ServiceAccount; it authenticates to ARM with a token file.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from typing import Any

import pytest

from controller.provisioning.agentpool import agent_pool_name
from kaito.devcluster import LocalCluster
from tests.e2e.provisioning_arm import ArmServer, node_for_pool
from tests.e2e.provisioning_support import (
    GPU_TAINT,
    ProvisionerProcess,
    condition,
    delete_claims,
    get,
    install,
    is_true,
    node_claim,
    wait_for,
)

pytestmark = pytest.mark.e2e

GPUS = {"Standard_NC6s_v3": 1, "Standard_NC12s_v3": 2, "Standard_NC24s_v3": 4}


class Aks:
    def __init__(self, cluster: LocalCluster, server: ArmServer,
                 provisioner: ProvisionerProcess) -> None:
        self.cluster, self.server, self.provisioner = cluster, server, provisioner

    def claim_ready(self, name: str, timeout: float = 90) -> dict[str, Any]:
        found: dict[str, Any] = wait_for(f"{name} Ready", lambda: (
            (claim := get(self.cluster, "nodeclaim", name)) and is_true(claim, "Ready")
            and claim), timeout=timeout, interval=0.1)
        return found

    def puts_for(self, claim: str) -> int:
        return self.server.count("PUT", "/agentPools/" + agent_pool_name(claim))


@pytest.fixture(scope="module")
def aks(cluster: LocalCluster, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Aks]:
    workdir = tmp_path_factory.mktemp("provisioner-aks")
    server = ArmServer(workdir, provisioning_seconds=2.0, deletion_seconds=1.0)

    def register(pool: str, properties: dict[str, Any]) -> None:
        node = node_for_pool(pool, properties, gpus=GPUS[str(properties["vmSize"])])
        cluster.kubectl("create", "-f", "-", input=json.dumps(node))

    server.on_pool_succeeded = register
    server.start()
    kubeconfig = install(cluster, workdir)
    env = {
        "KAITO_PROVISIONER__AZURE__SUBSCRIPTION_ID": "00000000-0000-0000-0000-000000000000",
        "KAITO_PROVISIONER__AZURE__RESOURCE_GROUP": "rg",
        "KAITO_PROVISIONER__AZURE__CLUSTER_NAME": "aks",
        "KAITO_PROVISIONER__AZURE__BASE_URL": server.base_url,
        "KAITO_PROVISIONER__AZURE__CA_FILE": str(server.ca_file),
        "KAITO_PROVISIONER__AZURE__TOKEN_FILE": str(server.token_file),
        "KAITO_PROVISIONER__AZURE__POLLING_INTERVAL_SECONDS": "0.5",
        "KAITO_PROVISIONER__RECHECK_SECONDS": "1",
    }
    process = ProvisionerProcess(kubeconfig, workdir / "provisioner.log",
                                 args=["--backend", "aks", "--no-leader-elect"], env=env)
    process.start()
    try:
        yield Aks(cluster, server, process)
    finally:
        claims = (get(cluster, "nodeclaims", "-l", "karpenter.sh/nodepool=kaito")
                  or {"items": []})["items"]
        try:
            if process.process is None:
                process.start()
            delete_claims(cluster, [c["metadata"]["name"] for c in claims])
        finally:
            process.stop()
            server.stop()
            print(process.tail())


def test_create_pool_node_ready_then_delete_removes_pool_and_node(aks: Aks) -> None:
    name = "claim-aks-nc12"
    started = time.monotonic()
    aks.cluster.apply(node_claim(name, "Standard_NC12s_v3", labels={"app": "aks-e2e"}))
    claim = aks.claim_ready(name)
    elapsed = time.monotonic() - started
    print(f"claim to Ready through the ARM server: {elapsed:.1f} s "
          f"(pool provisioning takes {aks.server.provisioning_seconds} s)")
    pool = aks.server.pools[agent_pool_name(name)]
    assert pool.state == "Succeeded"
    assert pool.body["properties"]["vmSize"] == "Standard_NC12s_v3"
    assert pool.body["properties"]["nodeTaints"] == ["sku=gpu:NoSchedule"]
    status = claim["status"]
    assert status["providerID"].startswith("azure:///subscriptions/")
    assert status["capacity"]["nvidia.com/gpu"] == "2"
    node = get(aks.cluster, "node", status["nodeName"])
    assert node["spec"]["providerID"] == status["providerID"]
    assert node["metadata"]["labels"]["app"] == "aks-e2e"
    assert node["metadata"]["labels"]["kubernetes.azure.com/agentpool"] == agent_pool_name(name)
    assert GPU_TAINT in node["spec"]["taints"]
    assert aks.puts_for(name) == 1
    assert aks.provisioner.metric("kaito_provisioner_cloud_requests_total", backend="aks",
                                  method="PUT", code="201") >= 1

    aks.cluster.kubectl("delete", "nodeclaim", name, "--wait=false")
    wait_for("the claim gone", lambda: get(aks.cluster, "nodeclaim", name) is None,
             timeout=60)
    assert agent_pool_name(name) not in aks.server.pools
    assert aks.server.count("DELETE", "/agentPools/" + agent_pool_name(name)) >= 1
    assert get(aks.cluster, "node", status["nodeName"]) is None


def test_quota_exceeded_is_a_claim_condition_without_a_retry_storm(aks: Aks) -> None:
    name = "claim-aks-quota"
    message = "Operation could not be completed as it results in exceeding approved " \
        "standardNCSv3Family Cores quota. Current Limit: 0"
    aks.server.faults.refuse_at_put["Standard_NC24s_v3"] = ("QuotaExceeded", message)
    aks.cluster.apply(node_claim(name, "Standard_NC24s_v3"))
    launched = wait_for("Launched=False", lambda: (
        (found := condition(get(aks.cluster, "nodeclaim", name), "Launched"))
        and found["status"] == "False" and found), timeout=60)
    assert launched["reason"] == "QuotaExceeded" and launched["message"] == message
    time.sleep(5)  # several recheck periods
    assert aks.puts_for(name) == 1
    events = get(aks.cluster, "events.events.k8s.io", "-A",
                 "--field-selector", f"regarding.name={name}")["items"]
    assert any(e["reason"] == "QuotaExceeded" for e in events)
    # Its owner deletes the refused claim and makes a new one at once: the provisioner
    # remembers the refusal for this VM size and does not ask ARM again.
    delete_claims(aks.cluster, [name])
    del aks.server.faults.refuse_at_put["Standard_NC24s_v3"]
    aks.cluster.apply(node_claim(name, "Standard_NC24s_v3"))
    again = wait_for("Launched=False again", lambda: (
        (found := condition(get(aks.cluster, "nodeclaim", name), "Launched"))
        and found["status"] == "False" and found), timeout=60)
    assert again["reason"] == "QuotaExceeded"
    assert aks.puts_for(name) == 1
    delete_claims(aks.cluster, [name])
    # Neither refusal made a pool: deleting the claims asked ARM nothing.
    assert aks.server.count("DELETE", "/agentPools/" + agent_pool_name(name)) == 0


def test_throttling_and_a_dropped_connection_mid_operation_are_recovered(aks: Aks) -> None:
    name = "claim-aks-faults"
    aks.server.faults.throttle_next = 2
    aks.server.faults.throttle_retry_after_seconds = 1
    # The SDK retries a broken read three times: four drops make the poller give up.
    aks.server.faults.drop_polls = 4
    aks.cluster.apply(node_claim(name))
    aks.claim_ready(name, timeout=120)
    statuses = [c.status for c in aks.server.calls]
    assert statuses.count(429) == 2
    assert aks.server.faults.drop_polls == 0
    assert aks.puts_for(name) == 1
    assert aks.provisioner.metric("kaito_provisioner_cloud_requests_total",
                                  code="<error>") >= 1
    delete_claims(aks.cluster, [name])


def test_a_restart_mid_create_makes_no_second_pool(aks: Aks) -> None:
    name = "claim-aks-restart"
    aks.server.provisioning_seconds = 6.0
    try:
        aks.cluster.apply(node_claim(name))
        wait_for("the PUT", lambda: aks.puts_for(name) == 1, timeout=60, interval=0.05)
        aks.provisioner.kill()
        aks.provisioner.start()
        aks.claim_ready(name, timeout=120)
        assert aks.puts_for(name) == 1
        assert len([p for p in aks.server.pools if p == agent_pool_name(name)]) == 1
    finally:
        aks.server.provisioning_seconds = 2.0
    delete_claims(aks.cluster, [name])


def test_a_launch_time_out_names_the_cause_and_deletes_the_claim(aks: Aks) -> None:
    name = "claim-aks-slow"
    aks.server.provisioning_seconds = 60.0
    aks.provisioner.kill()
    aks.provisioner.env["KAITO_PROVISIONER__LAUNCH_TIMEOUT_SECONDS"] = "4"
    aks.provisioner.start()
    try:
        aks.cluster.apply(node_claim(name))
        wait_for("the claim deleted", lambda: get(aks.cluster, "nodeclaim", name) is None,
                 timeout=60)
        events = get(aks.cluster, "events.events.k8s.io", "-A",
                     "--field-selector", f"regarding.name={name}")["items"]
        timeout_events = [e for e in events if e["reason"] == "LaunchTimeout"]
        assert timeout_events and "being created" in timeout_events[0]["note"]
        assert agent_pool_name(name) not in aks.server.pools  # the capacity went with it
    finally:
        aks.server.provisioning_seconds = 2.0
        aks.provisioner.kill()
        del aks.provisioner.env["KAITO_PROVISIONER__LAUNCH_TIMEOUT_SECONDS"]
        aks.provisioner.start()
