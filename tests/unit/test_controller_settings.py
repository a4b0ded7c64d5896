"""Settings (env prefix KAITO_, nested with __), CLI overrides and the entry point."""

from __future__ import annotations

from pathlib import Path

import pytest

from controller.__main__ import load_settings, main
from controller.settings import ControllerSettings

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
    assert "workers" in capsys.readouterr().out
    monkeypatch.setenv("KAITO_LEADER_ELECTION__RENEW_DEADLINE_SECONDS", "20")
    assert main([]) == 2
    assert "renew_deadline_seconds" in capsys.readouterr().out
