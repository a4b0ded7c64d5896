"""`python -m tests.envtest.copy_controller`: the controller process (flags, settings,
leader election, signals) running the ConfigMap-copy demo instead of the Workspace
controller, so the runtime's process-level behaviour is tested on a small reconciler."""

from __future__ import annotations

import sys

from controller.__main__ import Closer, main
from controller.manager import Manager
from controller.settings import ControllerSettings
from tests.envtest.configmap_copy import setup_configmap_copy


def setup_copy(manager: Manager, settings: ControllerSettings) -> Closer | None:
    setup_configmap_copy(manager, namespace=settings.watch_namespace,
                         identity=settings.leader_election.identity, workers=settings.workers)
    return None


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:], setup=setup_copy))
