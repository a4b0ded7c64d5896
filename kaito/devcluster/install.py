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
from pathlib import Path
from typing import Any, Protocol

import yaml

from kaito.devcluster.cluster import REPO_ROOT
from kaito.devcluster.images import ProjectImages


class Kubectl(Protocol):
    def __call__(self, *args: str, timeout: float = ...) -> subprocess.CompletedProcess[str]:
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
