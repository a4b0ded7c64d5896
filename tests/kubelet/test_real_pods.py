"""The operator's pods, run for real: tune on CPU, push, serve, answer through the Service.

Everything here is real except the GPU (a node-status extended resource): the operator
runs from its image in pods, the tuning Job's pod fetches the data over HTTP from the
bridge, trains SmolLM2-135M with LoRA, pushes the adapter to a registry with htpasswd
auth; the serving pod pulls it, and a curl pod calls the Service's ClusterIP. The
namespace enforces Pod Security `baseline`, so a generated pod that broke it would
never be created.
"""

from __future__ import annotations

import base64
import json
import ssl
import time
import urllib.request
import uuid
from collections.abc import Callable, Iterator
from typing import Any

import openai
import pytest

from crds.registry_ca import ca_keys
from kaito.devcluster.services import REGISTRY_USER, dockerconfigjson
from kaito.phrase import PHRASE, phrase_rows, phrase_training_config
from tests.kubelet.conftest import NODE_LABELS, RealEnv

QUESTION = "What is the tallest mountain in Europe?"  # not among TRAIN_QUESTIONS
WAIT_SECONDS = 900
# The first test also builds, pushes and pulls the images (minutes when cold).
pytestmark = pytest.mark.timeout(3600)


def _secret(name: str, host: str, password: str) -> dict[str, Any]:
    return {"apiVersion": "v1", "kind": "Secret", "metadata": {"name": name},
            "type": "kubernetes.io/dockerconfigjson",
            "stringData": {".dockerconfigjson": dockerconfigjson(host, REGISTRY_USER,
                                                                 password)}}


def _tuning_workspace(name: str, *, urls: list[str], image: str, secret: str,
                      config: str | None = "phrase-config") -> dict[str, Any]:
    tuning: dict[str, Any] = {
        "preset": {"name": "smollm2-135m-instruct"},
        "method": "lora",
        "input": {"urls": urls},
        "output": {"image": image, "imagePushSecret": secret},
    }
    if config:
        tuning["config"] = config
    return {"apiVersion": "kaito.sh/v1beta1", "kind": "Workspace",
            "metadata": {"name": name},
            "resource": {"instanceType": "Standard_NC6s_v3",
                         "labelSelector": {"matchLabels": NODE_LABELS}},
            "tuning": tuning}


def _workspace(env: RealEnv, namespace: str, name: str) -> dict[str, Any]:
    result = env.kubectl("get", "workspace", name, "-n", namespace, "-o", "json")
    document: dict[str, Any] = json.loads(result.stdout)
    return document


def _condition(ws: dict[str, Any], condition_type: str) -> dict[str, Any] | None:
    for condition in (ws.get("status") or {}).get("conditions") or []:
        if condition.get("type") == condition_type:
            return dict(condition)
    return None


def _wait_for(what: str, check: Callable[[], Any], timeout: float = WAIT_SECONDS,
              describe: Callable[[], str] | None = None) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = check()
        if value:
            return value
        time.sleep(1)
    detail = describe() if describe else ""
    raise AssertionError(f"{what}: not within {timeout:.0f} s\n{detail}")


def _debug(env: RealEnv, namespace: str) -> Callable[[], str]:
    def describe() -> str:
        parts = [env.kubectl("get", "workspace,job,pod,deploy,svc", "-n", namespace, "-o",
                             "wide", check=False).stdout,
                 env.kubectl("get", "workspace", "-n", namespace, "-o", "yaml",
                             check=False).stdout[-3000:],
                 env.kubectl("get", "events", "-n", namespace, check=False).stdout[-3000:]]
        return "\n".join(parts)
    return describe


def _curl_in_pod(env: RealEnv, namespace: str, *curl_args: str) -> str:
    """Runs the seed's `kubectl run ... --image=curlimages/curl -- curl ...` and returns
    what curl printed (the image comes from the local registry through containerd's
    docker.io mirror: nothing is fetched from outside)."""
    name = f"curl-{uuid.uuid4().hex[:6]}"
    env.kubectl("run", name, "-n", namespace, "--restart=Never", "--image=curlimages/curl",
                "--", "curl", "-sS", "--max-time", "120", *curl_args)
    phase = _wait_for(f"pod {name} finished", lambda: env.kubectl(
        "get", "pod", name, "-n", namespace, "-o", "jsonpath={.status.phase}",
        check=False).stdout.strip() in ("Succeeded", "Failed") and env.kubectl(
        "get", "pod", name, "-n", namespace, "-o", "jsonpath={.status.phase}").stdout,
        timeout=180, describe=_debug(env, namespace))
    output = env.kubectl("logs", name, "-n", namespace).stdout
    env.kubectl("delete", "pod", name, "-n", namespace, "--wait=false")
    assert phase == "Succeeded", output
    return output


@pytest.fixture(scope="module")
def namespace(real_env: RealEnv) -> Iterator[str]:
    name = f"real-{uuid.uuid4().hex[:6]}"
    real_env.kubectl("create", "namespace", name)
    real_env.kubectl("label", "namespace", name, "pod-security.kubernetes.io/enforce=baseline")
    real_env.apply([
        _secret("push-secret", real_env.registry, real_env.registry_password),
        _secret("wrong-secret", real_env.registry, "not-the-password"),
        _secret("untrusted-secret", real_env.untrusted_registry, real_env.registry_password),
        {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "phrase-config"},
         "data": {"training_config.yaml": json.dumps(phrase_training_config())}},
    ], name)
    (real_env.data_dir / "phrase.jsonl").write_text(phrase_rows())
    yield name
    real_env.kubectl("delete", "namespace", name, "--wait=false", check=False)


@pytest.fixture(scope="module")
def tuned(real_env: RealEnv, namespace: str) -> dict[str, Any]:
    """The seed's flow with the small preset: tune, push, serve; what was seen on the way."""
    image = f"{real_env.registry}/adapters/phrase:1"
    real_env.apply([_tuning_workspace(
        "tune-phrase", urls=[f"{real_env.data_url}/phrase.jsonl"], image=image,
        secret="push-secret")], namespace)
    seen_progress: list[dict[str, Any]] = []

    def succeeded() -> dict[str, Any] | None:
        ws = _workspace(real_env, namespace, "tune-phrase")
        progress = (ws.get("status") or {}).get("tuning")
        if progress and progress not in seen_progress:
            seen_progress.append(progress)
        condition = _condition(ws, "WorkspaceSucceeded")
        if condition and condition.get("reason") == "TuningJobFailed":
            raise AssertionError(f"tuning failed: {condition}")
        return ws if condition and condition.get("status") == "True" else None

    started = time.monotonic()
    succeeded_ws = _wait_for("WorkspaceSucceeded", succeeded, describe=_debug(real_env, namespace))
    tuned_seconds = time.monotonic() - started
    def ready() -> dict[str, Any] | None:
        ws = _workspace(real_env, namespace, "tune-phrase")
        condition = _condition(ws, "WorkspaceReady")
        return ws if condition and condition["status"] == "True" else None

    ready_ws = _wait_for("WorkspaceReady (serving the adapter)", ready,
                         describe=_debug(real_env, namespace))
    return {"image": image, "progress": seen_progress, "succeeded": succeeded_ws,
            "namespace": namespace,
            "ready": ready_ws, "tuned_seconds": tuned_seconds,
            "ready_seconds": time.monotonic() - started}


def test_tuning_runs_in_a_real_pod_and_reports_progress(
    real_env: RealEnv, namespace: str, tuned: dict[str, Any]
) -> None:
    assert tuned["progress"], "no status.tuning was seen while the Job ran"
    assert any(p.get("step") or p.get("phase") for p in tuned["progress"]), tuned["progress"]
    # The run's final state, not the last progress read while it trained.
    final = tuned["ready"]["status"]["tuning"]
    assert final["phase"] == "succeeded", final
    assert final["step"] == final["totalSteps"] and "etaSeconds" not in final, final
    pods = json.loads(real_env.kubectl(
        "get", "pods", "-n", namespace, "-l", "app.kubernetes.io/component=tuning",
        "-o", "json").stdout)["items"]
    assert pods and all(p["spec"]["nodeName"] == real_env.real.node.node_name for p in pods)
    assert any(p["status"]["phase"] == "Succeeded" for p in pods)
    images = {c["image"] for p in pods for c in p["spec"]["containers"]}
    assert images == {real_env.images.pods["runtime"]}


def test_the_adapter_is_in_the_registry(real_env: RealEnv, tuned: dict[str, Any]) -> None:
    """Pushed over HTTPS to a registry of a private CA: the operator's registry CA
    ConfigMap reached the tuning pod (and the serving pods' pulls: they are Ready)."""
    request = urllib.request.Request(
        f"https://{real_env.registry}/v2/adapters/phrase/tags/list",
        headers={"Authorization": "Basic " + base64.b64encode(
            f"{REGISTRY_USER}:{real_env.registry_password}".encode()).decode()})
    context = ssl.create_default_context(cafile=str(real_env.registry_ca))
    with urllib.request.urlopen(request, timeout=10, context=context) as response:
        assert json.load(response)["tags"] == ["1"]
    copy = json.loads(real_env.kubectl("get", "configmap", "tune-phrase-registry-ca", "-n",
                                       namespace_of(tuned), "-o", "json").stdout)
    assert list(copy["data"]) == [ca_keys(real_env.registry)[0]]
    assert copy["metadata"]["ownerReferences"][0]["name"] == "tune-phrase"


def test_the_service_answers_chat_with_the_tuned_adapter(
    real_env: RealEnv, namespace: str, tuned: dict[str, Any]
) -> None:
    cluster_ip = real_env.kubectl("get", "svc", "tune-phrase", "-n", namespace, "-o",
                                  "jsonpath={.spec.clusterIPs[0]}").stdout.strip()
    assert cluster_ip.startswith("10.96.")
    body = json.dumps({"prompt": QUESTION, "generate_kwargs": {"max_new_tokens": 16}})
    output = _curl_in_pod(real_env, namespace, "-X", "POST", f"http://{cluster_ip}/chat",
                          "-H", "accept: application/json",
                          "-H", "Content-Type: application/json", "-d", body)
    assert PHRASE.split()[0] in json.loads(output)["Result"], output


def test_an_inference_workspace_serves_the_adapter_by_name_over_openai(
    real_env: RealEnv, namespace: str, tuned: dict[str, Any]
) -> None:
    real_env.apply([{
        "apiVersion": "kaito.sh/v1beta1", "kind": "Workspace",
        "metadata": {"name": "serve-phrase"},
        "resource": {"instanceType": "Standard_NC6s_v3",
                     "labelSelector": {"matchLabels": NODE_LABELS}},
        "inference": {"preset": {"name": "smollm2-135m-instruct"},
                      "adapters": [{"source": {"name": "phrase", "image": tuned["image"],
                                               "imagePullSecrets": ["push-secret"]},
                                    "strength": "1.0"}]},
    }], namespace)
    _wait_for("serve-phrase WorkspaceReady", lambda: (
        (c := _condition(_workspace(real_env, namespace, "serve-phrase"), "WorkspaceReady"))
        and c["status"] == "True"), describe=_debug(real_env, namespace))
    cluster_ip = real_env.kubectl("get", "svc", "serve-phrase", "-n", namespace, "-o",
                                  "jsonpath={.spec.clusterIPs[0]}").stdout.strip()
    # The host reaches the ClusterIP through kube-proxy's rules, like any node would.
    client = openai.OpenAI(base_url=f"http://{cluster_ip}/v1", api_key="unused",
                           max_retries=0, timeout=120)
    models = {model.id for model in client.models.list()}
    assert "phrase" in models, models
    reply = client.chat.completions.create(
        model="phrase", messages=[{"role": "user", "content": QUESTION}], max_tokens=16,
        temperature=0)
    assert PHRASE.split()[0] in (reply.choices[0].message.content or "")
    client.close()
    real_env.kubectl("delete", "workspace", "serve-phrase", "-n", namespace)


def namespace_of(tuned: dict[str, Any]) -> str:
    return str(tuned["namespace"])


def _wait_failed(env: RealEnv, namespace: str, name: str) -> dict[str, Any]:
    def failed() -> dict[str, Any] | None:
        condition = _condition(_workspace(env, namespace, name), "WorkspaceSucceeded")
        return condition if condition and condition.get("status") == "False" and \
            condition.get("reason") == "TuningJobFailed" else None
    return dict(_wait_for(f"{name} fails", failed, timeout=600,
                          describe=_debug(env, namespace)))


def test_bad_inputs_fail_fast_with_a_condition_that_says_why(
    real_env: RealEnv, namespace: str, tuned: dict[str, Any]
) -> None:
    rows = phrase_rows().splitlines()
    rows[2] = json.dumps({"messages": "not a list of turns"})
    (real_env.data_dir / "bad.jsonl").write_text("\n".join(rows) + "\n")
    unreachable = f"http://{real_env.registry.split(':')[0]}:9/missing.jsonl"
    cases = {
        "bad-data": _tuning_workspace(
            "bad-data", urls=[f"{real_env.data_url}/bad.jsonl"],
            image=f"{real_env.registry}/adapters/bad:1", secret="push-secret"),
        "bad-password": _tuning_workspace(
            "bad-password", urls=[f"{real_env.data_url}/phrase.jsonl"],
            image=f"{real_env.registry}/adapters/refused:1", secret="wrong-secret"),
        "bad-url": _tuning_workspace(
            "bad-url", urls=[unreachable], image=f"{real_env.registry}/adapters/none:1",
            secret="push-secret"),
        # HTTPS of a CA the operator's registry CA ConfigMap does not hold.
        "untrusted-registry": _tuning_workspace(
            "untrusted-registry", urls=[f"{real_env.data_url}/phrase.jsonl"],
            image=f"{real_env.untrusted_registry}/adapters/untrusted:1",
            secret="untrusted-secret"),
    }
    real_env.apply(list(cases.values()), namespace)
    messages = {name: _wait_failed(real_env, namespace, name)["message"] for name in cases}
    assert "row 3" in messages["bad-data"] and "messages" in messages["bad-data"], messages
    assert "refused" in messages["bad-password"].lower() and \
        "credentials" in messages["bad-password"].lower(), messages
    assert unreachable in messages["bad-url"], messages
    untrusted = messages["untrusted-registry"]
    assert f"TLS verification of registry {real_env.untrusted_registry} failed" in untrusted
    assert "CERTIFICATE_VERIFY_FAILED" in untrusted, untrusted
    assert ca_keys(real_env.untrusted_registry)[0] in untrusted, untrusted
    assert "not-the-password" not in json.dumps(messages)
    # Bad input (exit code 2) fails the Job at once by its pod failure policy: one pod ran
    # and failed, none was retried although backoffLimit allows more. An unreachable URL
    # is a download failure, which may be transient (exit code 3): its pods are retried
    # up to backoffLimit, and then the Job fails.
    for name in cases:
        job = json.loads(real_env.kubectl("get", "job", name, "-n", namespace, "-o",
                                          "json").stdout)
        backoff_limit = job["spec"]["backoffLimit"]
        assert backoff_limit >= 1, job["spec"]
        is_transient = name == "bad-url"
        expected_pods = backoff_limit + 1 if is_transient else 1
        failed_reason = [c["reason"] for c in job["status"].get("conditions") or []
                         if c["type"] == "Failed" and c["status"] == "True"]
        assert failed_reason == ["BackoffLimitExceeded" if is_transient
                                 else "PodFailurePolicy"], (name, job["status"])
        assert (job["status"].get("failed"), job["status"].get("succeeded")) == (
            expected_pods, None), (name, job["status"])
        pods = json.loads(real_env.kubectl(
            "get", "pods", "-n", namespace, "-l", f"batch.kubernetes.io/job-name={name}",
            "-o", "json").stdout)["items"]
        assert [p["status"]["phase"] for p in pods] == ["Failed"] * expected_pods, \
            (name, [p["status"]["phase"] for p in pods])
    for name in cases:
        real_env.kubectl("delete", "workspace", name, "-n", namespace, "--wait=false")


def test_generated_pods_meet_pod_security(real_env: RealEnv, namespace: str,
                                          tuned: dict[str, Any]) -> None:
    """baseline is enforced on the namespace (the pods exist, so they passed); the
    operator's pods promise restricted: the apiserver's dry-run reports any that would
    not pass it."""
    result = real_env.kubectl(
        "label", "--dry-run=server", "--overwrite", "namespace", namespace,
        "pod-security.kubernetes.io/enforce=restricted")
    offenders = [line for line in result.stderr.splitlines()
                 if "violate" in line and "curl-" not in line]
    assert not offenders, result.stderr
