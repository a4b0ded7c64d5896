"""The aiohttp webhook over HTTP: reviews in, AdmissionReviews (or 400/413) out, metrics."""

from __future__ import annotations

import asyncio
import base64
import copy
import io
import itertools
import json
import uuid
from collections.abc import AsyncIterator
from typing import Any

import jsonpatch
import pytest
from aiohttp.test_utils import TestClient, TestServer

from presets.catalog import load_catalog
from tests.unit.test_webhook_cases import SEED, _edit, training_config
from webhook.admission import ConfigMapUnavailable
from webhook.server import MAX_BODY_BYTES, MUTATE_PATH, VALIDATE_PATH, build_app

pytestmark = pytest.mark.unit


class DictConfigMaps:
    """ConfigMaps held in memory, keyed by (namespace, name)."""

    def __init__(self, data: dict[tuple[str, str], dict[str, str]] | None = None,
                 *, is_down: bool = False) -> None:
        self.data = data or {}
        self.is_down = is_down

    async def read(self, namespace: str, name: str) -> dict[str, str] | None:
        if self.is_down:
            raise ConfigMapUnavailable("HTTP 503 Service Unavailable")
        return self.data.get((namespace, name))


def review(obj: dict[str, Any] | None, *, operation: str = "CREATE",
           old: dict[str, Any] | None = None, uid: str | None = None) -> dict[str, Any]:
    request: dict[str, Any] = {
        "uid": uid or str(uuid.uuid4()),
        "kind": {"group": "kaito.sh", "version": "v1alpha1", "kind": "Workspace"},
        "resource": {"group": "kaito.sh", "version": "v1alpha1", "resource": "workspaces"},
        "operation": operation,
        "namespace": "team-a",
        "name": "workspace",
        "object": obj,
        "userInfo": {"username": "alice"},
    }
    if old is not None:
        request["oldObject"] = old
    return {"apiVersion": "admission.k8s.io/v1", "kind": "AdmissionReview", "request": request}


@pytest.fixture
async def configmaps() -> DictConfigMaps:
    return DictConfigMaps()


@pytest.fixture
async def http(configmaps: DictConfigMaps) -> AsyncIterator[TestClient[Any, Any]]:
    app = build_app(load_catalog(), configmaps)
    async with TestClient(TestServer(app)) as client:
        yield client


async def _post(http: TestClient[Any, Any], path: str, body: dict[str, Any]) -> dict[str, Any]:
    response = await http.post(path, json=body)
    assert response.status == 200
    answer: dict[str, Any] = await response.json()
    assert answer["apiVersion"] == "admission.k8s.io/v1" and answer["kind"] == "AdmissionReview"
    result: dict[str, Any] = answer["response"]
    assert result["uid"] == body["request"]["uid"]
    return result


async def test_mutate_answers_a_json_patch_of_defaults(http: TestClient[Any, Any]) -> None:
    obj = _edit(SEED, resource__instanceType=None)
    response = await _post(http, MUTATE_PATH, review(obj))
    assert response["allowed"] is True and response["patchType"] == "JSONPatch"
    patch = json.loads(base64.b64decode(response["patch"]))
    patched = jsonpatch.apply_patch(copy.deepcopy(obj), patch)
    assert patched["resource"]["instanceType"] == "Standard_NC4as_T4_v3"
    assert patched["resource"]["count"] == 1
    assert patched["tuning"] == obj["tuning"]  # what the user wrote is untouched


async def test_mutate_warns_about_deprecated_fields(http: TestClient[Any, Any]) -> None:
    response = await _post(http, MUTATE_PATH, review(_edit(SEED, resource__count=1)))
    assert any("resource.count is deprecated" in w for w in response["warnings"])
    assert "patch" not in response


async def test_validate_admits_the_seed_with_a_float16_warning(
    http: TestClient[Any, Any]
) -> None:
    response = await _post(http, VALIDATE_PATH, review(SEED))
    assert response["allowed"] is True
    assert response["warnings"] == [
        "Standard_NC6s_v3 (V100) has no bfloat16: tuning runs in float16 instead"
    ]


async def test_validate_denies_with_field_paths(http: TestClient[Any, Any]) -> None:
    bad = _edit(SEED, tuning__input__urls=["http://169.254.169.254/latest"])
    response = await _post(http, VALIDATE_PATH, review(bad))
    assert response["allowed"] is False
    assert response["status"]["code"] == 422
    assert response["status"]["message"].startswith("tuning.input.urls[0]: Invalid value")


async def test_wrongly_typed_object_is_denied_not_crashed(http: TestClient[Any, Any]) -> None:
    bad = _edit(SEED, resource__count="two", tuning__input__urls="not-a-list")
    for path in (MUTATE_PATH, VALIDATE_PATH):
        response = await _post(http, path, review(bad))
        assert response["allowed"] is False
        assert "resource.count: Invalid value" in response["status"]["message"]
        assert "tuning.input.urls: Invalid value" in response["status"]["message"]


async def test_update_rules_apply(http: TestClient[Any, Any]) -> None:
    new = _edit(SEED, tuning__method="lora",
                resource__instanceType="Standard_NC24ads_A100_v4")
    response = await _post(http, VALIDATE_PATH, review(new, operation="UPDATE", old=SEED))
    assert response["allowed"] is False
    assert "tuning.method: Forbidden: field is immutable" in response["status"]["message"]
    deleting = _edit(new, metadata={"name": "x", "deletionTimestamp": "2024-01-01T00:00:00Z"})
    response = await _post(http, VALIDATE_PATH, review(deleting, operation="UPDATE", old=SEED))
    assert response["allowed"] is True


async def test_delete_and_connect_are_allowed(http: TestClient[Any, Any]) -> None:
    response = await _post(http, VALIDATE_PATH, review(None, operation="DELETE", old=SEED))
    assert response["allowed"] is True


async def test_configmap_is_read_through_the_reader(
    http: TestClient[Any, Any], configmaps: DictConfigMaps
) -> None:
    obj = _edit(SEED, tuning__config="cfg")
    response = await _post(http, VALIDATE_PATH, review(obj))
    assert "tuning.config: Not found" in response["status"]["message"]
    configmaps.data[("team-a", "cfg")] = training_config(
        {"QuantizationConfig": {"load_in_4bit": True}})
    assert (await _post(http, VALIDATE_PATH, review(obj)))["allowed"] is True
    configmaps.is_down = True
    response = await _post(http, VALIDATE_PATH, review(obj))
    assert response["allowed"] is False and response["status"]["code"] == 503


@pytest.mark.parametrize(
    "body",
    [
        b"",
        b"not json",
        b"[]",
        (b'{"apiVersion": "admission.k8s.io/v1beta1", "kind": "AdmissionReview", '
        b'"request": {"uid": "u", "operation": "CREATE", "object": {}}}'),
        b'{"apiVersion": "admission.k8s.io/v1", "kind": "AdmissionReview"}',
        (b'{"apiVersion": "admission.k8s.io/v1", "kind": "AdmissionReview", '
        b'"request": {"uid": "u", "operation": "CREATE"}}'),
        (b'{"apiVersion": "admission.k8s.io/v1", "kind": "AdmissionReview", '
        b'"request": {"uid": "u", "operation": "UPDATE", "object": {}}}'),
        b"[" * 100000,
    ],
)
async def test_malformed_reviews_get_400(http: TestClient[Any, Any], body: bytes) -> None:
    response = await http.post(VALIDATE_PATH, data=body,
                               headers={"Content-Type": "application/json"})
    assert response.status == 400
    answer = await response.json()
    assert answer["error"]


async def test_400_echoes_the_uid_when_readable(http: TestClient[Any, Any]) -> None:
    body = {"apiVersion": "admission.k8s.io/v1", "kind": "AdmissionReview",
            "request": {"uid": "abc-123", "operation": "UPDATE", "object": {}}}
    response = await http.post(MUTATE_PATH, json=body)
    assert response.status == 400 and (await response.json())["uid"] == "abc-123"


async def test_oversized_body_gets_413(http: TestClient[Any, Any]) -> None:
    response = await http.post(VALIDATE_PATH, data=io.BytesIO(b" " * (MAX_BODY_BYTES + 1)))
    assert response.status == 413
    ok = await http.post(VALIDATE_PATH, json=review(SEED))
    assert ok.status == 200


async def test_large_valid_review_is_answered(http: TestClient[Any, Any]) -> None:
    big = _edit(SEED, metadata={"name": "big", "annotations": {"blob": "x" * 3_000_000}})
    body = review(big)
    response = await http.post(VALIDATE_PATH, data=io.BytesIO(json.dumps(body).encode()),
                               headers={"Content-Type": "application/json"})
    assert response.status == 200
    answer = await response.json()
    assert answer["response"]["allowed"] is True
    assert answer["response"]["uid"] == body["request"]["uid"]


async def test_health_and_metrics(http: TestClient[Any, Any]) -> None:
    assert (await http.get("/healthz")).status == 200
    assert (await http.get("/readyz")).status == 200
    await _post(http, VALIDATE_PATH, review(SEED))
    await http.post(VALIDATE_PATH, data=b"junk")
    text = await (await http.get("/metrics")).text()
    assert (f'controller_runtime_webhook_requests_total{{code="200",webhook="{VALIDATE_PATH}"}} '
            "1.0") in text
    assert f'controller_runtime_webhook_requests_total{{code="400",webhook="{VALIDATE_PATH}"}}' \
        in text
    assert "controller_runtime_webhook_latency_seconds_bucket" in text
    assert "controller_runtime_webhook_requests_in_flight" in text


async def test_large_review_does_not_block_the_event_loop(http: TestClient[Any, Any]) -> None:
    # 150k URLs (~6.4 MiB) take seconds to check; the loop must keep answering meanwhile.
    urls = [f"https://example.com/data/{i:08d}.parquet" for i in range(150_000)]
    body = json.dumps(review(_edit(SEED, tuning__input__urls=urls))).encode()
    assert len(body) < MAX_BODY_BYTES
    loop = asyncio.get_running_loop()
    ticks = [loop.time()]

    async def tick() -> None:
        while True:
            await asyncio.sleep(0.01)
            ticks.append(loop.time())

    ticker = asyncio.create_task(tick(), name="loop-lag-probe")
    try:
        response = await http.post(VALIDATE_PATH, data=io.BytesIO(body),
                                   headers={"Content-Type": "application/json"})
        answer = await response.json()
    finally:
        ticker.cancel()
    ticks.append(loop.time())
    assert response.status == 200 and answer["response"]["allowed"] is True
    longest = max(later - earlier for earlier, later in itertools.pairwise(ticks))
    assert longest < 0.5, f"event loop blocked for {longest:.2f}s"


async def test_the_settings_allow_list_admits_an_in_cluster_data_server(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from webhook.settings import WebhookSettings

    monkeypatch.setenv("KAITO_WEBHOOK_FETCH_ALLOW_CIDRS", "10.0.0.0/8, fd00::/8")
    settings = WebhookSettings()
    in_cluster = _edit(SEED, tuning__input__urls=["http://10.1/train.parquet"])
    app = build_app(load_catalog(), DictConfigMaps(),
                    allowed_networks=settings.fetch_allow_cidrs)
    async with TestClient(TestServer(app)) as client:
        assert (await _post(client, VALIDATE_PATH, review(in_cluster)))["allowed"] is True
        metadata = _edit(SEED, tuning__input__urls=["http://169.254.169.254/latest"])
        denied = await _post(client, VALIDATE_PATH, review(metadata))
        assert denied["allowed"] is False
    async with TestClient(TestServer(build_app(load_catalog(), DictConfigMaps()))) as client:
        response = await _post(client, VALIDATE_PATH, review(in_cluster))
        assert response["allowed"] is False
        assert response["status"]["message"].startswith(
            "tuning.input.urls[0]: Invalid value: \"http://10.1/train.parquet\": host '10.1': "
            "address 10.0.0.1 is not a public address (private)")


def test_a_bad_cidr_in_the_settings_is_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    from pydantic import ValidationError

    from webhook.settings import WebhookSettings

    monkeypatch.setenv("KAITO_WEBHOOK_FETCH_ALLOW_CIDRS", "10.0.0.0/8,not-a-cidr")
    with pytest.raises(ValidationError, match="allowed CIDR 'not-a-cidr' is not a network"):
        WebhookSettings()


def test_the_allow_list_flag_overrides_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    import ipaddress

    from webhook.__main__ import _settings

    monkeypatch.setenv("KAITO_WEBHOOK_FETCH_ALLOW_CIDRS", "192.168.0.0/16")
    assert _settings([]).fetch_allow_cidrs == (ipaddress.ip_network("192.168.0.0/16"),)
    flagged = _settings(["--fetch-allow-cidr", "10.0.0.0/8", "--fetch-allow-cidr", "fd00::/8"])
    assert flagged.fetch_allow_cidrs == (ipaddress.ip_network("10.0.0.0/8"),
                                         ipaddress.ip_network("fd00::/8"))
