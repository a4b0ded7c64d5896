"""What a cloud backend does for the claim lifecycle, and what it answers.

The reconciler owns the lifecycle (conditions, time-outs, the node, the finalizer); a
backend only turns a claim into capacity and back. Its answers are values, not
exceptions: `Launched`, `Pending` (ask again later) or `LaunchFailed` (a condition for
the claim). A backend raises `CloudUnavailable` for what a retry with backoff may fix
(a dropped connection, a 5xx) and nothing else.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Protocol

from controller.provisioning.claims import GPU_RESOURCE, Claim
from presets.catalog import GpuSku

# Capacity of a GPU node besides its GPUs (what the Workspace planner and scheduler see).
NODE_BASE_CAPACITY = {"cpu": "32", "memory": "256Gi", "pods": "110",
                      "ephemeral-storage": "120Gi"}


@dataclass(frozen=True)
class Launched:
    """The cloud made the capacity; the node will (or did) register with this ID."""

    provider_id: str
    capacity: Mapping[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class Pending:
    """Accepted but not done yet; look again after `retry_after_seconds`."""

    reason: str
    message: str
    retry_after_seconds: float


@dataclass(frozen=True)
class LaunchFailed:
    """The cloud refused; `reason` is its error code (QuotaExceeded, SkuNotAvailable...).
    `made_nothing`: the refusal came before anything was made (a refused create), so
    deleting the claim needs no cloud call."""

    reason: str
    message: str
    made_nothing: bool = False


LaunchOutcome = Launched | Pending | LaunchFailed


class CloudUnavailable(Exception):
    """A transient failure talking to the cloud: the reconcile is retried with backoff."""


class Backend(Protocol):
    name: str
    # False for a backend that lends nodes it did not make (the pool): the reconciler
    # then leaves the Node object in place when the claim goes.
    owns_node_objects: bool

    async def launch(self, claim: Claim, sku: GpuSku, *, wait_seconds: float) -> LaunchOutcome:
        """Make (or find) the claim's capacity; idempotent for the same claim. Waits on
        the cloud at most `wait_seconds` (what is left of the launch time-out)."""

    async def delete(self, claim: Claim) -> bool:
        """Remove the claim's capacity; True once it is gone."""

    async def close(self) -> None: ...


def gpu_capacity(sku: GpuSku) -> dict[str, str]:
    """The capacity a node of this SKU reports, GPUs included."""
    return {**NODE_BASE_CAPACITY, GPU_RESOURCE: str(sku.gpu_count)}
