"""`python -m controller` / `kaito controller`: run the manager.

It runs the Workspace controller (nodes, tuning Job, serving workload, status) on the
controller runtime. Exit codes: 0 after a clean stop
(SIGTERM/SIGINT), 1 when the leader lease is lost or the runtime fails, 2 on bad
settings.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import signal
from collections.abc import Awaitable, Callable
from pathlib import Path

from pydantic import ValidationError

from controller.informer import InformerOptions
from controller.kube.client import KubeClient
from controller.leader import LeaderElectionLost, LeaseElector
from controller.manager import Manager
from controller.metrics import Metrics
from controller.settings import ControllerSettings
from controller.workspace.nodes import ClaimRetry
from controller.workspace.reconciler import WorkspaceSettings
from controller.workspace.setup import setup_workspace_controller
from controller.workspace.workload import WorkloadSettings
from crds.logs import configure_logging
from presets.catalog import HfConfigSource

log = logging.getLogger("controller")


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="kaito controller", description=__doc__)
    parser.add_argument("--kubeconfig", type=Path, help="kubeconfig (default: in-cluster)")
    parser.add_argument("--namespace", dest="watch_namespace", help="watch one namespace")
    parser.add_argument("--workers", type=int, help="concurrent reconciles per controller")
    parser.add_argument("--port", type=int, help="port for /healthz /readyz /metrics")
    parser.add_argument("--bind-host", help="address for /healthz /readyz /metrics")
    election = parser.add_mutually_exclusive_group()
    election.add_argument("--leader-elect", dest="leader_elect", action="store_true",
                          default=None)
    election.add_argument("--no-leader-elect", dest="leader_elect", action="store_false")
    parser.add_argument("--lease-namespace", help="namespace of the leader-election Lease")
    parser.add_argument("--lease-name", help="name of the leader-election Lease")
    parser.add_argument("--identity", help="leader-election identity (default host_uuid)")
    parser.add_argument("--use-machines", action="store_true", default=None,
                        help="ask for nodes with legacy karpenter.sh/v1alpha5 Machines")
    parser.add_argument("--log-format", choices=["json", "text"])
    parser.add_argument("--log-level", choices=["DEBUG", "INFO", "WARNING", "ERROR"])
    return parser


def load_settings(argv: list[str] | None) -> ControllerSettings:
    """Environment (KAITO_*) first, then command-line flags on top."""
    args = _parser().parse_args(argv)
    settings = ControllerSettings()
    data = settings.model_dump()
    overrides = {
        ("kube", "kubeconfig"): args.kubeconfig,
        ("server", "port"): args.port,
        ("server", "bind_host"): args.bind_host,
        ("leader_election", "enabled"): args.leader_elect,
        ("leader_election", "namespace"): args.lease_namespace,
        ("leader_election", "lease_name"): args.lease_name,
        ("leader_election", "identity"): args.identity,
        ("workers",): args.workers,
        ("watch_namespace",): args.watch_namespace,
        ("log_format",): args.log_format,
        ("workspace", "use_machines"): args.use_machines,
        ("log_level",): args.log_level,
    }
    for path, value in overrides.items():
        if value is None:
            continue
        target = data
        for part in path[:-1]:
            target = target[part]
        target[path[-1]] = value
    return ControllerSettings.model_validate(data)


async def _client(settings: ControllerSettings, metrics: Metrics) -> KubeClient:
    kube = settings.kube
    if kube.is_in_cluster:
        return KubeClient.in_cluster(
            request_timeout_seconds=kube.request_timeout_seconds,
            max_throttle_retries=kube.max_throttle_retries, metrics=metrics,
        )
    return await KubeClient.from_kubeconfig(
        kube.kubeconfig, context=kube.context,
        request_timeout_seconds=kube.request_timeout_seconds,
        max_throttle_retries=kube.max_throttle_retries, metrics=metrics,
    )


# Wires controllers into the manager; returns what to await on the way out (or None).
Closer = Callable[[], Awaitable[None]]
Setup = Callable[[Manager, ControllerSettings], Closer | None]


def setup_production(manager: Manager, settings: ControllerSettings) -> Closer | None:
    """The Workspace controller with the settings' images and provisioning mode."""
    options = settings.workspace
    _, reconciler = setup_workspace_controller(
        manager, identity=settings.leader_election.identity, workers=settings.workers,
        namespace=settings.watch_namespace,
        settings=WorkspaceSettings(
            workload=WorkloadSettings(runtime_image=options.runtime_image,
                                      image_pull_policy=options.image_pull_policy,
                                      tuning_backoff_limit=options.tuning_backoff_limit,
                                      fetch_allow_cidrs=tuple(
                                          str(n) for n in options.fetch_allow_cidrs),
                                      plain_http_registries=options.plain_http_registries),
            can_provision=options.node_provisioning,
            use_machines=options.use_machines,
            progress_interval_seconds=options.progress_interval_seconds,
            operator_namespace=options.operator_namespace,
            hf_configs=HfConfigSource(options.hf_config_dirs, options.hf_endpoint),
            claim_retry=ClaimRetry(base_seconds=options.claim_retry_base_seconds,
                                   max_seconds=options.claim_retry_max_seconds),
            registry_ca_config_map=options.registry_ca_config_map,
        ),
    )
    return reconciler.close


async def run(settings: ControllerSettings, setup: Setup = setup_production) -> int:
    metrics = Metrics()
    async with await _client(settings, metrics) as client:
        election = settings.leader_election
        elector = LeaseElector(
            client,
            namespace=election.namespace,
            name=election.lease_name,
            identity=election.identity,
            lease_duration_seconds=election.lease_duration_seconds,
            renew_deadline_seconds=election.renew_deadline_seconds,
            retry_period_seconds=election.retry_period_seconds,
            metrics=metrics,
        ) if election.enabled else None
        manager = Manager(
            client,
            metrics=metrics,
            elector=elector,
            bind_host=settings.server.bind_host,
            port=settings.server.port,
            graceful_shutdown_seconds=settings.graceful_shutdown_seconds,
            informer_options=InformerOptions(
                watch_timeout_seconds=settings.informer.watch_timeout_seconds,
                read_timeout_seconds=settings.informer.read_timeout_seconds,
                inactivity_timeout_seconds=settings.informer.inactivity_timeout_seconds,
            ),
        )
        closing = setup(manager, settings)
        loop = asyncio.get_running_loop()
        for signum in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(signum, manager.stop)
        try:
            await manager.run()
        except LeaderElectionLost:
            log.error("exiting: leader election lost")
            return 1
        finally:
            for signum in (signal.SIGTERM, signal.SIGINT):
                loop.remove_signal_handler(signum)
            if closing is not None:
                await closing()
    return 0


def main(argv: list[str] | None = None, setup: Setup = setup_production) -> int:
    try:
        settings = load_settings(argv)
    except ValidationError as exc:
        configure_logging()  # the settings that choose the layout are what failed
        log.error("invalid settings", extra={"error": str(exc)})
        return 2
    configure_logging(settings.log_level, settings.log_format)
    log.info(
        "starting controller",
        extra={"identity": settings.leader_election.identity, "workers": settings.workers,
               "leader_election": settings.leader_election.enabled},
    )
    try:
        return asyncio.run(run(settings, setup))
    except Exception:
        log.exception("controller failed")
        return 1


if __name__ == "__main__":
    raise SystemExit(main())
