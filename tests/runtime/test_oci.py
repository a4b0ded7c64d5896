"""Adapter artifacts against Debian's docker-registry with htpasswd basic auth."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from runtime.oci import (
    ANNOTATION_BASE_MODEL,
    ANNOTATION_DATASET_DIGEST,
    ANNOTATION_HYPERPARAMETERS,
    RegistryAuthError,
    RegistryError,
    build_annotations,
    pull_adapter,
    push_adapter,
)
from tests.log_lines import error_record
from tests.runtime.conftest import RegistryInfo, dockerconfigjson_for

pytestmark = pytest.mark.runtime

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture
def adapter_dir(tmp_path: Path) -> Path:
    folder = tmp_path / "adapter"
    folder.mkdir()
    generator = torch.Generator().manual_seed(0)
    save_file(
        {
            "base_model.model.layers.0.q_proj.lora_A.weight": torch.randn(8, 64, generator=generator),
            "base_model.model.layers.0.q_proj.lora_B.weight": torch.randn(64, 8, generator=generator),
        },
        str(folder / "adapter_model.safetensors"),
    )
    (folder / "adapter_config.json").write_text(
        json.dumps({"peft_type": "LORA", "r": 8, "lora_alpha": 16, "target_modules": ["q_proj"]})
    )
    return folder


def _annotations() -> dict[str, str]:
    return build_annotations(
        base_model="smollm2-135m-instruct",
        method="lora",
        dataset_digest="sha256:" + "ab" * 32,
        hyperparameters={"r": 8, "learning_rate": 0.002},
    )


def test_push_then_pull_by_digest_gives_identical_files(
    adapter_dir: Path, registry: RegistryInfo, tmp_path: Path
) -> None:
    reference = f"{registry.host}/team/adapter:0.0.1"
    digest = push_adapter(adapter_dir, reference, registry.dockerconfigjson, _annotations())
    assert digest.startswith("sha256:")
    pulled = pull_adapter(
        f"{registry.host}/team/adapter@{digest}", tmp_path / "pulled", registry.dockerconfigjson
    )
    assert sorted(p.name for p in pulled.files) == [
        "adapter_config.json", "adapter_model.safetensors",
    ]
    for path in pulled.files:
        assert path.read_bytes() == (adapter_dir / path.name).read_bytes()
    assert pulled.annotations[ANNOTATION_BASE_MODEL] == "smollm2-135m-instruct"
    assert pulled.annotations[ANNOTATION_DATASET_DIGEST] == "sha256:" + "ab" * 32
    assert json.loads(pulled.annotations[ANNOTATION_HYPERPARAMETERS])["r"] == 8
    # pulling by tag finds the same artifact
    again = pull_adapter(reference, tmp_path / "by-tag", registry.dockerconfigjson)
    assert (again.files[0].parent / "adapter_model.safetensors").read_bytes() == (
        adapter_dir / "adapter_model.safetensors"
    ).read_bytes()


def test_wrong_password_is_a_clear_error(adapter_dir: Path, registry: RegistryInfo) -> None:
    wrong = dockerconfigjson_for(registry.host, registry.user, registry.password + "x")
    with pytest.raises(RegistryAuthError) as failure:
        push_adapter(adapter_dir, f"{registry.host}/team/adapter:bad", wrong, _annotations())
    message = str(failure.value)
    assert f"registry {registry.host} rejected the credentials of user 'kaito'" in message
    assert "HTTP 401" in message and registry.password not in message


def test_secret_for_another_registry_and_unreachable_registry(
    adapter_dir: Path, registry: RegistryInfo
) -> None:
    other = dockerconfigjson_for("elsewhere.io", registry.user, registry.password)
    with pytest.raises(RegistryAuthError, match=f"no credentials for registry {registry.host}"):
        push_adapter(adapter_dir, f"{registry.host}/team/adapter:x", other, _annotations())
    closed = "127.0.0.1:9"  # discard port: nothing listens
    with pytest.raises(RegistryError, match="cannot reach registry 127.0.0.1:9"):
        push_adapter(adapter_dir, f"{closed}/team/adapter:x",
                     dockerconfigjson_for(closed, "u", "p"), _annotations())


def test_pull_of_missing_artifact_fails(registry: RegistryInfo, tmp_path: Path) -> None:
    with pytest.raises(RegistryError, match="pull of .*nothing-here"):
        pull_adapter(f"{registry.host}/team/nothing-here:1", tmp_path, registry.dockerconfigjson)


def test_sidecar_cli_pushes_after_the_sentinel(
    adapter_dir: Path, registry: RegistryInfo, tmp_path: Path
) -> None:
    secret = tmp_path / "config.json"
    secret.write_text(registry.dockerconfigjson)
    (adapter_dir / "fine_tuning_completed.txt").write_text("{}\n")
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    pushed = subprocess.run(
        [sys.executable, "-m", "runtime.oci", "push", "--dir", str(adapter_dir), "--reference",
         f"{registry.host}/team/cli:1", "--dockerconfigjson", str(secret),
         "--wait-for", str(adapter_dir / "fine_tuning_completed.txt")],
        capture_output=True, text=True, env=env, timeout=120, check=False,
    )
    assert pushed.returncode == 0, pushed.stderr
    reference = pushed.stdout.strip()
    assert reference.startswith(f"{registry.host}/team/cli@sha256:")
    pulled = subprocess.run(
        [sys.executable, "-m", "runtime.oci", "pull", "--reference", reference, "--dir",
         str(tmp_path / "out"), "--dockerconfigjson", str(secret)],
        capture_output=True, text=True, env=env, timeout=120, check=False,
    )
    assert pulled.returncode == 0, pulled.stderr
    assert (tmp_path / "out" / "adapter_config.json").read_bytes() == (
        adapter_dir / "adapter_config.json"
    ).read_bytes()
    wrong = tmp_path / "wrong.json"
    wrong.write_text(dockerconfigjson_for(registry.host, registry.user, "nope"))
    refused = subprocess.run(
        [sys.executable, "-m", "runtime.oci", "pull", "--reference", reference, "--dir",
         str(tmp_path / "x"), "--dockerconfigjson", str(wrong)],
        capture_output=True, text=True, env=env, timeout=120, check=False,
    )
    assert refused.returncode == 1
    error = error_record(refused.stderr)
    assert error["msg"] == "registry command failed" and error["command"] == "pull"
    assert "rejected the credentials" in error["error"]
