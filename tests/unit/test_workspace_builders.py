"""The Workspace controller's pure builders: the Job, Deployment, Service and ConfigMap a user finds in the cluster for a Workspace.

Besides what a user relies on (names, ports, GPU limits, args, mounts, security), every
object is walked against the Kubernetes OpenAPI models (kubernetes_asyncio), so a
misspelled field would fail here rather than be dropped by the API server.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from typing import Any

import kubernetes_asyncio.client.models as k8s_models
import pytest
import yaml

from controller.workspace.inference import (
    AdapterMount,
    adapters_for,
    build_inference_workload,
    build_service,
    legacy_headless_service_name,
    legacy_statefulset_name,
    tuned_adapter,
)
from controller.workspace.tuning import build_default_tuning_config, build_tuning_job
from controller.workspace.workload import (
    REVISION_ANNOTATION,
    WorkloadSettings,
    owner_reference,
    workspace_labels,
)
from crds.tuning_config import Method
from crds.workspace import Workspace
from presets.catalog import IMAGE_WEIGHTS_PRESETS, GpuSku, ModelPreset, load_catalog
from runtime.base_model import SMOLLM2_PRESET
from runtime.tuning.config import parse_training_config

SETTINGS = WorkloadSettings()
REVISION = "0123456789abcdef"
DNS_LABEL = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")
DATA_URL = (
    "https://huggingface.co/datasets/philschmid/dolly-15k-oai-style/resolve/main/data/"
    "train-00000-of-00001-54e3756291ca09c6.parquet?download=true"
)
SEED = f"""
apiVersion: kaito.sh/v1alpha1
kind: Workspace
metadata: {{name: workspace-tuning-phi-3, namespace: default, uid: "1234"}}
resource: {{instanceType: Standard_NC6s_v3, labelSelector: {{matchLabels: {{app: tuning-phi-3}}}}}}
tuning:
  preset: {{name: phi-3-mini-128k-instruct}}
  method: qlora
  input: {{urls: ["{DATA_URL}"]}}
  output: {{image: "myregistry.azurecr.io/adapters/phi-3:0.0.1", imagePushSecret: acr-secret}}
"""
PVC = {"persistentVolumeClaim": {"claimName": "tuning-data"}}


def seed(**tuning_changes: Any) -> Workspace:
    document = yaml.safe_load(SEED)
    document["tuning"].update(tuning_changes)
    return Workspace.model_validate(document)


def inference_workspace(preset: str = "phi-3-mini-4k-instruct", **inference: Any) -> Workspace:
    return Workspace.model_validate({
        "metadata": {"name": "workspace-phi-3", "namespace": "serving", "uid": "5678"},
        "resource": {
            "instanceType": "Standard_NC6s_v3",
            "labelSelector": {
                "matchLabels": {"apps": "phi-3"},
                "matchExpressions": [{"key": "zone", "operator": "In", "values": ["1", "2"]}],
            },
        },
        "inference": {"preset": {"name": preset}, **inference},
    })


def preset(name: str) -> ModelPreset:
    found = load_catalog().preset(name)
    assert found is not None
    return found


def sku(name: str = "Standard_NC6s_v3") -> GpuSku:
    found = load_catalog().sku(name)
    assert found is not None
    return found


def tuning_job(ws: Workspace, gpu: GpuSku | None = None, config: str = "cfg") -> dict[str, Any]:
    assert ws.tuning is not None and ws.tuning.preset is not None
    return build_tuning_job(ws, preset(ws.tuning.preset.name), gpu or sku(), settings=SETTINGS,
                            revision=REVISION, config_map_name=config)


def pod(workload: dict[str, Any]) -> dict[str, Any]:
    spec: dict[str, Any] = workload["spec"]["template"]["spec"]
    return spec


def container(workload: dict[str, Any], name: str) -> dict[str, Any]:
    spec = pod(workload)
    found: list[dict[str, Any]] = [c for c in spec["containers"] + spec.get("initContainers", []) if c["name"] == name]
    assert len(found) == 1, f"no single container {name}"
    return found[0]


def init_names(workload: dict[str, Any]) -> list[str]:
    return [c["name"] for c in pod(workload).get("initContainers", [])]


def volume(workload: dict[str, Any], name: str) -> dict[str, Any]:
    found: list[dict[str, Any]] = [v for v in pod(workload)["volumes"] if v["name"] == name]
    assert len(found) == 1, f"no single volume {name}"
    return found[0]


def mounts(c: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {m["mountPath"]: m for m in c["volumeMounts"]}


def flag(args: list[str], name: str) -> str:
    assert args.count(name) == 1, f"{name} in {args}"
    return args[args.index(name) + 1]


# -- schema and shape checks every object must pass ---------------------------------------


def unknown_fields(value: Any, type_name: str, path: str) -> Iterator[str]:
    """Keys the Kubernetes OpenAPI model of ``type_name`` does not have."""
    if type_name.startswith("list["):
        for index, item in enumerate(value):
            yield from unknown_fields(item, type_name[5:-1], f"{path}[{index}]")
        return
    if type_name.startswith("dict("):
        inner = type_name[5:-1].split(", ", 1)[1]
        for key, item in value.items():
            yield from unknown_fields(item, inner, f"{path}.{key}")
        return
    model = getattr(k8s_models, type_name, None)
    if model is None:  # str, int, bool, object
        return
    assert isinstance(value, dict), f"{path} should be an object"
    python_names = {wire: python for python, wire in model.attribute_map.items()}
    for key, item in value.items():
        if key not in python_names:
            yield f"{path}.{key}"
        else:
            yield from unknown_fields(item, model.openapi_types[python_names[key]], f"{path}.{key}")


def assert_valid_pod_template(workload: dict[str, Any], kind: str) -> None:
    assert list(unknown_fields(workload, f"V1{kind}", kind)) == []
    assert len(workload["metadata"]["name"]) <= 63
    spec = pod(workload)
    volumes = {v["name"] for v in spec["volumes"]}
    assert len(volumes) == len(spec["volumes"]), "volume names repeat"
    containers = spec["containers"] + spec.get("initContainers", [])
    assert len({c["name"] for c in containers}) == len(containers), "container names repeat"
    for name in volumes | {c["name"] for c in containers}:
        assert len(name) <= 63 and DNS_LABEL.match(name), name
    for c in containers:
        paths = [m["mountPath"] for m in c["volumeMounts"]]
        assert len(set(paths)) == len(paths), f"{c['name']} mounts a path twice"
        assert {m["name"] for m in c["volumeMounts"]} <= volumes, f"{c['name']}: unknown volume"
        assert c["terminationMessagePolicy"] == "FallbackToLogsOnError"
        security = c["securityContext"]
        assert security["allowPrivilegeEscalation"] is False
        assert security["capabilities"] == {"drop": ["ALL"]}
        assert security["readOnlyRootFilesystem"] is True
    assert spec["securityContext"]["runAsNonRoot"] is True
    assert spec["securityContext"]["runAsUser"] == 65532
    assert spec["securityContext"]["runAsGroup"] == 65532
    assert spec["securityContext"]["fsGroup"] == 65532
    assert spec["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
    assert spec["automountServiceAccountToken"] is False
    # Runtime containers write only to mounted scratch space.
    for c in containers:
        if c["image"] == SETTINGS.runtime_image:
            assert {"/tmp", "/mnt/cache"} <= set(mounts(c))


# -- the tuning Job -----------------------------------------------------------------------


def test_seed_tuning_job_is_named_owned_and_labelled() -> None:
    ws = seed()
    job = tuning_job(ws)
    assert_valid_pod_template(job, "Job")
    assert (job["apiVersion"], job["kind"]) == ("batch/v1", "Job")
    assert job["metadata"]["name"] == "workspace-tuning-phi-3"
    assert job["metadata"]["namespace"] == "default"
    assert job["metadata"]["ownerReferences"] == [{
        "apiVersion": "kaito.sh/v1beta1", "kind": "Workspace", "name": "workspace-tuning-phi-3",
        "uid": "1234", "controller": True, "blockOwnerDeletion": True,
    }]
    assert job["metadata"]["labels"] == {
        "kaito.sh/workspace": "workspace-tuning-phi-3",
        "kaito.sh/workspacenamespace": "default",
        "app.kubernetes.io/component": "tuning",
    }
    assert job["metadata"]["annotations"] == {REVISION_ANNOTATION: REVISION}
    assert job["spec"]["template"]["metadata"]["annotations"][REVISION_ANNOTATION] == REVISION
    assert job["spec"]["backoffLimit"] == SETTINGS.tuning_backoff_limit
    assert pod(job)["restartPolicy"] == "Never"
    # Bad input (exit 2) fails the Job at once instead of retrying.
    rules = job["spec"]["podFailurePolicy"]["rules"]
    assert {"action": "FailJob", "onExitCodes": {"operator": "In", "values": [2]}} in rules


def test_seed_tuning_job_runs_on_the_workspace_gpu_nodes() -> None:
    job = tuning_job(seed())
    spec = pod(job)
    assert {"key": "sku", "operator": "Equal", "value": "gpu", "effect": "NoSchedule"} in (
        spec["tolerations"])
    assert {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"} in (
        spec["tolerations"])
    terms = spec["affinity"]["nodeAffinity"]["requiredDuringSchedulingIgnoredDuringExecution"]
    assert terms["nodeSelectorTerms"] == [
        {"matchExpressions": [{"key": "app", "operator": "In", "values": ["tuning-phi-3"]}]}
    ]
    tuner = container(job, "tuner")
    assert tuner["resources"] == {"limits": {"nvidia.com/gpu": "1"}}
    assert tuner["ports"] == [{"name": "progress", "containerPort": 5100, "protocol": "TCP"}]


def test_seed_tuning_job_fetches_data_and_model_then_tunes_and_pushes() -> None:
    job = tuning_job(seed(), config="my-training-config")
    assert init_names(job) == ["fetch-data", "fetch-model"]
    fetch = container(job, "fetch-data")
    assert fetch["image"] == SETTINGS.runtime_image
    assert fetch["command"] == ["kaito"]
    assert fetch["args"] == ["fetch", "--dest", "/mnt/data", DATA_URL]
    model = container(job, "fetch-model")
    assert model["args"] == ["fetch-model", "--repo", "microsoft/Phi-3-mini-128k-instruct",
                             "--dest", "/mnt/model"]
    assert all(e["name"] != "HF_TOKEN" for e in model["env"])

    tuner = container(job, "tuner")
    args = tuner["args"]
    assert args[0] == "tune"
    assert flag(args, "--config") == "/mnt/config/training_config.yaml"
    assert flag(args, "--data-dir") == "/mnt/data"
    assert flag(args, "--output-dir") == "/mnt/results"
    assert flag(args, "--base-model") == "/mnt/model"
    assert flag(args, "--method") == "qlora"
    assert flag(args, "--progress-port") == "5100"
    assert flag(args, "--push-to") == "myregistry.azurecr.io/adapters/phi-3:0.0.1"
    assert flag(args, "--push-secret") == "/mnt/push-secret/.dockerconfigjson"
    paths = mounts(tuner)
    assert paths["/mnt/push-secret"]["readOnly"] is True
    assert paths["/mnt/config"]["readOnly"] is True
    assert volume(job, paths["/mnt/push-secret"]["name"])["secret"] == {
        "secretName": "acr-secret",
        "items": [{"key": ".dockerconfigjson", "path": ".dockerconfigjson"}],
        "defaultMode": 0o440,
        "optional": True,  # the pod starts; the push names the missing Secret
    }
    assert volume(job, paths["/mnt/config"]["name"])["configMap"] == {
        "name": "my-training-config",
        "items": [{"key": "training_config.yaml", "path": "training_config.yaml"}],
    }
    assert "emptyDir" in volume(job, paths["/mnt/data"]["name"])
    assert "emptyDir" in volume(job, paths["/mnt/results"]["name"])
    assert mounts(fetch)["/mnt/data"]["name"] == paths["/mnt/data"]["name"]


@pytest.mark.parametrize(
    ("tuning_changes", "expected_init", "data_volume", "pull_secrets"),
    [
        pytest.param({"input": {"urls": [DATA_URL, "https://example.com/b.jsonl"]}},
                     ["fetch-data", "fetch-model"], {"emptyDir": {}}, None, id="urls"),
        pytest.param({"input": {"image": "myregistry.azurecr.io/data:1",
                                "imagePullSecrets": ["data-pull"]}},
                     ["copy-data", "fetch-model"], {"emptyDir": {}}, [{"name": "data-pull"}],
                     id="image"),
        pytest.param({"input": {"volumeSource": PVC}}, ["fetch-model"], PVC, None, id="volume"),
    ],
)
def test_tuning_input_sources(
    tuning_changes: dict[str, Any],
    expected_init: list[str],
    data_volume: dict[str, Any],
    pull_secrets: list[dict[str, str]] | None,
) -> None:
    job = tuning_job(seed(**tuning_changes))
    assert_valid_pod_template(job, "Job")
    assert init_names(job) == expected_init
    data = mounts(container(job, "tuner"))["/mnt/data"]
    assert data["readOnly"] is True
    assert {k: v for k, v in volume(job, data["name"]).items() if k != "name"} == data_volume
    assert pod(job).get("imagePullSecrets") == pull_secrets
    if "copy-data" in expected_init:
        copy = container(job, "copy-data")
        assert copy["image"] == "myregistry.azurecr.io/data:1"
        assert copy["command"] == ["cp", "-R", "/data/.", "/mnt/data/"]
        assert mounts(copy)["/mnt/data"]["name"] == data["name"]
    if "fetch-data" in expected_init:
        assert container(job, "fetch-data")["args"][3:] == tuning_changes["input"]["urls"]


def test_tuning_output_to_a_volume_writes_there_and_pushes_nothing() -> None:
    job = tuning_job(seed(output={"volumeSource": PVC}))
    assert_valid_pod_template(job, "Job")
    tuner = container(job, "tuner")
    assert "--push-to" not in tuner["args"] and "--push-secret" not in tuner["args"]
    assert "/mnt/push-secret" not in mounts(tuner)
    results = mounts(tuner)["/mnt/results"]
    assert volume(job, results["name"]) == {"name": results["name"], **PVC}


def test_tuning_a_preset_in_the_image_downloads_no_weights() -> None:
    assert SMOLLM2_PRESET in IMAGE_WEIGHTS_PRESETS  # runtime and presets agree
    ws = seed(preset={"name": SMOLLM2_PRESET}, method="lora")
    job = tuning_job(ws)
    assert init_names(job) == ["fetch-data"]
    tuner = container(job, "tuner")
    assert flag(tuner["args"], "--base-model") == SMOLLM2_PRESET
    assert flag(tuner["args"], "--method") == "lora"
    assert "/mnt/model" not in mounts(tuner)


def test_tuning_a_gated_model_passes_the_token_from_the_access_secret() -> None:
    ws = seed(preset={"name": "phi-3-mini-128k-instruct",
                      "presetOptions": {"modelAccessSecret": "hf-token"}})
    env = {e["name"]: e for e in container(tuning_job(ws), "fetch-model")["env"]}
    assert env["HF_TOKEN"] == {"name": "HF_TOKEN", "valueFrom": {"secretKeyRef": {
        "name": "hf-token", "key": "HF_TOKEN", "optional": False}}}
    assert all("HF_TOKEN" not in str(arg) for arg in container(tuning_job(ws), "tuner")["args"])


def test_tuning_on_bring_your_own_nodes_requests_no_gpu_count() -> None:
    ws = seed()
    assert ws.tuning is not None
    job = build_tuning_job(ws, preset("phi-3-mini-128k-instruct"), None, settings=SETTINGS,
                           revision=REVISION, config_map_name="cfg")
    assert "resources" not in container(job, "tuner")


def test_fetch_allow_list_reaches_the_fetch_container() -> None:
    settings = WorkloadSettings(fetch_allow_cidrs=("10.0.0.0/8", "fd00::/8"))
    job = build_tuning_job(seed(), preset("phi-3-mini-128k-instruct"), sku(), settings=settings,
                           revision=REVISION, config_map_name="cfg")
    env = {e["name"]: e.get("value") for e in container(job, "fetch-data")["env"]}
    assert env["KAITO_FETCH_ALLOW_CIDRS"] == "10.0.0.0/8,fd00::/8"


@pytest.mark.parametrize("method", ["lora", "qlora"])
def test_default_tuning_config_is_what_the_runtime_accepts(method: Method) -> None:
    ws = seed()
    phi = preset("phi-3-mini-128k-instruct")
    config_map = build_default_tuning_config(ws, phi, method, "default")
    assert list(unknown_fields(config_map, "V1ConfigMap", "ConfigMap")) == []
    assert config_map["metadata"]["name"] == "workspace-tuning-phi-3-tuning-config"
    assert config_map["metadata"]["namespace"] == "default"
    assert config_map["metadata"]["ownerReferences"] == [owner_reference(ws)]
    document = yaml.safe_load(config_map["data"]["training_config.yaml"])
    parsed = parse_training_config(document, method)
    assert parsed.lora.target_modules == list(phi.lora_target_modules)
    assert (parsed.lora.r, parsed.lora.lora_alpha) == (8, 8)
    assert parsed.model.torch_dtype == "auto"
    assert parsed.quantization.load_in_4bit is (method == "qlora")
    assert parsed.training.output_dir == "/mnt/results"


# -- inference ----------------------------------------------------------------------------


def test_single_node_inference_is_a_recreated_deployment() -> None:
    ws = inference_workspace()
    deployment = build_inference_workload(ws, preset("phi-3-mini-4k-instruct"), sku(),
                                          settings=SETTINGS, revision=REVISION, replicas=1,
                                          adapters=[])
    assert_valid_pod_template(deployment, "Deployment")
    assert (deployment["apiVersion"], deployment["kind"]) == ("apps/v1", "Deployment")
    assert deployment["metadata"]["name"] == "workspace-phi-3"
    assert deployment["metadata"]["namespace"] == "serving"
    assert deployment["metadata"]["ownerReferences"] == [owner_reference(ws)]
    assert deployment["metadata"]["annotations"] == {REVISION_ANNOTATION: REVISION}
    spec = deployment["spec"]
    assert spec["replicas"] == 1
    assert spec["strategy"] == {"type": "Recreate"}
    assert spec["template"]["metadata"]["annotations"] == {REVISION_ANNOTATION: REVISION}
    assert spec["selector"]["matchLabels"].items() <= spec["template"]["metadata"]["labels"].items()

    server = container(deployment, "inference")
    assert server["args"][:5] == ["serve", "--model", "/mnt/model", "--port", "5000"]
    assert "--adapter" not in server["args"]
    # Only what the server listens on: no torchrun port (nothing here rendezvous).
    assert server["ports"] == [{"name": "http", "containerPort": 5000, "protocol": "TCP"}]
    assert not {"MASTER_ADDR", "MASTER_PORT", "NNODES", "NODE_RANK"} & {
        e["name"] for e in server["env"]}
    assert server["resources"] == {"limits": {"nvidia.com/gpu": "1"}}
    for probe in ("readinessProbe", "livenessProbe", "startupProbe"):
        assert server[probe]["httpGet"]["path"] == "/health"
        assert server[probe]["httpGet"]["port"] == 5000
    startup = server["startupProbe"]
    assert startup["periodSeconds"] * startup["failureThreshold"] >= 1800  # weight loading
    assert init_names(deployment) == ["fetch-model"]
    assert container(deployment, "fetch-model")["args"][2] == "microsoft/Phi-3-mini-4k-instruct"
    terms = pod(deployment)["affinity"]["nodeAffinity"][
        "requiredDuringSchedulingIgnoredDuringExecution"]["nodeSelectorTerms"]
    assert terms == [{"matchExpressions": [
        {"key": "apps", "operator": "In", "values": ["phi-3"]},
        {"key": "zone", "operator": "In", "values": ["1", "2"]},
    ]}]


def test_count_two_is_a_deployment_of_two_replicas_on_two_nodes_with_all_their_gpus() -> None:
    """``count: 2`` is two replicas, each serving the whole model with every GPU of a node
    of its own; no StatefulSet, no rendezvous environment, no torchrun port."""
    ws = inference_workspace("phi-3-medium-4k-instruct")
    four_v100 = sku("Standard_NC24s_v3")
    workload = build_inference_workload(ws, preset("phi-3-medium-4k-instruct"), four_v100,
                                        settings=SETTINGS, revision=REVISION, replicas=2,
                                        adapters=[])
    assert_valid_pod_template(workload, "Deployment")
    assert (workload["kind"], workload["metadata"]["name"]) == ("Deployment", "workspace-phi-3")
    spec = workload["spec"]
    assert spec["replicas"] == 2
    assert spec["strategy"] == {"type": "RollingUpdate",
                                "rollingUpdate": {"maxSurge": 0, "maxUnavailable": 1}}
    assert "serviceName" not in spec
    server = container(workload, "inference")
    assert server["resources"] == {"limits": {"nvidia.com/gpu": "4"}}
    assert server["ports"] == [{"name": "http", "containerPort": 5000, "protocol": "TCP"}]
    assert not {"MASTER_ADDR", "MASTER_PORT", "NNODES", "NODE_RANK"} & {
        e["name"] for e in server["env"]}
    anti = pod(workload)["affinity"]["podAntiAffinity"][
        "requiredDuringSchedulingIgnoredDuringExecution"]
    assert anti == [{"labelSelector": {"matchLabels": spec["selector"]["matchLabels"]},
                     "topologyKey": "kubernetes.io/hostname"}]
    # The node affinity of the label selector is kept beside it.
    assert pod(workload)["affinity"]["nodeAffinity"]
    one = build_inference_workload(ws, preset("phi-3-medium-4k-instruct"), four_v100,
                                   settings=SETTINGS, revision=REVISION, replicas=1, adapters=[])
    assert "podAntiAffinity" not in pod(one)["affinity"]
    with pytest.raises(ValueError, match="replicas"):
        build_inference_workload(ws, preset("phi-3-medium-4k-instruct"), four_v100,
                                 settings=SETTINGS, revision=REVISION, replicas=0, adapters=[])


def test_service_routes_port_80_to_the_inference_pods() -> None:
    ws = inference_workspace()
    service = build_service(ws)
    assert list(unknown_fields(service, "V1Service", "Service")) == []
    assert service["metadata"]["name"] == "workspace-phi-3"
    assert service["metadata"]["ownerReferences"] == [owner_reference(ws)]
    assert service["spec"]["type"] == "ClusterIP"
    assert service["spec"]["ports"] == [
        {"name": "http", "protocol": "TCP", "port": 80, "targetPort": 5000},
    ]
    deployment = build_inference_workload(ws, preset("phi-3-mini-4k-instruct"), sku(),
                                          settings=SETTINGS, revision=REVISION, replicas=1,
                                          adapters=[])
    pod_labels = deployment["spec"]["template"]["metadata"]["labels"]
    assert service["spec"]["selector"] == {**workspace_labels(ws),
                                           "app.kubernetes.io/component": "inference"}
    assert service["spec"]["selector"].items() <= pod_labels.items()
    # The tuning Job's pods of a workspace with the same name are not selected.
    assert pod(tuning_job(seed()))["containers"]  # sanity
    assert tuning_job(seed())["spec"]["template"]["metadata"]["labels"][
        "app.kubernetes.io/component"] == "tuning"


def test_adapters_are_pulled_or_mounted_and_passed_to_the_server() -> None:
    ws = inference_workspace(
        config="my-inference-config",
        adapters=[
            {"source": {"name": "falcon.en", "image": "myregistry.io/adapters/en:1",
                        "imagePullSecrets": ["reg-a", "reg-b"]}, "strength": "0.5"},
            {"source": {"name": "local", "volumeSource": PVC}},
        ],
    )
    adapters = adapters_for(ws)
    assert adapters == [
        AdapterMount(name="falcon.en", strength="0.5", image="myregistry.io/adapters/en:1",
                     image_pull_secrets=("reg-a", "reg-b")),
        AdapterMount(name="local", strength="1.0", volume_source=PVC),
    ]
    deployment = build_inference_workload(ws, preset("phi-3-mini-4k-instruct"), sku(),
                                          settings=SETTINGS, revision=REVISION, replicas=1,
                                          adapters=adapters)
    assert_valid_pod_template(deployment, "Deployment")
    server = container(deployment, "inference")
    args = server["args"]
    assert [args[i + 1] for i, a in enumerate(args) if a == "--adapter"] == [
        "falcon.en:0.5", "local:1.0"]
    paths = mounts(server)
    assert paths["/mnt/adapter/falcon.en"]["readOnly"] is True
    assert volume(deployment, paths["/mnt/adapter/local"]["name"]) == {
        "name": paths["/mnt/adapter/local"]["name"], **PVC}
    assert volume(deployment, paths["/mnt/inference-config"]["name"])["configMap"] == {
        "name": "my-inference-config"}

    assert init_names(deployment) == ["fetch-model", "pull-adapter-0"]
    pull = container(deployment, "pull-adapter-0")
    assert pull["args"][:5] == ["pull-adapter", "--reference", "myregistry.io/adapters/en:1",
                                "--dest", "/mnt/adapter/falcon.en"]
    secrets = [pull["args"][i + 1] for i, a in enumerate(pull["args"]) if a == "--secret"]
    assert len(secrets) == 2
    pull_mounts = mounts(pull)
    assert pull_mounts["/mnt/adapter/falcon.en"]["name"] == paths["/mnt/adapter/falcon.en"]["name"]
    mounted = {}
    for secret_path in secrets:
        mount = pull_mounts[secret_path.rsplit("/", 1)[0]]
        assert mount["readOnly"] is True
        mounted[volume(deployment, mount["name"])["secret"]["secretName"]] = secret_path
    assert set(mounted) == {"reg-a", "reg-b"}


def test_a_tuned_workspace_serves_its_own_adapter() -> None:
    ws = seed()
    adapter = tuned_adapter(ws)
    assert adapter == AdapterMount(name="workspace-tuning-phi-3",
                                   image="myregistry.azurecr.io/adapters/phi-3:0.0.1",
                                   image_pull_secrets=("acr-secret",))
    on_volume = tuned_adapter(seed(output={"volumeSource": PVC}))
    assert on_volume == AdapterMount(name="workspace-tuning-phi-3", volume_source=PVC)

    deployment = build_inference_workload(ws, preset("phi-3-mini-128k-instruct"), sku(),
                                          settings=SETTINGS, revision=REVISION, replicas=1,
                                          adapters=[adapter])
    assert_valid_pod_template(deployment, "Deployment")
    assert flag(container(deployment, "inference")["args"], "--adapter") == (
        "workspace-tuning-phi-3:1.0")
    pull = container(deployment, "pull-adapter-0")
    assert flag(pull["args"], "--reference") == "myregistry.azurecr.io/adapters/phi-3:0.0.1"


def test_serving_the_preset_in_the_image_downloads_nothing() -> None:
    ws = inference_workspace(SMOLLM2_PRESET)
    deployment = build_inference_workload(ws, preset(SMOLLM2_PRESET), None, settings=SETTINGS,
                                          revision=REVISION, replicas=1, adapters=[])
    server = container(deployment, "inference")
    assert flag(server["args"], "--model") == SMOLLM2_PRESET
    assert "initContainers" not in pod(deployment)
    assert "resources" not in server


def test_long_workspace_names_still_give_valid_object_names() -> None:
    name = "w" * 63
    document: dict[str, Any] = inference_workspace("phi-3-medium-4k-instruct").to_dict()
    document["metadata"]["name"] = name
    ws = Workspace.model_validate(document)
    deployment = build_inference_workload(ws, preset("phi-3-medium-4k-instruct"), sku(),
                                          settings=SETTINGS, revision=REVISION, replicas=2,
                                          adapters=[])
    config_map = build_default_tuning_config(seed(), preset("phi-3-mini-4k-instruct"), "lora",
                                             "default")
    assert deployment["metadata"]["name"] == name
    assert build_service(ws)["metadata"]["name"] == name
    assert len(config_map["metadata"]["name"]) <= 63
    # The names an earlier version gave its StatefulSet and headless Service, which the
    # controller deletes on upgrade: as that version made them.
    assert len(legacy_statefulset_name(ws)) <= 52
    assert legacy_headless_service_name(ws).endswith("-headless")
    for text in (legacy_statefulset_name(ws), legacy_headless_service_name(ws)):
        assert len(text) <= 63 and DNS_LABEL.match(text)


def test_operator_network_allowances_reach_every_runtime_container() -> None:
    """An in-cluster data server and a plain-HTTP registry are allowed by the operator's
    settings, passed to the fetch, tuner and adapter-pull containers alike."""
    from controller.workspace.workload import runtime_env

    settings = WorkloadSettings(fetch_allow_cidrs=("10.244.0.1/32",),
                                plain_http_registries=("10.244.0.1:5002",))
    env = {item["name"]: item["value"] for item in runtime_env(settings)}
    assert env["KAITO_FETCH_ALLOW_CIDRS"] == "10.244.0.1/32"
    assert env["KAITO_REGISTRY_PLAIN_HTTP"] == "10.244.0.1:5002"
    plain = {item["name"] for item in runtime_env(WorkloadSettings())}
    assert "KAITO_FETCH_ALLOW_CIDRS" not in plain and "KAITO_REGISTRY_PLAIN_HTTP" not in plain
