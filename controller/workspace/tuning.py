"""The tuning Job of a Workspace and its default ``training_config.yaml`` ConfigMap (pure).

One pod, ``restartPolicy: Never``: init containers put the data (``kaito fetch`` for URLs,
the data image's own ``cp`` for an image) and, unless the weights ship in the runtime
image, the base model (``kaito fetch-model``) into emptyDirs; the ``tuner`` container runs
``kaito tune`` and pushes the adapter (``--push-to``) or writes it to the output volume.
Exit code 2 (bad input, refused URL) fails the Job at once; other failures are retried up
to ``backoffLimit``.
"""

from __future__ import annotations

from typing import Any

import yaml

from controller.workspace.workload import (
    MODEL_DIR,
    JsonDict,
    WorkloadSettings,
    bounded_name,
    container_security_context,
    fetch_model_init_container,
    gpu_resources,
    image_pull_secret_refs,
    model_access_secret,
    object_metadata,
    pod_spec_base,
    runtime_container,
    scratch_mounts,
    scratch_volumes,
    workspace_name,
    workspace_namespace,
)
from crds.workspace import TuningSpec, Workspace
from presets.catalog import IMAGE_WEIGHTS_PRESETS, GpuSku, ModelPreset

COMPONENT = "tuning"
CONFIG_KEY = "training_config.yaml"
CONFIG_DIR = "/mnt/config"
DATA_DIR = "/mnt/data"
RESULTS_DIR = "/mnt/results"
PUSH_SECRET_DIR = "/mnt/push-secret"
PUSH_SECRET_KEY = ".dockerconfigjson"
DATA_IMAGE_DIR = "/data"
TUNER_CONTAINER = "tuner"  # its termination message is the run's final progress (JSON)
EXIT_BAD_INPUT = 2  # runtime.tuning and runtime.fetch: retrying cannot help


def _tuning_spec(ws: Workspace) -> TuningSpec:
    if ws.tuning is None:
        raise ValueError("the workspace has no tuning section")
    return ws.tuning


def _data_sources(
    ws: Workspace, settings: WorkloadSettings
) -> tuple[list[JsonDict], list[JsonDict], list[str]]:
    """Volumes, init containers and image pull secrets that put the data in /mnt/data."""
    source = _tuning_spec(ws).input
    if source is not None and source.volume_source:
        return [{"name": "data", **source.volume_source}], [], []
    volumes: list[JsonDict] = [{"name": "data", "emptyDir": {}}]
    data_mount = {"name": "data", "mountPath": DATA_DIR}
    if source is not None and source.image:
        copy = {
            "name": "copy-data",
            "image": source.image,
            "imagePullPolicy": settings.image_pull_policy,
            # The data image's own cp: it may not have our runtime, only its files.
            "command": ["cp", "-R", f"{DATA_IMAGE_DIR}/.", f"{DATA_DIR}/"],
            "volumeMounts": [data_mount],
            "securityContext": container_security_context(),
            "terminationMessagePolicy": "FallbackToLogsOnError",
        }
        return volumes, [copy], list(source.image_pull_secrets or [])
    urls = list(source.urls or []) if source is not None else []
    if not urls:
        return volumes, [], []
    fetch = runtime_container(
        "fetch-data",
        settings,
        args=["fetch", "--dest", DATA_DIR, *urls],
        mounts=[*scratch_mounts(with_shm=False), data_mount],
    )
    return volumes, [fetch], []


def build_tuning_job(
    ws: Workspace,
    preset: ModelPreset,
    sku: GpuSku | None,
    *,
    settings: WorkloadSettings,
    revision: str,
    config_map_name: str,
) -> JsonDict:
    """The batch/v1 Job that tunes ``preset`` on the workspace's data."""
    tuning = _tuning_spec(ws)
    volumes, init_containers, pull_secrets = _data_sources(ws, settings)
    volumes += scratch_volumes()
    volumes.append({
        "name": "config",
        "configMap": {"name": config_map_name, "items": [{"key": CONFIG_KEY, "path": CONFIG_KEY}]},
    })
    mounts: list[JsonDict] = [
        {"name": "config", "mountPath": CONFIG_DIR, "readOnly": True},
        {"name": "data", "mountPath": DATA_DIR, "readOnly": True},
        {"name": "results", "mountPath": RESULTS_DIR},
        *scratch_mounts(),
    ]
    args = [
        "tune",
        "--config", f"{CONFIG_DIR}/{CONFIG_KEY}",
        "--data-dir", DATA_DIR,
        "--output-dir", RESULTS_DIR,
    ]

    if preset.name in IMAGE_WEIGHTS_PRESETS:
        args += ["--base-model", preset.name]
    else:
        volumes.append({"name": "model", "emptyDir": {}})
        mounts.append({"name": "model", "mountPath": MODEL_DIR, "readOnly": True})
        secret = model_access_secret(tuning.preset)
        init_containers.append(fetch_model_init_container(preset.hf_id, secret, settings))
        args += ["--base-model", MODEL_DIR]
    if tuning.method:
        args += ["--method", tuning.method]
    args += ["--progress-port", str(settings.progress_port)]

    output = tuning.output
    if output is not None and output.volume_source:
        volumes.append({"name": "results", **output.volume_source})
    else:
        volumes.append({"name": "results", "emptyDir": {}})
    if output is not None and output.image:
        args += ["--push-to", output.image]
        if output.image_push_secret:
            volumes.append({
                "name": "push-secret",
                "secret": {
                    "secretName": output.image_push_secret,
                    "items": [{"key": PUSH_SECRET_KEY, "path": PUSH_SECRET_KEY}],
                    "defaultMode": 0o440,
                    # A missing Secret must not keep the pod from starting: the data
                    # fetch and the training run, and the push then fails naming it.
                    "optional": True,
                },
            })
            mounts.append({"name": "push-secret", "mountPath": PUSH_SECRET_DIR, "readOnly": True})
            args += ["--push-secret", f"{PUSH_SECRET_DIR}/{PUSH_SECRET_KEY}"]

    tuner = runtime_container(TUNER_CONTAINER, settings, args=args, mounts=mounts)
    tuner["ports"] = [
        {"name": "progress", "containerPort": settings.progress_port, "protocol": "TCP"}
    ]
    resources = gpu_resources(sku)
    if resources:
        tuner["resources"] = resources

    pod_spec = pod_spec_base(ws)
    pod_spec.update({
        "restartPolicy": "Never",
        "initContainers": init_containers,
        "containers": [tuner],
        "volumes": volumes,
    })
    if not init_containers:
        del pod_spec["initContainers"]
    secrets = image_pull_secret_refs(pull_secrets)
    if secrets:
        pod_spec["imagePullSecrets"] = secrets

    metadata = object_metadata(ws, workspace_name(ws), COMPONENT, revision)
    return {
        "apiVersion": "batch/v1",
        "kind": "Job",
        "metadata": metadata,
        "spec": {
            "backoffLimit": settings.tuning_backoff_limit,
            "podFailurePolicy": {
                "rules": [
                    {
                        "action": "FailJob",
                        "onExitCodes": {"operator": "In", "values": [EXIT_BAD_INPUT]},
                    },
                    # A preempted or evicted pod is not the workload's fault.
                    {"action": "Ignore", "onPodConditions": [{"type": "DisruptionTarget"}]},
                ]
            },
            "template": {
                "metadata": {
                    "labels": dict(metadata["labels"]),
                    "annotations": dict(metadata["annotations"]),
                },
                "spec": pod_spec,
            },
        },
    }


def tuning_config_name(ws: Workspace) -> str:
    """Name of the default config ConfigMap made for a workspace without tuning.config."""
    return bounded_name(workspace_name(ws), "-tuning-config")


def default_training_config(preset: ModelPreset, method: str) -> dict[str, Any]:
    """Upstream's lora-params-template / qlora-params-template, with two changes: dtypes
    are ``auto`` (the runtime picks what the GPU computes: V100 and T4 have no bfloat16)
    and LoraConfig targets the preset's linear layers."""
    if method not in ("lora", "qlora"):
        raise ValueError(f"unknown tuning method {method!r}")
    quantization: dict[str, Any] = {"load_in_4bit": False}
    if method == "qlora":
        quantization = {
            "load_in_4bit": True,
            "bnb_4bit_quant_type": "nf4",
            "bnb_4bit_compute_dtype": "auto",
            "bnb_4bit_use_double_quant": True,
        }
    lora: dict[str, Any] = {"r": 8, "lora_alpha": 8, "lora_dropout": 0.0}
    if preset.lora_target_modules:
        lora["target_modules"] = list(preset.lora_target_modules)
    return {
        "training_config": {
            "ModelConfig": {"torch_dtype": "auto", "local_files_only": True, "device_map": "auto"},
            "QuantizationConfig": quantization,
            "LoraConfig": lora,
            "TrainingArguments": {
                "output_dir": RESULTS_DIR,
                "ddp_find_unused_parameters": False,
                "save_strategy": "no",
                "num_train_epochs": 3,
                "per_device_train_batch_size": 1,
            },
            # Upstream writes mlm: true, which a causal LM cannot use; the runtime
            # always trains causally, so say what actually happens.
            "DataCollator": {"mlm": False},
            "DatasetConfig": {"shuffle_dataset": True, "train_test_split": 1},
        }
    }


def build_default_tuning_config(
    ws: Workspace, preset: ModelPreset, method: str, namespace: str
) -> JsonDict:
    """The ConfigMap ``<ws>-tuning-config`` holding the method's default training config,
    used when the workspace names no ``tuning.config``."""
    metadata = object_metadata(ws, tuning_config_name(ws), COMPONENT)
    metadata["namespace"] = namespace
    if namespace != workspace_namespace(ws):  # owners must live in the same namespace
        del metadata["ownerReferences"]
    text = yaml.safe_dump(default_training_config(preset, method), sort_keys=False)
    return {"apiVersion": "v1", "kind": "ConfigMap", "metadata": metadata,
            "data": {CONFIG_KEY: text}}
