"""A failing serving pod shows in the workspace's conditions, on a real kubelet.

Upstream Kaito's most repeated complaint is a workspace that says Ready while its pod is
in CrashLoopBackOff. Here the kubelet's own states are produced for real and read back
from the Workspace: an adapter that is not in the registry (the pull-adapter init
container crashes, restarted with back-off), then a serving image that cannot be pulled;
each time the conditions say False with the kubelet's reason and the pod's message, an
Event says it, and once the cause is fixed the workspace turns Ready again.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterator
from typing import Any

import pytest

from tests.kubelet.conftest import NODE_LABELS, RealEnv
from tests.kubelet.test_real_pods import _condition, _debug, _secret, _wait_for, _workspace

pytestmark = pytest.mark.timeout(1800)
NAME = "serve-broken"
TIMEOUT = 600


@pytest.fixture(scope="module")
def failure_namespace(real_env: RealEnv) -> Iterator[str]:
    name = f"fail-{uuid.uuid4().hex[:6]}"
    real_env.kubectl("create", "namespace", name)
    real_env.kubectl("label", "namespace", name, "pod-security.kubernetes.io/enforce=baseline")
    real_env.apply([_secret("push-secret", real_env.registry, real_env.registry_password)], name)
    yield name
    real_env.kubectl("delete", "workspace", NAME, "-n", name, "--timeout=180s", check=False)
    real_env.kubectl("delete", "namespace", name, "--wait=false", check=False)


def _wait_condition(env: RealEnv, namespace: str, status: str,
                    reasons: tuple[str, ...]) -> dict[str, Any]:
    def seen() -> dict[str, Any] | None:
        ws = _workspace(env, namespace, NAME)
        inference = _condition(ws, "InferenceReady")
        ready = _condition(ws, "WorkspaceReady")
        if inference and ready and inference["status"] == ready["status"] == status and (
                inference["reason"] in reasons):
            return ws
        return None
    found: dict[str, Any] = _wait_for(f"InferenceReady={status} {reasons}", seen,
                                      timeout=TIMEOUT, describe=_debug(env, namespace))
    return found


def _warning_events(env: RealEnv, namespace: str) -> list[dict[str, Any]]:
    events = json.loads(env.kubectl(
        "get", "events", "-n", namespace, "--field-selector",
        f"involvedObject.kind=Workspace,involvedObject.name={NAME},type=Warning",
        "-o", "json").stdout)["items"]
    return list(events)


def test_a_crashing_then_unpullable_pod_is_never_ready_and_recovers(
    real_env: RealEnv, failure_namespace: str
) -> None:
    namespace = failure_namespace
    missing = f"{real_env.registry}/adapters/never-pushed:1"
    real_env.apply([{
        "apiVersion": "kaito.sh/v1beta1", "kind": "Workspace", "metadata": {"name": NAME},
        "resource": {"instanceType": "Standard_NC6s_v3",
                     "labelSelector": {"matchLabels": NODE_LABELS}},
        "inference": {"preset": {"name": "smollm2-135m-instruct"},
                      "adapters": [{"source": {"name": "gone", "image": missing,
                                               "imagePullSecrets": ["push-secret"]}}]},
    }], namespace)

    # 1. The adapter's init container exits non-zero; the kubelet restarts it with back-off.
    ws = _wait_condition(real_env, namespace, "False", ("CrashLoopBackOff",))
    message = _condition(ws, "InferenceReady")["message"]  # type: ignore[index]
    assert "pull-adapter" in message and "never-pushed" in message, message
    assert "restarted" in message, message
    assert ws["status"]["state"] == "NotReady"
    assert any(e["reason"] == "CrashLoopBackOff" for e in _warning_events(real_env, namespace))

    # 2. The cause goes (the adapter is dropped): a new pod serves and it is Ready again.
    real_env.kubectl("patch", "workspace", NAME, "-n", namespace, "--type=json",
                     "-p", '[{"op": "remove", "path": "/inference/adapters"}]')
    _wait_condition(real_env, namespace, "True", ("InferenceReady",))

    # 3. The serving image cannot be pulled (a registry without that tag).
    image = "localhost/kaito-runtime:does-not-exist"
    real_env.kubectl("set", "image", f"deployment/{NAME}", f"inference={image}",
                     "-n", namespace)
    ws = _wait_condition(real_env, namespace, "False", ("ErrImagePull", "ImagePullBackOff"))
    message = _condition(ws, "InferenceReady")["message"]  # type: ignore[index]
    assert f"cannot pull image {image}" in message, message
    assert any(e["reason"] in ("ErrImagePull", "ImagePullBackOff")
               for e in _warning_events(real_env, namespace))

    # 4. Rolled back: Ready again, and an Event says so.
    real_env.kubectl("rollout", "undo", f"deployment/{NAME}", "-n", namespace)
    _wait_condition(real_env, namespace, "True", ("InferenceReady",))


def test_an_oom_killed_serving_pod_says_so_and_recovers(real_env: RealEnv) -> None:
    """A namespace LimitRange (common in shared clusters) gives the serving container a
    memory limit far below what loading the model takes: the kubelet's OOM kill shows as
    OOMKilled with the limit; once the LimitRange goes and the pod is replaced, Ready."""
    namespace = f"oom-{uuid.uuid4().hex[:6]}"
    real_env.kubectl("create", "namespace", namespace)
    try:
        real_env.apply([{
            "apiVersion": "v1", "kind": "LimitRange", "metadata": {"name": "small"},
            "spec": {"limits": [{"type": "Container", "default": {"memory": "160Mi"},
                                 "defaultRequest": {"memory": "64Mi"}}]}}], namespace)
        real_env.apply([{
            "apiVersion": "kaito.sh/v1beta1", "kind": "Workspace", "metadata": {"name": NAME},
            "resource": {"instanceType": "Standard_NC6s_v3",
                         "labelSelector": {"matchLabels": NODE_LABELS}},
            "inference": {"preset": {"name": "smollm2-135m-instruct"}},
        }], namespace)
        ws = _wait_condition(real_env, namespace, "False", ("OOMKilled",))
        message = _condition(ws, "InferenceReady")["message"]  # type: ignore[index]
        assert "memory limit 160Mi" in message and "exit code 137" in message, message
        assert any(e["reason"] == "OOMKilled" for e in _warning_events(real_env, namespace))

        real_env.kubectl("delete", "limitrange", "small", "-n", namespace)
        real_env.kubectl("delete", "pods", "-n", namespace, "-l",
                         "app.kubernetes.io/component=inference", "--wait=false")
        _wait_condition(real_env, namespace, "True", ("InferenceReady",))
    finally:
        real_env.kubectl("delete", "workspace", NAME, "-n", namespace, "--timeout=180s",
                         check=False)
        real_env.kubectl("delete", "namespace", namespace, "--wait=false", check=False)
