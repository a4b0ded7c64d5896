"""`kaito demo`: the main job, on the embedded local defaults.

It starts (or reuses) the local cluster, installs the Workspace CRDs, runs the admission
webhook as a local process registered by URL (the shipped webhook configurations, with
the Service swapped for https://127.0.0.1), applies the seed's fine-tuning Workspace and
shows what the API server stored, shows a Workspace the webhook rejects, and finally
serves SmolLM2-135M-Instruct with the inference runtime and asks its `/chat` endpoint a
question. The cluster and the webhook keep running until `kaito dev down`.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import yaml

from kaito.devcluster import devcli
from kaito.devcluster.cluster import REPO_ROOT, find_binaries
from kaito.devcluster.process import free_port

SEED = REPO_ROOT / "examples" / "fine-tuning" / "kaito_workspace_tuning_phi_3.yaml"
WEBHOOK_MANIFESTS = REPO_ROOT / "config" / "webhook" / "base" / "manifests.yaml"
SYSTEM_NAMESPACE = "kaito-system"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--dir", type=Path, default=devcli.DEFAULT_DIR,
                        help=f"work folder of the local cluster (default {devcli.DEFAULT_DIR})")
    parser.add_argument("--no-serve", action="store_true",
                        help="skip the inference step (it loads torch and the small model)")
    parser.add_argument("--prompt", default="In one sentence, what is Kubernetes?")


class Kubectl:
    def __init__(self, bin_dir: Path, kubeconfig: str) -> None:
        self.argv = [str(bin_dir / "kubectl"), "--kubeconfig", kubeconfig]

    def __call__(self, *args: str, input: str | None = None, check: bool = True,
                 timeout: float = 120) -> subprocess.CompletedProcess[str]:
        result = subprocess.run([*self.argv, *args], input=input, capture_output=True,
                                text=True, timeout=timeout, check=False)
        if check and result.returncode != 0:
            raise RuntimeError(f"kubectl {' '.join(args)}: {result.stderr.strip()}")
        return result


def _step(title: str) -> None:
    print(f"\n==> {title}", flush=True)


def _wait(what: str, is_done: Any, timeout_seconds: float) -> None:
    deadline = time.monotonic() + timeout_seconds
    while not is_done():
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out waiting for {what}")
        time.sleep(0.3)


def _webhook_configurations(port: int) -> str:
    """The shipped configurations, pointed at a webhook on loopback instead of a Service."""
    documents = list(yaml.safe_load_all(WEBHOOK_MANIFESTS.read_text()))
    for document in documents:
        for hook in document.get("webhooks", []):
            service = hook["clientConfig"].pop("service")
            hook["clientConfig"]["url"] = f"https://127.0.0.1:{port}{service['path']}"
    return yaml.safe_dump_all(documents)


def _start_detached(argv: list[str], log_path: Path) -> subprocess.Popen[bytes]:
    env = {**os.environ, "PYTHONPATH": str(REPO_ROOT)}
    with log_path.open("ab") as log:
        return subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT, cwd=REPO_ROOT,
                                env=env, start_new_session=True)


def _install_webhook(kubectl: Kubectl, directory: Path, logs: Path) -> None:
    kubectl("apply", "-f", "-", input=json.dumps({
        "apiVersion": "v1", "kind": "Namespace", "metadata": {"name": SYSTEM_NAMESPACE}}))
    port = free_port()
    kubectl("apply", "-f", "-", input=_webhook_configurations(port))
    process = _start_detached(
        [sys.executable, "-m", "webhook", "--host", "127.0.0.1", "--port", str(port),
         "--ip-address", "127.0.0.1", "--namespace", SYSTEM_NAMESPACE,
         "--kubeconfig", str(directory / "kubeconfig")],
        logs / "webhook.log",
    )
    devcli.add_process(directory, "webhook", process.pid)

    def ca_bundle_is_patched() -> bool:
        got = json.loads(kubectl("get", "validatingwebhookconfiguration",
                                 "kaito-validating-webhook-configuration", "-o", "json").stdout)
        return all(h["clientConfig"].get("caBundle") for h in got["webhooks"])

    _wait("the webhook to patch its caBundle", ca_bundle_is_patched, 60)
    print(f"webhook: https://127.0.0.1:{port} (pid {process.pid}, log {logs / 'webhook.log'})")


def _start_controller(directory: Path, logs: Path) -> int:
    """The Workspace controller, as `kaito controller` runs it in the operator's pod;
    returns its metrics port."""
    port = free_port()
    process = _start_detached(
        [sys.executable, "-m", "controller", "--kubeconfig", str(directory / "kubeconfig"),
         "--no-leader-elect", "--bind-host", "127.0.0.1", "--port", str(port),
         "--log-format", "text"],
        logs / "controller.log",
    )
    devcli.add_process(directory, "controller", process.pid)
    print(f"controller: pid {process.pid}, metrics :{port}, log {logs / 'controller.log'}")
    return port


def _start_provisioner(directory: Path, logs: Path) -> int:
    """The node provisioner with its local backend: each NodeClaim becomes a kwok GPU
    node of the claim's SKU (on AKS, the same controller adds an agent pool); returns its
    metrics port."""
    port = free_port()
    process = _start_detached(
        [sys.executable, "-m", "controller.provisioning", "--backend", "local",
         "--kubeconfig", str(directory / "kubeconfig"), "--no-leader-elect",
         "--bind-host", "127.0.0.1", "--port", str(port), "--log-format", "text"],
        logs / "provisioner.log",
    )
    devcli.add_process(directory, "provisioner", process.pid)
    print(f"provisioner (local backend): pid {process.pid}, metrics :{port}, "
          f"log {logs / 'provisioner.log'}")
    return port


def _start_prometheus(directory: Path, logs: Path, targets: dict[str, str]) -> str | None:
    """Debian's Prometheus on loopback over the controller and provisioner, started before
    the seed is applied so the flow itself is in the data; returns its URL."""
    from kaito import observe

    if not observe.prometheus_available():
        print("prometheus is not installed (hack/apt-deps.sh installs Debian's): skipped")
        return None
    port = free_port()
    process = observe.start_prometheus(directory / "prometheus", logs / "prometheus.log",
                                       port, targets)
    devcli.add_process(directory, "prometheus", process.pid)
    url = f"http://127.0.0.1:{port}"
    print(f"prometheus: {url} (pid {process.pid}), scraping {', '.join(sorted(targets))}")
    return url


def _observe(directory: Path, url: str) -> None:
    """One query's answer, and the dashboard's panels drawn from the live data."""
    from kaito import observe

    _step(f"Prometheus at {url}: one query, and the dashboard drawn from live data")

    def scraped() -> bool:
        return bool(observe.query(url, "kaito_workspaces"))

    _wait("the first scrapes", scraped, 60)
    time.sleep(10)  # some scrapes after the flow, so its rates have points
    expr = "sum by (state, preset, mode) (kaito_workspaces)"
    print(f"$ curl '{url}/api/v1/query?query={expr}'")
    for item in observe.query(url, expr):
        print(f"  {json.dumps(item['metric'], sort_keys=True)} {item['value'][1]}")
    picture = directory / "dashboard.png"
    panels = observe.render_dashboard(url, picture, minutes=3)
    print(f"dashboard: {panels} panels with data drawn into {picture}")


def _follow_workspace(kubectl: Kubectl) -> None:
    """Watch the seed workspace go from applied to serving, as the seed document shows."""
    _step("kubectl get workspace workspace-tuning-phi-3 (the controller at work)")

    def ready() -> bool:
        got = json.loads(kubectl("get", "workspace", "workspace-tuning-phi-3", "-o",
                                 "json").stdout)
        return any(c["type"] == "WorkspaceReady" and c["status"] == "True"
                   for c in (got.get("status") or {}).get("conditions") or [])

    try:
        _wait("WorkspaceReady", ready, 120)
    except TimeoutError:
        print("the workspace is not ready yet; its conditions:")
    print(kubectl("get", "workspace", "workspace-tuning-phi-3").stdout.rstrip())
    print(kubectl("get", "nodeclaims,nodes", "-l",
                  "kaito.sh/workspace=workspace-tuning-phi-3").stdout.rstrip())
    print(kubectl("get", "jobs,deployments,services", "-l",
                  "kaito.sh/workspace=workspace-tuning-phi-3").stdout.rstrip())
    print(kubectl("describe", "workspace", "workspace-tuning-phi-3").stdout.split("Events:")[-1]
          .rstrip())


def _seed_and_rejection(kubectl: Kubectl) -> None:
    _step("kubectl apply -f examples/fine-tuning/kaito_workspace_tuning_phi_3.yaml")
    # The API server picks up new webhook configurations from an informer: retry briefly.
    deadline = time.monotonic() + 30
    while True:
        applied = kubectl("apply", "-f", str(SEED), check=False)
        if applied.returncode == 0 or time.monotonic() > deadline:
            break
        time.sleep(0.5)
    print((applied.stdout + applied.stderr).strip())
    kubectl("get", "workspace", "workspace-tuning-phi-3")  # fails loudly if absent
    print(kubectl("get", "workspace", "-o", "wide").stdout.rstrip())
    stored = json.loads(kubectl("get", "workspace", "workspace-tuning-phi-3", "-o", "json").stdout)
    print("stored resource (with the webhook's defaults):",
          json.dumps(stored["resource"], sort_keys=True))

    _step("kubectl apply --dry-run=server: qlora of phi-3-medium-128k-instruct on one T4")
    bad = yaml.safe_load(SEED.read_text())
    bad["metadata"]["name"] = "too-small"
    bad["resource"]["instanceType"] = "Standard_NC4as_T4_v3"
    bad["tuning"]["preset"]["name"] = "phi-3-medium-128k-instruct"
    rejected = kubectl("apply", "--dry-run=server", "-f", "-", input=yaml.safe_dump(bad),
                       check=False)
    print(rejected.stderr.strip() or rejected.stdout.strip())


def _serve_and_chat(directory: Path, prompt: str) -> None:
    _step("inference runtime: kaito serve --model smollm2-135m-instruct, then POST /chat")
    port = free_port()
    log_path = directory / "logs" / "serve.log"
    process = _start_detached(
        [sys.executable, "-m", "runtime.serving", "--model", "smollm2-135m-instruct",
         "--host", "127.0.0.1", "--port", str(port)], log_path)
    base = f"http://127.0.0.1:{port}"
    try:
        def is_healthy() -> bool:
            if process.poll() is not None:
                raise RuntimeError(f"the inference server exited; see {log_path}")
            try:
                with urllib.request.urlopen(f"{base}/health", timeout=2) as response:
                    return bool(response.status == 200)
            except (OSError, urllib.error.URLError):
                return False

        _wait("the inference server to load the model", is_healthy, 600)
        body = {"prompt": prompt, "generate_kwargs": {"max_new_tokens": 60}}
        request = urllib.request.Request(
            f"{base}/chat", data=json.dumps(body).encode(), method="POST",
            headers={"Content-Type": "application/json"})
        print(f"$ curl -X POST {base}/chat -d '{json.dumps(body)}'")
        with urllib.request.urlopen(request, timeout=300) as response:
            print(response.read().decode())
    finally:
        process.terminate()
        process.wait(timeout=30)


def run(args: argparse.Namespace) -> int:
    bin_dir = find_binaries()
    _step("local cluster: etcd, kube-apiserver, controller-manager, scheduler, kwok GPU node")
    state = devcli.ensure_up(args.dir, gpu_nodes=1, instance_type="Standard_NC6s_v3")
    kubeconfig = str(state["kubeconfig"])
    kubectl = Kubectl(bin_dir, kubeconfig)
    print(kubectl("get", "nodes", "-o", "wide").stdout.rstrip())

    _step("kaito crds | kubectl apply -f -")
    from crds.generate import render_crds

    print(kubectl("apply", "-f", "-", input=render_crds()).stdout.rstrip())
    kubectl("wait", "--for=condition=Established", "crd/workspaces.kaito.sh", "--timeout=60s")

    _step("admission webhook (defaulting + validation)")
    pids = state.get("pids")
    if isinstance(pids, dict) and "webhook" in pids and state.get("is_reused"):
        print("webhook already running")
    else:
        _install_webhook(kubectl, args.dir, Path(str(state["logs"])))
    _step("workspace controller (NodeClaims, tuning Job, serving workload, status) and "
          "node provisioner (local backend)")
    targets: dict[str, str] = {}
    if isinstance(pids, dict) and "controller" in pids and state.get("is_reused"):
        print("controller and provisioner already running")
    else:
        logs = Path(str(state["logs"]))
        targets["controller"] = f"127.0.0.1:{_start_controller(args.dir, logs)}"
        targets["provisioner"] = f"127.0.0.1:{_start_provisioner(args.dir, logs)}"
    prometheus = _start_prometheus(args.dir, Path(str(state["logs"])), targets) if (
        targets) else None
    _seed_and_rejection(kubectl)
    _follow_workspace(kubectl)
    if prometheus is not None:
        _observe(args.dir, prometheus)

    if not args.no_serve:
        _serve_and_chat(args.dir, args.prompt)

    print("\nThe cluster, webhook, controller, provisioner and Prometheus keep running. "
          f"export KUBECONFIG={kubeconfig}")
    print("Stop them with: make demo-down")
    return 0
