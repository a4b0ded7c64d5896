"""A failing pod is never "Ready" or merely "waiting": the workspace's conditions carry the
scheduler's and kubelet's reason and message, and come back when the pod recovers."""

from __future__ import annotations

import json
from typing import Any

import pytest

from controller.workspace.nodes import plan_nodes
from controller.workspace.pods import PROBE_GRACE_SECONDS, final_progress, pod_trouble
from controller.workspace.status import Observed, plan_status
from crds.workspace import Workspace
from runtime.progress import ProgressTracker

pytestmark = pytest.mark.unit

NOW = 1_800_000_000.0  # 2027-01-15T08:00:00Z
STARTED = "2027-01-15T07:59:50Z"  # 10 s before NOW
LONG_AGO = "2027-01-15T07:50:00Z"
IMAGE = "10.244.0.1:5001/kaito-runtime:abc"


def _workspace(tuning: bool = False) -> Workspace:
    body: dict[str, Any] = {
        "metadata": {"name": "ws1", "namespace": "team", "uid": "u-1", "generation": 1},
        "resource": {"instanceType": "Standard_NC6s_v3",
                     "labelSelector": {"matchLabels": {"app": "ws1"}}},
    }
    if tuning:
        body["tuning"] = {"preset": {"name": "phi-3-mini-128k-instruct"}, "method": "qlora",
                          "input": {"urls": ["https://example.com/d.parquet"]},
                          "output": {"image": "r.example/a:1", "imagePushSecret": "s"}}
    else:
        body["inference"] = {"preset": {"name": "phi-3-mini-128k-instruct"}}
    return Workspace.model_validate(body)


def _nodes(tuning: bool = False) -> Any:
    node = {"metadata": {"name": "n0", "labels": {"app": "ws1"}},
            "status": {"allocatable": {"nvidia.com/gpu": "1"},
                       "conditions": [{"type": "Ready", "status": "True"}]}}
    return plan_nodes(_workspace(tuning), target_node_count=1,
                      instance_type="Standard_NC6s_v3", nodes=[node], claims=[])


def _pod(name: str = "ws1-abc", *, container: dict[str, Any] | None = None,
         init: dict[str, Any] | None = None, conditions: list[dict[str, Any]] | None = None,
         node: str | None = "n0", created: str = LONG_AGO, phase: str = "Pending",
         container_name: str = "inference") -> dict[str, Any]:
    spec: dict[str, Any] = {"containers": [{
        "name": container_name, "image": IMAGE,
        "resources": {"limits": {"memory": "8Gi", "nvidia.com/gpu": "1"}},
        "readinessProbe": {"httpGet": {"path": "/health", "port": 5000}}}],
        "initContainers": [{"name": "pull-adapter-0", "image": IMAGE}]}
    if node:
        spec["nodeName"] = node
    status: dict[str, Any] = {"phase": phase, "conditions": conditions or []}
    if container is not None:
        status["containerStatuses"] = [{"name": container_name, **container}]
    if init is not None:
        status["initContainerStatuses"] = [{"name": "pull-adapter-0", **init}]
    return {"metadata": {"name": name, "creationTimestamp": created}, "spec": spec,
            "status": status}


def _deployment(ready: int, wanted: int = 1) -> dict[str, Any]:
    return {"kind": "Deployment", "metadata": {"name": "ws1"}, "spec": {"replicas": wanted},
            "status": {"readyReplicas": ready}}


UNSCHEDULABLE = _pod(node=None, conditions=[{
    "type": "PodScheduled", "status": "False", "reason": "Unschedulable",
    "message": "0/2 nodes are available: 2 Insufficient nvidia.com/gpu."}])
PULL_BACKOFF = _pod(container={"state": {"waiting": {
    "reason": "ImagePullBackOff", "message": f"Back-off pulling image \"{IMAGE}\""}},
    "ready": False, "restartCount": 0, "image": IMAGE})
CRASH_LOOP = _pod(container={
    "state": {"waiting": {"reason": "CrashLoopBackOff", "message": "back-off 40s"}},
    "lastState": {"terminated": {"exitCode": 1, "reason": "Error",
                                 "message": "inference_config.yaml: max_batch_size: not an int"}},
    "ready": False, "restartCount": 3})
INIT_CRASH_LOOP = _pod(init={
    "state": {"waiting": {"reason": "CrashLoopBackOff"}},
    "lastState": {"terminated": {"exitCode": 2, "reason": "Error",
                                 "message": "adapter r/a:9 not found in the registry"}},
    "ready": False, "restartCount": 2})
OOM_LOOP = _pod(container={
    "state": {"waiting": {"reason": "CrashLoopBackOff"}},
    "lastState": {"terminated": {"exitCode": 137, "reason": "OOMKilled"}},
    "ready": False, "restartCount": 1})
PROBE_FAILING = _pod(container={"state": {"running": {"startedAt": LONG_AGO}},
                                "started": True, "ready": False, "restartCount": 0})
JUST_STARTED = _pod(container={"state": {"running": {"startedAt": STARTED}},
                               "started": True, "ready": False, "restartCount": 0})
LOADING = _pod(container={"state": {"running": {"startedAt": LONG_AGO}},
                          "started": False, "ready": False, "restartCount": 0})
HEALTHY = _pod(container={"state": {"running": {"startedAt": LONG_AGO}},
                          "started": True, "ready": True, "restartCount": 0}, phase="Running")


@pytest.mark.parametrize(("pod", "reason", "words"), [
    (UNSCHEDULABLE, "Unschedulable", ["ws1-abc", "Insufficient nvidia.com/gpu"]),
    (PULL_BACKOFF, "ImagePullBackOff", ["cannot pull image " + IMAGE, "container inference"]),
    (CRASH_LOOP, "CrashLoopBackOff", ["restarted 3 times", "Error (exit code 1)",
                                      "max_batch_size: not an int"]),
    (INIT_CRASH_LOOP, "CrashLoopBackOff", ["container pull-adapter-0",
                                           "adapter r/a:9 not found"]),
    (OOM_LOOP, "OOMKilled", ["OOMKilled (memory limit 8Gi, exit code 137)", "restarted 1"]),
    (PROBE_FAILING, "ProbeFailing", ["readiness probe", "HTTP GET /health on port 5000"]),
])
def test_inference_ready_is_false_with_the_pods_reason(
    pod: dict[str, Any], reason: str, words: list[str]
) -> None:
    plan = plan_status(Observed(nodes=_nodes(), is_tuning=False, workload=_deployment(0),
                                workload_pods=[pod], now=NOW))
    for condition in ("InferenceReady", "WorkspaceReady"):
        verdict = plan.conditions[condition]
        assert (verdict.status, verdict.reason) == ("False", reason), verdict
        for word in words:
            assert word in verdict.message, (word, verdict.message)
    assert plan.state == "NotReady"


@pytest.mark.parametrize("pod", [JUST_STARTED, LOADING])
def test_a_pod_still_starting_is_waiting_not_failing(pod: dict[str, Any]) -> None:
    plan = plan_status(Observed(nodes=_nodes(), is_tuning=False, workload=_deployment(0),
                                workload_pods=[pod], now=NOW))
    assert plan.conditions["InferenceReady"].reason == "InferenceNotReady"


def test_a_probe_in_its_grace_window_is_looked_at_again_when_it_ends() -> None:
    plan = plan_status(Observed(nodes=_nodes(), is_tuning=False, workload=_deployment(0),
                                workload_pods=[JUST_STARTED], now=NOW))
    assert plan.recheck_after_seconds is not None
    assert PROBE_GRACE_SECONDS - 10 < plan.recheck_after_seconds <= PROBE_GRACE_SECONDS
    later = plan_status(Observed(nodes=_nodes(), is_tuning=False, workload=_deployment(0),
                                 workload_pods=[JUST_STARTED],
                                 now=NOW + plan.recheck_after_seconds))
    assert later.conditions["InferenceReady"].reason == "ProbeFailing"


def test_recovery_turns_the_conditions_back_to_true() -> None:
    failing = plan_status(Observed(nodes=_nodes(), is_tuning=False, workload=_deployment(0),
                                   workload_pods=[CRASH_LOOP], now=NOW))
    assert failing.conditions["WorkspaceReady"].status == "False"
    recovered = plan_status(Observed(nodes=_nodes(), is_tuning=False,
                                     workload=_deployment(1), workload_pods=[HEALTHY], now=NOW))
    assert recovered.conditions["InferenceReady"].status == "True"
    assert recovered.conditions["WorkspaceReady"].status == "True"
    assert recovered.state == "Ready"


def test_a_terminating_pod_is_not_the_workspaces_trouble() -> None:
    old = json.loads(json.dumps(CRASH_LOOP))
    old["metadata"]["deletionTimestamp"] = LONG_AGO
    assert pod_trouble(old, NOW) is None


def test_the_newest_pods_trouble_is_reported() -> None:
    old = json.loads(json.dumps(PULL_BACKOFF))
    new = json.loads(json.dumps(CRASH_LOOP))
    old["metadata"].update(name="ws1-old", creationTimestamp="2027-01-15T07:00:00Z")
    new["metadata"].update(name="ws1-new", creationTimestamp="2027-01-15T07:30:00Z")
    for pods in ([old, new], [new, old]):
        plan = plan_status(Observed(nodes=_nodes(), is_tuning=False, workload=_deployment(0),
                                    workload_pods=pods, now=NOW))
        assert plan.conditions["InferenceReady"].reason == "CrashLoopBackOff"
        assert "ws1-new" in plan.conditions["InferenceReady"].message


@pytest.mark.parametrize(("pod", "reason"), [
    (UNSCHEDULABLE, "Unschedulable"),
    (PULL_BACKOFF, "ImagePullBackOff"),
])
def test_job_started_is_false_while_the_tuning_pod_cannot_start(
    pod: dict[str, Any], reason: str
) -> None:
    tuning_pod = json.loads(json.dumps(pod).replace('"inference"', '"tuner"'))
    plan = plan_status(Observed(nodes=_nodes(True), is_tuning=True, job={"status": {"active": 1}},
                                job_pods=[tuning_pod], now=NOW))
    started = plan.conditions["JobStarted"]
    assert (started.status, started.reason) == ("False", reason)
    assert plan.conditions["WorkspaceSucceeded"].reason == reason
    assert plan.conditions["WorkspaceSucceeded"].message == started.message
    assert plan.state == "Pending"


def test_an_oom_killed_tuning_attempt_says_so_while_the_job_retries() -> None:
    pod = _pod(container={"state": {"terminated": {"exitCode": 137, "reason": "OOMKilled"}}},
               container_name="tuner", phase="Failed")
    plan = plan_status(Observed(nodes=_nodes(True), is_tuning=True, job={"status": {"failed": 1}},
                                job_pods=[pod], now=NOW))
    started = plan.conditions["JobStarted"]
    assert (started.status, started.reason) == ("False", "OOMKilled")
    assert "memory limit 8Gi" in started.message


def test_the_final_progress_is_the_tuners_termination_message(tmp_path: Any) -> None:
    tracker = ProgressTracker(tmp_path / "progress.json")
    tracker.begin_training(total_steps=16, start_step=0)
    for step in range(1, 17):
        tracker.record_step(step=step, loss=2.0 - step / 10, learning_rate=1e-4, tokens=100,
                            epoch=1.0)
    tracker.set_phase("succeeded")
    summary = tracker.final_summary()
    assert len(summary) < 4096
    pod = _pod(container={"state": {"terminated": {"exitCode": 0, "reason": "Completed",
                                                   "message": summary}}},
               container_name="tuner", phase="Succeeded")
    final = final_progress([pod], "tuner")
    assert final is not None
    assert (final["phase"], final["step"], final["total_steps"]) == ("succeeded", 16, 16)
    text = _pod(container={"state": {"terminated": {"exitCode": 2, "message": "bad row 3"}}},
                container_name="tuner")
    assert final_progress([text], "tuner") is None


def test_status_tuning_ends_with_the_runs_final_state() -> None:
    from controller.workspace.report import final_tuning_status

    previous = {"phase": "training", "step": 15, "totalSteps": 16, "progress": "15/16",
                "etaSeconds": 3}
    summary = json.dumps({"phase": "succeeded", "step": 16, "total_steps": 16, "loss": 0.5})
    done = _pod(container={"state": {"terminated": {"exitCode": 0, "message": summary}}},
                container_name="tuner", phase="Succeeded")
    observed = Observed(nodes=_nodes(True), is_tuning=True, job_pods=[done], now=NOW)
    final = final_tuning_status(previous, observed, True)
    assert final is not None
    assert (final["phase"], final["progress"], final["loss"]) == ("succeeded", "16/16", "0.500")
    # An older runtime left no summary: the last progress read, with the outcome as phase.
    bare = Observed(nodes=_nodes(True), is_tuning=True, job_pods=[], now=NOW)
    assert final_tuning_status(previous, bare, True) == {
        **previous, "phase": "succeeded", "etaSeconds": 0}
    failed = final_tuning_status(previous, bare, False)
    assert failed is not None and failed["phase"] == "failed" and "etaSeconds" not in failed
