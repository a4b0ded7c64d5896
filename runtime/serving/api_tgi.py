"""The text-generation-inference API: ``/generate``, ``/generate_stream``, ``/``, ``/info``.

Enough of TGI for its ``text_generation`` Python client: that client posts to the base
URL (TGI's compat route, which answers a one-element list, or SSE when ``stream``) and
always asks for ``details``. Validation follows TGI: failures are 422 with
``error_type: validation``, overload is 429 with ``error_type: overloaded``.
"""

from __future__ import annotations

from contextlib import aclosing
from typing import Any

from aiohttp import web
from pydantic import BaseModel, ConfigDict, Field

from runtime.serving.errors import InvalidRequest
from runtime.serving.generation import (
    GenerationEvent,
    GenerationRequest,
    SamplingParams,
    TokenEvent,
)
from runtime.serving.http_common import (
    BACKEND_KEY,
    DEFAULT_MAX_TOKENS_KEY,
    errors_as_events,
    first_event,
    parse_body,
    resolve_adapter,
    send_sse,
    start_sse,
)

VERSION = "2.4.1-kaito"  # the TGI API version this mimics


class TGIParameters(BaseModel):
    """TGI's ``parameters`` object (unset fields are ``null`` from the client)."""

    model_config = ConfigDict(strict=True, extra="ignore")

    best_of: int | None = Field(default=None, ge=1)
    decoder_input_details: bool = False
    details: bool = False
    do_sample: bool = False
    frequency_penalty: float | None = Field(default=None, ge=-2.0, le=2.0)
    max_new_tokens: int | None = Field(default=None, ge=1)
    repetition_penalty: float | None = Field(default=None, gt=0.0)
    return_full_text: bool | None = False
    seed: int | None = Field(default=None, ge=0, le=2**63 - 1)
    stop: list[str] = Field(default_factory=list)
    temperature: float | None = Field(default=None, gt=0.0)
    top_k: int | None = Field(default=None, gt=0)
    top_n_tokens: int | None = Field(default=None, ge=0)
    top_p: float | None = Field(default=None, gt=0.0, lt=1.0)
    truncate: int | None = None
    typical_p: float | None = None
    watermark: bool = False
    grammar: Any = None
    adapter_id: str | None = None

    def sampling(self, default_max_tokens: int) -> SamplingParams:
        """The engine's parameters; TGI features we lack are validation errors."""
        if self.best_of not in (None, 1):
            raise InvalidRequest("best_of > 1 is not supported", param="best_of")
        for name in ("truncate", "typical_p", "grammar"):
            if getattr(self, name) is not None:
                raise InvalidRequest(f"{name} is not supported", param=name)
        if self.watermark:
            raise InvalidRequest("watermark is not supported", param="watermark")
        if self.top_n_tokens:
            raise InvalidRequest("top_n_tokens is not supported", param="top_n_tokens")
        is_sampling = self.do_sample or self.temperature not in (None, 1.0) or (
            self.top_k is not None or self.top_p is not None)
        return SamplingParams(
            max_new_tokens=self.max_new_tokens or default_max_tokens,
            is_budget_default=self.max_new_tokens is None,
            do_sample=is_sampling,
            temperature=self.temperature or 1.0,
            top_k=self.top_k or 0,
            top_p=self.top_p or 1.0,
            repetition_penalty=self.repetition_penalty or 1.0,
            frequency_penalty=self.frequency_penalty or 0.0,
            stop=tuple(self.stop),
            seed=self.seed,
        )


class TGIRequest(BaseModel):
    """``POST /generate`` (and ``/generate_stream``, ``/``)."""

    model_config = ConfigDict(strict=True, extra="ignore")

    inputs: str = Field(min_length=1)
    parameters: TGIParameters = Field(default_factory=TGIParameters)
    stream: bool = False


def _token(event: TokenEvent) -> dict[str, Any]:
    return {"id": event.token_id, "text": event.text, "logprob": event.logprob,
            "special": event.is_special}


async def _run(
    request: web.Request, body: TGIRequest, *, stream: bool
) -> dict[str, Any] | web.StreamResponse:
    backend = request.app[BACKEND_KEY]
    parameters = body.parameters
    adapter = resolve_adapter(backend, parameters.adapter_id)
    params = parameters.sampling(request.app[DEFAULT_MAX_TOKENS_KEY])
    prefix = body.inputs if parameters.return_full_text else ""
    generation = GenerationRequest(body.inputs, params, adapter)
    async with aclosing(backend.generate(generation)) as events:
        first = await first_event(events)
        if not stream:
            tokens: list[dict[str, Any]] = []
            event: GenerationEvent = first
            while isinstance(event, TokenEvent):
                tokens.append(_token(event))
                event = await anext(events)
            answer: dict[str, Any] = {"generated_text": prefix + event.text}
            if parameters.details:
                answer["details"] = {
                    "finish_reason": event.reason,
                    "generated_tokens": event.generated_tokens,
                    "seed": event.seed,
                    "prefill": [],
                    "tokens": tokens,
                    "top_tokens": None,
                    "best_of_sequences": None,
                }
            return answer
        response = await start_sse(request)
        async with errors_as_events(response, "tgi"):
            index = 0
            pending: TokenEvent | None = None
            event = first
            while True:
                if isinstance(event, TokenEvent):
                    if pending is not None:
                        index += 1
                        await send_sse(response, {"index": index, "token": _token(pending),
                                                  "top_tokens": None, "generated_text": None,
                                                  "details": None})
                    pending = event
                else:
                    # The last token carries the whole text and the details, as in TGI.
                    details = {"finish_reason": event.reason,
                               "generated_tokens": event.generated_tokens,
                               "seed": event.seed, "input_length": event.prompt_tokens}
                    if pending is not None:
                        await send_sse(response, {"index": index + 1, "token": _token(pending),
                                                  "top_tokens": None,
                                                  "generated_text": prefix + event.text,
                                                  "details": details})
                    break
                event = await anext(events)
        await response.write_eof()
        return response


async def generate(request: web.Request) -> web.StreamResponse:
    """``POST /generate``: one JSON answer."""
    body = await parse_body(request, TGIRequest)
    answer = await _run(request, body, stream=False)
    assert isinstance(answer, dict)
    return web.json_response(answer)


async def generate_stream(request: web.Request) -> web.StreamResponse:
    """``POST /generate_stream``: server-sent events, one per token."""
    body = await parse_body(request, TGIRequest)
    response = await _run(request, body, stream=True)
    assert isinstance(response, web.StreamResponse)
    return response


async def compat_generate(request: web.Request) -> web.StreamResponse:
    """``POST /``: TGI's compat route (a list of one answer, or SSE when ``stream``)."""
    body = await parse_body(request, TGIRequest)
    answer = await _run(request, body, stream=body.stream)
    if isinstance(answer, web.StreamResponse):
        return answer
    return web.json_response([answer])


async def info(request: web.Request) -> web.Response:
    """``GET /info``: the served model and limits."""
    model = request.app[BACKEND_KEY].info
    return web.json_response({
        "model_id": model.base_model_id,
        "model_sha": None,
        "model_dtype": model.dtype,
        "model_device_type": model.device,
        "model_placement": model.placement,
        "model_pipeline_tag": "text-generation",
        "max_concurrent_requests": model.max_batch_size + model.max_queue,
        "max_best_of": 1,
        "max_stop_sequences": 16,
        "max_input_tokens": model.max_context_tokens - 1,
        "max_total_tokens": model.max_context_tokens,
        "max_batch_size": model.max_batch_size,
        "validation_workers": 1,
        "max_client_batch_size": 1,
        "router": "kaito-serving",
        "version": VERSION,
        "sha": None,
        "docker_label": None,
        "adapters": list(model.adapter_names),
        "default_adapter": model.default_adapter,
    })


class TokenizeRequest(BaseModel):
    """``POST /tokenize``."""

    model_config = ConfigDict(strict=True, extra="ignore")

    inputs: str = Field(min_length=1)


async def tokenize(request: web.Request) -> web.Response:
    """``POST /tokenize``: the prompt's tokens (as TGI, ids and texts)."""
    body = await parse_body(request, TokenizeRequest)
    tokens = await request.app[BACKEND_KEY].tokenize(body.inputs)
    return web.json_response([{"id": token_id, "text": text} for token_id, text in tokens])


def add_routes(app: web.Application) -> None:
    """Register the TGI routes."""
    app.router.add_post("/generate", generate)
    app.router.add_post("/generate_stream", generate_stream)
    app.router.add_post("/", compat_generate)
    app.router.add_get("/info", info)
    app.router.add_post("/tokenize", tokenize)
