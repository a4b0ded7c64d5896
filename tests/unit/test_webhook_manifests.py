"""The kustomize manifests agree with the server, and every sample and example is admitted."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.unit.test_webhook_cases import run_webhook
from webhook.server import MUTATE_PATH, VALIDATE_PATH
from webhook.settings import WebhookSettings

pytestmark = pytest.mark.unit

REPO = Path(__file__).resolve().parents[2]


def _kubectl() -> str:
    """kubectl from PATH or $KUBEBUILDER_ASSETS (hack/test.sh provides both). A missing
    kubectl fails these tests: skipping would let the manifests drift unnoticed."""
    assets = os.environ.get("KUBEBUILDER_ASSETS", "")
    found = shutil.which("kubectl") or (shutil.which("kubectl", path=assets) if assets else None)
    if found is None:
        pytest.fail("kubectl is neither on PATH nor in $KUBEBUILDER_ASSETS: run the tests "
                    "through hack/test.sh (make test), which provides it")
    return found


def _kustomize(folder: str) -> list[dict[str, Any]]:
    out = subprocess.run([_kubectl(), "kustomize", str(REPO / folder)], check=True,
                         capture_output=True, text=True).stdout
    return [doc for doc in yaml.safe_load_all(out) if doc]


def test_webhook_configurations_match_the_server() -> None:
    docs = {doc["kind"]: doc for doc in _kustomize("config/webhook")}
    defaults = WebhookSettings()
    service = docs["Service"]
    assert service["metadata"]["name"] == defaults.service_name
    for kind, name, path in (
        ("MutatingWebhookConfiguration", defaults.mutating_configuration, MUTATE_PATH),
        ("ValidatingWebhookConfiguration", defaults.validating_configuration, VALIDATE_PATH),
    ):
        config = docs[kind]
        assert config["metadata"]["name"] == name
        (hook,) = config["webhooks"]
        assert hook["clientConfig"]["service"] == {
            "name": defaults.service_name, "namespace": defaults.namespace, "path": path,
            "port": 443,
        }
        assert hook["failurePolicy"] == "Fail"
        assert hook["sideEffects"] == "None"
        assert hook["admissionReviewVersions"] == ["v1"]
        (rule,) = hook["rules"]
        assert rule["apiGroups"] == ["kaito.sh"] and rule["resources"] == ["workspaces"]
        assert set(rule["apiVersions"]) == {"v1alpha1", "v1beta1"}
        assert set(rule["operations"]) == {"CREATE", "UPDATE"}


def test_cert_manager_variant_injects_the_ca() -> None:
    docs = _kustomize("config/webhook/cert-manager")
    configs = [d for d in docs if d["kind"].endswith("WebhookConfiguration")]
    assert len(configs) == 2
    for config in configs:
        assert config["metadata"]["annotations"]["cert-manager.io/inject-ca-from"] == (
            "kaito-system/kaito-webhook-cert")
    certificate = next(d for d in docs if d["kind"] == "Certificate")
    assert "kaito-webhook.kaito-system.svc" in certificate["spec"]["dnsNames"]


def test_crd_kustomization_lists_every_generated_crd() -> None:
    names = sorted(doc["metadata"]["name"] for doc in _kustomize("config/crd"))
    assert names == ["machines.karpenter.sh", "nodeclaims.karpenter.sh", "workspaces.kaito.sh"]


def _workspaces_and_configmaps(paths: list[Path]) -> tuple[list[dict[str, Any]],
                                                            dict[str, dict[str, str]]]:
    workspaces: list[dict[str, Any]] = []
    configmaps: dict[str, dict[str, str]] = {}
    for path in paths:
        for doc in yaml.safe_load_all(path.read_text()):
            if doc and doc["kind"] == "Workspace":
                workspaces.append(doc)
            elif doc and doc["kind"] == "ConfigMap":
                configmaps[doc["metadata"]["name"]] = doc["data"]
    return workspaces, configmaps


def test_every_sample_and_example_is_admitted() -> None:
    paths = sorted((REPO / "config/samples").glob("*.yaml")) + sorted(
        (REPO / "examples").rglob("*.yaml"))
    paths = [p for p in paths if p.name != "kustomization.yaml"]
    workspaces, configmaps = _workspaces_and_configmaps(paths)
    assert len(workspaces) >= 4
    for ws in workspaces:
        config_name = (ws.get("tuning") or {}).get("config")
        data = configmaps.get(config_name) if config_name else None
        assert run_webhook(ws, data) == [], ws["metadata"]["name"]
