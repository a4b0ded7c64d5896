"""The provisioner with its pool backend on the kwok cluster: claims borrow nodes that exist.

`python -m controller.provisioning --backend pool` (what `make demo` runs against this
machine's node) under its own ServiceAccount: a NodeClaim takes a free node labelled
`kaito.sh/pool=true`, which goes Registered → Initialized → Ready with the claim's labels
but keeps its own taints; a second claim waits while the pool is held; deleting a claim
gives the node back exactly as it was, and the Node itself stays.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from typing import Any

import pytest

from controller.provisioning.pool import ORIGINAL_ANNOTATION, POOL_LABEL
from kaito.devcluster import LocalCluster
from tests.e2e.provisioning_support import (
    ProvisionerProcess,
    condition,
    delete_claims,
    get,
    is_true,
    node_claim,
    running_provisioner,
    wait_for,
)

pytestmark = pytest.mark.e2e

OWN_TAINT = {"key": "team", "value": "research", "effect": "NoSchedule"}


@pytest.fixture(scope="module")
def provisioner(cluster: LocalCluster, tmp_path_factory: pytest.TempPathFactory
                ) -> Iterator[ProvisionerProcess]:
    with running_provisioner(cluster, tmp_path_factory.mktemp("provisioner-pool"),
                             args=["--backend", "pool"],
                             env={"KAITO_PROVISIONER__RECHECK_SECONDS": "1"}) as process:
        yield process


def is_ready_node(node: dict[str, Any]) -> bool:
    return any(c["type"] == "Ready" and c["status"] == "True"
               for c in (node.get("status") or {}).get("conditions") or [])


def _ready_claim(cluster: LocalCluster, name: str) -> dict[str, Any] | None:
    claim = get(cluster, "nodeclaim", name)
    return claim if is_true(claim, "Ready") else None


def test_a_claim_borrows_a_pool_node_and_deleting_it_gives_the_node_back(
    cluster: LocalCluster, provisioner: ProvisionerProcess,
) -> None:
    suffix = uuid.uuid4().hex[:6]
    node_name, first, second = f"pool-{suffix}", f"claim-pool-{suffix}", f"claim-wait-{suffix}"
    cluster.create_gpu_node(node_name, gpus=1, instance_type="Standard_NC6s_v3",
                            labels={POOL_LABEL: "true", "app": "owner-app"},
                            taints=[OWN_TAINT])
    try:
        # What the node looks like once kwok runs it (it adds labels of its own), before
        # any claim: what it must look like again when the last claim is gone.
        before = wait_for("the pool node Ready", lambda: (
            (node := get(cluster, "node", node_name)) and is_ready_node(node) and node))
        cluster.apply(node_claim(first, labels={"app": "pool-e2e"}))
        claim = wait_for("the claim Ready on the pool node",
                         lambda: _ready_claim(cluster, first), timeout=90)
        assert claim["status"]["nodeName"] == node_name
        assert claim["status"]["providerID"] == f"pool://{node_name}"
        assert claim["status"]["capacity"]["nvidia.com/gpu"] == "1"
        held = get(cluster, "node", node_name)
        labels = held["metadata"]["labels"]
        assert labels["kaito.sh/nodeclaim"] == first
        assert labels["app"] == "pool-e2e"  # the claim's labels, for its pods' selector
        assert labels["karpenter.sh/registered"] == "true"
        assert ORIGINAL_ANNOTATION in held["metadata"]["annotations"]
        assert held["spec"]["taints"] == [OWN_TAINT]  # a lent node keeps its own taints

        # The pool's one node is held: a second claim waits, and says why.
        cluster.apply(node_claim(second, labels={"app": "pool-e2e-2"}))
        waiting = wait_for("the second claim to wait for the pool", lambda: (
            (found := condition(get(cluster, "nodeclaim", second), "Launched"))
            and found["reason"] == "PoolExhausted" and found), timeout=60)
        assert waiting["status"] == "Unknown"

        # Deleting the first claim gives the node back; the second then takes it.
        cluster.kubectl("delete", "nodeclaim", first, "--wait=false")
        wait_for("the first claim gone", lambda: get(cluster, "nodeclaim", first) is None,
                 timeout=60)
        claim = wait_for("the second claim Ready on the same node",
                         lambda: _ready_claim(cluster, second), timeout=90)
        assert claim["status"]["nodeName"] == node_name
        assert get(cluster, "node", node_name)["metadata"]["labels"]["app"] == "pool-e2e-2"

        cluster.kubectl("delete", "nodeclaim", second, "--wait=false")
        wait_for("the second claim gone", lambda: get(cluster, "nodeclaim", second) is None,
                 timeout=60)
        after = get(cluster, "node", node_name)
        assert after is not None, "a pool node is lent, never deleted"
        assert after["metadata"]["uid"] == before["metadata"]["uid"]
        # Exactly its own labels again; kwok, as the node's agent, may add the deprecated
        # beta.kubernetes.io/{arch,os} labels at any time, as a kubelet does.
        assert _own_labels(after) == _own_labels(before)
        assert ORIGINAL_ANNOTATION not in (after["metadata"].get("annotations") or {})
        assert after["spec"]["taints"] == [OWN_TAINT]
    finally:
        delete_claims(cluster, [first, second])
        cluster.kubectl("delete", "node", node_name, "--wait=false", check=False)


def _own_labels(node: dict[str, Any]) -> dict[str, str]:
    return {key: value for key, value in (node["metadata"].get("labels") or {}).items()
            if not key.startswith("beta.kubernetes.io/")}
