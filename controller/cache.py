"""The informer's in-memory store: objects by key plus secondary indexes.

Keys are `namespace/name` (or `name` for cluster-scoped objects), as in client-go.
An index maps a value to the keys of the objects that produce it: one by namespace and one
by `label=value`, the two questions reconcilers ask (`objects(namespace, labels)`: a
workspace's pods, its claims), so those reads never scan the whole cache. (Mapping a
child's event to its owner needs no index: the event carries the owner references.)
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

from controller.kube.resources import KubeObject

IndexFunc = Callable[[KubeObject], Iterable[str]]

NAMESPACE_INDEX = "namespace"
LABEL_INDEX = "label"


def object_key(obj: Mapping[str, Any]) -> str:
    """`namespace/name` or `name`; raises ValueError on an object without a name."""
    metadata = obj.get("metadata") or {}
    name = metadata.get("name")
    if not name:
        raise ValueError("object has no metadata.name")
    namespace = metadata.get("namespace")
    return f"{namespace}/{name}" if namespace else str(name)


def split_key(key: str) -> tuple[str | None, str]:
    """The inverse of `object_key`: (namespace or None, name)."""
    namespace, sep, name = key.partition("/")
    if not sep:
        return None, key
    if not namespace or not name or "/" in name:
        raise ValueError(f"malformed object key {key!r}")
    return namespace, name


def index_by_namespace(obj: KubeObject) -> list[str]:
    namespace = (obj.get("metadata") or {}).get("namespace")
    return [namespace] if namespace else []


def index_by_label(obj: KubeObject) -> list[str]:
    labels = (obj.get("metadata") or {}).get("labels") or {}
    return [f"{key}={value}" for key, value in labels.items()]


INDEXERS: Mapping[str, IndexFunc] = {
    NAMESPACE_INDEX: index_by_namespace,
    LABEL_INDEX: index_by_label,
}


def strip_managed_fields(obj: KubeObject) -> KubeObject:
    """The default transform: managedFields are large and no reconciler reads them."""
    metadata = obj.get("metadata")
    if isinstance(metadata, dict):
        metadata.pop("managedFields", None)
    return obj


@dataclass(frozen=True)
class Delta:
    """What `Cache.replace` changed, to be replayed to event handlers."""

    added: list[KubeObject] = field(default_factory=list)
    updated: list[tuple[KubeObject, KubeObject]] = field(default_factory=list)
    deleted: list[KubeObject] = field(default_factory=list)


class Cache:
    """Objects by key, with secondary indexes kept in step on every write."""

    def __init__(self, indexers: Mapping[str, IndexFunc] | None = None) -> None:
        """``indexers``: indexes a reader needs beyond namespace and label (the bound-pod
        cache's node name), read with ``by_index``."""
        self._indexers: dict[str, IndexFunc] = {**INDEXERS, **(indexers or {})}
        self._objects: dict[str, KubeObject] = {}
        self._indexes: dict[str, dict[str, set[str]]] = {name: {} for name in self._indexers}

    def __len__(self) -> int:
        return len(self._objects)

    def __contains__(self, key: object) -> bool:
        return key in self._objects

    def __iter__(self) -> Iterator[KubeObject]:
        return iter([copy_object(obj) for obj in self._objects.values()])

    def keys(self) -> list[str]:
        return list(self._objects)

    def get(self, key: str) -> KubeObject | None:
        """A copy of the object under ``key``: changing it never changes the cache."""
        obj = self._objects.get(key)
        return None if obj is None else copy_object(obj)

    def objects(
        self, namespace: str | None = None, labels: Mapping[str, str] | None = None
    ) -> list[KubeObject]:
        """Objects in `namespace` (all when None) carrying every `labels` pair: the
        intersection of their index entries, smallest first."""
        selections = [self._indexes[LABEL_INDEX].get(f"{key}={value}", set())
                      for key, value in (labels or {}).items()]
        if namespace is not None:
            selections.append(self._indexes[NAMESPACE_INDEX].get(namespace, set()))
        if not selections:
            return [copy_object(obj) for obj in self._objects.values()]
        selections.sort(key=len)
        keys = set(selections[0]).intersection(*selections[1:])
        return [copy_object(self._objects[key]) for key in sorted(keys)]

    def add_indexer(self, name: str, func: IndexFunc) -> None:
        """Add an index, built over what the cache already holds."""
        if name in self._indexers:
            raise ValueError(f"index {name!r} exists")
        self._indexers[name] = func
        self._indexes[name] = {}
        for key, obj in self._objects.items():
            self._index_one(name, key, obj)

    def by_index(self, index: str, value: str) -> list[KubeObject]:
        """Copies of the objects whose ``index`` produces ``value``."""
        keys = self._indexes[index].get(value, set())
        return [copy_object(self._objects[key]) for key in sorted(keys)]

    def index_keys(self, index: str, value: str) -> set[str]:
        """The keys of the objects whose ``index`` produces ``value``."""
        return set(self._indexes[index].get(value, set()))

    def upsert(self, obj: KubeObject) -> KubeObject | None:
        """Store `obj`; returns the object it replaced, if any."""
        key = object_key(obj)
        old = self._objects.get(key)
        if old is not None:
            self._unindex(key, old)
        self._objects[key] = obj
        for name in self._indexers:
            self._index_one(name, key, obj)
        return old

    def delete(self, key: str) -> KubeObject | None:
        old = self._objects.pop(key, None)
        if old is not None:
            self._unindex(key, old)
        return old

    def replace(self, objects: Iterable[KubeObject]) -> Delta:
        """Make the cache hold exactly `objects` (a relist); report what changed."""
        delta = Delta()
        seen: set[str] = set()
        for obj in objects:
            key = object_key(obj)
            seen.add(key)
            old = self.upsert(obj)
            if old is None:
                delta.added.append(obj)
            elif _resource_version(old) != _resource_version(obj):
                delta.updated.append((old, obj))
        for key in [k for k in self._objects if k not in seen]:
            old = self.delete(key)
            if old is not None:
                delta.deleted.append(old)
        return delta

    def _index_one(self, name: str, key: str, obj: KubeObject) -> None:
        index = self._indexes[name]
        for value in self._indexers[name](obj):
            index.setdefault(value, set()).add(key)

    def _unindex(self, key: str, obj: KubeObject) -> None:
        for name, func in self._indexers.items():
            index = self._indexes[name]
            for value in func(obj):
                keys = index.get(value)
                if keys is not None:
                    keys.discard(key)
                    if not keys:
                        del index[value]


def copy_object(obj: KubeObject) -> KubeObject:
    """A deep copy of a JSON object (dicts, lists, scalars): what every cache read hands
    out, as controller-runtime's cache does, so a reconciler that edits what it read
    cannot corrupt the cache other workers read. Faster than ``copy.deepcopy``, which
    also tracks cycles JSON cannot have."""
    return _copy_json(obj)  # type: ignore[no-any-return]


def _copy_json(value: Any) -> Any:
    if isinstance(value, dict):
        return {key: _copy_json(item) for key, item in value.items()}
    if isinstance(value, list):
        return [_copy_json(item) for item in value]
    return value


def _resource_version(obj: KubeObject) -> str:
    return str((obj.get("metadata") or {}).get("resourceVersion", ""))

