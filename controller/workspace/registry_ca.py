"""The operator's registry CA bundles, brought to the pods that push or pull artifacts (pure).

The operator's setting names one ConfigMap in its own namespace holding a PEM bundle per
registry (keys as crds/registry_ca.py says). A pod can mount only a ConfigMap of its own
namespace, so a workspace that pushes or pulls an OCI artifact gets a copy,
``<workspace>-registry-ca``, owned by the workspace and rewritten when the source
changes (the kubelet then refreshes the mounted files). The copy is mounted read-only in
the tuning container (it pushes the adapter) and in the serving pod's adapter pull init
containers, with ``KAITO_REGISTRY_CA_DIR`` naming the folder. A data image
(``tuning.input.image``) is pulled by the container runtime, not by our code, so its
registry's CA is the node's to trust.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

from controller.workspace.workload import (
    JsonDict,
    bounded_name,
    object_metadata,
    workspace_name,
)
from crds.registry_ca import ENV_CA_DIR, MOUNT_DIR, registry_of_key
from crds.workspace import Workspace

VOLUME = "registry-ca"
COPY_SUFFIX = "-registry-ca"


def copy_name(ws: Workspace) -> str:
    return bounded_name(workspace_name(ws), COPY_SUFFIX)


def uses_registry(ws: Workspace) -> bool:
    """Whether a pod of this workspace pushes or pulls an artifact with our code."""
    if ws.tuning is not None and ws.tuning.output is not None and ws.tuning.output.image:
        return True
    adapters = ws.inference.adapters if ws.inference is not None else None
    return any(a.source is not None and a.source.image for a in adapters or [])


def bundle_keys(source: Mapping[str, Any] | None) -> tuple[list[str], list[str]]:
    """(keys in the scheme, keys that are not) of the source ConfigMap's data."""
    data = (source or {}).get("data") or {}
    valid = sorted(k for k in data if registry_of_key(k) is not None)
    return valid, sorted(k for k in data if registry_of_key(k) is None)


def build_registry_ca_copy(ws: Workspace, source: Mapping[str, Any] | None) -> JsonDict | None:
    """The workspace's copy of the source ConfigMap's bundles; None when it holds none."""
    valid, _ = bundle_keys(source)
    if not valid:
        return None
    data = (source or {}).get("data") or {}
    return {"apiVersion": "v1", "kind": "ConfigMap",
            "metadata": object_metadata(ws, copy_name(ws)),
            "data": {key: str(data[key]) for key in valid}}


def mount_registry_ca(pod_spec: JsonDict, containers: Iterable[JsonDict],
                      config_map_name: str) -> None:
    """Adds the copy as a volume of ``pod_spec`` and mounts it in ``containers``."""
    pod_spec.setdefault("volumes", []).append(
        {"name": VOLUME, "configMap": {"name": config_map_name}})
    for container in containers:
        container.setdefault("volumeMounts", []).append(
            {"name": VOLUME, "mountPath": MOUNT_DIR, "readOnly": True})
        container.setdefault("env", []).append({"name": ENV_CA_DIR, "value": MOUNT_DIR})
