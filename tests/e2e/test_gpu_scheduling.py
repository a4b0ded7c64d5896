"""The e2e tier's cluster schedules real pods onto kwok-simulated GPU nodes."""

from __future__ import annotations

import json
import time

import pytest

from kaito.devcluster import LocalCluster

pytestmark = pytest.mark.e2e


def _deployment(namespace: str) -> dict[str, object]:
    labels = {"app": "gpu-consumer"}
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": "gpu-consumer", "namespace": namespace},
        "spec": {
            "replicas": 1,
            "selector": {"matchLabels": labels},
            "template": {
                "metadata": {"labels": labels},
                "spec": {
                    "tolerations": [{"key": "sku", "operator": "Equal", "value": "gpu",
                                     "effect": "NoSchedule"}],
                    "containers": [{
                        "name": "main",
                        "image": "registry.invalid/inference:1",
                        "resources": {"limits": {"nvidia.com/gpu": "1"}},
                    }],
                },
            },
        },
    }


def test_gpu_pod_is_bound_to_the_gpu_node_and_runs(
    cluster: LocalCluster, cluster_namespace: str
) -> None:
    cluster.create_gpu_node("gpu-e2e-0", gpus=1,
                            taints=[{"key": "sku", "value": "gpu", "effect": "NoSchedule"}])
    cluster.kubectl("create", "-f", "-", input=json.dumps(_deployment(cluster_namespace)))

    deadline = time.monotonic() + 90
    pod: dict[str, object] = {}
    while time.monotonic() < deadline:
        pods = json.loads(cluster.kubectl(
            "get", "pods", "-n", cluster_namespace, "-l", "app=gpu-consumer", "-o", "json"
        ).stdout)["items"]
        if pods and pods[0].get("status", {}).get("phase") == "Running":
            pod = pods[0]
            break
        time.sleep(0.5)
    assert pod, "the GPU pod did not reach Running within 90 s"
    spec = pod["spec"]
    assert isinstance(spec, dict) and spec["nodeName"] == "gpu-e2e-0"

    node = json.loads(cluster.kubectl("get", "node", "gpu-e2e-0", "-o", "json").stdout)
    assert node["status"]["capacity"]["nvidia.com/gpu"] == "1"
    ready = [c for c in node["status"]["conditions"] if c["type"] == "Ready"]
    assert ready and ready[0]["status"] == "True"


def test_a_second_gpu_pod_stays_pending_when_gpus_are_used_up(
    cluster: LocalCluster, cluster_namespace: str
) -> None:
    cluster.create_gpu_node("gpu-e2e-full", gpus=1, labels={"pool": "full"})
    pods = []
    for index in range(2):
        pod = {
            "apiVersion": "v1", "kind": "Pod",
            "metadata": {"name": f"want-gpu-{index}", "namespace": cluster_namespace},
            "spec": {
                "nodeSelector": {"pool": "full"},
                "containers": [{"name": "main", "image": "registry.invalid/x:1",
                                "resources": {"limits": {"nvidia.com/gpu": "1"}}}],
            },
        }
        pods.append(pod)
        cluster.kubectl("create", "-f", "-", input=json.dumps(pod))

    deadline = time.monotonic() + 60
    phases: list[str] = []
    while time.monotonic() < deadline:
        items = json.loads(cluster.kubectl(
            "get", "pods", "-n", cluster_namespace, "-o", "json").stdout)["items"]
        phases = sorted(p.get("status", {}).get("phase", "") for p in items)
        unschedulable = [
            c for p in items for c in p.get("status", {}).get("conditions", [])
            if c.get("reason") == "Unschedulable"
        ]
        if phases == ["Pending", "Running"] and unschedulable:
            assert "nvidia.com/gpu" in unschedulable[0]["message"]
            return
        time.sleep(0.5)
    pytest.fail(f"expected one Running and one Unschedulable pod, saw {phases}")
