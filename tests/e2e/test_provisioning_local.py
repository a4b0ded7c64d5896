"""The provisioner with its local backend on the kwok cluster: claims become GPU nodes.

It runs as `python -m controller.provisioning --backend local` under its own
ServiceAccount (the shipped RBAC, a token kubeconfig) with leader election in
kaito-system. The Workspace controller's flow runs on the nodes it makes.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

from kaito.devcluster import LocalCluster
from kaito.devcluster.process import free_port
from tests.e2e.components import Revisions
from tests.e2e.provisioning_support import (
    GPU_TAINT,
    REPO,
    ProvisionerProcess,
    condition,
    delete_claims,
    get,
    is_true,
    node_claim,
    running_provisioner,
    wait_for,
)

pytestmark = pytest.mark.e2e

LIFECYCLE = ("Launched", "Registered", "Initialized", "Ready")


@pytest.fixture(scope="module")
def provisioner(cluster: LocalCluster, tmp_path_factory: pytest.TempPathFactory
                ) -> Iterator[ProvisionerProcess]:
    with running_provisioner(
            cluster, tmp_path_factory.mktemp("provisioner-local"),
            args=["--backend", "local", "--use-machines", "--leader-elect",
                  "--lease-namespace", "kaito-system"],
            env={"KAITO_PROVISIONER__RECHECK_SECONDS": "1"}) as process:
        yield process


def test_a_claim_becomes_a_ready_gpu_node_and_deleting_it_removes_the_node(
    cluster: LocalCluster, provisioner: ProvisionerProcess,
) -> None:
    name = "claim-local-nc6"
    started = time.monotonic()
    with Revisions(cluster.bin_dir / "kubectl", cluster.kubeconfig, "nodeclaims",
                   name) as revisions:
        cluster.apply(node_claim(name, labels={"app": "local-e2e"}))
        wait_for("the claim Ready", lambda: is_true(get(cluster, "nodeclaim", name), "Ready"),
                 timeout=90, interval=0.1)
        ready_seconds = round(time.monotonic() - started, 2)
        wait_for("the watch to see it Ready", lambda: revisions.first_true("Ready") is not None,
                 timeout=30)
    # Launched → Registered → Initialized → Ready, in the order the API server stored them.
    revisions.assert_became_true_in_order(LIFECYCLE)
    claim = get(cluster, "nodeclaim", name)
    times = [condition(claim, t)["lastTransitionTime"] for t in LIFECYCLE]  # type: ignore[index]
    assert times == sorted(times)
    status = claim["status"]
    assert status["capacity"]["nvidia.com/gpu"] == "1"
    assert "karpenter.sh/termination" in claim["metadata"]["finalizers"]

    node = get(cluster, "node", status["nodeName"])
    assert node["spec"]["providerID"] == status["providerID"]
    assert node["status"]["allocatable"]["nvidia.com/gpu"] == "1"
    labels = node["metadata"]["labels"]
    assert labels["node.kubernetes.io/instance-type"] == "Standard_NC6s_v3"
    assert labels["app"] == "local-e2e" and labels["karpenter.sh/nodepool"] == "kaito"
    assert labels["karpenter.sh/registered"] == "true"
    assert GPU_TAINT in node["spec"]["taints"]
    assert any(c["type"] == "Ready" and c["status"] == "True"
               for c in node["status"]["conditions"])
    assert provisioner.metric("kaito_nodeclaims", kind="NodeClaim", phase="Ready") >= 1
    assert provisioner.metric("kaito_nodeclaim_ready_seconds_count", backend="local") >= 1
    print("seconds from create to Ready (local):", ready_seconds)

    # A Ready claim is left alone: touching it (a pass with nothing new) writes nothing
    # to it and says nothing new about it. (The Lease renewals are the process's only
    # other writes, so its write counter cannot show this.)
    def events() -> int:
        found = get(cluster, "events.events.k8s.io", "-A",
                    "--field-selector", f"regarding.name={name}")
        # The node has the claim's name: count only what is said about the claim.
        return sum(1 for e in found["items"] if e["regarding"].get("kind") == "NodeClaim")

    time.sleep(2)  # the Ready Event and any in-flight pass
    said = events()
    touched = json.loads(cluster.kubectl(
        "annotate", "nodeclaim", name, "example.com/touch=1", "-o", "json").stdout)
    time.sleep(3)
    after = get(cluster, "nodeclaim", name)
    assert after["metadata"]["resourceVersion"] == touched["metadata"]["resourceVersion"]
    assert events() == said

    cluster.kubectl("delete", "nodeclaim", name, "--wait=false")
    wait_for("the node gone", lambda: get(cluster, "node", status["nodeName"]) is None,
             timeout=60)
    wait_for("the claim gone", lambda: get(cluster, "nodeclaim", name) is None, timeout=60)


def test_a_claim_whose_node_is_deleted_is_deleted_too(
    cluster: LocalCluster, provisioner: ProvisionerProcess,
) -> None:
    name = "claim-local-lost-node"
    cluster.apply(node_claim(name))
    claim = wait_for("the claim Ready", lambda: (
        (obj := get(cluster, "nodeclaim", name)) and is_true(obj, "Ready") and obj), timeout=90)
    cluster.kubectl("delete", "node", claim["status"]["nodeName"], "--wait=false")
    wait_for("the claim gone", lambda: get(cluster, "nodeclaim", name) is None, timeout=60)


USER = "system:serviceaccount:kaito-system:kaito-gpu-provisioner"


@pytest.mark.parametrize(("verb", "resource", "namespace", "allowed"), [
    ("watch", "nodeclaims.karpenter.sh", "", True),
    ("update", "nodeclaims.karpenter.sh/status", "", True),
    ("delete", "machines.karpenter.sh", "", True),
    ("create", "nodeclaims.karpenter.sh", "", False),
    ("update", "nodeclaims.karpenter.sh", "", False),
    ("create", "nodes", "", True),
    ("patch", "nodes", "", True),
    ("update", "nodes/status", "", False),
    ("update", "leases.coordination.k8s.io", "kaito-system", True),
    ("update", "leases.coordination.k8s.io", "default", False),
    ("create", "events.events.k8s.io", "default", True),
    ("get", "secrets", "kaito-system", False),
    ("list", "pods", "default", False),
    ("get", "workspaces.kaito.sh", "default", False),
])
def test_its_service_account_may_do_only_what_it_uses(
    cluster: LocalCluster, provisioner: ProvisionerProcess, verb: str, resource: str,
    namespace: str, allowed: bool,
) -> None:
    scope = ["-n", namespace] if namespace else []
    resource, _, subresource = resource.partition("/")  # "x/status" would name an object
    if subresource:
        scope.append(f"--subresource={subresource}")
    result = cluster.kubectl("auth", "can-i", "--as", USER, verb, resource, *scope,
                             check=False)
    assert (result.stdout.strip() == "yes") is allowed


def test_an_unknown_instance_type_is_a_launch_condition(
    cluster: LocalCluster, provisioner: ProvisionerProcess,
) -> None:
    name = "claim-local-unknown"
    cluster.apply(node_claim(name, instance_type="Standard_D2s_v3"))
    launched = wait_for("Launched=False", lambda: (
        (found := condition(get(cluster, "nodeclaim", name), "Launched"))
        and found["status"] == "False" and found), timeout=60)
    assert launched["reason"] == "InstanceTypeUnknown"
    assert "Standard_D2s_v3" in launched["message"]
    assert condition(get(cluster, "nodeclaim", name), "Ready")["status"] == "False"  # type: ignore[index]
    delete_claims(cluster, [name])


def test_a_legacy_machine_goes_through_the_same_lifecycle(
    cluster: LocalCluster, provisioner: ProvisionerProcess,
) -> None:
    name = "machine-local-nc6"
    machine = node_claim(name)
    machine.update(apiVersion="karpenter.sh/v1alpha5", kind="Machine")
    del machine["spec"]["nodeClassRef"]
    machine["spec"]["machineTemplateRef"] = {"name": "default"}
    cluster.apply(machine)
    found = wait_for("the machine Ready", lambda: (
        (obj := get(cluster, "machine", name)) and is_true(obj, "Ready") and obj), timeout=90)
    assert all(is_true(found, t) for t in LIFECYCLE)
    node = get(cluster, "node", found["status"]["nodeName"])
    assert node["status"]["allocatable"]["nvidia.com/gpu"] == "1"
    cluster.kubectl("delete", "machine", name, "--wait=false")
    wait_for("the machine and its node gone", lambda: get(cluster, "machine", name) is None
             and get(cluster, "node", found["status"]["nodeName"]) is None, timeout=60)


def test_the_workspace_flow_runs_on_provisioned_nodes(
    cluster: LocalCluster, cluster_namespace: str, provisioner: ProvisionerProcess,
    tmp_path: Path,
) -> None:
    name = "phi-3-provisioned"
    port = free_port()
    log_path = tmp_path / "controller.log"
    with open(log_path, "ab") as log:
        controller = subprocess.Popen(
            [sys.executable, "-m", "controller", "--kubeconfig", str(cluster.kubeconfig),
             "--no-leader-elect", "--port", str(port), "--bind-host", "127.0.0.1",
             "--log-format", "text"],
            cwd=REPO, env={**os.environ, "PYTHONPATH": str(REPO)}, stdout=log,
            stderr=subprocess.STDOUT)
    try:
        def controller_ready() -> bool:
            assert controller.poll() is None, log_path.read_text()[-3000:]
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/readyz", timeout=2) as r:
                    return bool(r.status == 200)
            except OSError:
                return False

        wait_for("the Workspace controller", controller_ready, timeout=60)
        document = {
            "apiVersion": "kaito.sh/v1beta1", "kind": "Workspace", "metadata": {"name": name},
            "resource": {"instanceType": "Standard_NC6s_v3", "count": 1,
                         "labelSelector": {"matchLabels": {"app": name}}},
            "inference": {"preset": {"name": "phi-3-mini-4k-instruct"}},
        }
        started = time.monotonic()
        cluster.kubectl("apply", "-n", cluster_namespace, "-f", "-", input=json.dumps(document))
        wait_for("WorkspaceReady", lambda: is_true(
            get(cluster, "workspace", name, "-n", cluster_namespace), "WorkspaceReady"),
            timeout=180)
        print(f"workspace ready on a provisioned node in {time.monotonic() - started:.1f} s")
        claims = get(cluster, "nodeclaims", "-l", f"kaito.sh/workspace={name}")["items"]
        assert len(claims) == 1 and is_true(claims[0], "Ready")
        node_name = claims[0]["status"]["nodeName"]
        ws = get(cluster, "workspace", name, "-n", cluster_namespace)
        assert ws["status"]["workerNodes"] == [node_name]
        pods = get(cluster, "pods", "-n", cluster_namespace,
                   "-l", f"kaito.sh/workspace={name}")["items"]
        assert pods and all(p["spec"]["nodeName"] == node_name for p in pods)

        cluster.kubectl("delete", "workspace", name, "-n", cluster_namespace, "--wait=false")
        wait_for("the claim and its node gone", lambda: not get(
            cluster, "nodeclaims", "-l", f"kaito.sh/workspace={name}")["items"] and get(
            cluster, "node", node_name) is None, timeout=90)
    finally:
        controller.send_signal(signal.SIGTERM)
        controller.wait(timeout=60)
        print(log_path.read_text()[-3000:])
