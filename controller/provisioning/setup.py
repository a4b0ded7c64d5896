"""Wiring the claim controller into the manager: informers, watches and the backend.

Claims are watched with our nodepool label only; nodes with the `kaito.sh/nodeclaim`
label only, so the provisioner never caches (or needs the right to list) anything else.
A node event wakes the claim its label names.
"""

from __future__ import annotations

from collections.abc import Callable

from controller.controller import Controller
from controller.events import EventRecorder
from controller.handlers import enqueue_by_labels, enqueue_object
from controller.informer import Informer
from controller.kube.resources import MACHINES, NODECLAIMS, NODES, KubeObject
from controller.manager import Manager
from controller.provisioning.backend import Backend
from controller.provisioning.claims import NODECLAIM_LABEL
from controller.provisioning.metrics import ProvisioningMetrics
from controller.provisioning.offerings import UnavailableOfferings
from controller.provisioning.reconciler import ClaimReconciler, LifecycleSettings
from crds.karpenter import NODEPOOL_LABEL, NODEPOOL_NAME
from presets.catalog import Catalog, load_catalog

REPORTING_CONTROLLER = "kaito.sh/gpu-provisioner"
CLAIM_SELECTOR = f"{NODEPOOL_LABEL}={NODEPOOL_NAME}"

# Builds the backend once the node informer exists (AKS finds its nodes through it).
BackendFactory = Callable[[Callable[[str], KubeObject | None], ProvisioningMetrics], Backend]


def setup_provisioner(
    manager: Manager, *, identity: str, workers: int, backend_factory: BackendFactory,
    backend_name: str, settings: LifecycleSettings | None = None, use_machines: bool = False,
    catalog: Catalog | None = None,
) -> tuple[list[Controller], Backend]:
    """One controller per claim kind, sharing the node informer and the backend."""
    nodes = manager.informer(NODES, label_selector=NODECLAIM_LABEL)

    def find_node(claim_name: str) -> KubeObject | None:
        found = nodes.cache.objects(labels={NODECLAIM_LABEL: claim_name})
        return found[0] if found else None

    metrics = ProvisioningMetrics(manager.metrics.registry, backend_name)
    backend = backend_factory(find_node, metrics)
    events = EventRecorder(manager.client, REPORTING_CONTROLLER, identity)
    manager.add_closer(events.close)
    lifecycle = settings or LifecycleSettings()
    offerings = UnavailableOfferings(lifecycle.unavailable_offering_seconds)
    kinds = [(NODECLAIMS, "nodeclaim")] + ([(MACHINES, "machine")] if use_machines else [])
    informers: list[Informer] = []
    controllers = []
    for resource, name in kinds:
        claims = manager.informer(resource, label_selector=CLAIM_SELECTOR)
        informers.append(claims)
        reconciler = ClaimReconciler(manager.client, resource, claims, nodes,
                                     catalog or load_catalog(), backend, events, metrics,
                                     lifecycle, offerings=offerings)
        controller = Controller(name, reconciler, workers=workers, metrics=manager.metrics)
        controller.watch(claims, enqueue_object)
        controller.watch(nodes, enqueue_by_labels(NODECLAIM_LABEL))
        manager.add_controller(controller)
        controllers.append(controller)

    def all_claims() -> list[KubeObject]:
        return [obj for informer in informers for obj in informer.cache.objects()]

    metrics.watch_claims(all_claims)
    return controllers, backend
