"""A thin typed wrapper over kubernetes_asyncio's transport.

Why not the generated API classes: they deserialize into slow model objects and leak
`ApiException` with raw status codes. This wrapper speaks plain JSON objects on any
resource (`ResourceType`), turns every failure into the `controller.kube.errors` tree,
honours `Retry-After` on 429, re-reads a rotated service-account token, and streams
watches with a socket read timeout so a half-open connection cannot hang a caller.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
from collections.abc import AsyncGenerator, Awaitable, Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Any, Self
from urllib.parse import urlsplit

import aiohttp
from kubernetes_asyncio import client as k8s_client
from kubernetes_asyncio import config as k8s_config

from controller.kube.errors import (
    ApiUnavailable,
    KubeError,
    TooManyRequests,
    Unauthorized,
    error_from_response,
    error_from_status_object,
)
from controller.kube.resources import KubeObject, ResourceType
from controller.metrics import Metrics

log = logging.getLogger(__name__)

SERVICE_ACCOUNT_TOKEN_FILE = Path("/var/run/secrets/kubernetes.io/serviceaccount/token")
SERVICE_ACCOUNT_CA_FILE = Path("/var/run/secrets/kubernetes.io/serviceaccount/ca.crt")

_TRANSPORT_ERRORS = (aiohttp.ClientError, asyncio.TimeoutError, OSError)


_PROXY_VARIABLES = ("https_proxy", "http_proxy", "all_proxy")


def proxy_env_is_set() -> bool:
    return any(os.environ.get(name) or os.environ.get(name.upper()) for name in _PROXY_VARIABLES)


def _disable_trust_env(api_client: k8s_client.ApiClient) -> None:
    """Swap kubernetes_asyncio's trust_env session for one without it.

    With trust_env aiohttp looks up proxy settings and netrc in a worker thread on every
    request: two thread hops that more than double the client's CPU per call. We only
    pay that when a proxy variable is actually set.
    """
    rest = api_client.rest_client
    old: aiohttp.ClientSession = rest.pool_manager
    connector = old.connector
    old.detach()
    rest.pool_manager = aiohttp.ClientSession(
        connector=connector, trust_env=False, read_bufsize=2**21
    )


@dataclass(frozen=True)
class ListPage:
    """One page of a list call; `continue_token` is None on the last page."""

    items: list[KubeObject]
    resource_version: str
    continue_token: str | None


@dataclass(frozen=True)
class WatchEvent:
    """ADDED / MODIFIED / DELETED / BOOKMARK with the object (or bookmark stub)."""

    type: str
    object: KubeObject


class KubeClient:
    """Async Kubernetes client returning plain dicts and raising `KubeError`s."""

    def __init__(
        self,
        api_client: k8s_client.ApiClient,
        *,
        token_file: Path | None = None,
        request_timeout_seconds: float = 30.0,
        max_throttle_retries: int = 5,
        max_retry_after_seconds: float = 60.0,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
        metrics: Metrics | None = None,
        trust_env: bool | None = None,
    ) -> None:
        if request_timeout_seconds <= 0:
            raise ValueError("request_timeout_seconds must be positive")
        if max_throttle_retries < 0:
            raise ValueError("max_throttle_retries must be >= 0")
        self._api = api_client
        self._token_file = token_file
        self._request_timeout_seconds = request_timeout_seconds
        self._max_throttle_retries = max_throttle_retries
        self._max_retry_after_seconds = max_retry_after_seconds
        self._sleep = sleep
        self.metrics = metrics
        self._host = urlsplit(str(api_client.configuration.host)).netloc
        self._token_mtime_ns: int | None = None
        if not (proxy_env_is_set() if trust_env is None else trust_env):
            _disable_trust_env(api_client)
        if token_file is not None:
            self.refresh_credentials()

    @classmethod
    async def from_kubeconfig(
        cls, path: Path | str | None = None, *, context: str | None = None, **kwargs: Any
    ) -> KubeClient:
        cfg = k8s_client.Configuration()
        await k8s_config.load_kube_config(
            config_file=str(path) if path is not None else None,
            context=context,
            client_configuration=cfg,
        )
        return cls(k8s_client.ApiClient(configuration=cfg), **kwargs)

    @classmethod
    def in_cluster(
        cls,
        *,
        token_file: Path = SERVICE_ACCOUNT_TOKEN_FILE,
        ca_file: Path = SERVICE_ACCOUNT_CA_FILE,
        **kwargs: Any,
    ) -> KubeClient:
        cfg = k8s_client.Configuration()
        # We re-read the token ourselves (before reconnects and on 401), not once a minute.
        k8s_config.load_incluster_config(  # type: ignore[no-untyped-call]
            client_configuration=cfg, try_refresh_token=False, token_filename=str(token_file),
            cert_filename=str(ca_file),
        )
        return cls(k8s_client.ApiClient(configuration=cfg), token_file=token_file, **kwargs)

    async def close(self) -> None:
        await self._api.close()

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()

    @property
    def server(self) -> str:
        return str(self._api.configuration.host)

    def refresh_credentials(self) -> bool:
        """Re-read a rotated service-account token; True when it changed."""
        if self._token_file is None:
            return False
        try:
            stat = self._token_file.stat()
            if stat.st_mtime_ns == self._token_mtime_ns:
                return False
            token = self._token_file.read_text().strip()
        except OSError as exc:
            log.warning("cannot re-read service-account token", extra={"error": str(exc)})
            return False
        if not token:
            return False
        self._token_mtime_ns = stat.st_mtime_ns
        new_value = "Bearer " + token
        keys = self._api.configuration.api_key
        changed = keys.get("BearerToken") != new_value
        keys["BearerToken"] = new_value
        return changed

    # -- transport ---------------------------------------------------------------------

    async def _send(
        self,
        method: str,
        path: str,
        *,
        query: Mapping[str, str] | None = None,
        body: Any = None,
        content_type: str = "application/json",
        timeout: aiohttp.ClientTimeout | None = None,
    ) -> aiohttp.ClientResponse:
        headers = {"Accept": "application/json", "Content-Type": content_type}
        auth = await self._api.configuration.auth_settings()
        bearer = auth.get("BearerToken")
        if bearer and bearer.get("value"):
            headers["Authorization"] = str(bearer["value"])
        url = str(self._api.configuration.host).rstrip("/") + path
        request_timeout = timeout or aiohttp.ClientTimeout(total=self._request_timeout_seconds)
        try:
            response: aiohttp.ClientResponse = await self._api.rest_client.request(
                method,
                url,
                query_params=dict(query) if query else None,
                headers=headers,
                body=body,
                _preload_content=False,
                _request_timeout=request_timeout,
            )
        except _TRANSPORT_ERRORS as exc:
            self._count(method, "<error>")
            raise ApiUnavailable(f"{method} {path}: {exc or type(exc).__name__}") from exc
        self._count(method, str(response.status))
        return response

    def _count(self, method: str, code: str) -> None:
        if self.metrics is not None:
            self.metrics.rest_client_requests_total.labels(
                code=code, method=method, host=self._host
            ).inc()

    async def request(
        self,
        method: str,
        path: str,
        *,
        query: Mapping[str, str] | None = None,
        body: Any = None,
        content_type: str = "application/json",
    ) -> Any:
        """One API call with 429 retries (honouring Retry-After) and a 401 token re-read."""
        is_token_refreshed = False
        attempt = 0
        while True:
            response = await self._send(
                method, path, query=query, body=body, content_type=content_type
            )
            try:
                async with response:
                    data = await response.read()
            except _TRANSPORT_ERRORS as exc:
                raise ApiUnavailable(f"{method} {path}: {exc or type(exc).__name__}") from exc
            if 200 <= response.status < 300:
                return json.loads(data) if data else {}
            error = error_from_response(response.status, data, response.headers)
            if isinstance(error, TooManyRequests) and attempt < self._max_throttle_retries:
                attempt += 1
                delay = min(error.retry_after_seconds, self._max_retry_after_seconds)
                log.info(
                    "throttled by the API server, retrying",
                    extra={"path": path, "retry_after_seconds": delay, "attempt": attempt},
                )
                await self._sleep(delay)
                continue
            if isinstance(error, Unauthorized) and not is_token_refreshed:
                is_token_refreshed = True
                if self.refresh_credentials():
                    continue
            raise error

    # -- typed verbs -------------------------------------------------------------------

    async def get(self, resource: ResourceType, name: str, namespace: str | None = None) -> KubeObject:
        obj: KubeObject = await self.request("GET", resource.path(namespace, name))
        return obj

    async def list(
        self,
        resource: ResourceType,
        namespace: str | None = None,
        *,
        label_selector: str | None = None,
        limit: int | None = None,
        continue_token: str | None = None,
        field_selector: str | None = None,
    ) -> ListPage:
        query: dict[str, str] = {}
        if label_selector:
            query["labelSelector"] = label_selector
        if field_selector:
            query["fieldSelector"] = field_selector
        if limit is not None:
            query["limit"] = str(limit)
        if continue_token:
            query["continue"] = continue_token
        result = await self.request("GET", resource.path(namespace), query=query)
        metadata = result.get("metadata") or {}
        items = result.get("items") or []
        kind = resource.kind
        for item in items:
            # List items come without apiVersion/kind; put them back so objects look alike.
            item.setdefault("apiVersion", resource.api_version)
            item.setdefault("kind", kind)
        return ListPage(
            items=items,
            resource_version=str(metadata.get("resourceVersion", "")),
            continue_token=metadata.get("continue") or None,
        )

    async def list_all(
        self,
        resource: ResourceType,
        namespace: str | None = None,
        *,
        label_selector: str | None = None,
        page_size: int = 500,
        field_selector: str | None = None,
    ) -> ListPage:
        """Every page of a list; the resourceVersion is the consistent snapshot's."""
        items: list[KubeObject] = []
        token: str | None = None
        while True:
            page = await self.list(
                resource, namespace, label_selector=label_selector, limit=page_size,
                continue_token=token, field_selector=field_selector,
            )
            items.extend(page.items)
            token = page.continue_token
            if token is None:
                return ListPage(items=items, resource_version=page.resource_version,
                                continue_token=None)

    async def create(self, resource: ResourceType, body: KubeObject) -> KubeObject:
        namespace = (body.get("metadata") or {}).get("namespace") if resource.namespaced else None
        obj: KubeObject = await self.request("POST", resource.path(namespace), body=body)
        return obj

    async def replace(self, resource: ResourceType, body: KubeObject) -> KubeObject:
        """PUT; the body's metadata.resourceVersion makes it a compare-and-swap."""
        metadata = body.get("metadata") or {}
        namespace = metadata.get("namespace") if resource.namespaced else None
        obj: KubeObject = await self.request(
            "PUT", resource.path(namespace, metadata.get("name", "")), body=body
        )
        return obj

    async def replace_status(self, resource: ResourceType, body: KubeObject) -> KubeObject:
        """PUT to the status subresource (spec changes in `body` are ignored there)."""
        metadata = body.get("metadata") or {}
        namespace = metadata.get("namespace") if resource.namespaced else None
        path = resource.path(namespace, metadata.get("name", "")) + "/status"
        obj: KubeObject = await self.request("PUT", path, body=body)
        return obj

    async def patch(
        self,
        resource: ResourceType,
        name: str,
        patch: Any,
        namespace: str | None = None,
        *,
        patch_type: str = "application/merge-patch+json",
    ) -> KubeObject:
        obj: KubeObject = await self.request(
            "PATCH", resource.path(namespace, name), body=patch, content_type=patch_type
        )
        return obj

    async def delete(self, resource: ResourceType, name: str, namespace: str | None = None) -> None:
        await self.request("DELETE", resource.path(namespace, name))

    async def watch(
        self,
        resource: ResourceType,
        namespace: str | None = None,
        *,
        resource_version: str,
        label_selector: str | None = None,
        timeout_seconds: int = 300,
        read_timeout_seconds: float = 70.0,
        field_selector: str | None = None,
    ) -> AsyncGenerator[WatchEvent, None]:
        """Stream watch events from `resource_version`, with bookmarks.

        Ends normally when the server closes the watch (after `timeout_seconds`). A 410
        (at start, or as an ERROR event) raises `Gone`; a broken, truncated or silent
        stream (nothing for `read_timeout_seconds`) raises `ApiUnavailable`.
        """
        query = {
            "watch": "true",
            "allowWatchBookmarks": "true",
            "resourceVersion": resource_version,
            "timeoutSeconds": str(int(timeout_seconds)),
        }
        if label_selector:
            query["labelSelector"] = label_selector
        if field_selector:
            query["fieldSelector"] = field_selector
        timeout = aiohttp.ClientTimeout(
            total=None,
            sock_connect=self._request_timeout_seconds,
            sock_read=read_timeout_seconds,
        )
        response = await self._send("GET", resource.path(namespace), query=query, timeout=timeout)
        async with response:
            if response.status != 200:
                try:
                    data = await response.read()
                except _TRANSPORT_ERRORS as exc:
                    raise ApiUnavailable(f"watch {resource}: {exc}") from exc
                raise error_from_response(response.status, data, response.headers)
            try:
                async for line in response.content:
                    if not line.strip():
                        continue
                    event = json.loads(line)
                    event_type = str(event.get("type", ""))
                    obj = event.get("object") or {}
                    if event_type == "ERROR":
                        raise error_from_status_object(obj)
                    yield WatchEvent(type=event_type, object=obj)
            except KubeError:
                raise
            except (ValueError, *_TRANSPORT_ERRORS) as exc:
                # ValueError: a truncated JSON line or an over-long chunk.
                raise ApiUnavailable(
                    f"watch {resource} broken: {exc or type(exc).__name__}"
                ) from exc
