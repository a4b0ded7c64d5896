"""Unit tests of the HTTP layer: every API dialect over the real engine and a fake model.

Status codes and bodies are what clients see: upstream's exact /chat 400, OpenAI error
objects, TGI's ``error_type``, 429 when the queue is full, 503 while loading, SSE
framing, metrics, and a disconnecting client freeing its batch row.
"""

from __future__ import annotations

import asyncio
import json
import threading
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer

from runtime.serving.app import create_app
from runtime.serving.engine import Sampled
from runtime.serving.loader import AdapterSpec
from runtime.serving.local import LocalBackend, LocalBackendOptions
from runtime.serving.metrics import ServingMetrics
from tests.unit.test_serving_fakes import FakeModel

pytestmark = pytest.mark.unit

MODEL_ID = "fake-model"


def make_app(
    model: FakeModel,
    *,
    max_batch_size: int = 4,
    max_queue: int = 4,
    loader: Callable[[], FakeModel] | None = None,
    adapters: tuple[str, ...] = ("tuned",),
    default_model: str | None = None,
) -> tuple[web.Application, LocalBackend]:
    metrics = ServingMetrics()
    options = LocalBackendOptions(
        model="/models/" + MODEL_ID,
        adapters=[AdapterSpec(name, Path("/nowhere")) for name in adapters],
        default_model=default_model,
        max_batch_size=max_batch_size,
        max_queue=max_queue,
    )
    backend = LocalBackend(options, metrics, loader=loader or (lambda: model))
    return create_app(backend, metrics, default_max_tokens=8), backend


async def wait_ready(client: TestClient[web.Request, web.Application]) -> None:
    for _ in range(500):
        response = await client.get("/health")
        if response.status == 200:
            return
        await asyncio.sleep(0.01)
    raise AssertionError("server never became healthy")


@pytest.fixture
async def client() -> AsyncIterator[TestClient[web.Request, web.Application]]:
    app, _ = make_app(FakeModel())
    async with TestClient(TestServer(app)) as test_client:
        await wait_ready(test_client)
        yield test_client


async def test_health_is_503_while_loading_then_healthy() -> None:
    release = threading.Event()
    model = FakeModel()

    def slow_loader() -> FakeModel:
        release.wait(10)
        return model

    app, _ = make_app(model, loader=slow_loader)
    async with TestClient(TestServer(app)) as client:
        response = await client.get("/health")
        assert response.status == 503
        assert (await response.json())["status"] == "Loading"
        chat = await client.post("/chat", json={"prompt": "hi"})
        assert chat.status == 503
        release.set()
        await wait_ready(client)
        assert await (await client.get("/health")).json() == {"status": "Healthy"}


async def test_health_reports_load_failure() -> None:
    def broken() -> FakeModel:
        raise OSError("weights missing")

    app, _ = make_app(FakeModel(), loader=broken)
    async with TestClient(TestServer(app)) as client:
        for _ in range(200):
            body = await (await client.get("/health")).json()
            if body["status"] != "Loading":
                break
            await asyncio.sleep(0.01)
        response = await client.get("/health")
        assert response.status == 503
        assert await response.json() == {"status": "Unhealthy", "detail": "weights missing"}


async def test_chat_without_prompt_is_upstreams_400(client: TestClient) -> None:  # type: ignore[type-arg]
    for body in ({}, {"prompt": ""}, {"generate_kwargs": {"max_length": 5}}):
        response = await client.post("/chat", json=body)
        assert response.status == 400
        assert await response.json() == {"detail": "Text generation parameter prompt required"}


async def test_chat_prompt_returns_full_text(client: TestClient) -> None:  # type: ignore[type-arg]
    response = await client.post(
        "/chat", json={"prompt": "xa", "generate_kwargs": {"max_new_tokens": 3}}
    )
    assert response.status == 200
    # Wrapped as "<user>xa<assistant>": the fake model starts the alphabet after ">".
    assert await response.json() == {"Result": "xa\nabc"}
    response = await client.post("/chat", json={
        "prompt": "xa", "return_full_text": False, "raw_prompt": True,
        "generate_kwargs": {"max_new_tokens": 2}})
    assert await response.json() == {"Result": "bc"}


async def test_chat_max_length_counts_the_prompt(client: TestClient) -> None:  # type: ignore[type-arg]
    response = await client.post("/chat", json={
        "prompt": "abcd", "raw_prompt": True, "return_full_text": False,
        "generate_kwargs": {"max_length": 7}})
    assert await response.json() == {"Result": "efg"}


async def test_chat_messages_answer_with_the_reply(client: TestClient) -> None:  # type: ignore[type-arg]
    response = await client.post("/chat", json={
        "messages": [{"role": "user", "content": "hi"}],
        "generate_kwargs": {"max_new_tokens": 2}})
    assert response.status == 200
    assert await response.json() == {"Result": "ab"}


async def test_chat_validation_errors_are_fastapi_style(client: TestClient) -> None:  # type: ignore[type-arg]
    response = await client.post("/chat", json={"prompt": "x", "generate_kwargs": {
        "max_length": "lots"}})
    assert response.status == 422
    detail = (await response.json())["detail"]
    assert detail[0]["loc"] == ["body", "generate_kwargs", "max_length"]
    response = await client.post("/chat", data=b"{not json")
    assert response.status == 422
    response = await client.post("/chat", json={"prompt": "x", "generate_kwargs": {
        "num_beams": 3}})
    assert response.status == 400
    assert "beam" in (await response.json())["detail"]


async def test_openai_errors(client: TestClient) -> None:  # type: ignore[type-arg]
    cases = [
        ({"model": "nope", "messages": [{"role": "user", "content": "x"}]}, 404, "model"),
        ({"model": MODEL_ID, "messages": []}, 400, "messages"),
        ({"model": MODEL_ID, "messages": [{"role": "user", "content": "x"}], "n": 2}, 400, "n"),
        ({"model": MODEL_ID, "messages": [{"role": "user", "content": "x"}],
          "max_tokens": 0}, 400, "max_tokens"),
        ({"model": MODEL_ID, "messages": [{"role": "user", "content": "x"}],
          "max_tokens": 10_000}, 400, "max_tokens"),
        ({"model": MODEL_ID, "messages": [{"role": "wizard", "content": "x"}]}, 400,
         "messages.0.role"),
        ({"model": MODEL_ID, "messages": [{"role": "user", "content": "x" * 80}]}, 400,
         "prompt"),
    ]
    for body, status, param in cases:
        response = await client.post("/v1/chat/completions", json=body)
        assert response.status == status, body
        error = (await response.json())["error"]
        assert error["param"] == param, error
        assert error["message"]
    response = await client.post("/v1/completions", data=b"[")
    assert response.status == 400
    assert "Invalid JSON" in (await response.json())["error"]["message"]


async def test_openai_chat_and_completion(client: TestClient) -> None:  # type: ignore[type-arg]
    response = await client.post("/v1/chat/completions", json={
        "model": MODEL_ID, "messages": [{"role": "user", "content": "hi"}], "max_tokens": 3})
    body = await response.json()
    assert body["choices"][0]["message"] == {"role": "assistant", "content": "abc"}
    assert body["choices"][0]["finish_reason"] == "length"
    assert body["usage"]["completion_tokens"] == 3
    response = await client.post("/v1/completions", json={
        "model": "tuned", "prompt": "ab", "max_tokens": 2, "echo": True})
    body = await response.json()
    assert body["choices"][0]["text"] == "abcd"
    assert body["model"] == "tuned"


async def test_openai_stream_is_sse_with_done(client: TestClient) -> None:  # type: ignore[type-arg]
    response = await client.post("/v1/chat/completions", json={
        "model": MODEL_ID, "messages": [{"role": "user", "content": "hi"}], "max_tokens": 3,
        "stream": True, "stream_options": {"include_usage": True}})
    assert response.headers["Content-Type"].startswith("text/event-stream")
    raw = (await response.read()).decode()
    events = [chunk.removeprefix("data: ") for chunk in raw.split("\n\n") if chunk]
    assert events[-1] == "[DONE]"
    chunks = [json.loads(e) for e in events[:-1]]
    text = "".join(c["choices"][0]["delta"].get("content", "") for c in chunks if c["choices"])
    assert text == "abc"
    assert chunks[-1]["usage"]["completion_tokens"] == 3


async def test_models_lists_base_and_adapters(client: TestClient) -> None:  # type: ignore[type-arg]
    body = await (await client.get("/v1/models")).json()
    assert [m["id"] for m in body["data"]] == [MODEL_ID, "tuned"]


async def test_tgi_routes(client: TestClient) -> None:  # type: ignore[type-arg]
    response = await client.post("/", json={"inputs": "ab", "parameters": {
        "max_new_tokens": 2, "details": True}})
    body = await response.json()
    assert body[0]["generated_text"] == "cd"
    assert [t["text"] for t in body[0]["details"]["tokens"]] == ["c", "d"]
    response = await client.post("/generate", json={"inputs": "ab", "parameters": {
        "top_p": 1.5}})
    assert response.status == 422
    assert (await response.json())["error_type"] == "validation"
    response = await client.post("/generate", json={"inputs": "ab", "parameters": {
        "adapter_id": "missing"}})
    assert response.status == 404
    response = await client.post("/generate_stream", json={"inputs": "ab", "parameters": {
        "max_new_tokens": 3}})
    events = [json.loads(c.removeprefix("data:")) for c in
              (await response.read()).decode().split("\n\n") if c]
    assert [e["token"]["text"] for e in events] == ["c", "d", "e"]
    assert events[-1]["generated_text"] == "cde"
    assert events[-1]["details"]["finish_reason"] == "length"
    info = await (await client.get("/info")).json()
    assert info["model_id"] == MODEL_ID and info["max_total_tokens"] == 64
    # Where the weights are (loader.Placement): the fake model sits on the CPU.
    assert info["model_placement"] == {"device": "cpu", "sharded": False, "gpus": 0}
    tokens = await (await client.post("/tokenize", json={"inputs": "ab"})).json()
    assert tokens == [{"id": 97, "text": "a"}, {"id": 98, "text": "b"}]


async def test_full_queue_is_429_in_every_dialect() -> None:
    model = FakeModel()
    app, _ = make_app(model, max_batch_size=1, max_queue=0)
    async with TestClient(TestServer(app)) as client:
        await wait_ready(client)
        model.gate.clear()
        first = asyncio.create_task(client.post("/generate", json={"inputs": "a"}))
        await asyncio.sleep(0.1)
        try:
            chat = await client.post("/chat", json={"prompt": "a", "generate_kwargs": {
                "max_new_tokens": 2}})
            openai = await client.post("/v1/completions", json={"model": MODEL_ID,
                                                                "prompt": "a"})
            tgi = await client.post("/generate", json={"inputs": "a"})
            assert (chat.status, openai.status, tgi.status) == (429, 429, 429)
            assert (await tgi.json())["error_type"] == "overloaded"
            assert (await openai.json())["error"]["type"] == "overloaded"
        finally:
            model.gate.set()
        assert (await first).status == 200


async def test_disconnect_cancels_generation() -> None:
    model = FakeModel(max_context_tokens=100_000, step_seconds=0.005)
    app, backend = make_app(model)
    async with TestClient(TestServer(app)) as client:
        await wait_ready(client)
        response = await client.post("/generate_stream", json={
            "inputs": "a", "parameters": {"max_new_tokens": 50_000}})
        await response.content.readline()
        assert backend.engine is not None and backend.engine.running_count == 1
        response.close()
        for _ in range(300):
            if backend.engine.running_count == 0:
                break
            await asyncio.sleep(0.01)
        assert backend.engine.running_count == 0
        assert model.rows == {}
        assert sum(model.decode_batches) < 50_000


async def test_metrics_count_requests_and_tokens(client: TestClient) -> None:  # type: ignore[type-arg]
    await client.post("/generate", json={"inputs": "ab", "parameters": {"max_new_tokens": 4}})
    await client.post("/chat", json={})
    text = await (await client.get("/metrics")).text()
    assert 'kaito_serving_requests_total{code="200",endpoint="/generate"} 1.0' in text
    assert 'kaito_serving_requests_total{code="400",endpoint="/chat"} 1.0' in text
    assert "kaito_serving_generation_tokens_total 4.0" in text
    assert "kaito_serving_prompt_tokens_total 2.0" in text
    assert "kaito_serving_time_to_first_token_seconds_count 1.0" in text
    assert "kaito_serving_queue_depth" in text
    assert "kaito_serving_batch_size_count" in text


@pytest.mark.parametrize(
    ("adapters", "default_model", "expected"),
    [
        (("tuned",), None, "tuned"),  # the only adapter applies, as upstream
        (("one", "two"), None, None),
        (("one", "two"), "two", "two"),
        (("tuned",), MODEL_ID, None),
    ],
)
async def test_requests_naming_no_model_use_the_default(
    adapters: tuple[str, ...], default_model: str | None, expected: str | None
) -> None:
    model = FakeModel()
    app, _ = make_app(model, adapters=adapters, default_model=default_model)
    async with TestClient(TestServer(app)) as client:
        await wait_ready(client)
        await client.post("/chat", json={"prompt": "a", "generate_kwargs": {
            "max_new_tokens": 1}})
        await client.post("/generate", json={"inputs": "a", "parameters": {
            "max_new_tokens": 1}})
        await client.post("/chat", json={"prompt": "a", "model": MODEL_ID,
                                          "generate_kwargs": {"max_new_tokens": 1}})
        await client.post("/generate", json={"inputs": "a", "parameters": {
            "max_new_tokens": 1, "adapter_id": adapters[-1]}})
    assert model.adapters == [expected, expected, None, adapters[-1]]


async def test_unknown_default_model_is_reported_by_health() -> None:
    app, _ = make_app(FakeModel(), default_model="missing")
    async with TestClient(TestServer(app)) as client:
        for _ in range(200):
            response = await client.get("/health")
            body = await response.json()
            if body["status"] != "Loading":
                break
            await asyncio.sleep(0.01)
        assert response.status == 503
        assert "missing" in body["detail"]


class _ExplodingModel(FakeModel):
    def decode_step(self) -> dict[int, Sampled]:
        raise RuntimeError("CUDA error: device-side assert triggered")


async def test_engine_failure_is_a_500_and_unhealthy() -> None:
    app, _ = make_app(_ExplodingModel())
    async with TestClient(TestServer(app)) as client:
        await wait_ready(client)
        response = await client.post("/v1/completions", json={
            "model": MODEL_ID, "prompt": "ab", "max_tokens": 5})
        assert response.status == 500
        assert "device-side assert" in (await response.json())["error"]["message"]
        health = await client.get("/health")
        assert health.status == 503
        assert "device-side assert" in (await health.json())["detail"]
        again = await client.post("/generate", json={"inputs": "ab"})
        assert again.status == 503


async def test_disconnect_cancels_a_non_streaming_generation() -> None:
    model = FakeModel(max_context_tokens=100_000, step_seconds=0.005)
    app, backend = make_app(model)
    # handler_cancellation is what serve() runs with: a dropped client cancels its handler.
    async with TestClient(TestServer(app, handler_cancellation=True)) as client:
        await wait_ready(client)
        request = asyncio.create_task(client.post("/generate", json={
            "inputs": "a", "parameters": {"max_new_tokens": 50_000}}))
        for _ in range(300):
            if backend.engine is not None and backend.engine.running_count == 1:
                break
            await asyncio.sleep(0.01)
        request.cancel()
        with pytest.raises(asyncio.CancelledError):
            await request
        assert backend.engine is not None
        for _ in range(300):
            if backend.engine.running_count == 0:
                break
            await asyncio.sleep(0.01)
        assert backend.engine.running_count == 0
        assert model.rows == {}


@pytest.mark.parametrize(
    ("path", "body", "error_key"),
    [
        ("/v1/completions", {"model": MODEL_ID, "prompt": "ab", "max_tokens": 5,
                             "stream": True}, "error"),
        ("/generate_stream", {"inputs": "ab", "parameters": {"max_new_tokens": 5}},
         "error_type"),
    ],
)
async def test_failure_mid_stream_ends_with_an_error_event(
    path: str, body: dict[str, object], error_key: str
) -> None:
    app, _ = make_app(_ExplodingModel())
    async with TestClient(TestServer(app)) as client:
        await wait_ready(client)
        response = await client.post(path, json=body)
        assert response.status == 200  # headers went out with the first token
        events = [json.loads(chunk.removeprefix("data:")) for chunk in
                  (await response.read()).decode().split("\n\n") if chunk]
        assert error_key in events[-1]
        assert "device-side assert" in json.dumps(events[-1])


async def test_many_clients_some_dropping_leave_a_clean_engine() -> None:
    model = FakeModel(max_context_tokens=10_000, step_seconds=0.001)
    app, backend = make_app(model, max_batch_size=8, max_queue=64)
    async with TestClient(TestServer(app, handler_cancellation=True)) as client:
        await wait_ready(client)

        async def one(index: int) -> int:
            response = await client.post("/generate", json={
                "inputs": "ab", "parameters": {"max_new_tokens": 5 + index % 7}})
            body = await response.json()
            assert body["generated_text"] == "cdefghijklmnop"[: 5 + index % 7]
            return response.status

        tasks = [asyncio.create_task(one(i)) for i in range(40)]
        await asyncio.sleep(0.02)
        for task in tasks[::3]:  # a third of the clients hang up mid-way
            task.cancel()
        results = await asyncio.gather(*tasks, return_exceptions=True)
        assert all(r == 200 or isinstance(r, asyncio.CancelledError) for r in results)
        assert results.count(200) >= 26
        assert backend.engine is not None
        for _ in range(300):
            if backend.engine.running_count == backend.engine.waiting_count == 0:
                break
            await asyncio.sleep(0.01)
        assert backend.engine.running_count == backend.engine.waiting_count == 0
        assert model.rows == {}
        assert max(model.decode_batches) > 1
        assert (await client.get("/health")).status == 200


async def test_default_budget_stops_at_the_context_instead_of_failing(
    client: TestClient,  # type: ignore[type-arg]
) -> None:
    prompt = "a" * 60  # the fake context holds 64 tokens; the server default is 8
    response = await client.post("/generate", json={"inputs": prompt})
    assert response.status == 200
    assert len((await response.json())["generated_text"]) == 4
    response = await client.post("/v1/completions", json={"model": MODEL_ID,
                                                          "prompt": prompt})
    assert response.status == 200
    assert (await response.json())["choices"][0]["finish_reason"] == "length"
    asked = await client.post("/v1/completions", json={"model": MODEL_ID, "prompt": prompt,
                                                       "max_tokens": 8})
    assert asked.status == 400
