"""How many GPUs each node has left for a workspace (pure), and the small pod projection
the controller caches to know it.

A Ready GPU node that matches a workspace's selector is capacity only when its GPUs are
not already taken: the scheduler counts the requests of every non-terminated pod bound
to a node, so the controller does too. It watches bound, non-terminated pods cluster
wide (a field selector) and keeps of each only what this needs: name, namespace, the
workspace label, the node, the phase and the containers' GPU requests. The same
`pod_gpu_request` reads a full pod, a projected one and the resources the workload
builders give our own pods, so what "this pod asks for" means has one definition.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

from controller.workspace.nodes import GPU_RESOURCE, int_quantity
from crds.karpenter import WORKSPACE_LABEL

# Bound pods that still hold their resources (what the scheduler counts on a node).
BOUND_PODS_FIELD_SELECTOR = "spec.nodeName!=,status.phase!=Succeeded,status.phase!=Failed"
NODE_NAME_INDEX = "node-name"


def container_gpus(resources: Mapping[str, Any] | None) -> int:
    """GPUs one container asks for: its request, else its limit (the API server defaults
    an extended resource's request to its limit)."""
    resources = resources or {}
    for source in ("requests", "limits"):
        value = (resources.get(source) or {}).get(GPU_RESOURCE)
        if value is not None:
            return max(0, int_quantity(value))
    return 0


def pod_gpu_request(pod: Mapping[str, Any]) -> int:
    """The pod's effective GPU request as the scheduler computes it: the sum over its
    containers (and restartable init containers, i.e. sidecars) or the largest plain
    init container, whichever is more."""
    spec = pod.get("spec") or {}
    running = sum(container_gpus(c.get("resources")) for c in spec.get("containers") or [])
    largest_init = 0
    for init in spec.get("initContainers") or []:
        gpus = container_gpus(init.get("resources"))
        if init.get("restartPolicy") == "Always":
            running += gpus
        else:
            largest_init = max(largest_init, gpus)
    return max(running, largest_init)


def _gpu_only(container: Mapping[str, Any]) -> dict[str, Any]:
    projected: dict[str, Any] = {"name": container.get("name", "")}
    gpus = container_gpus(container.get("resources"))
    if gpus:
        projected["resources"] = {"requests": {GPU_RESOURCE: str(gpus)}}
    if container.get("restartPolicy"):
        projected["restartPolicy"] = container["restartPolicy"]
    return projected


def project_bound_pod(pod: dict[str, Any]) -> dict[str, Any]:
    """The informer transform: a Pod cut down to what GPU accounting reads (a few hundred
    bytes per pod instead of several kilobytes)."""
    metadata = pod.get("metadata") or {}
    spec = pod.get("spec") or {}
    labels = metadata.get("labels") or {}
    kept_metadata: dict[str, Any] = {
        key: metadata[key] for key in ("name", "namespace", "resourceVersion",
                                       "deletionTimestamp") if key in metadata}
    if WORKSPACE_LABEL in labels:
        kept_metadata["labels"] = {WORKSPACE_LABEL: labels[WORKSPACE_LABEL]}
    projected: dict[str, Any] = {
        "metadata": kept_metadata,
        "spec": {"nodeName": spec.get("nodeName"),
                 "containers": [_gpu_only(c) for c in spec.get("containers") or []]},
        "status": {"phase": (pod.get("status") or {}).get("phase")},
    }
    if spec.get("initContainers"):
        projected["spec"]["initContainers"] = [_gpu_only(c) for c in spec["initContainers"]]
    for key in ("apiVersion", "kind"):
        if key in pod:
            projected[key] = pod[key]
    return projected


def index_by_node_name(pod: Mapping[str, Any]) -> list[str]:
    node = (pod.get("spec") or {}).get("nodeName")
    return [str(node)] if node else []


def is_workspace_pod(pod: Mapping[str, Any], namespace: str, name: str) -> bool:
    metadata = pod.get("metadata") or {}
    return bool(metadata.get("namespace") == namespace
                and (metadata.get("labels") or {}).get(WORKSPACE_LABEL) == name)


def holds_resources(pod: Mapping[str, Any]) -> bool:
    """Bound and not finished (what the scheduler still counts on its node)."""
    return bool((pod.get("spec") or {}).get("nodeName")) and (
        pod.get("status") or {}).get("phase") not in ("Succeeded", "Failed")


def gpus_used_by_others(
    pods: Iterable[Mapping[str, Any]], *, namespace: str, name: str
) -> dict[str, int]:
    """GPUs requested per node by the bound, non-terminated pods that are not the
    workspace ``namespace/name``'s own (its own pods are using what it planned for)."""
    used: dict[str, int] = {}
    for pod in pods:
        if not holds_resources(pod) or is_workspace_pod(pod, namespace, name):
            continue
        gpus = pod_gpu_request(pod)
        if gpus:
            node = str((pod.get("spec") or {}).get("nodeName"))
            used[node] = used.get(node, 0) + gpus
    return used


def nodes_with_pods_of(
    pods: Iterable[Mapping[str, Any]], *, namespace: str, name: str
) -> set[str]:
    """The nodes the workspace's own bound pods run on."""
    return {str((pod.get("spec") or {}).get("nodeName")) for pod in pods
            if holds_resources(pod) and is_workspace_pod(pod, namespace, name)}
