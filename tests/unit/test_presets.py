"""The preset catalog, the GPU SKU table and the memory estimator against published figures."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from presets.catalog import GIB, ModelPreset, load_catalog, parse_catalog
from presets.memory import (
    ADAPTER_STATE_BYTES_BF16,
    TuningShape,
    cheapest_inference_sku,
    cheapest_tuning_sku,
    inference_fit_problem,
    inference_fits_node,
    inference_gib,
    smallest_inference_sku,
    smallest_tuning_sku,
    tuning_estimate,
)

pytestmark = pytest.mark.unit

REQUIRED_PRESETS = [
    "phi-3-mini-4k-instruct",
    "phi-3-mini-128k-instruct",
    "phi-3-medium-4k-instruct",
    "phi-3-medium-128k-instruct",
    "phi-3.5-mini-instruct",
    "phi-4",
    "phi-4-mini-instruct",
    "mistral-7b",
    "mistral-7b-instruct",
    "falcon-7b",
    "falcon-7b-instruct",
    "qwen2.5-coder-7b-instruct",
    "qwen2.5-coder-32b-instruct",
    "llama-3.1-8b-instruct",
    "smollm2-135m-instruct",
]

# (SKU, GPUs, GPU model, total GiB) from the reference file.
REFERENCE_SKUS = [
    ("Standard_NC6s_v3", 1, "V100", 16),
    ("Standard_NC12s_v3", 2, "V100", 32),
    ("Standard_NC24s_v3", 4, "V100", 64),
    ("Standard_NC24ads_A100_v4", 1, "A100", 80),
    ("Standard_NC48ads_A100_v4", 2, "A100", 160),
    ("Standard_NC96ads_A100_v4", 4, "A100", 320),
    ("Standard_NV36ads_A10_v5", 1, "A10", 24),
    ("Standard_NC40ads_H100_v5", 1, "H100", 94),
    ("Standard_NC80adis_H100_v5", 2, "H100", 188),
    ("Standard_ND96isr_H100_v5", 8, "H100", 640),
    ("Standard_ND96isr_H200_v5", 8, "H200", 1128),
    ("Standard_NC4as_T4_v3", 1, "T4", 16),
    ("Standard_NC64as_T4_v3", 4, "T4", 64),
]


def test_catalog_has_every_required_preset() -> None:
    catalog = load_catalog()
    for name in REQUIRED_PRESETS:
        preset = catalog.preset(name)
        assert preset is not None, name
        assert "/" in preset.hf_id
        assert preset.lora_target_modules, name
    smol = catalog.preset("smollm2-135m-instruct")
    assert smol is not None and smol.hf_id == "HuggingFaceTB/SmolLM2-135M-Instruct"
    assert smol.tuning.supports("lora") and smol.tuning.supports("qlora")
    assert catalog.preset("phi-3-mini-128k-instruct") is not None
    assert catalog.preset("no-such-model") is None


@pytest.mark.parametrize(("name", "gpus", "model", "total"), REFERENCE_SKUS)
def test_sku_table_matches_the_reference(name: str, gpus: int, model: str, total: int) -> None:
    sku = load_catalog().sku(name)
    assert sku is not None
    assert (sku.gpu_count, sku.gpu_model, sku.total_gpu_memory_gib) == (gpus, model, total)
    assert sku.bf16 is (model not in ("V100", "T4"))


def test_sku_lookup_ignores_case() -> None:
    sku = load_catalog().sku("standard_nc6s_v3")
    assert sku is not None and sku.name == "Standard_NC6s_v3"


def test_bad_data_file_is_rejected_clearly() -> None:
    with pytest.raises(ValidationError, match="gpu_count"):
        parse_catalog(
            "models: {}\n",
            "skus:\n  X: {gpu_count: 0, gpu_model: T4, gpu_memory_gib: 16, bf16: false,"
            " price_per_hour_usd: 1}\n",
        )


def _llama(params_billion: float, layers: int, hidden: int, intermediate: int) -> ModelPreset:
    """LLaMA-1 shapes as in the QLoRA paper (vocab 32000, untied head, MHA)."""
    return ModelPreset(
        name=f"llama-{params_billion}b",
        hf_id="huggyllama/llama",
        family="llama",
        params_billion=params_billion,
        weights_gib=params_billion * 2e9 / GIB,
        context_length=2048,
        layers=layers,
        hidden_size=hidden,
        intermediate_size=intermediate,
        attention_heads=hidden // 128,
        kv_heads=hidden // 128,
        head_dim=128,
        vocab_size=32000,
        tie_word_embeddings=False,
    )


# The QLoRA paper's setting: r=64 on every linear layer, batch 1, seq 512, gradient
# checkpointing, bf16 adapters with 32-bit Adam.
QLORA_PAPER = TuningShape(
    method="qlora", batch_size=1, seq_len=512, lora_rank=64, gradient_checkpointing=True,
    adapter_state_bytes=ADAPTER_STATE_BYTES_BF16,
)


def test_qlora_65b_fits_a_single_48gb_gpu_as_published() -> None:
    # Dettmers et al. 2023: "finetune a 65B parameter model on a single 48GB GPU".
    estimate = tuning_estimate(_llama(65.2, 80, 8192, 22016), QLORA_PAPER)
    assert 40 <= estimate.total_gib <= 48
    # The 4-bit weights alone are about 32 GiB; 16-bit weights would not fit.
    assert 30 <= estimate.weights / GIB <= 34


def test_qlora_33b_fits_a_24gb_consumer_gpu_as_published() -> None:
    # Dettmers et al. 2023: "Guanaco 33B can be trained on 24 GB consumer GPUs".
    estimate = tuning_estimate(_llama(32.5, 60, 6656, 17920), QLORA_PAPER)
    assert 20 <= estimate.total_gib <= 24
    lora = tuning_estimate(_llama(32.5, 60, 6656, 17920), TuningShape(method="lora"))
    assert lora.total_gib > 60


@pytest.mark.parametrize(
    "name", ["phi-3-mini-4k-instruct", "phi-3-medium-4k-instruct", "mistral-7b", "falcon-7b"]
)
def test_inference_estimate_within_15_percent_of_upstream(name: str) -> None:
    preset = load_catalog().preset(name)
    assert preset is not None and preset.inference_published_gib is not None
    estimate = inference_gib(preset)
    assert abs(estimate - preset.inference_published_gib) / preset.inference_published_gib < 0.15


@pytest.mark.parametrize("name", ["mistral-7b", "falcon-7b"])
def test_qlora_estimate_within_upstream_per_gpu_figure(name: str) -> None:
    preset = load_catalog().preset(name)
    assert preset is not None and preset.tuning_published_gib == 16
    estimate = tuning_estimate(preset, TuningShape(method="qlora"))
    assert 4 <= estimate.per_gpu_gib(1) <= 16


def test_estimate_grows_with_batch_and_sequence() -> None:
    preset = load_catalog().preset("phi-3-mini-4k-instruct")
    assert preset is not None
    small = tuning_estimate(preset, TuningShape(method="lora", batch_size=1, seq_len=512))
    big_batch = tuning_estimate(preset, TuningShape(method="lora", batch_size=4, seq_len=512))
    long_seq = tuning_estimate(preset, TuningShape(method="lora", batch_size=1, seq_len=2048))
    qlora = tuning_estimate(preset, TuningShape(method="qlora", batch_size=1, seq_len=512))
    assert small.total_bytes < big_batch.total_bytes
    assert small.total_bytes < long_seq.total_bytes
    assert qlora.weights < small.weights / 3
    # the tuning runtime computes on one GPU: a second GPU on the node does not halve it
    assert small.per_gpu_gib(2) == small.per_gpu_gib(1) == small.total_gib


def test_estimator_rejects_nonsense() -> None:
    preset = load_catalog().preset("phi-4")
    assert preset is not None
    with pytest.raises(ValueError, match="unknown tuning method"):
        tuning_estimate(preset, TuningShape(method="full"))
    with pytest.raises(ValueError, match="positive"):
        tuning_estimate(preset, TuningShape(batch_size=0))


def test_seed_qlora_on_v100_fits_and_medium_batch_4_does_not() -> None:
    catalog = load_catalog()
    v100 = catalog.sku("Standard_NC6s_v3")
    mini = catalog.preset("phi-3-mini-128k-instruct")
    medium = catalog.preset("phi-3-medium-128k-instruct")
    assert v100 is not None and mini is not None and medium is not None
    seed = tuning_estimate(mini, TuningShape(method="qlora"))
    assert seed.per_gpu_gib(1) <= v100.gpu_memory_gib
    heavy = tuning_estimate(medium, TuningShape(method="qlora", batch_size=4, seq_len=2048))
    assert heavy.per_gpu_gib(1) > v100.gpu_memory_gib
    smallest = smallest_tuning_sku(catalog, heavy)
    assert smallest is not None and smallest.total_gpu_memory_gib > 16
    cheapest = cheapest_tuning_sku(catalog, heavy)
    assert cheapest is not None and heavy.per_gpu_gib(cheapest.gpu_count) <= cheapest.gpu_memory_gib


def test_sku_choice_for_inference() -> None:
    catalog = load_catalog()
    phi4 = catalog.preset("phi-4")
    assert phi4 is not None
    sku = cheapest_inference_sku(catalog, phi4)
    assert sku.total_gpu_memory_gib >= inference_gib(phi4)
    cheaper_that_fit = [
        s for s in catalog.skus.values()
        if s.price_per_hour_usd < sku.price_per_hour_usd
        and s.total_gpu_memory_gib >= inference_gib(phi4)
    ]
    assert cheaper_that_fit == []
    t4 = catalog.sku("Standard_NC4as_T4_v3")
    assert t4 is not None
    assert not inference_fits_node(phi4, t4)  # ~30 GiB: two T4 nodes never pool memory


def test_serving_fits_one_node_and_a_refusal_names_the_smallest_sku_that_serves_it() -> None:
    """One node's GPUs together (the engine shards over them), never several nodes."""
    catalog = load_catalog()
    phi4, llama70b = catalog.preset("phi-4"), catalog.preset("llama-3.3-70b-instruct")
    one_v100, two_v100 = catalog.sku("Standard_NC6s_v3"), catalog.sku("Standard_NC12s_v3")
    assert phi4 is not None and llama70b is not None
    assert one_v100 is not None and two_v100 is not None
    assert inference_fits_node(phi4, two_v100)  # 2x16 GiB on one node hold ~30 GiB
    assert inference_fit_problem(phi4, two_v100, catalog) is None
    assert inference_fit_problem(phi4, one_v100, catalog) == (
        "preset phi-4 needs 30 GiB of GPU memory; one Standard_NC6s_v3 node has 16 GiB and "
        "this operator serves a model on one node only: use Standard_NC12s_v3 (32 GiB) or "
        "larger")
    # The smallest one-node SKU by GPU memory (ties: cheapest), not the cheapest overall.
    smallest = smallest_inference_sku(catalog, llama70b)
    assert smallest is not None and smallest.name == "Standard_NC48ads_A100_v4"
    problem = inference_fit_problem(llama70b, one_v100, catalog)
    assert problem is not None and problem.endswith(
        "use Standard_NC48ads_A100_v4 (160 GiB) or larger")
    too_big = phi4.model_copy(update={"weights_gib": 10_000.0})
    assert smallest_inference_sku(catalog, too_big) is None
    assert "no instance type of the catalog holds it" in (
        inference_fit_problem(too_big, one_v100, catalog) or "")


@pytest.mark.parametrize("name", REQUIRED_PRESETS)
def test_architecture_numbers_agree_with_parameter_count_and_weights(name: str) -> None:
    # Guards the data file: the shapes must add up to the published parameter count, and
    # the published weight size must be about 2 bytes per parameter.
    preset = load_catalog().preset(name)
    assert preset is not None
    h, layers = preset.hidden_size, preset.layers
    q_dim = preset.attention_heads * preset.head_dim
    mlp = (3 if preset.gated_mlp else 2) * h * preset.intermediate_size
    per_layer = 2 * h * q_dim + 2 * h * preset.kv_dim + mlp
    params = layers * per_layer + preset.embedding_params
    assert abs(params - preset.params) / preset.params < 0.02
    assert abs(preset.weights_gib * GIB - 2 * preset.params) / (2 * preset.params) < 0.08
