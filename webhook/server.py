"""The aiohttp application: routes, body cap, HTTP status rules and metrics.

Answers: a well-formed review gets HTTP 200 with an AdmissionReview (allowed or denied);
a malformed one HTTP 400; a body over 7 MiB HTTP 413. A bug while deciding is logged and
answered as a denial, so no request can take the server down.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Sequence
from typing import Any, Protocol

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, Counter

from crds.addresses import Network
from presets.catalog import Catalog
from webhook.admission import AdmissionOptions, ConfigMapReader, check, mutate
from webhook.metrics import WebhookMetrics
from webhook.review import AdmissionReview, MalformedReview, denied, parse_review

log = logging.getLogger(__name__)

MUTATE_PATH = "/mutate-kaito-sh-v1beta1-workspace"
VALIDATE_PATH = "/validate-kaito-sh-v1beta1-workspace"
MAX_BODY_BYTES = 7 * 1024 * 1024
# Reviews larger than this are parsed and decided on a worker thread so the loop stays free.
THREAD_PARSE_BYTES = 64 * 1024


class Decide(Protocol):
    def __call__(self, review: AdmissionReview, presets: Catalog, reader: ConfigMapReader, *,
                 offload: bool = False) -> Awaitable[dict[str, Any]]: ...


CATALOG = web.AppKey("catalog", Catalog)
CONFIGMAPS = web.AppKey("configmaps", ConfigMapReader)
METRICS = web.AppKey("metrics", WebhookMetrics)
ReadyCheck = Callable[[], bool]
READY: web.AppKey[ReadyCheck] = web.AppKey("ready")


def _admission_handler(path: str, decide: Decide,
                       metrics: WebhookMetrics) -> Callable[[web.Request], Awaitable[web.Response]]:
    # Labelled children are looked up once, not per request (labels() takes a lock and
    # builds a key: ~20 us of every review).
    in_flight = metrics.in_flight.labels(path)
    latency = metrics.latency_seconds.labels(path)
    requests_by_code: dict[int, Counter] = {}

    async def handle(request: web.Request) -> web.Response:
        loop = asyncio.get_running_loop()
        started = loop.time()
        in_flight.inc()
        code = 500
        try:
            response = await _answer(request, decide)
            code = response.status
            return response
        finally:
            in_flight.dec()
            counter = requests_by_code.get(code)
            if counter is None:
                counter = requests_by_code[code] = metrics.requests_total.labels(path, str(code))
            counter.inc()
            latency.observe(loop.time() - started)

    return handle


async def _answer(request: web.Request, decide: Decide) -> web.Response:
    try:
        body = await request.read()
    except web.HTTPRequestEntityTooLarge:
        return web.json_response({"error": f"body exceeds {MAX_BODY_BYTES} bytes"}, status=413)
    is_large = len(body) > THREAD_PARSE_BYTES
    try:
        review = await asyncio.to_thread(parse_review, body) if is_large else parse_review(body)
    except MalformedReview as error:
        return web.json_response({"error": str(error), "uid": error.uid}, status=400)
    try:
        answer = await decide(review, request.app[CATALOG], request.app[CONFIGMAPS],
                              offload=is_large)
    except Exception:
        log.exception("admission decision failed", extra={"uid": review.request.uid})
        answer = denied(review.request.uid, "internal error in the kaito webhook", code=500,
                        reason="InternalError")
    return web.json_response(answer)


async def _healthz(request: web.Request) -> web.Response:
    return web.Response(text="ok")


async def _readyz(request: web.Request) -> web.Response:
    if request.app[READY]():
        return web.Response(text="ok")
    return web.Response(text="certificates not ready", status=503)


async def _metrics(request: web.Request) -> web.Response:
    return web.Response(body=request.app[METRICS].render(),
                        headers={"Content-Type": CONTENT_TYPE_LATEST})


def build_app(
    catalog: Catalog,
    configmaps: ConfigMapReader,
    *,
    metrics: WebhookMetrics | None = None,
    ready: Callable[[], bool] = lambda: True,
    allowed_networks: Sequence[Network] = (),
    options: AdmissionOptions | None = None,
) -> web.Application:
    """The webhook application; the caller owns serving it (TLS, runner).

    ``allowed_networks``: non-public networks tuning input URLs may point at (used when
    ``options`` is not given)."""
    chosen = options or AdmissionOptions(allowed_networks=tuple(allowed_networks))

    async def validate_workspace(review: AdmissionReview, presets: Catalog,
                                 reader: ConfigMapReader, *,
                                 offload: bool = False) -> dict[str, Any]:
        return await check(review, presets, reader, offload=offload, options=chosen)

    async def mutate_workspace(review: AdmissionReview, presets: Catalog,
                               reader: ConfigMapReader, *,
                               offload: bool = False) -> dict[str, Any]:
        return await mutate(review, presets, reader, offload=offload, options=chosen)

    app = web.Application(client_max_size=MAX_BODY_BYTES)
    app[CATALOG] = catalog
    app[CONFIGMAPS] = configmaps
    app[METRICS] = metrics = metrics or WebhookMetrics()
    app[READY] = ready
    app.router.add_post(MUTATE_PATH, _admission_handler(MUTATE_PATH, mutate_workspace, metrics))
    app.router.add_post(VALIDATE_PATH,
                        _admission_handler(VALIDATE_PATH, validate_workspace, metrics))
    app.router.add_get("/healthz", _healthz)
    app.router.add_get("/readyz", _readyz)
    app.router.add_get("/metrics", _metrics)
    return app
