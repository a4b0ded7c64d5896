"""The envtest tier's control plane is a real kube-apiserver: CRDs install, objects
round-trip, and an asyncio watch (kubernetes_asyncio) sees what happens to them."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import pytest
from kubernetes_asyncio import client, watch

from kaito.devcluster import LocalCluster

pytestmark = pytest.mark.envtest

GROUP = "test.kaito.sh"
PLURAL = "widgets"
CRD = {
    "apiVersion": "apiextensions.k8s.io/v1",
    "kind": "CustomResourceDefinition",
    "metadata": {"name": f"{PLURAL}.{GROUP}"},
    "spec": {
        "group": GROUP,
        "scope": "Namespaced",
        "names": {"plural": PLURAL, "singular": "widget", "kind": "Widget"},
        "versions": [{
            "name": "v1",
            "served": True,
            "storage": True,
            "schema": {"openAPIV3Schema": {
                "type": "object",
                "properties": {"size": {"type": "integer", "minimum": 1}},
            }},
        }],
    },
}


def _install_crd(control_plane: LocalCluster) -> None:
    control_plane.kubectl("apply", "-f", "-", input=json.dumps(CRD))
    control_plane.kubectl(
        "wait", "--for=condition=Established", f"crd/{PLURAL}.{GROUP}", "--timeout=60s"
    )


def test_apiserver_reports_the_pinned_version(control_plane: LocalCluster) -> None:
    version = json.loads(control_plane.kubectl("version", "-o", "json").stdout)
    assert version["serverVersion"]["gitVersion"].startswith("v1.")


async def _list_when_ready(custom: client.CustomObjectsApi, namespace: str) -> Any:
    """Lists widgets, retrying while a just-established CRD's storage initializes (429)."""
    for _ in range(100):
        try:
            return await custom.list_namespaced_custom_object(GROUP, "v1", namespace, PLURAL)
        except client.ApiException as error:
            if error.status not in (404, 429):
                raise
        await asyncio.sleep(0.1)
    raise TimeoutError("the widgets resource never became listable")


async def test_watch_sees_added_and_modified(
    control_plane: LocalCluster, namespace: str, api_client: Any
) -> None:
    _install_crd(control_plane)
    custom = client.CustomObjectsApi(api_client)
    # Watch from the list's resourceVersion: every later event is replayed, whatever
    # the timing of the create and patch below.
    listed = await _list_when_ready(custom, namespace)
    body = {"apiVersion": f"{GROUP}/v1", "kind": "Widget",
            "metadata": {"name": "w1"}, "size": 1}
    await custom.create_namespaced_custom_object(GROUP, "v1", namespace, PLURAL, body)
    await custom.patch_namespaced_custom_object(
        GROUP, "v1", namespace, PLURAL, "w1", {"size": 2},
        _content_type="application/merge-patch+json",  # type: ignore[call-arg]
    )
    seen: list[tuple[str, int]] = []
    stream = watch.Watch()
    async with stream:
        async with asyncio.timeout(30):
            async for event in stream.stream(
                custom.list_namespaced_custom_object, GROUP, "v1", namespace, PLURAL,
                resource_version=listed["metadata"]["resourceVersion"], _request_timeout=30,
            ):
                seen.append((event["type"], event["object"]["size"]))
                if event["type"] == "MODIFIED":
                    break
    assert seen == [("ADDED", 1), ("MODIFIED", 2)]


def test_schema_validation_rejects_bad_objects(
    control_plane: LocalCluster, namespace: str
) -> None:
    _install_crd(control_plane)
    bad = {"apiVersion": f"{GROUP}/v1", "kind": "Widget",
           "metadata": {"name": "bad", "namespace": namespace}, "size": 0}
    result = control_plane.kubectl("create", "-f", "-", input=json.dumps(bad), check=False)
    assert result.returncode != 0
    assert "should be greater than or equal to 1" in result.stderr
