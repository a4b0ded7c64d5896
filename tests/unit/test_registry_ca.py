"""Registry CA bundles from the operator's ConfigMap to the pods that push or pull.

The key scheme (one source of truth for controller and runtime), the workspace's copy of
the ConfigMap, and where the builders mount it: the tuning container that pushes, the
adapter pull init containers, nowhere else.
"""

from __future__ import annotations

from typing import Any

import pytest

from controller.settings import ControllerSettings
from controller.workspace.inference import AdapterMount, build_inference_workload
from controller.workspace.registry_ca import (
    build_registry_ca_copy,
    bundle_keys,
    copy_name,
    uses_registry,
)
from controller.workspace.workload import owner_reference
from crds.registry_ca import ENV_CA_DIR, MOUNT_DIR, ca_keys, registry_of_key
from tests.unit.test_workspace_builders import (
    PVC,
    REVISION,
    SETTINGS,
    assert_valid_pod_template,
    container,
    inference_workspace,
    pod,
    preset,
    seed,
    sku,
    tuning_job,
)

PEM = "-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----\n"
SOURCE = {"apiVersion": "v1", "kind": "ConfigMap",
          "metadata": {"name": "kaito-registry-ca", "namespace": "kaito-system"},
          "data": {"10.0.0.5_5000.crt": PEM, "registry.example.com.crt": PEM,
                   "README": "not a bundle"}}


@pytest.mark.parametrize(("host", "keys"), [
    ("10.0.0.5:5000", ("10.0.0.5_5000.crt",)),
    ("registry.example.com", ("registry.example.com_443.crt", "registry.example.com.crt")),
    ("Registry.Example.com:443", ("registry.example.com_443.crt", "registry.example.com.crt")),
])
def test_registry_keys_name_host_and_port(host: str, keys: tuple[str, ...]) -> None:
    assert ca_keys(host) == keys
    assert registry_of_key(keys[-1]) == host.lower().removesuffix(":443")


def test_keys_outside_the_scheme_are_told_apart() -> None:
    assert registry_of_key("README") is None
    assert registry_of_key("host_99999.crt") is None
    assert registry_of_key("-bad.crt") is None
    with pytest.raises(ValueError, match="IPv6"):
        ca_keys("[::1]:5000")
    assert bundle_keys(SOURCE) == (["10.0.0.5_5000.crt", "registry.example.com.crt"],
                                   ["README"])


def test_the_copy_holds_the_bundles_and_is_owned_by_the_workspace() -> None:
    ws = seed()
    copy = build_registry_ca_copy(ws, SOURCE)
    assert copy is not None
    assert copy["metadata"]["name"] == copy_name(ws) == "workspace-tuning-phi-3-registry-ca"
    assert copy["metadata"]["namespace"] == "default"
    assert copy["metadata"]["ownerReferences"] == [owner_reference(ws)]
    assert copy["data"] == {"10.0.0.5_5000.crt": PEM, "registry.example.com.crt": PEM}
    assert build_registry_ca_copy(ws, None) is None
    assert build_registry_ca_copy(ws, {"data": {"README": "x"}}) is None


def test_which_workspaces_use_a_registry() -> None:
    assert uses_registry(seed())  # pushes its adapter
    assert not uses_registry(seed(output={"volumeSource": PVC}))
    assert not uses_registry(inference_workspace())
    assert uses_registry(inference_workspace(adapters=[
        {"source": {"name": "a", "image": "r.io/a:1"}}]))


def _ca_mount(c: dict[str, Any]) -> tuple[bool, bool]:
    mounted = any(m["mountPath"] == MOUNT_DIR and m["readOnly"] for m in c["volumeMounts"])
    env = {"name": ENV_CA_DIR, "value": MOUNT_DIR} in c.get("env", [])
    return mounted, env


def test_the_tuning_container_that_pushes_gets_the_bundles() -> None:
    ws = seed()
    assert ws.tuning is not None and ws.tuning.preset is not None
    from controller.workspace.tuning import build_tuning_job

    job = build_tuning_job(ws, preset(ws.tuning.preset.name), sku(), settings=SETTINGS,
                           revision=REVISION, config_map_name="cfg",
                           registry_ca="workspace-tuning-phi-3-registry-ca")
    assert_valid_pod_template(job, "Job")
    volumes = {v["name"]: v for v in pod(job)["volumes"]}
    assert volumes["registry-ca"]["configMap"] == {"name": "workspace-tuning-phi-3-registry-ca"}
    assert _ca_mount(container(job, "tuner")) == (True, True)
    assert _ca_mount(container(job, "fetch-data")) == (False, False)  # HTTP(S) data, no registry
    # Without a copy nothing is mounted.
    plain = tuning_job(ws)
    assert "registry-ca" not in {v["name"] for v in pod(plain)["volumes"]}
    assert _ca_mount(container(plain, "tuner")) == (False, False)


def test_only_the_adapter_pulls_of_a_serving_pod_get_the_bundles() -> None:
    ws = inference_workspace(adapters=[{"source": {"name": "a", "image": "r.io/a:1"}}])
    deployment = build_inference_workload(
        ws, preset("phi-3-mini-4k-instruct"), sku(), settings=SETTINGS, revision=REVISION,
        replicas=1, adapters=[AdapterMount(name="a", image="r.io/a:1")],
        registry_ca="workspace-phi-3-registry-ca")
    assert_valid_pod_template(deployment, "Deployment")
    assert _ca_mount(container(deployment, "pull-adapter-0")) == (True, True)
    assert _ca_mount(container(deployment, "inference")) == (False, False)
    assert _ca_mount(container(deployment, "fetch-model")) == (False, False)
    # No image adapters: no pull, no CA volume.
    none = build_inference_workload(
        ws, preset("phi-3-mini-4k-instruct"), sku(), settings=SETTINGS, revision=REVISION,
        replicas=1, adapters=[], registry_ca="workspace-phi-3-registry-ca")
    assert "registry-ca" not in {v["name"] for v in pod(none)["volumes"]}


def test_the_setting_names_the_configmap(monkeypatch: pytest.MonkeyPatch) -> None:
    assert ControllerSettings().workspace.registry_ca_config_map is None
    monkeypatch.setenv("KAITO_WORKSPACE__REGISTRY_CA_CONFIG_MAP", "kaito-registry-ca")
    assert ControllerSettings().workspace.registry_ca_config_map == "kaito-registry-ca"
