"""`python -m controller.provisioning` / `kaito provisioner`: run the node provisioner.

The shared controller flags (`--kubeconfig`, `--port`, `--leader-elect`...) and
`KAITO_*` settings work as for `kaito controller`; the provisioner's own are `--backend`
and `--use-machines` (or `KAITO_PROVISIONER__*`). Its Lease is
`kaito-gpu-provisioner-leader` unless told otherwise. Exit codes: 0 after a clean stop,
1 when the lease is lost or the runtime fails, 2 on bad settings.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import sys
from collections.abc import Callable

from pydantic import ValidationError

from controller.__main__ import Closer, load_settings, run
from controller.kube.resources import KubeObject
from controller.manager import Manager
from controller.provisioning.backend import Backend
from controller.provisioning.local import LocalBackend
from controller.provisioning.metrics import ProvisioningMetrics
from controller.provisioning.pool import PoolBackend
from controller.provisioning.reconciler import LifecycleSettings
from controller.provisioning.settings import ProvisionerSettings
from controller.provisioning.setup import setup_provisioner
from controller.settings import ControllerSettings
from crds.logs import configure_logging

log = logging.getLogger("controller.provisioning")

LEASE_NAME = "kaito-gpu-provisioner-leader"


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="kaito provisioner", add_help=False)
    parser.add_argument("--backend", choices=["local", "aks", "pool"])
    parser.add_argument("--use-machines", action="store_true", default=None,
                        help="also fulfil legacy karpenter.sh/v1alpha5 Machines")
    return parser


def load(argv: list[str]) -> tuple[ControllerSettings, ProvisionerSettings]:
    args, rest = _parser().parse_known_args(argv)
    if "--lease-name" not in rest and "KAITO_LEADER_ELECTION__LEASE_NAME" not in os.environ:
        rest += ["--lease-name", LEASE_NAME]
    controller_settings = load_settings(rest)
    overrides = {"backend": args.backend, "use_machines": args.use_machines}
    flags = {key: value for key, value in overrides.items() if value is not None}
    return controller_settings, ProvisionerSettings(**flags)


def make_setup(options: ProvisionerSettings) -> Callable[[Manager, ControllerSettings],
                                                          Closer | None]:
    def setup(manager: Manager, settings: ControllerSettings) -> Closer | None:
        def backend_factory(find_node: Callable[[str], KubeObject | None],
                            metrics: ProvisioningMetrics) -> Backend:
            if options.backend == "aks":
                from controller.provisioning.aks import AksBackend

                return AksBackend(options.azure, find_node, metrics=metrics)
            if options.backend == "pool":
                return PoolBackend(manager.client, metrics)
            return LocalBackend(manager.client, metrics)

        _, backend = setup_provisioner(
            manager, identity=settings.leader_election.identity, workers=settings.workers,
            backend_factory=backend_factory, backend_name=options.backend,
            use_machines=options.use_machines,
            settings=LifecycleSettings(
                launch_timeout_seconds=options.launch_timeout_seconds,
                registration_timeout_seconds=options.registration_timeout_seconds,
                recheck_seconds=options.recheck_seconds,
                unavailable_offering_seconds=options.unavailable_offering_seconds))
        return backend.close

    return setup


def main(argv: list[str] | None = None) -> int:
    try:
        settings, options = load(list(sys.argv[1:] if argv is None else argv))
    except ValidationError as exc:
        configure_logging()  # the settings that choose the layout are what failed
        log.error("invalid settings", extra={"error": str(exc)})
        return 2
    configure_logging(settings.log_level, settings.log_format)
    # The Azure SDK logs every HTTP request at INFO; our own logs say what matters.
    logging.getLogger("azure").setLevel(logging.WARNING)
    log.info("starting provisioner", extra={
        "identity": settings.leader_election.identity, "backend": options.backend,
        "workers": settings.workers, "leader_election": settings.leader_election.enabled})
    try:
        return asyncio.run(run(settings, make_setup(options)))
    except Exception:
        log.exception("provisioner failed")
        return 1


if __name__ == "__main__":
    raise SystemExit(main())
