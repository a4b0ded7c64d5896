"""Watch events and the predicates that filter them before anything is enqueued.

As in controller-runtime, a predicate sees the whole event (old and new object on an
update) and says whether it is worth a reconcile: `generation_changed` drops
status-only writes, `labels_changed` lets label edits through, and they compose with
`all_of` / `any_of` / `negate`.
"""

from __future__ import annotations

import enum
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from controller.kube.resources import KubeObject


class EventType(enum.Enum):
    CREATE = "create"
    UPDATE = "update"
    DELETE = "delete"
    GENERIC = "generic"


@dataclass(frozen=True)
class Event:
    """One change seen by an informer; `old` is set on updates only."""

    type: EventType
    obj: KubeObject
    old: KubeObject | None = None

    def __post_init__(self) -> None:
        if (self.type is EventType.UPDATE) != (self.old is not None):
            raise ValueError("an UPDATE event needs `old`; other events must not carry it")


Predicate = Callable[[Event], bool]


def _metadata(obj: Mapping[str, Any] | None) -> Mapping[str, Any]:
    return (obj or {}).get("metadata") or {}


def generation_changed(event: Event) -> bool:
    """Updates pass only when metadata.generation moved (spec changed)."""
    if event.type is not EventType.UPDATE:
        return True
    return _metadata(event.old).get("generation") != _metadata(event.obj).get("generation")


def labels_changed(event: Event) -> bool:
    if event.type is not EventType.UPDATE:
        return True
    return (_metadata(event.old).get("labels") or {}) != (_metadata(event.obj).get("labels") or {})


def annotations_changed(event: Event) -> bool:
    if event.type is not EventType.UPDATE:
        return True
    old = _metadata(event.old).get("annotations") or {}
    return old != (_metadata(event.obj).get("annotations") or {})


def resource_version_changed(event: Event) -> bool:
    """Drops resync no-ops where nothing was written."""
    if event.type is not EventType.UPDATE:
        return True
    old = _metadata(event.old).get("resourceVersion")
    return old != _metadata(event.obj).get("resourceVersion")


def has_label(key: str, value: str | None = None) -> Predicate:
    """Objects carrying label `key` (with `value`, when given)."""

    def predicate(event: Event) -> bool:
        labels = _metadata(event.obj).get("labels") or {}
        if key not in labels:
            return False
        return value is None or labels[key] == value

    return predicate


def all_of(*predicates: Predicate) -> Predicate:
    return lambda event: all(predicate(event) for predicate in predicates)


def any_of(*predicates: Predicate) -> Predicate:
    return lambda event: any(predicate(event) for predicate in predicates)


def negate(predicate: Predicate) -> Predicate:
    return lambda event: not predicate(event)
