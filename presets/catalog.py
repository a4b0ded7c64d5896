"""Typed loader over the preset catalog (models.yaml) and the GPU SKU table (skus.yaml).

The data files are the source of truth; this module parses them once into frozen models
and answers look-ups. The one exception to "no I/O after the first load" is
`HfConfigSource`, which reads a model's config.json (local directories, optionally the
Hugging Face Hub) for best-effort presets; it blocks, so async callers run it in a thread.
"""

from __future__ import annotations

import functools
import json
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, model_validator

_HERE = Path(__file__).resolve().parent
MODELS_FILE = _HERE / "models.yaml"
SKUS_FILE = _HERE / "skus.yaml"

GIB = 1024**3
BEST_EFFORT_FAMILY = "best-effort"

# Presets whose weights ship inside the runtime image (runtime/base_model.py): their pods
# name the preset instead of downloading weights into /mnt/model. Equal to the presets
# with `weights_source: image` (a test keeps them so).
IMAGE_WEIGHTS_PRESETS: frozenset[str] = frozenset({"smollm2-135m-instruct"})


class _Frozen(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class TuningSupport(_Frozen):
    """Which tuning methods a preset supports."""

    lora: bool = False
    qlora: bool = False

    def supports(self, method: str) -> bool:
        return method in ("lora", "qlora") and bool(getattr(self, method))


Runtime = Literal["vllm", "transformers"]
WeightsSource = Literal["huggingface", "image"]
Quantization = Literal["none", "fp8", "mxfp4", "awq"]
Architecture = Literal["dense", "moe", "hybrid"]


class MoeShape(_Frozen):
    """Mixture-of-experts numbers (config.json: n_routed_experts / num_local_experts, ...)."""

    experts: int = Field(gt=0)
    """Routed experts per MoE layer."""
    experts_per_token: int = Field(gt=0)
    shared_experts: int = Field(default=0, ge=0)
    expert_intermediate_size: int = Field(gt=0)
    """MLP width of one expert (moe_intermediate_size, or intermediate_size when all
    layers are MoE)."""
    dense_layers: int = Field(default=0, ge=0)
    """Leading layers with a dense MLP of intermediate_size (first_k_dense_replace)."""


class MlaShape(_Frozen):
    """DeepSeek-style multi-head latent attention (config.json of DeepseekV3)."""

    q_lora_rank: int = Field(gt=0)
    kv_lora_rank: int = Field(gt=0)
    qk_nope_head_dim: int = Field(gt=0)
    qk_rope_head_dim: int = Field(gt=0)
    v_head_dim: int = Field(gt=0)


class ModelPreset(_Frozen):
    """One model: where it comes from and the numbers the memory estimate needs."""

    name: str
    hf_id: str
    family: str
    architecture: Architecture = "dense"
    """dense: the layer formula gives the parameter count; moe: plus experts; hybrid
    (Mamba + attention): only the weight size is checked (see tests/unit/test_catalog.py)."""
    params_billion: float = Field(gt=0)
    """All parameters (for MoE: every expert), without speculative-decoding (MTP) heads."""
    extra_params_billion: float = Field(default=0, ge=0)
    """Parameters outside the text decoder (a vision encoder, MTP heads)."""
    weights_gib: float = Field(gt=0)
    """Size of the published weights (in their published precision)."""
    quantization: Quantization = "none"
    """How the published weights are stored: none (bf16/fp16), fp8, mxfp4 (MoE experts),
    awq (4-bit)."""
    context_length: int = Field(gt=0)
    layers: int = Field(gt=0)
    hidden_size: int = Field(gt=0)
    intermediate_size: int = Field(ge=0)
    """MLP width; 0 = not recorded (hybrid models only, which support no tuning)."""
    gated_mlp: bool = True
    """SwiGLU-style MLP (gate, up, down) rather than two matrices (up, down)."""
    moe: MoeShape | None = None
    mla: MlaShape | None = None
    attention_heads: int = Field(gt=0)
    kv_heads: int = Field(gt=0)
    head_dim: int = Field(gt=0)
    vocab_size: int = Field(gt=0)
    tie_word_embeddings: bool
    dtype: Literal["bfloat16", "float16", "float32"] = "bfloat16"
    gated: bool = False
    """Gated on Hugging Face: serving needs a model access secret."""
    runtimes: tuple[Runtime, ...] = ("vllm", "transformers")
    """Serving runtimes that run it, the default first."""
    weights_source: WeightsSource = "huggingface"
    """huggingface: downloaded from hf_id into the pod; image: shipped in the runtime image."""
    tuning: TuningSupport = TuningSupport()
    lora_target_modules: tuple[str, ...] = ()
    inference_published_gib: float | None = None
    """Upstream Kaito's GPU memory figure for serving (kept for comparison)."""
    tuning_published_gib: float | None = None
    """Upstream Kaito's GPU memory figure for tuning (kept for comparison)."""

    @model_validator(mode="after")
    def _intermediate_size_known_where_used(self) -> ModelPreset:
        if self.intermediate_size == 0 and (
                self.architecture != "hybrid" or self.tuning.lora or self.tuning.qlora):
            raise ValueError(f"{self.name}: intermediate_size 0 (unknown) is allowed only for "
                             "hybrid models without tuning")
        return self

    @property
    def params(self) -> int:
        return int(self.params_billion * 1e9)

    @property
    def kv_dim(self) -> int:
        """Width of K (and of V) cached per token and layer. MLA caches one latent of
        kv_lora_rank + qk_rope_head_dim for both, so half of it counts for each."""
        if self.mla is not None:
            return (self.mla.kv_lora_rank + self.mla.qk_rope_head_dim + 1) // 2
        return self.kv_heads * self.head_dim

    @property
    def is_best_effort(self) -> bool:
        """Built from a Hugging Face config at admission, not from the shipped catalog."""
        return self.family == BEST_EFFORT_FAMILY

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
        """The preset by its name, or by its Hugging Face id (case-insensitive), as
        upstream's catalog accepts both."""
        found = self.models.get(name)
        if found is not None or "/" not in name:
            return found
        lowered = name.lower()
        return next((m for m in self.models.values() if m.hf_id.lower() == lowered), None)

    def resolve(self, name: str, source: HfConfigSource | None = None) -> ModelPreset | None:
        """The preset by name or Hugging Face id, else (best-effort, upstream since v0.9) one
        built from the model's config.json when ``source`` can read it (blocking)."""
        preset = self.preset(name)
        if preset is not None or not is_hf_model_id(name) or source is None:
            return preset
        return source.preset(name)

    def tuning_presets(self) -> list[ModelPreset]:
        return [m for m in self.models.values() if m.tuning.lora or m.tuning.qlora]

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


# -- best-effort presets: any Hugging Face model id (upstream since v0.9) -----------------

HF_CONFIG_FILE = "config.json"


def is_hf_model_id(name: str) -> bool:
    """Whether a preset name is a Hugging Face model id (``org/model``)."""
    parts = name.split("/")
    return len(parts) == 2 and all(parts) and " " not in name


def find_hf_config(hf_id: str, search_dirs: tuple[Path, ...]) -> dict[str, Any] | None:
    """The model's config.json from a local directory, or None when none holds it.

    Looks for ``<dir>/<org>/<model>/config.json`` (a plain download) and the Hugging Face
    cache layout ``<dir>/models--<org>--<model>/snapshots/*/config.json``. No network: the
    webhook answers within its deadline, and an operator who wants memory estimates for
    arbitrary models mounts a directory of their configs.
    """
    org, model = hf_id.split("/", 1)
    for base in search_dirs:
        candidates = [base / org / model / HF_CONFIG_FILE]
        snapshots = base / f"models--{org}--{model}" / "snapshots"
        if snapshots.is_dir():
            candidates += sorted(snapshots.glob(f"*/{HF_CONFIG_FILE}"))
        for path in candidates:
            try:
                loaded = yaml.safe_load(path.read_text(encoding="utf-8"))
            except (OSError, UnicodeDecodeError, yaml.YAMLError):
                continue
            if isinstance(loaded, dict):
                return loaded
    return None


def _int(config: Mapping[str, Any], *keys: str) -> int | None:
    for key in keys:
        value = config.get(key)
        if isinstance(value, int) and not isinstance(value, bool) and value > 0:
            return value
    return None


def preset_from_hf_config(hf_id: str, config: Mapping[str, Any]) -> ModelPreset | None:
    """A best-effort preset from a model's config.json (None when it lacks the numbers).

    The parameter count comes from the layer formula (dense, or MoE with every expert),
    the weight size assumes 16-bit weights; context is max_position_embeddings.
    """
    text = config.get("text_config")
    if isinstance(text, Mapping):
        config = {**config, **text}
    hidden = _int(config, "hidden_size", "n_embd", "d_model")
    layers = _int(config, "num_hidden_layers", "n_layer", "num_layers")
    heads = _int(config, "num_attention_heads", "n_head")
    vocab = _int(config, "vocab_size")
    if None in (hidden, layers, heads, vocab):
        return None
    assert hidden is not None and layers is not None and heads is not None
    assert vocab is not None
    intermediate = _int(config, "intermediate_size", "ffn_dim", "n_inner") or 4 * hidden
    kv_heads = _int(config, "num_key_value_heads", "num_kv_heads") or heads
    head_dim = _int(config, "head_dim") or hidden // heads
    tied = bool(config.get("tie_word_embeddings", False))
    experts = _int(config, "num_local_experts", "n_routed_experts", "num_experts")
    per_token = _int(config, "num_experts_per_tok", "experts_per_token") or 1
    expert_width = _int(config, "moe_intermediate_size") or intermediate
    attention = 2 * hidden * heads * head_dim + 2 * hidden * kv_heads * head_dim
    mlp = 3 * hidden * (expert_width * experts if experts else intermediate)
    params = layers * (attention + mlp) + vocab * hidden * (1 if tied else 2)
    moe = (MoeShape(experts=experts, experts_per_token=min(per_token, experts),
                    expert_intermediate_size=expert_width) if experts else None)
    return ModelPreset(
        name=hf_id, hf_id=hf_id, family=BEST_EFFORT_FAMILY,
        architecture="moe" if moe else "dense",
        params_billion=params / 1e9, weights_gib=2 * params / GIB,
        context_length=_int(config, "max_position_embeddings", "n_positions") or 4096,
        layers=layers, hidden_size=hidden, intermediate_size=intermediate, moe=moe,
        attention_heads=heads, kv_heads=kv_heads, head_dim=head_dim, vocab_size=vocab,
        tie_word_embeddings=tied, runtimes=("vllm",),
    )


def fetch_hf_config(
    hf_id: str, endpoint: str, *, token: str | None = None, timeout_seconds: float = 3.0
) -> dict[str, Any] | None:
    """The model's config.json from a Hugging Face Hub endpoint (``<endpoint>/<id>/resolve/
    main/config.json``), or None when it cannot be read (absent, gated, slow, not JSON)."""
    if not is_hf_model_id(hf_id) or urllib.parse.urlsplit(endpoint).scheme not in (
            "http", "https"):
        return None
    url = f"{endpoint.rstrip('/')}/{urllib.parse.quote(hf_id)}/resolve/main/{HF_CONFIG_FILE}"
    request = urllib.request.Request(url, headers={"Accept": "application/json"})
    if token:
        request.add_header("Authorization", f"Bearer {token}")
    try:
        with urllib.request.urlopen(request, timeout=timeout_seconds) as response:
            loaded = json.loads(response.read(1 << 20))
    except (OSError, ValueError):  # URLError, HTTPError and timeouts are OSErrors
        return None
    return loaded if isinstance(loaded, dict) else None


class HfConfigSource:
    """Best-effort presets from config.json files: local directories first, then the Hub
    endpoint when one is configured. Results are cached (failures for ``retry_seconds``),
    so a webhook or a reconcile loop asks the Hub at most once per model and interval."""

    def __init__(self, dirs: tuple[Path, ...] = (), endpoint: str | None = None, *,
                 timeout_seconds: float = 3.0, retry_seconds: float = 300.0) -> None:
        self.dirs, self.endpoint = dirs, endpoint
        self.timeout_seconds, self.retry_seconds = timeout_seconds, retry_seconds
        self._found: dict[str, ModelPreset] = {}
        self._missing_until: dict[str, float] = {}
        self._lock = threading.Lock()

    def preset(self, hf_id: str) -> ModelPreset | None:
        with self._lock:
            if hf_id in self._found:
                return self._found[hf_id]
            if self._missing_until.get(hf_id, 0.0) > time.monotonic():
                return None
        config = find_hf_config(hf_id, self.dirs)
        if config is None and self.endpoint:
            config = fetch_hf_config(hf_id, self.endpoint, timeout_seconds=self.timeout_seconds)
        preset = preset_from_hf_config(hf_id, config) if config is not None else None
        with self._lock:
            if preset is not None:
                self._found[hf_id] = preset
            else:
                self._missing_until[hf_id] = time.monotonic() + self.retry_seconds
        return preset
