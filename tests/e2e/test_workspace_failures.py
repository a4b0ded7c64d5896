"""A serving pod the scheduler cannot place shows in the workspace's conditions, with the
scheduler's own words, and the workspace turns Ready again when the GPU is free.

kube-scheduler here is the real one; kwok plays the nodes' kubelets. Something else (a pod
bound straight to the node, as a DaemonSet or another team's pod would be) takes the
node's only GPU while the workspace's pod is being replaced: the new pod stays Pending
with "Insufficient nvidia.com/gpu", which InferenceReady must say instead of "waiting".
"""

from __future__ import annotations

import json
from typing import Any

import pytest

from kaito.devcluster import LocalCluster
from tests.e2e.components import wait_for
from tests.e2e.test_workspace_controller import (
    GPU_TAINT,
    ControllerProcess,
    _condition,
    _get,
    _inference,
    controller,
)

pytestmark = pytest.mark.e2e
__all__ = ["controller"]  # the module-scoped controller fixture, one for this module


def _hog(name: str, node: str) -> dict[str, Any]:
    return {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": name},
            "spec": {"nodeName": node, "tolerations": [{"operator": "Exists"}],
                     "containers": [{"name": "hog", "image": "example.com/hog:1",
                                     "resources": {"limits": {"nvidia.com/gpu": "1"}}}]}}


def test_an_unschedulable_serving_pod_says_why_and_recovers(
    cluster: LocalCluster, cluster_namespace: str, controller: ControllerProcess
) -> None:
    namespace, name = cluster_namespace, "no-room"
    node = f"room-{namespace}"
    cluster.create_gpu_node(node, gpus=1, taints=[GPU_TAINT], labels={"app": node})
    cluster.kubectl("apply", "-n", namespace, "-f", "-", input=_inference(name, node))

    def inference(status: str, reason: str | None = None) -> dict[str, Any] | None:
        ws = _get(cluster, "workspace", name, "-n", namespace)
        condition = _condition(ws, "InferenceReady")
        if condition and condition["status"] == status and (
                reason is None or condition["reason"] == reason):
            return condition
        return None

    wait_for("InferenceReady", lambda: inference("True"), timeout=180)
    pods = _get(cluster, "pods", "-n", namespace, "-l",
                "app.kubernetes.io/component=inference")["items"]
    assert [p["spec"]["nodeName"] for p in pods] == [node]

    # Another pod takes the node's GPU while the serving pod is replaced.
    cluster.kubectl("create", "-n", namespace, "-f", "-", input=json.dumps(_hog("hog", node)))
    cluster.kubectl("delete", "pod", pods[0]["metadata"]["name"], "-n", namespace,
                    "--grace-period=0", "--force")
    condition = wait_for("InferenceReady=False Unschedulable",
                         lambda: inference("False", "Unschedulable"), timeout=120)
    assert "Insufficient nvidia.com/gpu" in condition["message"], condition
    ws = _get(cluster, "workspace", name, "-n", namespace)
    ready = _condition(ws, "WorkspaceReady")
    assert ready is not None and ready["status"] == "False", ready
    events = _get(cluster, "events.events.k8s.io", "-n", namespace,
                  "--field-selector", f"regarding.name={name}")["items"]
    assert any(e["reason"] == "Unschedulable" and "nvidia.com/gpu" in e["note"]
               for e in events), [e["reason"] for e in events]

    # The GPU is free again: the scheduler places the pod and the workspace is Ready.
    cluster.kubectl("delete", "pod", "hog", "-n", namespace, "--grace-period=0", "--force")
    wait_for("InferenceReady again", lambda: inference("True"), timeout=180)
    cluster.kubectl("delete", "workspace", name, "-n", namespace, "--wait=false")
