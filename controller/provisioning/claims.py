"""A NodeClaim or legacy Machine as the provisioner sees it, and its conditions (pure).

Parse at the boundary: both kinds become one `Claim` (the fields the lifecycle reads),
so the reconciler and the backends never branch on the kind. Conditions are kept as
plain dicts because a Machine's are knative-style (free-form); both kinds use the
Karpenter-core types Launched, Registered, Initialized and Ready, which are what the
Workspace controller reads.
"""

from __future__ import annotations

import calendar
import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from crds.karpenter import (
    INSTANCE_TYPE_LABEL,
    NODEPOOL_LABEL,
    NODEPOOL_NAME,
    Machine,
    NodeClaim,
    Taint,
)

LAUNCHED = "Launched"
REGISTERED = "Registered"
INITIALIZED = "Initialized"
READY = "Ready"
LIFECYCLE = (LAUNCHED, REGISTERED, INITIALIZED)

FINALIZER = "karpenter.sh/termination"
# Every node made for a claim names it, so a node event finds its claim.
NODECLAIM_LABEL = "kaito.sh/nodeclaim"
REGISTERED_LABEL = "karpenter.sh/registered"
INITIALIZED_LABEL = "karpenter.sh/initialized"
GPU_RESOURCE = "nvidia.com/gpu"

Conditions = list[dict[str, Any]]


@dataclass(frozen=True)
class Claim:
    """The parts of a NodeClaim/Machine the lifecycle needs."""

    kind: str
    name: str
    uid: str
    resource_version: str
    labels: dict[str, str]
    taints: tuple[Taint, ...]
    instance_type: str | None
    created_at: float | None
    is_deleting: bool
    finalizers: tuple[str, ...]
    conditions: tuple[dict[str, Any], ...]
    provider_id: str | None
    node_name: str | None

    @property
    def is_ours(self) -> bool:
        return self.labels.get(NODEPOOL_LABEL) == NODEPOOL_NAME

    def condition(self, condition_type: str) -> dict[str, Any] | None:
        for condition in self.conditions:
            if condition.get("type") == condition_type:
                return condition
        return None

    def status_of(self, condition_type: str) -> str:
        condition = self.condition(condition_type)
        return str(condition.get("status")) if condition else "Unknown"

    def is_true(self, condition_type: str) -> bool:
        return self.status_of(condition_type) == "True"

    def transition_time(self, condition_type: str) -> float | None:
        condition = self.condition(condition_type)
        return parse_time(condition.get("lastTransitionTime")) if condition else None


def parse_time(text: Any) -> float | None:
    if not isinstance(text, str) or not text:
        return None
    try:
        return float(calendar.timegm(time.strptime(text[:19], "%Y-%m-%dT%H:%M:%S")))
    except ValueError:
        return None


def format_time(now: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(now))


def parse_claim(obj: Mapping[str, Any]) -> Claim:
    """A NodeClaim or Machine dict from the API, validated by its model."""
    model: NodeClaim | Machine
    model = Machine.model_validate(obj) if obj.get("kind") == "Machine" else (
        NodeClaim.model_validate(obj))
    metadata = model.metadata
    instance_type = None
    for requirement in model.spec.requirements or []:
        if requirement.key == INSTANCE_TYPE_LABEL and requirement.operator == "In" and (
                requirement.values):
            instance_type = requirement.values[0]
    raw_status = obj.get("status") or {}
    return Claim(
        kind=model.kind,
        name=metadata.name or "",
        uid=metadata.uid or "",
        resource_version=metadata.resource_version or "",
        labels=dict(metadata.labels or {}),
        taints=tuple(model.spec.taints or ()),
        instance_type=instance_type,
        created_at=parse_time(metadata.creation_timestamp),
        is_deleting=bool(metadata.deletion_timestamp),
        finalizers=tuple(metadata.finalizers or ()),
        conditions=tuple(dict(c) for c in raw_status.get("conditions") or ()),
        provider_id=model.status.provider_id if model.status else None,
        node_name=model.status.node_name if model.status else None,
    )


def with_condition(
    conditions: Conditions, condition_type: str, status: str, reason: str, message: str,
    now: float,
) -> Conditions:
    """A new list with the condition set; its transition time stays when the status does."""
    updated: Conditions = []
    new = {"type": condition_type, "status": status, "reason": reason, "message": message,
           "lastTransitionTime": format_time(now)}
    found = False
    for existing in conditions:
        if existing.get("type") != condition_type:
            updated.append(existing)
            continue
        found = True
        if existing.get("status") == status and existing.get("lastTransitionTime"):
            new["lastTransitionTime"] = existing["lastTransitionTime"]
        updated.append(new)
    if not found:
        updated.append(new)
    return updated


def with_ready(conditions: Conditions, now: float) -> Conditions:
    """Ready follows the three lifecycle conditions: True when all are, False when one
    failed, Unknown while one is still in progress."""
    statuses = {c.get("type"): c for c in conditions}
    failed = [t for t in LIFECYCLE if (statuses.get(t) or {}).get("status") == "False"]
    if failed:
        cause = statuses[failed[0]]
        return with_condition(conditions, READY, "False", str(cause.get("reason") or "Failed"),
                              str(cause.get("message") or ""), now)
    pending = [t for t in LIFECYCLE if (statuses.get(t) or {}).get("status") != "True"]
    if pending:
        return with_condition(conditions, READY, "Unknown", "AwaitingReconciliation",
                              f"waiting for {pending[0]}", now)
    return with_condition(conditions, READY, "True", "Ready", "", now)


def node_gpus(node: Mapping[str, Any]) -> int:
    status = node.get("status") or {}
    for source in ("allocatable", "capacity"):
        value = (status.get(source) or {}).get(GPU_RESOURCE)
        if value is not None:
            try:
                return int(str(value))
            except ValueError:
                return 0
    return 0


def is_node_ready(node: Mapping[str, Any]) -> bool:
    for condition in (node.get("status") or {}).get("conditions") or []:
        if condition.get("type") == "Ready":
            return bool(condition.get("status") == "True")
    return False


def taint_key(taint: Mapping[str, Any]) -> tuple[str, str, str]:
    return (str(taint.get("key")), str(taint.get("value") or ""), str(taint.get("effect")))


def node_labels_for(claim: Claim) -> dict[str, str]:
    """The labels a claim's node carries: the claim's own, its instance type and name."""
    labels = {**claim.labels, NODECLAIM_LABEL: claim.name}
    if claim.instance_type:
        labels[INSTANCE_TYPE_LABEL] = claim.instance_type
    return labels


def node_sync_patch(
    claim: Claim, node: Mapping[str, Any], *, with_taints: bool = True
) -> dict[str, Any] | None:
    """The merge patch that puts the claim's labels and taints on its node, or None when
    they are there already (registration: the node carries what the claim asked for).
    ``with_taints=False`` for a node lent by a pool: its owner decides its taints, and
    the pods already on it must keep scheduling there."""
    metadata = node.get("metadata") or {}
    have_labels = metadata.get("labels") or {}
    wanted_labels = {**node_labels_for(claim), REGISTERED_LABEL: "true"}
    missing_labels = {k: v for k, v in wanted_labels.items() if have_labels.get(k) != v}
    have_taints = list((node.get("spec") or {}).get("taints") or [])
    have_keys = {taint_key(t) for t in have_taints}
    wanted_taints = [t.model_dump(by_alias=True, exclude_none=True)
                     for t in claim.taints] if with_taints else []
    missing_taints = [t for t in wanted_taints if taint_key(t) not in have_keys]
    if not missing_labels and not missing_taints:
        return None
    patch: dict[str, Any] = {"metadata": {}}
    if missing_labels:
        patch["metadata"]["labels"] = missing_labels  # a map merge: no race to guard
    if missing_taints:
        # The taint list is replaced whole: only against the version it was read from.
        patch["metadata"]["resourceVersion"] = metadata.get("resourceVersion")
        patch["spec"] = {"taints": have_taints + missing_taints}
    return patch


def phase(claim: Claim) -> str:
    """One word for the claims-by-phase gauge."""
    if claim.is_deleting:
        return "Deleting"
    if any(claim.status_of(t) == "False" for t in LIFECYCLE):
        return "Failed"
    for condition_type in (READY, INITIALIZED, REGISTERED, LAUNCHED):
        if claim.is_true(condition_type):
            return condition_type
    return "Pending"
