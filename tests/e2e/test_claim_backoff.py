"""A NodeClaim the cloud refuses is retried with backoff, not in a hot loop (issue 21).

The Workspace controller and the provisioner with its AKS backend run together, as
processes, against our local ARM server (tests/e2e/provisioning_arm.py), which refuses
every agent-pool PUT for the workspace's VM size with QuotaExceeded. Time is compressed
through settings (the backoff starts at 2 s and is capped at 8 s; the provisioner's own
"unavailable offerings" memory is off so that every attempt reaches ARM): over ~40 s of
refusal, the PUTs ARM receives must be the backoff's count, spaced 2, 4, 8, 8... s apart,
with no DELETE (a refused create made nothing to delete), and a controller restart must
not start the backoff over.
"""

from __future__ import annotations

import itertools
import json
import re
import time
import uuid
from collections.abc import Iterator
from datetime import datetime
from typing import Any

import pytest

from controller.provisioning.agentpool import agent_pool_name
from controller.workspace.nodes import claim_name
from crds.workspace import Workspace
from kaito.devcluster import LocalCluster
from tests.e2e.components import ComponentProcess, wait_for
from tests.e2e.provisioning_arm import ArmServer
from tests.e2e.provisioning_support import ProvisionerProcess, condition, get, install

pytestmark = pytest.mark.e2e

REFUSED_SIZE = "Standard_NC24s_v3"
QUOTA = ("QuotaExceeded", ("Operation could not be completed as it results in exceeding "
                           "approved standardNCSv3Family Cores quota. Current Limit: 0"))
BASE_SECONDS, MAX_SECONDS = 2.0, 8.0
REFUSAL_SECONDS = 40.0


class Stack:
    def __init__(self, cluster: LocalCluster, server: ArmServer,
                 provisioner: ProvisionerProcess, controller: ComponentProcess) -> None:
        self.cluster, self.server = cluster, server
        self.provisioner, self.controller = provisioner, controller


@pytest.fixture(scope="module")
def stack(cluster: LocalCluster, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    workdir = tmp_path_factory.mktemp("claim-backoff")
    server = ArmServer(workdir, provisioning_seconds=1.0, deletion_seconds=0.5)
    server.faults.refuse_at_put[REFUSED_SIZE] = QUOTA
    server.start()
    kubeconfig = install(cluster, workdir)
    provisioner = ProvisionerProcess(kubeconfig, workdir / "provisioner.log", args=[
        "--backend", "aks", "--no-leader-elect"], env={
        "KAITO_PROVISIONER__AZURE__SUBSCRIPTION_ID": "00000000-0000-0000-0000-000000000000",
        "KAITO_PROVISIONER__AZURE__RESOURCE_GROUP": "rg",
        "KAITO_PROVISIONER__AZURE__CLUSTER_NAME": "aks",
        "KAITO_PROVISIONER__AZURE__BASE_URL": server.base_url,
        "KAITO_PROVISIONER__AZURE__CA_FILE": str(server.ca_file),
        "KAITO_PROVISIONER__AZURE__TOKEN_FILE": str(server.token_file),
        "KAITO_PROVISIONER__AZURE__POLLING_INTERVAL_SECONDS": "0.5",
        "KAITO_PROVISIONER__RECHECK_SECONDS": "1",
        # Every attempt asks ARM: what is counted is the Workspace controller's backoff.
        "KAITO_PROVISIONER__UNAVAILABLE_OFFERING_SECONDS": "0",
    })
    controller = ComponentProcess(
        "controller", cluster.kubeconfig, workdir / "controller.log",
        args=["--no-leader-elect", "--workers", "2"],
        env={"KAITO_WORKSPACE__CLAIM_RETRY_BASE_SECONDS": str(BASE_SECONDS),
             "KAITO_WORKSPACE__CLAIM_RETRY_MAX_SECONDS": str(MAX_SECONDS)})
    provisioner.start()
    controller.start()
    try:
        yield Stack(cluster, server, provisioner, controller)
    finally:
        controller.kill()
        provisioner.stop()
        server.stop()
        print(controller.tail())
        print(provisioner.tail())


def _workspace(name: str, app: str) -> str:
    return json.dumps({
        "apiVersion": "kaito.sh/v1beta1", "kind": "Workspace", "metadata": {"name": name},
        "resource": {"instanceType": REFUSED_SIZE, "count": 1,
                     "labelSelector": {"matchLabels": {"app": app}}},
        "inference": {"preset": {"name": "phi-3-mini-4k-instruct"}},
    })


def _calls(server: ArmServer, method: str, pools: set[str]) -> list[float]:
    return [c.at for c in server.calls
            if c.method == method and c.path.rsplit("/", 1)[-1] in pools]


def test_a_refused_claim_is_retried_with_capped_exponential_backoff(
    stack: Stack, cluster_namespace: str
) -> None:
    cluster, server = stack.cluster, stack.server
    namespace, name = cluster_namespace, "quota-bound"
    cluster.kubectl("apply", "-n", namespace, "-f", "-",
                    input=_workspace(name, f"quota-{uuid.uuid4().hex[:6]}"))
    # Claim names alternate between indexes while a refused one is being deleted.
    ws = Workspace.model_validate({"metadata": {"name": name, "namespace": namespace}})
    pools = {agent_pool_name(claim_name(ws, index)) for index in range(3)}
    wait_for("the first PUT", lambda: _calls(server, "PUT", pools), timeout=60,
             interval=0.05)
    started = _calls(server, "PUT", pools)[0]

    # Half way through, a restarted controller goes on from the attempt on the claims.
    time.sleep(max(0.0, started + REFUSAL_SECONDS / 2 - time.monotonic()))
    attempt_before = _highest_attempt(cluster, namespace, name)
    stack.controller.kill()
    stack.controller.start()
    time.sleep(max(0.0, started + REFUSAL_SECONDS - time.monotonic()))
    ended = time.monotonic()

    puts = [at for at in _calls(server, "PUT", pools) if at <= ended]
    deletes = [at for at in _calls(server, "DELETE", pools) if at <= ended]
    gets = [at for at in _calls(server, "GET", pools) if at <= ended]
    gaps = [round(b - a, 1) for a, b in itertools.pairwise(puts)]
    print(f"over {ended - started:.0f} s of refusal: {len(puts)} PUTs at gaps {gaps}, "
          f"{len(deletes)} DELETEs, {len(gets)} GETs; attempt {attempt_before} at the restart")
    # The backoff's own count with no latency at all is the most there can be.
    most, clock = 1, _wait(1)
    while clock <= REFUSAL_SECONDS:
        most += 1
        clock += _wait(most)
    assert 3 <= len(puts) <= most, (puts, gaps)
    for attempt, gap in enumerate(gaps, start=1):
        # The refusal time has whole seconds (lastTransitionTime): up to 1 s early.
        assert gap >= _wait(attempt) - 1.1, (attempt, gaps)
    assert gaps[-1] >= MAX_SECONDS - 1.1 or len(gaps) < 3
    # A refused create made no pool: deleting the refused claim asks ARM nothing, and
    # each attempt is one lookup (GET) and one create (PUT).
    assert not deletes
    assert len(gets) <= len(puts) + 1
    assert attempt_before >= 2 and _highest_attempt(cluster, namespace, name) > attempt_before

    def resource_ready() -> dict[str, Any]:
        return condition(get(cluster, "workspace", name, "-n", namespace),
                         "ResourceReady") or {}

    found = wait_for("NodeClaimFailed with the next try", lambda: (
        (c := resource_ready()).get("reason") == "NodeClaimFailed"
        and "next try at" in c.get("message", "") and c), timeout=30)
    assert "QuotaExceeded" in found["message"] and QUOTA[1] in found["message"]
    next_try = re.search(r"next try at (\S+Z)", found["message"])
    assert next_try is not None
    next_at = datetime.fromisoformat(next_try.group(1)).timestamp()
    assert time.time() - 2 <= next_at <= time.time() + MAX_SECONDS + 1

    events = get(cluster, "events.events.k8s.io", "-n", namespace,
                 "--field-selector", f"regarding.name={name}")["items"]
    attempts = len(_calls(server, "PUT", pools))
    created = [e for e in events if e["reason"] == "NodeClaimCreated"]
    assert len(created) == len({e["note"] for e in created})  # one per attempt
    assert attempts - 1 <= len(created) <= attempts  # (the last may still be on its way)

    cluster.kubectl("delete", "workspace", name, "-n", namespace, "--wait=false")
    wait_for("the workspace and its claims gone", lambda: get(
        cluster, "workspace", name, "-n", namespace) is None and not _claims(
        cluster, namespace, name), timeout=60)


def _wait(attempt: int) -> float:
    """The wait after the refusal of attempt ``attempt``: doubling, capped."""
    return float(min(MAX_SECONDS, BASE_SECONDS * 2.0 ** (attempt - 1)))


def _claims(cluster: LocalCluster, namespace: str, name: str) -> list[dict[str, Any]]:
    found = get(cluster, "nodeclaims", "-l", f"kaito.sh/workspace={name},"
                f"kaito.sh/workspacenamespace={namespace}") or {"items": []}
    return list(found["items"])


def _highest_attempt(cluster: LocalCluster, namespace: str, name: str) -> int:
    return max((int((c["metadata"].get("annotations") or {}).get(
        "kaito.sh/nodeclaim-attempt", "1")) for c in _claims(cluster, namespace, name)),
        default=0)
