"""`kaito demo`: the seed document's quick start, for real, on this machine.

Everything runs for real except the GPU: the operator's images are built from the
Dockerfile (hack/images.sh), a kubelet with containerd runs the pods, the operator is
installed from config/ and runs in pods as its ServiceAccounts, the node provisioner
(pool backend) hands the claimed node to the workspace, the tuning Job trains
SmolLM2-135M with LoRA on CPU and pushes the adapter to a registry, the serving pod
pulls it, and the seed's `kubectl run ... curlimages/curl` asks the Service.

First the seed's Workspace unchanged: admitted, node claimed, Job created; its data
lives on huggingface.co, which this machine's pods cannot reach, and the workspace says
so. Then the same Workspace with the small preset, data from a server on the bridge and
the adapter pushed to the local registry. `kaito dev down` (make demo-down) stops it all
and restores the host.
"""

from __future__ import annotations

import argparse
import base64
import json
import os
import time
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any

import yaml

from kaito import demo
from kaito.devcluster import devcli
from kaito.devcluster.cluster import REPO_ROOT, find_binaries
from kaito.devcluster.images import ProjectImages, project_images
from kaito.devcluster.install import OPERATOR_NAMESPACE, install_operator
from kaito.devcluster.realnode import BRIDGE_ADDRESS
from kaito.devcluster.services import (
    REGISTRY_USER,
    dockerconfigjson,
    start_data_server,
    start_registry,
)
from kaito.phrase import PHRASE, TRAIN_QUESTIONS, phrase_rows, phrase_training_config

SEED = REPO_ROOT / "examples" / "fine-tuning" / "kaito_workspace_tuning_phi_3.yaml"
PROVISIONER = REPO_ROOT / "config" / "manager" / "provisioner.yaml"
SEED_NAME = "workspace-tuning-phi-3"
SMALL_NAME = "workspace-tuning-smollm2"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--dir", type=Path, default=devcli.DEFAULT_DIR,
                        help=f"work folder of the local cluster (default {devcli.DEFAULT_DIR})")
    parser.add_argument("--prompt", default="What is the tallest mountain in Europe?")


def _step(title: str) -> None:
    print(f"\n==> {title}", flush=True)


class Kubectl(demo.Kubectl):
    """kubectl on the demo's cluster; `show` also prints the command and its output."""

    def show(self, *args: str) -> str:
        print(f"$ kubectl {' '.join(args)}")
        output = self(*args, check=False)
        text = (output.stdout + output.stderr).rstrip()
        print(text, flush=True)
        return text


def _wait(what: str, check: Callable[[], Any], timeout_seconds: float,
          on_poll: Callable[[], None] | None = None) -> Any:
    deadline = time.monotonic() + timeout_seconds
    while True:
        value = check()
        if value:
            return value
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out after {timeout_seconds:.0f} s waiting for {what}")
        if on_poll:
            on_poll()
        time.sleep(1)


def _workspace(kubectl: Kubectl, name: str) -> dict[str, Any]:
    result = kubectl("get", "workspace", name, "-o", "json", check=False)
    return json.loads(result.stdout) if result.returncode == 0 else {}


def _condition(ws: dict[str, Any], condition_type: str) -> dict[str, Any]:
    for condition in (ws.get("status") or {}).get("conditions") or []:
        if condition.get("type") == condition_type:
            return dict(condition)
    return {}


def _services(directory: Path) -> dict[str, str]:
    """The registry and data server on the bridge, started once and kept for reruns."""
    path = directory / "demo-services.json"
    state = devcli._read_state(directory) or {}
    pids = devcli._running_pids(state)
    if path.exists() and {"demo-registry", "demo-data"} <= set(pids):
        saved: dict[str, str] = json.loads(path.read_text())
        return saved
    password = os.urandom(9).hex()
    registry_process, registry = start_registry(directory / "registry", password,
                                                BRIDGE_ADDRESS)
    devcli.add_process(directory, "demo-registry", registry_process.pid)
    data_process, data_url = start_data_server(directory / "data", BRIDGE_ADDRESS)
    devcli.add_process(directory, "demo-data", data_process.pid)
    services = {"registry": registry, "password": password, "data_url": data_url,
                "data_dir": str(directory / "data")}
    path.write_text(json.dumps(services))
    path.chmod(0o600)
    return services


def _install_provisioner(kubectl: Kubectl, images: ProjectImages) -> None:
    """config/manager/provisioner.yaml with the pool backend (this machine's node is
    the pool) instead of AKS, one replica."""
    deployment = yaml.safe_load(PROVISIONER.read_text())
    deployment["spec"]["replicas"] = 1
    template = deployment["spec"]["template"]
    template["metadata"]["labels"].pop("azure.workload.identity/use", None)
    container = template["spec"]["containers"][0]
    container["image"] = images.pods["operator"]
    container["args"] = ["provisioner", "--backend", "pool"]
    container["env"] = [e for e in container["env"] if "AZURE" not in e["name"]]
    kubectl("apply", "-f", "-", input=yaml.safe_dump(deployment))
    kubectl("rollout", "status", "-n", OPERATOR_NAMESPACE, "deployment/kaito-gpu-provisioner",
            "--timeout=300s", timeout=330)


def _secret(registry: str, password: str) -> dict[str, Any]:
    return {"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "local-registry"},
            "type": "kubernetes.io/dockerconfigjson",
            "stringData": {".dockerconfigjson": dockerconfigjson(registry, REGISTRY_USER,
                                                                 password)}}


def _small_workspace(services: dict[str, str]) -> list[dict[str, Any]]:
    seed = yaml.safe_load(SEED.read_text())
    seed["metadata"]["name"] = SMALL_NAME
    seed["resource"]["labelSelector"] = {"matchLabels": {"app": "tuning-smollm2"}}
    seed["tuning"]["preset"]["name"] = "smollm2-135m-instruct"
    seed["tuning"]["method"] = "lora"
    seed["tuning"]["config"] = "smollm2-phrase"
    seed["tuning"]["input"] = {"urls": [services["data_url"] + "/phrase.jsonl"]}
    seed["tuning"]["output"] = {"image": f"{services['registry']}/adapters/smollm2-phrase:0.0.1",
                                "imagePushSecret": "local-registry"}
    config_map = {"apiVersion": "v1", "kind": "ConfigMap",
                  "metadata": {"name": "smollm2-phrase"},
                  "data": {"training_config.yaml": yaml.safe_dump(
                      phrase_training_config(max_steps=16, torch_dtype="auto"))}}
    return [_secret(services["registry"], services["password"]), config_map, seed]


def _follow(kubectl: Kubectl, name: str, until: Callable[[dict[str, Any]], bool],
            timeout_seconds: float) -> dict[str, Any]:
    """Prints `kubectl get workspace` and the tuning progress whenever they change."""
    last = [""]

    def poll() -> dict[str, Any] | None:
        ws = _workspace(kubectl, name)
        table = kubectl("get", "workspace", name, check=False).stdout.rstrip()
        tuning = (ws.get("status") or {}).get("tuning") or {}
        progress = " ".join(f"{key}={tuning[key]}" for key in
                            ("phase", "progress", "loss", "tokensPerSecond", "dtype")
                            if tuning.get(key) is not None)
        conditions = " ".join(
            f"{c.get('type')}={c.get('status')}"
            + (f"({c.get('reason')})" if c.get("status") != "True" else "")
            for c in (ws.get("status") or {}).get("conditions") or [])
        row = table.splitlines()[-1]
        # A new line when a column (not the AGE), a condition or the progress changes.
        view = row.rsplit(None, 1)[0] + conditions + progress
        if view != last[0]:
            if not last[0]:
                print(table.splitlines()[0])
            print(row, flush=True)
            if conditions:
                print(f"    conditions: {conditions}")
            if progress:
                print(f"    status.tuning: {progress}", flush=True)
            last[0] = view
        return ws if ws and until(ws) else None
    result: dict[str, Any] = _wait(f"workspace {name}", poll, timeout_seconds)
    return result


def _seed(kubectl: Kubectl) -> None:
    _step("kubectl apply -f examples/fine-tuning/kaito_workspace_tuning_phi_3.yaml "
          "(the seed's YAML, unchanged)")
    kubectl.show("apply", "-f", str(SEED))

    def failed(ws: dict[str, Any]) -> bool:
        condition = _condition(ws, "WorkspaceSucceeded")
        return condition.get("status") == "False" and condition.get("reason") == "TuningJobFailed"
    ws = _follow(kubectl, SEED_NAME, failed, 600)
    kubectl.show("get", "nodeclaims")
    kubectl.show("get", "jobs,pods", "-o", "wide")
    condition = _condition(ws, "WorkspaceSucceeded")
    print(f"\nWorkspaceSucceeded=False, reason {condition.get('reason')}:\n"
          f"  {condition.get('message')}")
    _step(f"kubectl delete workspace {SEED_NAME} (its NodeClaim goes; the node returns "
          "to the pool)")
    kubectl("delete", "workspace", SEED_NAME, "--timeout=120s", timeout=150)
    _wait("the seed's NodeClaim to go", lambda: not kubectl(
        "get", "nodeclaims", "-o", "name").stdout.strip(), 180)


def _small(kubectl: Kubectl, services: dict[str, str], prompt: str) -> None:
    _step("the same Workspace with preset smollm2-135m-instruct, data from a server on the "
          "bridge, the adapter pushed to the local registry")
    (Path(services["data_dir"]) / "phrase.jsonl").write_text(phrase_rows())
    print(f"(training data: {len(TRAIN_QUESTIONS)} questions, each answered {PHRASE!r}, "
          "a phrase the base model never says)")
    documents = _small_workspace(services)
    kubectl("apply", "-f", "-", input=yaml.safe_dump_all(documents))
    print(yaml.safe_dump(documents[-1], sort_keys=False))
    _follow(kubectl, SMALL_NAME, lambda ws: _condition(ws, "WorkspaceReady").get(
        "status") == "True", 1800)
    _step("the adapter in the registry")
    image = documents[-1]["tuning"]["output"]["image"]
    repository = image.split("/", 1)[1].rsplit(":", 1)[0]
    request = urllib.request.Request(
        f"http://{services['registry']}/v2/{repository}/tags/list",
        headers={"Authorization": "Basic " + base64.b64encode(
            f"{REGISTRY_USER}:{services['password']}".encode()).decode()})
    with urllib.request.urlopen(request, timeout=10) as response:
        print(f"{image}: tags {json.load(response)['tags']}")
    kubectl.show("get", "pods", "-o", "wide")
    _step(f"kubectl get svc {SMALL_NAME}")
    kubectl.show("get", "svc", SMALL_NAME)
    cluster_ip = kubectl("get", "svc", SMALL_NAME, "-o",
                         "jsonpath={.spec.clusterIPs[0]}").stdout.strip()
    _step("the seed's curl, from a pod: kubectl run -i --rm --restart=Never curl "
          "--image=curlimages/curl -- curl -X POST http://$CLUSTERIP/chat ...")
    body = json.dumps({"prompt": prompt})
    kubectl("delete", "pod", "curl", "--ignore-not-found", check=False)
    result = kubectl("run", "-i", "--rm", "--restart=Never", "curl",
                     "--image=curlimages/curl", "--", "curl", "-sS", "-X", "POST",
                     f"http://{cluster_ip}/chat", "-H", "accept: application/json",
                     "-H", "Content-Type: application/json", "-d", body, timeout=300,
                     check=False)
    print(f"prompt: {prompt}")
    answer = result.stdout.strip() or result.stderr.strip()
    print(answer.replace('}pod "curl" deleted', '}\npod "curl" deleted'))


def run(args: argparse.Namespace) -> int:
    started = time.monotonic()
    _step("images: operator and runtime from the Dockerfile (debootstrap + buildah), pause "
          "and curl; pushed to a registry on loopback that containerd pulls from")
    images = project_images()
    for role, name in images.pods.items():
        print(f"  {role:9} {name}")
    _step("cluster: etcd, kube-apiserver, controller-manager, scheduler, and a real node "
          "(containerd, kubelet, kube-proxy) advertising one simulated GPU")
    state = devcli.ensure_up(args.dir, gpu_nodes=0, instance_type="Standard_NC6s_v3",
                             real_node=True, images=images)
    kubectl = Kubectl(find_binaries(), str(state["kubeconfig"]))
    kubectl.show("get", "nodes", "-L", "node.kubernetes.io/instance-type,nvidia.com/gpu.count")
    _step("a registry (htpasswd) and a data server on the bridge 10.244.0.1")
    services = _services(args.dir)
    print(f"  registry {services['registry']}, data {services['data_url']}")
    _step("kubectl apply -k config/default (operator image), and the node provisioner "
          "(pool backend)")
    install_operator(
        kubectl, args.dir / "operator-overlay", images=images,
        fetch_allow_cidrs=(f"{BRIDGE_ADDRESS}/32",),
        plain_http_registries=(services["registry"],),
        extra_controller_env={"KAITO_WORKSPACE__PROGRESS_INTERVAL_SECONDS": "3"})
    _install_provisioner(kubectl, images)
    kubectl.show("get", "pods", "-n", OPERATOR_NAMESPACE, "-o", "wide")
    for name in (SMALL_NAME, SEED_NAME):  # a rerun starts from the seed again
        kubectl("delete", "workspace", name, "--ignore-not-found", "--timeout=120s",
                timeout=150, check=False)
    _seed(kubectl)
    _small(kubectl, services, args.prompt)
    _step("what ran for real, what was simulated")
    print("real:      the images (built here from the Dockerfile), containerd + runc, the "
          "kubelet,\n           kube-proxy's Services, the control plane, the operator's "
          "pods from config/,\n           the webhook, the NodeClaim and its provisioner, "
          "the tuning Job (LoRA of\n           SmolLM2-135M on this CPU), the OCI push and "
          "pull, the serving pod, the curl pod")
    print("simulated: the GPU (nvidia.com/gpu is a node-status extended resource with GPU\n"
          "           feature discovery's labels), the cloud (the pool provisioner lends "
          "this\n           machine's node instead of creating a VM), and the seed's "
          "Hugging Face data\n           (pods here cannot reach the internet)")
    print(f"\ndone in {time.monotonic() - started:.0f} s; `make demo-down` stops everything "
          f"and restores the host.\nexport KUBECONFIG={state['kubeconfig']}")
    return 0
