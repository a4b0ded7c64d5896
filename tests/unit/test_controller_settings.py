"""Settings (env prefix KAITO_, nested with __), CLI overrides and the entry point."""

from __future__ import annotations

import datetime
import json
import logging
import os
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from controller.__main__ import load_settings, main
from controller.kube import KubeClient
from controller.settings import ControllerSettings
from crds.logs import JsonFormatter
from tests.log_lines import error_record

pytestmark = pytest.mark.unit


def test_defaults_match_controller_runtime() -> None:
    settings = ControllerSettings()
    election = settings.leader_election
    assert (election.lease_duration_seconds, election.renew_deadline_seconds,
            election.retry_period_seconds) == (15, 10, 2.0)
    assert election.enabled and election.identity
    assert ControllerSettings().leader_election.identity != election.identity


def test_environment_with_prefix_and_nesting(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("KAITO_WORKERS", "8")
    monkeypatch.setenv("KAITO_LEADER_ELECTION__ENABLED", "false")
    monkeypatch.setenv("KAITO_SERVER__PORT", "9090")
    monkeypatch.setenv("KAITO_KUBE__KUBECONFIG", "/tmp/kc")
    settings = ControllerSettings()
    assert settings.workers == 8
    assert not settings.leader_election.enabled
    assert settings.server.port == 9090
    assert settings.kube.kubeconfig == Path("/tmp/kc")


def test_flags_override_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("KAITO_WORKERS", "8")
    settings = load_settings(["--workers", "3", "--no-leader-elect", "--namespace", "team-a",
                              "--identity", "me", "--port", "0"])
    assert settings.workers == 3
    assert not settings.leader_election.enabled
    assert settings.watch_namespace == "team-a"
    assert settings.leader_election.identity == "me"
    assert settings.server.port == 0


def test_bad_settings_are_rejected_with_exit_code_2(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["--workers", "0"]) == 2
    error = error_record(capsys.readouterr().err)
    assert error["msg"] == "invalid settings" and "workers" in error["error"]
    monkeypatch.setenv("KAITO_LEADER_ELECTION__RENEW_DEADLINE_SECONDS", "20")
    assert main([]) == 2
    assert "renew_deadline_seconds" in error_record(capsys.readouterr().err)["error"]


def write_self_signed_ca(path: Path) -> None:
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "test-ca")])
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder().subject_name(name).issuer_name(name)
        .public_key(key.public_key()).serial_number(x509.random_serial_number())
        .not_valid_before(now).not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))


async def test_in_cluster_client_reads_the_mounted_service_account(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("KUBERNETES_SERVICE_HOST", "10.96.0.1")
    monkeypatch.setenv("KUBERNETES_SERVICE_PORT", "443")
    token, ca = tmp_path / "token", tmp_path / "ca.crt"
    token.write_text("projected-token-1")
    write_self_signed_ca(ca)
    assert ControllerSettings().kube.is_in_cluster
    async with KubeClient.in_cluster(token_file=token, ca_file=ca) as client:
        assert client.server == "https://10.96.0.1:443"
        auth = await client._api.configuration.auth_settings()
        assert auth["BearerToken"]["value"] == "Bearer projected-token-1"
        token.write_text("projected-token-2")
        os.utime(token, ns=(1, 1))  # a different mtime, as the kubelet's atomic swap gives
        assert client.refresh_credentials()
        auth = await client._api.configuration.auth_settings()
        assert auth["BearerToken"]["value"] == "Bearer projected-token-2"
        assert not client.refresh_credentials(), "unchanged file: nothing to do"


def test_json_logs_carry_extra_fields_as_data() -> None:
    record = logging.makeLogRecord({
        "name": "controller.informer", "levelname": "WARNING", "levelno": logging.WARNING,
        "msg": "watch failed, reconnecting", "informer": "configmaps/*", "failures": 3,
    })
    entry = json.loads(JsonFormatter().format(record))
    assert entry["msg"] == "watch failed, reconnecting"
    assert entry["level"] == "warning" and entry["logger"] == "controller.informer"
    assert entry["informer"] == "configmaps/*" and entry["failures"] == 3
    assert "args" not in entry and "levelno" not in entry


def test_claim_retry_backoff_comes_from_the_environment(monkeypatch: pytest.MonkeyPatch
                                                        ) -> None:
    assert (ControllerSettings().workspace.claim_retry_base_seconds,
            ControllerSettings().workspace.claim_retry_max_seconds) == (10.0, 600.0)
    monkeypatch.setenv("KAITO_WORKSPACE__CLAIM_RETRY_BASE_SECONDS", "2")
    monkeypatch.setenv("KAITO_WORKSPACE__CLAIM_RETRY_MAX_SECONDS", "8")
    workspace = ControllerSettings().workspace
    assert (workspace.claim_retry_base_seconds, workspace.claim_retry_max_seconds) == (2, 8)
    monkeypatch.setenv("KAITO_WORKSPACE__CLAIM_RETRY_MAX_SECONDS", "1")
    with pytest.raises(ValueError, match="claim_retry_max_seconds"):
        ControllerSettings()


def test_the_provisioner_rejects_bad_settings_with_a_log_record(
    capsys: pytest.CaptureFixture[str]
) -> None:
    from controller.provisioning.__main__ import main as provisioner_main

    assert provisioner_main(["--backend", "local", "--workers", "0"]) == 2
    error = error_record(capsys.readouterr().err)
    assert error["msg"] == "invalid settings" and "workers" in error["error"]
