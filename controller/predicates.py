"""Watch events, and the predicate type that filters them before anything is enqueued.

As in controller-runtime, a predicate sees the whole event (old and new object on an
update) and says whether it is worth a reconcile (`Controller.watch(..., predicates=)`).
The module holds no ready-made ones: the shipped controllers use none (their map
functions choose what to enqueue), and unused ones would be code nothing checks.
"""

from __future__ import annotations

import enum
from collections.abc import Callable
from dataclasses import dataclass

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
