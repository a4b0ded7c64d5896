"""The AKS backend: each claim becomes a one-node agent pool of the claim's VM size.

Through the real Azure SDK (`azure-mgmt-containerservice`, async): its pipeline retries
transient failures and honours 429 Retry-After, its poller follows `Azure-AsyncOperation`.
A reconcile waits on an operation at most `max_operation_wait_seconds`; a pool still
being made is found by name on a later pass (a GET, never a second PUT), which is also
how a connection dropped mid-operation or a restarted provisioner recovers. The cloud's
refusals (quota, capacity, bad request) are answered as `LaunchFailed` with ARM's error
code; throttling past the SDK's retries is `Pending` with the server's Retry-After.
Launched means the pool Succeeded and its node (labelled with the claim) is visible,
because only the node carries the VM's provider ID, as in upstream's gpu-provisioner.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from types import TracebackType
from typing import Any

from azure.core.credentials import AccessToken
from azure.core.credentials_async import AsyncTokenCredential
from azure.core.exceptions import (
    AzureError,
    HttpResponseError,
    ResourceNotFoundError,
    ServiceRequestError,
    ServiceResponseError,
)
from azure.core.pipeline import PipelineRequest, PipelineResponse
from azure.core.pipeline.policies import AsyncHTTPPolicy
from azure.mgmt.containerservice.aio import ContainerServiceClient
from azure.mgmt.containerservice.models import AgentPool

from controller.kube.resources import KubeObject
from controller.provisioning.agentpool import agent_pool_name, build_agent_pool
from controller.provisioning.backend import (
    CloudUnavailable,
    Launched,
    LaunchFailed,
    LaunchOutcome,
    Pending,
    gpu_capacity,
)
from controller.provisioning.claims import Claim
from controller.provisioning.metrics import ProvisioningMetrics
from controller.provisioning.settings import AzureSettings
from presets.catalog import GpuSku

log = logging.getLogger(__name__)

DEFAULT_THROTTLE_SECONDS = 30.0
IN_PROGRESS_STATES = frozenset({"Creating", "Updating", "Scaling", "Upgrading", "Starting",
                                "Deleting", "Canceling"})


class TokenFileCredential(AsyncTokenCredential):
    """A bearer token read from a file on every call (a token some other process keeps
    fresh). For development and the tests; production uses azure-identity."""

    def __init__(self, path: Path, lifetime_seconds: int = 300) -> None:
        self._path = path
        self._lifetime_seconds = lifetime_seconds

    async def get_token(self, *scopes: str, claims: str | None = None,
                        tenant_id: str | None = None, enable_cae: bool = False,
                        **kwargs: Any) -> AccessToken:
        token = (await asyncio.to_thread(self._path.read_text)).strip()
        return AccessToken(token, int(time.time()) + self._lifetime_seconds)

    async def close(self) -> None:
        return None

    async def __aexit__(self, exc_type: type[BaseException] | None = None,
                        exc_value: BaseException | None = None,
                        traceback: TracebackType | None = None) -> None:
        return None


def default_credential(settings: AzureSettings) -> AsyncTokenCredential:
    """Workload identity in a pod that has it, environment credentials otherwise."""
    if settings.token_file is not None:
        return TokenFileCredential(settings.token_file)
    from azure.identity.aio import EnvironmentCredential, WorkloadIdentityCredential

    if os.environ.get("AZURE_FEDERATED_TOKEN_FILE"):
        return WorkloadIdentityCredential()
    return EnvironmentCredential()


class _CountCalls(AsyncHTTPPolicy[Any, Any]):
    """Counts every HTTP attempt (placed after the retry policy) by status code."""

    def __init__(self, count: Callable[[str, str], None]) -> None:
        super().__init__()
        self._count = count

    async def send(self, request: PipelineRequest[Any]) -> PipelineResponse[Any, Any]:
        method = str(request.http_request.method)
        try:
            response = await self.next.send(request)
        except AzureError:
            self._count(method, "<error>")
            raise
        self._count(method, str(response.http_response.status_code))
        return response


def arm_error(error: HttpResponseError) -> tuple[str, str]:
    """ARM's error code and message from an error response (or a failed operation)."""
    code = getattr(error.error, "code", None) if error.error is not None else None
    message = getattr(error.error, "message", None) if error.error is not None else None
    if not code and error.response is not None:
        try:
            body = json.loads(error.response.text())
        except (ValueError, TypeError):
            body = {}
        detail = body.get("error") if isinstance(body, dict) else None
        if isinstance(detail, dict):
            code, message = detail.get("code"), detail.get("message")
    return str(code or f"HTTP{error.status_code or ''}"), str(message or error.message or "")


def _retry_after(error: HttpResponseError) -> float:
    headers = getattr(error.response, "headers", None) or {}
    value = headers.get("Retry-After")
    try:
        return max(1.0, float(value)) if value else DEFAULT_THROTTLE_SECONDS
    except ValueError:
        return DEFAULT_THROTTLE_SECONDS


class AksBackend:
    name = "aks"
    owns_node_objects = True

    def __init__(
        self, settings: AzureSettings, find_node: Callable[[str], KubeObject | None], *,
        credential: AsyncTokenCredential | None = None,
        metrics: ProvisioningMetrics | None = None,
        client_options: Mapping[str, Any] | None = None,
    ) -> None:
        """`client_options` go to the SDK client (e.g. `retry_backoff_factor`)."""
        self._settings = settings
        self._find_node = find_node
        self._metrics = metrics
        self._credential = credential or default_credential(settings)
        options: dict[str, Any] = {
            "polling_interval": settings.polling_interval_seconds,
            "per_retry_policies": [_CountCalls(self._count)],
        }
        options.update(client_options or {})
        if settings.base_url:
            options["base_url"] = settings.base_url
        if settings.ca_file is not None:
            options["connection_verify"] = str(settings.ca_file)
        self._client = ContainerServiceClient(self._credential, settings.subscription_id,
                                              **options)

    def _count(self, method: str, code: str) -> None:
        if self._metrics is not None:
            self._metrics.count_call(method, code)

    def _where(self) -> tuple[str, str]:
        return self._settings.resource_group, self._settings.cluster_name

    async def launch(self, claim: Claim, sku: GpuSku, *, wait_seconds: float) -> LaunchOutcome:
        pool_name = agent_pool_name(claim.name)
        group, cluster = self._where()
        pools = self._client.agent_pools
        wait_seconds = max(0.1, min(wait_seconds, self._settings.max_operation_wait_seconds))
        try:
            try:
                pool = await pools.get(group, cluster, pool_name)
            except ResourceNotFoundError:
                body = build_agent_pool(claim, sku.name, os_sku=self._settings.os_sku,
                                        os_disk_size_gb=self._settings.os_disk_size_gb)
                log.info("creating agent pool", extra={
                    "nodeclaim": claim.name, "agent_pool": pool_name, "vm_size": sku.name})
                try:
                    poller = await pools.begin_create_or_update(group, cluster, pool_name,
                                                                AgentPool(body))
                except HttpResponseError as error:
                    return self._refused(claim, pool_name, error, made_nothing=True)
                try:
                    async with asyncio.timeout(wait_seconds):
                        pool = await poller.result()
                except TimeoutError:
                    return Pending("Creating", f"agent pool {pool_name} is being created",
                                   self._settings.polling_interval_seconds)
        except HttpResponseError as error:
            return self._refused(claim, pool_name, error)
        except (ServiceRequestError, ServiceResponseError) as error:
            raise CloudUnavailable(f"agent pool {pool_name}: {error}") from error
        state = (pool.properties.provisioning_state if pool.properties else None) or "Unknown"
        if state in IN_PROGRESS_STATES:
            return Pending(state, f"agent pool {pool_name} is {state}",
                           self._settings.polling_interval_seconds)
        if state != "Succeeded":
            return LaunchFailed("ProvisioningFailed", f"agent pool {pool_name} is {state}")
        node = self._find_node(claim.name)
        provider_id = ((node or {}).get("spec") or {}).get("providerID")
        if not provider_id:
            return Pending("AwaitingNode", f"agent pool {pool_name} succeeded; waiting for "
                           "its node", self._settings.polling_interval_seconds)
        return Launched(provider_id=str(provider_id), capacity=gpu_capacity(sku))

    def _refused(self, claim: Claim, pool_name: str, error: HttpResponseError, *,
                 made_nothing: bool = False) -> LaunchOutcome:
        """ARM's answer to an error; `made_nothing` when the create itself was refused
        (no pool exists, so the claim's deletion need not ask ARM)."""
        code, message = arm_error(error)
        if error.status_code == 429:
            return Pending("Throttled", message or "throttled by Azure Resource Manager",
                           _retry_after(error))
        if error.status_code is not None and error.status_code >= 500:
            raise CloudUnavailable(f"agent pool {pool_name}: {code}: {message}") from error
        log.warning("agent pool refused", extra={
            "nodeclaim": claim.name, "agent_pool": pool_name, "code": code, "error": message})
        return LaunchFailed(code, message, made_nothing=made_nothing)

    async def delete(self, claim: Claim) -> bool:
        pool_name = agent_pool_name(claim.name)
        group, cluster = self._where()
        try:
            poller = await self._client.agent_pools.begin_delete(group, cluster, pool_name)
            async with asyncio.timeout(self._settings.max_operation_wait_seconds):
                await poller.result()
        except ResourceNotFoundError:
            return True
        except TimeoutError:
            return False
        except HttpResponseError as error:
            if error.status_code == 429:
                return False
            code, message = arm_error(error)
            raise CloudUnavailable(f"deleting agent pool {pool_name}: {code}: {message}"
                                   ) from error
        except (ServiceRequestError, ServiceResponseError) as error:
            raise CloudUnavailable(f"deleting agent pool {pool_name}: {error}") from error
        log.info("agent pool deleted", extra={"nodeclaim": claim.name, "agent_pool": pool_name})
        return True

    async def close(self) -> None:
        await self._client.close()
        await self._credential.close()
