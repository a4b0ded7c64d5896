"""The local backend: the model loaded in this process, driven by the batching engine.

Loading runs in a thread so the server answers ``/health`` (503) meanwhile. ``generate``
bridges the engine's worker thread to asyncio: the worker pushes events into an
``asyncio.Queue`` with ``call_soon_threadsafe``; leaving the iterator early (client gone,
handler cancelled) cancels the sequence, which frees its batch row at the next step.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncGenerator, Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from runtime.serving.engine import BatchModel, Engine, EngineMetrics, SequenceHandle
from runtime.serving.errors import GenerationFailed, InvalidRequest, NotReady, UnknownModel
from runtime.serving.generation import (
    FinishEvent,
    GenerationEvent,
    GenerationRequest,
    ModelInfo,
)
from runtime.serving.loader import AdapterSpec, load_batch_model

log = logging.getLogger(__name__)


@dataclass
class LocalBackendOptions:
    """How to load and schedule the local model."""

    model: str
    adapters: list[AdapterSpec] = field(default_factory=list)
    served_model_name: str | None = None
    default_model: str | None = None
    max_batch_size: int = 16
    max_queue: int = 64
    max_context_tokens: int | None = None
    device: str | None = None
    dtype: str = "auto"  # runtime.precision: auto = what the device computes fast
    torch_threads: int | None = None


class LocalBackend:
    """Implements ``generation.Backend`` with an in-process model."""

    def __init__(
        self,
        options: LocalBackendOptions,
        metrics: EngineMetrics,
        *,
        loader: Callable[[], BatchModel] | None = None,
    ) -> None:
        self._options = options
        self._loader = loader or self._load
        self._metrics = metrics
        self._engine: Engine | None = None
        self._info: ModelInfo | None = None
        self.load_error: str | None = None

    @property
    def is_ready(self) -> bool:
        """True once loaded and while the engine thread is healthy."""
        return self._engine is not None and self._engine.failure is None

    @property
    def problem(self) -> str | None:
        """Why the backend is not ready, when it failed."""
        if self.load_error is not None:
            return self.load_error
        if self._engine is not None and self._engine.failure is not None:
            return f"the engine failed: {self._engine.failure}"
        return None

    @property
    def info(self) -> ModelInfo:
        """What is served."""
        if self._info is None:
            raise NotReady("the model is still loading")
        return self._info

    @property
    def engine(self) -> Engine | None:
        """The engine, once loaded."""
        return self._engine

    async def start(self) -> None:
        """Load the model (in a thread) and start the engine."""
        options = self._options
        try:
            model = await asyncio.to_thread(self._loader)
        except Exception as error:
            self.load_error = str(error) or type(error).__name__
            log.exception("model failed to load", extra={"model": options.model})
            return
        name = options.served_model_name or Path(options.model).name
        adapter_names = tuple(a.name for a in options.adapters)
        if model.combined_adapter is not None:
            adapter_names += (model.combined_adapter,)
        if options.default_model is None:
            # As upstream: the adapters apply to every request that names no model.
            default_adapter = adapter_names[0] if len(adapter_names) == 1 else (
                model.combined_adapter)
        elif options.default_model == name:
            default_adapter = None
        elif options.default_model in adapter_names:
            default_adapter = options.default_model
        else:
            self.load_error = (
                f"default model {options.default_model!r} is neither the base model"
                f" {name!r} nor an adapter ({', '.join(adapter_names) or 'none'})"
            )
            return
        engine = Engine(
            model,
            max_batch_size=options.max_batch_size,
            max_queue=options.max_queue,
            metrics=self._metrics,
        )
        engine.start()
        self._info = ModelInfo(
            base_model_id=name,
            adapter_names=adapter_names,
            default_adapter=default_adapter,
            max_context_tokens=model.max_context_tokens,
            max_batch_size=options.max_batch_size,
            max_queue=options.max_queue,
            dtype=model.dtype_name,
            device=model.device_name,
            placement=dict(model.placement),
        )
        self._engine = engine

    def _load(self) -> BatchModel:
        import torch

        from runtime.base_model import resolve_model_path

        if self._options.torch_threads:
            torch.set_num_threads(self._options.torch_threads)
        path = resolve_model_path(self._options.model)
        model: BatchModel = load_batch_model(
            path,
            self._options.adapters,
            device=self._options.device,
            dtype=self._options.dtype,
            max_context_tokens=self._options.max_context_tokens,
        )
        return model

    async def stop(self) -> None:
        """Stop the engine thread (pending generations finish as cancelled)."""
        if self._engine is not None:
            await asyncio.to_thread(self._engine.stop)

    async def tokenize(self, text: str) -> list[tuple[int, str]]:
        """``text``'s tokens with the served tokenizer."""
        model = self._require_engine().model

        def pairs() -> list[tuple[int, str]]:
            return [(token_id, model.decode([token_id])) for token_id in model.encode(text)]

        return await asyncio.to_thread(pairs)

    def format_prompt(self, text: str) -> str:
        """Wrap ``text`` as a user turn when the tokenizer has a chat template."""
        if not self._require_engine().model.has_chat_template:
            return text
        return self.format_chat([{"role": "user", "content": text}])

    def format_chat(self, messages: Sequence[dict[str, str]]) -> str:
        """Apply the tokenizer's chat template, ending with the assistant's turn."""
        model = self._require_engine().model
        try:
            return model.render_chat(messages)
        except Exception as error:  # jinja raises its own errors for bad conversations
            raise InvalidRequest(f"cannot apply the chat template: {error}") from error

    async def generate(self, request: GenerationRequest) -> AsyncGenerator[GenerationEvent, None]:
        """Submit to the engine and relay its events until the finish event."""
        engine = self._require_engine()
        if request.adapter is not None and request.adapter not in self.info.adapter_names:
            raise UnknownModel(f"unknown adapter {request.adapter!r}", param="model")
        loop = asyncio.get_running_loop()
        queue: asyncio.Queue[GenerationEvent] = asyncio.Queue()

        def sink(event: GenerationEvent) -> None:
            try:
                loop.call_soon_threadsafe(queue.put_nowait, event)
            except RuntimeError:  # the loop is closed: nobody is listening any more
                pass

        # Tokenizing a long prompt blocks, so submission runs in a thread; if we are
        # cancelled meanwhile, the sequence is cancelled as soon as it exists.
        submission = asyncio.ensure_future(asyncio.to_thread(
            engine.submit, request.prompt, request.params, request.adapter, sink))
        try:
            handle = await asyncio.shield(submission)
        except asyncio.CancelledError:
            submission.add_done_callback(_cancel_submitted)
            raise
        is_finished = False
        try:
            while not is_finished:
                event = await queue.get()
                is_finished = isinstance(event, FinishEvent)
                if isinstance(event, FinishEvent) and event.reason == "cancelled":
                    # Nobody here cancelled it: the engine stopped or failed under us.
                    raise GenerationFailed(self.problem or "the server is shutting down")
                yield event
        finally:
            if not is_finished:
                handle.cancel()

    def _require_engine(self) -> Engine:
        if self._engine is None:
            raise NotReady(self.load_error or "the model is still loading")
        if self._engine.failure is not None:
            raise NotReady(f"the engine failed: {self._engine.failure}")
        return self._engine


def _cancel_submitted(submission: asyncio.Future[SequenceHandle]) -> None:
    if not submission.cancelled() and submission.exception() is None:
        submission.result().cancel()
