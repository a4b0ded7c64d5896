"""What every HTTP handler shares: app keys, body parsing, errors per API dialect, SSE.

Handlers raise :class:`ServingError` or let pydantic raise ``ValidationError``; the
middleware here turns either into the error body of the API that was called:
OpenAI ``{"error": {"message", "type", "param", "code"}}``, TGI ``{"error",
"error_type"}`` and FastAPI-style ``{"detail": ...}`` for upstream's ``/chat``. Any
other exception is logged and becomes a 500 in the same dialect; nothing escapes.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from typing import Any, Literal, TypeVar

from aiohttp import web
from pydantic import BaseModel, ValidationError

from runtime.serving.errors import InvalidRequest, ServingError, UnknownModel
from runtime.serving.generation import Backend, GenerationEvent
from runtime.serving.metrics import ServingMetrics

log = logging.getLogger(__name__)

BACKEND_KEY = web.AppKey("backend", Backend)
METRICS_KEY = web.AppKey("metrics", ServingMetrics)
DEFAULT_MAX_TOKENS_KEY = web.AppKey("default_max_tokens", int)

Dialect = Literal["openai", "tgi", "kaito"]
ModelT = TypeVar("ModelT", bound=BaseModel)
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def dialect_of(path: str) -> Dialect:
    """Which API a path belongs to."""
    if path.startswith("/v1/"):
        return "openai"
    if path in ("/chat", "/health", "/metrics"):
        return "kaito"
    return "tgi"


async def parse_body(request: web.Request, model: type[ModelT]) -> ModelT:
    """Validate the JSON body against ``model`` (malformed JSON is a validation error)."""
    raw = await request.read()
    return model.model_validate_json(raw or b"null")


def resolve_adapter(backend: Backend, model_name: str | None) -> str | None:
    """Map a requested model id to an adapter (``None`` = the base model).

    Requests that name no model (``/chat``, TGI without ``adapter_id``) get the
    server's default: with exactly one adapter configured that is the adapter, as
    upstream applies its adapters to every request; ``--default-model`` overrides.
    """
    info = backend.info
    if model_name is None or model_name == "":
        return info.default_adapter
    if model_name == info.base_model_id:
        return None
    if model_name in info.adapter_names:
        return model_name
    known = ", ".join((info.base_model_id, *info.adapter_names))
    raise UnknownModel(
        f"the model {model_name!r} does not exist; this server serves: {known}",
        param="model",
    )


async def first_event(events: AsyncIterator[GenerationEvent]) -> GenerationEvent:
    """Pull the first event, so queueing/validation errors surface before any header."""
    try:
        return await anext(events)
    except StopAsyncIteration as error:
        raise ServingError("the backend ended without an answer") from error


async def start_sse(request: web.Request) -> web.StreamResponse:
    """Send the headers of a server-sent-events response."""
    response = web.StreamResponse(
        headers={
            "Content-Type": "text/event-stream",
            "Cache-Control": "no-cache",
            "X-Accel-Buffering": "no",
        }
    )
    await response.prepare(request)
    return response


async def send_sse(response: web.StreamResponse, payload: Any) -> None:
    """Write one ``data:`` event (a JSON value, or the literal ``[DONE]``)."""
    data = payload if isinstance(payload, str) else json.dumps(payload, ensure_ascii=False)
    await response.write((f"data: {data}\n\n").encode())


@asynccontextmanager
async def errors_as_events(response: web.StreamResponse, dialect: Dialect) -> AsyncIterator[None]:
    """Once an SSE response has started, report a failure as a last ``data:`` event."""
    try:
        yield
    except ServingError as error:
        log.warning("generation failed mid-stream", extra={"reason": error.message})
        await send_sse(response, error_payload(
            dialect, error.status, error.message, error.kind, error.param))


def error_payload(dialect: Dialect, status: int, message: str, kind: str, param: str | None
                  ) -> dict[str, Any]:
    """The error body of one API dialect."""
    if dialect == "openai":
        return {"error": {"message": message, "type": kind, "param": param, "code": status}}
    if dialect == "tgi":
        tgi_kind = {
            400: "validation", 404: "validation", 422: "validation", 429: "overloaded"
        }.get(status, "generation")
        return {"error": message, "error_type": tgi_kind}
    return {"detail": message}


def _validation_response(dialect: Dialect, error: ValidationError) -> web.Response:
    problems = error.errors(include_url=False, include_context=False, include_input=False)
    if dialect == "kaito":  # FastAPI's shape, as upstream's server answered
        detail = [{"loc": ["body", *p["loc"]], "msg": p["msg"], "type": p["type"]}
                  for p in problems]
        return web.json_response({"detail": detail}, status=422)
    message = "; ".join(
        f"{'.'.join(str(part) for part in p['loc']) or 'body'}: {p['msg']}"
        for p in problems
    )
    param = ".".join(str(part) for part in problems[0]["loc"]) if problems else None
    status = 400 if dialect == "openai" else 422
    return web.json_response(
        error_payload(dialect, status, message, "invalid_request_error", param), status=status
    )


@web.middleware
async def error_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Turn every failure into a dialect-specific 4xx/5xx and count requests."""
    dialect = dialect_of(request.path)
    metrics = request.app[METRICS_KEY]
    endpoint = request.match_info.route.resource.canonical if (
        request.match_info.route.resource is not None) else "unmatched"
    try:
        response = await handler(request)
    except ServingError as error:
        status = error.status
        if dialect == "tgi" and isinstance(error, InvalidRequest):
            status = 422  # TGI reports validation failures as 422
        response = web.json_response(
            error_payload(dialect, status, error.message, error.kind, error.param),
            status=status,
        )
    except ValidationError as error:
        response = _validation_response(dialect, error)
    except web.HTTPException as error:
        if error.status < 400 or error.empty_body:
            raise
        message = error.reason
        response = web.json_response(
            error_payload(dialect, error.status, message, "invalid_request_error", None),
            status=error.status,
        )
    except (asyncio.CancelledError, ConnectionResetError):
        metrics.requests.labels(endpoint=endpoint, code="499").inc()
        raise
    except Exception:
        log.exception("unhandled error", extra={"path": request.path})
        response = web.json_response(
            error_payload(dialect, 500, "internal server error", "server_error", None),
            status=500,
        )
    metrics.requests.labels(endpoint=endpoint, code=str(response.status)).inc()
    return response
