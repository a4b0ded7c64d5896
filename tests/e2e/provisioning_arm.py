"""A local Azure Resource Manager that speaks the AKS agentPools API, for the tests.

HTTPS on 127.0.0.1 with a certificate from our own CA (the SDK refuses bearer tokens
over plain HTTP). PUT answers 201 with an `Azure-AsyncOperation` URL; the operation is
`InProgress` until the pool's provisioning time has passed, then `Succeeded` (or
`Failed` with an ARM error); DELETE answers 202 the same way. Errors have ARM's shape
(`{"error": {"code", "message"}}`). Faults on demand: 429 with Retry-After for the next
N requests, refusal codes per VM size (at PUT or at the end of the operation), and a
mode that drops the connection on operation polls. `on_pool_succeeded` /
`on_pool_deleted` let a test register (or remove) the pool's node. It runs on its own
event loop in a thread, so a provisioner in another process can use it too.
"""

from __future__ import annotations

import asyncio
import itertools
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from aiohttp import web

from kaito.devcluster.pki import CertificateAuthority
from kaito.devcluster.process import free_port

API_PREFIX = "/subscriptions/{sub}/resourceGroups/{rg}/providers/Microsoft.ContainerService"
POOL_ROUTE = API_PREFIX + "/managedClusters/{cluster}/agentPools/{pool}"
OPERATION_ROUTE = "/subscriptions/{sub}/providers/Microsoft.ContainerService/locations/" \
    "{location}/operations/{operation}"
TOKEN = "test-arm-token"


@dataclass
class Call:
    method: str
    path: str
    at: float
    status: int = 0


@dataclass
class Operation:
    pool: str
    kind: str  # "create" or "delete"
    done_at: float
    error: dict[str, str] | None = None
    status: str = "InProgress"


@dataclass
class Pool:
    name: str
    body: dict[str, Any]
    state: str = "Creating"


@dataclass
class Faults:
    throttle_next: int = 0
    throttle_retry_after_seconds: int = 2
    drop_polls: int = 0
    refuse_at_put: dict[str, tuple[str, str]] = field(default_factory=dict)
    fail_operation: dict[str, tuple[str, str]] = field(default_factory=dict)


class ArmServer:
    def __init__(self, workdir: Path, *, provisioning_seconds: float = 1.0,
                 deletion_seconds: float = 0.5) -> None:
        (workdir / "arm-pki").mkdir(parents=True, exist_ok=True)
        ca = CertificateAuthority(workdir / "arm-pki")
        pair = ca.issue("arm", "127.0.0.1", dns_names=("localhost",),
                        ip_addresses=("127.0.0.1",), is_server=True)
        self.ca_file = ca.cert_path
        self._cert = pair
        self.token_file = workdir / "arm-token"
        self.token_file.write_text(TOKEN)
        self.port = free_port()
        self.base_url = f"https://127.0.0.1:{self.port}"
        self.provisioning_seconds = provisioning_seconds
        self.deletion_seconds = deletion_seconds
        self.faults = Faults()
        self.pools: dict[str, Pool] = {}
        self.operations: dict[str, Operation] = {}
        self.calls: list[Call] = []
        self.on_pool_succeeded: Callable[[str, dict[str, Any]], None] | None = None
        self.on_pool_deleted: Callable[[str], None] | None = None
        self._ids = itertools.count(1)
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._ready = threading.Event()
        self._stop: asyncio.Event | None = None

    # -- test side ------------------------------------------------------------------

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="arm-server", daemon=True)
        self._thread.start()
        if not self._ready.wait(10):
            raise RuntimeError("the ARM server did not start")

    def stop(self) -> None:
        if self._loop is not None and self._stop is not None:
            self._loop.call_soon_threadsafe(self._stop.set)
        if self._thread is not None:
            self._thread.join(10)

    def count(self, method: str, suffix: str = "") -> int:
        return sum(1 for c in self.calls if c.method == method and c.path.endswith(suffix))

    def puts(self) -> list[Call]:
        return [c for c in self.calls if c.method == "PUT"]

    # -- server side ----------------------------------------------------------------

    def _run(self) -> None:
        asyncio.run(self._serve())

    async def _serve(self) -> None:
        import ssl

        self._loop = asyncio.get_running_loop()
        self._stop = asyncio.Event()
        context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        context.load_cert_chain(str(self._cert.cert_path), str(self._cert.key_path))
        app = web.Application(middlewares=[self._middleware])
        app.router.add_put(POOL_ROUTE, self._put)
        app.router.add_get(POOL_ROUTE, self._get)
        app.router.add_delete(POOL_ROUTE, self._delete)
        app.router.add_get(OPERATION_ROUTE, self._operation)
        runner = web.AppRunner(app, access_log=None)
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", self.port, ssl_context=context)
        await site.start()
        ticker = asyncio.create_task(self._tick(), name="arm-ticker")
        self._ready.set()
        try:
            await self._stop.wait()
        finally:
            ticker.cancel()
            await runner.cleanup()

    async def _tick(self) -> None:
        while True:
            await asyncio.sleep(0.1)
            now = time.monotonic()
            for operation in list(self.operations.values()):
                if operation.status != "InProgress" or now < operation.done_at:
                    continue
                pool = self.pools.get(operation.pool)
                if operation.error is not None:
                    operation.status = "Failed"
                    if pool is not None:
                        pool.state = "Failed"
                    continue
                operation.status = "Succeeded"
                if operation.kind == "create" and pool is not None:
                    if self.on_pool_succeeded is not None:
                        await asyncio.to_thread(self.on_pool_succeeded, pool.name,
                                                pool.body["properties"])
                    pool.state = "Succeeded"
                elif operation.kind == "delete":
                    self.pools.pop(operation.pool, None)
                    if self.on_pool_deleted is not None:
                        await asyncio.to_thread(self.on_pool_deleted, operation.pool)

    @web.middleware
    async def _middleware(self, request: web.Request, handler: Any) -> web.StreamResponse:
        call = Call(request.method, request.path, time.monotonic())
        self.calls.append(call)
        if request.headers.get("Authorization") != f"Bearer {TOKEN}":
            call.status = 401
            return _error(401, "AuthenticationFailed", "missing or wrong bearer token")
        if self.faults.throttle_next > 0:
            self.faults.throttle_next -= 1
            call.status = 429
            return _error(429, "TooManyRequests", "too many requests, retry later",
                          {"Retry-After": str(self.faults.throttle_retry_after_seconds)})
        response: web.StreamResponse = await handler(request)
        call.status = response.status
        return response

    def _operation_url(self, request: web.Request, kind: str, pool: str,
                       error: dict[str, str] | None = None) -> str:
        operation_id = f"op-{next(self._ids)}"
        seconds = self.provisioning_seconds if kind == "create" else self.deletion_seconds
        self.operations[operation_id] = Operation(pool, kind, time.monotonic() + seconds, error)
        sub = request.match_info["sub"]
        return (f"{self.base_url}/subscriptions/{sub}/providers/Microsoft.ContainerService/"
                f"locations/eastus/operations/{operation_id}?api-version="
                f"{request.query.get('api-version', '')}")

    def _pool_json(self, request: web.Request, pool: Pool) -> dict[str, Any]:
        return {"id": request.path, "name": pool.name,
                "type": "Microsoft.ContainerService/managedClusters/agentPools",
                "properties": {**pool.body["properties"], "provisioningState": pool.state}}

    async def _put(self, request: web.Request) -> web.Response:
        name = request.match_info["pool"]
        body = await request.json()
        vm_size = str(body.get("properties", {}).get("vmSize"))
        if vm_size in self.faults.refuse_at_put:
            code, message = self.faults.refuse_at_put[vm_size]
            return _error(400, code, message)
        existing = self.pools.get(name)
        if existing is not None:
            existing.body = body
            return web.json_response(self._pool_json(request, existing), status=200)
        pool = Pool(name, body)
        self.pools[name] = pool
        failure = self.faults.fail_operation.get(vm_size)
        error = {"code": failure[0], "message": failure[1]} if failure else None
        url = self._operation_url(request, "create", name, error)
        return web.json_response(self._pool_json(request, pool), status=201,
                                 headers={"Azure-AsyncOperation": url})

    async def _get(self, request: web.Request) -> web.Response:
        pool = self.pools.get(request.match_info["pool"])
        if pool is None:
            return _error(404, "NotFound", f"agent pool {request.match_info['pool']} not found")
        return web.json_response(self._pool_json(request, pool))

    async def _delete(self, request: web.Request) -> web.Response:
        name = request.match_info["pool"]
        pool = self.pools.get(name)
        if pool is None:
            return web.Response(status=204)
        pool.state = "Deleting"
        url = self._operation_url(request, "delete", name)
        return web.Response(status=202, headers={"Azure-AsyncOperation": url, "Location": url})

    async def _operation(self, request: web.Request) -> web.Response:
        if self.faults.drop_polls > 0:
            self.faults.drop_polls -= 1
            assert request.transport is not None
            request.transport.abort()  # the connection breaks mid-operation
            return web.Response(status=500)  # never reaches the client
        operation = self.operations.get(request.match_info["operation"])
        if operation is None:
            return _error(404, "NotFound", "no such operation")
        body: dict[str, Any] = {"name": request.match_info["operation"],
                                "status": operation.status}
        if operation.status == "Failed" and operation.error is not None:
            body["error"] = operation.error
        return web.json_response(body)


def _error(status: int, code: str, message: str,
           headers: dict[str, str] | None = None) -> web.Response:
    return web.json_response({"error": {"code": code, "message": message}}, status=status,
                             headers=headers)


def parse_taint(text: str) -> dict[str, str]:
    """`key=value:Effect` (AKS's nodeTaints form) as a Node taint."""
    key_value, _, effect = text.partition(":")
    key, _, value = key_value.partition("=")
    taint = {"key": key, "effect": effect}
    if value:
        taint["value"] = value
    return taint


def node_for_pool(pool: str, properties: dict[str, Any], *, gpus: int,
                  subscription: str = "00000000-0000-0000-0000-000000000000") -> dict[str, Any]:
    """The kwok Node AKS would register for a one-node pool: the pool's labels and taints,
    the agentpool labels and a VMSS provider ID."""
    vmss = f"aks-{pool}-12345678-vmss"
    name = f"{vmss}000000"
    resources = {"cpu": "32", "memory": "256Gi", "pods": "110", "nvidia.com/gpu": str(gpus)}
    labels = {
        **(properties.get("nodeLabels") or {}),
        "type": "kwok", "kubernetes.io/hostname": name, "kubernetes.io/os": "linux",
        "kubernetes.azure.com/agentpool": pool, "agentpool": pool,
        "node.kubernetes.io/instance-type": str(properties.get("vmSize")),
    }
    provider = (f"azure:///subscriptions/{subscription}/resourceGroups/mc_rg_cluster_eastus/"
                f"providers/Microsoft.Compute/virtualMachineScaleSets/{vmss}/virtualMachines/0")
    return {"apiVersion": "v1", "kind": "Node",
            "metadata": {"name": name, "labels": labels,
                         "annotations": {"kwok.x-k8s.io/node": "fake"}},
            "spec": {"providerID": provider,
                     "taints": [parse_taint(t) for t in properties.get("nodeTaints") or []]},
            "status": {"capacity": resources, "allocatable": resources}}
