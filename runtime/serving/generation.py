"""What every backend takes and gives: sampling parameters, requests and events.

The HTTP layer builds a :class:`GenerationRequest` from whichever API dialect it was
called with and reads back a stream of :class:`TokenEvent` ending in one
:class:`FinishEvent`. Backends (the local batching engine, the TGI proxy) implement
:class:`Backend`.
"""

from __future__ import annotations

from collections.abc import AsyncGenerator, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal, Protocol

from runtime.serving.errors import InvalidRequest

FinishReason = Literal["length", "eos_token", "stop_sequence", "cancelled"]


@dataclass(frozen=True)
class SamplingParams:
    """How to pick tokens and when to stop; validated on construction."""

    max_new_tokens: int
    do_sample: bool = False
    temperature: float = 1.0
    top_k: int = 0
    top_p: float = 1.0
    repetition_penalty: float = 1.0
    presence_penalty: float = 0.0
    frequency_penalty: float = 0.0
    stop: tuple[str, ...] = ()
    seed: int | None = None
    is_budget_default: bool = False  # max_new_tokens is a server default, not asked for

    def __post_init__(self) -> None:
        if self.max_new_tokens < 1:
            raise InvalidRequest("max_new_tokens must be at least 1", param="max_tokens")
        if self.temperature < 0:
            raise InvalidRequest("temperature must be >= 0", param="temperature")
        if self.top_k < 0:
            raise InvalidRequest("top_k must be >= 0", param="top_k")
        if not 0 < self.top_p <= 1:
            raise InvalidRequest("top_p must be in (0, 1]", param="top_p")
        if self.repetition_penalty <= 0:
            raise InvalidRequest("repetition_penalty must be > 0", param="repetition_penalty")
        if not -2 <= self.presence_penalty <= 2:
            raise InvalidRequest("presence_penalty must be in [-2, 2]", param="presence_penalty")
        if not -2 <= self.frequency_penalty <= 2:
            raise InvalidRequest(
                "frequency_penalty must be in [-2, 2]", param="frequency_penalty"
            )
        if any(not s for s in self.stop):
            raise InvalidRequest("stop sequences must not be empty", param="stop")
        if len(self.stop) > 16:
            raise InvalidRequest("at most 16 stop sequences are allowed", param="stop")

    @property
    def is_greedy(self) -> bool:
        """True when sampling degenerates to argmax."""
        return not self.do_sample or self.temperature == 0 or self.top_k == 1


@dataclass(frozen=True)
class GenerationRequest:
    """One prompt to complete, with the adapter to use (``None`` = the base model)."""

    prompt: str
    params: SamplingParams
    adapter: str | None = None


@dataclass(frozen=True)
class TokenEvent:
    """One generated token and the text it adds (may be empty while bytes are partial)."""

    token_id: int
    text: str
    logprob: float
    is_special: bool = False


@dataclass(frozen=True)
class FinishEvent:
    """The end of a generation."""

    reason: FinishReason
    prompt_tokens: int
    generated_tokens: int
    text: str
    seed: int | None = None


GenerationEvent = TokenEvent | FinishEvent


@dataclass(frozen=True)
class ModelInfo:
    """What a backend serves: the base model id, adapters and limits."""

    base_model_id: str
    adapter_names: tuple[str, ...] = ()
    default_adapter: str | None = None  # used by requests that name no model
    max_context_tokens: int = 2048
    max_batch_size: int = 1
    max_queue: int = 0
    dtype: str = "float32"
    device: str = "cpu"
    placement: dict[str, Any] = field(default_factory=dict)  # loader.Placement.describe
    extra: dict[str, str] = field(default_factory=dict)


class Backend(Protocol):
    """Something that turns prompts into tokens."""

    async def start(self) -> None:
        """Get ready (load weights, connect); failures are reported by ``problem``."""
        ...

    async def stop(self) -> None:
        """Release resources; pending generations end."""
        ...

    @property
    def is_ready(self) -> bool:
        """True once the backend can take requests."""
        ...

    @property
    def problem(self) -> str | None:
        """Why the backend is not ready, when it failed (``None`` while loading)."""
        ...

    @property
    def info(self) -> ModelInfo:
        """What is served (valid once ready)."""
        ...

    async def tokenize(self, text: str) -> list[tuple[int, str]]:
        """``text``'s tokens as (id, text) pairs."""
        ...

    def format_chat(self, messages: Sequence[dict[str, str]]) -> str:
        """Render chat messages as a prompt ending where the assistant reply starts."""
        ...

    def format_prompt(self, text: str) -> str:
        """``text`` as a user turn if the model has a chat template, else unchanged."""
        ...

    def generate(self, request: GenerationRequest) -> AsyncGenerator[GenerationEvent, None]:
        """Stream the events of one generation; closing the iterator cancels it."""
        ...
