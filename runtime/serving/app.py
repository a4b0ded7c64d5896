"""The aiohttp application: routes, typed state, the backend's lifecycle, and serving.

The backend starts in a named background task owned by ``cleanup_ctx``, so the server
listens (``/health`` → 503) while weights load and stops the engine on shutdown.
Handler cancellation is on: a client that disconnects cancels its handler, which closes
its generation and frees its batch row.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
from collections.abc import AsyncIterator

from aiohttp import web

from runtime.serving import api_kaito, api_openai, api_tgi
from runtime.serving.generation import Backend
from runtime.serving.http_common import (
    BACKEND_KEY,
    DEFAULT_MAX_TOKENS_KEY,
    METRICS_KEY,
    error_middleware,
)
from runtime.serving.local import LocalBackend, LocalBackendOptions
from runtime.serving.metrics import ServingMetrics
from runtime.serving.settings import ServingSettings

log = logging.getLogger(__name__)

MAX_BODY_BYTES = 8 * 1024 * 1024


async def _backend_lifecycle(app: web.Application) -> AsyncIterator[None]:
    backend = app[BACKEND_KEY]
    starting = asyncio.create_task(backend.start(), name="serving-backend-start")
    yield
    if not starting.done():
        starting.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await starting
    await backend.stop()


def create_app(
    backend: Backend, metrics: ServingMetrics, *, default_max_tokens: int = 256
) -> web.Application:
    """An application serving ``backend`` (started by the app's cleanup context)."""
    app = web.Application(middlewares=[error_middleware], client_max_size=MAX_BODY_BYTES)
    app[BACKEND_KEY] = backend
    app[METRICS_KEY] = metrics
    app[DEFAULT_MAX_TOKENS_KEY] = default_max_tokens
    api_kaito.add_routes(app)
    api_openai.add_routes(app)
    api_tgi.add_routes(app)
    app.cleanup_ctx.append(_backend_lifecycle)
    return app


def build_backend(settings: ServingSettings, metrics: ServingMetrics) -> Backend:
    """The local engine, or the TGI proxy when ``tgi_url`` is set."""
    if settings.tgi_url is not None:
        from runtime.serving.tgi_proxy import TGIProxyBackend

        return TGIProxyBackend(
            settings.tgi_url,
            tokenizer=settings.tokenizer,
            served_model_name=settings.served_model_name,
            timeout_seconds=settings.tgi_timeout_seconds,
        )
    assert settings.model is not None
    options = LocalBackendOptions(
        model=settings.model,
        adapters=settings.adapter_specs(),
        served_model_name=settings.served_model_name,
        default_model=settings.default_model,
        max_batch_size=settings.max_batch_size,
        max_queue=settings.max_queue,
        max_context_tokens=settings.max_context_tokens,
        device=settings.device,
        dtype=settings.dtype,
        torch_threads=settings.torch_threads,
    )
    return LocalBackend(options, metrics)


async def serve(settings: ServingSettings, *, stop: asyncio.Event | None = None) -> None:
    """Serve until SIGTERM/SIGINT (or ``stop`` is set)."""
    metrics = ServingMetrics()
    app = create_app(
        build_backend(settings, metrics), metrics, default_max_tokens=settings.default_max_tokens
    )
    # On SIGTERM in-flight requests get a grace period to finish (Kubernetes kills the
    # pod 30 s after SIGTERM by default), then they are cancelled.
    runner = web.AppRunner(app, handler_cancellation=True, access_log=None,
                           shutdown_timeout=settings.shutdown_grace_seconds)
    await runner.setup()
    stop = stop or asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        with contextlib.suppress(NotImplementedError, RuntimeError):
            loop.add_signal_handler(signum, stop.set)
    try:
        site = web.TCPSite(runner, settings.host, settings.port)
        await site.start()
        log.info("serving", extra={"host": settings.host, "port": settings.port})
        await stop.wait()
    finally:
        await runner.cleanup()
