"""The operator's Deployments as pods will really run them (seen on the real-node tier)."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

MANAGER = Path(__file__).resolve().parents[2] / "config" / "manager"


@pytest.mark.parametrize("name", ["controller.yaml", "webhook.yaml", "provisioner.yaml"])
def test_no_service_environment_variables_reach_the_settings(name: str) -> None:
    """A Service named kaito-webhook injects KAITO_WEBHOOK_PORT=tcp://...; with the
    KAITO_ settings prefix that crashed the webhook pod on start."""
    deployments = [d for d in yaml.safe_load_all((MANAGER / name).read_text())
                   if d and d.get("kind") == "Deployment"]
    assert deployments
    for deployment in deployments:
        assert deployment["spec"]["template"]["spec"]["enableServiceLinks"] is False
