"""Upstream Kaito's own endpoints: the legacy ``POST /chat``, ``/health`` and ``/metrics``.

``/chat`` keeps upstream's request shape (``prompt`` or ``messages``,
``return_full_text``, ``generate_kwargs`` with transformers' names and defaults:
``max_length`` 200 counting the prompt, ``do_sample`` true, ``top_k`` 10) and answers
``{"Result": ...}``. A request without a prompt gets upstream's exact 400
``{"detail": "Text generation parameter prompt required"}``; invalid fields get a
FastAPI-style 422, as upstream's FastAPI server gave. One deliberate difference: a
``prompt`` is wrapped in the model's chat template as a user turn when the tokenizer has
one (instruct models otherwise often answer a bare question with nothing);
``"raw_prompt": true`` sends it verbatim, as upstream did.
"""

from __future__ import annotations

from contextlib import aclosing
from typing import Literal

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST
from pydantic import BaseModel, ConfigDict, Field

from runtime.serving.errors import InvalidRequest
from runtime.serving.generation import FinishEvent, GenerationRequest, SamplingParams
from runtime.serving.http_common import (
    BACKEND_KEY,
    METRICS_KEY,
    first_event,
    parse_body,
    resolve_adapter,
)

PROMPT_REQUIRED = "Text generation parameter prompt required"


class GenerateKwargs(BaseModel):
    """transformers ``generate`` arguments; unknown keys are accepted, as upstream did."""

    model_config = ConfigDict(extra="allow")

    max_length: int = Field(default=200, ge=1)
    max_new_tokens: int | None = Field(default=None, ge=1)
    min_length: int = Field(default=0, ge=0)
    do_sample: bool = True
    early_stopping: bool = False
    num_beams: int = Field(default=1, ge=1)
    temperature: float = Field(default=1.0, ge=0.0)
    top_k: int = Field(default=10, ge=0)
    top_p: float = Field(default=1.0, gt=0.0, le=1.0)
    typical_p: float = Field(default=1.0, gt=0.0, le=1.0)
    repetition_penalty: float = Field(default=1.0, gt=0.0)
    num_return_sequences: int = Field(default=1, ge=1)
    stop_strings: str | list[str] | None = None
    seed: int | None = Field(default=None, ge=0, le=2**63 - 1)

    def sampling(self, prompt_tokens: int) -> SamplingParams:
        """The engine's parameters; ``max_length`` counts the prompt, as in transformers."""
        if self.num_beams != 1:
            raise InvalidRequest("beam search (num_beams > 1) is not supported")
        if self.num_return_sequences != 1:
            raise InvalidRequest("only num_return_sequences=1 is supported")
        if self.typical_p != 1.0:
            raise InvalidRequest("typical_p is not supported")
        if self.max_new_tokens is not None:
            budget = self.max_new_tokens
        else:
            budget = max(1, self.max_length - prompt_tokens)
        stop = [self.stop_strings] if isinstance(self.stop_strings, str) else (
            self.stop_strings or [])
        return SamplingParams(
            max_new_tokens=budget,
            # max_length caps the total length, as in transformers: never beyond context
            is_budget_default=self.max_new_tokens is None,
            do_sample=self.do_sample,
            temperature=self.temperature,
            top_k=self.top_k,
            top_p=self.top_p,
            repetition_penalty=self.repetition_penalty,
            stop=tuple(stop),
            seed=self.seed,
        )


class ChatRequestMessage(BaseModel):
    """One conversation message."""

    role: Literal["system", "user", "assistant"]
    content: str


class ChatRequest(BaseModel):
    """Upstream's ``UnifiedRequestModel``, plus an optional ``model`` to pick an adapter."""

    prompt: str | None = None
    messages: list[ChatRequestMessage] | None = None
    return_full_text: bool = True
    clean_up_tokenization_spaces: bool = False
    prefix: str | None = None
    handle_long_generation: str | None = None
    generate_kwargs: GenerateKwargs = Field(default_factory=GenerateKwargs)
    model: str | None = None
    raw_prompt: bool = False


async def chat(request: web.Request) -> web.Response:
    """``POST /chat``."""
    body = await parse_body(request, ChatRequest)
    backend = request.app[BACKEND_KEY]
    adapter = resolve_adapter(backend, body.model)
    if body.prompt:
        text = (body.prefix or "") + body.prompt
        # Instruct models answer a bare question only inside their chat template; the
        # echoed prompt (return_full_text) stays the user's text either way.
        model_input = text if body.raw_prompt else backend.format_prompt(text)
        is_conversation = False
    elif body.messages:
        text = model_input = backend.format_chat([m.model_dump() for m in body.messages])
        is_conversation = True
    else:
        raise InvalidRequest(PROMPT_REQUIRED)
    params = body.generate_kwargs.sampling(len(await backend.tokenize(model_input)))
    generation = GenerationRequest(model_input, params, adapter)
    async with aclosing(backend.generate(generation)) as events:
        event = await first_event(events)
        while not isinstance(event, FinishEvent):
            event = await anext(events)
    if is_conversation or not body.return_full_text:
        return web.json_response({"Result": event.text})
    separator = "" if body.raw_prompt or event.text[:1].isspace() else "\n"
    return web.json_response({"Result": text + separator + event.text})


async def health(request: web.Request) -> web.Response:
    """``GET /health``: 200 once the model serves, 503 while loading or after failure."""
    backend = request.app[BACKEND_KEY]
    if backend.is_ready:
        return web.json_response({"status": "Healthy"})
    problem = backend.problem
    if problem is None:
        return web.json_response({"status": "Loading"}, status=503)
    return web.json_response({"status": "Unhealthy", "detail": problem}, status=503)


async def metrics(request: web.Request) -> web.Response:
    """``GET /metrics``: Prometheus text format."""
    body = request.app[METRICS_KEY].render()
    response = web.Response(body=body)
    response.headers["Content-Type"] = CONTENT_TYPE_LATEST
    return response


def add_routes(app: web.Application) -> None:
    """Register the Kaito routes."""
    app.router.add_post("/chat", chat)
    app.router.add_get("/health", health)
    app.router.add_get("/metrics", metrics)
