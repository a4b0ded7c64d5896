"""A test fixture of the controller runtime: a reconciler that keeps a copy of every
labelled ConfigMap's data.

It exercises the whole runtime the way a real controller does - a watch filtered by a
predicate on its primary objects, an owner-mapped watch on the children it creates, cache
reads, create / update with optimistic concurrency, cleanup on delete - so the envtests
test the runtime rather than a toy queue, on a reconciler smaller than the Workspace one.
A source ConfigMap carries `copy.kaito.sh/source=true`; its copy is `<name>-copy`, owned
by the source. It lives with the tests: no shipped process runs it.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from controller.controller import Controller
from controller.handlers import enqueue_owner
from controller.informer import Informer
from controller.kube.client import KubeClient
from controller.kube.errors import AlreadyExists, NotFound
from controller.kube.resources import CONFIGMAPS, KubeObject
from controller.manager import Manager
from controller.predicates import Event
from controller.reconcile import Reconciler, Request, Result

SOURCE_LABEL = "copy.kaito.sh/source"
COPY_OF_LABEL = "copy.kaito.sh/copy-of"
COPIED_BY_ANNOTATION = "copy.kaito.sh/copied-by"
COPY_SUFFIX = "-copy"


def copy_name(source_name: str) -> str:
    return source_name + COPY_SUFFIX


def desired_copy(source: KubeObject, identity: str) -> KubeObject:
    """The copy a source ConfigMap should have (pure)."""
    metadata = source["metadata"]
    return {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": {
            "name": copy_name(metadata["name"]),
            "namespace": metadata["namespace"],
            "labels": {COPY_OF_LABEL: metadata["name"]},
            "annotations": {COPIED_BY_ANNOTATION: identity},
            "ownerReferences": [{
                "apiVersion": "v1",
                "kind": "ConfigMap",
                "name": metadata["name"],
                "uid": metadata["uid"],
                "controller": True,
                "blockOwnerDeletion": True,
            }],
        },
        "data": dict(source.get("data") or {}),
    }


def is_up_to_date(current: KubeObject, desired: KubeObject) -> bool:
    is_same_data = (current.get("data") or {}) == desired["data"]
    return is_same_data and bool(
        _labels(current).get(COPY_OF_LABEL) == desired["metadata"]["labels"][COPY_OF_LABEL]
    )


def _labels(obj: KubeObject) -> dict[str, Any]:
    return (obj.get("metadata") or {}).get("labels") or {}


class ConfigMapCopyReconciler:
    """Creates, updates and deletes `<name>-copy` for each source ConfigMap."""

    def __init__(self, client: KubeClient, informer: Informer, identity: str) -> None:
        self._client = client
        self._informer = informer
        self._identity = identity

    async def reconcile(self, request: Request) -> Result:
        cache = self._informer.cache
        source = cache.get(request.key)
        copy_key = f"{request.namespace}/{copy_name(request.name)}"
        copy = cache.get(copy_key)
        if source is None or _labels(source).get(SOURCE_LABEL) != "true":
            # No garbage collector is guaranteed (envtest has none): clean up ourselves.
            if copy is not None and _labels(copy).get(COPY_OF_LABEL) == request.name:
                try:
                    await self._client.delete(CONFIGMAPS, copy_name(request.name),
                                              request.namespace)
                except NotFound:
                    pass
            return Result()
        desired = desired_copy(source, self._identity)
        if copy is None:
            try:
                await self._client.create(CONFIGMAPS, desired)
                return Result()
            except AlreadyExists:
                # Our cache is behind: read the live object and fall through to update.
                copy = await self._client.get(CONFIGMAPS, copy_name(request.name),
                                              request.namespace)
        if is_up_to_date(copy, desired):
            return Result()
        updated = dict(copy)
        updated["data"] = desired["data"]
        metadata = dict(copy.get("metadata") or {})
        metadata["labels"] = {**(metadata.get("labels") or {}), **desired["metadata"]["labels"]}
        metadata["annotations"] = {
            **(metadata.get("annotations") or {}), **desired["metadata"]["annotations"]
        }
        updated["metadata"] = metadata
        await self._client.replace(CONFIGMAPS, updated)  # Conflict -> retried with backoff
        return Result()


def setup_configmap_copy(
    manager: Manager,
    *,
    namespace: str | None,
    identity: str,
    workers: int,
    reconciler_wrapper: Callable[[Reconciler], Reconciler] | None = None,
) -> Controller:
    """Wire the demo controller into `manager` and return it."""
    informer = manager.informer(CONFIGMAPS, namespace)
    reconciler: Reconciler = ConfigMapCopyReconciler(manager.client, informer, identity)
    if reconciler_wrapper is not None:
        reconciler = reconciler_wrapper(reconciler)
    controller = Controller(
        "configmap-copy", reconciler, workers=workers, metrics=manager.metrics
    )
    def is_or_was_source(event: Event) -> bool:
        # A source that loses its label must still be reconciled once, to drop its copy.
        return any(_labels(obj).get(SOURCE_LABEL) == "true"
                   for obj in (event.obj, event.old) if obj is not None)

    controller.watch(informer, predicates=[is_or_was_source])
    controller.watch(informer, enqueue_owner("ConfigMap", ""))
    manager.add_controller(controller)
    return controller
