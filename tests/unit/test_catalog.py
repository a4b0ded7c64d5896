"""The whole preset catalog: every entry's numbers add up, look-ups, best-effort presets."""

from __future__ import annotations

import http.server
import json
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import ClassVar

import pytest

from presets.catalog import (
    GIB,
    IMAGE_WEIGHTS_PRESETS,
    HfConfigSource,
    ModelPreset,
    fetch_hf_config,
    find_hf_config,
    is_hf_model_id,
    load_catalog,
    preset_from_hf_config,
)

pytestmark = pytest.mark.unit

ALL_PRESETS = sorted(load_catalog().models)

# Presets named by upstream v0.12's examples and issue 14 (each must be in the catalog).
UPSTREAM_EXAMPLE_PRESETS = [
    "gemma-3-4b-instruct", "gemma-3-27b-instruct", "deepseek-r1-0528", "deepseek-v3-0324",
    "deepseek-r1-distill-llama-8b", "deepseek-r1-distill-qwen-14b", "ministral-3-3b-instruct",
    "ministral-3-8b-instruct", "ministral-3-14b-instruct", "gpt-oss-20b", "gpt-oss-120b",
    "llama-3.3-70b-instruct", "mistral-large-3-675b-instruct", "phi-2", "falcon-40b",
    "falcon-40b-instruct",
]

# Every preset the catalog holds (presets/catalog.md): upstream v0.12's curated models, the
# older built-ins its examples name, and this project's smollm2-135m-instruct.
CATALOG_PRESETS = [
    "phi-3-mini-4k-instruct", "phi-3-mini-128k-instruct", "phi-3-medium-4k-instruct",
    "phi-3-medium-128k-instruct", "phi-3.5-mini-instruct", "phi-4", "phi-4-mini-instruct",
    "phi-2", "mistral-7b", "mistral-7b-instruct", "ministral-3-3b-instruct",
    "ministral-3-8b-instruct", "ministral-3-14b-instruct", "mistral-large-3-675b-instruct",
    "llama-3.1-8b-instruct", "llama-3.3-70b-instruct", "qwen2.5-coder-7b-instruct",
    "qwen2.5-coder-32b-instruct", "qwen3-8b-awq", "deepseek-r1-0528", "deepseek-v3-0324",
    "deepseek-r1-distill-llama-8b", "deepseek-r1-distill-qwen-14b", "gemma-3-4b-instruct",
    "gemma-3-27b-instruct", "gpt-oss-20b", "gpt-oss-120b", "nemotron-3-nano-4b",
    "nemotron-3-nano-30b-a3b", "nemotron-3-super-120b-a12b", "nemotron-cascade-2-30b-a3b",
    "nemotron-nano-9b-v2", "nemotron-nano-12b-v2-vl", "falcon-7b", "falcon-7b-instruct",
    "falcon-40b", "falcon-40b-instruct", "smollm2-135m-instruct",
]

# Average stored bits per parameter each storage format allows (quantized formats keep
# embeddings, norms and often attention in 16 bits, so they sit above their nominal width).
BITS_PER_PARAM = {"none": (14.7, 17.3), "fp8": (7.6, 10.5), "mxfp4": (4.2, 6.5),
                  "awq": (4.0, 6.5)}


def layer_formula_params(preset: ModelPreset) -> int:
    """Parameters from the architecture numbers (norms, biases and routers left out)."""
    h, heads = preset.hidden_size, preset.attention_heads
    if preset.mla is not None:
        mla = preset.mla
        attention = (h * mla.q_lora_rank
                     + mla.q_lora_rank * heads * (mla.qk_nope_head_dim + mla.qk_rope_head_dim)
                     + h * (mla.kv_lora_rank + mla.qk_rope_head_dim)
                     + mla.kv_lora_rank * heads * (mla.qk_nope_head_dim + mla.v_head_dim)
                     + heads * mla.v_head_dim * h)
    else:
        attention = 2 * h * heads * preset.head_dim + 2 * h * preset.kv_heads * preset.head_dim
    matrices = 3 if preset.gated_mlp else 2
    dense_mlp = matrices * h * preset.intermediate_size
    if preset.moe is None:
        blocks = preset.layers * (attention + dense_mlp)
    else:
        moe = preset.moe
        expert_mlp = matrices * h * moe.expert_intermediate_size * (moe.experts + moe.shared_experts)
        blocks = (preset.layers * attention + moe.dense_layers * dense_mlp
                  + (preset.layers - moe.dense_layers) * expert_mlp)
    return blocks + preset.embedding_params


def consistency_problems(preset: ModelPreset) -> list[str]:
    problems: list[str] = []
    if preset.architecture != "hybrid":
        # The formula leaves out norms, biases and routers: well under 0.1% for every entry.
        tolerance = 0.005
        computed = layer_formula_params(preset)
        if abs(computed - preset.params) / preset.params > tolerance:
            problems.append(f"layer formula gives {computed / 1e9:.2f}B, "
                            f"params_billion says {preset.params_billion}")
    total = (preset.params_billion + preset.extra_params_billion) * 1e9
    bits = preset.weights_gib * GIB * 8 / total
    low, high = BITS_PER_PARAM[preset.quantization]
    if not low <= bits <= high:
        problems.append(f"weights_gib gives {bits:.1f} bits/parameter; {preset.quantization} "
                        f"allows {low}-{high}")
    if preset.moe is not None and preset.moe.experts_per_token > preset.moe.experts:
        problems.append("more experts per token than experts")
    if (preset.moe is not None and not preset.moe.dense_layers
            and preset.intermediate_size != preset.moe.expert_intermediate_size):
        # Every layer is MoE: config.json's intermediate_size is the expert width.
        problems.append("intermediate_size differs from the expert width")
    if preset.attention_heads % preset.kv_heads:
        problems.append("attention heads not a multiple of kv heads")
    return problems


@pytest.mark.parametrize("name", ALL_PRESETS)
def test_every_entry_is_self_consistent(name: str) -> None:
    preset = load_catalog().preset(name)
    assert preset is not None
    assert consistency_problems(preset) == []
    assert is_hf_model_id(preset.hf_id)
    assert preset.runtimes, name


TYPOS = [("hidden_size", 2), ("layers", 0.5), ("intermediate_size", 1.5),
         ("vocab_size", 10), ("weights_gib", 2), ("params_billion", 1.1), ("head_dim", 2)]
# DeepSeek's dense MLP (3 of 61 layers) holds 0.2% of its parameters and its head_dim is
# not in the MLA formula, so a typo in those two is beyond this check.
TYPO_CASES = [(name, field, factor)
              for name in ("llama-3.3-70b-instruct", "gpt-oss-20b", "deepseek-v3-0324",
                           "ministral-3-8b-instruct", "falcon-40b")
              for field, factor in TYPOS
              if not (name == "deepseek-v3-0324" and field in ("intermediate_size", "head_dim"))]


@pytest.mark.parametrize("name,field,factor", TYPO_CASES)
def test_a_typo_in_a_number_is_caught(name: str, field: str, factor: float) -> None:
    preset = load_catalog().preset(name)
    assert preset is not None
    value = getattr(preset, field)
    typo = type(value)(value * factor)
    assert consistency_problems(preset.model_copy(update={field: typo})) != []


def test_upstream_example_presets_are_all_in_the_catalog() -> None:
    catalog = load_catalog()
    missing = [name for name in UPSTREAM_EXAMPLE_PRESETS if catalog.preset(name) is None]
    assert missing == []


def test_the_catalog_holds_exactly_its_38_presets() -> None:
    """presets/catalog.md's list, no more, no fewer: a preset dropped or added by mistake
    (a bad merge, a renamed key) changes what the webhook admits."""
    catalog = load_catalog()
    assert sorted(catalog.models) == sorted(CATALOG_PRESETS)
    assert len(catalog.models) == 38


def test_a_preset_is_found_by_its_hugging_face_id_in_any_case() -> None:
    catalog = load_catalog()
    found = catalog.preset("OPENAI/gpt-oss-120b")
    assert found is not None and found.name == "gpt-oss-120b"
    assert catalog.preset("openai/no-such-model") is None


def test_image_weights_presets_are_those_with_weights_in_the_image() -> None:
    catalog = load_catalog()
    in_image = {m.name for m in catalog.models.values() if m.weights_source == "image"}
    assert in_image == IMAGE_WEIGHTS_PRESETS


def test_tuning_presets_name_their_target_modules() -> None:
    for preset in load_catalog().tuning_presets():
        assert preset.lora_target_modules, preset.name
        assert "transformers" in preset.runtimes, preset.name


def test_mla_kv_cache_is_the_latent_not_full_heads() -> None:
    preset = load_catalog().preset("deepseek-r1-0528")
    assert preset is not None and preset.mla is not None
    assert 2 * preset.kv_dim == preset.mla.kv_lora_rank + preset.mla.qk_rope_head_dim


LLAMA_8B_CONFIG = {
    "architectures": ["LlamaForCausalLM"], "hidden_size": 4096, "num_hidden_layers": 32,
    "num_attention_heads": 32, "num_key_value_heads": 8, "intermediate_size": 14336,
    "vocab_size": 128256, "max_position_embeddings": 131072, "tie_word_embeddings": False,
}


def test_a_best_effort_preset_from_config_matches_the_catalog_entry() -> None:
    built = preset_from_hf_config("someone/llama-like-8b", LLAMA_8B_CONFIG)
    shipped = load_catalog().preset("llama-3.1-8b-instruct")
    assert built is not None and shipped is not None
    assert built.is_best_effort and not shipped.is_best_effort
    assert abs(built.params - shipped.params) / shipped.params < 0.01
    assert abs(built.weights_gib - shipped.weights_gib) / shipped.weights_gib < 0.02
    assert consistency_problems(built) == []


def test_a_best_effort_moe_config_counts_every_expert() -> None:
    config = {"hidden_size": 2880, "num_hidden_layers": 24, "num_attention_heads": 64,
              "num_key_value_heads": 8, "head_dim": 64, "intermediate_size": 2880,
              "num_local_experts": 32, "num_experts_per_tok": 4, "vocab_size": 201088}
    built = preset_from_hf_config("openai/gpt-oss-20b-copy", config)
    assert built is not None and built.moe is not None and built.architecture == "moe"
    assert abs(built.params_billion - 20.91) < 0.3


def test_a_config_without_the_numbers_gives_no_preset() -> None:
    assert preset_from_hf_config("x/y", {"architectures": ["Whatever"]}) is None


def test_configs_are_read_from_a_local_directory_or_the_hf_cache(tmp_path: Path) -> None:
    plain = tmp_path / "plain" / "org" / "model-a"
    plain.mkdir(parents=True)
    (plain / "config.json").write_text(json.dumps(LLAMA_8B_CONFIG))
    cached = tmp_path / "cache" / "models--org--model-b" / "snapshots" / "abc123"
    cached.mkdir(parents=True)
    (cached / "config.json").write_text(json.dumps(LLAMA_8B_CONFIG))
    dirs = (tmp_path / "plain", tmp_path / "cache")
    assert find_hf_config("org/model-a", dirs) == LLAMA_8B_CONFIG
    assert find_hf_config("org/model-b", dirs) == LLAMA_8B_CONFIG
    assert find_hf_config("org/model-c", dirs) is None
    assert find_hf_config("org/model-a", ()) is None


@pytest.mark.parametrize("name,expected", [("org/model", True), ("phi-4", False),
                                           ("a/b/c", False), ("/b", False)])
def test_hf_model_id_shape(name: str, expected: bool) -> None:
    assert is_hf_model_id(name) is expected


def test_an_unrecorded_intermediate_size_is_only_for_hybrids_without_tuning() -> None:
    from pydantic import ValidationError

    dense = load_catalog().preset("phi-4")
    assert dense is not None
    with pytest.raises(ValidationError, match="intermediate_size 0"):
        ModelPreset.model_validate({**dense.model_dump(), "intermediate_size": 0})
    hybrid = load_catalog().preset("nemotron-nano-9b-v2")
    assert hybrid is not None and hybrid.intermediate_size == 0



class _Hub(http.server.BaseHTTPRequestHandler):
    """A Hub endpoint serving one model's config.json and counting requests."""

    requests: ClassVar[list[str]] = []

    def do_GET(self) -> None:
        _Hub.requests.append(self.path)
        if self.path == "/org/served-model/resolve/main/config.json":
            body = json.dumps(LLAMA_8B_CONFIG).encode()
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)
        else:
            self.send_error(401 if "gated" in self.path else 404)

    def log_message(self, format: str, *args: object) -> None:
        pass


@pytest.fixture
def hub() -> Iterator[str]:
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Hub)
    thread = threading.Thread(target=server.serve_forever, name="fake-hub", daemon=True)
    thread.start()
    _Hub.requests.clear()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()
        thread.join()


def test_a_config_is_fetched_from_a_hub_endpoint(hub: str) -> None:
    assert fetch_hf_config("org/served-model", hub) == LLAMA_8B_CONFIG
    assert fetch_hf_config("org/missing", hub) is None
    assert fetch_hf_config("org/gated-model", hub) is None
    assert fetch_hf_config("org/served-model", "file:///etc") is None


def test_the_config_source_caches_hits_and_misses(hub: str, tmp_path: Path) -> None:
    source = HfConfigSource((tmp_path,), hub)
    first = source.preset("org/served-model")
    assert first is not None and first.is_best_effort
    assert source.preset("org/served-model") is first
    assert source.preset("org/missing") is None
    assert source.preset("org/missing") is None
    assert sorted(_Hub.requests) == ["/org/missing/resolve/main/config.json",
                                     "/org/served-model/resolve/main/config.json"]
    catalog = load_catalog()
    assert catalog.resolve("org/served-model", source) is first
    assert catalog.resolve("org/served-model") is None
    assert catalog.resolve("phi-4", source) is catalog.preset("phi-4")
