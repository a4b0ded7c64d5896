"""The event recorder: says each change once, writes in the background (a reconcile does
not wait on the apiserver for it), drops rather than blocks when too many wait, and lets
a failed Event be said again."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from controller.events import NORMAL, EventRecorder
from controller.kube.errors import ApiUnavailable

pytestmark = pytest.mark.unit

WORKSPACE = {"apiVersion": "kaito.sh/v1beta1", "kind": "Workspace",
             "metadata": {"name": "ws", "namespace": "default", "uid": "u-1"}}


class SlowClient:
    """Creates after ``gate`` opens; fails while ``failing``."""

    def __init__(self) -> None:
        self.created: list[dict[str, Any]] = []
        self.gate = asyncio.Event()
        self.failing = False

    async def create(self, resource: Any, body: dict[str, Any]) -> dict[str, Any]:
        await self.gate.wait()
        if self.failing:
            raise ApiUnavailable("apiserver down")
        self.created.append(body)
        return body


def test_record_returns_before_the_event_is_written_and_close_writes_it() -> None:
    async def scenario() -> None:
        client = SlowClient()
        recorder = EventRecorder(client, "kaito", "test")  # type: ignore[arg-type]
        said = await asyncio.wait_for(
            recorder.record(WORKSPACE, NORMAL, "InferenceReady", "ready"), 1)
        assert said and client.created == []  # queued, not written yet
        assert not await recorder.record(WORKSPACE, NORMAL, "InferenceReady", "ready")
        client.gate.set()
        await recorder.close()
        assert [e["reason"] for e in client.created] == ["InferenceReady"]
        assert client.created[0]["regarding"]["uid"] == "u-1"

    asyncio.run(scenario())


def test_a_full_queue_drops_instead_of_blocking() -> None:
    async def scenario() -> None:
        client = SlowClient()
        recorder = EventRecorder(client, "kaito", "test", senders=1,  # type: ignore[arg-type]
                                 queue_size=2)
        results = [await asyncio.wait_for(
            recorder.record(WORKSPACE, NORMAL, f"Step{i}", "note"), 1) for i in range(5)]
        # One taken by the sender, two waiting; the rest dropped, and not remembered as said.
        assert results == [True, True, True, False, False]
        client.gate.set()
        await recorder.flush()
        assert await recorder.record(WORKSPACE, NORMAL, "Step4", "note")
        await recorder.close()
        assert sorted(e["reason"] for e in client.created) == [
            "Step0", "Step1", "Step2", "Step4"]

    asyncio.run(scenario())


def test_a_failed_write_may_be_said_again() -> None:
    async def scenario() -> None:
        client = SlowClient()
        client.failing = True
        client.gate.set()
        recorder = EventRecorder(client, "kaito", "test")  # type: ignore[arg-type]
        assert await recorder.record(WORKSPACE, NORMAL, "InferenceReady", "ready")
        await recorder.flush()
        client.failing = False
        assert await recorder.record(WORKSPACE, NORMAL, "InferenceReady", "ready")
        await recorder.close()
        assert [e["reason"] for e in client.created] == ["InferenceReady"]

    asyncio.run(scenario())
