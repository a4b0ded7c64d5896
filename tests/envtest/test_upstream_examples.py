"""Upstream Kaito v0.12's example Workspaces through the real kube-apiserver and our webhook.

Each shape in upstream_examples.yaml (written for this project, not copied) is applied with
`kubectl apply --dry-run=server` and must get upstream's decision. Two webhooks run: one
with node auto-provisioning (the default) and one in bring-your-own mode
(KAITO_WEBHOOK_NODE_PROVISIONING=false, upstream's disableNodeAutoProvisioning), each
selecting its own namespace. The default tuning configs of config/tuning are installed in
the webhook's (operator) namespace, where the webhook finds them by name.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from kaito.devcluster import LocalCluster
from tests.envtest.test_crds import install_crds
from tests.envtest.test_webhook import (
    LABEL,
    RunningWebhook,
    _ca_bundles,
    _configurations,
    _free_port,
    _start,
    _wait,
)

pytestmark = pytest.mark.envtest

REPO = Path(__file__).resolve().parents[2]
EXAMPLES: list[dict[str, Any]] = yaml.safe_load(
    (Path(__file__).parent / "upstream_examples.yaml").read_text())["examples"]
TEMPLATE_NAMES = ("lora-params-template", "qlora-params-template")


def _install_crds(control_plane: LocalCluster) -> None:
    """install_crds, again when `kubectl wait` ran before the new CRD had any condition
    (it then fails with "status.conditions accessor error" instead of waiting)."""
    for attempt in range(5):
        try:
            install_crds(control_plane)
            return
        except RuntimeError as error:
            if "accessor error" not in str(error) or attempt == 4:
                raise
            time.sleep(1)


def _templates(control_plane: LocalCluster) -> list[dict[str, Any]]:
    """The ConfigMaps `kubectl apply -k config/default` installs from config/tuning."""
    rendered = control_plane.kubectl("kustomize", str(REPO / "config/default")).stdout
    return [doc for doc in yaml.safe_load_all(rendered)
            if doc and doc["kind"] == "ConfigMap" and doc["metadata"]["name"] in TEMPLATE_NAMES]


def _run_webhook(control_plane: LocalCluster, log: Path, mode: str) -> RunningWebhook:
    test_id = uuid.uuid4().hex[:8]
    operator_namespace = f"kaito-upstream-{mode}-{test_id}"
    control_plane.kubectl("create", "namespace", operator_namespace)
    for template in _templates(control_plane):
        template["metadata"]["namespace"] = operator_namespace
        control_plane.apply(template)
    port = _free_port()
    name = f"kaito-upstream-{mode}-{test_id}"
    control_plane.apply(_configurations(name, port, test_id))
    env = {"KAITO_WEBHOOK_NODE_PROVISIONING": "false" if mode == "byo" else "true"}
    process = _start(
        control_plane, log, "--port", str(port), "--namespace", operator_namespace,
        "--mutating-configuration", f"{name}-mutating",
        "--validating-configuration", f"{name}-validating", env_extra=env)
    hook = RunningWebhook(port, operator_namespace, test_id, f"{name}-mutating",
                          f"{name}-validating", process, log)
    _wait("caBundle in both configurations",
          lambda: all(_ca_bundles(control_plane, hook)) and process.poll() is None, log=log)
    workspace_namespace = f"ws-{test_id}"
    control_plane.apply({"apiVersion": "v1", "kind": "Namespace",
                         "metadata": {"name": workspace_namespace,
                                      "labels": {LABEL: test_id}}})
    # The API server reads webhook configurations from an informer: wait until ours denies.
    unknown = next(e for e in EXAMPLES if e["id"] == "unknown-preset")["workspace"]
    _wait("the webhook to be called", lambda: "denied the request" in control_plane.kubectl(
        "apply", "--dry-run=server", "-n", workspace_namespace, "-f", "-",
        input=yaml.safe_dump(unknown), check=False).stderr, log=log)
    return hook


def _stop(control_plane: LocalCluster, hook: RunningWebhook) -> None:
    if hook.process.poll() is None:
        hook.process.terminate()
        hook.process.wait(timeout=15)
    for kind, config_name in (("mutatingwebhookconfiguration", hook.mutating),
                              ("validatingwebhookconfiguration", hook.validating)):
        control_plane.kubectl("delete", kind, config_name, check=False)
    for namespace in (hook.namespace, f"ws-{hook.label_value}"):
        control_plane.kubectl("delete", "namespace", namespace, "--wait=false", check=False)


@pytest.fixture(scope="module")
def webhooks(control_plane: LocalCluster, tmp_path_factory: pytest.TempPathFactory
             ) -> Iterator[dict[str, RunningWebhook]]:
    _install_crds(control_plane)
    logs = tmp_path_factory.mktemp("upstream-webhooks")
    running: dict[str, RunningWebhook] = {}
    try:
        for mode in ("nap", "byo"):
            running[mode] = _run_webhook(control_plane, logs / f"{mode}.log", mode)
        yield running
        for hook in running.values():
            text = hook.log.read_text()
            assert "Traceback" not in text and '"level": "error"' not in text, text[-5000:]
    finally:
        for hook in running.values():
            _stop(control_plane, hook)


@pytest.mark.parametrize("example", EXAMPLES, ids=lambda e: e["id"])
def test_upstream_example_gets_upstreams_decision(
    control_plane: LocalCluster, webhooks: dict[str, RunningWebhook], example: dict[str, Any]
) -> None:
    hook = webhooks[example["mode"]]
    if "configmap" in example:
        control_plane.apply({"apiVersion": "v1", "kind": "ConfigMap",
                             "metadata": {"name": example["configmap"]["name"],
                                          "namespace": f"ws-{hook.label_value}"},
                             "data": example["configmap"]["data"]})
    result = control_plane.kubectl(
        "apply", "--dry-run=server", "-n", f"ws-{hook.label_value}", "-f", "-",
        input=yaml.safe_dump(example["workspace"]), check=False)
    if example["expect"] == "allow":
        assert result.returncode == 0, result.stderr
        assert "(server dry run)" in result.stdout
    else:
        assert result.returncode != 0
        assert "denied the request" in result.stderr, result.stderr
    if "message" in example:
        assert example["message"] in result.stderr, result.stderr


def test_default_bundle_installs_both_tuning_templates(
    private_control_plane: LocalCluster,
) -> None:
    # A control plane of its own: the bundle's webhook configurations would send every
    # Workspace of the shared one to a webhook Service that does not run here.
    private_control_plane.kubectl("apply", "-k", str(REPO / "config/default"))
    for name, method in zip(TEMPLATE_NAMES, ("lora", "qlora"), strict=True):
        got = private_control_plane.kubectl(
            "get", "configmap", name, "-n", "kaito-system", "-o", "yaml").stdout
        text = yaml.safe_load(got)["data"]["training_config.yaml"]
        assert yaml.safe_load(text)["training_config"]["QuantizationConfig"]["load_in_4bit"] is (
            method == "qlora")


def test_kubectl_explain_partition(control_plane: LocalCluster) -> None:
    _install_crds(control_plane)
    explained = control_plane.kubectl("explain", "workspace.resource.partition").stdout
    assert "bring-your-own" in explained
    for field in ("mode", "profile", "count"):
        assert field in explained
    pvc = control_plane.kubectl(
        "explain", "workspace.inference.preset.presetOptions.modelWeightsPVC").stdout
    assert "PersistentVolumeClaim" in pvc
