"""Wiring the Workspace controller into the manager: its informers, watches and mapping.

Children the controller makes carry the ``kaito.sh/workspace`` label, so every child
informer is filtered by it and never caches the rest of the cluster; Nodes are watched
whole (bring-your-own nodes carry no label of ours) and a node change wakes the
workspaces whose selector it matches. Which GPUs of a node are taken comes from one more
pod informer: every bound, non-terminated pod in the cluster (a field selector, so
finished pods leave it), cut down by a transform to its node and GPU requests. A GPU pod
binding to or leaving a node wakes the workspaces that may now fit, or no longer fit,
there: those waiting for nodes, and those with a pod not scheduled yet.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any

from controller.controller import Controller
from controller.events import EventRecorder
from controller.handlers import enqueue_by_labels, enqueue_object
from controller.kube.resources import (
    CONFIGMAPS,
    CONTROLLER_REVISIONS,
    DEPLOYMENTS,
    JOBS,
    MACHINES,
    NODECLAIMS,
    NODES,
    PODS,
    SERVICES,
    STATEFULSETS,
    WORKSPACES,
    KubeObject,
)
from controller.manager import Manager
from controller.predicates import Event, EventType
from controller.reconcile import Request
from controller.workspace.capacity import (
    BOUND_PODS_FIELD_SELECTOR,
    NODE_NAME_INDEX,
    index_by_node_name,
    pod_gpu_request,
    project_bound_pod,
)
from controller.workspace.metrics import WorkspaceMetrics
from controller.workspace.nodes import is_made_for_another, selector_matches
from controller.workspace.reconciler import Informers, WorkspaceReconciler, WorkspaceSettings
from controller.workspace.registry_ca import bundle_keys, uses_registry
from crds.karpenter import WORKSPACE_LABEL, WORKSPACE_NAMESPACE_LABEL
from crds.meta import LabelSelector
from crds.workspace import CONDITION_RESOURCE_READY, Workspace
from presets.catalog import Catalog, load_catalog

log = logging.getLogger(__name__)

CONTROLLER_NAME = "workspace"
UNBOUND_INDEX = "unbound"  # the workspace pods not scheduled yet
REPORTING_CONTROLLER = "kaito.sh/workspace-controller"


def _labels(obj: Mapping[str, Any] | None) -> Mapping[str, str]:
    return ((obj or {}).get("metadata") or {}).get("labels") or {}


def _node_facts(node: Mapping[str, Any]) -> tuple[Any, ...]:
    """What the reconciler reads from a Node: labels (selectors, GPU discovery), taints,
    schedulability, GPU capacity, readiness and deletion; not heartbeats."""
    spec, status = node.get("spec") or {}, node.get("status") or {}
    ready = [c.get("status") for c in status.get("conditions") or [] if c.get("type") == "Ready"]
    return (_labels(node), spec.get("taints"), spec.get("unschedulable"),
            status.get("allocatable"), status.get("capacity"), ready,
            (node.get("metadata") or {}).get("deletionTimestamp"))


def _index_unbound(pod: KubeObject) -> list[str]:
    return [] if (pod.get("spec") or {}).get("nodeName") else ["true"]


def _resource_ready(ws: Mapping[str, Any]) -> bool:
    return any(c.get("type") == CONDITION_RESOURCE_READY and c.get("status") == "True"
               for c in (ws.get("status") or {}).get("conditions") or [])


def node_matters(event: Event) -> bool:
    """Whether a Node event can change a workspace's plan: adds and deletes do; an
    update only when what the reconciler reads changed (kwok and kubelets rewrite node
    status for heartbeats, which would otherwise resync every matching workspace)."""
    if event.old is None:
        return True
    return _node_facts(event.old) != _node_facts(event.obj)


def enqueue_labelled_workspace(event: Event) -> list[Request]:
    """A namespaced child: the workspace named by its label, in the child's namespace."""
    requests: list[Request] = []
    for obj in (event.obj, event.old):
        name = _labels(obj).get(WORKSPACE_LABEL)
        namespace = ((obj or {}).get("metadata") or {}).get("namespace")
        if name and namespace:
            request = Request(name=str(name), namespace=str(namespace))
            if request not in requests:
                requests.append(request)
    return requests


def setup_workspace_controller(
    manager: Manager,
    *,
    identity: str,
    workers: int,
    namespace: str | None = None,
    settings: WorkspaceSettings | None = None,
    catalog: Catalog | None = None,
) -> tuple[Controller, WorkspaceReconciler]:
    """Create the informers and the controller, register them, return both."""
    selector = WORKSPACE_LABEL  # "has the label"
    informers = Informers(
        workspaces=manager.informer(WORKSPACES, namespace),
        nodes=manager.informer(NODES),
        claims=manager.informer(
            MACHINES if settings is not None and settings.use_machines else NODECLAIMS,
            label_selector=selector),
        jobs=manager.informer(JOBS, namespace, selector),
        deployments=manager.informer(DEPLOYMENTS, namespace, selector),
        statefulsets=manager.informer(STATEFULSETS, namespace, selector),
        services=manager.informer(SERVICES, namespace, selector),
        pods=manager.informer(PODS, namespace, selector),
        configmaps=manager.informer(CONFIGMAPS, namespace, selector),
        revisions=manager.informer(CONTROLLER_REVISIONS, namespace, selector),
        # Cluster wide even when one namespace is watched: others' pods take GPUs too.
        bound_pods=manager.informer(PODS, field_selector=BOUND_PODS_FIELD_SELECTOR,
                                    transform=project_bound_pod),
    )
    informers.bound_pods.cache.add_indexer(NODE_NAME_INDEX, index_by_node_name)
    informers.pods.cache.add_indexer(UNBOUND_INDEX, _index_unbound)
    if settings is not None and settings.registry_ca_config_map:
        # The one source ConfigMap (RBAC may grant it by name: a field selector on it).
        informers.registry_ca = manager.informer(
            CONFIGMAPS, settings.operator_namespace,
            field_selector=f"metadata.name={settings.registry_ca_config_map}")
    metrics = WorkspaceMetrics(manager.metrics.registry, informers.workspaces.cache.objects)
    recorder = EventRecorder(manager.client, REPORTING_CONTROLLER, identity)
    manager.add_closer(recorder.close)
    reconciler = WorkspaceReconciler(
        manager.client, informers, catalog or load_catalog(), recorder, settings,
        metrics=metrics)
    controller = Controller(CONTROLLER_NAME, reconciler, workers=workers,
                            metrics=manager.metrics)
    controller.watch(informers.workspaces, enqueue_object)
    controller.watch(informers.claims, enqueue_by_labels(WORKSPACE_LABEL,
                                                         WORKSPACE_NAMESPACE_LABEL))
    for child in (informers.jobs, informers.deployments, informers.statefulsets,
                  informers.services, informers.pods):
        controller.watch(child, enqueue_labelled_workspace)

    def workspaces_for_node(event: Event) -> list[Request]:
        if not node_matters(event):
            return []
        labels_now, labels_before = _labels(event.obj), _labels(event.old)
        found: list[Request] = []
        for ws in informers.workspaces.cache.objects():
            raw = ((ws.get("resource") or {}).get("labelSelector")) or {}
            selector_model = LabelSelector.model_validate(raw)
            if selector_matches(selector_model, labels_now) or (
                    event.old is not None and selector_matches(selector_model, labels_before)):
                metadata = ws["metadata"]
                found.append(Request(name=metadata["name"], namespace=metadata["namespace"]))
        return found

    controller.watch(informers.nodes, workspaces_for_node)

    def workspaces_for_gpu_pod(event: Event) -> list[Request]:
        """A GPU pod bound to a node (create) or gone from it (delete): the workspaces
        whose plan for that node may change."""
        if event.type not in (EventType.CREATE, EventType.DELETE):
            return []  # a bound pod's node and requests do not change
        if pod_gpu_request(event.obj) <= 0:
            return []
        node_name = (event.obj.get("spec") or {}).get("nodeName")
        node = informers.nodes.cache.get(str(node_name)) if node_name else None
        if node is None:
            return []
        pod_meta = event.obj.get("metadata") or {}
        owner = (pod_meta.get("namespace"), _labels(event.obj).get(WORKSPACE_LABEL))
        unsettled = set()
        for key in informers.pods.cache.index_keys(UNBOUND_INDEX, "true"):
            pod = informers.pods.cache.get(key)
            if pod is not None:
                unsettled.add(((pod.get("metadata") or {}).get("namespace"),
                               _labels(pod).get(WORKSPACE_LABEL)))
        found: list[Request] = []
        for ws in informers.workspaces.cache.objects():
            metadata = ws["metadata"]
            identity = (metadata.get("namespace"), metadata.get("name"))
            if identity == owner or not (identity in unsettled or not _resource_ready(ws)):
                continue
            raw = ((ws.get("resource") or {}).get("labelSelector")) or {}
            if not selector_matches(LabelSelector.model_validate(raw), _labels(node)):
                continue
            if is_made_for_another(node, *identity):
                continue
            found.append(Request(name=metadata["name"], namespace=metadata["namespace"]))
        return found

    controller.watch(informers.bound_pods, workspaces_for_gpu_pod)
    def workspaces_using_a_registry(event: Event) -> list[Request]:
        """The source of the registry CAs changed: every copy may have to follow."""
        _, invalid = bundle_keys(event.obj)
        if invalid:  # said once per change of the source, not on every pass
            log.warning("registry CA keys not in the <host>[_<port>].crt scheme ignored",
                        extra={"configmap": (event.obj.get("metadata") or {}).get("name"),
                               "keys": invalid})
        found: list[Request] = []
        for obj in informers.workspaces.cache.objects():
            try:
                ws = Workspace.model_validate(obj)
            except ValueError:
                continue
            if uses_registry(ws) and ws.metadata.name and ws.metadata.namespace:
                found.append(Request(name=ws.metadata.name, namespace=ws.metadata.namespace))
        return found

    if informers.registry_ca is not None:
        controller.watch(informers.registry_ca, workspaces_using_a_registry)
    manager.add_controller(controller)
    return controller, reconciler
