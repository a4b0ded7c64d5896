"""Which GPU nodes a workspace uses, and which NodeClaims to create or delete (pure).

Bring-your-own first: Ready nodes that report ``nvidia.com/gpu`` and match the
workspace's ``resource.labelSelector`` are used as they are. Only the nodes still missing
become NodeClaims, with deterministic names (a digest of the workspace's namespace/name
plus an index), so a controller restarted between "create" and "see it in the cache"
gets 409 AlreadyExists instead of a duplicate claim. A namespaced Workspace cannot own a
cluster-scoped NodeClaim, so claims carry the workspace labels and the finalizer cleans
them up.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Collection, Iterable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from crds.karpenter import (
    GPU_TAINT_KEY,
    GPU_TAINT_VALUE,
    INSTANCE_TYPE_LABEL,
    NODEPOOL_LABEL,
    NODEPOOL_NAME,
    POOL_LABEL,
    WORKSPACE_LABEL,
    WORKSPACE_NAMESPACE_LABEL,
)
from crds.meta import LabelSelector
from crds.workspace import Workspace
from presets.catalog import Catalog, GpuSku, ModelPreset
from presets.memory import TuningShape, inference_fit_problem, tuning_estimate, tuning_fits

GPU_RESOURCE = "nvidia.com/gpu"
# NVIDIA GPU feature discovery's node labels (memory in MiB, product like NVIDIA-A100-SXM4-80GB).
GFD_COUNT_LABEL = "nvidia.com/gpu.count"
GFD_MEMORY_LABEL = "nvidia.com/gpu.memory"
GFD_PRODUCT_LABEL = "nvidia.com/gpu.product"
# GPUs without bfloat16 (compute capability below 8.0).
_NO_BF16 = re.compile(r"V100|T4|P100|P40|K80|M60", re.IGNORECASE)
CLAIM_NAME_PREFIX = "ws"
# Which attempt at a node a claim is (1 when absent): what the retry backoff counts from,
# kept on the claim so a restarted controller does not start the backoff over.
ATTEMPT_ANNOTATION = "kaito.sh/nodeclaim-attempt"
# Where a claim's failure shows: the provider sets Launched=False with a reason.
CLAIM_CONDITIONS = ("Launched", "Registered", "Initialized", "Ready")


def claim_labels(ws: Workspace) -> dict[str, str]:
    """The labels that tie a claim (and its node) to its workspace."""
    return {
        WORKSPACE_LABEL: ws.metadata.name or "",
        WORKSPACE_NAMESPACE_LABEL: ws.metadata.namespace or "",
    }


def claim_name(ws: Workspace, index: int) -> str:
    """``ws<10 hex>-<index>``: stable for the workspace, short enough for any provider
    (the AKS agent-pool name is derived from it), unique across namespaces."""
    digest = hashlib.sha256(f"{ws.metadata.namespace}/{ws.metadata.name}".encode()).hexdigest()
    return f"{CLAIM_NAME_PREFIX}{digest[:10]}-{index}"


def selector_matches(selector: LabelSelector | None, labels: Mapping[str, str]) -> bool:
    """Whether ``labels`` satisfy a metav1.LabelSelector (an empty selector matches all)."""
    if selector is None:
        return True
    for key, value in (selector.match_labels or {}).items():
        if labels.get(key) != value:
            return False
    for requirement in selector.match_expressions or []:
        values = requirement.values or []
        present = requirement.key in labels
        if requirement.operator == "In" and not (present and labels[requirement.key] in values):
            return False
        if requirement.operator == "NotIn" and present and labels[requirement.key] in values:
            return False
        if requirement.operator == "Exists" and not present:
            return False
        if requirement.operator == "DoesNotExist" and present:
            return False
    return True


def int_quantity(value: Any) -> int:
    """A whole-number quantity or label (GPUs, MiB); 0 when it is not one."""
    try:
        return int(str(value))
    except ValueError:
        return 0


def node_gpus(node: Mapping[str, Any]) -> int:
    """GPUs the node can give pods (allocatable, else capacity)."""
    status = node.get("status") or {}
    for source in ("allocatable", "capacity"):
        value = (status.get(source) or {}).get(GPU_RESOURCE)
        if value is not None:
            return int_quantity(value)
    return 0


def is_node_ready(node: Mapping[str, Any]) -> bool:
    if (node.get("metadata") or {}).get("deletionTimestamp"):
        return False
    if (node.get("spec") or {}).get("unschedulable"):
        return False
    for condition in (node.get("status") or {}).get("conditions") or []:
        if condition.get("type") == "Ready":
            return bool(condition.get("status") == "True")
    return False


def _labels(obj: Mapping[str, Any]) -> dict[str, str]:
    return dict((obj.get("metadata") or {}).get("labels") or {})


def _name(obj: Mapping[str, Any]) -> str:
    return str((obj.get("metadata") or {}).get("name", ""))


def owning_workspace(obj: Mapping[str, Any]) -> tuple[str | None, str] | None:
    """(namespace or None, name) of the workspace a node or claim was made for, from its
    labels; None for a node nobody claimed (brought by the user)."""
    labels = _labels(obj)
    name = labels.get(WORKSPACE_LABEL)
    if not name:
        return None
    return labels.get(WORKSPACE_NAMESPACE_LABEL), name


def is_made_for_another(node: Mapping[str, Any], namespace: str | None, name: str | None
                        ) -> bool:
    """Whether the node was made for a claim of a workspace other than namespace/name."""
    owner = owning_workspace(node)
    if owner is None:
        return False
    owner_namespace, owner_name = owner
    return owner_name != name or owner_namespace not in (None, namespace)


def is_anothers_node(ws: Workspace, node: Mapping[str, Any]) -> bool:
    """Whether the node was made for another workspace's claim (never ours to use: it goes
    away with that claim). A pool node is only lent to the claim and is never deleted, so
    its free GPUs stay shared capacity, as on the real-node tier's one GPU node."""
    if _labels(node).get(POOL_LABEL) == "true":
        return False
    return is_made_for_another(node, ws.metadata.namespace, ws.metadata.name)


def candidate_nodes(ws: Workspace, nodes: Iterable[Mapping[str, Any]]
                    ) -> list[Mapping[str, Any]]:
    """Ready GPU nodes that match the workspace's selector and were not made for another
    workspace, whatever their pods use; sorted by name."""
    selector = ws.resource.label_selector if ws.resource else None
    return sorted((node for node in nodes
                   if is_node_ready(node) and node_gpus(node) > 0
                   and selector_matches(selector, _labels(node))
                   and not is_anothers_node(ws, node)), key=_name)


def usable_nodes(ws: Workspace, nodes: Iterable[Mapping[str, Any]]) -> list[str]:
    """Names of the candidate nodes (Ready, GPUs, selector, not another's), sorted."""
    return [_name(node) for node in candidate_nodes(ws, nodes)]


def build_node_claim(
    ws: Workspace, instance_type: str, name: str, kind: str = "NodeClaim"
) -> dict[str, Any]:
    """The NodeClaim (or, for ``kind="Machine"``, the legacy karpenter.sh/v1alpha5
    Machine the seed document names) for one GPU node of ``instance_type`` for ``ws``."""
    selector = ws.resource.label_selector if ws.resource else None
    labels = {
        **(selector.match_labels if selector and selector.match_labels else {}),
        **claim_labels(ws),
        NODEPOOL_LABEL: NODEPOOL_NAME,
    }
    spec: dict[str, Any] = {
        "requirements": [
            {"key": INSTANCE_TYPE_LABEL, "operator": "In", "values": [instance_type]},
            {"key": NODEPOOL_LABEL, "operator": "In", "values": [NODEPOOL_NAME]},
            {"key": "kubernetes.io/os", "operator": "In", "values": ["linux"]},
        ],
        "taints": [{"key": GPU_TAINT_KEY, "value": GPU_TAINT_VALUE, "effect": "NoSchedule"}],
        "resources": {"requests": {"storage": "120Gi"}},
    }
    if kind == "Machine":
        spec["machineTemplateRef"] = {"name": "default"}
        api_version = "karpenter.sh/v1alpha5"
    else:
        spec["nodeClassRef"] = {"group": "kaito.sh", "kind": "KaitoNodeClass", "name": "default"}
        api_version = "karpenter.sh/v1"
    return {"apiVersion": api_version, "kind": kind,
            "metadata": {"name": name, "labels": labels}, "spec": spec}


def claim_condition(claim: Mapping[str, Any], condition_type: str) -> Mapping[str, Any] | None:
    for condition in (claim.get("status") or {}).get("conditions") or []:
        if condition.get("type") == condition_type:
            return dict(condition)
    return None


def claim_failure(claim: Mapping[str, Any]) -> str | None:
    """The provider's reason a claim failed (a False condition), or None."""
    for condition_type in CLAIM_CONDITIONS:
        condition = claim_condition(claim, condition_type)
        if condition is not None and condition.get("status") == "False":
            reason = condition.get("reason") or condition_type + "Failed"
            message = condition.get("message") or ""
            return f"{_name(claim)}: {reason}" + (f": {message}" if message else "")
    return None


def node_gpu_sku(node: Mapping[str, Any]) -> GpuSku | None:
    """The node's GPUs as a SKU, from GPU feature discovery's labels (bring-your-own nodes);
    None when the node lacks the count or memory label."""
    labels = _labels(node)
    count, memory_mib = int_quantity(labels.get(GFD_COUNT_LABEL)), int_quantity(
        labels.get(GFD_MEMORY_LABEL))
    if count <= 0 or memory_mib <= 0:
        return None
    product = labels.get(GFD_PRODUCT_LABEL) or "unknown-gpu"
    return GpuSku(name=f"{_name(node)} ({product})", gpu_count=count, gpu_model=product,
                  gpu_memory_gib=memory_mib / 1024, bf16=not _NO_BF16.search(product),
                  price_per_hour_usd=1.0)


def nodes_gpu_sku(ws: Workspace, nodes: Iterable[Mapping[str, Any]]) -> GpuSku | None:
    """The smallest GPU configuration among the usable nodes (what every pod can count on),
    or None when none carries the GPU labels."""
    skus = [sku for node in candidate_nodes(ws, nodes)
            if (sku := node_gpu_sku(node)) is not None]
    if not skus:
        return None
    return min(skus, key=lambda s: (s.total_gpu_memory_gib, s.gpu_memory_gib))


def partition_sku(ws: Workspace) -> GpuSku | None:
    """What one pod of a partitioned workspace asks for: ``partition.count`` devices of
    ``nvidia.com/gpu`` (accelerator partitions, and MIG slices under the device plugin's
    single strategy, where slices appear as plain GPUs), one for MIG."""
    partition = ws.resource.partition if ws.resource else None
    if partition is None:
        return None
    count = 1 if partition.mode == "mig" else (partition.count or 1)
    label = f"{partition.mode} {partition.profile or ''}".strip()
    return GpuSku(name=f"partition ({label})", gpu_count=count, gpu_model=label,
                  gpu_memory_gib=1.0, bf16=True, price_per_hour_usd=1.0)


def byo_fit_problem(
    preset: ModelPreset, sku: GpuSku, *, is_tuning: bool, catalog: Catalog | None = None,
    shape: TuningShape | None = None,
) -> str | None:
    """Why one labelled node cannot hold the workload, or None when it can. Serving follows
    the webhook's rule (presets.memory.inference_fit_problem): one node, never several."""
    if is_tuning:
        estimate = tuning_estimate(preset, shape or TuningShape())
        if tuning_fits(estimate, sku):
            return None
        return (f"{(shape or TuningShape()).method} of {preset.name} needs about "
                f"{estimate.per_gpu_gib(sku.gpu_count):.1f}Gi per GPU; the selected nodes' "
                f"GPUs ({sku.gpu_count}x {sku.gpu_model}) have {sku.gpu_memory_gib:.1f}Gi each")
    node = f"selected ({sku.gpu_count}x {sku.gpu_model}, {sku.gpu_memory_gib:.1f} GiB each)"
    return inference_fit_problem(preset, sku, catalog, node=node)


@dataclass(frozen=True)
class ClaimRetry:
    """Exponential, capped backoff between attempts at a refused claim: attempt ``n``
    (1 = the first claim) is followed, after its refusal, by a wait of
    ``base * 2**(n-1)`` seconds, at most ``max_seconds``."""

    base_seconds: float = 10.0
    max_seconds: float = 600.0

    def wait_seconds(self, attempt: int) -> float:
        return float(min(self.max_seconds,
                         self.base_seconds * 2.0 ** min(max(attempt, 1) - 1, 60)))


def claim_attempt(claim: Mapping[str, Any]) -> int:
    """Which attempt the claim is (its annotation; a claim without one is the first)."""
    value = ((claim.get("metadata") or {}).get("annotations") or {}).get(ATTEMPT_ANNOTATION)
    return max(1, int_quantity(value))


def claim_failed_at(claim: Mapping[str, Any]) -> float | None:
    """When the provider refused the claim: its failed condition's lastTransitionTime."""
    for condition_type in CLAIM_CONDITIONS:
        condition = claim_condition(claim, condition_type)
        if condition is not None and condition.get("status") == "False":
            return parse_timestamp(condition.get("lastTransitionTime"))
    return None


def parse_timestamp(value: Any) -> float | None:
    if not value:
        return None
    try:
        stamp = datetime.fromisoformat(str(value))
    except ValueError:
        return None
    if stamp.tzinfo is None:
        stamp = stamp.replace(tzinfo=UTC)
    return stamp.timestamp()


def format_timestamp(seconds: float) -> str:
    return datetime.fromtimestamp(seconds, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


@dataclass
class NodePlan:
    """What to do about nodes for one workspace."""

    target_node_count: int
    worker_nodes: list[str] = field(default_factory=list)  # Ready nodes in use
    claims_to_create: list[dict[str, Any]] = field(default_factory=list)
    claims_to_delete: list[str] = field(default_factory=list)  # failed, their wait over
    pending_claims: list[str] = field(default_factory=list)
    failures: list[str] = field(default_factory=list)
    fit_problem: str | None = None  # the nodes cannot hold the workload
    fit_hint: str = "select larger nodes in resource.labelSelector"  # what to do about it
    # Matching nodes that are not capacity for this workspace, and why ("n1: 0 of 1 GPU
    # free"); what a waiting workspace's condition names.
    busy_nodes: list[str] = field(default_factory=list)
    gpus_per_pod: int = 1
    # A refused claim kept until its backoff ends: the attempt it was, when the next one is.
    failed_attempt: int = 0
    retry_at: float | None = None
    retry_attempt: int = 0  # the highest attempt among the claims in flight or made now

    @property
    def is_ready(self) -> bool:
        return self.fit_problem is None and len(self.worker_nodes) >= self.target_node_count


def plan_nodes(
    ws: Workspace,
    *,
    target_node_count: int,
    instance_type: str | None,
    nodes: Iterable[Mapping[str, Any]],
    claims: Iterable[Mapping[str, Any]],
    can_provision: bool = True,
    claim_kind: str = "NodeClaim",
    gpus_per_pod: int = 1,
    gpus_used: Mapping[str, int] | None = None,
    nodes_in_use: Collection[str] = (),
    now: float = 0.0,
    retry: ClaimRetry | None = None,
) -> NodePlan:
    """Which nodes to use and which claims to create or delete (pure).

    ``claims`` are this workspace's claims (by label). A Ready GPU node matching the
    selector counts when it was not made for another workspace and its free GPUs
    (allocatable minus ``gpus_used``, the requests of other pods bound to it) cover
    ``gpus_per_pod``, or when this workspace's own pods run on it (``nodes_in_use``); the
    ones made for its claims come first, then the rest by name.

    A claim the provider refused stays until its backoff (``retry``, from its attempt
    annotation and its condition's lastTransitionTime, compared with ``now``) ends: it
    holds its slot, so nothing is recreated meanwhile. Then it is deleted and a new
    claim, one attempt further, is made under a free name in the same pass.
    """
    retry = retry or ClaimRetry()
    used = gpus_used or {}
    node_list = list(nodes)
    claim_list = sorted(claims, key=_name)
    plan = NodePlan(target_node_count=target_node_count, gpus_per_pod=gpus_per_pod)
    claimed_nodes = {str((c.get("status") or {}).get("nodeName")) for c in claim_list
                     if (c.get("status") or {}).get("nodeName")}
    usable: list[tuple[int, str]] = []
    selector = ws.resource.label_selector if ws.resource else None
    for node in sorted(node_list, key=_name):
        name = _name(node)
        if not (is_node_ready(node) and node_gpus(node) > 0
                and selector_matches(selector, _labels(node))):
            continue
        if is_anothers_node(ws, node):
            owner = owning_workspace(node) or (None, "")
            plan.busy_nodes.append(f"{name} (made for workspace {owner[0]}/{owner[1]})")
            continue
        free = node_gpus(node) - used.get(name, 0)
        if free < gpus_per_pod and name not in nodes_in_use:
            plan.busy_nodes.append(f"{name} ({max(free, 0)} of {node_gpus(node)} GPU(s) free)")
            continue
        # Nodes made for our claims first, then the rest by name. (Not "where our pods
        # landed first": that would rename workerNodes, a status write, whenever the
        # scheduler picks another of several free nodes.)
        usable.append((0 if name in claimed_nodes else 1, name))
    plan.worker_nodes = [name for _, name in sorted(usable)][:target_node_count]
    live_claims: list[Mapping[str, Any]] = []
    waiting_failed = 0
    highest_failed_attempt = 0
    for claim in claim_list:
        failure = claim_failure(claim)
        if failure is None:
            live_claims.append(claim)
            continue
        attempt = claim_attempt(claim)
        highest_failed_attempt = max(highest_failed_attempt, attempt)
        plan.failures.append(failure)
        if (claim.get("metadata") or {}).get("deletionTimestamp"):
            continue
        failed_at = claim_failed_at(claim)
        next_try = None if failed_at is None else failed_at + retry.wait_seconds(attempt)
        if next_try is not None and now < next_try and can_provision:
            waiting_failed += 1  # holds its slot until its backoff ends
            plan.failed_attempt = max(plan.failed_attempt, attempt)
            plan.retry_at = next_try if plan.retry_at is None else min(plan.retry_at, next_try)
            continue
        plan.claims_to_delete.append(_name(claim))
    existing = {_name(claim) for claim in claim_list}
    # A claim whose node is Ready is settled (that node counts above, or is full);
    # the others are still coming and cover part of what is missing.
    ready_names = _ready_names(node_list)
    in_flight = [claim for claim in live_claims
                 if (claim.get("status") or {}).get("nodeName") not in ready_names]
    plan.pending_claims = [_name(claim) for claim in in_flight]
    plan.retry_attempt = max((claim_attempt(claim) for claim in in_flight), default=0)
    missing = target_node_count - len(plan.worker_nodes) - len(in_flight) - waiting_failed
    if missing <= 0 or not can_provision or instance_type is None:
        return plan
    attempt = highest_failed_attempt + 1
    plan.retry_attempt = max(plan.retry_attempt, attempt)
    index = 0
    while missing > 0:
        name = claim_name(ws, index)
        index += 1
        if name in existing:
            continue  # taken by a live claim, or by a failed one still being deleted
        made = build_node_claim(ws, instance_type, name, claim_kind)
        if attempt > 1:
            made["metadata"]["annotations"] = {ATTEMPT_ANNOTATION: str(attempt)}
        plan.claims_to_create.append(made)
        missing -= 1
    return plan


def _ready_names(nodes: Iterable[Mapping[str, Any]]) -> set[str]:
    return {_name(node) for node in nodes if is_node_ready(node)}
