"""The manager: owns informers, controllers, leader election and the HTTP endpoints.

Informers start on every replica (so a standby has a warm cache and `/readyz` means
"caches synced" everywhere); controllers start only once this replica leads. `stop()`
(wired to SIGTERM) stops handing out keys, waits up to the grace period for in-flight
reconciles, releases the lease so a peer takes over at once, and returns. A lost lease
makes `run()` raise `LeaderElectionLost`: the process must exit rather than risk two
leaders.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Sequence

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST

from controller.controller import Controller
from controller.informer import Informer, InformerOptions
from controller.kube.client import KubeClient
from controller.kube.resources import ResourceType
from controller.leader import LeaderElectionLost, LeaseElector
from controller.metrics import Metrics

log = logging.getLogger(__name__)

MANAGER_KEY: web.AppKey[Manager] = web.AppKey("manager")


class Manager:
    """Runs shared informers, controllers and /healthz, /readyz, /metrics."""

    def __init__(
        self,
        client: KubeClient,
        *,
        metrics: Metrics | None = None,
        elector: LeaseElector | None = None,
        bind_host: str = "0.0.0.0",
        port: int = 8080,
        graceful_shutdown_seconds: float = 30.0,
        informer_options: InformerOptions | None = None,
    ) -> None:
        self.client = client
        self.metrics = metrics if metrics is not None else Metrics()
        self.elector = elector
        self._bind_host = bind_host
        self._port = port
        self._graceful_shutdown_seconds = graceful_shutdown_seconds
        self._informer_options: InformerOptions = informer_options or {}
        self._informers: dict[
            tuple[ResourceType, str | None, str | None, str | None], Informer] = {}
        self._controllers: list[Controller] = []
        self._stop_requested: asyncio.Event | None = None
        self._is_stop_pending = False
        self.bound_port: int | None = None
        self.started = asyncio.Event()
        self._closers: list[Callable[[], Awaitable[None]]] = []

    # -- wiring --------------------------------------------------------------------------

    def informer(
        self,
        resource: ResourceType,
        namespace: str | None = None,
        label_selector: str | None = None,
        field_selector: str | None = None,
    ) -> Informer:
        """The shared informer for this resource/namespace/selectors (created once)."""
        key = (resource, namespace, label_selector, field_selector)
        informer = self._informers.get(key)
        if informer is None:
            informer = Informer(
                self.client, resource, namespace=namespace, label_selector=label_selector,
                field_selector=field_selector, metrics=self.metrics, **self._informer_options,
            )
            self._informers[key] = informer
        return informer

    def add_controller(self, controller: Controller) -> None:
        self._controllers.append(controller)

    def add_closer(self, close: Callable[[], Awaitable[None]]) -> None:
        """Awaited when the manager stops, after the controllers have drained (e.g. to
        write the Events still queued)."""
        self._closers.append(close)

    @property
    def informers(self) -> Sequence[Informer]:
        return list(self._informers.values())

    @property
    def controllers(self) -> Sequence[Controller]:
        return list(self._controllers)

    @property
    def is_ready(self) -> bool:
        return all(informer.has_synced for informer in self._informers.values())

    @property
    def is_leader(self) -> bool:
        return self.elector is None or self.elector.is_leader

    def stop(self) -> None:
        """Ask `run()` to drain and return (safe to call from a signal handler)."""
        self._is_stop_pending = True
        if self._stop_requested is not None:
            self._stop_requested.set()

    # -- running -------------------------------------------------------------------------

    async def run(self) -> None:
        """Run until `stop()`; raises `LeaderElectionLost` if the lease is lost."""
        self._stop_requested = asyncio.Event()
        if self._is_stop_pending:
            self._stop_requested.set()
        runner = await self._start_http()
        lost: LeaderElectionLost | None = None
        try:
            async with asyncio.TaskGroup() as group:
                informer_tasks = [
                    group.create_task(informer.run(), name=f"informer-{informer.name}")
                    for informer in self._informers.values()
                ]
                controller_tasks: list[asyncio.Task[None]] = []
                work = group.create_task(
                    self._lead_and_work(controller_tasks), name="manager-controllers"
                )
                self.started.set()
                # A failing task (a lost lease) cancels this wait through the TaskGroup.
                await self._stop_requested.wait()
                log.info("manager stopping")
                await self._drain(controller_tasks)
                work.cancel()
                for task in informer_tasks:
                    task.cancel()
        except* LeaderElectionLost as group_error:
            lost = LeaderElectionLost(str(group_error.exceptions[0]))
        finally:
            for close in self._closers:
                try:
                    await close()
                except Exception:  # one closer must not stop the others
                    log.exception("closing failed")
            if self.elector is not None:
                await self.elector.release()
            await runner.cleanup()
            self.started.clear()
        if lost is not None:
            raise lost
        log.info("manager stopped")

    async def _lead_and_work(self, controller_tasks: list[asyncio.Task[None]]) -> None:
        if self.elector is not None:
            await self.elector.acquire()
        async with asyncio.TaskGroup() as group:
            if self.elector is not None:
                group.create_task(self.elector.hold(), name="leader-election-renew")
            for controller in self._controllers:
                controller_tasks.append(
                    group.create_task(controller.run(), name=f"controller-{controller.name}")
                )

    async def _drain(self, controller_tasks: list[asyncio.Task[None]]) -> None:
        """Stop new work, give in-flight reconciles the grace period, then cancel."""
        for controller in self._controllers:
            controller.shutdown()
        pending = [task for task in controller_tasks if not task.done()]
        if not pending:
            return
        _, still_running = await asyncio.wait(pending, timeout=self._graceful_shutdown_seconds)
        for task in still_running:
            log.warning("reconcile did not finish within the grace period",
                        extra={"task": task.get_name()})
            task.cancel()
        if still_running:
            await asyncio.wait(still_running)

    # -- HTTP ----------------------------------------------------------------------------

    async def _start_http(self) -> web.AppRunner:
        app = web.Application()
        app[MANAGER_KEY] = self
        app.router.add_get("/healthz", _healthz)
        app.router.add_get("/readyz", _readyz)
        app.router.add_get("/metrics", _metrics)
        runner = web.AppRunner(app, access_log=None)
        await runner.setup()
        site = web.TCPSite(runner, self._bind_host, self._port)
        await site.start()
        addresses = runner.addresses
        self.bound_port = int(addresses[0][1]) if addresses else self._port
        log.info("serving health and metrics", extra={"port": self.bound_port})
        return runner


async def _healthz(request: web.Request) -> web.Response:
    return web.Response(text="ok")


async def _readyz(request: web.Request) -> web.Response:
    manager = request.app[MANAGER_KEY]
    unsynced = [informer.name for informer in manager.informers if not informer.has_synced]
    if unsynced:
        return web.Response(status=503, text="caches not synced: " + ", ".join(unsynced))
    return web.Response(text="ok")


async def _metrics(request: web.Request) -> web.Response:
    manager = request.app[MANAGER_KEY]
    body = manager.metrics.exposition()
    return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE_LATEST})
