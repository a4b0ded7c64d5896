"""Installs the operator from config/ into a local cluster whose node runs real pods.

The same `kubectl apply -k` a user runs, through a generated overlay that changes only
what differs on this machine: the images (the ones hack/images.sh built, by content
tag), one controller replica (2 cores), and the operator's network allowances for the
data server and registry that live on the bridge. The pods run from the operator image
as their ServiceAccounts, under the namespace's `restricted` Pod Security level.
"""

from __future__ import annotations

import json
import os
import subprocess
import time
from pathlib import Path
from typing import Any, Protocol

import yaml

from kaito.devcluster.cluster import REPO_ROOT
from kaito.devcluster.images import ProjectImages


class Kubectl(Protocol):
    def __call__(self, *args: str, input: str | None = ..., check: bool = ...,
                 timeout: float = ...) -> subprocess.CompletedProcess[str]:
        ...

OPERATOR_NAMESPACE = "kaito-system"
DEPLOYMENTS = ("kaito-controller", "kaito-webhook")


def _env_patch(deployment: str, env: dict[str, str]) -> dict[str, Any]:
    operations: list[dict[str, Any]] = [
        {"op": "add", "path": "/spec/template/spec/containers/0/env/-",
         "value": {"name": name, "value": value}}
        for name, value in env.items()
    ]
    if deployment == "kaito-controller":
        operations.append({"op": "replace", "path": "/spec/replicas", "value": 1})
    return {"target": {"kind": "Deployment", "name": deployment},
            "patch": json.dumps(operations)}


def build_overlay(
    *, config_dir: Path, overlay_dir: Path, images: ProjectImages,
    fetch_allow_cidrs: tuple[str, ...] = (), plain_http_registries: tuple[str, ...] = (),
    extra_controller_env: dict[str, str] | None = None,
) -> dict[str, Any]:
    """The kustomization (pure): config/default plus this machine's differences."""
    operator_name, _, operator_tag = images.pods["operator"].rpartition(":")
    controller_env = {
        "KAITO_WORKSPACE__RUNTIME_IMAGE": images.pods["runtime"],
        "KAITO_WORKSPACE__FETCH_ALLOW_CIDRS": ",".join(fetch_allow_cidrs),
        "KAITO_WORKSPACE__PLAIN_HTTP_REGISTRIES": ",".join(plain_http_registries),
        **(extra_controller_env or {}),
    }
    webhook_env = {"KAITO_WEBHOOK_FETCH_ALLOW_CIDRS": ",".join(fetch_allow_cidrs)}
    return {
        "apiVersion": "kustomize.config.k8s.io/v1beta1",
        "kind": "Kustomization",
        "resources": [os.path.relpath(config_dir / "default", overlay_dir)],
        "images": [{"name": "kaito-operator", "newName": operator_name,
                    "newTag": operator_tag}],
        "patches": [_env_patch("kaito-controller", controller_env),
                    _env_patch("kaito-webhook", webhook_env)],
    }


def install_operator(
    kubectl: Kubectl, overlay_dir: Path, *, images: ProjectImages,
    fetch_allow_cidrs: tuple[str, ...] = (), plain_http_registries: tuple[str, ...] = (),
    extra_controller_env: dict[str, str] | None = None, timeout_seconds: int = 300,
) -> None:
    """`kubectl apply -k` the overlay, then wait until both Deployments are available."""
    overlay_dir.mkdir(parents=True, exist_ok=True)
    overlay = build_overlay(
        config_dir=REPO_ROOT / "config", overlay_dir=overlay_dir, images=images,
        fetch_allow_cidrs=fetch_allow_cidrs, plain_http_registries=plain_http_registries,
        extra_controller_env=extra_controller_env)
    (overlay_dir / "kustomization.yaml").write_text(yaml.safe_dump(overlay, sort_keys=False))
    kubectl("apply", "--server-side", "-k", str(overlay_dir), timeout=120)
    for deployment in DEPLOYMENTS:
        kubectl("rollout", "status", "-n", OPERATOR_NAMESPACE,
                        f"deployment/{deployment}", f"--timeout={timeout_seconds}s",
                        timeout=timeout_seconds + 30)
    # The webhook is ready when the apiserver can call it: its Service has an endpoint
    # and it has written caBundle into its configurations.
    kubectl("wait", "-n", OPERATOR_NAMESPACE, "--for=jsonpath={.subsets[0].addresses[0].ip}",
                    "endpoints/kaito-webhook", f"--timeout={timeout_seconds}s",
                    timeout=timeout_seconds + 30)
    wait_until_the_webhook_is_called(kubectl, timeout_seconds)


# A Workspace the apiserver must send to the webhook (its answer, allowed or denied, is
# what is waited for; a dry run stores nothing).
_PROBE = {"apiVersion": "kaito.sh/v1beta1", "kind": "Workspace",
          "metadata": {"name": "webhook-probe", "namespace": "default"},
          "resource": {"instanceType": "Standard_NC6s_v3",
                       "labelSelector": {"matchLabels": {"apps": "probe"}}},
          "inference": {"preset": {"name": "phi-3-mini-4k-instruct"}}}


def wait_until_the_webhook_is_called(kubectl: Kubectl, timeout_seconds: float) -> None:
    """An endpoint in the API is not yet a rule in kube-proxy: until it is, the apiserver's
    call to the Service is refused. Server-side dry runs until one reaches the webhook."""
    deadline = time.monotonic() + timeout_seconds
    while True:
        result = kubectl("create", "--dry-run=server", "-f", "-", input=yaml.safe_dump(_PROBE),
                         check=False, timeout=60)
        if result.returncode == 0 or "failed calling webhook" not in result.stderr:
            return
        if time.monotonic() > deadline:
            raise RuntimeError(f"the apiserver cannot call the webhook: {result.stderr.strip()}")
        time.sleep(1)
