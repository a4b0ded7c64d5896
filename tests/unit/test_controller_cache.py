"""The informer cache and its indexes."""

from __future__ import annotations

from typing import Any

import pytest

from controller.cache import (
    CONTROLLER_UID_INDEX,
    LABEL_INDEX,
    NAMESPACE_INDEX,
    OWNER_UID_INDEX,
    Cache,
    index_by_label,
    index_by_namespace,
    object_key,
    split_key,
    strip_managed_fields,
)

pytestmark = pytest.mark.unit


def cm(name: str, namespace: str | None = "ns", rv: str = "1", **meta: Any) -> dict[str, Any]:
    metadata: dict[str, Any] = {"name": name, "resourceVersion": rv, **meta}
    if namespace:
        metadata["namespace"] = namespace
    return {"metadata": metadata}


def names(objects: list[dict[str, Any]]) -> list[str]:
    return sorted(o["metadata"]["name"] for o in objects)


def test_keys() -> None:
    assert object_key(cm("a")) == "ns/a"
    assert object_key(cm("node", None)) == "node"
    with pytest.raises(ValueError):
        object_key({"metadata": {}})
    assert split_key("ns/a") == ("ns", "a")
    assert split_key("node") == (None, "node")
    with pytest.raises(ValueError):
        split_key("a/b/c")


def test_namespace_label_and_owner_indexes_follow_updates_and_deletes() -> None:
    cache = Cache()
    owner = {"apiVersion": "kaito.sh/v1beta1", "kind": "Workspace", "name": "ws", "uid": "u1",
             "controller": True}
    cache.upsert(cm("a", labels={"app": "x"}, ownerReferences=[owner]))
    cache.upsert(cm("b", labels={"app": "y"}, ownerReferences=[{**owner, "controller": False}]))
    cache.upsert(cm("c", "other", labels={"app": "x"}))
    assert names(cache.by_index(NAMESPACE_INDEX, "ns")) == ["a", "b"]
    assert names(cache.by_index(LABEL_INDEX, "app=x")) == ["a", "c"]
    assert names(cache.by_index(OWNER_UID_INDEX, "u1")) == ["a", "b"]
    assert names(cache.by_index(CONTROLLER_UID_INDEX, "u1")) == ["a"]
    assert names(cache.objects("ns", labels={"app": "y"})) == ["b"]
    assert names(cache.objects()) == ["a", "b", "c"]

    cache.upsert(cm("a", rv="2", labels={"app": "y"}))  # relabelled and orphaned
    assert names(cache.by_index(LABEL_INDEX, "app=x")) == ["c"]
    assert names(cache.by_index(LABEL_INDEX, "app=y")) == ["a", "b"]
    assert names(cache.by_index(OWNER_UID_INDEX, "u1")) == ["b"]

    assert cache.delete("ns/b") is not None
    assert cache.by_index(OWNER_UID_INDEX, "u1") == []
    assert cache.delete("ns/b") is None
    assert cache.index_keys(LABEL_INDEX, "app=y") == {"ns/a"}
    with pytest.raises(KeyError):
        cache.by_index("nope", "x")


def test_replace_reports_added_updated_deleted() -> None:
    cache = Cache()
    cache.upsert(cm("keep", rv="1"))
    cache.upsert(cm("change", rv="1"))
    cache.upsert(cm("gone", rv="1"))
    delta = cache.replace([cm("keep", rv="1"), cm("change", rv="2"), cm("new", rv="3")])
    assert names(delta.added) == ["new"]
    assert [(old["metadata"]["resourceVersion"], new["metadata"]["resourceVersion"])
            for old, new in delta.updated] == [("1", "2")]
    assert names(delta.deleted) == ["gone"]
    assert sorted(cache.keys()) == ["ns/change", "ns/keep", "ns/new"]
    assert "ns/gone" not in cache and len(cache) == 3


def test_custom_index_added_late_covers_existing_objects() -> None:
    cache = Cache()
    cache.upsert(cm("a", annotations={"model": "phi-3"}))
    cache.add_indexer("model", lambda o: [o["metadata"].get("annotations", {}).get("model", "")])
    assert names(cache.by_index("model", "phi-3")) == ["a"]
    with pytest.raises(ValueError):
        cache.add_indexer("model", lambda o: [])


def test_strip_managed_fields() -> None:
    obj = cm("a", managedFields=[{"manager": "kubectl"}])
    assert "managedFields" not in strip_managed_fields(obj)["metadata"]


def test_reads_hand_out_copies_the_caller_cannot_corrupt_the_cache_with() -> None:
    cache = Cache({LABEL_INDEX: index_by_label, NAMESPACE_INDEX: index_by_namespace})
    cache.upsert({"metadata": {"name": "a", "namespace": "ns", "labels": {"x": "1"}},
                  "data": {"k": ["v"]}})
    reads = [cache.get("ns/a"), cache.get_by_name("a", "ns"), cache.objects("ns")[0],
             cache.by_index(LABEL_INDEX, "x=1")[0], next(iter(cache))]
    for obj in reads:
        assert obj is not None
        obj["data"]["k"].append("changed")
        obj["metadata"]["labels"]["x"] = "2"
    fresh = cache.get("ns/a")
    assert fresh is not None and fresh["data"] == {"k": ["v"]}
    assert cache.objects(labels={"x": "1"}) and not cache.objects(labels={"x": "2"})
