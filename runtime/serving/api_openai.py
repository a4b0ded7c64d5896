"""The OpenAI-compatible API: ``/v1/chat/completions``, ``/v1/completions``, ``/v1/models``.

``model`` picks the base model or one adapter per request. Streaming answers are
server-sent events ending in ``data: [DONE]``; ``stream_options.include_usage`` adds a
final usage chunk. Parameters we cannot honour (``n`` > 1, tools, logprobs, ...) are
rejected with a 400 that names them rather than silently ignored.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import AsyncIterator
from contextlib import aclosing
from typing import Any, Literal

from aiohttp import web
from pydantic import BaseModel, ConfigDict, Field

from runtime.serving.errors import InvalidRequest
from runtime.serving.generation import (
    FinishEvent,
    FinishReason,
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


class _Strict(BaseModel):
    model_config = ConfigDict(strict=True, extra="ignore")


class TextPart(_Strict):
    """A text part of a multi-part message content."""

    type: Literal["text"]
    text: str


class ChatMessage(_Strict):
    """One message of the conversation."""

    role: Literal["system", "developer", "user", "assistant"]
    content: str | list[TextPart] | None = None

    def text(self) -> str:
        """The content as one string."""
        if self.content is None:
            return ""
        if isinstance(self.content, str):
            return self.content
        return "".join(part.text for part in self.content)


class StreamOptions(_Strict):
    """``stream_options``."""

    include_usage: bool = False


class _CommonRequest(_Strict):
    model: str = Field(min_length=1)
    max_tokens: int | None = Field(default=None, ge=1)
    temperature: float | None = Field(default=None, ge=0.0, le=2.0)
    top_p: float | None = Field(default=None, gt=0.0, le=1.0)
    n: int = Field(default=1, ge=1)
    stream: bool = False
    stream_options: StreamOptions | None = None
    stop: str | list[str] | None = None
    seed: int | None = None
    presence_penalty: float = Field(default=0.0, ge=-2.0, le=2.0)
    frequency_penalty: float = Field(default=0.0, ge=-2.0, le=2.0)
    logit_bias: dict[str, float] | None = None
    user: str | None = None

    def sampling(self, default_max_tokens: int, max_tokens: int | None = None) -> SamplingParams:
        """The engine's parameters, after rejecting what we cannot do."""
        if self.n != 1:
            raise InvalidRequest("only n=1 is supported", param="n")
        if self.logit_bias:
            raise InvalidRequest("logit_bias is not supported", param="logit_bias")
        stop = [self.stop] if isinstance(self.stop, str) else list(self.stop or [])
        temperature = 1.0 if self.temperature is None else self.temperature
        limit = max_tokens if max_tokens is not None else self.max_tokens
        return SamplingParams(
            max_new_tokens=limit if limit is not None else default_max_tokens,
            is_budget_default=limit is None or (
                max_tokens is None and "max_tokens" not in self.model_fields_set),
            do_sample=temperature > 0,
            temperature=temperature,
            top_p=1.0 if self.top_p is None else self.top_p,
            presence_penalty=self.presence_penalty,
            frequency_penalty=self.frequency_penalty,
            stop=tuple(stop),
            seed=None if self.seed is None else self.seed % (2**63),
        )


class ChatCompletionRequest(_CommonRequest):
    """``POST /v1/chat/completions``."""

    messages: list[ChatMessage] = Field(min_length=1)
    max_completion_tokens: int | None = Field(default=None, ge=1)
    logprobs: bool | None = None
    tools: list[dict[str, Any]] | None = None
    response_format: dict[str, Any] | None = None


class CompletionRequest(_CommonRequest):
    """``POST /v1/completions``."""

    prompt: str | list[str]
    echo: bool = False
    suffix: str | None = None
    best_of: int | None = Field(default=None, ge=1)
    logprobs: int | None = None
    max_tokens: int | None = Field(default=16, ge=1)


def _finish_reason(reason: FinishReason) -> str:
    return "length" if reason == "length" else "stop"


def _usage(finish: FinishEvent) -> dict[str, int]:
    return {
        "prompt_tokens": finish.prompt_tokens,
        "completion_tokens": finish.generated_tokens,
        "total_tokens": finish.prompt_tokens + finish.generated_tokens,
    }


async def _collect(first: GenerationEvent, rest: AsyncIterator[GenerationEvent]) -> FinishEvent:
    if isinstance(first, FinishEvent):
        return first
    async for event in rest:
        if isinstance(event, FinishEvent):
            return event
    raise InvalidRequest("generation ended without a result")


async def chat_completions(request: web.Request) -> web.StreamResponse:
    """OpenAI chat completions (``stream`` optional)."""
    body = await parse_body(request, ChatCompletionRequest)
    backend = request.app[BACKEND_KEY]
    if body.logprobs:
        raise InvalidRequest("logprobs are not supported", param="logprobs")
    if body.tools:
        raise InvalidRequest("tools are not supported", param="tools")
    if body.response_format and body.response_format.get("type", "text") != "text":
        raise InvalidRequest("only the text response_format is supported",
                             param="response_format")
    adapter = resolve_adapter(backend, body.model)
    messages = [{"role": m.role if m.role != "developer" else "system", "content": m.text()}
                for m in body.messages]
    prompt = backend.format_chat(messages)
    params = body.sampling(
        request.app[DEFAULT_MAX_TOKENS_KEY], body.max_completion_tokens or body.max_tokens
    )
    async with aclosing(backend.generate(GenerationRequest(prompt, params, adapter))) as events:
        first = await first_event(events)
        return await _answer(request, body, first, events, chat=True, prefix="")


async def completions(request: web.Request) -> web.StreamResponse:
    """OpenAI (legacy) text completions (``stream`` optional)."""
    body = await parse_body(request, CompletionRequest)
    backend = request.app[BACKEND_KEY]
    if isinstance(body.prompt, list):
        if len(body.prompt) != 1:
            raise InvalidRequest("exactly one prompt is supported per request", param="prompt")
        prompt = body.prompt[0]
    else:
        prompt = body.prompt
    if body.suffix:
        raise InvalidRequest("suffix is not supported", param="suffix")
    if body.best_of not in (None, 1):
        raise InvalidRequest("best_of > 1 is not supported", param="best_of")
    if body.logprobs is not None:
        raise InvalidRequest("logprobs are not supported", param="logprobs")
    adapter = resolve_adapter(backend, body.model)
    params = body.sampling(request.app[DEFAULT_MAX_TOKENS_KEY])
    async with aclosing(backend.generate(GenerationRequest(prompt, params, adapter))) as events:
        first = await first_event(events)
        prefix = prompt if body.echo else ""
        return await _answer(request, body, first, events, chat=False, prefix=prefix)


def _choice(chat: bool, text: str | None, finish_reason: str | None, *, first: bool = False
            ) -> dict[str, Any]:
    if chat:
        delta: dict[str, str] = {} if text is None else {"content": text}
        if first:
            delta["role"] = "assistant"
        return {"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish_reason}
    return {"index": 0, "text": text or "", "logprobs": None, "finish_reason": finish_reason}


async def _answer(
    request: web.Request,
    body: ChatCompletionRequest | CompletionRequest,
    first: GenerationEvent,
    events: AsyncIterator[GenerationEvent],
    *,
    chat: bool,
    prefix: str,
) -> web.StreamResponse:
    completion_id = ("chatcmpl-" if chat else "cmpl-") + uuid.uuid4().hex
    base = {
        "id": completion_id,
        "object": "chat.completion" if chat else "text_completion",
        "created": int(time.time()),
        "model": body.model,
    }
    if not body.stream:
        finish = await _collect(first, events)
        reason = _finish_reason(finish.reason)
        if chat:
            choice = {"index": 0, "message": {"role": "assistant", "content": finish.text},
                      "logprobs": None, "finish_reason": reason}
        else:
            choice = _choice(False, prefix + finish.text, reason)
        return web.json_response({**base, "choices": [choice], "usage": _usage(finish)})
    if chat:
        base["object"] = "chat.completion.chunk"
    response = await start_sse(request)
    include_usage = body.stream_options is not None and body.stream_options.include_usage
    if chat or prefix:
        await send_sse(response, {**base, "choices": [_choice(chat, prefix, None, first=True)]})
    async with errors_as_events(response, "openai"):
        async for event in _chain(first, events):
            if isinstance(event, TokenEvent):
                if event.text:
                    await send_sse(response, {**base, "choices": [
                        _choice(chat, event.text, None)]})
                continue
            reason = _finish_reason(event.reason)
            await send_sse(response, {**base, "choices": [_choice(chat, None, reason)]})
            if include_usage:
                await send_sse(response, {**base, "choices": [], "usage": _usage(event)})
        await send_sse(response, "[DONE]")
    await response.write_eof()
    return response


async def list_models(request: web.Request) -> web.Response:
    """The base model and every adapter, as OpenAI model objects."""
    info = request.app[BACKEND_KEY].info
    created = int(time.time())
    data = [{"id": info.base_model_id, "object": "model", "created": created,
             "owned_by": "kaito", "root": info.base_model_id, "parent": None}]
    data += [{"id": name, "object": "model", "created": created, "owned_by": "kaito",
              "root": name, "parent": info.base_model_id} for name in info.adapter_names]
    return web.json_response({"object": "list", "data": data})


async def _chain(
    first: GenerationEvent, rest: AsyncIterator[GenerationEvent]
) -> AsyncIterator[GenerationEvent]:
    yield first
    if isinstance(first, FinishEvent):
        return
    async for event in rest:
        yield event


def add_routes(app: web.Application) -> None:
    """Register the OpenAI routes."""
    app.router.add_post("/v1/chat/completions", chat_completions)
    app.router.add_post("/v1/completions", completions)
    app.router.add_get("/v1/models", list_models)
