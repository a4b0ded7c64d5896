"""Watch events and event-to-request mapping (owner refs and labels)."""

from __future__ import annotations

from typing import Any

import pytest

from controller.handlers import enqueue_by_labels, enqueue_object, enqueue_owner
from controller.predicates import Event, EventType
from controller.reconcile import Request

pytestmark = pytest.mark.unit


def obj(name: str = "w", namespace: str | None = "ns", **meta: Any) -> dict[str, Any]:
    metadata: dict[str, Any] = {"name": name, **meta}
    if namespace:
        metadata["namespace"] = namespace
    return {"metadata": metadata}


def update(old: dict[str, Any], new: dict[str, Any]) -> Event:
    return Event(EventType.UPDATE, new, old)


def test_update_events_need_the_old_object() -> None:
    with pytest.raises(ValueError):
        Event(EventType.UPDATE, obj())
    with pytest.raises(ValueError):
        Event(EventType.CREATE, obj(), obj())


def owner_ref(kind: str, name: str, api_version: str, is_controller: bool = True) -> dict[str, Any]:
    return {"apiVersion": api_version, "kind": kind, "name": name, "uid": "u-" + name,
            "controller": is_controller}


def test_enqueue_object_maps_to_itself() -> None:
    assert enqueue_object(Event(EventType.CREATE, obj("a"))) == [Request("a", "ns")]
    assert enqueue_object(Event(EventType.CREATE, obj("node", None))) == [Request("node")]
    assert enqueue_object(Event(EventType.CREATE, {"metadata": {}})) == []


def test_enqueue_owner_follows_controller_refs_of_the_right_kind() -> None:
    to_workspace = enqueue_owner("Workspace", "kaito.sh")
    job = obj("job", ownerReferences=[
        owner_ref("Workspace", "ws1", "kaito.sh/v1beta1"),
        owner_ref("Workspace", "ws2", "kaito.sh/v1beta1", is_controller=False),
        owner_ref("Workspace", "other-group", "example.com/v1"),
        owner_ref("Deployment", "d", "apps/v1"),
    ])
    assert to_workspace(Event(EventType.CREATE, job)) == [Request("ws1", "ns")]
    any_owner = enqueue_owner("Workspace", "kaito.sh", is_controller_only=False)
    assert any_owner(Event(EventType.CREATE, job)) == [Request("ws1", "ns"), Request("ws2", "ns")]
    core_owner = enqueue_owner("ConfigMap", "")
    child = obj("c", ownerReferences=[owner_ref("ConfigMap", "src", "v1")])
    assert core_owner(Event(EventType.DELETE, child)) == [Request("src", "ns")]


def test_enqueue_owner_wakes_old_and_new_owner_on_reparenting() -> None:
    to_workspace = enqueue_owner("Workspace", "kaito.sh")
    old = obj("job", ownerReferences=[owner_ref("Workspace", "old", "kaito.sh/v1beta1")])
    new = obj("job", ownerReferences=[owner_ref("Workspace", "new", "kaito.sh/v1beta1")])
    assert to_workspace(update(old, new)) == [Request("new", "ns"), Request("old", "ns")]


def test_enqueue_by_labels_maps_cluster_scoped_children() -> None:
    to_workspace = enqueue_by_labels("kaito.sh/workspace", "kaito.sh/workspacenamespace")
    nodeclaim = obj("nc-1", None, labels={
        "kaito.sh/workspace": "falcon", "kaito.sh/workspacenamespace": "team-a",
    })
    assert to_workspace(Event(EventType.CREATE, nodeclaim)) == [Request("falcon", "team-a")]
    unlabelled = obj("nc-2", None, labels={"kaito.sh/workspace": "falcon"})
    assert to_workspace(Event(EventType.CREATE, unlabelled)) == []
    garbage = obj("nc-3", None, labels={
        "kaito.sh/workspace": "a/b", "kaito.sh/workspacenamespace": "x",
    })
    assert to_workspace(Event(EventType.CREATE, garbage)) == []
    cluster_owner = enqueue_by_labels("owner")
    assert cluster_owner(Event(EventType.CREATE, obj("x", None, labels={"owner": "n1"}))) == [
        Request("n1")
    ]
