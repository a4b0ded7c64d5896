"""The demo's Prometheus config and legends (kaito.observe), without starting anything."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from kaito.observe import _legend, write_config

pytestmark = pytest.mark.unit


def test_scrape_config_has_one_job_per_target(tmp_path: Path) -> None:
    write_config(tmp_path / "p.yml", {"controller": "127.0.0.1:8080",
                                      "provisioner": "127.0.0.1:8081"})
    config = yaml.safe_load((tmp_path / "p.yml").read_text())
    assert config["global"]["scrape_interval"] == "2s"
    assert [job["job_name"] for job in config["scrape_configs"]] == ["controller", "provisioner"]
    assert config["scrape_configs"][0]["static_configs"] == [{"targets": ["127.0.0.1:8080"]}]


def test_legend_fills_labels_or_lists_them() -> None:
    assert _legend("{{state}} ({{mode}})", {"state": "Ready", "mode": "tuning"}) == \
        "Ready (tuning)"
    assert _legend("{{missing}}", {"a": "1"}) == "a=1"
