"""Property test: no request body, however malformed, gets a 5xx from any endpoint.

The server runs the real HTTP layer and engine over the fake model in a background
thread; hypothesis throws a few hundred JSON (and broken-JSON) bodies at every route.
The runtime tier repeats a bounded version against the real model.
"""

from __future__ import annotations

import asyncio
import json
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from aiohttp import web
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from runtime.serving.app import create_app
from runtime.serving.loader import AdapterSpec
from runtime.serving.local import LocalBackend, LocalBackendOptions
from runtime.serving.metrics import ServingMetrics
from tests.unit.test_serving_fakes import FakeModel

pytestmark = pytest.mark.unit

ROUTES = ["/chat", "/v1/chat/completions", "/v1/completions", "/generate",
          "/generate_stream", "/", "/tokenize", "/v1/models", "/info", "/health"]


@pytest.fixture(scope="module")
def server_url() -> Iterator[str]:
    loop = asyncio.new_event_loop()
    ready = threading.Event()
    holder: dict[str, Any] = {}

    async def start() -> None:
        metrics = ServingMetrics()
        backend = LocalBackend(
            LocalBackendOptions(model="fake", adapters=[AdapterSpec("tuned", Path("/x"))],
                                max_batch_size=4, max_queue=64),
            metrics, loader=lambda: FakeModel(max_context_tokens=256))
        runner = web.AppRunner(create_app(backend, metrics, default_max_tokens=8),
                               handler_cancellation=True)
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        holder["runner"] = runner
        holder["port"] = runner.addresses[0][1]
        while not backend.is_ready:
            await asyncio.sleep(0.01)
        ready.set()

    thread = threading.Thread(target=loop.run_forever, daemon=True)
    thread.start()
    asyncio.run_coroutine_threadsafe(start(), loop).result(30)
    assert ready.wait(30)
    yield f"http://127.0.0.1:{holder['port']}"
    asyncio.run_coroutine_threadsafe(holder["runner"].cleanup(), loop).result(30)
    loop.call_soon_threadsafe(loop.stop)
    thread.join(10)
    loop.close()


_leaf = st.one_of(st.none(), st.booleans(), st.integers(-(2**70), 2**70),
                  st.floats(allow_nan=True, allow_infinity=True), st.text(max_size=40),
                  st.sampled_from(["fake", "tuned", "user", "assistant", "text", ""]))
_json = st.recursive(
    _leaf,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(
        st.sampled_from(["model", "messages", "prompt", "inputs", "parameters", "role",
                         "content", "max_tokens", "max_new_tokens", "stream", "stop",
                         "temperature", "top_p", "top_k", "seed", "n", "generate_kwargs",
                         "max_length", "adapter_id", "echo", "type", "text", "details",
                         "stream_options", "include_usage"]) | st.text(max_size=6),
        inner, max_size=5),
    max_leaves=16,
)


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(route=st.sampled_from(ROUTES), body=_json, mangle=st.integers(0, 3))
def test_no_body_gets_a_5xx(server_url: str, route: str, body: Any, mangle: int) -> None:
    raw = json.dumps(body, allow_nan=True).encode()
    if mangle == 1:
        raw = raw[: len(raw) // 2]
    elif mangle == 2:
        raw = b"\xff\xfe" + raw
    method = "GET" if route in ("/v1/models", "/info", "/health") and mangle == 3 else "POST"
    response = httpx.request(method, server_url + route, content=raw, timeout=30,
                             headers={"Content-Type": "application/json"})
    assert response.status_code < 500, (route, body, response.text)
