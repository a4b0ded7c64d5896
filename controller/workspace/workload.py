"""Pieces every workload pod of a Workspace shares: names, labels, owner, placement, security.

The tuning Job (``tuning``) and the inference Deployment (``inference``) are
built from these, so both land on the workspace's GPU nodes the same way, run as the
runtime image's non-root user with the restricted Pod Security profile, and carry the
labels the controller finds them by. Pure: dicts in the shape the API server takes.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from crds.karpenter import (
    GPU_TAINT_KEY,
    GPU_TAINT_VALUE,
    WORKSPACE_LABEL,
    WORKSPACE_NAMESPACE_LABEL,
)
from crds.workspace import GROUP, KIND, STORAGE_VERSION, PresetSpec, Workspace
from presets.catalog import GpuSku

JsonDict = dict[str, Any]

REVISION_ANNOTATION = "workspace.kaito.sh/revision"
COMPONENT_LABEL = "app.kubernetes.io/component"
GPU_RESOURCE = "nvidia.com/gpu"
RUNTIME_USER_ID = 65532  # the Dockerfile's `kaito` user and group

# Where the runtime process may write although the root filesystem is read-only.
TMP_DIR = "/tmp"
CACHE_DIR = "/mnt/cache"
SHM_DIR = "/dev/shm"
MODEL_DIR = "/mnt/model"

MAX_NAME_LENGTH = 63


@dataclass(frozen=True)
class WorkloadSettings:
    """What the operator's deployment decides about every workload it creates."""

    runtime_image: str = "kaito-runtime:0.1.0"
    image_pull_policy: str = "IfNotPresent"
    progress_port: int = 5100
    serving_port: int = 5000
    tuning_backoff_limit: int = 2
    operator_namespace: str = "kaito-system"
    fetch_allow_cidrs: tuple[str, ...] = ()
    """CIDRs ``kaito fetch`` may download from although they are not global (in-cluster
    data servers); empty: public addresses only."""
    plain_http_registries: tuple[str, ...] = ()
    """Registries (host:port) the runtime reaches over plain HTTP (an in-cluster test
    registry); every other registry is HTTPS."""


def bounded_name(base: str, suffix: str = "", limit: int = MAX_NAME_LENGTH) -> str:
    """``base + suffix``, or when longer than ``limit`` a truncated base plus a hash of it,
    so two long workspace names never collide and the result is stable."""
    name = base + suffix
    if len(name) <= limit:
        return name
    digest = hashlib.sha256(base.encode()).hexdigest()[:8]
    keep = limit - len(suffix) - len(digest) - 1
    return f"{base[:keep].rstrip('-.')}-{digest}{suffix}"


def workspace_name(ws: Workspace) -> str:
    if not ws.metadata.name:
        raise ValueError("the workspace has no metadata.name")
    return ws.metadata.name


def workspace_namespace(ws: Workspace) -> str:
    return ws.metadata.namespace or "default"


def workspace_labels(ws: Workspace) -> dict[str, str]:
    """The labels every object made for this workspace carries (and is selected by)."""
    return {
        WORKSPACE_LABEL: workspace_name(ws),
        WORKSPACE_NAMESPACE_LABEL: workspace_namespace(ws),
    }


def component_labels(ws: Workspace, component: str) -> dict[str, str]:
    """The workspace labels plus ``app.kubernetes.io/component``: tuning or inference."""
    return {**workspace_labels(ws), COMPONENT_LABEL: component}


def owner_reference(ws: Workspace) -> JsonDict:
    """The workspace as the controlling owner: deleting it garbage-collects the object."""
    if not ws.metadata.uid:
        raise ValueError("the workspace has no metadata.uid")
    return {
        "apiVersion": f"{GROUP}/{STORAGE_VERSION}",
        "kind": KIND,
        "name": workspace_name(ws),
        "uid": ws.metadata.uid,
        "controller": True,
        "blockOwnerDeletion": True,
    }


def object_metadata(
    ws: Workspace, name: str, component: str | None = None, revision: str | None = None
) -> JsonDict:
    """Metadata of an object in the workspace's namespace that the workspace owns."""
    labels = component_labels(ws, component) if component else workspace_labels(ws)
    metadata: JsonDict = {
        "name": name,
        "namespace": workspace_namespace(ws),
        "labels": labels,
        "ownerReferences": [owner_reference(ws)],
    }
    if revision is not None:
        metadata["annotations"] = {REVISION_ANNOTATION: revision}
    return metadata


def gpu_tolerations() -> list[JsonDict]:
    """Tolerate the taint Kaito puts on the nodes it provisions, and the one GPU node
    pools commonly carry (``nvidia.com/gpu``)."""
    return [
        {
            "key": GPU_TAINT_KEY,
            "operator": "Equal",
            "value": GPU_TAINT_VALUE,
            "effect": "NoSchedule",
        },
        {"key": GPU_RESOURCE, "operator": "Exists", "effect": "NoSchedule"},
    ]


def node_affinity(ws: Workspace) -> JsonDict:
    """Required node affinity from ``resource.labelSelector``: the pods run only on the
    nodes the workspace selects (the ones provisioned for it carry those labels)."""
    expressions: list[JsonDict] = []
    selector = ws.resource.label_selector if ws.resource is not None else None
    if selector is not None:
        for key, value in sorted((selector.match_labels or {}).items()):
            expressions.append({"key": key, "operator": "In", "values": [value]})
        for requirement in selector.match_expressions or []:
            expression: JsonDict = {"key": requirement.key, "operator": requirement.operator}
            if requirement.values:
                expression["values"] = list(requirement.values)
            expressions.append(expression)
    if not expressions:
        return {}
    return {
        "nodeAffinity": {
            "requiredDuringSchedulingIgnoredDuringExecution": {
                "nodeSelectorTerms": [{"matchExpressions": expressions}]
            }
        }
    }


def gpu_resources(sku: GpuSku | None) -> JsonDict:
    """Every GPU of the node for the one workload pod on it; nothing when the SKU is
    unknown (bring-your-own nodes), where the node selector alone places the pod."""
    if sku is None:
        return {}
    return {"limits": {GPU_RESOURCE: str(sku.gpu_count)}}


def pod_security_context() -> JsonDict:
    """The restricted Pod Security profile, as the runtime image's user."""
    return {
        "runAsNonRoot": True,
        "runAsUser": RUNTIME_USER_ID,
        "runAsGroup": RUNTIME_USER_ID,
        "fsGroup": RUNTIME_USER_ID,
        # A user's data or output volume can be large: chown it only when needed.
        "fsGroupChangePolicy": "OnRootMismatch",
        "seccompProfile": {"type": "RuntimeDefault"},
    }


def container_security_context(*, read_only_root: bool = True) -> JsonDict:
    """No privilege escalation, no capabilities; a read-only root filesystem unless the
    process needs to write outside its mounted volumes."""
    return {
        "allowPrivilegeEscalation": False,
        "capabilities": {"drop": ["ALL"]},
        "readOnlyRootFilesystem": read_only_root,
        "runAsNonRoot": True,
    }


def scratch_volumes() -> list[JsonDict]:
    """Writable space for a read-only-root runtime container: /tmp, caches, shared memory
    (PyTorch data loaders and NCCL need more /dev/shm than the 64 MiB default)."""
    return [
        {"name": "tmp", "emptyDir": {}},
        {"name": "cache", "emptyDir": {}},
        {"name": "shm", "emptyDir": {"medium": "Memory"}},
    ]


def scratch_mounts(*, with_shm: bool = True) -> list[JsonDict]:
    mounts: list[JsonDict] = [
        {"name": "tmp", "mountPath": TMP_DIR},
        {"name": "cache", "mountPath": CACHE_DIR},
    ]
    if with_shm:
        mounts.append({"name": "shm", "mountPath": SHM_DIR})
    return mounts


def runtime_env(settings: WorkloadSettings | None = None) -> list[JsonDict]:
    """Point every library cache at the writable cache volume, and pass on the operator's
    network allowances (in-cluster data servers, plain-HTTP registries)."""
    allowances: list[JsonDict] = []
    if settings is not None and settings.fetch_allow_cidrs:
        allowances.append({"name": "KAITO_FETCH_ALLOW_CIDRS",
                           "value": ",".join(settings.fetch_allow_cidrs)})
    if settings is not None and settings.plain_http_registries:
        allowances.append({"name": "KAITO_REGISTRY_PLAIN_HTTP",
                           "value": ",".join(settings.plain_http_registries)})
    return allowances + [
        {"name": "HOME", "value": TMP_DIR},
        {"name": "XDG_CACHE_HOME", "value": CACHE_DIR},
        {"name": "HF_HOME", "value": f"{CACHE_DIR}/huggingface"},
        {"name": "KAITO_MODEL_CACHE", "value": f"{CACHE_DIR}/kaito-models"},
        {"name": "TRITON_CACHE_DIR", "value": f"{CACHE_DIR}/triton"},
        {"name": "PYTHONDONTWRITEBYTECODE", "value": "1"},
    ]


def image_pull_secret_refs(names: Iterable[str]) -> list[JsonDict]:
    """``imagePullSecrets`` entries, each name once, in order."""
    return [{"name": name} for name in dict.fromkeys(name for name in names if name)]


def model_access_secret(preset_spec: PresetSpec | None) -> str | None:
    """The Secret with HF_TOKEN for a gated model, when the workspace names one."""
    if preset_spec is None or preset_spec.preset_options is None:
        return None
    return preset_spec.preset_options.model_access_secret or None


def fetch_model_init_container(
    hf_id: str, secret_name: str | None, settings: WorkloadSettings
) -> JsonDict:
    """An init container downloading the model's weights into /mnt/model (HF_TOKEN from
    the model access secret: the token never appears in the pod spec)."""
    env = runtime_env(settings)
    if secret_name:
        env.append({
            "name": "HF_TOKEN",
            "valueFrom": {
                "secretKeyRef": {"name": secret_name, "key": "HF_TOKEN", "optional": False}
            },
        })
    return runtime_container(
        "fetch-model",
        settings,
        args=["fetch-model", "--repo", hf_id, "--dest", MODEL_DIR],
        env=env,
        mounts=[*scratch_mounts(with_shm=False), {"name": "model", "mountPath": MODEL_DIR}],
    )


def runtime_container(
    name: str,
    settings: WorkloadSettings,
    *,
    args: list[str],
    mounts: list[JsonDict],
    env: list[JsonDict] | None = None,
) -> JsonDict:
    """A container running ``kaito <args>`` from the runtime image."""
    return {
        "name": name,
        "image": settings.runtime_image,
        "imagePullPolicy": settings.image_pull_policy,
        "command": ["kaito"],
        "args": args,
        "env": runtime_env(settings) if env is None else env,
        "volumeMounts": mounts,
        "securityContext": container_security_context(),
        "terminationMessagePolicy": "FallbackToLogsOnError",
    }


def pod_spec_base(ws: Workspace) -> JsonDict:
    """The pod spec fields every workload pod shares (no containers or volumes yet)."""
    spec: JsonDict = {
        "automountServiceAccountToken": False,
        "enableServiceLinks": False,
        "securityContext": pod_security_context(),
        "tolerations": gpu_tolerations(),
    }
    affinity = node_affinity(ws)
    if affinity:
        spec["affinity"] = affinity
    return spec
