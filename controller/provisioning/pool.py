"""The pool backend: claims are fulfilled by nodes that already exist (no cloud).

For clusters whose GPU nodes are made by something else, and for the real-node tier,
where the kubelet on this machine is the one GPU node: a claim takes a free node of the
pool (nodes labelled `kaito.sh/pool=true`, not held by another claim), which then goes
through the same Registered → Initialized → Ready steps as a cloud node (the reconciler puts
the claim's labels on it, but not its taints: a lent node keeps the taints its owner
gave it, and the pods already on it keep scheduling there). Deleting the claim gives
the node back with the labels it had before; the Node object itself is never deleted,
since nothing would make it again.
"""

from __future__ import annotations

import json
import logging
from typing import Any

from controller.kube.client import KubeClient
from controller.kube.errors import KubeError, NotFound
from controller.kube.resources import NODES
from controller.provisioning.backend import CloudUnavailable, Launched, LaunchOutcome, Pending
from controller.provisioning.claims import (
    NODECLAIM_LABEL,
    REGISTERED_LABEL,
    Claim,
    node_labels_for,
    taint_key,
)
from controller.provisioning.metrics import ProvisioningMetrics
from crds.karpenter import POOL_LABEL
from presets.catalog import GpuSku

log = logging.getLogger(__name__)

ORIGINAL_ANNOTATION = "kaito.sh/pool-original-labels"
INITIALIZED_LABEL = "karpenter.sh/initialized"
PROVIDER_PREFIX = "pool://"


def _labels(node: dict[str, Any]) -> dict[str, str]:
    return dict((node.get("metadata") or {}).get("labels") or {})


def pick_node(nodes: list[dict[str, Any]], claim: Claim) -> dict[str, Any] | None:
    """The pool node already held by ``claim``, else the first free one (by name)."""
    pool = sorted((n for n in nodes if _labels(n).get(POOL_LABEL) == "true"),
                  key=lambda n: str(n["metadata"]["name"]))
    for node in pool:
        if _labels(node).get(NODECLAIM_LABEL) == claim.name:
            return node
    return next((n for n in pool if NODECLAIM_LABEL not in _labels(n)), None)


def take_patch(node: dict[str, Any], claim: Claim) -> dict[str, Any]:
    """Marks the node as the claim's, remembering the labels the claim will change."""
    have = _labels(node)
    wanted = {**node_labels_for(claim), REGISTERED_LABEL: "true", INITIALIZED_LABEL: "true"}
    original = {key: have.get(key) for key in wanted}
    return {"metadata": {
        "labels": {NODECLAIM_LABEL: claim.name},
        "annotations": {ORIGINAL_ANNOTATION: json.dumps(original, sort_keys=True)},
        "resourceVersion": (node.get("metadata") or {}).get("resourceVersion"),
    }}


def release_patch(node: dict[str, Any], claim: Claim) -> dict[str, Any]:
    """Gives the node back: the labels as they were, the claim's taints removed."""
    metadata = node.get("metadata") or {}
    try:
        original = json.loads((metadata.get("annotations") or {}).get(ORIGINAL_ANNOTATION,
                                                                        "{}"))
    except ValueError:
        original = {}
    labels: dict[str, str | None] = {key: None for key in node_labels_for(claim)}
    labels.update({REGISTERED_LABEL: None, INITIALIZED_LABEL: None, NODECLAIM_LABEL: None})
    labels.update({key: value for key, value in original.items() if value is not None})
    claim_taints = {taint_key(t.model_dump(by_alias=True, exclude_none=True))
                    for t in claim.taints}
    taints = [t for t in (node.get("spec") or {}).get("taints") or []
              if taint_key(t) not in claim_taints]
    return {"metadata": {"labels": labels, "annotations": {ORIGINAL_ANNOTATION: None},
                         "resourceVersion": metadata.get("resourceVersion")},
            "spec": {"taints": taints}}


class PoolBackend:
    name = "pool"
    owns_node_objects = False  # the reconciler must not delete pool nodes

    def __init__(self, client: KubeClient, metrics: ProvisioningMetrics | None = None) -> None:
        self._client = client
        self._metrics = metrics

    async def _nodes(self) -> list[dict[str, Any]]:
        try:
            page = await self._client.list_all(NODES, label_selector=f"{POOL_LABEL}=true")
            return list(page.items)
        except KubeError as error:
            raise CloudUnavailable(f"listing pool nodes: {error}") from error

    async def launch(self, claim: Claim, sku: GpuSku, *, wait_seconds: float) -> LaunchOutcome:
        node = pick_node(await self._nodes(), claim)
        if node is None:
            return Pending("PoolExhausted", "every node of the pool is held by a claim",
                           retry_after_seconds=10)
        name = str(node["metadata"]["name"])
        if _labels(node).get(NODECLAIM_LABEL) != claim.name:
            try:
                await self._client.patch(NODES, name, take_patch(node, claim))
            except KubeError as error:  # a conflict: another claim took it; try again
                raise CloudUnavailable(f"taking pool node {name}: {error}") from error
            log.info("pool node taken", extra={"nodeclaim": claim.name, "node": name})
        provider_id = (node.get("spec") or {}).get("providerID") or PROVIDER_PREFIX + name
        capacity = dict((node.get("status") or {}).get("capacity") or {})
        return Launched(provider_id=provider_id, capacity=capacity)

    async def delete(self, claim: Claim) -> bool:
        for node in await self._nodes():
            if _labels(node).get(NODECLAIM_LABEL) != claim.name:
                continue
            name = str(node["metadata"]["name"])
            try:
                await self._client.patch(NODES, name, release_patch(node, claim))
            except NotFound:
                continue
            except KubeError as error:
                raise CloudUnavailable(f"releasing pool node {name}: {error}") from error
            log.info("pool node released", extra={"nodeclaim": claim.name, "node": name})
        return True

    async def close(self) -> None:
        return None
