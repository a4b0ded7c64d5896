"""The inference workload of a Workspace and its Service (pure).

A Deployment of ``resource.count`` replicas, each serving the whole model on a node of its
own: the pod asks for every GPU of its node and the serving engine shards the weights over
them, but no engine here serves one model across nodes, so nothing is deployed that would
pretend to (no StatefulSet, no torchrun rendezvous: admission refuses a preset that does
not fit one node). Replicas never share a node (required pod anti-affinity on the
hostname). One replica updates with ``Recreate`` (its node holds one model; a surge pod
would wait for a second node); several roll one at a time without surge, so the others
keep serving. Each pod runs ``kaito serve`` on port 5000 with the workspace's LoRA adapters
under /mnt/adapter/<name>: OCI adapters are pulled by an init container
(``kaito pull-adapter``), volume adapters are mounted.

Earlier versions of this operator made a StatefulSet and a headless Service for presets
larger than one node; ``legacy_statefulset_name`` and ``legacy_headless_service_name`` name
them so the controller can delete them on upgrade.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from controller.workspace.registry_ca import mount_registry_ca
from controller.workspace.workload import (
    MODEL_DIR,
    JsonDict,
    WorkloadSettings,
    bounded_name,
    component_labels,
    fetch_model_init_container,
    gpu_resources,
    model_access_secret,
    object_metadata,
    pod_spec_base,
    runtime_container,
    runtime_env,
    scratch_mounts,
    scratch_volumes,
    workspace_name,
)
from crds.workspace import PresetSpec, Workspace
from presets.catalog import IMAGE_WEIGHTS_PRESETS, GpuSku, ModelPreset

COMPONENT = "inference"
ADAPTER_DIR = "/mnt/adapter"
ADAPTER_SECRET_DIR = "/mnt/adapter-secret"
INFERENCE_CONFIG_DIR = "/mnt/inference-config"
DOCKERCONFIG_KEY = ".dockerconfigjson"
SERVICE_PORT = 80
DEFAULT_STRENGTH = "1.0"
# Names earlier versions gave their multi-node StatefulSet and its headless Service.
LEGACY_HEADLESS_SUFFIX = "-headless"
LEGACY_MAX_STATEFULSET_NAME_LENGTH = 52

# Weight loading can take many minutes for a large model: the startup probe allows 30
# (180 x 10 s) before the kubelet restarts the container; liveness applies only after.
STARTUP_PERIOD_SECONDS = 10
STARTUP_FAILURE_THRESHOLD = 180


@dataclass(frozen=True)
class AdapterMount:
    """A LoRA adapter to serve: pulled from an OCI image or mounted from a volume."""

    name: str
    strength: str = DEFAULT_STRENGTH
    image: str | None = None
    image_pull_secrets: tuple[str, ...] = ()
    volume_source: dict[str, Any] | None = None


def adapters_for(ws: Workspace) -> list[AdapterMount]:
    """The adapters ``inference.adapters`` names (entries without a source are skipped)."""
    if ws.inference is None:
        return []
    mounts: list[AdapterMount] = []
    for adapter in ws.inference.adapters or []:
        source = adapter.source
        if source is None or not source.name:
            continue
        mounts.append(AdapterMount(
            name=source.name,
            strength=adapter.strength or DEFAULT_STRENGTH,
            image=source.image or None,
            image_pull_secrets=tuple(source.image_pull_secrets or ()),
            volume_source=dict(source.volume_source) if source.volume_source else None,
        ))
    return mounts


def tuned_adapter(ws: Workspace) -> AdapterMount:
    """The adapter a tuning workspace produced, served under the workspace's name: pulled
    from the output image with the push secret, or mounted from the output volume."""
    output = ws.tuning.output if ws.tuning is not None else None
    if output is None or not (output.image or output.volume_source):
        raise ValueError("the workspace has no tuning output to serve")
    if output.image:
        secrets = (output.image_push_secret,) if output.image_push_secret else ()
        return AdapterMount(name=workspace_name(ws), image=output.image,
                            image_pull_secrets=secrets)
    return AdapterMount(name=workspace_name(ws), volume_source=dict(output.volume_source or {}))


def service_name(ws: Workspace) -> str:
    """The Service's name: the workspace's, prefixed when it starts with a digit (Service
    names are DNS-1035 labels)."""
    name = workspace_name(ws)
    return name if name[:1].isalpha() else bounded_name("ws-" + name)


def workload_name(ws: Workspace) -> str:
    """The Deployment's name: the workspace's."""
    return workspace_name(ws)


def legacy_statefulset_name(ws: Workspace) -> str:
    """The StatefulSet an earlier operator version made for a multi-node preset."""
    return bounded_name(workspace_name(ws), limit=LEGACY_MAX_STATEFULSET_NAME_LENGTH)


def legacy_headless_service_name(ws: Workspace) -> str:
    """The headless Service an earlier operator version made beside that StatefulSet."""
    return bounded_name(service_name(ws), LEGACY_HEADLESS_SUFFIX)


def _preset_spec(ws: Workspace) -> PresetSpec | None:
    if ws.inference is not None and ws.inference.preset is not None:
        return ws.inference.preset
    return ws.tuning.preset if ws.tuning is not None else None


def _adapter_parts(
    adapters: Sequence[AdapterMount], settings: WorkloadSettings
) -> tuple[list[JsonDict], list[JsonDict], list[JsonDict], list[str]]:
    """Volumes, init containers, serving-container mounts and ``--adapter`` flags."""
    volumes: list[JsonDict] = []
    init_containers: list[JsonDict] = []
    mounts: list[JsonDict] = []
    flags: list[str] = []
    for index, adapter in enumerate(adapters):
        # Adapter names may hold '.' or '_', which volume and container names may not.
        volume = f"adapter-{index}"
        path = f"{ADAPTER_DIR}/{adapter.name}"
        flags += ["--adapter", f"{adapter.name}:{adapter.strength}"]
        if adapter.image:
            volumes.append({"name": volume, "emptyDir": {}})
            pull_mounts = [*scratch_mounts(with_shm=False), {"name": volume, "mountPath": path}]
            args = ["pull-adapter", "--reference", adapter.image, "--dest", path]
            for secret_index, secret in enumerate(adapter.image_pull_secrets):
                secret_volume = f"adapter-{index}-secret-{secret_index}"
                secret_dir = f"{ADAPTER_SECRET_DIR}/{index}-{secret_index}"
                volumes.append({
                    "name": secret_volume,
                    "secret": {
                        "secretName": secret,
                        "items": [{"key": DOCKERCONFIG_KEY, "path": DOCKERCONFIG_KEY}],
                        "defaultMode": 0o440,
                    },
                })
                pull_mounts.append(
                    {"name": secret_volume, "mountPath": secret_dir, "readOnly": True}
                )
                args += ["--secret", f"{secret_dir}/{DOCKERCONFIG_KEY}"]
            init_containers.append(
                runtime_container(f"pull-adapter-{index}", settings, args=args, mounts=pull_mounts)
            )
        elif adapter.volume_source:
            volumes.append({"name": volume, **adapter.volume_source})
        else:
            raise ValueError(f"adapter {adapter.name!r} has neither an image nor a volume")
        mounts.append({"name": volume, "mountPath": path, "readOnly": True})
    return volumes, init_containers, mounts, flags


def _probe(path: str, port: int, *, period: int, failures: int, delay: int = 0) -> JsonDict:
    probe: JsonDict = {
        "httpGet": {"path": path, "port": port, "scheme": "HTTP"},
        "periodSeconds": period,
        "timeoutSeconds": 5,
        "successThreshold": 1,
        "failureThreshold": failures,
    }
    if delay:
        probe["initialDelaySeconds"] = delay
    return probe


def build_inference_workload(
    ws: Workspace,
    preset: ModelPreset,
    sku: GpuSku | None,
    *,
    settings: WorkloadSettings,
    revision: str,
    replicas: int,
    adapters: list[AdapterMount],
    registry_ca: str | None = None,
) -> JsonDict:
    """A Deployment of ``replicas`` pods, each serving ``preset`` on a node of its own with
    all of that node's GPUs (``sku``'s count; none asked for when the SKU is unknown).
    ``registry_ca``: the workspace's copy of the registry CA ConfigMap, mounted in the
    adapter pull init containers."""
    if replicas < 1:
        raise ValueError("replicas must be at least 1")
    name = workload_name(ws)
    volumes = scratch_volumes()
    init_containers: list[JsonDict] = []
    mounts = scratch_mounts()
    env = runtime_env(settings)

    if preset.name in IMAGE_WEIGHTS_PRESETS:
        model = preset.name
    else:
        model = MODEL_DIR
        volumes.append({"name": "model", "emptyDir": {}})
        mounts.append({"name": "model", "mountPath": MODEL_DIR, "readOnly": True})
        secret = model_access_secret(_preset_spec(ws))
        init_containers.append(fetch_model_init_container(preset.hf_id, secret, settings))

    adapter_volumes, adapter_inits, adapter_mounts, adapter_flags = _adapter_parts(
        adapters, settings
    )
    volumes += adapter_volumes
    init_containers += adapter_inits
    mounts += adapter_mounts

    config_map = ws.inference.config if ws.inference is not None else None
    if config_map:
        volumes.append({"name": "inference-config", "configMap": {"name": config_map}})
        mounts.append(
            {"name": "inference-config", "mountPath": INFERENCE_CONFIG_DIR, "readOnly": True}
        )

    port = settings.serving_port
    args = ["serve", "--model", model, "--port", str(port), "--adapter-dir", ADAPTER_DIR,
            *adapter_flags]
    server = runtime_container("inference", settings, args=args, mounts=mounts, env=env)
    server["ports"] = [{"name": "http", "containerPort": port, "protocol": "TCP"}]
    server["startupProbe"] = _probe("/health", port, period=STARTUP_PERIOD_SECONDS,
                                    failures=STARTUP_FAILURE_THRESHOLD, delay=10)
    server["readinessProbe"] = _probe("/health", port, period=5, failures=3, delay=5)
    server["livenessProbe"] = _probe("/health", port, period=10, failures=6, delay=15)
    resources = gpu_resources(sku)
    if resources:
        server["resources"] = resources

    pod_spec = pod_spec_base(ws)
    pod_spec["containers"] = [server]
    pod_spec["volumes"] = volumes
    if init_containers:
        pod_spec["initContainers"] = init_containers
    if registry_ca and adapter_inits:
        mount_registry_ca(pod_spec, adapter_inits, registry_ca)
    labels = component_labels(ws, COMPONENT)
    if replicas > 1:
        # One replica per node even where no GPU limit keeps them apart (unknown SKU).
        pod_spec.setdefault("affinity", {})["podAntiAffinity"] = {
            "requiredDuringSchedulingIgnoredDuringExecution": [
                {"labelSelector": {"matchLabels": labels},
                 "topologyKey": "kubernetes.io/hostname"}
            ]
        }

    metadata = object_metadata(ws, name, COMPONENT, revision)
    template = {
        "metadata": {"labels": dict(labels), "annotations": dict(metadata["annotations"])},
        "spec": pod_spec,
    }
    spec: JsonDict = {"selector": {"matchLabels": dict(labels)}, "template": template,
                      "replicas": replicas, "revisionHistoryLimit": 2,
                      "strategy": _strategy(replicas)}
    return {"apiVersion": "apps/v1", "kind": "Deployment", "metadata": metadata, "spec": spec}


def _strategy(replicas: int) -> JsonDict:
    """Recreate for one replica (its node holds one model: a surge pod would wait for a
    node that never comes); for several, replace one at a time without surge, so the
    others keep serving while each node changes model."""
    if replicas == 1:
        return {"type": "Recreate"}
    return {"type": "RollingUpdate", "rollingUpdate": {"maxSurge": 0, "maxUnavailable": 1}}


def build_service(ws: Workspace, *, settings: WorkloadSettings | None = None) -> JsonDict:
    """The ClusterIP Service clients call: ``http`` port 80 to the server's port 5000."""
    serving_port = (settings or WorkloadSettings()).serving_port
    return {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": object_metadata(ws, service_name(ws), COMPONENT),
        "spec": {
            "type": "ClusterIP",
            "selector": component_labels(ws, COMPONENT),
            "ports": [
                {"name": "http", "protocol": "TCP", "port": SERVICE_PORT,
                 "targetPort": serving_port},
            ],
        },
    }
