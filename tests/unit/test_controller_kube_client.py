"""The client wrapper against a scripted HTTP server: error tree, 429, tokens, watches.

The scripted server plays the parts of the API server a real one cannot be made to
play on demand: throttling, a rotated token, a truncated or silent watch stream.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web
from kubernetes_asyncio import client as k8s_client
from pydantic import BaseModel, ConfigDict, Field

from controller.kube import (
    CONFIGMAPS,
    AlreadyExists,
    ApiUnavailable,
    Conflict,
    Gone,
    Invalid,
    KubeClient,
    NotFound,
    ServerError,
    TooManyRequests,
    TypedResource,
    WatchEvent,
)
from controller.kube.errors import error_from_response, parse_retry_after

pytestmark = pytest.mark.unit

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


class FakeApiServer:
    """An HTTP server whose every request goes to `self.handler`; requests are logged."""

    def __init__(self) -> None:
        self.handler: Handler = self._not_found
        self.requests: list[web.Request] = []
        self.runner: web.AppRunner | None = None
        self.url = ""

    async def _not_found(self, request: web.Request) -> web.StreamResponse:
        return status_response(404, "NotFound", "not scripted")

    async def _dispatch(self, request: web.Request) -> web.StreamResponse:
        self.requests.append(request)
        return await self.handler(request)

    async def start(self) -> None:
        app = web.Application()
        app.router.add_route("*", "/{tail:.*}", self._dispatch)
        self.runner = web.AppRunner(app, access_log=None, shutdown_timeout=0.1)
        await self.runner.setup()
        site = web.TCPSite(self.runner, "127.0.0.1", 0)
        await site.start()
        self.url = f"http://127.0.0.1:{self.runner.addresses[0][1]}"

    async def stop(self) -> None:
        if self.runner is not None:
            await self.runner.cleanup()


def status_response(code: int, reason: str, message: str, **headers: str) -> web.Response:
    body = {"kind": "Status", "apiVersion": "v1", "status": "Failure", "message": message,
            "reason": reason, "code": code}
    return web.json_response(body, status=code, headers=headers)


def make_client(url: str, **kwargs: Any) -> KubeClient:
    cfg = k8s_client.Configuration(host=url)
    cfg.api_key = {"BearerToken": "Bearer initial-token"}
    return KubeClient(k8s_client.ApiClient(configuration=cfg), **kwargs)


async def stream_lines(request: web.Request, lines: list[Any], *, then: str = "end",
                       delay: float = 0.0) -> web.StreamResponse:
    """A chunked watch response; `then` is end / truncate / hang."""
    response = web.StreamResponse(headers={"Content-Type": "application/json"})
    response.enable_chunked_encoding()
    await response.prepare(request)
    for line in lines:
        await response.write((json.dumps(line) + "\n").encode())
        if delay:
            await asyncio.sleep(delay)
    if then == "truncate":
        await response.write(b'{"type": "MODIFIED", "object": {"metad')
        assert request.transport is not None
        request.transport.close()
        return response
    if then == "hang":
        await asyncio.sleep(3600)
    await response.write_eof()
    return response


@pytest.fixture
async def server() -> AsyncIterator[FakeApiServer]:
    fake = FakeApiServer()
    await fake.start()
    yield fake
    await fake.stop()


def test_error_tree_mapping() -> None:
    body = json.dumps({"kind": "Status", "message": "configmaps \"x\" not found",
                       "reason": "NotFound", "code": 404})
    error = error_from_response(404, body)
    assert isinstance(error, NotFound) and error.message == 'configmaps "x" not found'
    assert type(error_from_response(409, json.dumps({"reason": "AlreadyExists"}))) is AlreadyExists
    assert type(error_from_response(409, json.dumps({"reason": "Conflict"}))) is Conflict
    assert isinstance(error_from_response(410, b"{}"), Gone)
    assert isinstance(error_from_response(422, b"not json"), Invalid)
    assert isinstance(error_from_response(503, None), ServerError)
    throttled = error_from_response(429, b"{}", {"Retry-After": "7"})
    assert isinstance(throttled, TooManyRequests) and throttled.retry_after_seconds == 7
    assert parse_retry_after(None) == 1.0
    assert parse_retry_after("Wed, 21 Oct 2015 07:28:00 GMT") == 1.0
    assert parse_retry_after("-3") == 1.0


async def test_429_is_retried_after_retry_after(server: FakeApiServer) -> None:
    sleeps: list[float] = []

    async def fake_sleep(seconds: float) -> None:
        sleeps.append(seconds)

    answers = [status_response(429, "TooManyRequests", "slow down", **{"Retry-After": "3"}),
               status_response(429, "TooManyRequests", "slow down", **{"Retry-After": "2"}),
               web.json_response({"metadata": {"name": "a", "namespace": "ns"}})]

    async def handler(request: web.Request) -> web.StreamResponse:
        return answers.pop(0)

    server.handler = handler
    async with make_client(server.url, sleep=fake_sleep) as client:
        obj = await client.get(CONFIGMAPS, "a", "ns")
    assert obj["metadata"]["name"] == "a"
    assert sleeps == [3.0, 2.0]
    assert [r.path for r in server.requests] == ["/api/v1/namespaces/ns/configmaps/a"] * 3


async def test_429_gives_up_after_max_retries(server: FakeApiServer) -> None:
    async def handler(request: web.Request) -> web.StreamResponse:
        return status_response(429, "TooManyRequests", "slow down", **{"Retry-After": "1"})

    async def no_sleep(seconds: float) -> None:
        return None

    server.handler = handler
    async with make_client(server.url, sleep=no_sleep, max_throttle_retries=2) as client:
        with pytest.raises(TooManyRequests) as caught:
            await client.get(CONFIGMAPS, "a", "ns")
    assert caught.value.retry_after_seconds == 1.0
    assert len(server.requests) == 3


async def test_api_errors_become_the_error_tree(server: FakeApiServer) -> None:
    script = {
        "GET": status_response(404, "NotFound", 'configmaps "a" not found'),
        "POST": status_response(409, "AlreadyExists", 'configmaps "a" already exists'),
        "PUT": status_response(409, "Conflict", "the object has been modified"),
        "PATCH": status_response(422, "Invalid", "data: Invalid value"),
        "DELETE": status_response(500, "InternalError", "boom"),
    }

    async def handler(request: web.Request) -> web.StreamResponse:
        return script[request.method]

    server.handler = handler
    body = {"metadata": {"name": "a", "namespace": "ns", "resourceVersion": "1"}}
    async with make_client(server.url) as client:
        with pytest.raises(NotFound, match="not found"):
            await client.get(CONFIGMAPS, "a", "ns")
        with pytest.raises(AlreadyExists):
            await client.create(CONFIGMAPS, body)
        with pytest.raises(Conflict) as conflict:
            await client.replace(CONFIGMAPS, body)
        assert type(conflict.value) is Conflict
        with pytest.raises(Invalid):
            await client.patch(CONFIGMAPS, "a", {"data": {"k": 1}}, "ns")
        with pytest.raises(ServerError):
            await client.delete(CONFIGMAPS, "a", "ns")
    assert server.requests[3].content_type == "application/merge-patch+json"


async def test_unreachable_server_is_api_unavailable() -> None:
    async with make_client("http://127.0.0.1:1", request_timeout_seconds=2) as client:
        with pytest.raises(ApiUnavailable):
            await client.get(CONFIGMAPS, "a", "ns")


async def test_rotated_token_is_reread_on_401(server: FakeApiServer, tmp_path: Path) -> None:
    token_file = tmp_path / "token"
    token_file.write_text("old-token")

    async def handler(request: web.Request) -> web.StreamResponse:
        if request.headers.get("Authorization") != "Bearer new-token":
            return status_response(401, "Unauthorized", "Unauthorized")
        return web.json_response({"metadata": {"name": "a"}})

    server.handler = handler
    async with make_client(server.url, token_file=token_file) as client:
        client.refresh_credentials()
        with pytest.raises(Exception) as caught:
            await client.get(CONFIGMAPS, "a", "ns")
        assert type(caught.value).__name__ == "Unauthorized"
        token_file.write_text("new-token\n")  # the kubelet rotates the projected token
        assert (await client.get(CONFIGMAPS, "a", "ns"))["metadata"]["name"] == "a"
    seen = [r.headers.get("Authorization") for r in server.requests]
    assert seen == ["Bearer old-token", "Bearer old-token", "Bearer new-token"]


async def test_list_all_follows_continue_tokens(server: FakeApiServer) -> None:
    async def handler(request: web.Request) -> web.StreamResponse:
        token = request.query.get("continue")
        assert request.query["limit"] == "2"
        if token is None:
            return web.json_response({"metadata": {"resourceVersion": "5", "continue": "p2"},
                                      "items": [{"metadata": {"name": "a"}},
                                                {"metadata": {"name": "b"}}]})
        return web.json_response({"metadata": {"resourceVersion": "5"},
                                  "items": [{"metadata": {"name": "c"}}]})

    server.handler = handler
    async with make_client(server.url) as client:
        page = await client.list_all(CONFIGMAPS, "ns", page_size=2, label_selector="a=b")
    assert [item["metadata"]["name"] for item in page.items] == ["a", "b", "c"]
    assert page.items[0]["kind"] == "ConfigMap" and page.items[0]["apiVersion"] == "v1"
    assert page.resource_version == "5" and page.continue_token is None
    assert server.requests[0].query["labelSelector"] == "a=b"


async def collect(client: KubeClient, **kwargs: Any) -> tuple[list[WatchEvent], BaseException | None]:
    events: list[WatchEvent] = []
    try:
        async for event in client.watch(CONFIGMAPS, "ns", **kwargs):
            events.append(event)
    except Exception as exc:  # noqa: BLE001 - the test inspects it
        return events, exc
    return events, None


async def test_watch_streams_events_and_bookmarks(server: FakeApiServer) -> None:
    lines = [{"type": "ADDED", "object": {"metadata": {"name": "a", "resourceVersion": "11"}}},
             {"type": "BOOKMARK", "object": {"metadata": {"resourceVersion": "12"}}}]

    async def handler(request: web.Request) -> web.StreamResponse:
        return await stream_lines(request, lines)

    server.handler = handler
    async with make_client(server.url) as client:
        events, error = await collect(client, resource_version="10", timeout_seconds=42)
    assert error is None
    assert [e.type for e in events] == ["ADDED", "BOOKMARK"]
    query = server.requests[0].query
    assert query["watch"] == "true" and query["allowWatchBookmarks"] == "true"
    assert query["resourceVersion"] == "10" and query["timeoutSeconds"] == "42"


async def test_watch_error_event_410_raises_gone(server: FakeApiServer) -> None:
    lines = [{"type": "ADDED", "object": {"metadata": {"name": "a", "resourceVersion": "11"}}},
             {"type": "ERROR", "object": {"kind": "Status", "code": 410, "reason": "Expired",
                                          "message": "too old resource version: 1 (50)"}}]

    async def handler(request: web.Request) -> web.StreamResponse:
        return await stream_lines(request, lines)

    server.handler = handler
    async with make_client(server.url) as client:
        events, error = await collect(client, resource_version="1")
    assert len(events) == 1
    assert isinstance(error, Gone) and "too old" in str(error)


async def test_watch_410_status_at_start_raises_gone(server: FakeApiServer) -> None:
    async def handler(request: web.Request) -> web.StreamResponse:
        return status_response(410, "Expired", "too old resource version")

    server.handler = handler
    async with make_client(server.url) as client:
        _, error = await collect(client, resource_version="1")
    assert isinstance(error, Gone)


async def test_truncated_watch_stream_is_api_unavailable(server: FakeApiServer) -> None:
    lines = [{"type": "ADDED", "object": {"metadata": {"name": "a", "resourceVersion": "11"}}}]

    async def handler(request: web.Request) -> web.StreamResponse:
        return await stream_lines(request, lines, then="truncate")

    server.handler = handler
    async with make_client(server.url) as client:
        events, error = await collect(client, resource_version="10")
    assert len(events) == 1
    assert isinstance(error, ApiUnavailable)


async def test_silent_watch_times_out_instead_of_hanging(server: FakeApiServer) -> None:
    async def handler(request: web.Request) -> web.StreamResponse:
        return await stream_lines(request, [], then="hang")

    server.handler = handler
    loop = asyncio.get_running_loop()
    started = loop.time()
    async with make_client(server.url) as client:
        _, error = await asyncio.wait_for(
            collect(client, resource_version="10", read_timeout_seconds=0.3), 5
        )
    assert isinstance(error, ApiUnavailable)
    assert loop.time() - started < 3


class Meta(BaseModel):
    model_config = ConfigDict(populate_by_name=True)
    name: str
    namespace: str | None = None
    resource_version: str | None = Field(default=None, alias="resourceVersion")


class ConfigMapModel(BaseModel):
    model_config = ConfigDict(populate_by_name=True)
    api_version: str = Field(default="v1", alias="apiVersion")
    kind: str = "ConfigMap"
    metadata: Meta
    data: dict[str, str] = Field(default_factory=dict)


async def test_typed_resource_round_trips_models(server: FakeApiServer) -> None:
    bodies: list[Any] = []

    async def handler(request: web.Request) -> web.StreamResponse:
        if request.method == "GET":
            return web.json_response({"apiVersion": "v1", "kind": "ConfigMap",
                                      "metadata": {"name": "a", "namespace": "ns",
                                                   "resourceVersion": "7"},
                                      "data": {"k": "v"}})
        body = await request.json()
        bodies.append((request.method, request.path, body))
        answer = json.loads(json.dumps(body))
        answer["metadata"]["resourceVersion"] = "8"
        return web.json_response(answer)

    server.handler = handler
    async with make_client(server.url) as client:
        configmaps = TypedResource(client, CONFIGMAPS, ConfigMapModel)
        current = await configmaps.get("a", "ns")
        assert current.metadata.resource_version == "7" and current.data == {"k": "v"}
        created = await configmaps.create(
            ConfigMapModel(metadata=Meta(name="b", namespace="ns"), data={"x": "y"})
        )
        assert created.metadata.resource_version == "8"
        await configmaps.replace_status(current)
    method, path, body = bodies[0]
    assert (method, path) == ("POST", "/api/v1/namespaces/ns/configmaps")
    assert body == {"apiVersion": "v1", "kind": "ConfigMap",
                    "metadata": {"name": "b", "namespace": "ns"}, "data": {"x": "y"}}
    assert bodies[1][:2] == ("PUT", "/api/v1/namespaces/ns/configmaps/a/status")
    assert bodies[1][2]["metadata"]["resourceVersion"] == "7"


async def test_trust_env_only_when_a_proxy_is_configured(
    server: FakeApiServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    for name in ("https_proxy", "http_proxy", "all_proxy"):
        monkeypatch.delenv(name, raising=False)
        monkeypatch.delenv(name.upper(), raising=False)
    async with make_client(server.url) as client:
        assert client._api.rest_client.pool_manager.trust_env is False
        server.handler = lambda request: asyncio.sleep(0, web.json_response({"metadata": {}}))
        await client.get(CONFIGMAPS, "a", "ns")  # the swapped session works
    monkeypatch.setenv("HTTPS_PROXY", "http://proxy.example:3128")
    async with make_client(server.url) as client:
        assert client._api.rest_client.pool_manager.trust_env is True


async def test_list_and_watch_send_a_field_selector(server: FakeApiServer) -> None:
    selector = "spec.nodeName!=,status.phase!=Succeeded"

    async def handler(request: web.Request) -> web.StreamResponse:
        if request.query.get("watch") == "true":
            return await stream_lines(request, [])
        return web.json_response({"metadata": {"resourceVersion": "5"}, "items": []})

    server.handler = handler
    async with make_client(server.url) as client:
        await client.list_all(CONFIGMAPS, "ns", field_selector=selector)
        await collect(client, resource_version="5", field_selector=selector)
    assert [r.query.get("fieldSelector") for r in server.requests] == [selector, selector]
