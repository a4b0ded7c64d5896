"""The webhook's watched templates: reads come from the watch only for the operator's
namespace and only while the watch is up; otherwise the on-demand reader answers."""

from __future__ import annotations

import asyncio

import pytest
from kubernetes_asyncio import client

from webhook.kube import WatchedConfigMaps

pytestmark = pytest.mark.unit


class Recording:
    def __init__(self) -> None:
        self.reads: list[tuple[str, str]] = []

    async def read(self, namespace: str, name: str) -> dict[str, str] | None:
        self.reads.append((namespace, name))
        return {"from": "api"}


def test_reads_go_to_the_api_until_the_watch_is_up_and_for_other_namespaces() -> None:
    async def scenario() -> None:
        fallback = Recording()
        api = client.ApiClient(client.Configuration(host="https://127.0.0.1:1"))
        try:
            watched = WatchedConfigMaps(api, "kaito-system", fallback)
            assert not watched.is_synced
            assert await watched.read("kaito-system", "lora-params-template") == {"from": "api"}
            # As after a list: this namespace is answered from memory (absent is None)...
            watched._cache = {"lora-params-template": {"training_config.yaml": "x: 1"}}
            watched._is_synced = True
            got = await watched.read("kaito-system", "lora-params-template")
            assert got == {"training_config.yaml": "x: 1"}
            got["training_config.yaml"] = "changed by a caller"  # a copy, not the cache
            assert watched._cache["lora-params-template"]["training_config.yaml"] == "x: 1"
            assert await watched.read("kaito-system", "absent") is None
            # ...another namespace still asks the API.
            assert await watched.read("team-a", "mine") == {"from": "api"}
            assert fallback.reads == [("kaito-system", "lora-params-template"),
                                      ("team-a", "mine")]
        finally:
            await api.close()

    asyncio.run(scenario())


def test_a_failed_watch_falls_back_and_retries() -> None:
    async def scenario() -> None:
        fallback = Recording()
        # Nothing listens on port 1: the list fails, the reader stays on the API.
        api = client.ApiClient(client.Configuration(host="https://127.0.0.1:1"))
        try:
            watched = WatchedConfigMaps(api, "kaito-system", fallback, retry_seconds=0.05)
            task = asyncio.create_task(watched.run())
            await asyncio.sleep(0.3)
            assert not task.done()  # it keeps retrying
            assert not watched.is_synced
            assert await watched.read("kaito-system", "x") == {"from": "api"}
            task.cancel()
            with pytest.raises(asyncio.CancelledError):
                await task
        finally:
            await api.close()

    asyncio.run(scenario())
