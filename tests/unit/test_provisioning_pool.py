"""The pool backend's pure parts: which node a claim takes, and giving it back intact."""

from __future__ import annotations

import json
from typing import Any

from controller.provisioning.claims import NODECLAIM_LABEL, node_sync_patch, parse_claim
from controller.provisioning.pool import (
    ORIGINAL_ANNOTATION,
    pick_node,
    release_patch,
    take_patch,
)
from crds.karpenter import POOL_LABEL
from tests.unit.test_provisioning_claims import _obj


def _node(name: str, **labels: str) -> dict[str, Any]:
    return {"metadata": {"name": name, "resourceVersion": "3",
                         "labels": {POOL_LABEL: "true", "app": "mine",
                                    "node.kubernetes.io/instance-type": "Standard_NC6s_v3",
                                    **labels}},
            "spec": {"taints": [{"key": "own", "value": "x", "effect": "NoSchedule"}]}}


def test_a_claim_takes_a_free_pool_node_and_keeps_it() -> None:
    claim = parse_claim(_obj())
    held = _node("a", **{NODECLAIM_LABEL: "someone-else"})
    free = _node("b")
    outside = {"metadata": {"name": "0", "labels": {}}}
    assert pick_node([outside, held, free], claim) is free
    mine = _node("c", **{NODECLAIM_LABEL: claim.name})
    assert pick_node([free, mine], claim) is mine
    assert pick_node([held, outside], claim) is None


def test_released_node_has_its_labels_and_taints_back() -> None:
    claim = parse_claim(_obj())
    node = _node("b")
    taken = take_patch(node, claim)
    assert taken["metadata"]["labels"] == {NODECLAIM_LABEL: claim.name}
    # What registration then does (the reconciler's node_sync_patch), applied by hand.
    node["metadata"]["labels"].update(taken["metadata"]["labels"])
    node["metadata"]["annotations"] = taken["metadata"]["annotations"]
    sync = node_sync_patch(claim, node)
    assert sync is not None
    node["metadata"]["labels"].update(sync["metadata"]["labels"])
    node["spec"]["taints"] = sync["spec"]["taints"]
    assert node["metadata"]["labels"]["node.kubernetes.io/instance-type"] == "Standard_NC12s_v3"
    released = release_patch(node, claim)
    labels = {**node["metadata"]["labels"], **released["metadata"]["labels"]}
    labels = {k: v for k, v in labels.items() if v is not None}
    assert labels == {POOL_LABEL: "true", "app": "mine",
                      "node.kubernetes.io/instance-type": "Standard_NC6s_v3"}
    assert released["spec"]["taints"] == [{"key": "own", "value": "x", "effect": "NoSchedule"}]
    assert released["metadata"]["annotations"] == {ORIGINAL_ANNOTATION: None}
    assert json.loads(taken["metadata"]["annotations"][ORIGINAL_ANNOTATION])["app"] == "mine"


def test_a_lent_node_gets_the_claims_labels_but_keeps_its_own_taints() -> None:
    claim = parse_claim(_obj())
    node = _node("b", **{NODECLAIM_LABEL: claim.name})
    patch = node_sync_patch(claim, node, with_taints=False)
    assert patch is not None and "spec" not in patch
    assert patch["metadata"]["labels"]["app"] == "phi"
