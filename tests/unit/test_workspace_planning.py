"""The Workspace controller's pure planners: nodes and claims, conditions and state,
revisions, progress in status."""

from __future__ import annotations

from typing import Any

import pytest

from controller.objects import desired_hash, with_hash
from controller.workspace.nodes import claim_name, plan_nodes
from controller.workspace.progress import progress_status, same_progress
from controller.workspace.revision import revision_hash
from controller.workspace.status import Observed, apply_conditions, plan_status
from crds.workspace import Workspace

pytestmark = pytest.mark.unit


def workspace(name: str = "ws1", namespace: str = "team", **extra: Any) -> Workspace:
    body: dict[str, Any] = {
        "metadata": {"name": name, "namespace": namespace, "uid": "u-1", "generation": 1},
        "resource": {"instanceType": "Standard_NC6s_v3",
                     "labelSelector": {"matchLabels": {"app": name}}},
        "tuning": {"preset": {"name": "phi-3-mini-128k-instruct"}, "method": "qlora",
                   "input": {"urls": ["https://example.com/d.parquet"]},
                   "output": {"image": "r.example/a:1", "imagePushSecret": "s"}},
    }
    body.update(extra)
    return Workspace.model_validate(body)


def node(name: str, labels: dict[str, str], *, ready: bool = True, gpus: int = 1
         ) -> dict[str, Any]:
    return {"metadata": {"name": name, "labels": labels},
            "status": {"allocatable": {"nvidia.com/gpu": str(gpus)},
                       "conditions": [{"type": "Ready", "status": str(ready)}]}}


def claim(name: str, *, node_name: str | None = None, failed: str | None = None
          ) -> dict[str, Any]:
    status: dict[str, Any] = {}
    if node_name:
        status["nodeName"] = node_name
    if failed:
        status["conditions"] = [{"type": "Launched", "status": "False", "reason": failed,
                                 "message": "no capacity"}]
    return {"metadata": {"name": name}, "status": status}


def test_claim_names_are_stable_and_distinct_across_namespaces() -> None:
    assert claim_name(workspace(), 0) == claim_name(workspace(), 0)
    assert claim_name(workspace(), 0) != claim_name(workspace(namespace="other"), 0)
    assert len(claim_name(workspace("x" * 63), 9)) <= 63


def test_no_nodes_makes_one_claim_with_the_sku_taint_and_labels() -> None:
    plan = plan_nodes(workspace(), target_node_count=1, instance_type="Standard_NC6s_v3",
                      nodes=[], claims=[])
    assert not plan.is_ready and len(plan.claims_to_create) == 1
    made = plan.claims_to_create[0]
    assert made["metadata"]["labels"] == {
        "app": "ws1", "kaito.sh/workspace": "ws1", "kaito.sh/workspacenamespace": "team",
        "karpenter.sh/nodepool": "kaito"}
    assert made["spec"]["requirements"][0] == {
        "key": "node.kubernetes.io/instance-type", "operator": "In",
        "values": ["Standard_NC6s_v3"]}
    assert made["spec"]["taints"] == [{"key": "sku", "value": "gpu", "effect": "NoSchedule"}]


def test_bring_your_own_nodes_need_no_claim() -> None:
    nodes = [node("mine", {"app": "ws1"}), node("other", {"app": "x"}),
             node("sick", {"app": "ws1"}, ready=False), node("cpu", {"app": "ws1"}, gpus=0)]
    plan = plan_nodes(workspace(), target_node_count=1, instance_type="Standard_NC6s_v3",
                      nodes=nodes, claims=[])
    assert plan.is_ready and plan.worker_nodes == ["mine"] and not plan.claims_to_create


def test_a_pending_claim_is_not_duplicated_and_a_ready_one_counts() -> None:
    name = claim_name(workspace(), 0)
    pending = plan_nodes(workspace(), target_node_count=1, instance_type="Standard_NC6s_v3",
                         nodes=[], claims=[claim(name)])
    assert not pending.claims_to_create and pending.pending_claims == [name]
    ready = plan_nodes(workspace(), target_node_count=1, instance_type="Standard_NC6s_v3",
                       nodes=[node("n0", {"app": "ws1"})], claims=[claim(name, node_name="n0")])
    assert ready.is_ready and not ready.claims_to_create and not ready.pending_claims


def test_a_failed_claim_is_deleted_and_replaced_under_another_name() -> None:
    name = claim_name(workspace(), 0)
    plan = plan_nodes(workspace(), target_node_count=1, instance_type="Standard_NC6s_v3",
                      nodes=[], claims=[claim(name, failed="QuotaExceeded")])
    assert plan.claims_to_delete == [name]
    assert [c["metadata"]["name"] for c in plan.claims_to_create] == [claim_name(workspace(), 1)]
    verdict = plan_status(Observed(nodes=plan, is_tuning=True)).conditions["ResourceReady"]
    assert verdict.reason == "NodeClaimFailed" and "QuotaExceeded: no capacity" in verdict.message


def test_provisioning_off_waits_for_nodes_with_a_hint() -> None:
    plan = plan_nodes(workspace(), target_node_count=1, instance_type="Standard_NC6s_v3",
                      nodes=[], claims=[], can_provision=False)
    assert not plan.claims_to_create
    verdict = plan_status(Observed(nodes=plan, is_tuning=True)).conditions["ResourceReady"]
    assert verdict.reason == "NodesNotFound" and "resource.labelSelector" in verdict.message


def _ready_plan() -> Any:
    return plan_nodes(workspace(), target_node_count=1, instance_type="Standard_NC6s_v3",
                      nodes=[node("n0", {"app": "ws1"})], claims=[])


def test_tuning_states_from_pending_to_ready() -> None:
    job: dict[str, Any] = {"status": {"active": 1}}
    pod = {"spec": {"nodeName": "n0"}, "status": {"phase": "Running"}}
    running = plan_status(Observed(nodes=_ready_plan(), is_tuning=True, job=job,
                                   job_pods=[pod]))
    assert running.state == "Running"
    assert running.conditions["JobStarted"].status == "True"
    assert running.conditions["WorkspaceSucceeded"].status == "False"
    done = {"status": {"succeeded": 1, "conditions": [{"type": "Complete", "status": "True"}]}}
    serving = {"kind": "Deployment", "metadata": {"name": "ws1"}, "spec": {"replicas": 1},
               "status": {"readyReplicas": 1}}
    ready = plan_status(Observed(nodes=_ready_plan(), is_tuning=True, job=done,
                                 workload=serving))
    assert ready.state == "Ready"
    assert all(v.status == "True" for v in ready.conditions.values())
    opted_out = plan_status(Observed(nodes=_ready_plan(), is_tuning=True, job=done,
                                     serves_after_tuning=False))
    assert opted_out.state == "Succeeded"
    assert opted_out.conditions["WorkspaceReady"].status == "True"


@pytest.mark.parametrize(
    ("container", "expected"),
    [
        ({"state": {"terminated": {"exitCode": 2, "reason": "Error",
                                   "message": "data.csv row 3: empty value"}}},
         "pod ? container tuner failed: Error (exit code 2): data.csv row 3: empty value"),
        ({"state": {"terminated": {"exitCode": 137, "reason": "OOMKilled"}}},
         "pod ? container tuner was OOMKilled (exit code 137)"),
        ({"state": {"waiting": {"reason": "ImagePullBackOff",
                                "message": "Back-off pulling image \"r/x:1\""}}},
         ("pod ? container tuner cannot pull image ?: ImagePullBackOff: "
          "Back-off pulling image \"r/x:1\"")),
    ],
)
def test_failed_tuning_says_why(container: dict[str, Any], expected: str) -> None:
    pod = {"spec": {"nodeName": "n0"},
           "status": {"phase": "Failed", "containerStatuses": [{"name": "tuner", **container}]}}
    job = {"status": {"failed": 3, "conditions": [{"type": "Failed", "status": "True",
                                                   "message": "BackoffLimitExceeded"}]}}
    plan = plan_status(Observed(nodes=_ready_plan(), is_tuning=True, job=job, job_pods=[pod]))
    assert plan.state == "Failed"
    assert plan.conditions["WorkspaceSucceeded"].message == expected
    assert plan.conditions["WorkspaceReady"].reason == "TuningJobFailed"


def test_unchanged_plan_gives_identical_conditions() -> None:
    plan = plan_status(Observed(nodes=_ready_plan(), is_tuning=True))
    first = apply_conditions(None, plan, 1, "2026-01-01T00:00:00Z")
    again = apply_conditions(first, plan, 1, "2026-01-01T00:05:00Z")
    assert first == again


def test_revision_covers_the_spec_only() -> None:
    base = workspace()
    assert revision_hash(base) == revision_hash(workspace(status={"state": "Running"}))
    changed = workspace(tuning={"preset": {"name": "phi-3-mini-128k-instruct"},
                                "method": "lora"})
    assert revision_hash(base) != revision_hash(changed)


def test_desired_hash_ignores_key_order_and_is_recorded() -> None:
    one = {"metadata": {"name": "a"}, "spec": {"x": 1, "y": 2}}
    two = {"spec": {"y": 2, "x": 1}, "metadata": {"name": "a"}}
    assert desired_hash(one) == desired_hash(two)
    marked = with_hash(dict(one))
    assert marked["metadata"]["annotations"]["workspace.kaito.sh/desired-hash"] == \
        desired_hash(one)


def test_progress_status_rounds_and_ignores_the_clock() -> None:
    snapshot = {"phase": "training", "step": 120, "total_steps": 600, "loss": 1.23456,
                "tokens_per_second": 812.7, "eta_seconds": 95.2,
                "precision": {"dtype": "bfloat16"},
                "evaluation": {"before": {"loss": 2.5, "perplexity": 12.18}}}
    first = progress_status(snapshot, 1000.0)
    assert first == {"phase": "training", "step": 120, "totalSteps": 600,
                     "progress": "120/600", "loss": "1.235", "tokensPerSecond": "813",
                     "etaSeconds": 95, "dtype": "bfloat16",
                     "evaluationBefore": {"loss": 2.5, "perplexity": 12.18},
                     "updatedAt": "1970-01-01T00:16:40Z"}
    assert same_progress(first, progress_status(snapshot, 2000.0))
    assert not same_progress(first, progress_status({**snapshot, "step": 121}, 2000.0))


def test_workspace_metrics_count_states_and_time_conditions() -> None:
    from prometheus_client import CollectorRegistry, generate_latest

    from controller.workspace.metrics import WorkspaceMetrics

    cached = [
        {"metadata": {"name": "a", "namespace": "n"}, "tuning": {"preset": {"name": "p"}},
         "status": {"state": "Running", "tuning": {"step": 3, "totalSteps": 10, "loss": "1.5"}}},
        {"metadata": {"name": "b", "namespace": "n"}, "inference": {"preset": {"name": "q"}},
         "status": {"state": "Ready"}},
        {"metadata": {"name": "c", "namespace": "n"}, "inference": {"preset": {"name": "q"}},
         "status": {"state": "Ready"}},
    ]
    registry = CollectorRegistry()
    metrics = WorkspaceMetrics(registry, lambda: cached)
    ws = {"metadata": {"creationTimestamp": "2026-01-01T00:00:00Z"}, "tuning": {"method": "lora"}}
    metrics.observe_transitions(
        ws, [{"type": "ResourceReady", "status": "False"}],
        [{"type": "ResourceReady", "status": "True",
          "lastTransitionTime": "2026-01-01T00:00:42Z"}])
    metrics.observe_transitions(  # already True: not observed again
        ws, [{"type": "ResourceReady", "status": "True"}],
        [{"type": "ResourceReady", "status": "True",
          "lastTransitionTime": "2026-01-01T00:09:00Z"}])
    text = generate_latest(registry).decode()
    assert 'kaito_workspaces{mode="inference",preset="q",state="Ready"} 2.0' in text
    assert 'kaito_workspaces{mode="tuning",preset="p",state="Running"} 1.0' in text
    assert 'kaito_workspace_tuning_step{namespace="n",workspace="a"} 3.0' in text
    assert 'kaito_workspace_tuning_loss{namespace="n",workspace="a"} 1.5' in text
    assert ('kaito_workspace_condition_seconds_sum{condition="ResourceReady",mode="tuning"} 42.0'
            in text)
    assert ('kaito_workspace_condition_seconds_count{condition="ResourceReady",mode="tuning"} 1.0'
            in text)


def test_legacy_machines_by_flag() -> None:
    from controller.__main__ import load_settings

    assert load_settings(["--use-machines"]).workspace.use_machines is True
    plan = plan_nodes(workspace(), target_node_count=1, instance_type="Standard_NC6s_v3",
                      nodes=[], claims=[], claim_kind="Machine")
    machine = plan.claims_to_create[0]
    assert (machine["apiVersion"], machine["kind"]) == ("karpenter.sh/v1alpha5", "Machine")
    assert machine["spec"]["machineTemplateRef"] == {"name": "default"}
    assert "nodeClassRef" not in machine["spec"]


def test_released_nodes_after_tuning_are_not_an_error() -> None:
    plan = plan_nodes(workspace(), target_node_count=0, instance_type="Standard_NC6s_v3",
                      nodes=[], claims=[])
    assert not plan.claims_to_create
    done = {"status": {"succeeded": 1}}
    status = plan_status(Observed(nodes=plan, is_tuning=True, job=done,
                                  serves_after_tuning=False))
    assert status.conditions["ResourceReady"].reason == "NodesReleased"
    assert status.conditions["WorkspaceReady"].status == "True"
    assert status.state == "Succeeded"


# -- capacity: a node another workspace fills is not ours (issue 21, item 3) -------------

def test_a_node_whose_gpus_other_pods_hold_is_not_capacity() -> None:
    nodes = [node("shared", {"app": "ws1"})]
    plan = plan_nodes(workspace(), target_node_count=1, instance_type="Standard_NC6s_v3",
                      nodes=nodes, claims=[], gpus_per_pod=1, gpus_used={"shared": 1})
    assert not plan.is_ready and plan.worker_nodes == []
    assert [c["metadata"]["name"] for c in plan.claims_to_create] == [claim_name(workspace(), 0)]
    # A node with GPUs left over still counts; our own pod on a node keeps it ours.
    roomy = plan_nodes(workspace(), target_node_count=1, instance_type="Standard_NC6s_v3",
                       nodes=[node("big", {"app": "ws1"}, gpus=4)], claims=[],
                       gpus_per_pod=2, gpus_used={"big": 2})
    assert roomy.is_ready and roomy.worker_nodes == ["big"]
    too_small = plan_nodes(workspace(), target_node_count=1, instance_type="Standard_NC6s_v3",
                           nodes=[node("big", {"app": "ws1"}, gpus=4)], claims=[],
                           gpus_per_pod=2, gpus_used={"big": 3})
    assert not too_small.is_ready


def test_a_node_made_for_another_workspace_is_never_ours() -> None:
    theirs = node("theirs", {"app": "ws1", "kaito.sh/workspace": "ws1",
                             "kaito.sh/workspacenamespace": "default"}, gpus=8)
    plan = plan_nodes(workspace(), target_node_count=1, instance_type="Standard_NC6s_v3",
                      nodes=[theirs], claims=[])
    assert not plan.is_ready and len(plan.claims_to_create) == 1
    mine = node("mine", {"app": "ws1", "kaito.sh/workspace": "ws1",
                         "kaito.sh/workspacenamespace": "team"})
    ours = plan_nodes(workspace(), target_node_count=1, instance_type="Standard_NC6s_v3",
                      nodes=[theirs, mine], claims=[claim(claim_name(workspace(), 0),
                                                          node_name="mine")])
    assert ours.is_ready and ours.worker_nodes == ["mine"] and not ours.claims_to_create


def test_a_pool_node_lent_to_another_workspace_shares_its_free_gpus() -> None:
    """The pool backend lends a node and never deletes it: what its GPUs leave free is
    capacity for any workspace whose selector it matches (the real-node tier's one node)."""
    lent = node("pool-0", {"app": "ws1", "kaito.sh/pool": "true", "kaito.sh/workspace": "ws1",
                           "kaito.sh/workspacenamespace": "default"}, gpus=2)
    plan = plan_nodes(workspace(), target_node_count=1, instance_type="Standard_NC6s_v3",
                      nodes=[lent], claims=[], gpus_per_pod=1, gpus_used={"pool-0": 1})
    assert plan.is_ready and plan.worker_nodes == ["pool-0"] and not plan.claims_to_create
    full = plan_nodes(workspace(), target_node_count=1, instance_type="Standard_NC6s_v3",
                      nodes=[lent], claims=[], gpus_per_pod=1, gpus_used={"pool-0": 2})
    assert not full.is_ready


def test_a_node_our_pod_runs_on_stays_ours_and_our_claims_nodes_come_first() -> None:
    nodes = [node("a", {"app": "ws1"}), node("b", {"app": "ws1"})]
    plan = plan_nodes(workspace(), target_node_count=2, instance_type="Standard_NC6s_v3",
                      nodes=nodes, claims=[], gpus_used={"a": 1, "b": 1}, nodes_in_use={"b"})
    assert plan.worker_nodes == ["b"]
    claimed = plan_nodes(workspace(), target_node_count=1, instance_type="Standard_NC6s_v3",
                         nodes=nodes, claims=[claim(claim_name(workspace(), 0), node_name="b")])
    assert claimed.worker_nodes == ["b"]


def test_bring_your_own_nodes_all_taken_say_what_the_workspace_waits_for() -> None:
    nodes = [node("byo-1", {"app": "ws1"}), node("byo-2", {"app": "ws1"}, gpus=2),
             node("theirs", {"app": "ws1", "kaito.sh/workspace": "other",
                             "kaito.sh/workspacenamespace": "team"})]
    plan = plan_nodes(workspace(), target_node_count=1, instance_type="Standard_NC6s_v3",
                      nodes=nodes, claims=[], can_provision=False, gpus_per_pod=1,
                      gpus_used={"byo-1": 1, "byo-2": 2})
    assert not plan.is_ready and not plan.claims_to_create
    verdict = plan_status(Observed(nodes=plan, is_tuning=True)).conditions["ResourceReady"]
    assert verdict.status == "False" and verdict.reason == "GPUsInUse"
    assert "byo-1 (0 of 1 GPU(s) free)" in verdict.message
    assert "byo-2 (0 of 2 GPU(s) free)" in verdict.message
    assert "theirs (made for workspace team/other)" in verdict.message
    assert "1 free GPU(s) per pod" in verdict.message
    freed = plan_nodes(workspace(), target_node_count=1, instance_type="Standard_NC6s_v3",
                       nodes=nodes, claims=[], can_provision=False, gpus_per_pod=1,
                       gpus_used={"byo-1": 1, "byo-2": 1})
    assert freed.is_ready and freed.worker_nodes == ["byo-2"]


def test_gpu_accounting_counts_others_bound_running_pods_only() -> None:
    from controller.workspace.capacity import (
        gpus_used_by_others,
        nodes_with_pods_of,
        pod_gpu_request,
        project_bound_pod,
    )

    def pod(name: str, node_name: str | None, gpus: int, *, phase: str = "Running",
            workspace_name: str | None = None, namespace: str = "team") -> dict[str, Any]:
        labels = {"kaito.sh/workspace": workspace_name} if workspace_name else {}
        return {"metadata": {"name": name, "namespace": namespace, "labels": labels,
                             "annotations": {"big": "x" * 1000}},
                "spec": {"nodeName": node_name, "containers": [
                    {"name": "c", "image": "i", "env": [{"name": "A", "value": "1"}],
                     "resources": {"limits": {"nvidia.com/gpu": str(gpus), "cpu": "1"}}}]},
                "status": {"phase": phase, "conditions": [{"type": "Ready"}]}}

    pods = [pod("other", "n1", 1), pod("mine", "n1", 1, workspace_name="ws1"),
            pod("same-name-other-ns", "n2", 2, workspace_name="ws1", namespace="prod"),
            pod("done", "n2", 4, phase="Succeeded"), pod("pending", None, 1),
            pod("cpu", "n1", 0)]
    projected = [project_bound_pod(p) for p in pods]
    assert "annotations" not in projected[0]["metadata"]
    assert "env" not in projected[0]["spec"]["containers"][0]
    for full, small in zip(pods, projected, strict=True):
        assert pod_gpu_request(full) == pod_gpu_request(small)
    assert gpus_used_by_others(projected, namespace="team", name="ws1") == {"n1": 1, "n2": 2}
    assert nodes_with_pods_of(projected, namespace="team", name="ws1") == {"n1"}
    sidecar_and_init = {"spec": {
        "initContainers": [{"resources": {"requests": {"nvidia.com/gpu": "3"}}},
                           {"restartPolicy": "Always",
                            "resources": {"requests": {"nvidia.com/gpu": "1"}}}],
        "containers": [{"resources": {"requests": {"nvidia.com/gpu": "1"}}}]}}
    assert pod_gpu_request(sidecar_and_init) == 3
    assert pod_gpu_request(project_bound_pod(sidecar_and_init)) == 3


# -- refused claims back off (issue 21, item 4) ------------------------------------------

def _refused(name: str, at: str, attempt: int | None = None, *, deleting: bool = False
             ) -> dict[str, Any]:
    found = claim(name, failed="QuotaExceeded")
    found["status"]["conditions"][0]["lastTransitionTime"] = at
    if attempt is not None:
        found["metadata"]["annotations"] = {"kaito.sh/nodeclaim-attempt": str(attempt)}
    if deleting:
        found["metadata"]["deletionTimestamp"] = at
    return found


def test_claim_retry_doubles_up_to_its_cap() -> None:
    from controller.workspace.nodes import ClaimRetry

    retry = ClaimRetry(base_seconds=10, max_seconds=600)
    assert [retry.wait_seconds(n) for n in range(1, 9)] == [
        10, 20, 40, 80, 160, 320, 600, 600]
    assert retry.wait_seconds(10_000) == 600


def test_a_refused_claim_is_kept_until_its_backoff_ends_then_replaced() -> None:
    from controller.workspace.nodes import ClaimRetry, parse_timestamp

    at = "2026-12-08T01:00:00Z"
    failed_at = parse_timestamp(at)
    assert failed_at is not None
    retry = ClaimRetry(base_seconds=10, max_seconds=600)
    first = claim_name(workspace(), 0)

    def plan(now: float, claims: list[dict[str, Any]]) -> Any:
        return plan_nodes(workspace(), target_node_count=1, instance_type="Standard_NC6s_v3",
                          nodes=[], claims=claims, now=now, retry=retry)

    waiting = plan(failed_at + 9, [_refused(first, at)])
    assert not waiting.claims_to_delete and not waiting.claims_to_create
    assert waiting.retry_at == failed_at + 10 and waiting.failed_attempt == 1
    verdict = plan_status(Observed(nodes=waiting, is_tuning=True)).conditions["ResourceReady"]
    assert verdict.reason == "NodeClaimFailed"
    assert "QuotaExceeded: no capacity" in verdict.message
    assert "attempt 1" in verdict.message and "next try at 2026-12-08T01:00:10Z" in verdict.message
    # The same observation gives the same message on every pass (no status churn).
    assert plan_status(Observed(nodes=plan(failed_at + 5, [_refused(first, at)]),
                                is_tuning=True)).conditions["ResourceReady"] == verdict

    due = plan(failed_at + 10, [_refused(first, at)])
    assert due.claims_to_delete == [first]
    [made] = due.claims_to_create
    assert made["metadata"]["name"] == claim_name(workspace(), 1)
    assert made["metadata"]["annotations"] == {"kaito.sh/nodeclaim-attempt": "2"}

    # Attempt 3 failed: the wait is 40 s, counted from its own refusal; a restarted
    # controller reads the same from the claim.
    third = plan(failed_at + 39, [_refused(first, at, attempt=3)])
    assert third.retry_at == failed_at + 40 and not third.claims_to_create
    fourth = plan(failed_at + 40, [_refused(first, at, attempt=3)])
    assert [c["metadata"]["annotations"]["kaito.sh/nodeclaim-attempt"]
            for c in fourth.claims_to_create] == ["4"]


def test_a_retry_in_flight_is_not_duplicated_while_the_refused_claim_goes() -> None:
    at = "2026-12-08T01:00:00Z"
    going = _refused(claim_name(workspace(), 0), at, attempt=2, deleting=True)
    retrying = claim(claim_name(workspace(), 1))
    retrying["metadata"]["annotations"] = {"kaito.sh/nodeclaim-attempt": "3"}
    plan = plan_nodes(workspace(), target_node_count=1, instance_type="Standard_NC6s_v3",
                      nodes=[], claims=[going, retrying], now=1e10)
    assert not plan.claims_to_create and not plan.claims_to_delete
    assert plan.pending_claims == [claim_name(workspace(), 1)]
    verdict = plan_status(Observed(nodes=plan, is_tuning=True)).conditions["ResourceReady"]
    assert "(attempt 3)" in verdict.message
    # Once the refused one is gone, the retry waits as any claim does.
    alone = plan_nodes(workspace(), target_node_count=1, instance_type="Standard_NC6s_v3",
                       nodes=[], claims=[retrying], now=1e10)
    assert plan_status(Observed(nodes=alone, is_tuning=True)).conditions[
        "ResourceReady"].reason == "NodeClaimNotReady"
