"""Writing the objects a reconciler wants: create, update only when the desired form
changed, delete — the generic half of every reconcile (controller-runtime's
CreateOrUpdate), kept apart from what any one controller wants.

Every object written through ``ObjectWriter.ensure`` carries a hash of its desired form
(``workspace.kaito.sh/desired-hash``, the name existing clusters' objects already carry):
an object whose hash matches is left alone, so a resync with nothing new makes no API
write, and fields other writers own (the status, a Service's allocated IPs, labels and
annotations added by others) survive an update. Names are deterministic, so a create
that races a restart gets 409 and returns what exists. ``writes`` counts the API writes
made, for tests and the controller benchmark.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from typing import Any

from controller.informer import Informer
from controller.kube.client import KubeClient
from controller.kube.errors import AlreadyExists, NotFound
from controller.kube.resources import SERVICES, KubeObject, ResourceType

DESIRED_HASH_ANNOTATION = "workspace.kaito.sh/desired-hash"
# Fields of a Service's spec the API server fills in and an update must carry over.
_SERVICE_ALLOCATED = ("clusterIP", "clusterIPs", "ipFamilies", "ipFamilyPolicy")


def desired_hash(obj: Mapping[str, Any]) -> str:
    text = json.dumps(obj, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def with_hash(obj: KubeObject) -> KubeObject:
    """A copy of ``obj`` annotated with the hash of ``obj``."""
    metadata = dict(obj.get("metadata") or {})
    metadata["annotations"] = {**(metadata.get("annotations") or {}),
                               DESIRED_HASH_ANNOTATION: desired_hash(obj)}
    return {**obj, "metadata": metadata}


def annotation(obj: Mapping[str, Any] | None, key: str) -> str | None:
    if obj is None:
        return None
    value = ((obj.get("metadata") or {}).get("annotations") or {}).get(key)
    return None if value is None else str(value)


def _merged_update(resource: ResourceType, current: KubeObject,
                   desired: KubeObject) -> KubeObject:
    """``current`` with the desired parts, keeping what others own."""
    updated = dict(current)
    for part in desired:
        if part not in ("metadata", "status"):
            updated[part] = desired[part]
    if resource == SERVICES:
        spec = dict(desired.get("spec") or {})
        for kept in _SERVICE_ALLOCATED:
            if kept in (current.get("spec") or {}):
                spec[kept] = current["spec"][kept]
        updated["spec"] = spec
    metadata = desired["metadata"]
    current_meta = dict(current.get("metadata") or {})
    current_meta["labels"] = {**(current_meta.get("labels") or {}),
                              **(metadata.get("labels") or {})}
    current_meta["annotations"] = {**(current_meta.get("annotations") or {}),
                                   **metadata["annotations"]}
    updated["metadata"] = current_meta
    return updated


class ObjectWriter:
    """Creates, updates and deletes objects through one client, counting the writes."""

    def __init__(self, client: KubeClient) -> None:
        self._client = client
        self.writes = 0

    async def ensure(self, resource: ResourceType, desired: KubeObject,
                     informer: Informer) -> KubeObject:
        """Create ``desired`` or update what the cache holds when its desired hash
        differs; what exists is returned unchanged when it matches."""
        desired = with_hash(desired)
        metadata = desired["metadata"]
        current = informer.cache.get(f"{metadata.get('namespace')}/{metadata['name']}")
        if current is None:
            return await self.create(resource, desired)
        if annotation(current, DESIRED_HASH_ANNOTATION) == metadata["annotations"][
                DESIRED_HASH_ANNOTATION]:
            return current
        self.writes += 1
        replaced: KubeObject = await self._client.replace(
            resource, _merged_update(resource, current, desired))
        return replaced

    async def create(self, resource: ResourceType, obj: KubeObject) -> KubeObject:
        """Create ``obj``; when it already exists (a deterministic name), return that."""
        self.writes += 1
        try:
            created: KubeObject = await self._client.create(resource, obj)
            return created
        except AlreadyExists:
            metadata = obj["metadata"]
            existing: KubeObject = await self._client.get(
                resource, metadata["name"], metadata.get("namespace"))
            return existing

    async def delete(self, resource: ResourceType, name: str, namespace: str | None) -> None:
        """Delete in the background (dependents by the garbage collector); gone is fine."""
        self.writes += 1
        try:
            await self._client.request(
                "DELETE", resource.path(namespace, name),
                body={"apiVersion": "v1", "kind": "DeleteOptions",
                      "propagationPolicy": "Background"})
        except NotFound:
            pass

    async def patch(self, resource: ResourceType, name: str, patch: dict[str, Any],
                    namespace: str | None) -> None:
        self.writes += 1
        await self._client.patch(resource, name, patch, namespace)

    async def replace_status(self, resource: ResourceType, body: KubeObject) -> None:
        self.writes += 1
        await self._client.replace_status(resource, body)
