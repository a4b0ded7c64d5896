"""Predicates and event-to-request mapping (owner refs and labels)."""

from __future__ import annotations

from typing import Any

import pytest

from controller.handlers import enqueue_by_labels, enqueue_object, enqueue_owner
from controller.predicates import (
    Event,
    EventType,
    all_of,
    annotations_changed,
    any_of,
    generation_changed,
    has_label,
    labels_changed,
    negate,
    resource_version_changed,
)
from controller.reconcile import Request

pytestmark = pytest.mark.unit


def obj(name: str = "w", namespace: str | None = "ns", **meta: Any) -> dict[str, Any]:
    metadata: dict[str, Any] = {"name": name, **meta}
    if namespace:
        metadata["namespace"] = namespace
    return {"metadata": metadata}


def update(old: dict[str, Any], new: dict[str, Any]) -> Event:
    return Event(EventType.UPDATE, new, old)


def test_generation_changed_drops_status_only_updates() -> None:
    assert not generation_changed(update(obj(generation=1), obj(generation=1)))
    assert generation_changed(update(obj(generation=1), obj(generation=2)))
    assert generation_changed(Event(EventType.CREATE, obj(generation=1)))
    assert generation_changed(Event(EventType.DELETE, obj(generation=1)))


def test_label_annotation_and_version_predicates() -> None:
    assert labels_changed(update(obj(labels={"a": "1"}), obj(labels={"a": "2"})))
    assert not labels_changed(update(obj(labels={"a": "1"}), obj(labels={"a": "1"})))
    assert not labels_changed(update(obj(), obj(labels={})))
    assert annotations_changed(update(obj(), obj(annotations={"x": "y"})))
    assert not resource_version_changed(
        update(obj(resourceVersion="5"), obj(resourceVersion="5"))
    )
    assert resource_version_changed(update(obj(resourceVersion="5"), obj(resourceVersion="6")))


def test_predicates_compose() -> None:
    spec_or_labels = any_of(generation_changed, labels_changed)
    status_only = update(obj(generation=1, labels={"a": "1"}), obj(generation=1, labels={"a": "1"}))
    relabelled = update(obj(generation=1, labels={"a": "1"}), obj(generation=1, labels={"a": "2"}))
    assert not spec_or_labels(status_only)
    assert spec_or_labels(relabelled)
    labelled = has_label("team", "ml")
    assert labelled(Event(EventType.CREATE, obj(labels={"team": "ml"})))
    assert not labelled(Event(EventType.CREATE, obj(labels={"team": "web"})))
    assert has_label("team")(Event(EventType.CREATE, obj(labels={"team": "web"})))
    assert not all_of(labelled, generation_changed)(Event(EventType.CREATE, obj()))
    assert negate(labelled)(Event(EventType.CREATE, obj()))


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
