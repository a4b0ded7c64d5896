"""The local backend: each claim becomes a kwok-managed Node (dev cluster, e2e tier).

kwok (running with `--manage-nodes-with-annotation-selector=kwok.x-k8s.io/node=fake`)
keeps such a node Ready and runs its pods' lifecycle, so a claim goes through the same
Launched → Registered → Initialized → Ready steps as on a cloud. The node is named after
the claim, so a create after a restart gets 409 and adopts the node already made.
"""

from __future__ import annotations

import logging
from typing import Any

from controller.kube.client import KubeClient
from controller.kube.errors import AlreadyExists, KubeError, NotFound
from controller.kube.resources import NODES
from controller.provisioning.backend import (
    CloudUnavailable,
    Launched,
    LaunchOutcome,
    gpu_capacity,
)
from controller.provisioning.claims import Claim, node_labels_for
from controller.provisioning.metrics import ProvisioningMetrics
from presets.catalog import GpuSku

log = logging.getLogger(__name__)

KWOK_NODE_ANNOTATION = "kwok.x-k8s.io/node"
PROVIDER_PREFIX = "kwok://"


def provider_id(claim_name: str) -> str:
    return PROVIDER_PREFIX + claim_name


def build_kwok_node(claim: Claim, sku: GpuSku) -> dict[str, Any]:
    """The Node for `claim`: the SKU's GPUs and memory, the claim's labels and taints."""
    capacity = gpu_capacity(sku)
    labels = {
        "type": "kwok",
        "kubernetes.io/hostname": claim.name,
        "kubernetes.io/os": "linux",
        "kubernetes.io/arch": "amd64",
        # What NVIDIA's GPU feature discovery labels a GPU node with.
        "nvidia.com/gpu.count": str(sku.gpu_count),
        "nvidia.com/gpu.product": sku.gpu_model,
        "nvidia.com/gpu.memory": str(int(sku.gpu_memory_gib * 1024)),
        **node_labels_for(claim),
    }
    return {
        "apiVersion": "v1",
        "kind": "Node",
        "metadata": {"name": claim.name, "labels": labels,
                     "annotations": {KWOK_NODE_ANNOTATION: "fake"}},
        "spec": {"providerID": provider_id(claim.name),
                 "taints": [t.model_dump(by_alias=True, exclude_none=True)
                            for t in claim.taints]},
        "status": {"capacity": capacity, "allocatable": capacity},
    }


class LocalBackend:
    name = "local"
    owns_node_objects = True

    def __init__(self, client: KubeClient, metrics: ProvisioningMetrics | None = None) -> None:
        self._client = client
        self._metrics = metrics

    def _count(self, method: str, code: str) -> None:
        if self._metrics is not None:
            self._metrics.count_call(method, code)

    async def launch(self, claim: Claim, sku: GpuSku, *, wait_seconds: float) -> LaunchOutcome:
        try:
            await self._client.create(NODES, build_kwok_node(claim, sku))
            self._count("POST", "201")
        except AlreadyExists:
            self._count("POST", "409")  # made by an earlier pass: adopt it
        except KubeError as error:
            self._count("POST", str(error.status_code or "<error>"))
            raise CloudUnavailable(f"creating node {claim.name}: {error}") from error
        log.info("kwok node launched", extra={"nodeclaim": claim.name})
        return Launched(provider_id=provider_id(claim.name), capacity=gpu_capacity(sku))

    async def delete(self, claim: Claim) -> bool:
        try:
            await self._client.delete(NODES, claim.name)
            self._count("DELETE", "200")
        except NotFound:
            self._count("DELETE", "404")
        except KubeError as error:
            self._count("DELETE", str(error.status_code or "<error>"))
            raise CloudUnavailable(f"deleting node {claim.name}: {error}") from error
        return True

    async def close(self) -> None:
        return None
