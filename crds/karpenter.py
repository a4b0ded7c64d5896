"""The Karpenter-core objects the controller creates to get GPU nodes: NodeClaim and Machine.

`NodeClaim` (karpenter.sh/v1) is what current node provisioners (Karpenter, the AKS
gpu-provisioner) act on; `Machine` (karpenter.sh/v1alpha5) is its predecessor, the one the
seed document names. Only the subset Kaito reads and writes is modelled; the CRDs generated
from these models let tests run where no Karpenter is installed.
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from crds.meta import ApiModel, Condition, FreeForm, ObjectMeta, conditions_field

GROUP = "karpenter.sh"
NODECLAIM_VERSION = "v1"
MACHINE_VERSION = "v1alpha5"

# Labels and taints every Kaito-made node carries.
NODEPOOL_LABEL = "karpenter.sh/nodepool"
NODEPOOL_NAME = "kaito"
WORKSPACE_LABEL = "kaito.sh/workspace"
WORKSPACE_NAMESPACE_LABEL = "kaito.sh/workspacenamespace"
# A node of the provisioner's pool backend: lent to a claim and given back, never deleted.
POOL_LABEL = "kaito.sh/pool"
INSTANCE_TYPE_LABEL = "node.kubernetes.io/instance-type"
GPU_TAINT_KEY = "sku"
GPU_TAINT_VALUE = "gpu"

Quantity = int | str


class Taint(ApiModel):
    """A node taint."""

    key: str
    """The taint key."""
    value: str | None = None
    """The taint value."""
    effect: Literal["NoSchedule", "PreferNoSchedule", "NoExecute"]
    """The effect on pods that do not tolerate the taint."""


class NodeSelectorRequirement(ApiModel):
    """A node selector requirement, optionally with a minimum number of values."""

    key: str
    """The label key the requirement applies to."""
    operator: Literal["In", "NotIn", "Exists", "DoesNotExist", "Gt", "Lt"]
    """The relation between the key and the values."""
    values: list[str] | None = None
    """The values of the requirement."""
    min_values: int | None = Field(default=None, ge=1)
    """The minimum number of values the provisioner must consider (NodeClaim only)."""


class ResourceRequirements(ApiModel):
    """Resources the node must provide."""

    requests: dict[str, Quantity] | None = None
    """Minimum resources, e.g. {"nvidia.com/gpu": 1}."""


class NodeClassReference(ApiModel):
    """The provider-specific node class of a NodeClaim."""

    group: str
    """API group of the node class."""
    kind: str
    """Kind of the node class."""
    name: str
    """Name of the node class."""


class NodeClaimSpec(ApiModel):
    """What node to launch."""

    taints: list[Taint] | None = None
    """Taints the node is created with."""
    startup_taints: list[Taint] | None = None
    """Taints the node starts with and something else removes."""
    requirements: list[NodeSelectorRequirement]
    """Requirements the node must satisfy, e.g. node.kubernetes.io/instance-type In [...]."""
    resources: ResourceRequirements | None = None
    """Resources the node must provide."""
    node_class_ref: NodeClassReference | None = None
    """The provider-specific node class."""
    expire_after: str | None = None
    """How long the node may live before it is replaced ("Never" to disable)."""
    termination_grace_period: str | None = None
    """How long draining may take before the node is forcibly removed."""


class NodeClaimStatus(ApiModel):
    """What the provisioner launched."""

    node_name: str | None = None
    """Name of the node that registered for this claim."""
    provider_id: str | None = Field(default=None, alias="providerID")
    """The cloud provider's id of the instance."""
    image_id: str | None = Field(default=None, alias="imageID")
    """The image the instance runs."""
    capacity: dict[str, Quantity] | None = None
    """The node's resource capacity."""
    allocatable: dict[str, Quantity] | None = None
    """The node's allocatable resources."""
    conditions: list[Condition] | None = conditions_field(
        "Conditions: Launched, Registered, Initialized, Ready."
    )


class NodeClaim(ApiModel):
    """NodeClaim asks a node provisioner for one node (karpenter.sh/v1)."""

    api_version: str = f"{GROUP}/{NODECLAIM_VERSION}"
    """APIVersion defines the versioned schema of this representation of an object."""
    kind: str = "NodeClaim"
    """Kind is a string value representing the REST resource this object represents."""
    metadata: ObjectMeta = Field(default_factory=ObjectMeta)
    """Standard object metadata."""
    spec: NodeClaimSpec
    """The desired node."""
    status: NodeClaimStatus | None = None
    """The launched node."""


class MachineTemplateRef(ApiModel):
    """The provider-specific template of a Machine."""

    api_version: str | None = None
    """API version of the template."""
    kind: str | None = None
    """Kind of the template."""
    name: str
    """Name of the template."""


class MachineSpec(ApiModel):
    """What machine to launch."""

    taints: list[Taint] | None = None
    """Taints the node is created with."""
    startup_taints: list[Taint] | None = None
    """Taints the node starts with and something else removes."""
    requirements: list[NodeSelectorRequirement] | None = None
    """Requirements the node must satisfy."""
    resources: ResourceRequirements | None = None
    """Resources the node must provide."""
    kubelet: FreeForm | None = None
    """Kubelet configuration overrides."""
    machine_template_ref: MachineTemplateRef | None = None
    """The provider-specific machine template."""


class MachineStatus(ApiModel):
    """What the provisioner launched."""

    node_name: str | None = None
    """Name of the node that registered for this machine."""
    provider_id: str | None = Field(default=None, alias="providerID")
    """The cloud provider's id of the instance."""
    capacity: dict[str, Quantity] | None = None
    """The node's resource capacity."""
    allocatable: dict[str, Quantity] | None = None
    """The node's allocatable resources."""
    conditions: list[FreeForm] | None = None
    """Conditions of the machine (knative-style, with severity)."""


class Machine(ApiModel):
    """Machine is the legacy (karpenter.sh/v1alpha5) request for one node."""

    api_version: str = f"{GROUP}/{MACHINE_VERSION}"
    """APIVersion defines the versioned schema of this representation of an object."""
    kind: str = "Machine"
    """Kind is a string value representing the REST resource this object represents."""
    metadata: ObjectMeta = Field(default_factory=ObjectMeta)
    """Standard object metadata."""
    spec: MachineSpec
    """The desired machine."""
    status: MachineStatus | None = None
    """The launched machine."""
