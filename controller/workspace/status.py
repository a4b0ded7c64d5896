"""The workspace's conditions and state from what the controller observed (pure).

Conditions are upstream's: ``ResourceReady`` (the GPU nodes), ``JobStarted`` (the tuning
pod is on its node), ``WorkspaceSucceeded`` (the tuning Job finished), ``InferenceReady``
(the serving workload's pods are ready) and ``WorkspaceReady`` (the whole workspace does
what it was asked). Each has a CamelCase reason and a message a person can act on: a
failed tuning pod's termination message (bad dataset row, push refused), OOMKilled, or
an image that cannot be pulled. ``state`` is the one-word summary ``kubectl get`` shows.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from controller.workspace.nodes import NodePlan, format_timestamp
from controller.workspace.pods import (
    REASON_OOM_KILLED,
    PodTrouble,
    newest,
    pod_trouble,
    probe_recheck_seconds,
)
from crds.meta import Condition, set_condition
from crds.workspace import (
    CONDITION_INFERENCE_READY,
    CONDITION_JOB_STARTED,
    CONDITION_RESOURCE_READY,
    CONDITION_WORKSPACE_READY,
    CONDITION_WORKSPACE_SUCCEEDED,
)

STATE_PENDING = "Pending"
STATE_RUNNING = "Running"
STATE_SUCCEEDED = "Succeeded"
STATE_FAILED = "Failed"
STATE_READY = "Ready"
STATE_NOT_READY = "NotReady"
STATE_DELETING = "Deleting"


@dataclass(frozen=True)
class Verdict:
    """One condition's status, reason and message."""

    status: str
    reason: str
    message: str


@dataclass
class Observed:
    """What the reconciler saw for one workspace."""

    nodes: NodePlan
    is_tuning: bool
    job: Mapping[str, Any] | None = None
    job_pods: Sequence[Mapping[str, Any]] = ()
    workload: Mapping[str, Any] | None = None  # Deployment or StatefulSet
    workload_pods: Sequence[Mapping[str, Any]] = ()
    serves_after_tuning: bool = True
    config_problem: str | None = None  # the operator's default tuning config is unusable
    now: float = 0.0  # Unix time of the observation (how long a probe has failed)


@dataclass
class StatusPlan:
    conditions: dict[str, Verdict] = field(default_factory=dict)
    state: str = STATE_PENDING
    # Look again after this long even if nothing changes (a readiness probe that keeps
    # failing changes nothing in the pod until it is reported as ProbeFailing).
    recheck_after_seconds: float | None = None


def _job_condition(job: Mapping[str, Any], condition_type: str) -> Mapping[str, Any] | None:
    for condition in (job.get("status") or {}).get("conditions") or []:
        if condition.get("type") == condition_type and condition.get("status") == "True":
            return dict(condition)
    return None


def _is_bound(pod: Mapping[str, Any]) -> bool:
    return bool((pod.get("spec") or {}).get("nodeName")) and not (
        pod.get("metadata") or {}).get("deletionTimestamp")


def _resource_verdict(plan: NodePlan) -> Verdict:
    if plan.target_node_count == 0:
        return Verdict("False", "NodesReleased", "tuning finished and the adapter is not "
                       "served here: its GPU nodes were released")
    if plan.fit_problem is not None:
        return Verdict("False", "InsufficientGPUMemory",
                       f"{plan.fit_problem}: {plan.fit_hint}")
    if plan.is_ready:
        names = ", ".join(plan.worker_nodes)
        return Verdict("True", "NodesReady", f"{len(plan.worker_nodes)} GPU node(s) ready: {names}")
    have, want = len(plan.worker_nodes), plan.target_node_count
    if plan.retry_at is not None:
        return Verdict("False", "NodeClaimFailed", (
            f"node provisioning failed (attempt {plan.failed_attempt}): "
            + "; ".join(plan.failures)
            + f"; next try at {format_timestamp(plan.retry_at)}"))
    claims = ", ".join(plan.pending_claims + [
        str(c["metadata"]["name"]) for c in plan.claims_to_create])
    attempt = f" (attempt {plan.retry_attempt})" if plan.retry_attempt > 1 else ""
    if plan.failures:
        return Verdict("False", "NodeClaimFailed",
                       "node provisioning failed, retrying: " + "; ".join(plan.failures)
                       + (f"; waiting for NodeClaim(s) {claims}{attempt}" if claims else ""))
    if claims:
        return Verdict("False", "NodeClaimNotReady",
                       f"{have}/{want} GPU nodes ready; waiting for NodeClaim(s) {claims}"
                       + attempt)
    if plan.busy_nodes:
        return Verdict("False", "GPUsInUse", (
            f"{have}/{want} GPU nodes ready and node provisioning is off: waiting for a "
            f"matching node with {plan.gpus_per_pod} free GPU(s) per pod; the matching "
            f"nodes are taken: {', '.join(plan.busy_nodes)}. Free their GPUs, or add Ready "
            "nodes with nvidia.com/gpu that match resource.labelSelector"))
    return Verdict("False", "NodesNotFound",
                   f"{have}/{want} GPU nodes ready and node provisioning is off: add Ready "
                   "nodes with nvidia.com/gpu that match resource.labelSelector")


def _newest_trouble(pods: Sequence[Mapping[str, Any]], now: float) -> PodTrouble | None:
    """The trouble of the most recently created pod that has one."""
    troubled = [pod for pod in pods if pod_trouble(pod, now) is not None]
    pod = newest(troubled)
    return pod_trouble(pod, now) if pod is not None else None


def _tuning_verdicts(observed: Observed) -> tuple[Verdict, Verdict | None]:
    """(JobStarted, WorkspaceSucceeded or None while running)."""
    job = observed.job
    if job is None and observed.config_problem is not None:
        return Verdict("False", "TuningConfigInvalid",
                       "the default tuning config cannot be used: " + observed.config_problem
                       + " (fix the template or set tuning.config)"), None
    if job is None:
        return Verdict("False", "JobNotCreated", "waiting for GPU nodes before creating the "
                       "tuning Job"), None
    failed = _job_condition(job, "Failed")
    if _job_condition(job, "Complete") or (job.get("status") or {}).get("succeeded"):
        return (Verdict("True", "JobStarted", "the tuning Job ran"),
                Verdict("True", "TuningJobSucceeded", "the tuning Job finished and its "
                        "adapter is saved"))
    if failed:
        trouble = _newest_trouble(observed.job_pods, observed.now)
        message = trouble.message if trouble is not None else (
            failed.get("message") or "the Job failed")
        return (Verdict("True", "JobStarted", "the tuning Job ran"),
                Verdict("False", "TuningJobFailed", message))
    current = newest(observed.job_pods)
    trouble = pod_trouble(current, observed.now) if current is not None else None
    if trouble is not None:
        # The pod of this attempt cannot start, or it failed and the Job will retry
        # (backoffLimit): JobStarted says which, in the kubelet's words.
        reason = trouble.reason if trouble.is_start_failure or (
            trouble.reason == REASON_OOM_KILLED) else "JobRetrying"
        return Verdict("False", reason, trouble.message), None
    if current is not None and _is_bound(current):
        node = (current.get("spec") or {}).get("nodeName")
        return Verdict("True", "JobStarted", f"the tuning pod runs on node {node}"), None
    return Verdict("False", "JobPending", "the tuning Job's pod is not scheduled yet"), None


def _inference_verdict(observed: Observed) -> Verdict:
    workload = observed.workload
    if workload is None:
        return Verdict("False", "WorkloadNotCreated", "the serving workload is not created yet")
    kind = workload.get("kind", "Deployment")
    name = (workload.get("metadata") or {}).get("name")
    wanted = int((workload.get("spec") or {}).get("replicas", 1) or 0)
    ready = int((workload.get("status") or {}).get("readyReplicas", 0) or 0)
    if wanted and ready >= wanted:
        return Verdict("True", "InferenceReady", f"{kind} {name}: {ready}/{wanted} pods ready")
    trouble = _newest_trouble(observed.workload_pods, observed.now)
    if trouble is not None:
        return Verdict("False", trouble.reason,
                       f"{kind} {name}: {ready}/{wanted} pods ready; {trouble.message}")
    return Verdict("False", "InferenceNotReady", f"{kind} {name}: {ready}/{wanted} pods ready")


def plan_status(observed: Observed) -> StatusPlan:
    """Conditions and state for the observed workspace (pure)."""
    plan = StatusPlan()
    waits = [wait for pod in observed.workload_pods
             if (wait := probe_recheck_seconds(pod, observed.now)) is not None]
    plan.recheck_after_seconds = min(waits) if waits else None
    resource = _resource_verdict(observed.nodes)
    plan.conditions[CONDITION_RESOURCE_READY] = resource
    if not observed.is_tuning:
        inference = _inference_verdict(observed)
        plan.conditions[CONDITION_INFERENCE_READY] = inference
        is_ready = resource.status == inference.status == "True"
        plan.conditions[CONDITION_WORKSPACE_READY] = Verdict(
            "True" if is_ready else "False",
            "WorkspaceReady" if is_ready else (
                inference.reason if resource.status == "True" else resource.reason),
            "the model is served" if is_ready else (
                inference.message if resource.status == "True" else resource.message),
        )
        plan.state = STATE_READY if is_ready else (
            STATE_NOT_READY if observed.workload is not None else STATE_PENDING)
        return plan

    started, finished = _tuning_verdicts(observed)
    plan.conditions[CONDITION_JOB_STARTED] = started
    if finished is None:
        plan.conditions[CONDITION_WORKSPACE_SUCCEEDED] = Verdict(
            "False", "TuningInProgress" if started.status == "True" else started.reason,
            "tuning has not finished" if started.status == "True" else started.message)
        plan.conditions[CONDITION_WORKSPACE_READY] = Verdict(
            "False", "TuningInProgress", "the adapter is served once tuning succeeds")
        plan.state = STATE_RUNNING if started.status == "True" else STATE_PENDING
        return plan
    plan.conditions[CONDITION_WORKSPACE_SUCCEEDED] = finished
    if finished.status == "False":
        plan.conditions[CONDITION_WORKSPACE_READY] = Verdict(
            "False", "TuningJobFailed", finished.message)
        plan.state = STATE_FAILED
        return plan
    if not observed.serves_after_tuning:
        plan.conditions[CONDITION_WORKSPACE_READY] = Verdict(
            "True", "TuningJobSucceeded", "tuning finished; serving is turned off by annotation")
        plan.state = STATE_SUCCEEDED
        return plan
    inference = _inference_verdict(observed)
    plan.conditions[CONDITION_INFERENCE_READY] = inference
    is_ready = inference.status == "True"
    plan.conditions[CONDITION_WORKSPACE_READY] = Verdict(
        "True" if is_ready else "False",
        "WorkspaceReady" if is_ready else inference.reason,
        "the tuned adapter is served" if is_ready else inference.message,
    )
    plan.state = STATE_READY if is_ready else STATE_SUCCEEDED
    return plan


def apply_conditions(
    current: list[Condition] | None, plan: StatusPlan, generation: int | None, now: str
) -> list[Condition]:
    """``current`` with the planned conditions set (transition times kept when the
    status did not change, so an unchanged plan gives an identical list)."""
    conditions = list(current or [])
    for condition_type, verdict in plan.conditions.items():
        conditions = set_condition(conditions, Condition(
            type=condition_type, status=verdict.status,  # type: ignore[arg-type]
            observed_generation=generation, last_transition_time=now,
            reason=verdict.reason, message=verdict.message[:32768],
        ))
    return conditions
