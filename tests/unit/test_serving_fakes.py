"""Fakes shared by the serving unit tests (no tests here).

``FakeModel`` implements ``engine.BatchModel`` deterministically and records every
prefill/decode batch; ``Collector`` is an engine sink that remembers events.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Collection, Sequence
from typing import Any

from runtime.serving.engine import Sampled, SequenceSpec
from runtime.serving.generation import FinishEvent, GenerationEvent, TokenEvent

EOS = 0


class FakeModel:
    """Characters are tokens; each sequence "generates" the letters after its last one.

    A prompt ending in ``!`` answers EOS at once. ``step_seconds`` slows each model call
    so concurrent submissions have time to queue up.
    """

    eos_token_ids = frozenset({EOS})
    dtype_name = "float32"
    device_name = "cpu"
    has_chat_template = True
    combined_adapter: str | None = None

    def __init__(self, max_context_tokens: int = 64, step_seconds: float = 0.0) -> None:
        self.max_context_tokens = max_context_tokens
        self.placement: dict[str, Any] = {"device": "cpu", "sharded": False, "gpus": 0}
        self.step_seconds = step_seconds
        self.rows: dict[int, int] = {}
        self.decode_batches: list[int] = []
        self.prefill_batches: list[int] = []
        self.released: list[int] = []
        self.adapters: list[str | None] = []
        self.gate = threading.Event()
        self.gate.set()

    def render_chat(self, messages: Sequence[dict[str, str]]) -> str:
        return "".join(f"<{m['role']}>{m['content']}" for m in messages) + "<assistant>"

    def encode(self, text: str) -> list[int]:
        return [ord(c) for c in text]

    def decode(self, token_ids: Sequence[int]) -> str:
        return "".join(chr(t) for t in token_ids if t != EOS)

    def _next(self, last: int) -> int:
        if last == ord("!"):
            return EOS
        return ord("a") + (last - ord("a") + 1) % 26 if ord("a") <= last <= ord("z") else ord("a")

    def prefill(self, sequences: Sequence[SequenceSpec]) -> list[Sampled]:
        self.gate.wait()
        time.sleep(self.step_seconds)
        self.prefill_batches.append(len(sequences))
        out = []
        for spec in sequences:
            self.adapters.append(spec.adapter)
            token = self._next(spec.prompt_ids[-1])
            self.rows[spec.seq_id] = token
            out.append(Sampled(token, -0.5))
        return out

    def decode_step(self) -> dict[int, Sampled]:
        self.gate.wait()
        time.sleep(self.step_seconds)
        self.decode_batches.append(len(self.rows))
        out = {}
        for seq_id, last in self.rows.items():
            token = self._next(last)
            self.rows[seq_id] = token
            out[seq_id] = Sampled(token, -0.25)
        return out

    def release(self, seq_ids: Collection[int]) -> None:
        for seq_id in seq_ids:
            del self.rows[seq_id]
            self.released.append(seq_id)


class Collector:
    """A sink that remembers events and signals the finish."""

    def __init__(self) -> None:
        self.events: list[GenerationEvent] = []
        self.done = threading.Event()

    def __call__(self, event: GenerationEvent) -> None:
        self.events.append(event)
        if isinstance(event, FinishEvent):
            self.done.set()

    def finish(self, timeout: float = 10.0) -> FinishEvent:
        assert self.done.wait(timeout), "generation did not finish"
        last = self.events[-1]
        assert isinstance(last, FinishEvent)
        return last

    def streamed_text(self) -> str:
        return "".join(e.text for e in self.events if isinstance(e, TokenEvent))
