"""The AKS agent pool for a claim (pure): its name and its body.

A pool name must be lower-case letters and digits, start with a letter and, on Linux,
be at most 12 characters; claim names are longer, so the name is `kt` plus 10 hex of a
digest of the claim's name: deterministic (a restarted provisioner finds the pool it
started) and unique enough (40 bits) across the claims of one cluster.
"""

from __future__ import annotations

import hashlib
from typing import Any

from controller.provisioning.claims import Claim, node_labels_for

# Label domains AKS owns (it sets the instance type and OS labels itself).
_RESERVED_DOMAINS = ("kubernetes.io", "k8s.io", "kubernetes.azure.com")
CLAIM_TAG = "kaito.sh/nodeclaim"


def agent_pool_name(claim_name: str) -> str:
    digest = hashlib.sha256(claim_name.encode()).hexdigest()
    return "kt" + digest[:10]


def _allowed_label(key: str) -> bool:
    domain = key.split("/", 1)[0] if "/" in key else ""
    return not any(domain == d or domain.endswith("." + d) for d in _RESERVED_DOMAINS)


def taint_string(key: str, value: str | None, effect: str) -> str:
    return f"{key}={value}:{effect}" if value else f"{key}:{effect}"


def build_agent_pool(
    claim: Claim, vm_size: str, *, os_sku: str = "Ubuntu", os_disk_size_gb: int | None = None,
) -> dict[str, Any]:
    """One node of `vm_size` with the claim's labels and taints and the GPU driver
    installed by AKS (the GPU node image settings)."""
    properties: dict[str, Any] = {
        "count": 1,
        "vmSize": vm_size,
        "mode": "User",
        "type": "VirtualMachineScaleSets",
        "osType": "Linux",
        "osSKU": os_sku,
        "nodeLabels": {k: v for k, v in sorted(node_labels_for(claim).items())
                       if _allowed_label(k)},
        "nodeTaints": [taint_string(t.key, t.value, t.effect) for t in claim.taints],
        "gpuProfile": {"driver": "Install"},
        "tags": {CLAIM_TAG: claim.name},
    }
    if os_disk_size_gb is not None:
        properties["osDiskSizeGB"] = os_disk_size_gb
    return {"properties": properties}
