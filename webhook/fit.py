"""GPU fit: whether the workspace's instance type and count can hold its model.

Serving checks `count x total GPU memory of the SKU` against the inference estimate
(upstream's rule and message, so upstream's examples keep their decisions) and warns when a
replica does not fit the one GPU this serving runtime loads it onto. Tuning checks the
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
    inference_fits_one_gpu,
    inference_gib,
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


def inference_fit_errors(preset: ModelPreset, sku: GpuSku, count: int) -> list[FieldError]:
    need = inference_gib(preset)
    have = sku.total_gpu_memory_gib * count
    if have >= need:
        return []
    return [FieldError(
        _INSTANCE, "Invalid value",
        f"Insufficient total GPU memory: Instance type {sku.name} has a total of "
        f"{have:g}Gi, but preset {preset.name} requires at least {need:.0f}Gi",
    )]


def inference_fit_warnings(preset: ModelPreset, sku: GpuSku) -> list[str]:
    """A warning when one replica needs more than one GPU of the SKU: admitted by the
    total-memory rule, but the serving runtime loads the model onto a single GPU."""
    if inference_fits_one_gpu(preset, sku):
        return []
    return [
        (f"preset {preset.name} needs about {inference_gib(preset):.0f}Gi of GPU memory per "
        f"replica and the serving runtime loads it onto one GPU; {sku.name}'s GPUs have "
        f"{sku.gpu_memory_gib:g}Gi each, so the pod will run out of GPU memory")
    ]


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
