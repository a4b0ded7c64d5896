"""The batching engine: a worker thread that schedules sequences step by step.

Requests wait in a bounded queue (full → :class:`Overloaded`, HTTP 429). Each loop the
worker admits waiting sequences into the running batch (prefill), then advances every
running sequence by one token (decode). Finished or cancelled sequences leave the batch
between steps, so new requests never wait for a whole batch to finish (continuous
batching). All torch work sits behind :class:`BatchModel`; this module holds no tensors,
which lets unit tests drive it with a fake model.
"""

from __future__ import annotations

import dataclasses
import logging
import random
import threading
import time
from collections import deque
from collections.abc import Callable, Collection, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

from runtime.serving.detokenize import TextTracker
from runtime.serving.errors import InvalidRequest, NotReady, Overloaded
from runtime.serving.generation import (
    FinishEvent,
    FinishReason,
    GenerationEvent,
    SamplingParams,
    TokenEvent,
)

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Sampled:
    """A token the model picked for one sequence, with its log-probability."""

    token_id: int
    logprob: float


@dataclass
class SequenceSpec:
    """What the model needs to know to prefill and sample a sequence."""

    seq_id: int
    prompt_ids: list[int]
    params: SamplingParams
    adapter: str | None
    seed: int


class BatchModel(Protocol):
    """The tensor side of the engine: one running batch with a KV cache per sequence."""

    max_context_tokens: int
    eos_token_ids: frozenset[int]
    dtype_name: str
    device_name: str
    placement: dict[str, Any]  # where the weights are (loader.Placement.describe)
    has_chat_template: bool
    combined_adapter: str | None  # an adapter applying all the others, if loaded

    def render_chat(self, messages: Sequence[dict[str, str]]) -> str:
        """Apply the chat template, ending where the assistant's reply starts."""
        ...

    def encode(self, text: str) -> list[int]:
        """Tokenize a prompt."""
        ...

    def decode(self, token_ids: Sequence[int]) -> str:
        """Detokenize, skipping special tokens."""
        ...

    def prefill(self, sequences: Sequence[SequenceSpec]) -> list[Sampled]:
        """Add sequences to the batch; return each one's first generated token."""
        ...

    def decode_step(self) -> dict[int, Sampled]:
        """Generate one token for every sequence in the batch, keyed by ``seq_id``."""
        ...

    def release(self, seq_ids: Collection[int]) -> None:
        """Drop sequences (and their KV cache) from the batch."""
        ...


class EngineMetrics(Protocol):
    """What the engine reports; implemented over prometheus_client in ``metrics``."""

    def observe_queue(self, waiting: int, running: int) -> None: ...

    def observe_batch(self, size: int) -> None: ...

    def observe_first_token(self, seconds: float) -> None: ...

    def observe_finished(self, prompt_tokens: int, generated_tokens: int) -> None: ...


class NullMetrics:
    """Metrics that go nowhere."""

    def observe_queue(self, waiting: int, running: int) -> None:
        pass

    def observe_batch(self, size: int) -> None:
        pass

    def observe_first_token(self, seconds: float) -> None:
        pass

    def observe_finished(self, prompt_tokens: int, generated_tokens: int) -> None:
        pass


Sink = Callable[[GenerationEvent], None]


@dataclass(eq=False)
class _Sequence:
    spec: SequenceSpec
    sink: Sink
    tracker: TextTracker
    submitted_at: float
    generated: int = 0
    is_cancelled: bool = False
    is_first_token_seen: bool = False

    @property
    def seq_id(self) -> int:
        return self.spec.seq_id


@dataclass
class SequenceHandle:
    """Returned by :meth:`Engine.submit`; lets the caller cancel its generation."""

    _engine: Engine
    _sequence: _Sequence
    prompt_tokens: int = field(default=0)

    def cancel(self) -> None:
        """Stop generating (no-op once finished); the sink gets a ``cancelled`` finish."""
        self._engine._cancel(self._sequence)


class Engine:
    """Schedules sequences onto a :class:`BatchModel` from one worker thread."""

    def __init__(
        self,
        model: BatchModel,
        *,
        max_batch_size: int = 16,
        max_queue: int = 64,
        metrics: EngineMetrics | None = None,
    ) -> None:
        if max_batch_size < 1:
            raise ValueError("max_batch_size must be at least 1")
        if max_queue < 0:
            raise ValueError("max_queue must be >= 0")
        self.model = model
        self.max_batch_size = max_batch_size
        self.max_queue = max_queue
        self._metrics: EngineMetrics = metrics or NullMetrics()
        self._lock = threading.Condition()
        self._waiting: deque[_Sequence] = deque()
        self._running: dict[int, _Sequence] = {}
        self._next_id = 0
        self._is_stopping = False
        self._thread: threading.Thread | None = None
        self._to_release: list[int] = []
        self.failure: BaseException | None = None

    # -- public, any thread ---------------------------------------------------------

    def start(self) -> None:
        """Start the worker thread."""
        self._thread = threading.Thread(target=self._run, name="serving-engine", daemon=True)
        self._thread.start()

    def stop(self, timeout_seconds: float = 30.0) -> None:
        """Finish every sequence as cancelled and join the worker."""
        with self._lock:
            self._is_stopping = True
            self._lock.notify_all()
        if self._thread is not None:
            self._thread.join(timeout_seconds)

    @property
    def waiting_count(self) -> int:
        """Sequences queued but not yet in the batch."""
        return len(self._waiting)

    @property
    def running_count(self) -> int:
        """Sequences in the batch."""
        return len(self._running)

    def submit(
        self, prompt: str, params: SamplingParams, adapter: str | None, sink: Sink
    ) -> SequenceHandle:
        """Queue a prompt; ``sink`` gets events from the worker thread.

        Raises :class:`InvalidRequest` if the prompt cannot fit and :class:`Overloaded`
        when the waiting queue is full.
        """
        prompt_ids = self.model.encode(prompt)
        if not prompt_ids:
            raise InvalidRequest("the prompt is empty after tokenization", param="prompt")
        limit = self.model.max_context_tokens
        if len(prompt_ids) >= limit:
            raise InvalidRequest(
                f"the prompt has {len(prompt_ids)} tokens but the context holds {limit}",
                param="prompt",
            )
        if len(prompt_ids) + params.max_new_tokens > limit and params.is_budget_default:
            # The client asked for no particular length: stop at the context instead.
            params = dataclasses.replace(params, max_new_tokens=limit - len(prompt_ids))
        elif len(prompt_ids) + params.max_new_tokens > limit:
            raise InvalidRequest(
                f"the prompt ({len(prompt_ids)} tokens) plus the requested maximum of new"
                f" tokens ({params.max_new_tokens}) exceed the context of {limit} tokens",
                param="max_tokens",
            )
        seed = params.seed if params.seed is not None else random.getrandbits(63)
        with self._lock:
            if self._is_stopping or self.failure is not None:
                raise NotReady("the engine is not running")
            if len(self._waiting) >= self.max_queue + max(
                0, self.max_batch_size - len(self._running)
            ):
                raise Overloaded("the request queue is full; retry later")
            self._next_id += 1
            spec = SequenceSpec(self._next_id, prompt_ids, params, adapter, seed)
            sequence = _Sequence(
                spec, sink, TextTracker(self.model.decode, params.stop), time.monotonic()
            )
            self._waiting.append(sequence)
            self._metrics.observe_queue(len(self._waiting), len(self._running))
            self._lock.notify_all()
        return SequenceHandle(self, sequence, len(prompt_ids))

    # -- worker thread --------------------------------------------------------------

    def _cancel(self, sequence: _Sequence) -> None:
        with self._lock:
            sequence.is_cancelled = True
            self._lock.notify_all()

    def _run(self) -> None:
        try:
            while self._loop_once():
                pass
        except BaseException as error:  # the thread must report, never die silently
            log.exception("serving engine failed")
            self.failure = error
        finally:
            self._finish_all("cancelled")

    def _loop_once(self) -> bool:
        with self._lock:
            while not (self._waiting or self._running or self._is_stopping):
                self._lock.wait()
            if self._is_stopping:
                return False
            cancelled_waiting = [s for s in self._waiting if s.is_cancelled]
            for sequence in cancelled_waiting:
                self._waiting.remove(sequence)
            cancelled_running = [s for s in self._running.values() if s.is_cancelled]
            admitted: list[_Sequence] = []
            while self._waiting and len(self._running) < self.max_batch_size:
                sequence = self._waiting.popleft()
                admitted.append(sequence)
                self._running[sequence.seq_id] = sequence  # counts against capacity now
            self._metrics.observe_queue(len(self._waiting), len(self._running))
        for sequence in cancelled_waiting:
            self._finish(sequence, "cancelled", release=False)
        for sequence in cancelled_running:
            self._finish(sequence, "cancelled")
        self._release_finished()
        if admitted:
            sampled = self.model.prefill([s.spec for s in admitted])
            for sequence, token in zip(admitted, sampled, strict=True):
                self._on_token(sequence, token)
        elif self._running:
            self._metrics.observe_batch(len(self._running))
            for seq_id, token in self.model.decode_step().items():
                running = self._running.get(seq_id)
                if running is not None:
                    self._on_token(running, token)
        self._release_finished()
        return True

    def _release_finished(self) -> None:
        if self._to_release:
            self.model.release(self._to_release)
            self._to_release = []

    def _on_token(self, sequence: _Sequence, token: Sampled) -> None:
        if not sequence.is_first_token_seen:
            sequence.is_first_token_seen = True
            self._metrics.observe_first_token(time.monotonic() - sequence.submitted_at)
        sequence.generated += 1
        is_eos = token.token_id in self.model.eos_token_ids
        text = "" if is_eos else sequence.tracker.push(token.token_id)
        reason: FinishReason | None = None
        if sequence.tracker.is_stopped:
            reason = "stop_sequence"
        elif is_eos:
            reason = "eos_token"
        elif (
            sequence.generated >= sequence.spec.params.max_new_tokens
            or len(sequence.spec.prompt_ids) + sequence.generated >= self.model.max_context_tokens
        ):
            reason = "length"
        if reason is not None and reason != "stop_sequence":
            text += sequence.tracker.flush()
        sequence.sink(TokenEvent(token.token_id, text, token.logprob, is_special=is_eos))
        if reason is not None:
            self._finish(sequence, reason)

    def _finish(self, sequence: _Sequence, reason: FinishReason, *, release: bool = True) -> None:
        with self._lock:
            is_running = self._running.pop(sequence.seq_id, None) is not None
            self._metrics.observe_queue(len(self._waiting), len(self._running))
        if release and is_running:
            self._to_release.append(sequence.seq_id)
        if reason == "cancelled":
            sequence.tracker.flush()
        self._metrics.observe_finished(len(sequence.spec.prompt_ids), sequence.generated)
        sequence.sink(
            FinishEvent(
                reason,
                prompt_tokens=len(sequence.spec.prompt_ids),
                generated_tokens=sequence.generated,
                text=sequence.tracker.text,
                seed=sequence.spec.seed if sequence.spec.params.do_sample else None,
            )
        )

    def _finish_all(self, reason: FinishReason) -> None:
        with self._lock:
            leftovers = list(self._waiting) + list(self._running.values())
            self._waiting.clear()
            self._running.clear()
        for sequence in leftovers:
            self._finish(sequence, reason, release=False)
