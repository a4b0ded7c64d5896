"""The running batch on a Hugging Face causal LM: left-padded KV cache, one step at a time.

Every sequence in the batch keeps its own keys/values as a row of one left-padded cache.
New sequences are prefilled together (left-padded) and then concatenated onto the
running rows, padding whichever side is shorter on the left; finished sequences are cut
out with ``index_select`` and leading all-padding columns are trimmed. Position ids are
tracked per row, so padding never shifts a sequence's rotary positions.

The weights may be sharded over several GPUs (loader.Placement): inputs, the mask and
positions live on the input embeddings' device, and each layer's cache stays on that
layer's device (row selection moves its index there).

With PEFT adapters loaded, each row names its adapter and the forward pass uses PEFT's
mixed-batch LoRA (``adapter_names=[...]``), so rows with different adapters (or none)
share one batch without affecting each other.
"""

from __future__ import annotations

import threading
from collections.abc import Collection, Sequence
from typing import Any

import torch
import torch.nn.functional as F
from transformers import DynamicCache

from runtime.serving.engine import Sampled, SequenceSpec
from runtime.serving.sampling import SequenceSampler

BASE_ADAPTER = "__base__"  # PEFT's name for "no adapter" in a mixed batch


class HFBatchModel:
    """Implements ``engine.BatchModel`` over a transformers model (optionally PEFT)."""

    def __init__(
        self,
        model: Any,
        tokenizer: Any,
        *,
        max_context_tokens: int,
        eos_token_ids: frozenset[int],
        has_adapters: bool,
        placement: dict[str, Any] | None = None,
    ) -> None:
        self.model = model
        self.tokenizer = tokenizer
        self.max_context_tokens = max_context_tokens
        self.eos_token_ids = eos_token_ids
        self._has_adapters = has_adapters
        self.combined_adapter: str | None = None
        self._device = model.get_input_embeddings().weight.device
        self.placement = dict(placement or {"device": str(self._device), "sharded": False})
        pad = tokenizer.pad_token_id
        self._pad_id = int(pad if pad is not None else min(eos_token_ids))
        # Handlers tokenize while the worker detokenizes; the Rust tokenizer raises
        # "Already borrowed" if its state is touched from two threads at once.
        self._tokenizer_lock = threading.Lock()
        self._rows: list[int] = []
        self._adapters: list[str] = []
        self._samplers: dict[int, SequenceSampler] = {}
        self._cache: DynamicCache | None = None
        self._mask = torch.zeros((0, 0), dtype=torch.long, device=self._device)
        self._positions = torch.zeros((0,), dtype=torch.long, device=self._device)
        self._last_tokens = torch.zeros((0,), dtype=torch.long, device=self._device)

    @property
    def dtype_name(self) -> str:
        """The weights' dtype, e.g. ``float32``."""
        return str(next(self.model.parameters()).dtype).removeprefix("torch.")

    @property
    def device_name(self) -> str:
        """``cpu`` or ``cuda``."""
        return str(self._device.type)

    @property
    def has_chat_template(self) -> bool:
        """Whether the tokenizer carries a chat template."""
        return bool(getattr(self.tokenizer, "chat_template", None))

    def render_chat(self, messages: Sequence[dict[str, str]]) -> str:
        """The tokenizer's chat template with the assistant turn opened."""
        with self._tokenizer_lock:
            return str(self.tokenizer.apply_chat_template(
                list(messages), tokenize=False, add_generation_prompt=True))

    @property
    def seq_ids(self) -> list[int]:
        """The sequences in the batch, in row order."""
        return list(self._rows)

    @property
    def batch_size(self) -> int:
        """Rows in the running batch."""
        return len(self._rows)

    @property
    def cache_length(self) -> int:
        """Columns of the (left-padded) KV cache."""
        return int(self._mask.shape[1])

    def encode(self, text: str) -> list[int]:
        """Tokenize without adding special tokens (chat templates carry their own)."""
        with self._tokenizer_lock:
            return list(self.tokenizer.encode(text, add_special_tokens=False))

    def decode(self, token_ids: Sequence[int]) -> str:
        """Detokenize, dropping special tokens."""
        with self._tokenizer_lock:
            return str(self.tokenizer.decode(list(token_ids), skip_special_tokens=True))

    @torch.inference_mode()
    def prefill(self, sequences: Sequence[SequenceSpec]) -> list[Sampled]:
        """Run the prompts of new sequences and append them to the running batch."""
        length = max(len(s.prompt_ids) for s in sequences)
        input_ids = torch.full((len(sequences), length), self._pad_id, dtype=torch.long)
        mask = torch.zeros((len(sequences), length), dtype=torch.long)
        for row, spec in enumerate(sequences):
            input_ids[row, length - len(spec.prompt_ids) :] = torch.tensor(spec.prompt_ids)
            mask[row, length - len(spec.prompt_ids) :] = 1
        input_ids, mask = input_ids.to(self._device), mask.to(self._device)
        positions = (mask.cumsum(dim=-1) - 1).clamp(min=0)
        adapters = [s.adapter or BASE_ADAPTER for s in sequences]
        cache = DynamicCache()
        logits = self._forward(input_ids, mask, positions, cache, adapters)
        picked: list[Sampled] = []
        for row, spec in enumerate(sequences):
            sampler = SequenceSampler(spec.params, spec.seed, spec.prompt_ids)
            self._samplers[spec.seq_id] = sampler
            picked.append(Sampled(*sampler.pick(logits[row])))
        new_last = torch.tensor([p.token_id for p in picked], device=self._device)
        new_positions = mask.sum(dim=-1)
        self._append(cache, mask, new_positions, new_last)
        self._rows.extend(s.seq_id for s in sequences)
        self._adapters.extend(adapters)
        return picked

    @torch.inference_mode()
    def decode_step(self) -> dict[int, Sampled]:
        """Feed every row its last token and pick the next one."""
        if not self._rows or self._cache is None:
            return {}
        ones = torch.ones((len(self._rows), 1), dtype=torch.long, device=self._device)
        self._mask = torch.cat([self._mask, ones], dim=1)
        logits = self._forward(
            self._last_tokens[:, None],
            self._mask,
            self._positions[:, None],
            self._cache,
            self._adapters,
        )
        picked: dict[int, Sampled] = {}
        for row, seq_id in enumerate(self._rows):
            picked[seq_id] = Sampled(*self._samplers[seq_id].pick(logits[row]))
        self._last_tokens = torch.tensor(
            [picked[s].token_id for s in self._rows], device=self._device
        )
        self._positions = self._positions + 1
        return picked

    def release(self, seq_ids: Collection[int]) -> None:
        """Remove rows and trim cache columns that only padding still uses."""
        gone = set(seq_ids)
        keep = [row for row, seq_id in enumerate(self._rows) if seq_id not in gone]
        for seq_id in gone:
            self._samplers.pop(seq_id, None)
        if len(keep) == len(self._rows):
            return
        self._rows = [self._rows[row] for row in keep]
        self._adapters = [self._adapters[row] for row in keep]
        if not keep or self._cache is None:
            self._cache = None
            self._mask = self._mask[:0, :0]
            self._positions = self._positions[:0]
            self._last_tokens = self._last_tokens[:0]
            return
        index = torch.tensor(keep, device=self._device)
        self._mask = self._mask.index_select(0, index)
        self._positions = self._positions.index_select(0, index)
        self._last_tokens = self._last_tokens.index_select(0, index)
        used = (self._mask.sum(dim=0) > 0).nonzero()
        start = int(used[0].item()) if used.numel() else 0
        self._mask = self._mask[:, start:]
        self._cache = DynamicCache(
            ddp_cache_data=[
                (
                    layer.keys.index_select(0, index.to(layer.keys.device))[:, :, start:, :],
                    layer.values.index_select(0, index.to(layer.values.device))[:, :, start:, :],
                )
                for layer in _layers(self._cache)
            ]
        )

    def _forward(
        self,
        input_ids: torch.Tensor,
        mask: torch.Tensor,
        positions: torch.Tensor,
        cache: DynamicCache,
        adapters: list[str],
    ) -> torch.Tensor:
        kwargs: dict[str, Any] = {}
        if self._has_adapters:
            kwargs["adapter_names"] = adapters
        output = self.model(
            input_ids=input_ids,
            attention_mask=mask,
            position_ids=positions,
            cache=cache,  # transformers >= 5.24 (past_key_values is deprecated)
            use_cache=True,
            logits_to_keep=1,
            **kwargs,
        )
        return output.logits[:, -1, :]  # type: ignore[no-any-return]

    def _append(
        self,
        cache: DynamicCache,
        mask: torch.Tensor,
        positions: torch.Tensor,
        last_tokens: torch.Tensor,
    ) -> None:
        if self._cache is None or not self._rows:
            self._cache, self._mask = cache, mask
            self._positions, self._last_tokens = positions, last_tokens
            return
        width = max(self.cache_length, int(mask.shape[1]))
        old_pad, new_pad = width - self.cache_length, width - int(mask.shape[1])

        def left(tensor: torch.Tensor, amount: int) -> torch.Tensor:
            return F.pad(tensor, (0, 0, amount, 0)) if amount else tensor

        self._cache = DynamicCache(
            ddp_cache_data=[
                (
                    torch.cat([left(old.keys, old_pad), left(new.keys, new_pad)]),
                    torch.cat([left(old.values, old_pad), left(new.values, new_pad)]),
                )
                for old, new in zip(_layers(self._cache), _layers(cache), strict=True)
            ]
        )
        self._mask = torch.cat([F.pad(self._mask, (old_pad, 0)), F.pad(mask, (new_pad, 0))])
        self._positions = torch.cat([self._positions, positions])
        self._last_tokens = torch.cat([self._last_tokens, last_tokens])


def _layers(cache: DynamicCache) -> list[Any]:
    """The cache's per-layer key/value holders (full-attention ``DynamicLayer``s)."""
    return list(cache.layers)
