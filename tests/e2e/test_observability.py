"""Observability end to end: a real Prometheus scrapes the real components on the kwok
cluster, every dashboard query returns data, and the alerts fire on what happened.

Started here, each as in production: the admission webhook (registered with the API server
by URL), the Workspace controller (`python -m controller`, leader-elected) and the node
provisioner (`python -m controller.provisioning --backend local`, which turns NodeClaims
into kwok GPU nodes). Debian's `prometheus` scrapes them every second with a scrape
config equivalent to config/prometheus/monitor.yaml (same paths, the webhook over HTTPS
verified against its own CA for the Service's name; the pod targets carry the `namespace`
and `workspace` labels the PodMonitors' relabelling gives them).

The flow: an inference workspace gets a NodeClaim, a node and a Ready Deployment; one
whose node has no kubelet stays stuck; one tuning run reports its progress from a real
progress server (runtime/progress.py) and completes; one fails with a termination
message. kwok runs no containers, so for the tuning runs the test plays the kubelet (pod
status through the status subresource, the pod IP a loopback address the progress server
listens on), and the inference pod's metrics come from the real serving application with
the unit tests' fake model in place of torch.

The live rules are config/prometheus/alerts.yaml with two `for:` durations shortened (an
hour and a minute in production would outlast the test); everything else is as shipped.
"""

from __future__ import annotations

import base64
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import time
import urllib.request
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import yaml

from kaito.dashboard import CONFIG_MAP_PATH, ROWS, config_map, queries
from kaito.devcluster import LocalCluster
from kaito.devcluster.process import free_port
from runtime.progress import ProgressServer, ProgressTracker
from tests.e2e.observability_support import (
    ALERT_TESTS,
    REPO,
    Prometheus,
    rule_groups,
    scrape_config,
    with_rate_window,
)

pytestmark = pytest.mark.e2e

DATA_URL = "https://huggingface.co/datasets/philschmid/dolly-15k-oai-style/resolve/main/x.parquet"
GPU_TAINT = {"key": "sku", "value": "gpu", "effect": "NoSchedule"}
PROGRESS_PORT = 5100  # controller/workspace/workload.py: where the controller reads progress
WEBHOOK_MANIFESTS = REPO / "config" / "webhook" / "base" / "manifests.yaml"
SYSTEM_NAMESPACE = "kaito-system"
TUNING_PRESET, INFERENCE_PRESET = "phi-3-mini-128k-instruct", "phi-3-mini-4k-instruct"
# Shortened for the live run only: KaitoWorkspaceStuck waits an hour in production.
LIVE_FOR_SECONDS = {"KaitoWorkspaceStuck": 5, "KaitoTuningFailed": 2}


def get(cluster: LocalCluster, *args: str) -> Any:
    result = cluster.kubectl("get", *args, "-o", "json", check=False)
    return json.loads(result.stdout) if result.returncode == 0 else None


def wait_for(what: str, check: Callable[[], Any], *, timeout: float = 90,
             tick: float = 0.5) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = check()
        if value:
            return value
        time.sleep(tick)
    raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}")


def condition(obj: Any, condition_type: str) -> dict[str, Any] | None:
    for found in ((obj or {}).get("status") or {}).get("conditions") or []:
        if found["type"] == condition_type:
            return dict(found)
    return None


def _now() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())


# -- checks that need no cluster ---------------------------------------------------------

def test_the_committed_dashboard_is_what_the_generator_makes() -> None:
    assert CONFIG_MAP_PATH.read_text() == config_map(), (
        "run `python -m kaito.dashboard --write` and commit config/prometheus/dashboard.yaml")
    document = yaml.safe_load(CONFIG_MAP_PATH.read_text())
    assert document["metadata"]["labels"]["grafana_dashboard"] == "1"
    dashboard = json.loads(document["data"]["kaito.json"])
    titles = [p["title"] for p in dashboard["panels"] if p["type"] != "row"]
    assert titles == [panel.title for _, panels in ROWS for panel in panels]
    assert len(set(titles)) == len(titles)
    assert len(queries()) == sum(len(panel.queries) for _, panels in ROWS for panel in panels)


def test_kustomize_builds_the_monitors_rules_and_dashboard() -> None:
    built = subprocess.run(["kubectl", "kustomize", str(REPO / "config" / "prometheus")],
                           check=True, capture_output=True, text=True).stdout
    kinds = sorted(d["kind"] for d in yaml.safe_load_all(built))
    assert kinds == ["ConfigMap", "PodMonitor", "PodMonitor", "PodMonitor", "PrometheusRule",
                     "ServiceMonitor", "ServiceMonitor"]


def test_promtool_checks_and_unit_tests_every_alert(tmp_path: Path) -> None:
    spec = rule_groups()
    alerts = [r for g in spec["groups"] for r in g["rules"]]
    for rule in alerts:
        assert rule["annotations"].get("summary") and len(rule["annotations"]["runbook"]) > 80
    (tmp_path / "shipped.yaml").write_text(yaml.safe_dump(spec))
    checked = subprocess.run(["promtool", "check", "rules", "shipped.yaml"], check=False, cwd=tmp_path,
                             capture_output=True, text=True)
    assert checked.returncode == 0, checked.stdout + checked.stderr
    assert f"SUCCESS: {len(alerts)} rules found" in checked.stdout
    (tmp_path / "rules.yaml").write_text(yaml.safe_dump(rule_groups(summary_only=True)))
    shutil.copy(ALERT_TESTS, tmp_path / "alerts_test.yaml")
    tested = subprocess.run(["promtool", "test", "rules", "alerts_test.yaml"], check=False,
                            cwd=tmp_path,
                            capture_output=True, text=True)
    assert tested.returncode == 0, tested.stdout + tested.stderr
    unit_tests = yaml.safe_load(ALERT_TESTS.read_text())["tests"]
    fired = {case["alertname"] for test in unit_tests for case in test["alert_rule_test"]
             if case["exp_alerts"]}
    assert fired == {r["alert"] for r in alerts}  # each alert is shown to fire at least once


# -- the live flow -------------------------------------------------------------------------

class Process:
    """A component as a process on loopback with a /metrics port."""

    def __init__(self, name: str, argv: list[str], log_path: Path, port: int,
                 env: dict[str, str] | None = None) -> None:
        self.name, self.argv, self.log_path, self.port = name, argv, log_path, port
        self.env = env or {}
        self.process: subprocess.Popen[bytes] | None = None

    def start(self, ready_url: str | None = None) -> None:
        env = {**os.environ, "PYTHONPATH": str(REPO), **self.env}
        with open(self.log_path, "ab") as log:
            self.process = subprocess.Popen(self.argv, cwd=REPO, env=env, stdout=log,
                                            stderr=subprocess.STDOUT)
        if ready_url is not None:
            wait_for(f"{self.name} at {ready_url}", lambda: self._answers(ready_url), timeout=60)

    def _answers(self, url: str) -> bool:
        assert self.process is not None and self.process.poll() is None, self.tail()
        try:
            with urllib.request.urlopen(url, timeout=2) as reply:
                return bool(reply.status == 200)
        except OSError:
            return False

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()

    def tail(self) -> str:
        return self.log_path.read_text()[-3000:] if self.log_path.exists() else ""


@dataclass
class Live:
    prometheus: Prometheus
    namespace: str
    names: dict[str, str]
    pods: dict[str, dict[str, Any]]  # "tuning", "inference": a pod the controller's workload made
    timings: dict[str, float] = field(default_factory=dict)


def _webhook_configurations(port: int) -> str:
    """The shipped configurations, pointed at the webhook on loopback (as `make demo`)."""
    documents = list(yaml.safe_load_all(WEBHOOK_MANIFESTS.read_text()))
    for document in documents:
        for hook in document.get("webhooks", []):
            service = hook["clientConfig"].pop("service")
            hook["clientConfig"]["url"] = f"https://127.0.0.1:{port}{service['path']}"
    return yaml.safe_dump_all(documents)


def _unmanaged_node(cluster: LocalCluster, name: str, labels: dict[str, str]) -> None:
    """A Ready GPU node no kubelet or kwok runs: the test decides what its pods do."""
    resources = {"cpu": "32", "memory": "256Gi", "pods": "110", "nvidia.com/gpu": "1"}
    node = {"apiVersion": "v1", "kind": "Node",
            "metadata": {"name": name, "labels": {
                **labels, "kubernetes.io/hostname": name, "kubernetes.io/os": "linux",
                "node.kubernetes.io/instance-type": "Standard_NC6s_v3"}},
            "spec": {"taints": [GPU_TAINT]}}
    cluster.kubectl("create", "-f", "-", input=json.dumps(node))
    status = {"status": {"capacity": resources, "allocatable": resources, "conditions": [{
        "type": "Ready", "status": "True", "reason": "KubeletReady", "message": "test",
        "lastHeartbeatTime": _now(), "lastTransitionTime": _now()}]}}
    cluster.kubectl("patch", "node", name, "--subresource=status", "--type=merge",
                    "-p", json.dumps(status))


def _pod_status(cluster: LocalCluster, namespace: str, pod: dict[str, Any],
                status: dict[str, Any]) -> None:
    cluster.kubectl("patch", "pod", pod["metadata"]["name"], "-n", namespace,
                    "--subresource=status", "--type=merge", "-p", json.dumps({"status": status}))


def _run_pod(cluster: LocalCluster, namespace: str, pod: dict[str, Any], ip: str) -> None:
    """Play the kubelet: the pod runs, at ``ip``."""
    container = pod["spec"]["containers"][0]
    _pod_status(cluster, namespace, pod, {
        "phase": "Running", "podIP": ip, "podIPs": [{"ip": ip}], "hostIP": ip,
        "startTime": _now(),
        "conditions": [{"type": "Ready", "status": "True", "lastTransitionTime": _now()}],
        "containerStatuses": [{"name": container["name"], "ready": True, "restartCount": 0,
                               "started": True, "image": container["image"], "imageID": "",
                               "state": {"running": {"startedAt": _now()}}}]})


def _end_pod(cluster: LocalCluster, namespace: str, pod: dict[str, Any], exit_code: int,
             message: str) -> None:
    """Play the kubelet: the pod's container exits with ``exit_code`` and ``message``."""
    container = pod["spec"]["containers"][0]
    terminated = {"exitCode": exit_code, "reason": "Completed" if exit_code == 0 else "Error",
                  "message": message, "startedAt": _now(), "finishedAt": _now()}
    _pod_status(cluster, namespace, pod, {
        "phase": "Succeeded" if exit_code == 0 else "Failed",
        "conditions": [{"type": "Ready", "status": "False", "reason": "PodCompleted"}],
        "containerStatuses": [{"name": container["name"], "ready": False, "restartCount": 0,
                               "image": container["image"], "imageID": "",
                               "state": {"terminated": terminated}}]})


def _scheduled_job_pod(cluster: LocalCluster, namespace: str, job: str) -> dict[str, Any]:
    def pod() -> dict[str, Any] | None:
        found = get(cluster, "pods", "-n", namespace, "-l", f"batch.kubernetes.io/job-name={job}")
        pods = [p for p in (found or {"items": []})["items"] if p["spec"].get("nodeName")]
        return pods[0] if pods else None

    return wait_for(f"the {job} pod to be scheduled", pod)  # type: ignore[no-any-return]


def _tuning(name: str, app: str, *, serve_after: bool = True) -> str:
    document: dict[str, Any] = {
        "apiVersion": "kaito.sh/v1alpha1", "kind": "Workspace", "metadata": {"name": name},
        "resource": {"instanceType": "Standard_NC6s_v3",
                     "labelSelector": {"matchLabels": {"app": app}}},
        "tuning": {"preset": {"name": TUNING_PRESET}, "method": "qlora",
                   "input": {"urls": [DATA_URL]},
                   "output": {"image": "example.azurecr.io/adapter:0.0.1",
                              "imagePushSecret": "push-secret"}},
    }
    if not serve_after:
        document["metadata"]["annotations"] = {"kaito.sh/serve-after-tuning": "false"}
    return json.dumps(document)


def _inference(name: str, app: str) -> str:
    return json.dumps({
        "apiVersion": "kaito.sh/v1beta1", "kind": "Workspace", "metadata": {"name": name},
        "resource": {"instanceType": "Standard_NC6s_v3", "count": 1,
                     "labelSelector": {"matchLabels": {"app": app}}},
        "inference": {"preset": {"name": INFERENCE_PRESET}},
    })


def _progress_server(tracker: ProgressTracker) -> tuple[ProgressServer, str]:
    """A progress server on a free loopback address (port 5100 is fixed by the controller)."""
    chance = random.Random()
    for _ in range(20):
        ip = f"127.0.{chance.randint(1, 250)}.{chance.randint(2, 250)}"
        try:
            return ProgressServer(tracker, host=ip, port=PROGRESS_PORT).start(), ip
        except OSError:
            continue
    raise AssertionError("no free loopback address for the progress server")


def _chat(port: int, body: dict[str, Any]) -> int:
    request = urllib.request.Request(
        f"http://127.0.0.1:{port}/v1/chat/completions", data=json.dumps(body).encode(),
        headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=10) as reply:
            reply.read()
            return int(reply.status)
    except urllib.error.HTTPError as error:
        return int(error.code)


@pytest.fixture(scope="module")
def live(cluster: LocalCluster, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Live]:
    workdir = tmp_path_factory.mktemp("observability")
    started = time.monotonic()
    suffix = uuid.uuid4().hex[:6]
    namespace = f"obs-{suffix}"
    names = {"serve": "obs-serve", "stuck": "obs-stuck", "tuned": "obs-tuned",
             "failed": "obs-failed"}
    apps = {key: f"{name}-{suffix}" for key, name in names.items()}
    cluster.kubectl("apply", "-f", str(REPO / "config" / "crd" / "bases"))
    cluster.kubectl("create", "namespace", namespace)
    cluster.kubectl("apply", "-f", "-", input=json.dumps({
        "apiVersion": "v1", "kind": "Namespace", "metadata": {"name": SYSTEM_NAMESPACE}}))
    kubeconfig = str(cluster.kubeconfig)
    python = sys.executable
    webhook_port = free_port()
    webhook = Process("webhook", [
        python, "-m", "webhook", "--host", "127.0.0.1", "--port", str(webhook_port),
        "--ip-address", "127.0.0.1", "--namespace", SYSTEM_NAMESPACE, "--kubeconfig",
        kubeconfig, "--log-format", "text"], workdir / "webhook.log", webhook_port)
    controller_port, provisioner_port, serving_port = free_port(), free_port(), free_port()
    controller = Process("controller", [
        # Watching only this namespace: kaito_workspaces counts this test's workspaces.
        python, "-m", "controller", "--kubeconfig", kubeconfig, "--namespace", namespace,
        "--port", str(controller_port),
        "--bind-host", "127.0.0.1", "--leader-elect", "--lease-namespace", namespace,
        "--lease-name", "kaito-controller", "--log-format", "text"],
        workdir / "controller.log", controller_port,
        env={"KAITO_WORKSPACE__PROGRESS_INTERVAL_SECONDS": "1",
             "KAITO_WORKSPACE__TUNING_BACKOFF_LIMIT": "0"})
    provisioner = Process("provisioner", [
        python, "-m", "controller.provisioning", "--backend", "local", "--kubeconfig",
        kubeconfig, "--port", str(provisioner_port), "--bind-host", "127.0.0.1",
        "--leader-elect", "--lease-namespace", namespace, "--lease-name", "kaito-provisioner",
        "--log-format", "text"], workdir / "provisioner.log", provisioner_port,
        env={"KAITO_PROVISIONER__RECHECK_SECONDS": "1"})
    serving = Process("inference pod", [
        python, "-m", "tests.e2e.observability_support", "--host", "127.0.0.1",
        "--port", str(serving_port)], workdir / "serving.log", serving_port)
    tracker = ProgressTracker()
    progress, pod_ip = _progress_server(tracker)
    prometheus = Prometheus(workdir, free_port())
    rules = workdir / "rules.yaml"
    rules.write_text(yaml.safe_dump(rule_groups(for_seconds=LIVE_FOR_SECONDS)))
    pod_labels = {"namespace": namespace}
    prometheus_config = scrape_config({
        "kaito-controller": [{"targets": [f"127.0.0.1:{controller_port}"]}],
        "kaito-gpu-provisioner": [{"targets": [f"127.0.0.1:{provisioner_port}"]}],
        "kaito-webhook": [{"targets": [f"127.0.0.1:{webhook_port}"]}],
        "kaito-tuning": [{"targets": [f"{pod_ip}:{PROGRESS_PORT}"],
                          "labels": {**pod_labels, "workspace": names["tuned"]}}],
        "kaito-inference": [{"targets": [f"127.0.0.1:{serving_port}"],
                             "labels": {**pod_labels, "workspace": names["serve"]}}],
    }, rules, webhook_ca_file=workdir / "webhook-ca.crt")
    processes = [webhook, controller, provisioner, serving]
    try:
        cluster.kubectl("apply", "-f", "-", input=_webhook_configurations(webhook_port))
        webhook.start()

        def ca_bundle_is_patched() -> bool:
            assert webhook.process is not None and webhook.process.poll() is None, webhook.tail()
            got = get(cluster, "validatingwebhookconfiguration",
                      "kaito-validating-webhook-configuration")
            return all(h["clientConfig"].get("caBundle") for h in got["webhooks"])

        wait_for("the webhook's caBundle", ca_bundle_is_patched, timeout=60)
        secret = get(cluster, "secret", "kaito-webhook-cert", "-n", SYSTEM_NAMESPACE)
        (workdir / "webhook-ca.crt").write_bytes(base64.b64decode(secret["data"]["ca.crt"]))
        controller.start(f"http://127.0.0.1:{controller_port}/readyz")
        provisioner.start(f"http://127.0.0.1:{provisioner_port}/readyz")
        serving.start(f"http://127.0.0.1:{serving_port}/health")
        prometheus.start(prometheus_config)
        timings = {"components up": round(time.monotonic() - started, 1)}

        for key in ("stuck", "tuned", "failed"):
            _unmanaged_node(cluster, f"{apps[key]}-node", {"app": apps[key]})
        # Through the API server, so the webhook admits (defaults, validates) each one.
        documents = [_inference(names["serve"], apps["serve"]),
                     _inference(names["stuck"], apps["stuck"]),
                     _tuning(names["tuned"], apps["tuned"], serve_after=False),
                     _tuning(names["failed"], apps["failed"])]
        for document in documents:
            def admitted(text: str = document) -> bool:
                return cluster.kubectl("apply", "-n", namespace, "-f", "-", input=text,
                                       check=False).returncode == 0

            # The API server learns new webhook configurations from an informer: retry.
            wait_for("the webhook to admit", admitted, timeout=30)

        # The successful tuning run: running at pod_ip, reporting steps, then done.
        tuned_pod = _scheduled_job_pod(cluster, namespace, names["tuned"])
        _run_pod(cluster, namespace, tuned_pod, pod_ip)
        tracker.set_phase("training")
        tracker.begin_training(total_steps=40, start_step=0)
        for step in range(1, 11):
            time.sleep(0.2)
            tracker.record_step(step, loss=2.5 - 0.1 * step, learning_rate=2e-4, tokens=2048,
                                epoch=step / 40)

        def progress_in_status() -> bool:
            ws = get(cluster, "workspace", names["tuned"], "-n", namespace)
            return bool(((ws or {}).get("status") or {}).get("tuning", {}).get("step"))

        wait_for("tuning progress in the workspace status", progress_in_status, timeout=30)
        for step in range(11, 41):
            tracker.record_step(step, loss=1.5 - 0.01 * step, learning_rate=2e-4, tokens=2048,
                                epoch=step / 40)
        tracker.set_phase("succeeded")
        wait_for("the last step in status", lambda: (get(
            cluster, "workspace", names["tuned"], "-n", namespace)["status"]["tuning"]
            .get("step") == 40), timeout=30)
        _end_pod(cluster, namespace, tuned_pod, 0, "")

        # The failing run.
        failed_pod = _scheduled_job_pod(cluster, namespace, names["failed"])
        _end_pod(cluster, namespace, failed_pod, 2,
                 "train.parquet row 13 column 'response': empty value")

        # Traffic for the inference pod: answers, a bad request.
        codes = [_chat(serving_port, {"model": "fake", "max_tokens": 8, "messages": [
            {"role": "user", "content": f"question {i}"}]}) for i in range(12)]
        codes.append(_chat(serving_port, {"model": "fake", "messages": "not a list"}))
        assert codes[:12] == [200] * 12 and codes[12] == 400, codes

        def state(key: str) -> str | None:
            ws = get(cluster, "workspace", names[key], "-n", namespace)
            found = ((ws or {}).get("status") or {}).get("state")
            return str(found) if found else None

        wait_for("the tuned workspace to succeed", lambda: state("tuned") == "Succeeded")
        wait_for("the failed workspace to fail", lambda: state("failed") == "Failed")
        wait_for("the served workspace ready", lambda: state("serve") == "Ready", timeout=120)
        timings["flow done"] = round(time.monotonic() - started, 1)
        serve_pods = get(cluster, "pods", "-n", namespace, "-l",
                         f"kaito.sh/workspace={names['serve']}")["items"]
        yield Live(prometheus, namespace, names,
                   {"tuning": tuned_pod, "inference": serve_pods[0]}, timings)
    finally:
        # Unregister the webhook first: other tests' workspaces must not depend on it.
        cluster.kubectl("delete", "mutatingwebhookconfiguration",
                        "kaito-mutating-webhook-configuration", check=False)
        cluster.kubectl("delete", "validatingwebhookconfiguration",
                        "kaito-validating-webhook-configuration", check=False)
        try:
            # The finalizers need the controller and the provisioner: delete while they run.
            cluster.kubectl("delete", "workspaces", "--all", "-n", namespace, "--wait=false",
                            check=False)
            wait_for("this test's workspaces and claims gone", lambda: not (
                get(cluster, "workspaces", "-n", namespace) or {"items": []})["items"] and not (
                get(cluster, "nodeclaims", "-l", f"kaito.sh/workspacenamespace={namespace}")
                or {"items": []})["items"], timeout=60)
        finally:
            prometheus.stop()
            progress.stop()
            for process in processes:
                process.stop()
            for key in ("stuck", "tuned", "failed"):
                cluster.kubectl("delete", "node", f"{apps[key]}-node", "--wait=false",
                                check=False)
            cluster.kubectl("delete", "namespace", namespace, "--wait=false", check=False)
            for process in processes:
                print(f"--- {process.name} log (tail)\n{process.tail()}")
            print(f"--- prometheus log (tail)\n{prometheus.log_tail()}")


def test_prometheus_scrapes_every_component(live: Live) -> None:
    def all_up() -> dict[str, str] | None:
        targets = live.prometheus.targets_up()
        return targets if set(targets.values()) == {"up"} else None

    health = wait_for("every target up", all_up, timeout=20)
    assert len(health) == 5, health


def test_every_dashboard_query_returns_data(live: Live) -> None:
    expressions = [with_rate_window(expr) for expr in queries()]
    answers: dict[str, int] = {}

    def all_answered() -> bool:
        for expr in expressions:
            answers[expr] = len(live.prometheus.query(expr))  # a parse error fails here
        return all(answers.values())

    try:
        wait_for("every dashboard query to return a series", all_answered, timeout=45, tick=2)
    finally:
        print(json.dumps(answers, indent=1))
    tuned = live.prometheus.query(
        f'kaito_workspace_tuning_step{{namespace="{live.namespace}", '
        f'workspace="{live.names["tuned"]}"}}')
    assert [float(s["value"][1]) for s in tuned] == [40.0]
    tokens = live.prometheus.query(
        f'kaito_serving_generation_tokens_total{{namespace="{live.namespace}"}}')
    assert tokens and float(tokens[0]["value"][1]) > 0
    print("seconds since the fixture began:", json.dumps(live.timings))


def test_the_tuning_failed_and_stuck_alerts_fire(live: Live) -> None:
    def fired() -> dict[str, list[dict[str, str]]] | None:
        firing: dict[str, list[dict[str, str]]] = {}
        for alert in live.prometheus.firing():
            firing.setdefault(alert["labels"]["alertname"], []).append(alert["labels"])
        is_failed = any(labels.get("preset") == TUNING_PRESET
                        for labels in firing.get("KaitoTuningFailed", []))
        is_stuck = any(labels.get("preset") == INFERENCE_PRESET
                       and labels.get("mode") == "inference"
                       and labels.get("state") in ("Pending", "NotReady")
                       for labels in firing.get("KaitoWorkspaceStuck", []))
        return firing if is_failed and is_stuck else None

    firing = wait_for("KaitoTuningFailed and KaitoWorkspaceStuck to fire", fired, timeout=45,
                      tick=1)
    print("firing:", json.dumps(firing, indent=1))
    # What the healthy parts of the flow must not trip.
    for quiet in ("KaitoLeaderMissing", "KaitoControllerAbsent", "KaitoWebhookErrors",
                  "KaitoServingErrors", "KaitoReconcileErrors"):
        assert quiet not in firing, firing[quiet]


def _selects(selector: dict[str, Any], labels: dict[str, str]) -> bool:
    """A label selector (matchLabels, matchExpressions In/Exists) against ``labels``."""
    for key, value in (selector.get("matchLabels") or {}).items():
        if labels.get(key) != value:
            return False
    for expression in selector.get("matchExpressions") or []:
        key, operator = expression["key"], expression["operator"]
        if operator == "Exists" and key not in labels:
            return False
        if operator == "In" and labels.get(key) not in expression["values"]:
            return False
        assert operator in ("Exists", "In"), operator
    return True


def _port_names(pod_spec: dict[str, Any]) -> set[str]:
    return {p["name"] for c in pod_spec["containers"] for p in c.get("ports", []) if "name" in p}


def test_the_monitors_select_what_the_operator_deploys(live: Live) -> None:
    monitors = {d["metadata"]["name"]: d for d in yaml.safe_load_all(
        (REPO / "config" / "prometheus" / "monitor.yaml").read_text())}
    # The workload pods, as the controller made them in the live flow.
    for component, pod in live.pods.items():
        spec = monitors[f"kaito-{component}"]["spec"]
        assert spec["namespaceSelector"] == {"any": True}
        assert _selects(spec["selector"], pod["metadata"]["labels"]), (component, pod["metadata"])
        endpoint = spec["podMetricsEndpoints"][0]
        assert endpoint["port"] in _port_names(pod["spec"]), (component, endpoint)
        # The relabelling reads the label Kubernetes service discovery exposes for it.
        source = endpoint["relabelings"][0]["sourceLabels"][0]
        assert source == "__meta_kubernetes_pod_label_kaito_sh_workspace"
        assert pod["metadata"]["labels"]["kaito.sh/workspace"] == live.names[
            "tuned" if component == "tuning" else "serve"]
    other = [p for name, p in live.pods.items() if name != "tuning"]
    assert not any(_selects(monitors["kaito-tuning"]["spec"]["selector"],
                            p["metadata"]["labels"]) for p in other)
    # The operator's own Deployments and Services (config/manager, config/webhook).
    shipped = [d for folder in ("manager", "webhook") for d in yaml.safe_load_all(
        subprocess.run(["kubectl", "kustomize", str(REPO / "config" / folder)], check=True,
                       capture_output=True, text=True).stdout)]
    shipped += list(yaml.safe_load_all(
        (REPO / "config" / "manager" / "provisioner.yaml").read_text()))
    services = [d for d in shipped if d["kind"] == "Service"]
    for name in ("kaito-controller", "kaito-webhook"):
        spec = monitors[name]["spec"]
        matched = [s for s in services if _selects(spec["selector"], s["metadata"]["labels"])]
        assert len(matched) == 1, (name, matched)
        assert spec["endpoints"][0]["port"] in {p["name"] for p in matched[0]["spec"]["ports"]}
    deployments = [d for d in shipped if d["kind"] == "Deployment"]
    spec = monitors["kaito-gpu-provisioner"]["spec"]
    matched = [d for d in deployments
               if _selects(spec["selector"], d["spec"]["template"]["metadata"]["labels"])]
    assert [d["metadata"]["name"] for d in matched] == ["kaito-gpu-provisioner"]
    assert spec["podMetricsEndpoints"][0]["port"] in _port_names(
        matched[0]["spec"]["template"]["spec"])
