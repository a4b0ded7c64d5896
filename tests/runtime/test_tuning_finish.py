"""A job whose adapter is saved but not pushed only pushes on restart; a wrong password
in the push secret fails with exit code 3 and a clear message, and no sentinel."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from runtime.oci import ANNOTATION_METHOD, pull_adapter
from runtime.tuning.__main__ import EXIT_PUSH_FAILED, main
from tests.runtime.conftest import RegistryInfo, dockerconfigjson_for

pytestmark = pytest.mark.runtime


def _saved_job(tmp_path: Path) -> Path:
    output = tmp_path / "out"
    output.mkdir()
    (output / "adapter_config.json").write_text(json.dumps({"peft_type": "LORA", "r": 8}))
    (output / "adapter_model.safetensors").write_bytes(b"\0" * 64)
    (output / "training_result.json").write_text(json.dumps({
        "base_model": "smollm2-135m-instruct", "method": "lora",
        "dataset_digest": "sha256:" + "0" * 64, "hyperparameters": {"r": 8},
        "evaluation": {"before": {"loss": 3.0}, "after": {"loss": 1.0}},
    }))
    (tmp_path / "config.yaml").write_text("training_config: {}\n")
    (tmp_path / "data").mkdir()
    return output


def _args(tmp_path: Path, reference: str, secret: Path) -> list[str]:
    return ["--config", str(tmp_path / "config.yaml"), "--data-dir", str(tmp_path / "data"),
            "--output-dir", str(tmp_path / "out"), "--push-to", reference,
            "--push-secret", str(secret), "--log-format", "text"]


def test_wrong_password_then_fixed_secret_pushes_without_retraining(
    tmp_path: Path, registry: RegistryInfo, capsys: pytest.CaptureFixture[str]
) -> None:
    output = _saved_job(tmp_path)
    reference = f"{registry.host}/adapters/finish:1"
    secret = tmp_path / "secret.json"
    secret.write_text(dockerconfigjson_for(registry.host, registry.user, "wrong-password"))
    assert main(_args(tmp_path, reference, secret)) == EXIT_PUSH_FAILED
    err = capsys.readouterr().err
    assert f"registry {registry.host} rejected the credentials of user 'kaito'" in err
    assert not (output / "fine_tuning_completed.txt").exists()
    assert json.loads((output / "progress.json").read_text())["phase"] == "failed"

    secret.write_text(registry.dockerconfigjson)
    assert main(_args(tmp_path, reference, secret)) == 0
    sentinel = json.loads((output / "fine_tuning_completed.txt").read_text())
    assert sentinel["artifact"].startswith(f"{registry.host}/adapters/finish@sha256:")
    pulled = pull_adapter(sentinel["artifact"], tmp_path / "pulled", registry.dockerconfigjson)
    assert pulled.annotations[ANNOTATION_METHOD] == "lora"
    assert (tmp_path / "pulled" / "adapter_model.safetensors").read_bytes() == b"\0" * 64
    # Done jobs stay done: a third start exits 0 at once.
    assert main(_args(tmp_path, reference, secret)) == 0
