"""The KV-cache bookkeeping of ``HFBatchModel`` on a tiny random Llama (no weights needed).

Sequences join a running batch (left-padded cache merge) and leave it (row removal and
trimming) at different steps; every sequence's greedy tokens must equal what the same
model produces for it alone, which is what makes continuous batching safe.
"""

from __future__ import annotations

import pytest
import torch
from transformers import LlamaConfig, LlamaForCausalLM

from runtime.serving.engine import SequenceSpec
from runtime.serving.generation import SamplingParams
from runtime.serving.sampling import SequenceSampler
from runtime.serving.torch_model import HFBatchModel

pytestmark = pytest.mark.unit


class _Tokenizer:
    pad_token_id = 0
    chat_template = None


@pytest.fixture(scope="module")
def tiny_model() -> LlamaForCausalLM:
    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=97, hidden_size=64, intermediate_size=128,
                         num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                         max_position_embeddings=256)
    model = LlamaForCausalLM(config)
    model.train(False)  # inference mode (dropout off), like .eval()
    return model


def _batch_model(model: LlamaForCausalLM) -> HFBatchModel:
    return HFBatchModel(model, _Tokenizer(), max_context_tokens=256,
                        eos_token_ids=frozenset({96}), has_adapters=False)


def _spec(seq_id: int, prompt: list[int], tokens: int = 50) -> SequenceSpec:
    return SequenceSpec(seq_id, prompt, SamplingParams(max_new_tokens=tokens), None, 0)


def _alone(model: LlamaForCausalLM, prompt: list[int], steps: int) -> list[int]:
    batch = _batch_model(model)
    tokens = [batch.prefill([_spec(1, prompt)])[0].token_id]
    for _ in range(steps - 1):
        tokens.append(batch.decode_step()[1].token_id)
    return tokens


def test_joining_and_leaving_never_changes_greedy_tokens(tiny_model: LlamaForCausalLM) -> None:
    prompts = {1: [5, 6, 7, 8, 9, 10, 11], 2: [20, 21], 3: [30, 31, 32, 33], 4: [40]}
    steps = {1: 12, 2: 5, 3: 9, 4: 6}
    expected = {seq_id: _alone(tiny_model, prompts[seq_id], steps[seq_id]) for seq_id in prompts}

    batch = _batch_model(tiny_model)
    produced: dict[int, list[int]] = {seq_id: [] for seq_id in prompts}

    def add(*seq_ids: int) -> None:
        picked = batch.prefill([_spec(s, prompts[s]) for s in seq_ids])
        for seq_id, sampled in zip(seq_ids, picked, strict=True):
            produced[seq_id].append(sampled.token_id)

    def step() -> None:
        for seq_id, sampled in batch.decode_step().items():
            produced[seq_id].append(sampled.token_id)
        done = [s for s in batch.seq_ids if len(produced[s]) >= steps[s]]
        batch.release(done)

    add(1)
    step()
    step()
    add(2, 3)  # join a running batch with a longer cache
    step()
    add(4)
    for _ in range(12):
        step()
    assert produced == expected
    assert batch.batch_size == 0 and batch.cache_length == 0


def test_release_trims_padding_columns(tiny_model: LlamaForCausalLM) -> None:
    batch = _batch_model(tiny_model)
    batch.prefill([_spec(1, list(range(1, 30))), _spec(2, [3, 4])])
    batch.decode_step()
    assert batch.cache_length == 30
    batch.release([1])
    assert batch.cache_length == 3  # only the short sequence's columns remain


def test_sampler_greedy_seeded_and_penalised() -> None:
    logits = torch.tensor([0.0, 3.0, 2.9, -1.0])
    greedy = SequenceSampler(SamplingParams(max_new_tokens=4), 0, [])
    assert greedy.pick(logits)[0] == 1
    top1 = SequenceSampler(SamplingParams(max_new_tokens=4, do_sample=True, top_k=1), 3, [])
    assert all(top1.pick(logits)[0] == 1 for _ in range(5))
    narrow = SequenceSampler(SamplingParams(max_new_tokens=4, do_sample=True, top_p=0.01), 3, [])
    assert all(narrow.pick(logits)[0] == 1 for _ in range(5))
    params = SamplingParams(max_new_tokens=4, do_sample=True, temperature=5.0)
    runs = [[SequenceSampler(params, seed, []).pick(logits)[0] for _ in range(1)]
            for seed in (7, 7)]
    assert runs[0] == runs[1]
    first = SequenceSampler(params, 11, [])
    second = SequenceSampler(params, 11, [])
    assert [first.pick(logits)[0] for _ in range(20)] == [second.pick(logits)[0] for _ in range(20)]
    repeat = SequenceSampler(SamplingParams(max_new_tokens=4, repetition_penalty=2.0), 0, [1])
    assert repeat.pick(logits)[0] == 2  # token 1 was in the prompt: 3.0 / 2 < 2.9
    frequency = SequenceSampler(SamplingParams(max_new_tokens=4, frequency_penalty=0.5), 0, [])
    assert [frequency.pick(logits)[0] for _ in range(2)] == [1, 2]
    token, logprob = SequenceSampler(SamplingParams(max_new_tokens=1), 0, []).pick(logits)
    assert logprob == pytest.approx(float(torch.log_softmax(logits, -1)[token]))
