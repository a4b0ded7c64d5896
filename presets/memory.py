"""GPU memory estimates for serving and for LoRA / QLoRA tuning, and SKU choice from them.

Notation (from the preset): N parameters, L layers, hidden size h, MLP intermediate size i,
m MLP matrices (3 for gated SwiGLU, 2 otherwise), kv = kv_heads x head_dim, vocabulary V,
E = V.h (x2 when the LM head is not tied) embedding parameters. Tuning inputs: batch b,
sequence length s, LoRA rank r. All sizes in bytes; 1 GiB = 2^30 bytes.

Inference (one replica, whole model resident):
    weights   = published bf16 weight size (else 2.N)
    kv_cache  = 2 (K and V) . L . kv . 2 bytes . T,  T = min(context, 8192) tokens
    total     = weights + kv_cache + 1 GiB (CUDA context, allocator, runtime)

Tuning (one pod on one node):
    weights   lora:  2.N                      (bf16/fp16)
              qlora: 0.516.(N - E) + 2.E      (NF4 = 4 bits + 0.127 bits of double-quantised
                                               constants per linear weight; embeddings and
                                               LM head stay 16-bit)
    adapter   A = L . r . [2h + 2(h + kv) + 2h + m(h + i)]  (an A/B pair r x (in + out) on
                                               every linear layer of a block)
    adapter state = A . a,  a = 16 (fp32 weight + fp32 grad + two fp32 Adam moments, PEFT's
                                    default); QLoRA's reference code (bf16 adapters) has a = 12
    activations (16-bit, SDPA attention so no s^2 term), per layer and token
              c = 24h + 4(m - 1)i bytes  (attention block ~12 tensors of h, norms, and the MLP's
                                          2(m - 1) tensors of size i)
              no checkpointing: L . b . s . c
              gradient checkpointing: L . b . s . 2h (layer inputs) + b . s . c (one layer)
    logits    10 . b . s . V  (16-bit logits, their fp32 upcast and its gradient)
    total     = weights + adapter state + activations + logits + 1 GiB
    per GPU   = total: the tuning runtime (runtime/tuning/model.py) loads the model with
                device_map={"": device}, one device, so a node's GPUs do not pool their
                memory; a run fits a SKU when it fits one of its GPUs (TUNING_DEVICES).

Where the runtimes run, and so which memory counts (see presets/memory.md):
    tuning    one GPU: the fit is per GPU, whatever the SKU's GPU count.
    serving   one node: the serving pod asks for every GPU of its node and the engine
              shards the weights over them (runtime/serving/loader.py, device_map="auto"),
              but no engine here serves one model across nodes. So a preset fits a SKU
              when it fits ONE node's total GPU memory (``inference_fits_node``), whatever
              resource.count says: count is the number of replicas, each on its own node.
              The webhook refuses what does not fit and the controller checks
              bring-your-own nodes with the same rule (``inference_fit_problem``).

Defaults follow this project's tuning runtime (runtime/tuning/config.py): batch 1, sequence
length min(context, 1024) (DatasetConfig.max_seq_length), LoRA rank 8, and no gradient
checkpointing unless TrainingArguments.gradient_checkpointing asks for it (for both methods).

Checked against published figures in tests/unit/test_presets.py: the QLoRA paper's
"65B on a single 48 GB GPU" and "33B on a 24 GB consumer GPU" (r=64, batch 1, seq 512,
bf16 adapters); and in tests/unit/test_presets_fit.py against every upstream Kaito figure
in the catalog, within the tolerances stated there and tabled in presets/memory.md.
"""

from __future__ import annotations

from dataclasses import dataclass

from presets.catalog import GIB, Catalog, GpuSku, ModelPreset

OVERHEAD_BYTES = GIB
INFERENCE_MAX_TOKENS = 8192
DEFAULT_LORA_RANK = 8
DEFAULT_TUNING_SEQ_LEN = 1024
QLORA_BYTES_PER_LINEAR_PARAM = (4 + 0.127) / 8
ADAPTER_STATE_BYTES_PEFT = 16
ADAPTER_STATE_BYTES_BF16 = 12
TUNING_DEVICES = 1  # GPUs one tuning pod computes on (runtime/tuning/model.py)


@dataclass(frozen=True)
class TuningShape:
    """The knobs of a tuning run that change its memory need."""

    method: str = "lora"
    batch_size: int = 1
    seq_len: int = DEFAULT_TUNING_SEQ_LEN
    lora_rank: int = DEFAULT_LORA_RANK
    gradient_checkpointing: bool = False
    adapter_state_bytes: int = ADAPTER_STATE_BYTES_PEFT


@dataclass(frozen=True)
class TuningEstimate:
    """A tuning estimate, broken down (bytes)."""

    weights: int
    adapter_state: int
    activations: int
    logits: int
    overhead: int

    @property
    def total_bytes(self) -> int:
        return self.weights + self.adapter_state + self.activations + self.logits + self.overhead

    @property
    def total_gib(self) -> float:
        return self.total_bytes / GIB

    def per_gpu_gib(self, gpu_count: int) -> float:
        """What each GPU the tuning runtime uses needs on a node with ``gpu_count`` GPUs.

        The runtime computes on TUNING_DEVICES of them (one), so this is the whole run
        however many the node has; were it to shard, the share would shrink here alone.
        """
        devices = max(1, min(gpu_count, TUNING_DEVICES))
        return ((self.total_bytes - self.overhead) / devices + self.overhead) / GIB


def inference_gib(preset: ModelPreset, max_tokens: int = INFERENCE_MAX_TOKENS) -> float:
    """GPU memory to serve one replica of the preset (see the module docstring)."""
    tokens = min(preset.context_length, max_tokens)
    kv_cache = 2 * preset.layers * preset.kv_dim * 2 * tokens
    return preset.weights_gib + (kv_cache + OVERHEAD_BYTES) / GIB


def adapter_params(preset: ModelPreset, rank: int) -> int:
    """LoRA parameters with an adapter on every linear layer of every block."""
    h, i, kv = preset.hidden_size, preset.intermediate_size, preset.kv_dim
    mlp_matrices = 3 if preset.gated_mlp else 2
    per_layer = 2 * h + 2 * (h + kv) + 2 * h + mlp_matrices * (h + i)
    return preset.layers * rank * per_layer


def tuning_estimate(preset: ModelPreset, shape: TuningShape) -> TuningEstimate:
    """Memory of a LoRA / QLoRA run of the preset (see the module docstring)."""
    if shape.method not in ("lora", "qlora"):
        raise ValueError(f"unknown tuning method {shape.method!r}")
    if shape.batch_size < 1 or shape.seq_len < 1 or shape.lora_rank < 1:
        raise ValueError("batch_size, seq_len and lora_rank must be positive")
    n, e = preset.params, preset.embedding_params
    if shape.method == "qlora":
        weights = int(QLORA_BYTES_PER_LINEAR_PARAM * (n - e) + 2 * e)
    else:
        weights = 2 * n
    h, i = preset.hidden_size, preset.intermediate_size
    mlp_matrices = 3 if preset.gated_mlp else 2
    tokens = shape.batch_size * shape.seq_len
    per_token_layer = 24 * h + 4 * (mlp_matrices - 1) * i
    if shape.gradient_checkpointing:
        activations = preset.layers * tokens * 2 * h + tokens * per_token_layer
    else:
        activations = preset.layers * tokens * per_token_layer
    return TuningEstimate(
        weights=weights,
        adapter_state=adapter_params(preset, shape.lora_rank) * shape.adapter_state_bytes,
        activations=activations,
        logits=10 * tokens * preset.vocab_size,
        overhead=OVERHEAD_BYTES,
    )


def inference_fits_node(preset: ModelPreset, sku: GpuSku) -> bool:
    """Whether one replica fits one node of the SKU: the serving engine shards the weights
    over the node's GPUs, never across nodes (the one serving-fit rule)."""
    return inference_gib(preset) <= sku.total_gpu_memory_gib


def smallest_inference_sku(catalog: Catalog, preset: ModelPreset) -> GpuSku | None:
    """The SKU with the least total GPU memory that serves the preset on one node (ties:
    cheapest), or None when no SKU of the catalog does."""
    fitting = [s for s in catalog.skus.values() if inference_fits_node(preset, s)]
    if not fitting:
        return None
    return min(fitting, key=lambda s: (s.total_gpu_memory_gib, s.price_per_hour_usd, s.name))


def inference_fit_problem(
    preset: ModelPreset, sku: GpuSku, catalog: Catalog | None, *, node: str | None = None
) -> str | None:
    """Why one node of ``sku`` cannot serve the preset, naming the smallest SKU of the
    catalog that can; None when it fits. ``node`` describes the node in the message
    (default: the SKU's name; bring-your-own nodes are described by their GPUs)."""
    if inference_fits_node(preset, sku):
        return None
    smallest = smallest_inference_sku(catalog, preset) if catalog is not None else None
    hint = (f"use {smallest.name} ({_gib(smallest.total_gpu_memory_gib)} GiB) or larger"
            if smallest is not None else "no instance type of the catalog holds it"
            if catalog is not None else "select nodes with more GPU memory")
    return (f"preset {preset.name} needs {inference_gib(preset):.0f} GiB of GPU memory; one "
            f"{node or sku.name} node has {_gib(sku.total_gpu_memory_gib)} GiB and this operator "
            f"serves a model on one node only: {hint}")


def _gib(value: float) -> str:
    """``16`` or ``22.5``: one decimal at most."""
    return f"{value:.1f}".removesuffix(".0")


def cheapest_inference_sku(catalog: Catalog, preset: ModelPreset) -> GpuSku:
    """The cheapest SKU serving one replica on one node; else the one with most memory
    (which admission then refuses, naming why)."""
    for sku in catalog.skus_by_price():
        if inference_fits_node(preset, sku):
            return sku
    return max(catalog.skus.values(), key=lambda s: (s.total_gpu_memory_gib, -s.price_per_hour_usd))


def tuning_fits(estimate: TuningEstimate, sku: GpuSku) -> bool:
    """Whether the run fits the GPU(s) of the SKU the tuning runtime computes on."""
    return estimate.per_gpu_gib(sku.gpu_count) <= sku.gpu_memory_gib


def cheapest_tuning_sku(catalog: Catalog, estimate: TuningEstimate) -> GpuSku | None:
    """The cheapest SKU whose GPUs hold the tuning run, or None."""
    return next((s for s in catalog.skus_by_price() if tuning_fits(estimate, s)), None)


def smallest_tuning_sku(catalog: Catalog, estimate: TuningEstimate) -> GpuSku | None:
    """The SKU with the least total GPU memory that holds the run (ties: cheapest)."""
    fitting = [s for s in catalog.skus.values() if tuning_fits(estimate, s)]
    if not fitting:
        return None
    return min(fitting, key=lambda s: (s.total_gpu_memory_gib, s.price_per_hour_usd, s.name))
