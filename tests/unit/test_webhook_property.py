"""Property: whatever is posted, the real aiohttp server answers a well-formed AdmissionReview
or HTTP 400 (413 for oversized bodies), never a 5xx and never an internal-error denial.

The server runs on its own event loop in a thread, over a real TCP socket; hypothesis drives
a blocking HTTP client against it.
"""

from __future__ import annotations

import asyncio
import copy
import json
import threading
from collections.abc import Iterator
from typing import Any, Self

import httpx
import pytest
from aiohttp import web
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from presets.catalog import load_catalog
from tests.unit.test_webhook_cases import INFERENCE, INVALID_CASES, SEED
from tests.unit.test_webhook_server import DictConfigMaps, review
from webhook.server import MUTATE_PATH, VALIDATE_PATH, build_app

pytestmark = pytest.mark.unit

PATHS = st.sampled_from([MUTATE_PATH, VALIDATE_PATH])


class ThreadedServer:
    """The webhook app served on 127.0.0.1 from a background thread's event loop."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self.port = 0
        self._ready = threading.Event()
        self._stop: asyncio.Event | None = None
        self._thread = threading.Thread(target=self._run, name="webhook-under-test",
                                        daemon=True)

    def _run(self) -> None:
        asyncio.set_event_loop(self.loop)
        self.loop.run_until_complete(self._serve())
        self.loop.close()

    async def _serve(self) -> None:
        self._stop = asyncio.Event()
        configmaps = DictConfigMaps({("team-a", "cfg"): {"training_config.yaml": "x: ["}})
        runner = web.AppRunner(build_app(load_catalog(), configmaps), access_log=None)
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        server = site._server
        assert server is not None and server.sockets  # type: ignore[attr-defined]
        self.port = server.sockets[0].getsockname()[1]  # type: ignore[attr-defined]
        self._ready.set()
        await self._stop.wait()
        await runner.cleanup()

    def __enter__(self) -> Self:
        self._thread.start()
        assert self._ready.wait(10)
        return self

    def __exit__(self, *exc: object) -> None:
        assert self._stop is not None
        self.loop.call_soon_threadsafe(self._stop.set)
        self._thread.join(10)


@pytest.fixture(scope="module")
def client() -> Iterator[httpx.Client]:
    with ThreadedServer() as server, httpx.Client(
        base_url=f"http://127.0.0.1:{server.port}", timeout=10
    ) as http:
        yield http


def check_answer(response: httpx.Response, sent: bytes) -> None:
    assert response.status_code < 500, response.text
    if response.status_code != 200:
        assert response.status_code == 400
        assert "error" in response.json()
        return
    answer = response.json()
    assert answer["apiVersion"] == "admission.k8s.io/v1"
    assert answer["kind"] == "AdmissionReview"
    result = answer["response"]
    assert result["uid"] == json.loads(sent)["request"]["uid"]
    assert isinstance(result["allowed"], bool)
    if not result["allowed"]:
        status = result["status"]
        assert status["code"] != 500, status["message"]
        assert 400 <= status["code"] < 600 and status["message"]


json_scalars = st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(
    max_size=20)
json_values = st.recursive(
    json_scalars,
    lambda children: st.lists(children, max_size=4) | st.dictionaries(
        st.text(max_size=12), children, max_size=4),
    max_leaves=20,
)
KEYS = ["resource", "inference", "tuning", "instanceType", "count", "labelSelector",
        "matchLabels", "preset", "name", "method", "config", "input", "urls", "output", "image",
        "imagePushSecret", "volumeSource", "adapters", "source", "strength", "template",
        "metadata", "preferredNodes", "matchExpressions"]
BASES = [SEED, INFERENCE, *(case.workspace for case in INVALID_CASES)]


def _paths(node: Any, prefix: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    found = [prefix]
    if isinstance(node, dict):
        for key, value in node.items():
            found += _paths(value, (*prefix, key))
    elif isinstance(node, list):
        for index, value in enumerate(node):
            found += _paths(value, (*prefix, index))
    return found


@st.composite
def mutated_workspaces(draw: st.DrawFn) -> dict[str, Any]:
    """A known workspace with a few subtrees replaced by random JSON or dropped."""
    obj: dict[str, Any] = copy.deepcopy(draw(st.sampled_from(BASES)))
    for _ in range(draw(st.integers(1, 4))):
        paths = [p for p in _paths(obj) if p]
        path = draw(st.sampled_from(paths))
        parent = obj
        for part in path[:-1]:
            parent = parent[part]
        action = draw(st.sampled_from(["replace", "drop", "add"]))
        if action == "drop" and isinstance(parent, dict):
            parent.pop(path[-1], None)
        elif action == "add" and isinstance(parent, dict):
            parent[draw(st.sampled_from(KEYS))] = draw(json_values)
        else:
            parent[path[-1]] = draw(json_values)
    if isinstance(obj.get("tuning"), dict) and draw(st.booleans()):
        obj["tuning"]["config"] = "cfg"  # a ConfigMap holding broken YAML
    return obj


@st.composite
def reviews(draw: st.DrawFn) -> dict[str, Any]:
    operation = draw(st.sampled_from(["CREATE", "UPDATE", "DELETE", "CONNECT"]))
    obj = draw(mutated_workspaces())
    old = draw(mutated_workspaces()) if operation in ("UPDATE", "DELETE") else None
    body = review(obj, operation=operation, old=old, uid=draw(st.uuids()).hex)
    body["request"]["namespace"] = draw(st.sampled_from(["team-a", None, ""]))
    return body


@settings(max_examples=1500, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(body=reviews(), path=PATHS)
def test_random_reviews_get_well_formed_answers(client: httpx.Client, body: dict[str, Any],
                                                path: str) -> None:
    sent = json.dumps(body).encode()
    check_answer(client.post(path, content=sent), sent)


@settings(max_examples=1000, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(body=reviews(), cut=st.floats(0, 1, exclude_max=True), path=PATHS)
def test_truncated_reviews_get_400(client: httpx.Client, body: dict[str, Any], cut: float,
                                   path: str) -> None:
    sent = json.dumps(body).encode()
    truncated = sent[: int(len(sent) * cut)]
    response = client.post(path, content=truncated)
    assert response.status_code == 400, response.text


@settings(max_examples=1000, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(body=json_values | st.binary(max_size=200).map(lambda b: {"raw": b.hex()}),
       raw=st.binary(max_size=300), use_raw=st.booleans(), path=PATHS)
def test_arbitrary_bodies_never_5xx(client: httpx.Client, body: Any, raw: bytes,
                                    use_raw: bool, path: str) -> None:
    sent = raw if use_raw else json.dumps(body).encode()
    response = client.post(path, content=sent)
    assert response.status_code in (200, 400), response.text
    if response.status_code == 200:
        check_answer(response, sent)
