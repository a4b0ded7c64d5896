"""The webhook's Kubernetes I/O: tuning ConfigMaps, the certificate Secret, the caBundle.

All calls go through kubernetes_asyncio with a request timeout, and only this module
looks at API status codes.
"""

from __future__ import annotations

import asyncio
import base64
import json
import logging
from typing import Any

from kubernetes_asyncio import client, watch
from kubernetes_asyncio.client.exceptions import ApiException

from webhook.admission import ConfigMapReader, ConfigMapUnavailable
from webhook.certs import Bundle

log = logging.getLogger(__name__)

REQUEST_TIMEOUT_SECONDS = 5.0


class Conflict(Exception):
    """Someone else wrote the object first (HTTP 409)."""


class KubeConfigMapReader:
    """Reads ConfigMap data with a timeout; 404 means 'does not exist'."""

    def __init__(self, api: client.ApiClient, timeout_seconds: float = REQUEST_TIMEOUT_SECONDS):
        self._core = client.CoreV1Api(api)
        self._timeout_seconds = timeout_seconds

    async def read(self, namespace: str, name: str) -> dict[str, str] | None:
        try:
            configmap = await self._core.read_namespaced_config_map(
                name, namespace, _request_timeout=self._timeout_seconds
            )
        except ApiException as error:
            if error.status == 404:
                return None
            raise ConfigMapUnavailable(f"HTTP {error.status} {error.reason}") from None
        except (OSError, TimeoutError) as error:
            raise ConfigMapUnavailable(error.__class__.__name__) from None
        data: dict[str, str] = dict(configmap.data or {})
        return data


class WatchedConfigMaps:
    """The operator namespace's ConfigMaps (the tuning templates every workspace without
    its own config uses) kept from a list and watch, so a review reads them from memory
    instead of waiting on an apiserver that may be busy. Other namespaces, and this one
    while no watch is up (start-up, a broken watch), are read on demand by ``fallback``."""

    def __init__(self, api: client.ApiClient, namespace: str, fallback: ConfigMapReader,
                 *, retry_seconds: float = 2.0, watch_seconds: int = 300) -> None:
        self.namespace = namespace
        self._core = client.CoreV1Api(api)
        self._fallback = fallback
        self._retry_seconds = retry_seconds
        self._watch_seconds = watch_seconds
        self._cache: dict[str, dict[str, str]] = {}
        self._is_synced = False

    @property
    def is_synced(self) -> bool:
        return self._is_synced

    async def run(self) -> None:
        """List and watch until cancelled; a failure falls back to reads, then relists."""
        while True:
            try:
                await self._list_and_watch()
            except asyncio.CancelledError:
                raise
            except Exception as error:  # noqa: BLE001 - any failure: read on demand, relist
                log.warning("watching the tuning templates failed; reading them on demand",
                            extra={"namespace": self.namespace, "error": str(error)[:200]})
            self._is_synced = False
            await asyncio.sleep(self._retry_seconds)

    async def _list_and_watch(self) -> None:
        listing = await self._core.list_namespaced_config_map(
            self.namespace, _request_timeout=REQUEST_TIMEOUT_SECONDS)
        self._cache = {cm.metadata.name: dict(cm.data or {}) for cm in listing.items}
        version = listing.metadata.resource_version
        self._is_synced = True
        while True:  # each watch ends after watch_seconds; resume where it was
            async with watch.Watch().stream(
                    self._core.list_namespaced_config_map, self.namespace,
                    resource_version=version, timeout_seconds=self._watch_seconds,
                    _request_timeout=self._watch_seconds + 30) as stream:
                async for event in stream:
                    configmap = event["object"]
                    version = configmap.metadata.resource_version
                    if event["type"] == "DELETED":
                        self._cache.pop(configmap.metadata.name, None)
                    else:
                        self._cache[configmap.metadata.name] = dict(configmap.data or {})

    async def read(self, namespace: str, name: str) -> dict[str, str] | None:
        if namespace != self.namespace or not self._is_synced:
            return await self._fallback.read(namespace, name)
        data = self._cache.get(name)
        return None if data is None else dict(data)


class NoConfigMaps:
    """A reader for running without API access: every ConfigMap is unavailable."""

    async def read(self, namespace: str, name: str) -> dict[str, str] | None:
        raise ConfigMapUnavailable("the webhook runs without Kubernetes API access")


class CertificateStore:
    """The Secret holding the webhook's CA and serving pair."""

    def __init__(self, api: client.ApiClient, namespace: str, name: str) -> None:
        self._core = client.CoreV1Api(api)
        self.namespace = namespace
        self.name = name

    async def load(self) -> tuple[Bundle | None, str | None]:
        """The stored bundle (None if missing or incomplete) and the Secret's resourceVersion."""
        try:
            secret = await self._core.read_namespaced_secret(
                self.name, self.namespace, _request_timeout=REQUEST_TIMEOUT_SECONDS
            )
        except ApiException as error:
            if error.status == 404:
                return None, None
            raise
        data = {k: base64.b64decode(v) for k, v in (secret.data or {}).items()}
        return Bundle.from_secret_data(data), secret.metadata.resource_version

    async def save(self, bundle: Bundle, resource_version: str | None) -> None:
        """Creates the Secret, or replaces the version read; Conflict when it changed."""
        body = client.V1Secret(
            api_version="v1",
            kind="Secret",
            type="Opaque",
            metadata=client.V1ObjectMeta(
                name=self.name, namespace=self.namespace, resource_version=resource_version,
                labels={"app.kubernetes.io/name": "kaito-webhook"},
            ),
            data={k: base64.b64encode(v).decode() for k, v in bundle.to_secret_data().items()},
        )
        try:
            if resource_version is None:
                await self._core.create_namespaced_secret(
                    self.namespace, body, _request_timeout=REQUEST_TIMEOUT_SECONDS
                )
            else:
                await self._core.replace_namespaced_secret(
                    self.name, self.namespace, body, _request_timeout=REQUEST_TIMEOUT_SECONDS
                )
        except ApiException as error:
            if error.status == 409:
                raise Conflict(self.name) from None
            raise


async def patch_ca_bundle(
    api: client.ApiClient, mutating: str, validating: str, ca_pem: bytes
) -> int:
    """Sets caBundle on every webhook of both configurations; returns how many changed."""
    admission = client.AdmissionregistrationV1Api(api)
    bundle = base64.b64encode(ca_pem).decode()
    changed = 0
    for kind, name in (("mutating", mutating), ("validating", validating)):
        read = getattr(admission, f"read_{kind}_webhook_configuration")
        patch = getattr(admission, f"patch_{kind}_webhook_configuration")
        try:
            response = await read(name, _preload_content=False,
                                  _request_timeout=REQUEST_TIMEOUT_SECONDS)
            status, current = response.status, json.loads(await response.read())
        except ApiException as error:
            status, current = error.status, {}
        if status == 404:
            log.warning("webhook configuration not found", extra={"configuration": name})
            continue
        if status != 200:
            raise ApiException(status=status, reason=f"reading {kind} configuration {name}")
        ops: list[dict[str, Any]] = [
            {"op": "test", "path": "/metadata/resourceVersion",
             "value": current["metadata"]["resourceVersion"]}
        ]
        for index, webhook in enumerate(current.get("webhooks") or []):
            if webhook.get("clientConfig", {}).get("caBundle") != bundle:
                ops.append({"op": "add", "path": f"/webhooks/{index}/clientConfig/caBundle",
                            "value": bundle})
        if len(ops) > 1:
            await patch(name, ops, _request_timeout=REQUEST_TIMEOUT_SECONDS)
            changed += len(ops) - 1
    return changed
