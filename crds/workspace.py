"""The Workspace resource (kaito.sh v1alpha1 and v1beta1): what to run and on which GPUs.

Upstream Kaito has no `.spec`: `resource`, `inference`, `tuning` and `status` sit at the top
level of the object, and both served versions have the same shape (v1beta1 is stored).
The attribute docstrings become the CRD's field descriptions (`kubectl explain`).
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from crds.meta import (
    ApiModel,
    Condition,
    FreeForm,
    LabelSelector,
    ObjectMeta,
    conditions_field,
)

GROUP = "kaito.sh"
KIND = "Workspace"
PLURAL = "workspaces"
VERSIONS = ("v1alpha1", "v1beta1")
STORAGE_VERSION = "v1beta1"

# Condition types the controller sets (WorkspaceReady is what older releases show).
CONDITION_RESOURCE_READY = "ResourceReady"
CONDITION_INFERENCE_READY = "InferenceReady"
CONDITION_JOB_STARTED = "JobStarted"
CONDITION_WORKSPACE_SUCCEEDED = "WorkspaceSucceeded"
CONDITION_WORKSPACE_READY = "WorkspaceReady"

TUNING_METHODS: tuple[str, ...] = ("lora", "qlora")


PartitionMode = Literal["mig", "accelerator"]


class PartitionSpec(ApiModel):
    """A share of a GPU for the workload, on bring-your-own nodes only (node auto-provisioning
    disabled, instanceType empty); inference only."""

    mode: PartitionMode
    """The partitioning technology: mig (NVIDIA Multi-Instance GPU slices) or accelerator
    (a count of accelerator partitions the nodes' device plugin advertises)."""
    profile: str | None = None
    """mig: the MIG profile, e.g. 1g.10gb or 3g.40gb (required); each pod gets one slice."""
    count: int | None = Field(default=None, ge=1)
    """accelerator: how many partitions each pod requests (default 1)."""


class ResourceSpec(ApiModel):
    """The GPU nodes the workload runs on."""

    instance_type: str | None = None
    """The GPU node SKU, e.g. Standard_NC6s_v3. With node auto-provisioning (the default) it
    must be a known SKU, and when empty the webhook picks the cheapest SKU whose GPU memory
    fits the preset. With bring-your-own nodes any value (or none) is accepted: GPU count
    and memory come from the nodes' nvidia.com/gpu.* labels."""
    count: int | None = Field(default=None, ge=0)
    """Deprecated: the number of nodes. When empty it is derived from the preset's GPU memory
    estimate; tuning always uses one node."""
    label_selector: LabelSelector
    """Selects the nodes the workload may use; provisioned nodes get these labels."""
    preferred_nodes: list[str] | None = None
    """Deprecated: names of existing nodes to use before provisioning new ones."""
    partition: PartitionSpec | None = None
    """GPU partitioning (MIG slices or accelerator partitions) on bring-your-own nodes;
    refused for tuning and immutable."""


class PresetOptions(ApiModel):
    """Options of a preset that uses a private image."""

    image: str | None = None
    """The image holding the model weights (private presets)."""
    image_pull_secrets: list[str] | None = None
    """Names of Secrets used to pull the image."""
    model_access_secret: str | None = None
    """Name of a Secret holding an access token for a gated model (HF_TOKEN)."""
    model_weights_pvc: str | None = Field(default=None, alias="modelWeightsPVC")
    """A PersistentVolumeClaim in the workspace's namespace holding the model weights, used
    instead of downloading them (inference only)."""
    model_weights_sub_path: str | None = None
    """A directory inside modelWeightsPVC where the weights are (needs modelWeightsPVC)."""


class PresetSpec(ApiModel):
    """A model from the preset catalog."""

    name: str = ""
    """The preset's name, e.g. phi-3-mini-128k-instruct."""
    access_mode: Literal["public", "private"] | None = None
    """Whether the model image is public or private."""
    preset_options: PresetOptions | None = None
    """Options for private presets."""


class AdapterSource(ApiModel):
    """Where an adapter comes from."""

    name: str = ""
    """The adapter's name; it is mounted under /mnt/adapter/<name>."""
    image: str | None = None
    """An OCI image (or artifact) holding the adapter."""
    image_pull_secrets: list[str] | None = None
    """Names of Secrets used to pull the adapter image."""
    volume_source: FreeForm | None = None
    """A Kubernetes VolumeSource holding the adapter."""


class AdapterSpec(ApiModel):
    """A LoRA adapter served on top of the base model."""

    source: AdapterSource | None = None
    """Where the adapter comes from."""
    strength: str | None = None
    """How strongly the adapter applies, a decimal string in [0, 1]; defaults to "1.0"."""


class InferenceSpec(ApiModel):
    """Serving a model: a preset or a custom pod template."""

    preset: PresetSpec | None = None
    """The preset model to serve (exclusive with template)."""
    template: FreeForm | None = None
    """A custom PodTemplateSpec to run instead of a preset (exclusive with preset)."""
    config: str | None = None
    """Name of a ConfigMap with the key inference_config.yaml (runtime parameters)."""
    adapters: list[AdapterSpec] | None = None
    """LoRA adapters to load on top of the preset (at most 10)."""


class DataSource(ApiModel):
    """Where the tuning data comes from: exactly one of urls, image or volumeSource."""

    name: str | None = None
    """A name for the data set (immutable)."""
    urls: list[str] | None = None
    """http(s) URLs of data files (parquet, json/jsonl, csv, arrow) downloaded into
    /mnt/data."""
    image: str | None = None
    """An image whose /data directory holds the data files."""
    image_pull_secrets: list[str] | None = None
    """Names of Secrets used to pull the data image."""
    volume_source: FreeForm | None = None
    """A Kubernetes VolumeSource holding the data files."""


class DataDestination(ApiModel):
    """Where the trained adapter goes: exactly one of image or volumeSource."""

    image: str | None = None
    """The image reference the adapter is pushed to as an OCI artifact."""
    image_push_secret: str | None = None
    """Name of a docker-registry Secret used to push the image (required with image)."""
    volume_source: FreeForm | None = None
    """A Kubernetes VolumeSource the adapter is written to."""


class TuningSpec(ApiModel):
    """Fine-tuning a preset model with LoRA or QLoRA."""

    preset: PresetSpec | None = None
    """The preset model to tune."""
    method: str | None = None
    """The tuning method: lora or qlora."""
    config: str | None = None
    """Name of a ConfigMap with the key training_config.yaml; the method's defaults are
    used when empty."""
    input: DataSource | None = None
    """Where the training data comes from."""
    output: DataDestination | None = None
    """Where the trained adapter is written."""


class EvaluationResult(ApiModel):
    """Loss on the held-out split, as the tuning runtime measured it."""

    loss: float | None = None
    """Mean cross-entropy per target token."""
    perplexity: float | None = None
    """exp(loss)."""


class TuningProgress(ApiModel):
    """Where the tuning Job is (not in upstream Kaito): read by the controller from the
    tuning pod's /progress endpoint at a bounded rate; the pod itself never writes to the
    API."""

    phase: str | None = None
    """The runtime's phase: starting, validating, loading, evaluating, training, saving,
    pushing, succeeded or failed."""
    step: int | None = None
    """Optimizer steps done."""
    total_steps: int | None = None
    """Optimizer steps planned."""
    progress: str | None = None
    """step/totalSteps as text, for `kubectl get` (e.g. "120/600")."""
    loss: str | None = None
    """Training loss of the latest step, as text (e.g. "1.234")."""
    tokens_per_second: str | None = None
    """Recent training throughput, as text."""
    eta_seconds: int | None = None
    """Estimated seconds until training finishes."""
    dtype: str | None = None
    """The precision training computes in (chosen from the GPU/CPU unless configured)."""
    evaluation_before: EvaluationResult | None = None
    """Held-out loss before training."""
    evaluation_after: EvaluationResult | None = None
    """Held-out loss after training."""
    updated_at: str | None = None
    """When the controller last read the pod's progress (RFC 3339)."""


class Metric(ApiModel):
    """One benchmark measurement."""

    description: str = ""
    """The benchmark and load pattern, e.g. stress/high-concurrency."""
    value: str = ""
    """The measured value, as text."""
    unit: str | None = None
    """The value's unit, e.g. tokens/min."""
    config: dict[str, str] | None = None
    """The benchmark's parameters."""


class Performance(ApiModel):
    """Metrics of a benchmark run after the model loaded (upstream v1beta1)."""

    metrics: dict[str, Metric] | None = None
    """Metric name (e.g. peakTokensPerMinute) to its measurement."""


class WorkspaceStatus(ApiModel):
    """What the controller observed."""

    worker_nodes: list[str] | None = None
    """Names of the nodes the workload runs on."""
    conditions: list[Condition] | None = conditions_field(
        "Conditions: ResourceReady, InferenceReady, JobStarted, WorkspaceSucceeded."
    )
    state: str | None = None
    """A one-word summary of the workspace's phase."""
    target_node_count: int | None = None
    """How many nodes the workspace needs."""
    tuning: TuningProgress | None = None
    """Progress of the tuning Job (tuning workspaces only)."""
    performance: Performance | None = None
    """Benchmark metrics of the served model (upstream v1beta1; not measured here yet)."""


class Workspace(ApiModel):
    """Workspace runs a preset model for inference or fine-tunes it (kaito.sh)."""

    api_version: str = f"{GROUP}/{STORAGE_VERSION}"
    """APIVersion defines the versioned schema of this representation of an object."""
    kind: str = KIND
    """Kind is a string value representing the REST resource this object represents."""
    metadata: ObjectMeta = Field(default_factory=ObjectMeta)
    """Standard object metadata."""
    resource: ResourceSpec | None = None
    """The GPU nodes the workspace runs on."""
    inference: InferenceSpec | None = None
    """Serving: exclusive with tuning."""
    tuning: TuningSpec | None = None
    """Fine-tuning: exclusive with inference."""
    status: WorkspaceStatus | None = None
    """The observed state of the workspace."""

    def to_dict(self) -> dict[str, object]:
        """The object as the API server would store it (camelCase, no nulls)."""
        return self.model_dump(by_alias=True, exclude_none=True, mode="json")
