"""GPU fit: whether the workspace's instance type and count can hold its model.

Serving checks the inference estimate against ONE node of the SKU (presets.memory's rule,
which the controller applies to bring-your-own nodes too): the serving engine shards a
model over its node's GPUs but never across nodes, and ``resource.count`` is the number of
replicas, so upstream's ``count x node`` total would admit a model nothing here can serve.
The refusal keeps upstream's "Insufficient total GPU memory" prefix and names the smallest
SKU that serves the preset on one node. Tuning checks the
tuning estimate for the method, batch and sequence length against one GPU of the SKU (the
tuning runtime computes on one GPU; a SKU's GPUs do not pool their memory), and names the
smallest SKU that fits.
"""

from __future__ import annotations

from dataclasses import dataclass

from crds.workspace import Workspace
from presets.catalog import Catalog, GpuSku, ModelPreset
from presets.memory import (
    TuningShape,
    inference_fit_problem,
    smallest_tuning_sku,
    tuning_estimate,
    tuning_fits,
)
from webhook.errors import FieldError
from webhook.tuning_config import TrainingConfig, config_shape, default_shape

_INSTANCE = "resource.instanceType"


@dataclass(frozen=True)
class TuningPlan:
    """The tuning run the workspace describes, when its preset and method are valid."""

    preset: ModelPreset
    shape: TuningShape


def tuning_plan(
    ws: Workspace, catalog: Catalog, config: TrainingConfig | None
) -> TuningPlan | None:
    """The preset and memory knobs of a tuning workspace, or None if they are not valid."""
    tuning = ws.tuning
    if tuning is None or tuning.preset is None or tuning.method not in ("lora", "qlora"):
        return None
    preset = catalog.preset(tuning.preset.name)
    if preset is None or not preset.tuning.supports(tuning.method):
        return None
    shape = (config_shape(config, tuning.method, preset) if config is not None
             else default_shape(tuning.method, preset))
    return TuningPlan(preset, shape)


def inference_fit_errors(preset: ModelPreset, sku: GpuSku, catalog: Catalog) -> list[FieldError]:
    """Refuse a preset that one node of the SKU cannot serve (whatever ``count`` says)."""
    problem = inference_fit_problem(preset, sku, catalog)
    if problem is None:
        return []
    return [FieldError(_INSTANCE, "Invalid value", f"Insufficient total GPU memory: {problem}")]


def tuning_fit_errors(plan: TuningPlan, sku: GpuSku, catalog: Catalog) -> list[FieldError]:
    estimate = tuning_estimate(plan.preset, plan.shape)
    if tuning_fits(estimate, sku):
        return []
    smallest = smallest_tuning_sku(catalog, estimate)
    hint = (f"the smallest instance type that fits is {smallest.name} "
            f"({smallest.gpu_count}x {smallest.gpu_model} {smallest.gpu_memory_gib:g} GiB)"
            if smallest is not None else "no known instance type fits")
    shape = plan.shape
    have = f"{sku.gpu_memory_gib:g} GiB"
    if sku.gpu_count > 1:
        have = (f"{have} per GPU ({sku.gpu_count} GPUs; per-GPU memory is what counts, not "
                f"the {sku.total_gpu_memory_gib:g} GiB total: tuning runs on a single GPU)")
    return [FieldError(
        _INSTANCE, "Invalid value",
        f"{shape.method} of {plan.preset.name} at batch {shape.batch_size}, seq {shape.seq_len} "
        f"needs about {estimate.per_gpu_gib(sku.gpu_count):.1f} GiB per GPU; {sku.name} has "
        f"{have}; {hint}",
    )]
