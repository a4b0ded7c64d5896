"""Bring-your-own nodes (node provisioning off, upstream's disableNodeAutoProvisioning) and
the default tuning configs, through the real controller on the kwok cluster.

GPU count and memory come from the nodes' GPU feature discovery labels, so an instance type
the SKU table does not know (even a placeholder) works, and nodes too small for the model
show a ResourceReady=False InsufficientGPUMemory condition instead of a pod that would run
out of memory (one node's GPUs must hold the model: nodes do not pool their memory). A tuning workspace without tuning.config gets the operator's
lora-params-template (from the operator's namespace) with the preset's target modules.
"""

from __future__ import annotations

import http.server
import json
import threading
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from kaito.devcluster import LocalCluster
from tests.e2e.components import ComponentProcess, delete_workspaces, wait_for

pytestmark = pytest.mark.e2e

REPO = Path(__file__).resolve().parents[2]
GPU_TAINT = {"key": "sku", "value": "gpu", "effect": "NoSchedule"}


def _get(cluster: LocalCluster, *args: str) -> Any:
    result = cluster.kubectl("get", *args, "-o", "json", check=False)
    return json.loads(result.stdout) if result.returncode == 0 else None


def _condition(ws: dict[str, Any] | None, condition_type: str) -> dict[str, Any]:
    for condition in ((ws or {}).get("status") or {}).get("conditions") or []:
        if condition["type"] == condition_type:
            return dict(condition)
    return {}


def _gfd(product: str, count: int, memory_mib: int, app: str) -> dict[str, str]:
    return {"nvidia.com/gpu.product": product, "nvidia.com/gpu.count": str(count),
            "nvidia.com/gpu.memory": str(memory_mib), "app": app}


def _node_names(cluster: LocalCluster) -> set[str]:
    return set(cluster.kubectl("get", "nodes", "-o", "name").stdout.split())


@pytest.fixture(autouse=True)
def _own_nodes_removed(cluster: LocalCluster) -> Iterator[None]:
    """The session cluster is shared: GPU nodes made here must not take the pods of a
    later test (test_gpu_scheduling expects its own node to be the only GPU node)."""
    before = _node_names(cluster)
    yield
    for name in sorted(_node_names(cluster) - before):
        cluster.kubectl("delete", name, "--wait=false", check=False)


@pytest.fixture(scope="module")
def operator_namespace(cluster: LocalCluster) -> Iterator[str]:
    name = f"kaito-op-{uuid.uuid4().hex[:6]}"
    cluster.kubectl("create", "namespace", name)
    rendered = cluster.kubectl("kustomize", str(REPO / "config/tuning")).stdout
    for doc in yaml.safe_load_all(rendered):
        if doc and doc["metadata"]["name"] == "lora-params-template":
            # An operator's edit of the shipped template: the controller must use it.
            text = yaml.safe_load(doc["data"]["training_config.yaml"])
            text["training_config"]["LoraConfig"]["r"] = 16
            doc["data"]["training_config.yaml"] = yaml.safe_dump(text)
        if doc:
            doc["metadata"]["namespace"] = name
            cluster.apply(doc)
    yield name
    cluster.kubectl("delete", "namespace", name, "--wait=false", check=False)


class _Hub(http.server.BaseHTTPRequestHandler):
    """A Hugging Face Hub endpoint holding one model's config.json (a Llama-8B shape)."""

    def do_GET(self) -> None:
        if self.path != "/someorg/llama-like-8b/resolve/main/config.json":
            self.send_error(404)
            return
        body = json.dumps({
            "hidden_size": 4096, "num_hidden_layers": 32, "num_attention_heads": 32,
            "num_key_value_heads": 8, "intermediate_size": 14336, "vocab_size": 128256,
            "max_position_embeddings": 131072}).encode()
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: object) -> None:
        pass


@pytest.fixture(scope="module")
def hub() -> Iterator[str]:
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Hub)
    thread = threading.Thread(target=server.serve_forever, name="fake-hub", daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()
        thread.join()


@pytest.fixture(scope="module")
def byo_controller(cluster: LocalCluster, operator_namespace: str, hub: str,
                   tmp_path_factory: pytest.TempPathFactory) -> Iterator[ComponentProcess]:
    cluster.kubectl("apply", "-f", str(REPO / "config" / "crd" / "bases"))
    process = ComponentProcess(
        "controller", cluster.kubeconfig,
        tmp_path_factory.mktemp("byo-controller") / "controller.log",
        args=["--no-leader-elect", "--workers", "2"],
        env={"KAITO_WORKSPACE__NODE_PROVISIONING": "false",
             "KAITO_WORKSPACE__OPERATOR_NAMESPACE": operator_namespace,
             "KAITO_WORKSPACE__HF_ENDPOINT": hub,
             "KAITO_WORKSPACE__PROGRESS_INTERVAL_SECONDS": "2"})
    process.start()
    try:
        yield process
        delete_workspaces(cluster.kubectl)
    finally:
        process.kill()
        print(process.log_path.read_text()[-5000:])


def _workspace(name: str, preset: str, *, tuning: bool = False) -> dict[str, Any]:
    document: dict[str, Any] = {
        "apiVersion": "kaito.sh/v1beta1", "kind": "Workspace", "metadata": {"name": name},
        "resource": {"instanceType": "<your-vm-sku>",
                     "labelSelector": {"matchLabels": {"app": name}}},
    }
    if tuning:
        document["tuning"] = {
            "preset": {"name": preset}, "method": "lora",
            "input": {"urls": ["https://example.com/data.parquet"]},
            "output": {"image": "registry.example.com/adapter:1", "imagePushSecret": "push"}}
    else:
        document["inference"] = {"preset": {"name": preset}}
    return document


def test_nodes_too_small_for_the_model_give_a_clear_condition(
    cluster: LocalCluster, cluster_namespace: str, byo_controller: ComponentProcess
) -> None:
    namespace, name = cluster_namespace, "phi-4-on-a10"
    # Two A10 nodes hold ~30 GiB together, but a model is served on one node only: the
    # webhook's rule (presets.memory) applies to bring-your-own nodes too.
    for index in range(2):
        cluster.create_gpu_node(f"a10-{index}-{namespace}", gpus=1, taints=[GPU_TAINT],
                                labels=_gfd("NVIDIA-A10", 1, 23028, name))
    cluster.kubectl("apply", "-n", namespace, "-f", "-",
                    input=json.dumps(_workspace(name, "phi-4")))

    def reason() -> str:
        return str(_condition(_get(cluster, "workspace", name, "-n", namespace),
                              "ResourceReady").get("reason", ""))

    wait_for("InsufficientGPUMemory", lambda: reason() == "InsufficientGPUMemory", timeout=120)
    condition = _condition(_get(cluster, "workspace", name, "-n", namespace), "ResourceReady")
    assert condition["message"].startswith(
        "preset phi-4 needs 30 GiB of GPU memory; one selected (1x NVIDIA-A10, 22.5 GiB each) "
        "node has 22.5 GiB and this operator serves a model on one node only")
    assert condition["message"].endswith("select larger nodes in resource.labelSelector")
    ws = _get(cluster, "workspace", name, "-n", namespace)
    assert ws["status"].get("targetNodeCount") in (None, 1)
    assert not _get(cluster, "deployments", "-n", namespace)["items"]


def test_labelled_nodes_of_an_unknown_sku_serve_the_model(
    cluster: LocalCluster, cluster_namespace: str, byo_controller: ComponentProcess
) -> None:
    namespace, name = cluster_namespace, "phi-4-on-h100"
    cluster.create_gpu_node(f"h100-{namespace}", gpus=2, taints=[GPU_TAINT],
                            labels=_gfd("NVIDIA-H100-80GB-HBM3", 2, 81559, name))
    cluster.kubectl("apply", "-n", namespace, "-f", "-",
                    input=json.dumps(_workspace(name, "phi-4")))
    wait_for("InferenceReady", lambda: _condition(
        _get(cluster, "workspace", name, "-n", namespace), "InferenceReady"
    ).get("status") == "True", timeout=180)
    ws = _get(cluster, "workspace", name, "-n", namespace)
    assert ws["status"]["workerNodes"] == [f"h100-{namespace}"]
    assert ws["status"]["targetNodeCount"] == 1
    deployment = _get(cluster, "deployments", "-n", namespace)["items"][0]
    container = deployment["spec"]["template"]["spec"]["containers"][0]
    assert container["resources"]["limits"]["nvidia.com/gpu"] == "2"  # from gpu.count
    assert not _get(cluster, "nodeclaims", "-l", f"kaito.sh/workspace={name}")["items"]


def test_tuning_without_config_uses_the_operators_template(
    cluster: LocalCluster, cluster_namespace: str, byo_controller: ComponentProcess
) -> None:
    namespace, name = cluster_namespace, "tune-phi-3-byo"
    cluster.create_gpu_node(f"a100-{namespace}", gpus=1, taints=[GPU_TAINT],
                            labels=_gfd("NVIDIA-A100-SXM4-80GB", 1, 81920, name))
    cluster.kubectl("apply", "-n", namespace, "-f", "-",
                    input=json.dumps(_workspace(name, "phi-3-mini-4k-instruct", tuning=True)))
    wait_for("the default config", lambda: _get(
        cluster, "configmap", f"{name}-tuning-config", "-n", namespace) is not None, timeout=120)
    config_map = _get(cluster, "configmap", f"{name}-tuning-config", "-n", namespace)
    config = yaml.safe_load(config_map["data"]["training_config.yaml"])["training_config"]
    assert config["LoraConfig"]["r"] == 16  # the operator's edit of lora-params-template
    assert config["LoraConfig"]["target_modules"] == [
        "qkv_proj", "o_proj", "gate_up_proj", "down_proj"]
    wait_for("the tuning Job", lambda: _get(cluster, "job", name, "-n", namespace) is not None,
             timeout=60)


def test_a_partitioned_workspace_asks_for_its_partitions(
    cluster: LocalCluster, cluster_namespace: str, byo_controller: ComponentProcess
) -> None:
    namespace, name = cluster_namespace, "llama-partitioned"
    cluster.create_gpu_node(f"part-{namespace}", gpus=4, taints=[GPU_TAINT],
                            labels={"app": name})
    document = {
        "apiVersion": "kaito.sh/v1beta1", "kind": "Workspace", "metadata": {"name": name},
        "resource": {"labelSelector": {"matchLabels": {"app": name}},
                     "partition": {"mode": "accelerator", "count": 2}},
        "inference": {"preset": {"name": "llama-3.1-8b-instruct",
                                 "presetOptions": {"modelAccessSecret": "hf-token"}}},
    }
    cluster.kubectl("apply", "-n", namespace, "-f", "-", input=json.dumps(document))
    wait_for("the serving Deployment", lambda: bool(
        (_get(cluster, "deployments", "-n", namespace) or {"items": []})["items"]), timeout=120)
    deployment = _get(cluster, "deployments", "-n", namespace)["items"][0]
    container = deployment["spec"]["template"]["spec"]["containers"][0]
    assert container["resources"]["limits"]["nvidia.com/gpu"] == "2"


def test_a_hugging_face_id_is_sized_from_its_config_and_served(
    cluster: LocalCluster, cluster_namespace: str, byo_controller: ComponentProcess
) -> None:
    namespace, name = cluster_namespace, "hf-best-effort"
    cluster.create_gpu_node(f"l40-{namespace}", gpus=1, taints=[GPU_TAINT],
                            labels=_gfd("NVIDIA-L40S", 1, 46068, name))
    for model, workspace in (("someorg/llama-like-8b", name), ("someorg/not-on-the-hub",
                                                                 f"{name}-missing")):
        document = _workspace(workspace, model)
        document["resource"]["labelSelector"] = {"matchLabels": {"app": name}}
        cluster.kubectl("apply", "-n", namespace, "-f", "-", input=json.dumps(document))
    wait_for("InferenceReady", lambda: _condition(
        _get(cluster, "workspace", name, "-n", namespace), "InferenceReady"
    ).get("status") == "True", timeout=180)
    wait_for("ModelConfigUnavailable", lambda: _condition(
        _get(cluster, "workspace", f"{name}-missing", "-n", namespace), "ResourceReady"
    ).get("reason") == "ModelConfigUnavailable", timeout=60)


def test_a_broken_template_is_reported_not_run(
    cluster: LocalCluster, cluster_namespace: str, operator_namespace: str,
    byo_controller: ComponentProcess,
) -> None:
    # The webhook checked the template at admission; an operator's later edit that breaks
    # it must show on the workspace instead of failing inside the tuning pod.
    broken = {"training_config": {"QuantizationConfig": {"load_in_4bit": True},
                                  "TrainingArguments": {"output_dir": "/etc"}}}
    cluster.apply({"apiVersion": "v1", "kind": "ConfigMap",
                   "metadata": {"name": "qlora-params-template",
                                "namespace": operator_namespace},
                   "data": {"training_config.yaml": yaml.safe_dump(broken)}})
    namespace, name = cluster_namespace, "tune-broken-template"
    cluster.create_gpu_node(f"a100b-{namespace}", gpus=1, taints=[GPU_TAINT],
                            labels=_gfd("NVIDIA-A100-SXM4-80GB", 1, 81920, name))
    document = _workspace(name, "phi-3-mini-4k-instruct", tuning=True)
    document["tuning"]["method"] = "qlora"
    cluster.kubectl("apply", "-n", namespace, "-f", "-", input=json.dumps(document))

    def job_started() -> dict[str, Any]:
        return _condition(_get(cluster, "workspace", name, "-n", namespace), "JobStarted")

    wait_for("TuningConfigInvalid", lambda: job_started().get("reason") == "TuningConfigInvalid",
             timeout=120)
    assert "output_dir" in job_started()["message"]
    assert _get(cluster, "job", name, "-n", namespace) is None


def test_a_node_whose_gpu_another_workspace_holds_makes_the_next_one_wait_and_say_why(
    cluster: LocalCluster, cluster_namespace: str, byo_controller: ComponentProcess
) -> None:
    """With provisioning off, a second workspace on the same labelled node (its one GPU
    held by the first one's pod) is not ResourceReady: the condition says it waits, for
    which node and how many GPUs; when the first workspace goes, the second one runs."""
    first, name = cluster_namespace, "byo-shared"
    second = f"{first}-b"
    cluster.kubectl("create", "namespace", second)
    node = f"a100-shared-{first}"
    cluster.create_gpu_node(node, gpus=1, taints=[GPU_TAINT],
                            labels=_gfd("NVIDIA-A100-SXM4-80GB", 1, 81920, first))
    document = _workspace(name, "phi-3-mini-4k-instruct")
    document["resource"]["labelSelector"] = {"matchLabels": {"app": first}}
    try:
        cluster.kubectl("apply", "-n", first, "-f", "-", input=json.dumps(document))
        wait_for("the first one serving", lambda: _condition(
            _get(cluster, "workspace", name, "-n", first), "InferenceReady"
        ).get("status") == "True", timeout=180)
        cluster.kubectl("apply", "-n", second, "-f", "-", input=json.dumps(document))

        def resource_ready() -> dict[str, Any]:
            return _condition(_get(cluster, "workspace", name, "-n", second), "ResourceReady")

        wait_for("GPUsInUse", lambda: resource_ready().get("reason") == "GPUsInUse",
                 timeout=120)
        condition = resource_ready()
        assert condition["status"] == "False"
        assert f"{node} (0 of 1 GPU(s) free)" in condition["message"]
        assert "1 free GPU(s) per pod" in condition["message"]
        assert not _get(cluster, "deployments", "-n", second)["items"]

        cluster.kubectl("delete", "workspace", name, "-n", first, "--wait=false")
        wait_for("the second one serving on the freed node", lambda: _condition(
            _get(cluster, "workspace", name, "-n", second), "InferenceReady"
        ).get("status") == "True", timeout=180)
        ws = _get(cluster, "workspace", name, "-n", second)
        assert ws["status"]["workerNodes"] == [node]
    finally:
        cluster.kubectl("delete", "workspace", name, "-n", second, "--wait=false",
                        check=False)
        cluster.kubectl("delete", "namespace", second, "--wait=false", check=False)
