"""The AKS backend through the real Azure SDK against a local ARM server.

The SDK's pipeline (auth, retries, Retry-After), its LRO poller and its models are the
real ones; only the endpoint is ours (tests/e2e/provisioning_arm.py).
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from prometheus_client import CollectorRegistry

from controller.kube.resources import KubeObject
from controller.provisioning.agentpool import agent_pool_name
from controller.provisioning.aks import AksBackend, TokenFileCredential, default_credential
from controller.provisioning.backend import CloudUnavailable, Launched, LaunchFailed, Pending
from controller.provisioning.claims import Claim, parse_claim
from controller.provisioning.metrics import ProvisioningMetrics
from controller.provisioning.settings import AzureSettings
from presets.catalog import GpuSku, load_catalog
from tests.e2e.provisioning_arm import ArmServer, node_for_pool

SKU = "Standard_NC6s_v3"


def _claim(name: str = "ws0123456789-0", sku: str = SKU) -> Claim:
    return parse_claim({
        "apiVersion": "karpenter.sh/v1", "kind": "NodeClaim",
        "metadata": {"name": name, "uid": "u-1", "resourceVersion": "1",
                     "creationTimestamp": "2026-11-30T06:00:00Z",
                     "labels": {"karpenter.sh/nodepool": "kaito", "app": "phi",
                                "kaito.sh/workspace": "w"}},
        "spec": {"requirements": [{"key": "node.kubernetes.io/instance-type",
                                   "operator": "In", "values": [sku]}],
                 "taints": [{"key": "sku", "value": "gpu", "effect": "NoSchedule"}]},
    })


def _sku(name: str = SKU) -> GpuSku:
    found = load_catalog().sku(name)
    assert found is not None
    return found


class Harness:
    """The server, a node lister the server's callback fills, and backends on top."""

    def __init__(self, server: ArmServer) -> None:
        self.server = server
        self.nodes: dict[str, KubeObject] = {}
        self.registry = CollectorRegistry()
        self.metrics = ProvisioningMetrics(self.registry, "aks")
        server.on_pool_succeeded = self._register
        server.on_pool_deleted = lambda pool: None

    def _register(self, pool: str, properties: dict[str, Any]) -> None:
        node = node_for_pool(pool, properties, gpus=1)
        self.nodes[properties["nodeLabels"]["kaito.sh/nodeclaim"]] = node

    def backend(self, **overrides: Any) -> AksBackend:
        settings = AzureSettings(
            subscription_id="sub-1", resource_group="rg", cluster_name="aks",
            base_url=self.server.base_url, ca_file=self.server.ca_file,
            polling_interval_seconds=0.2, **overrides)
        return AksBackend(settings, self.nodes.get,
                          credential=TokenFileCredential(self.server.token_file),
                          metrics=self.metrics, client_options={"retry_backoff_factor": 0.05})

    def calls(self, code: str) -> float:
        value = 0.0
        for metric in self.metrics.cloud_requests.collect():
            for sample in metric.samples:
                if sample.name.endswith("_total") and sample.labels["code"] == code:
                    value += sample.value
        return value


@pytest.fixture
def arm(tmp_path: Path) -> Iterator[Harness]:
    server = ArmServer(tmp_path, provisioning_seconds=0.6, deletion_seconds=0.3)
    server.start()
    try:
        yield Harness(server)
    finally:
        server.stop()


async def _launch_until_done(backend: AksBackend, claim: Claim, tries: int = 40) -> Any:
    outcome: Any = None
    for _ in range(tries):
        outcome = await backend.launch(claim, _sku(), wait_seconds=60)
        if not isinstance(outcome, Pending):
            return outcome
        await asyncio.sleep(outcome.retry_after_seconds)
    return outcome


async def test_create_waits_for_the_pool_and_its_node_then_delete_removes_it(
    arm: Harness,
) -> None:
    backend = arm.backend()
    claim = _claim()
    try:
        outcome = await backend.launch(claim, _sku(), wait_seconds=60)
        assert isinstance(outcome, Launched), outcome
        pool = arm.server.pools[agent_pool_name(claim.name)]
        assert pool.state == "Succeeded"
        properties = pool.body["properties"]
        assert properties["vmSize"] == SKU and properties["count"] == 1
        assert properties["nodeTaints"] == ["sku=gpu:NoSchedule"]
        assert properties["nodeLabels"]["app"] == "phi"
        assert properties["nodeLabels"]["kaito.sh/nodeclaim"] == claim.name
        assert properties["gpuProfile"] == {"driver": "Install"}
        assert outcome.provider_id.startswith("azure:///subscriptions/")
        assert outcome.capacity["nvidia.com/gpu"] == "1"
        assert arm.server.count("PUT") == 1
        assert arm.server.count("GET", "/operations/op-1") >= 1  # polled as the SDK does

        assert await backend.delete(claim) is True
        assert agent_pool_name(claim.name) not in arm.server.pools
        assert await backend.delete(claim) is True  # already gone: 204
        assert arm.calls("201") == 1 and arm.calls("202") == 1
    finally:
        await backend.close()


async def test_quota_exceeded_is_a_refusal_with_arm_s_message_and_one_call(
    arm: Harness,
) -> None:
    message = "Operation could not be completed as it results in exceeding approved " \
        "standardNCSv3Family Cores quota."
    arm.server.faults.refuse_at_put[SKU] = ("QuotaExceeded", message)
    backend = arm.backend()
    try:
        outcome = await backend.launch(_claim(), _sku(), wait_seconds=60)
        # Refused at the create: no pool exists, so deleting the claim needs no DELETE.
        assert outcome == LaunchFailed("QuotaExceeded", message, made_nothing=True)
        assert arm.server.count("PUT") == 1  # the SDK does not retry a 400
        assert arm.calls("400") == 1
    finally:
        await backend.close()


async def test_allocation_failure_at_the_end_of_the_operation_is_a_refusal(
    arm: Harness,
) -> None:
    arm.server.faults.fail_operation[SKU] = ("AllocationFailed", "no capacity in eastus")
    backend = arm.backend()
    try:
        outcome = await backend.launch(_claim(), _sku(), wait_seconds=60)
        assert isinstance(outcome, LaunchFailed)
        assert outcome.reason == "AllocationFailed"
        assert "no capacity" in outcome.message
        assert not outcome.made_nothing  # the failed pool exists and must be deleted
        # The next pass finds the failed pool and reports it; no second PUT.
        again = await backend.launch(_claim(), _sku(), wait_seconds=60)
        assert isinstance(again, LaunchFailed)
        assert arm.server.count("PUT") == 1
    finally:
        await backend.close()


async def test_a_429_retry_after_is_honoured_by_the_sdk(arm: Harness) -> None:
    arm.server.faults.throttle_next = 1
    arm.server.faults.throttle_retry_after_seconds = 2
    backend = arm.backend()
    try:
        outcome = await backend.launch(_claim(), _sku(), wait_seconds=60)
        assert isinstance(outcome, Launched), outcome
        first, second = arm.server.calls[0], arm.server.calls[1]
        assert (first.status, second.method) == (429, "GET")
        assert second.at - first.at >= 1.9
    finally:
        await backend.close()


async def test_throttling_past_the_sdk_retries_is_pending_with_retry_after(
    arm: Harness,
) -> None:
    arm.server.faults.throttle_next = 100
    arm.server.faults.throttle_retry_after_seconds = 0
    backend = arm.backend()
    try:
        outcome = await backend.launch(_claim(), _sku(), wait_seconds=60)
        assert isinstance(outcome, Pending) and outcome.reason == "Throttled"
        assert arm.server.count("PUT") == 0
    finally:
        await backend.close()


async def test_a_connection_dropped_mid_operation_recovers_on_the_next_pass(
    arm: Harness,
) -> None:
    arm.server.faults.drop_polls = 100  # more than the SDK's own retries
    backend = arm.backend()
    claim = _claim()
    try:
        with pytest.raises(CloudUnavailable):
            await backend.launch(claim, _sku(), wait_seconds=60)
        arm.server.faults.drop_polls = 0
        outcome = await _launch_until_done(backend, claim)
        assert isinstance(outcome, Launched), outcome
        assert arm.server.count("PUT") == 1
        assert arm.calls("<error>") >= 1
    finally:
        await backend.close()


async def test_a_restarted_backend_finds_the_pool_it_started(arm: Harness) -> None:
    arm.server.provisioning_seconds = 1.5
    first = arm.backend(max_operation_wait_seconds=0.3)
    claim = _claim()
    try:
        outcome = await first.launch(claim, _sku(), wait_seconds=60)
        assert isinstance(outcome, Pending) and outcome.reason == "Creating"
    finally:
        await first.close()
    second = arm.backend()
    try:
        outcome = await _launch_until_done(second, claim)
        assert isinstance(outcome, Launched), outcome
        assert arm.server.count("PUT") == 1
    finally:
        await second.close()


def test_pool_names_are_valid_for_aks_and_distinct() -> None:
    names = {agent_pool_name(f"ws{i:010x}-{j}") for i in range(200) for j in range(3)}
    assert len(names) == 600
    assert all(len(n) <= 12 and n[0].isalpha() and n.isalnum() and n.islower()
               for n in names)


@pytest.mark.parametrize(("federated", "expected"), [
    (True, "WorkloadIdentityCredential"), (False, "EnvironmentCredential")])
async def test_credentials_are_workload_identity_in_a_pod_else_the_environment(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, federated: bool, expected: str,
) -> None:
    for variable in ("AZURE_FEDERATED_TOKEN_FILE", "AZURE_CLIENT_SECRET"):
        monkeypatch.delenv(variable, raising=False)
    monkeypatch.setenv("AZURE_CLIENT_ID", "00000000-0000-0000-0000-000000000001")
    monkeypatch.setenv("AZURE_TENANT_ID", "00000000-0000-0000-0000-000000000002")
    if federated:
        token = tmp_path / "token"
        token.write_text("projected-service-account-token")
        monkeypatch.setenv("AZURE_FEDERATED_TOKEN_FILE", str(token))
    credential = default_credential(AzureSettings())
    try:
        assert type(credential).__name__ == expected
    finally:
        await credential.close()
    file_credential = default_credential(AzureSettings(token_file=tmp_path / "t"))
    assert isinstance(file_credential, TokenFileCredential)
