"""The informer's list/watch loop against a scripted server.

Covers what a real API server will not do on cue: a watch that goes silent on a
half-open connection, a 410 as a mid-stream ERROR event, a rotated token between
reconnects. (tests/envtest covers the same loop against kube-apiserver.)
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web

from controller.informer import Informer
from controller.kube import CONFIGMAPS
from controller.metrics import Metrics
from controller.predicates import Event
from tests.unit.test_controller_kube_client import (
    FakeApiServer,
    make_client,
    server,  # noqa: F401 - fixture
    stream_lines,
)

pytestmark = pytest.mark.unit


def cm(name: str, rv: str, **data: str) -> dict[str, Any]:
    return {"metadata": {"name": name, "namespace": "ns", "resourceVersion": rv,
                         "managedFields": [{"manager": "kubectl"}]},
            "data": data}


async def wait_for(condition: Any, timeout: float = 5.0) -> None:
    async with asyncio.timeout(timeout):
        while not condition():
            await asyncio.sleep(0.01)


async def test_relist_on_410_reconnect_on_silence_and_token_reread(
    server: FakeApiServer, tmp_path: Path  # noqa: F811
) -> None:
    token_file = tmp_path / "token"
    token_file.write_text("token-1")
    lists = [
        {"metadata": {"resourceVersion": "10"}, "items": [cm("a", "5", v="1"), cm("b", "6")]},
        {"metadata": {"resourceVersion": "20"}, "items": [cm("a", "15", v="2"), cm("c", "18")]},
    ]
    watches: list[dict[str, str]] = []

    async def handler(request: web.Request) -> web.StreamResponse:
        if request.query.get("watch") != "true":
            return web.json_response(lists.pop(0))
        watches.append({"rv": request.query["resourceVersion"],
                        "auth": request.headers.get("Authorization", "")})
        if len(watches) == 1:
            return await stream_lines(request, [
                {"type": "MODIFIED", "object": cm("a", "11", v="1b")},
                {"type": "ERROR", "object": {"kind": "Status", "code": 410, "reason": "Expired",
                                             "message": "too old resource version"}},
            ])
        if len(watches) == 2:
            token_file.write_text("token-2")  # rotated while this watch hangs
            return await stream_lines(request, [
                {"type": "BOOKMARK", "object": {"metadata": {"resourceVersion": "25"}}},
            ], then="hang")
        return await stream_lines(request, [
            {"type": "DELETED", "object": cm("c", "30")},
        ], then="hang")

    server.handler = handler
    metrics = Metrics()
    events: list[tuple[str, str]] = []

    def record(event: Event) -> None:
        events.append((event.type.value, event.obj["metadata"]["name"]))

    async with make_client(server.url, token_file=token_file) as client:
        informer = Informer(client, CONFIGMAPS, namespace="ns", metrics=metrics,
                            inactivity_timeout_seconds=0.4, read_timeout_seconds=5,
                            backoff_initial_seconds=0.01)
        informer.add_handler(record)
        task = asyncio.create_task(informer.run())
        try:
            await wait_for(lambda: len(watches) >= 3 and ("delete", "c") in events)
        finally:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task

    assert informer.has_synced and informer.relist_count == 2
    assert [w["rv"] for w in watches] == ["10", "20", "25"], "resumes from the last version"
    assert watches[0]["auth"] == "Bearer token-1"
    assert watches[2]["auth"] == "Bearer token-2", "token re-read before reconnecting"
    assert events == [
        ("create", "a"), ("create", "b"),  # first list
        ("update", "a"),  # watch
        ("create", "c"), ("update", "a"), ("delete", "b"),  # relist after 410 replays the diff
        ("delete", "c"),  # watch after the silent one was abandoned
    ]
    assert sorted(informer.cache.keys()) == ["ns/a"]
    assert informer.cache.get("ns/a")["data"] == {"v": "2"}  # type: ignore[index]
    assert "managedFields" not in informer.cache.get("ns/a")["metadata"]  # type: ignore[index]
    relists = metrics.registry.get_sample_value(
        "kaito_informer_relists_total", {"resource": "configmaps"})
    assert relists == 2


async def test_unreachable_server_backs_off_instead_of_spinning(
    server: FakeApiServer  # noqa: F811
) -> None:
    async def handler(request: web.Request) -> web.StreamResponse:
        return web.json_response({"kind": "Status", "code": 503, "message": "etcd down"},
                                 status=503)

    server.handler = handler
    async with make_client(server.url) as client:
        informer = Informer(client, CONFIGMAPS, backoff_initial_seconds=0.05,
                            backoff_max_seconds=0.2)
        task = asyncio.create_task(informer.run())
        await asyncio.sleep(1.0)
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
    # 0 + 0.05 + 0.1 + 0.2 + 0.2 ... in one second: a handful of tries, not thousands.
    assert 3 <= len(server.requests) <= 10
    assert not informer.has_synced


async def test_restart_watch_from_a_stale_version_relists(
    server: FakeApiServer  # noqa: F811
) -> None:
    watches: list[str] = []

    async def handler(request: web.Request) -> web.StreamResponse:
        if request.query.get("watch") != "true":
            return web.json_response({"metadata": {"resourceVersion": "10"}, "items": []})
        watches.append(request.query["resourceVersion"])
        if request.query["resourceVersion"] == "1":
            return web.json_response({"kind": "Status", "code": 410, "reason": "Expired",
                                      "message": "too old"}, status=410)
        return await stream_lines(request, [], then="hang")

    server.handler = handler
    async with make_client(server.url) as client:
        informer = Informer(client, CONFIGMAPS)
        task = asyncio.create_task(informer.run())
        await wait_for(lambda: len(watches) == 1)
        informer.restart_watch(resource_version="1")
        await wait_for(lambda: len(watches) == 3)
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
    assert watches == ["10", "1", "10"]
    assert informer.relist_count == 2


def test_informer_rejects_bad_configuration() -> None:
    from controller.kube import NAMESPACES

    with pytest.raises(ValueError):
        Informer(None, NAMESPACES, namespace="ns")  # type: ignore[arg-type]
    with pytest.raises(ValueError):
        Informer(None, CONFIGMAPS, read_timeout_seconds=0)  # type: ignore[arg-type]


def test_events_are_json_lines() -> None:
    # Guard the fixture itself: one JSON document per line, as the API server streams.
    assert json.loads(json.dumps(cm("a", "1")))["metadata"]["name"] == "a"


async def test_a_field_selected_informer_sends_its_selector_and_transforms_objects(
    server: FakeApiServer  # noqa: F811
) -> None:
    selector = "spec.nodeName!="
    queries: list[str | None] = []

    async def handler(request: web.Request) -> web.StreamResponse:
        queries.append(request.query.get("fieldSelector"))
        if request.query.get("watch") != "true":
            return web.json_response({"metadata": {"resourceVersion": "10"},
                                      "items": [cm("a", "5", v="1")]})
        return await stream_lines(request, [{"type": "ADDED", "object": cm("b", "11")}],
                                  then="hang")

    server.handler = handler

    def keep_name(obj: dict[str, Any]) -> dict[str, Any]:
        return {"metadata": {key: obj["metadata"][key]
                             for key in ("name", "namespace", "resourceVersion")}}

    async with make_client(server.url) as client:
        informer = Informer(client, CONFIGMAPS, namespace="ns", field_selector=selector,
                            transform=keep_name)
        task = asyncio.create_task(informer.run())
        try:
            await wait_for(lambda: "ns/b" in informer.cache)
        finally:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
    assert queries[:2] == [selector, selector]  # the list and the watch
    assert "data" not in informer.cache.get("ns/a")  # type: ignore[operator]
