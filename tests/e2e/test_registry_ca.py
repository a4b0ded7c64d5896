"""The operator's registry CA ConfigMap reaches a workspace's pods, and follows changes.

`python -m controller` with `KAITO_WORKSPACE__REGISTRY_CA_CONFIG_MAP` on the kwok cluster:
a tuning workspace that pushes to a private-CA registry gets a copy of the ConfigMap in
its namespace, owned by it, mounted in the tuning container; an edit of the source
reaches the copy. (The kubelet tier proves the pods then trust the registry.)
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from typing import Any

import pytest

from kaito.devcluster import LocalCluster
from tests.e2e.components import ComponentProcess, wait_for
from tests.e2e.test_workspace_controller import REPO, FakeProvisioner, _get

pytestmark = pytest.mark.e2e

OPERATOR_NAMESPACE = "kaito-registry-ca-test"
SOURCE = "kaito-registry-ca"
PEM = "-----BEGIN CERTIFICATE-----\nMIIB{}\n-----END CERTIFICATE-----\n"
KEY = "registry.example.com_5000.crt"


@pytest.fixture(scope="module")
def controller(cluster: LocalCluster, tmp_path_factory: pytest.TempPathFactory
               ) -> Iterator[ComponentProcess]:
    cluster.kubectl("apply", "-f", str(REPO / "config" / "crd" / "bases"))
    cluster.kubectl("create", "namespace", OPERATOR_NAMESPACE)
    process = ComponentProcess(
        "controller", cluster.kubeconfig,
        tmp_path_factory.mktemp("controller") / "controller.log",
        args=["--no-leader-elect", "--workers", "2"],
        env={"KAITO_WORKSPACE__OPERATOR_NAMESPACE": OPERATOR_NAMESPACE,
             "KAITO_WORKSPACE__REGISTRY_CA_CONFIG_MAP": SOURCE,
             # No periodic progress pass within the test: only the source's watch can
             # bring its change to the copy.
             "KAITO_WORKSPACE__PROGRESS_INTERVAL_SECONDS": "600"})
    process.start()
    try:
        yield process
    finally:
        process.kill()
        print(process.log_path.read_text()[-5000:])
        cluster.kubectl("delete", "namespace", OPERATOR_NAMESPACE, "--wait=false",
                        check=False)


def _source(cluster: LocalCluster, pem: str) -> None:
    document = {"apiVersion": "v1", "kind": "ConfigMap",
                "metadata": {"name": SOURCE, "namespace": OPERATOR_NAMESPACE},
                "data": {KEY: pem, "notes.txt": "not a bundle"}}
    cluster.kubectl("apply", "-f", "-", input=json.dumps(document))


def test_the_copy_is_mounted_where_the_adapter_is_pushed_and_follows_the_source(
    cluster: LocalCluster, cluster_namespace: str, controller: ComponentProcess
) -> None:
    _source(cluster, PEM.format("first"))
    namespace, name = cluster_namespace, "push-private"
    workspace = {
        "apiVersion": "kaito.sh/v1beta1", "kind": "Workspace",
        "metadata": {"name": name, "namespace": namespace},
        "resource": {"instanceType": "Standard_NC6s_v3",
                     "labelSelector": {"matchLabels": {"app": "push-private"}}},
        "tuning": {"preset": {"name": "phi-3-mini-128k-instruct"}, "method": "qlora",
                   "input": {"urls": ["https://example.com/data.jsonl"]},
                   "output": {"image": "registry.example.com:5000/adapters/x:1",
                              "imagePushSecret": "push"}}}
    cluster.kubectl("apply", "-f", "-", input=json.dumps(workspace))
    # A node nothing runs: the pod stays Pending, so nothing but the source's change can
    # wake the workspace once the Job is made.
    provisioner = FakeProvisioner(cluster, kwok_managed=False)
    job: dict[str, Any] = wait_for(
        "the tuning Job", lambda: _get(cluster, "job", name, "-n", namespace),
        tick=provisioner.step, timeout=180)
    copy_name = f"{name}-registry-ca"
    copy = _get(cluster, "configmap", copy_name, "-n", namespace)
    assert copy["data"] == {KEY: PEM.format("first")}  # bundles only
    owner = copy["metadata"]["ownerReferences"][0]
    assert (owner["kind"], owner["name"]) == ("Workspace", name)

    spec = job["spec"]["template"]["spec"]
    volumes = {volume["name"]: volume for volume in spec["volumes"]}
    assert volumes["registry-ca"]["configMap"]["name"] == copy_name
    tuner = spec["containers"][0]
    assert {"name": "registry-ca", "mountPath": "/etc/kaito/registry-ca",
            "readOnly": True} in tuner["volumeMounts"]
    assert {"name": "KAITO_REGISTRY_CA_DIR", "value": "/etc/kaito/registry-ca"} in tuner["env"]

    # The source changes: the copy follows (the kubelet refreshes the mounted files).
    time.sleep(3)  # the passes the Job's creation woke are over
    _source(cluster, PEM.format("second"))
    wait_for("the copy updated", lambda: (_get(cluster, "configmap", copy_name, "-n",
                                               namespace) or {}).get("data") == {
        KEY: PEM.format("second")}, timeout=30)
    cluster.kubectl("delete", "workspace", name, "-n", namespace, "--wait=false")
