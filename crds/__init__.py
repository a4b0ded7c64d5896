"""The Workspace API (group kaito.sh) and the Karpenter-core objects, as pydantic models.

Beside them, the contracts every component shares and may import (crds imports nothing of
ours): address rules (``addresses``), the tuning-config schema (``tuning_config``) and
the log record layout (``logs``).
"""

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
