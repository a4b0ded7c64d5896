"""Typed loader over the preset catalog (models.yaml) and the GPU SKU table (skus.yaml).

The data files are the source of truth; this module only parses them once into frozen
models and answers look-ups. Nothing here does I/O after the first load.
"""

from __future__ import annotations

import functools
from pathlib import Path
from typing import Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, model_validator

_HERE = Path(__file__).resolve().parent
MODELS_FILE = _HERE / "models.yaml"
SKUS_FILE = _HERE / "skus.yaml"

GIB = 1024**3

# Presets whose weights ship inside the runtime image (runtime/base_model.py): their pods
# name the preset instead of downloading weights into /mnt/model.
IMAGE_WEIGHTS_PRESETS: frozenset[str] = frozenset({"smollm2-135m-instruct"})


class _Frozen(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class TuningSupport(_Frozen):
    """Which tuning methods a preset supports."""

    lora: bool = False
    qlora: bool = False

    def supports(self, method: str) -> bool:
        return method in ("lora", "qlora") and bool(getattr(self, method))


class ModelPreset(_Frozen):
    """One model: where it comes from and the numbers the memory estimate needs."""

    name: str
    hf_id: str
    family: str
    params_billion: float = Field(gt=0)
    weights_gib: float = Field(gt=0)
    """Size of the published bf16/fp16 weights."""
    context_length: int = Field(gt=0)
    layers: int = Field(gt=0)
    hidden_size: int = Field(gt=0)
    intermediate_size: int = Field(gt=0)
    gated_mlp: bool = True
    """SwiGLU-style MLP (gate, up, down) rather than two matrices (up, down)."""
    attention_heads: int = Field(gt=0)
    kv_heads: int = Field(gt=0)
    head_dim: int = Field(gt=0)
    vocab_size: int = Field(gt=0)
    tie_word_embeddings: bool
    dtype: Literal["bfloat16", "float16", "float32"] = "bfloat16"
    gated: bool = False
    """Gated on Hugging Face: serving needs a model access secret."""
    tuning: TuningSupport = TuningSupport()
    lora_target_modules: tuple[str, ...] = ()
    inference_published_gib: float | None = None
    """Upstream Kaito's GPU memory figure for serving (kept for comparison)."""
    tuning_published_gib: float | None = None
    """Upstream Kaito's GPU memory figure for tuning (kept for comparison)."""

    @property
    def params(self) -> int:
        return int(self.params_billion * 1e9)

    @property
    def kv_dim(self) -> int:
        return self.kv_heads * self.head_dim

    @property
    def embedding_params(self) -> int:
        """Token embedding plus, when untied, the LM head."""
        return self.vocab_size * self.hidden_size * (1 if self.tie_word_embeddings else 2)


class GpuSku(_Frozen):
    """A GPU VM size."""

    name: str
    gpu_count: int = Field(gt=0)
    gpu_model: str
    gpu_memory_gib: float = Field(gt=0)
    """Memory of one GPU."""
    bf16: bool
    """Whether the GPU computes in bfloat16."""
    price_per_hour_usd: float = Field(gt=0)

    @property
    def total_gpu_memory_gib(self) -> float:
        return self.gpu_count * self.gpu_memory_gib


class Catalog(_Frozen):
    """All presets and SKUs, with look-ups."""

    models: dict[str, ModelPreset]
    skus: dict[str, GpuSku]

    @model_validator(mode="after")
    def _names_match_keys(self) -> Catalog:
        for key, model in self.models.items():
            if model.name != key:
                raise ValueError(f"preset {key!r} has name {model.name!r}")
        return self

    def preset(self, name: str) -> ModelPreset | None:
        return self.models.get(name)

    def sku(self, name: str) -> GpuSku | None:
        """The SKU by name; Azure VM size names compare case-insensitively."""
        found = self.skus.get(name)
        if found is not None:
            return found
        lowered = name.lower()
        return next((s for s in self.skus.values() if s.name.lower() == lowered), None)

    def skus_by_price(self) -> list[GpuSku]:
        """SKUs cheapest first (ties: less GPU memory first, then name)."""
        return sorted(
            self.skus.values(),
            key=lambda s: (s.price_per_hour_usd, s.total_gpu_memory_gib, s.name),
        )


def parse_catalog(models_yaml: str, skus_yaml: str) -> Catalog:
    """Builds a catalog from the two YAML texts (raises pydantic.ValidationError if bad)."""
    models = yaml.safe_load(models_yaml)["models"]
    skus = yaml.safe_load(skus_yaml)["skus"]
    return Catalog.model_validate(
        {
            "models": {name: {"name": name, **entry} for name, entry in models.items()},
            "skus": {name: {"name": name, **entry} for name, entry in skus.items()},
        }
    )


@functools.cache
def load_catalog() -> Catalog:
    """The catalog shipped with the package (parsed once)."""
    return parse_catalog(MODELS_FILE.read_text(), SKUS_FILE.read_text())
