"""The manager's HTTP endpoints and lifecycle, against a scripted API server."""

from __future__ import annotations

import asyncio

import aiohttp
import pytest
from aiohttp import web

from controller.controller import Controller
from controller.kube import CONFIGMAPS, KubeClient
from controller.manager import Manager
from controller.reconcile import Request, Result
from tests.envtest.configmap_copy import COPY_OF_LABEL, desired_copy, is_up_to_date
from tests.unit.test_controller_kube_client import (
    FakeApiServer,
    make_client,
    server,  # noqa: F401 - fixture
)
from tests.unit.test_controller_reconcile import FakeSource

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


class SlowReconciler:
    def __init__(self, seconds: float) -> None:
        self.seconds = seconds
        self.started: list[str] = []
        self.finished: list[str] = []
        self.cancelled: list[str] = []

    async def reconcile(self, request: Request) -> Result:
        self.started.append(request.key)
        try:
            await asyncio.sleep(self.seconds)
        except asyncio.CancelledError:
            self.cancelled.append(request.key)
            raise
        self.finished.append(request.key)
        return Result()


async def start_with_one_key(
    client: KubeClient, reconciler: SlowReconciler, grace_seconds: float
) -> tuple[Manager, asyncio.Task[None]]:
    manager = Manager(client, port=0, bind_host="127.0.0.1",
                      graceful_shutdown_seconds=grace_seconds)
    source = FakeSource()
    source.create("a")
    source.create("b")
    controller = Controller("slow", reconciler, workers=1)
    controller.watch(source)
    manager.add_controller(controller)
    task = asyncio.create_task(manager.run())
    async with asyncio.timeout(5):
        while not reconciler.started:
            await asyncio.sleep(0.01)
    return manager, task


async def test_stop_drains_the_in_flight_reconcile(server: FakeApiServer) -> None:  # noqa: F811
    reconciler = SlowReconciler(0.3)
    async with make_client(server.url) as client:
        manager, task = await start_with_one_key(client, reconciler, grace_seconds=5)
        manager.stop()
        await asyncio.wait_for(task, 5)
    assert reconciler.finished == ["ns/a"], "the in-flight reconcile completed"
    assert reconciler.started == ["ns/a"], "no new key started after stop"


async def test_stop_cancels_reconciles_past_the_grace_period(
    server: FakeApiServer,  # noqa: F811
) -> None:
    reconciler = SlowReconciler(30)
    async with make_client(server.url) as client:
        manager, task = await start_with_one_key(client, reconciler, grace_seconds=0.2)
        manager.stop()
        await asyncio.wait_for(task, 5)
    assert reconciler.cancelled == ["ns/a"] and reconciler.finished == []
