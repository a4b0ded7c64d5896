"""The model catalog and the GPU SKU table, with a typed loader and memory estimates."""

from presets.catalog import Catalog, GpuSku, ModelPreset, load_catalog
from presets.memory import TuningShape, inference_gib, tuning_estimate

__all__ = [
    "Catalog",
    "GpuSku",
    "ModelPreset",
    "TuningShape",
    "inference_gib",
    "load_catalog",
    "tuning_estimate",
]
