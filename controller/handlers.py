"""Event-to-request mapping: which reconcile key(s) an event should wake up.

`enqueue_object` reconciles the object itself; `enqueue_owner` maps a child (a Job, a
Service) to its owning object through ownerReferences, on both the old and the new
object of an update so a re-parented child wakes both owners; `enqueue_by_labels` is for
children that cannot carry an owner reference to a namespaced owner, like cluster-scoped
NodeClaims, and names the owner in labels instead.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from typing import Any

from controller.predicates import Event
from controller.reconcile import Request

MapFunc = Callable[[Event], Iterable[Request]]


def _metadata(obj: Mapping[str, Any] | None) -> Mapping[str, Any]:
    return (obj or {}).get("metadata") or {}


def enqueue_object(event: Event) -> list[Request]:
    metadata = _metadata(event.obj)
    name = metadata.get("name")
    if not name:
        return []
    return [Request(name=str(name), namespace=metadata.get("namespace") or None)]


def _group_of(api_version: str) -> str:
    return api_version.rpartition("/")[0] if "/" in api_version else ""


def enqueue_owner(
    owner_kind: str, owner_group: str = "", *, is_controller_only: bool = True,
    owner_is_namespaced: bool = True,
) -> MapFunc:
    """Requests for the owners of kind `owner_kind` in group `owner_group` ("" = core)."""

    def owners(obj: Mapping[str, Any] | None) -> list[Request]:
        metadata = _metadata(obj)
        namespace = metadata.get("namespace") or None
        found = []
        for ref in metadata.get("ownerReferences") or []:
            if ref.get("kind") != owner_kind:
                continue
            if _group_of(str(ref.get("apiVersion", ""))) != owner_group:
                continue
            if is_controller_only and not ref.get("controller"):
                continue
            if not ref.get("name"):
                continue
            found.append(
                Request(name=str(ref["name"]), namespace=namespace if owner_is_namespaced else None)
            )
        return found

    def map_event(event: Event) -> list[Request]:
        requests = owners(event.obj)
        if event.old is not None:
            requests += [r for r in owners(event.old) if r not in requests]
        return requests

    return map_event


def enqueue_by_labels(name_label: str, namespace_label: str | None = None) -> MapFunc:
    """Requests for the owner named by the child's labels (a cluster-scoped child)."""

    def owner(obj: Mapping[str, Any] | None) -> list[Request]:
        labels = _metadata(obj).get("labels") or {}
        name = labels.get(name_label)
        if not name:
            return []
        namespace = labels.get(namespace_label) if namespace_label else None
        if namespace_label and not namespace:
            return []
        try:
            return [Request(name=str(name), namespace=str(namespace) if namespace else None)]
        except ValueError:
            return []  # a label value that cannot name an object

    def map_event(event: Event) -> list[Request]:
        requests = owner(event.obj)
        if event.old is not None:
            requests += [r for r in owner(event.old) if r not in requests]
        return requests

    return map_event
