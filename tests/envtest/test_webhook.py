"""The webhook through the real kube-apiserver: registered by URL, caBundle patched by itself.

The webhook runs as its own process (`python -m webhook`), makes its CA and serving
certificate, stores them in a Secret and patches both webhook configurations. The
configurations select only namespaces labelled for this module, so other tests that share
the control plane are not affected.
"""

from __future__ import annotations

import base64
import json
import os
import socket
import ssl
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml

from kaito.devcluster import LocalCluster
from tests.envtest.test_crds import install_crds
from tests.unit.test_webhook_cases import CONFIG_NAME, INVALID_CASES, SEED, Case, _edit
from webhook.server import MUTATE_PATH, VALIDATE_PATH

pytestmark = pytest.mark.envtest

REPO = Path(__file__).resolve().parents[2]
LABEL = "kaito.sh/webhook-test"


@dataclass
class RunningWebhook:
    port: int
    namespace: str
    label_value: str
    mutating: str
    validating: str
    process: subprocess.Popen[bytes]
    log: Path


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def _configurations(name: str, port: int, label_value: str) -> list[dict[str, Any]]:
    rules = [{
        "apiGroups": ["kaito.sh"], "apiVersions": ["v1alpha1", "v1beta1"],
        "operations": ["CREATE", "UPDATE"], "resources": ["workspaces"], "scope": "Namespaced",
    }]

    def hook(kind: str, path: str) -> dict[str, Any]:
        return {
            "name": f"{kind}.workspaces.kaito.sh",
            "clientConfig": {"url": f"https://127.0.0.1:{port}{path}"},
            "rules": rules,
            "failurePolicy": "Fail",
            "sideEffects": "None",
            "admissionReviewVersions": ["v1"],
            "timeoutSeconds": 10,
            "namespaceSelector": {"matchLabels": {LABEL: label_value}},
        }

    return [
        {"apiVersion": "admissionregistration.k8s.io/v1",
         "kind": "MutatingWebhookConfiguration", "metadata": {"name": f"{name}-mutating"},
         "webhooks": [{**hook("mutate", MUTATE_PATH), "reinvocationPolicy": "Never"}]},
        {"apiVersion": "admissionregistration.k8s.io/v1",
         "kind": "ValidatingWebhookConfiguration", "metadata": {"name": f"{name}-validating"},
         "webhooks": [hook("validate", VALIDATE_PATH)]},
    ]


def _ca_bundles(control_plane: LocalCluster, hook: RunningWebhook) -> list[str]:
    bundles = []
    for kind, name in (("mutatingwebhookconfiguration", hook.mutating),
                       ("validatingwebhookconfiguration", hook.validating)):
        got = json.loads(control_plane.kubectl("get", kind, name, "-o", "json").stdout)
        bundles += [w["clientConfig"].get("caBundle", "") for w in got["webhooks"]]
    return bundles


def _start(control_plane: LocalCluster, log: Path, *args: str,
           env_extra: dict[str, str] | None = None) -> subprocess.Popen[bytes]:
    env = {**os.environ, "PYTHONPATH": str(REPO), **(env_extra or {})}
    with log.open("wb") as out:
        return subprocess.Popen(
            [sys.executable, "-m", "webhook", "--host", "127.0.0.1", "--ip-address",
             "127.0.0.1", "--kubeconfig", str(control_plane.kubeconfig), *args],
            stdout=out, stderr=subprocess.STDOUT, cwd=REPO, env=env,
        )


def _served_serial(port: int) -> int:
    context = ssl.create_default_context()
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    with socket.create_connection(("127.0.0.1", port), timeout=5) as raw, \
            context.wrap_socket(raw) as tls:
        der = tls.getpeercert(binary_form=True)
    assert der is not None
    from cryptography import x509

    return x509.load_der_x509_certificate(der).serial_number


def _wait(what: str, check: Any, timeout_seconds: float = 60, log: Path | None = None) -> None:
    deadline = time.monotonic() + timeout_seconds
    while not check():
        if time.monotonic() > deadline:
            detail = log.read_text()[-3000:] if log is not None and log.exists() else ""
            raise AssertionError(f"timed out waiting for {what}\n{detail}")
        time.sleep(0.2)


@pytest.fixture(scope="module")
def webhook(control_plane: LocalCluster, tmp_path_factory: pytest.TempPathFactory
            ) -> Iterator[RunningWebhook]:
    install_crds(control_plane)
    test_id = uuid.uuid4().hex[:8]
    namespace = f"kaito-webhook-{test_id}"
    control_plane.kubectl("create", "namespace", namespace)
    port = _free_port()
    name = f"kaito-test-{test_id}"
    control_plane.apply(_configurations(name, port, test_id))
    log = tmp_path_factory.mktemp("webhook") / "webhook.log"
    process = _start(
        control_plane, log, "--port", str(port), "--namespace", namespace,
        "--mutating-configuration", f"{name}-mutating",
        "--validating-configuration", f"{name}-validating",
        "--check-interval-seconds", "1",
    )
    hook = RunningWebhook(port, namespace, test_id, f"{name}-mutating", f"{name}-validating",
                          process, log)
    try:
        _wait("caBundle in both configurations",
              lambda: all(_ca_bundles(control_plane, hook)) and process.poll() is None, log=log)
        yield hook
        process.terminate()
        process.wait(timeout=15)
        text = log.read_text()
        # The whole module ran without the webhook logging an error.
        assert "Traceback" not in text and '"level": "error"' not in text, text[-5000:]
    finally:
        if process.poll() is None:
            process.terminate()
            process.wait(timeout=15)
        for kind, config_name in (("mutatingwebhookconfiguration", hook.mutating),
                                  ("validatingwebhookconfiguration", hook.validating)):
            control_plane.kubectl("delete", kind, config_name, check=False)
        control_plane.kubectl("delete", "namespace", namespace, "--wait=false", check=False)


@pytest.fixture(scope="module")
def ws_namespace(control_plane: LocalCluster, webhook: RunningWebhook) -> Iterator[str]:
    name = f"ws-{webhook.label_value}"
    control_plane.apply({"apiVersion": "v1", "kind": "Namespace",
                         "metadata": {"name": name, "labels": {LABEL: webhook.label_value}}})
    # The API server reads webhook configurations from an informer: wait until ours denies.
    bad = yaml.safe_dump(_edit(SEED, tuning__method="full"))
    _wait("the webhook to be called", lambda: control_plane.kubectl(
        "apply", "--dry-run=server", "-n", name, "-f", "-", input=bad, check=False
    ).returncode != 0, log=webhook.log)
    yield name
    control_plane.kubectl("delete", "namespace", name, "--wait=false", check=False)


def _apply(control_plane: LocalCluster, namespace: str, obj: dict[str, Any], *,
           dry_run: bool = False) -> subprocess.CompletedProcess[str]:
    args = ["apply", "-n", namespace, "-f", "-"]
    if dry_run:
        args.insert(1, "--dry-run=server")
    return control_plane.kubectl(*args, input=yaml.safe_dump(obj), check=False)


def _get(control_plane: LocalCluster, namespace: str, name: str) -> dict[str, Any]:
    got: dict[str, Any] = json.loads(
        control_plane.kubectl("get", "workspace", name, "-n", namespace, "-o", "json").stdout
    )
    return got


def test_seed_is_accepted_and_defaults_are_stored(
    control_plane: LocalCluster, ws_namespace: str
) -> None:
    seed = REPO / "examples/fine-tuning/kaito_workspace_tuning_phi_3.yaml"
    result = control_plane.kubectl("apply", "-n", ws_namespace, "-f", str(seed))
    assert "workspace.kaito.sh/workspace-tuning-phi-3 created" in result.stdout
    assert "Standard_NC6s_v3 (V100) has no bfloat16: tuning runs in float16 instead" \
        in result.stderr
    stored = _get(control_plane, ws_namespace, "workspace-tuning-phi-3")
    assert stored["resource"]["count"] == 1
    assert stored["tuning"] == SEED["tuning"]
    # Without an instance type the cheapest SKU that fits is stored.
    bare = _edit(SEED, metadata={"name": "tuning-no-sku"}, resource__instanceType=None)
    assert _apply(control_plane, ws_namespace, bare).returncode == 0
    stored = _get(control_plane, ws_namespace, "tuning-no-sku")
    assert stored["resource"]["instanceType"] == "Standard_NC4as_T4_v3"
    # Applying the same file again is a no-op update that the update rules allow.
    again = control_plane.kubectl("apply", "-n", ws_namespace, "-f", str(seed))
    assert "unchanged" in again.stdout


def test_inference_defaults_are_stored(control_plane: LocalCluster, ws_namespace: str) -> None:
    obj = {
        "apiVersion": "kaito.sh/v1beta1", "kind": "Workspace",
        "metadata": {"name": "phi-4-serving"},
        "resource": {"labelSelector": {"matchLabels": {"app": "phi-4"}}},
        "inference": {"preset": {"name": "phi-4"},
                      "adapters": [{"source": {"name": "a", "image": "r.io/a:1"}}]},
    }
    result = _apply(control_plane, ws_namespace, obj)
    assert result.returncode == 0, result.stderr
    stored = _get(control_plane, ws_namespace, "phi-4-serving")
    assert stored["resource"]["instanceType"] == "Standard_NC24ads_A100_v4"
    assert stored["resource"]["count"] == 1
    assert stored["inference"]["adapters"][0]["strength"] == "1.0"


@pytest.mark.parametrize("case", INVALID_CASES, ids=lambda c: c.id)
def test_invalid_workspace_is_rejected_by_the_api_server(
    control_plane: LocalCluster, ws_namespace: str, case: Case
) -> None:
    if case.configmap is not None:
        control_plane.apply({"apiVersion": "v1", "kind": "ConfigMap",
                             "metadata": {"name": CONFIG_NAME, "namespace": ws_namespace},
                             "data": case.configmap})
    result = _apply(control_plane, ws_namespace, case.workspace, dry_run=True)
    assert result.returncode != 0
    assert "denied the request" in result.stderr
    assert case.message in result.stderr


def test_update_rules(control_plane: LocalCluster, ws_namespace: str) -> None:
    base = _edit(SEED, metadata={"name": "tuning-updates"})
    assert _apply(control_plane, ws_namespace, base).returncode == 0
    changed_method = _edit(base, tuning__method="lora",
                           resource__instanceType="Standard_NC24ads_A100_v4")
    result = _apply(control_plane, ws_namespace, changed_method)
    assert result.returncode != 0
    assert "tuning.method: Forbidden: field is immutable" in result.stderr
    assert "resource.instanceType: Forbidden: field is immutable" in result.stderr
    switched = _edit(base, tuning=None, inference={"preset": {"name": "phi-3-mini-4k-instruct"}})
    result = _apply(control_plane, ws_namespace, switched)
    assert "inference and tuning cannot be switched on or off" in result.stderr
    renamed_input = _edit(base, tuning__input__name="other")
    assert "tuning.input.name: Forbidden" in _apply(control_plane, ws_namespace,
                                                     renamed_input).stderr
    # urls and output may change.
    new_urls = _edit(base, tuning__input__urls=["https://example.com/more.parquet"],
                     tuning__output__image="r.io/adapter:2")
    result = _apply(control_plane, ws_namespace, new_urls)
    assert result.returncode == 0, result.stderr
    stored = _get(control_plane, ws_namespace, "tuning-updates")
    assert stored["tuning"]["input"]["urls"] == ["https://example.com/more.parquet"]
    bad_url = _edit(base, tuning__input__urls=["http://10.1/x"])  # 10.0.0.1, as C reads it
    assert ("tuning.input.urls[0]: Invalid value: \"http://10.1/x\": host '10.1': address "
            "10.0.0.1 is not a public address (private)") in _apply(
                control_plane, ws_namespace, bad_url).stderr


def test_serving_certificate_is_signed_by_the_stored_ca(
    control_plane: LocalCluster, webhook: RunningWebhook
) -> None:
    secret = json.loads(control_plane.kubectl(
        "get", "secret", "kaito-webhook-cert", "-n", webhook.namespace, "-o", "json").stdout)
    ca_pem = base64.b64decode(secret["data"]["ca.crt"])
    assert all(base64.b64decode(b) == ca_pem for b in _ca_bundles(control_plane, webhook))
    # Verifies the chain to the stored CA and the 127.0.0.1 IP SAN.
    with socket.create_connection(("127.0.0.1", webhook.port), timeout=5) as raw, \
            ssl.create_default_context(cadata=ca_pem.decode()).wrap_socket(
                raw, server_hostname="127.0.0.1") as tls:
        assert tls.version() in ("TLSv1.2", "TLSv1.3")


def test_deleted_secret_is_recreated_and_ca_bundle_repatched(
    control_plane: LocalCluster, webhook: RunningWebhook, ws_namespace: str
) -> None:
    before = _ca_bundles(control_plane, webhook)
    serial_before = _served_serial(webhook.port)
    control_plane.kubectl("delete", "secret", "kaito-webhook-cert", "-n", webhook.namespace)
    _wait("a new CA in both configurations",
          lambda: all(b and b not in before for b in _ca_bundles(control_plane, webhook)),
          log=webhook.log)
    _wait("the new serving certificate", lambda: _served_serial(webhook.port) != serial_before,
          log=webhook.log)
    assert webhook.process.poll() is None  # reloaded without a restart
    # The API server trusts the new CA: admission still works.
    bad = _edit(SEED, tuning__method="full")
    _wait("admission through the new certificate", lambda: "denied the request" in _apply(
        control_plane, ws_namespace, bad, dry_run=True).stderr, log=webhook.log)


def test_serving_certificate_renews_before_expiry_without_restart(
    control_plane: LocalCluster, webhook: RunningWebhook, tmp_path: Path
) -> None:
    # Certificates valid 1 day, renewed 2 days before expiry: every check renews.
    port = _free_port()
    log = tmp_path / "renewing.log"
    process = _start(
        control_plane, log, "--port", str(port), "--namespace", webhook.namespace,
        "--secret-name", "renewing-cert", "--mutating-configuration", "absent",
        "--validating-configuration", "absent", "--check-interval-seconds", "0.5",
        "--renew-before-days", "2", env_extra={"KAITO_WEBHOOK_CERT_VALID_DAYS": "1"},
    )
    try:
        _wait("the renewing webhook", lambda: _port_open(port), log=log)
        first = _served_serial(port)
        _wait("a renewed certificate", lambda: _served_serial(port) != first, log=log)
        assert process.poll() is None
    finally:
        process.terminate()
        process.wait(timeout=15)


def _port_open(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=1):
            return True
    except OSError:
        return False


def test_kubectl_explain_workspace_tuning(control_plane: LocalCluster,
                                          webhook: RunningWebhook) -> None:
    explained = control_plane.kubectl("explain", "workspace.tuning").stdout
    assert "Fine-tuning: exclusive with inference." in explained
    assert "input" in explained and "Where the training data comes from." in explained


def test_metadata_updates_pass_after_the_configmap_is_gone(
    control_plane: LocalCluster, ws_namespace: str
) -> None:
    control_plane.apply({"apiVersion": "v1", "kind": "ConfigMap",
                         "metadata": {"name": "short-lived", "namespace": ws_namespace},
                         "data": {"training_config.yaml": yaml.safe_dump(
                             {"training_config": {"QuantizationConfig": {"load_in_4bit": True}}})}})
    obj = _edit(SEED, metadata={"name": "tuning-configmap-gone"}, tuning__config="short-lived")
    result = _apply(control_plane, ws_namespace, obj)
    assert result.returncode == 0, result.stderr
    control_plane.kubectl("delete", "configmap", "short-lived", "-n", ws_namespace)
    # What the controller does (finalizers, labels) still goes through.
    control_plane.kubectl("patch", "workspace", "tuning-configmap-gone", "-n", ws_namespace,
                          "--type=merge", "-p", '{"metadata": {"finalizers": ["kaito.sh/test"]}}')
    control_plane.kubectl("label", "workspace", "tuning-configmap-gone", "-n", ws_namespace,
                          "team=a")
    # A spec change is validated again and names the missing ConfigMap.
    changed = _edit(obj, tuning__input__urls=["https://example.com/b.parquet"])
    assert "tuning.config: Not found" in _apply(control_plane, ws_namespace, changed).stderr
    control_plane.kubectl("patch", "workspace", "tuning-configmap-gone", "-n", ws_namespace,
                          "--type=merge", "-p", '{"metadata": {"finalizers": null}}')


def test_two_replicas_starting_together_share_one_ca(
    control_plane: LocalCluster, webhook: RunningWebhook, tmp_path: Path
) -> None:
    ports = [_free_port(), _free_port()]
    processes = [
        _start(control_plane, tmp_path / f"replica-{index}.log", "--port", str(port),
               "--namespace", webhook.namespace, "--secret-name", "ha-cert",
               "--mutating-configuration", "absent", "--validating-configuration", "absent")
        for index, port in enumerate(ports)
    ]
    try:
        for index, port in enumerate(ports):
            _wait(f"replica {index}", lambda port=port: _port_open(port),
                  log=tmp_path / f"replica-{index}.log")
        secret = json.loads(control_plane.kubectl(
            "get", "secret", "ha-cert", "-n", webhook.namespace, "-o", "json").stdout)
        ca_pem = base64.b64decode(secret["data"]["ca.crt"]).decode()
        for port in ports:
            # Both serve a certificate that the one stored CA (the caBundle) verifies.
            with socket.create_connection(("127.0.0.1", port), timeout=5) as raw, \
                    ssl.create_default_context(cadata=ca_pem).wrap_socket(
                        raw, server_hostname="127.0.0.1") as tls:
                assert tls.version() is not None
        assert all(process.poll() is None for process in processes)
    finally:
        for process in processes:
            process.terminate()
        for process in processes:
            process.wait(timeout=15)


def test_a_template_in_the_operator_namespace_is_watched(
    control_plane: LocalCluster, webhook: RunningWebhook, ws_namespace: str
) -> None:
    """The webhook keeps the operator namespace's templates from a watch (a review does
    not wait on the apiserver for them): an edit or a removal is seen within moments."""
    def template(arguments: dict[str, Any]) -> dict[str, Any]:
        return {"apiVersion": "v1", "kind": "ConfigMap",
                "metadata": {"name": "qlora-params-template", "namespace": webhook.namespace},
                "data": {"training_config.yaml": yaml.safe_dump({"training_config": {
                    "QuantizationConfig": {"load_in_4bit": True},
                    "TrainingArguments": arguments}})}}

    obj = _edit(SEED, metadata={"name": "uses-the-template"})

    def answer() -> str:
        result = _apply(control_plane, ws_namespace, obj, dry_run=True)
        return "" if result.returncode == 0 else result.stderr

    control_plane.apply(template({"num_train_epochs": "many"}))
    _wait("the broken template to be seen", lambda: "num_train_epochs" in answer(),
          timeout_seconds=20)
    control_plane.apply(template({"num_train_epochs": 2}))
    _wait("the fixed template to be seen", lambda: answer() == "", timeout_seconds=20)
    control_plane.apply(template({"num_train_epochs": "many"}))
    _wait("the broken template again", lambda: "num_train_epochs" in answer(),
          timeout_seconds=20)
    control_plane.kubectl("delete", "configmap", "qlora-params-template", "-n",
                          webhook.namespace)
    _wait("the built-in default once it is gone", lambda: answer() == "", timeout_seconds=20)
