"""The manager's HTTP endpoints and lifecycle, against a scripted API server."""

from __future__ import annotations

import asyncio

import aiohttp
import pytest
from aiohttp import web

from controller.configmap_copy import COPY_OF_LABEL, desired_copy, is_up_to_date
from controller.kube import CONFIGMAPS
from controller.manager import Manager
from tests.unit.test_controller_kube_client import (
    FakeApiServer,
    make_client,
    server,  # noqa: F401 - fixture
)

pytestmark = pytest.mark.unit


async def scrape(port: int, path: str) -> tuple[int, str]:
    async with (
        aiohttp.ClientSession() as session,
        session.get(f"http://127.0.0.1:{port}{path}") as response,
    ):
        return response.status, await response.text()


async def test_endpoints_and_stop_without_controllers(server: FakeApiServer) -> None:  # noqa: F811
    async with make_client(server.url) as client:
        manager = Manager(client, port=0, bind_host="127.0.0.1")
        task = asyncio.create_task(manager.run())
        await asyncio.wait_for(manager.started.wait(), 5)
        port = manager.bound_port or 0
        assert await scrape(port, "/healthz") == (200, "ok")
        assert await scrape(port, "/readyz") == (200, "ok")
        await asyncio.sleep(0.1)
        assert not task.done(), "a manager without controllers keeps running until stopped"
        manager.stop()
        await asyncio.wait_for(task, 5)


async def test_readyz_waits_for_cache_sync(server: FakeApiServer) -> None:  # noqa: F811
    can_list = asyncio.Event()

    async def handler(request: web.Request) -> web.StreamResponse:
        if request.query.get("watch") == "true":
            await asyncio.sleep(3600)
        if not can_list.is_set():
            return web.json_response({"kind": "Status", "code": 503, "message": "starting"},
                                     status=503)
        return web.json_response({"metadata": {"resourceVersion": "3"}, "items": []})

    server.handler = handler
    async with make_client(server.url) as client:
        manager = Manager(client, port=0, bind_host="127.0.0.1",
                          informer_options={"backoff_max_seconds": 0.1})
        manager.informer(CONFIGMAPS, "ns")
        task = asyncio.create_task(manager.run())
        await asyncio.wait_for(manager.started.wait(), 5)
        port = manager.bound_port or 0
        status, text = await scrape(port, "/readyz")
        assert status == 503 and "configmaps/ns" in text
        can_list.set()
        async with asyncio.timeout(5):
            while (await scrape(port, "/readyz"))[0] != 200:
                await asyncio.sleep(0.05)
        status, text = await scrape(port, "/metrics")
        assert status == 200 and "kaito_informer_relists_total" in text
        manager.stop()
        await asyncio.wait_for(task, 5)


def test_desired_copy_is_owned_and_labelled() -> None:
    source = {"metadata": {"name": "a", "namespace": "ns", "uid": "u1"}, "data": {"k": "v"}}
    copy = desired_copy(source, "me")
    assert copy["metadata"]["name"] == "a-copy"
    assert copy["metadata"]["ownerReferences"][0]["uid"] == "u1"
    assert copy["metadata"]["labels"] == {COPY_OF_LABEL: "a"}
    assert is_up_to_date(copy, copy)
    assert not is_up_to_date({**copy, "data": {"k": "old"}}, copy)
