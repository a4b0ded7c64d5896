"""The informer cache: copies out, and namespace and label reads that follow every write."""

from __future__ import annotations

from typing import Any

import pytest

from controller.cache import Cache, object_key, split_key, strip_managed_fields

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


def test_namespace_and_label_reads_follow_updates_and_deletes() -> None:
    cache = Cache()
    cache.upsert(cm("a", labels={"app": "x", "tier": "gpu"}))
    cache.upsert(cm("b", labels={"app": "y"}))
    cache.upsert(cm("c", "other", labels={"app": "x"}))
    cache.upsert(cm("node", None, labels={"app": "x"}))
    assert names(cache.objects("ns")) == ["a", "b"]
    assert names(cache.objects(labels={"app": "x"})) == ["a", "c", "node"]
    assert names(cache.objects("ns", labels={"app": "x"})) == ["a"]
    assert names(cache.objects(labels={"app": "x", "tier": "gpu"})) == ["a"]
    assert cache.objects(labels={"app": "x", "tier": "cpu"}) == []
    assert cache.objects("nowhere") == []
    assert names(cache.objects()) == ["a", "b", "c", "node"]

    cache.upsert(cm("a", rv="2", labels={"app": "y"}))  # relabelled
    assert names(cache.objects(labels={"app": "x"})) == ["c", "node"]
    assert names(cache.objects("ns", labels={"app": "y"})) == ["a", "b"]
    assert cache.objects(labels={"tier": "gpu"}) == []

    assert cache.delete("ns/b") is not None
    assert cache.delete("ns/b") is None
    assert names(cache.objects("ns")) == ["a"]
    assert names(cache.objects(labels={"app": "y"})) == ["a"]


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


def test_strip_managed_fields() -> None:
    obj = cm("a", managedFields=[{"manager": "kubectl"}])
    assert "managedFields" not in strip_managed_fields(obj)["metadata"]


def test_reads_hand_out_copies_the_caller_cannot_corrupt_the_cache_with() -> None:
    cache = Cache()
    cache.upsert({"metadata": {"name": "a", "namespace": "ns", "labels": {"x": "1"}},
                  "data": {"k": ["v"]}})
    reads = [cache.get("ns/a"), cache.objects("ns")[0], cache.objects(labels={"x": "1"})[0],
             cache.objects()[0], next(iter(cache))]
    for obj in reads:
        assert obj is not None
        obj["data"]["k"].append("changed")
        obj["metadata"]["labels"]["x"] = "2"
    fresh = cache.get("ns/a")
    assert fresh is not None and fresh["data"] == {"k": ["v"]}
    assert cache.objects(labels={"x": "1"}) and not cache.objects(labels={"x": "2"})
