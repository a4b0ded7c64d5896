"""Writing what a reconcile pass found: the workspace's status (conditions, state,
tuning progress) when it changed, and an Event for each step a user wants to see.

Tuning progress is pulled from the running tuning pod at most once per interval; once
the Job has ended, ``status.tuning`` shows the run's final state (the tuning container's
termination message, else the Job's outcome), never the last step read while it
trained. Kept apart from the reconciler, which decides; this module reports.
"""

from __future__ import annotations

import time
from typing import Any

from controller.events import NORMAL, WARNING, EventRecorder
from controller.kube.resources import WORKSPACES, KubeObject
from controller.objects import ObjectWriter
from controller.workspace.metrics import WorkspaceMetrics
from controller.workspace.pods import final_progress
from controller.workspace.progress import ProgressReader, progress_status, same_progress
from controller.workspace.status import Observed, StatusPlan, apply_conditions
from controller.workspace.tuning import TUNER_CONTAINER
from crds.workspace import CONDITION_INFERENCE_READY, CONDITION_WORKSPACE_READY, Workspace

# Conditions saying only that the workspace waits: no Event (waiting is not news).
WAITING_REASONS = frozenset({
    "TuningInProgress", "JobNotCreated", "JobPending", "NodeClaimNotReady",
    "WorkloadNotCreated", "InferenceNotReady"})


def _now() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())


def final_tuning_status(previous: dict[str, Any] | None, observed: Observed,
                        succeeded: bool) -> dict[str, Any] | None:
    """``status.tuning`` once the Job has ended: the tuning container's last snapshot
    (its termination message), else the last one read with the Job's outcome as the
    phase, so the status never stays at "training 15/16" after the run is over."""
    snapshot = final_progress(observed.job_pods, TUNER_CONTAINER)
    if snapshot is not None and (snapshot.get("phase") == "succeeded") == succeeded:
        fresh = progress_status(snapshot, time.time())
        return previous if same_progress(previous, fresh) else fresh
    phase = "succeeded" if succeeded else "failed"
    if previous is None or previous.get("phase") == phase:
        return previous
    return {**previous, "phase": phase, "etaSeconds": 0} if succeeded else {
        **{k: v for k, v in previous.items() if k != "etaSeconds"}, "phase": phase}


class StatusReporter:
    """Status writes, progress reads and Events for the Workspace reconciler."""

    def __init__(self, objects: ObjectWriter, recorder: EventRecorder,
                 progress: ProgressReader, *, progress_interval_seconds: float,
                 metrics: WorkspaceMetrics | None = None) -> None:
        self._objects = objects
        self._recorder = recorder
        self._progress = progress
        self._interval = progress_interval_seconds
        self._metrics = metrics
        self._last_progress_read: dict[str, float] = {}

    def forget(self, key: str) -> None:
        self._last_progress_read.pop(key, None)

    async def close(self) -> None:
        await self._progress.close()

    async def tuning_progress(
        self, key: str, ws: Workspace, observed: Observed
    ) -> tuple[dict[str, Any] | None, float | None]:
        """(status.tuning, requeue_after) — reads the pod at most once per interval."""
        previous = ws.status.tuning.model_dump(by_alias=True, exclude_none=True, mode="json") if (
            ws.status and ws.status.tuning) else None
        if not observed.is_tuning or observed.job is None:
            return previous, None
        job_status = observed.job.get("status") or {}
        if job_status.get("succeeded") or job_status.get("failed") and not job_status.get(
                "active"):
            return final_tuning_status(previous, observed, bool(job_status.get("succeeded"))), None
        now = time.monotonic()
        last = self._last_progress_read.get(key)
        if last is not None and now - last < self._interval:
            return previous, self._interval - (now - last)
        self._last_progress_read[key] = now
        running = [pod for pod in observed.job_pods
                   if (pod.get("status") or {}).get("phase") == "Running"]
        if not running:
            return previous, self._interval
        snapshot = await self._progress.read(running[-1])
        if snapshot is None:
            return previous, self._interval
        fresh = progress_status(snapshot, time.time())
        return (previous if same_progress(previous, fresh) else fresh), self._interval

    async def write(
        self, ws: Workspace, obj: KubeObject, plan: StatusPlan, *, target: int | None,
        workers: list[str] | None, tuning: dict[str, Any] | None,
    ) -> bool:
        """Replace the status when it differs from what is stored; True if written."""
        current = dict(obj.get("status") or {})
        conditions = apply_conditions(ws.status.conditions if ws.status else None, plan,
                                      ws.metadata.generation, _now())
        status: dict[str, Any] = {
            "conditions": [c.model_dump(by_alias=True, exclude_none=True, mode="json")
                           for c in conditions],
            "state": plan.state,
        }
        if target is not None:
            status["targetNodeCount"] = target
        if workers:
            status["workerNodes"] = workers
        if tuning:
            status["tuning"] = tuning
        if status == current:
            return False
        body = dict(obj)
        body["status"] = status
        # A Conflict means a newer workspace is on its way: the retry reads it.
        await self._objects.replace_status(WORKSPACES, body)
        if self._metrics is not None:
            self._metrics.observe_transitions(obj, current.get("conditions") or [],
                                              status["conditions"])
        return True

    async def record_transitions(self, obj: KubeObject, plan: StatusPlan) -> None:
        """An Event for each condition whose status or reason changed in this pass.

        Waiting is not news; WorkspaceReady=False only repeats another condition's reason;
        and when WorkspaceReady turns True, InferenceReady turning True in the same pass is
        folded into it (one Event per step, not per condition)."""
        before = {c.get("type"): (c.get("status"), c.get("reason"))
                  for c in (obj.get("status") or {}).get("conditions") or []}
        changed = {kind: verdict for kind, verdict in plan.conditions.items()
                   if before.get(kind) != (verdict.status, verdict.reason)}
        ready = changed.get(CONDITION_WORKSPACE_READY)
        for condition_type, verdict in changed.items():
            if verdict.status == "False" and (
                    verdict.reason in WAITING_REASONS
                    or condition_type == CONDITION_WORKSPACE_READY):
                continue
            if (condition_type == CONDITION_INFERENCE_READY and verdict.status == "True"
                    and ready is not None and ready.status == "True"):
                continue
            await self._recorder.record(
                obj, NORMAL if verdict.status == "True" else WARNING, verdict.reason,
                f"{condition_type}: {verdict.message}")
