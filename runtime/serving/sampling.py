"""Picking the next token for one sequence from its logits (torch).

Penalties (repetition as in transformers, presence/frequency as in OpenAI), then greedy
argmax or temperature / top-k / top-p sampling with the sequence's own generator, so a
seeded request gives the same answer whatever else shares its batch.
"""

from __future__ import annotations

from collections import Counter

import torch

from runtime.serving.generation import SamplingParams


class SequenceSampler:
    """Sampling state of one sequence: its parameters, RNG and the tokens seen."""

    def __init__(self, params: SamplingParams, seed: int, prompt_ids: list[int]) -> None:
        self.params = params
        self.generator = torch.Generator().manual_seed(seed)
        self.prompt_ids = prompt_ids
        self.generated_ids: list[int] = []

    def pick(self, logits: torch.Tensor) -> tuple[int, float]:
        """Choose a token from a 1-D float tensor of logits; return it and its logprob."""
        params = self.params
        scores = logits.float()
        if params.repetition_penalty != 1.0:
            seen = torch.tensor(sorted(set(self.prompt_ids + self.generated_ids)))
            picked = scores[seen]
            scores = scores.clone()
            scores[seen] = torch.where(
                picked < 0,
                picked * params.repetition_penalty,
                picked / params.repetition_penalty,
            )
        if self.generated_ids and (params.presence_penalty or params.frequency_penalty):
            counted = Counter(self.generated_ids)
            ids = torch.tensor(list(counted.keys()))
            counts = torch.tensor(list(counted.values()), dtype=scores.dtype)
            scores = scores.clone()
            scores[ids] -= params.presence_penalty + params.frequency_penalty * counts
        logprobs = torch.log_softmax(scores, dim=-1)
        if params.is_greedy:
            token = int(torch.argmax(scores).item())
        else:
            token = self._sample(scores)
        self.generated_ids.append(token)
        return token, float(logprobs[token].item())

    def _sample(self, scores: torch.Tensor) -> int:
        params = self.params
        scores = scores / params.temperature
        if params.top_k > 0 and params.top_k < scores.numel():
            threshold = torch.topk(scores, params.top_k).values[-1]
            scores = scores.masked_fill(scores < threshold, float("-inf"))
        if params.top_p < 1.0:
            sorted_scores, order = torch.sort(scores, descending=True)
            cumulative = torch.softmax(sorted_scores, dim=-1).cumsum(dim=-1)
            # Keep the smallest prefix whose mass reaches top_p (always the first token).
            drop = cumulative - torch.softmax(sorted_scores, dim=-1) >= params.top_p
            scores = scores.clone()
            scores[order[drop]] = float("-inf")
        probabilities = torch.softmax(scores, dim=-1)
        return int(torch.multinomial(probabilities, 1, generator=self.generator).item())
