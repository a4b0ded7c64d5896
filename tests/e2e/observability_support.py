"""Helpers of the observability test (no tests here): Prometheus on loopback, its scrape
config (the loopback equivalent of config/prometheus/monitor.yaml), the alert rules as
promtool and Prometheus read them, and a stand-in inference pod.

The stand-in inference pod is the real serving application (routes, engine, metrics) with
the unit tests' deterministic fake model in place of torch: ``python -m
tests.e2e.observability_support --host H --port P``.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import re
import subprocess
import time
import urllib.parse
import urllib.request
from pathlib import Path
from typing import Any

import yaml

REPO = Path(__file__).resolve().parents[2]
ALERTS = REPO / "config" / "prometheus" / "alerts.yaml"
ALERT_TESTS = REPO / "config" / "prometheus" / "tests" / "alerts_test.yaml"
# The ServiceMonitor's tlsConfig.serverName (config/prometheus/monitor.yaml).
WEBHOOK_SERVER_NAME = "kaito-webhook.kaito-system.svc"


def rule_groups(*, summary_only: bool = False,
                for_seconds: dict[str, int] | None = None) -> dict[str, Any]:
    """The PrometheusRule's spec as a plain rule file.

    ``summary_only`` keeps only the templated summary annotation (what the promtool unit
    tests compare); ``for_seconds`` shortens the named alerts' ``for`` so they can fire
    within a test run against live data."""
    spec: dict[str, Any] = yaml.safe_load(ALERTS.read_text())["spec"]
    for group in spec["groups"]:
        for rule in group["rules"]:
            if summary_only:
                rule["annotations"] = {"summary": rule["annotations"]["summary"]}
            if for_seconds and rule.get("alert") in for_seconds:
                rule["for"] = f"{for_seconds[rule['alert']]}s"
    return spec


def scrape_config(jobs: dict[str, list[dict[str, Any]]], rule_file: Path,
                  *, webhook_ca_file: Path, interval_seconds: int = 1) -> dict[str, Any]:
    """``jobs``: job name -> static targets ({"targets": [...], "labels": {...}}).

    A job whose name contains ``webhook`` is scraped over HTTPS as its ServiceMonitor
    does: verified against the webhook's own CA (``ca.crt`` of its Secret), for the
    Service's DNS name."""
    scrape_configs = []
    for name, targets in jobs.items():
        job: dict[str, Any] = {"job_name": name, "metrics_path": "/metrics",
                               "static_configs": targets}
        if "webhook" in name:
            job["scheme"] = "https"
            job["tls_config"] = {"ca_file": str(webhook_ca_file),
                                 "server_name": WEBHOOK_SERVER_NAME}
        scrape_configs.append(job)
    return {"global": {"scrape_interval": f"{interval_seconds}s",
                       "evaluation_interval": f"{interval_seconds}s"},
            "rule_files": [str(rule_file)], "scrape_configs": scrape_configs}


class Prometheus:
    """Debian's prometheus on 127.0.0.1 with a throw-away TSDB."""

    def __init__(self, workdir: Path, port: int) -> None:
        self.workdir, self.port = workdir, port
        self.process: subprocess.Popen[bytes] | None = None
        self.url = f"http://127.0.0.1:{port}"

    def start(self, config: dict[str, Any]) -> None:
        (self.workdir / "prometheus.yml").write_text(yaml.safe_dump(config))
        log = open(self.workdir / "prometheus.log", "ab")  # noqa: SIM115 - owned by Popen
        self.process = subprocess.Popen(
            ["prometheus", f"--config.file={self.workdir / 'prometheus.yml'}",
             f"--storage.tsdb.path={self.workdir / 'data'}",
             f"--web.listen-address=127.0.0.1:{self.port}"],
            stdout=log, stderr=subprocess.STDOUT)
        log.close()
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            assert self.process.poll() is None, self.log_tail()
            try:
                with urllib.request.urlopen(f"{self.url}/-/ready", timeout=2) as reply:
                    if reply.status == 200:
                        return
            except OSError:
                time.sleep(0.3)
        raise AssertionError("prometheus did not become ready:\n" + self.log_tail())

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()

    def log_tail(self) -> str:
        path = self.workdir / "prometheus.log"
        return path.read_text()[-3000:] if path.exists() else ""

    def api(self, path: str, **params: str) -> Any:
        """GET /api/v1/<path>; the ``data`` of a success, AssertionError otherwise."""
        url = f"{self.url}/api/v1/{path}"
        if params:
            url += "?" + urllib.parse.urlencode(params)
        try:
            with urllib.request.urlopen(url, timeout=10) as reply:
                body = json.loads(reply.read())
        except urllib.error.HTTPError as error:  # 400 bad_data: the query did not parse
            body = json.loads(error.read())
        assert body.get("status") == "success", (path, params, body)
        return body["data"]

    def query(self, expr: str) -> list[dict[str, Any]]:
        data = self.api("query", query=expr)
        assert data["resultType"] == "vector", data
        return list(data["result"])

    def targets_up(self) -> dict[str, str]:
        """scrape URL -> health of every active target."""
        return {t["scrapeUrl"]: t["health"] for t in self.api("targets")["activeTargets"]}

    def firing(self) -> list[dict[str, Any]]:
        return [a for a in self.api("alerts")["alerts"] if a["state"] == "firing"]


def with_rate_window(expr: str, window: str = "1m") -> str:
    """A dashboard query as Grafana would send it: its template variables replaced."""
    return re.sub(r"\$__rate_interval|\$\{__rate_interval\}", window, expr)


async def _serve(host: str, port: int) -> None:
    from aiohttp import web

    from runtime.serving.app import create_app
    from runtime.serving.local import LocalBackend, LocalBackendOptions
    from runtime.serving.metrics import ServingMetrics
    from tests.unit.test_serving_fakes import FakeModel

    metrics = ServingMetrics()
    model = FakeModel(max_context_tokens=256, step_seconds=0.002)
    backend = LocalBackend(LocalBackendOptions(model="fake", max_batch_size=4, max_queue=8),
                           metrics, loader=lambda: model)
    runner = web.AppRunner(create_app(backend, metrics, default_max_tokens=16))
    await runner.setup()
    await web.TCPSite(runner, host, port).start()
    try:
        await asyncio.Event().wait()
    finally:
        await runner.cleanup()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="a stand-in inference pod")
    parser.add_argument("--host", required=True)
    parser.add_argument("--port", type=int, required=True)
    args = parser.parse_args(argv)
    asyncio.run(_serve(args.host, args.port))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
