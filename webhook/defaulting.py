"""Defaulting: what the mutating webhook fills in, never overriding what the user wrote.

- `resource.instanceType`: the cheapest SKU whose GPU memory fits the preset for serving,
  or for the tuning method, batch and sequence length.
- `resource.count`: 1 (for serving: one replica; a model is served on one node, never
  across nodes, and each replica has a node of its own).
- `inference.adapters[*].strength`: "1.0".
On update, values the webhook filled earlier are carried over from the old object, so a
`kubectl replace` without them does not trip the immutability rules.
"""

from __future__ import annotations

from crds.workspace import Workspace
from presets.catalog import Catalog, ModelPreset
from presets.memory import (
    cheapest_inference_sku,
    cheapest_tuning_sku,
    tuning_estimate,
)
from webhook.fit import tuning_plan
from webhook.tuning_config import TrainingConfig
from webhook.validation import resolve_preset

DEFAULT_ADAPTER_STRENGTH = "1.0"


def default(
    ws: Workspace,
    presets: Catalog,
    *,
    old: Workspace | None = None,
    tuning_config: TrainingConfig | None = None,
    node_provisioning: bool = True,
    best_effort: ModelPreset | None = None,
) -> Workspace:
    """A copy of the workspace with defaults filled in; the input is left unchanged (parts
    defaulting does not touch are shared with it: treat both as read-only). With
    bring-your-own nodes (``node_provisioning`` False) or a GPU partition no instance type
    is chosen: the nodes are the user's, and the controller reads their GPUs from their
    labels."""
    if ws.resource is None:
        return ws.model_copy()
    # Copy only what defaulting may change (a deep copy of the whole object was a third of
    # a mutating review's time); the rest is shared with the input, which stays unchanged.
    resource = ws.resource.model_copy()
    ws = ws.model_copy(update={"resource": resource})
    if ws.inference is not None and ws.inference.adapters:
        ws.inference = ws.inference.model_copy(
            update={"adapters": [adapter.model_copy() for adapter in ws.inference.adapters]})
    if old is not None and old.resource is not None:
        if resource.instance_type is None:
            resource.instance_type = old.resource.instance_type
        if resource.count is None:
            resource.count = old.resource.count

    may_choose_sku = node_provisioning and resource.partition is None
    if ws.tuning is not None and ws.inference is None:
        plan = tuning_plan(ws, presets, tuning_config)
        if not resource.instance_type and plan is not None and may_choose_sku:
            sku = cheapest_tuning_sku(presets, tuning_estimate(plan.preset, plan.shape))
            if sku is not None:
                resource.instance_type = sku.name
        if resource.count is None:
            resource.count = 1

    if ws.inference is not None and ws.tuning is None:
        preset_spec = ws.inference.preset
        preset = (resolve_preset(presets, preset_spec.name, best_effort)
                  if preset_spec is not None else None)
        if preset is not None and ws.inference.template is None:
            if not resource.instance_type and may_choose_sku:
                resource.instance_type = cheapest_inference_sku(presets, preset).name
            sku = presets.sku(resource.instance_type or "")
            if resource.count is None and sku is not None:
                resource.count = 1  # one replica; admission checks it fits one node
        elif resource.count is None and ws.inference.template is not None:
            resource.count = 1
        for adapter in ws.inference.adapters or []:
            if adapter.strength is None:
                adapter.strength = DEFAULT_ADAPTER_STRENGTH
    return ws


def deprecation_warnings(ws: Workspace) -> list[str]:
    """Warnings for deprecated fields the user set (checked before defaulting)."""
    warnings: list[str] = []
    if ws.resource is not None:
        if ws.resource.count is not None:
            warnings.append(
                "resource.count is deprecated: for serving it is the number of replicas, "
                "each serving the whole model on a node of its own"
            )
        if ws.resource.preferred_nodes:
            warnings.append(
                "resource.preferredNodes is deprecated: select nodes with "
                "resource.labelSelector instead"
            )
    return warnings
