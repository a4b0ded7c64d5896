"""The TGI proxy backend against an in-process upstream (our own server, fake model).

Answers pass through unchanged and upstream failures keep their meaning: validation
stays 4xx, overload stays 429, an unreachable upstream is 503 on /health and 502 for a
request.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer

from runtime.serving.app import create_app
from runtime.serving.metrics import ServingMetrics
from runtime.serving.tgi_proxy import TGIProxyBackend, chatml
from tests.unit.test_serving_fakes import FakeModel
from tests.unit.test_serving_http import make_app, wait_ready

pytestmark = [
    pytest.mark.unit,
    # text_generation 0.7 calls pydantic's deprecated .dict(); not ours to fix.
    pytest.mark.filterwarnings("ignore::pydantic.warnings.PydanticDeprecatedSince20"),
]

Client = TestClient[web.Request, web.Application]


async def _proxy_client(url: str) -> TestClient[web.Request, web.Application]:
    metrics = ServingMetrics()
    backend = TGIProxyBackend(url, served_model_name="upstream-model", retry_seconds=0.05)
    return TestClient(TestServer(create_app(backend, metrics, default_max_tokens=8)))


@pytest.fixture
async def upstream() -> AsyncIterator[tuple[Client, FakeModel]]:
    model = FakeModel()
    app, _ = make_app(model, adapters=(), max_batch_size=1, max_queue=0)
    async with TestClient(TestServer(app)) as client:
        await wait_ready(client)
        yield client, model


async def test_answers_pass_through(upstream: tuple[Client, FakeModel]) -> None:
    client, _ = upstream
    async with await _proxy_client(str(client.make_url(""))) as proxy:
        await wait_ready(proxy)
        direct = await (await client.post("/generate", json={
            "inputs": "ab", "parameters": {"max_new_tokens": 3}})).json()
        proxied = await (await proxy.post("/generate", json={
            "inputs": "ab", "parameters": {"max_new_tokens": 3}})).json()
        assert proxied["generated_text"] == direct["generated_text"] == "cde"
        chat = await (await proxy.post("/v1/chat/completions", json={
            "model": "upstream-model", "max_tokens": 2,
            "messages": [{"role": "user", "content": "hi"}]})).json()
        assert chat["choices"][0]["message"]["content"] == "ab"  # after ChatML's "\n"
        assert chat["usage"]["prompt_tokens"] == len(chatml([{"role": "user",
                                                               "content": "hi"}]))
        body = await (await proxy.post("/chat", json={
            "prompt": "xy", "return_full_text": False,
            "generate_kwargs": {"max_new_tokens": 2}})).json()
        assert body == {"Result": "ab"}
        models = await (await proxy.get("/v1/models")).json()
        assert [m["id"] for m in models["data"]] == ["upstream-model"]


async def test_errors_keep_their_meaning(upstream: tuple[Client, FakeModel]) -> None:
    client, model = upstream
    async with await _proxy_client(str(client.make_url(""))) as proxy:
        await wait_ready(proxy)
        too_long = await proxy.post("/v1/completions", json={
            "model": "upstream-model", "prompt": "a" * 70, "max_tokens": 2})
        assert too_long.status == 400
        assert "context" in (await too_long.json())["error"]["message"]
        adapter = await proxy.post("/v1/completions", json={
            "model": "someone-else", "prompt": "a"})
        assert adapter.status == 404
        model.gate.clear()
        blocked = asyncio.create_task(client.post("/generate", json={"inputs": "a"}))
        await asyncio.sleep(0.1)
        try:
            overloaded = await proxy.post("/generate", json={"inputs": "a", "parameters": {
                "max_new_tokens": 2}})
            assert overloaded.status == 429
            assert (await overloaded.json())["error_type"] == "overloaded"
        finally:
            model.gate.set()
        assert (await blocked).status == 200


async def test_unreachable_upstream() -> None:
    async with await _proxy_client("http://127.0.0.1:9") as proxy:
        await asyncio.sleep(0.2)
        health = await proxy.get("/health")
        assert health.status == 503
        assert "not reachable" in (await health.json())["detail"]
        answer = await proxy.post("/generate", json={"inputs": "a"})
        assert answer.status == 502
