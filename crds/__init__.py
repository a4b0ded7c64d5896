"""The Workspace API (group kaito.sh) and the Karpenter-core objects, as pydantic models."""

from crds.karpenter import Machine, NodeClaim
from crds.meta import Condition, LabelSelector, ObjectMeta, find_condition, set_condition
from crds.workspace import Workspace

__all__ = [
    "Condition",
    "LabelSelector",
    "Machine",
    "NodeClaim",
    "ObjectMeta",
    "Workspace",
    "find_condition",
    "set_condition",
]
