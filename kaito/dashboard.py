"""The Kaito Grafana dashboard, generated with Grafana's own builders (grafana-foundation-sdk).

The panels are data (``ROWS``: title, unit, PromQL, legend) so the observability test can
run every query against a live Prometheus; ``build_dashboard`` turns them into the
dashboard model with the SDK, and ``config_map`` wraps the JSON in the ConfigMap Grafana's
sidecar picks up (label ``grafana_dashboard: "1"``). Every metric name below is one the
code exports: the controller runtime (controller/metrics.py), the Workspace controller
(controller/workspace/metrics.py), the node provisioner (controller/provisioning/
metrics.py), the webhook (webhook/metrics.py), the tuning pod (runtime/progress.py) and
the inference server (runtime/serving/metrics.py). The workload pods' series carry
``namespace`` and ``workspace`` labels from the PodMonitors (config/prometheus/monitor.yaml).

``python -m kaito.dashboard --write`` regenerates config/prometheus/dashboard.yaml; a test
checks the committed file matches.
"""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

CONFIG_MAP_PATH = Path(__file__).resolve().parents[1] / "config" / "prometheus" / "dashboard.yaml"
UID = "kaito-operator"
# Grafana replaces this with a rate window suited to the scrape interval and zoom.
RATE = "$__rate_interval"
DATASOURCE = "${datasource}"


@dataclass(frozen=True)
class Query:
    expr: str
    legend: str


@dataclass(frozen=True)
class Panel:
    title: str
    unit: str
    queries: tuple[Query, ...]
    description: str = ""


def _q(expr: str, legend: str) -> tuple[Query, ...]:
    return (Query(expr, legend),)


def _p(quantile: float, metric: str, by: str) -> str:
    return (f"histogram_quantile({quantile}, sum by (le, {by}) "
            f"(rate({metric}_bucket[{RATE}])))")


ROWS: tuple[tuple[str, tuple[Panel, ...]], ...] = (
    ("Workspaces", (
        Panel("Workspaces by state", "short",
              _q("sum by (state) (kaito_workspaces)", "{{state}}")),
        Panel("Workspaces by preset", "short",
              _q("sum by (preset, mode) (kaito_workspaces)", "{{preset}} ({{mode}})")),
        Panel("Seconds from creation to each condition (mean)", "s", _q(
            "sum by (condition, mode) (kaito_workspace_condition_seconds_sum)"
            " / sum by (condition, mode) (kaito_workspace_condition_seconds_count)",
            "{{condition}} ({{mode}})"),
              "Mean over every transition since the controller started."),
        Panel("Seconds to each condition (p90, recent)", "s", _q(
            _p(0.9, "kaito_workspace_condition_seconds", "condition, mode"),
            "{{condition}} ({{mode}})")),
    )),
    ("Tuning", (
        Panel("Tuning progress", "percentunit", _q(
            "kaito_workspace_tuning_step / kaito_workspace_tuning_total_steps",
            "{{namespace}}/{{workspace}}")),
        Panel("Training loss", "none", _q("kaito_workspace_tuning_loss",
                                          "{{namespace}}/{{workspace}}")),
        Panel("Tuning ETA", "s", _q("kaito_workspace_tuning_eta_seconds",
                                    "{{namespace}}/{{workspace}}")),
        Panel("Training tokens/s", "short", _q(
            "sum by (namespace, workspace) (kaito_tuning_tokens_per_second)",
            "{{namespace}}/{{workspace}}"), "Reported by the tuning pod."),
        Panel("Tuning pod phase", "short", _q(
            "max by (namespace, workspace, kaito_tuning_phase) (kaito_tuning_phase) == 1",
            "{{namespace}}/{{workspace}}: {{kaito_tuning_phase}}")),
    )),
    ("Nodes", (
        Panel("Node claims by phase", "short",
              _q("sum by (phase) (kaito_nodeclaims)", "{{phase}}")),
        Panel("Seconds from claim to Ready (p90)", "s", _q(
            "histogram_quantile(0.9, sum by (le, backend) "
            "(kaito_nodeclaim_ready_seconds_bucket))", "{{backend}}"),
              "Over every claim since the provisioner started."),
        Panel("Provisioner cloud calls", "reqps", _q(
            f"sum by (backend, method, code) "
            f"(rate(kaito_provisioner_cloud_requests_total[{RATE}]))",
            "{{backend}} {{method}} {{code}}")),
    )),
    ("Controller", (
        Panel("Reconciles by result", "ops", _q(
            f"sum by (controller, result) (rate(controller_runtime_reconcile_total[{RATE}]))",
            "{{controller}} {{result}}")),
        Panel("Reconcile errors", "ops", _q(
            f"sum by (controller) (rate(controller_runtime_reconcile_errors_total[{RATE}]))",
            "{{controller}}")),
        Panel("Reconcile time (p99)", "s", _q(
            _p(0.99, "controller_runtime_reconcile_time_seconds", "controller"),
            "{{controller}}")),
        Panel("Work queue depth", "short",
              _q("sum by (name) (workqueue_depth)", "{{name}}")),
        Panel("Work queue wait (p99)", "s", _q(
            _p(0.99, "workqueue_queue_duration_seconds", "name"), "{{name}}")),
        Panel("Leader", "short", _q("max by (name) (leader_election_master_status)",
                                    "{{name}}"), "1 while some replica holds the lease."),
        Panel("API server requests", "reqps", _q(
            f"sum by (method, code) (rate(rest_client_requests_total[{RATE}]))",
            "{{method}} {{code}}")),
    )),
    ("Admission webhook", (
        Panel("Webhook latency (p99)", "s", _q(
            _p(0.99, "controller_runtime_webhook_latency_seconds", "webhook"),
            "{{webhook}}")),
        Panel("Webhook requests by code", "reqps", _q(
            f"sum by (webhook, code) "
            f"(rate(controller_runtime_webhook_requests_total[{RATE}]))",
            "{{webhook}} {{code}}")),
    )),
    ("Serving", (
        Panel("Generated tokens/s", "short", _q(
            f"sum by (namespace, workspace) "
            f"(rate(kaito_serving_generation_tokens_total[{RATE}]))",
            "{{namespace}}/{{workspace}}")),
        Panel("Time to first token (p90)", "s", _q(
            _p(0.9, "kaito_serving_time_to_first_token_seconds", "namespace, workspace"),
            "{{namespace}}/{{workspace}}")),
        Panel("Queued requests", "short", (
            Query("sum by (namespace, workspace) (kaito_serving_queue_depth)",
                  "{{namespace}}/{{workspace}} waiting"),
            Query("sum by (namespace, workspace) (kaito_serving_running_requests)",
                  "{{namespace}}/{{workspace}} running"))),
        Panel("Serving requests by code", "reqps", _q(
            f"sum by (namespace, workspace, code) "
            f"(rate(kaito_serving_requests_total[{RATE}]))",
            "{{namespace}}/{{workspace}} {{code}}")),
    )),
)


def queries() -> list[str]:
    """Every PromQL expression of the dashboard, as Grafana will send it (unexpanded)."""
    return [target["expr"] for panel in build_dashboard()["panels"]
            for target in panel.get("targets", [])]


def build_dashboard() -> dict[str, Any]:
    """The dashboard model (a JSON-ready dict) built with the SDK's builders."""
    from grafana_foundation_sdk.builders import dashboard, prometheus, timeseries
    from grafana_foundation_sdk.cog.encoder import JSONEncoder
    from grafana_foundation_sdk.models.dashboard import DataSourceRef

    source = DataSourceRef(type_val="prometheus", uid=DATASOURCE)
    board = (dashboard.Dashboard("Kaito").uid(UID)
             .description("Workspaces, tuning, node claims, controller, webhook and serving")
             .tags(["kaito"]).refresh("30s").time("now-3h", "now").timezone("browser")
             .with_variable(dashboard.DatasourceVariable("datasource").label("Data source")
                            .type("prometheus")))
    panel_id = 0
    for row_title, panels in ROWS:
        panel_id += 1
        board = board.with_row(dashboard.Row(row_title).id(panel_id))
        for panel in panels:
            panel_id += 1
            built = (timeseries.Panel().id(panel_id).title(panel.title).unit(panel.unit)
                     .datasource(source).height(8).span(8))
            if panel.description:
                built = built.description(panel.description)
            for index, query in enumerate(panel.queries):
                built = built.with_target(
                    prometheus.Dataquery().ref_id(chr(ord("A") + index)).expr(query.expr)
                    .legend_format(query.legend).datasource(source))
            board = board.with_panel(built)
    model: dict[str, Any] = json.loads(json.dumps(board.build(), cls=JSONEncoder))
    return model


def config_map() -> str:
    """The ConfigMap (YAML) that Grafana's dashboard sidecar loads."""
    body = json.dumps(build_dashboard(), indent=2, sort_keys=True) + "\n"
    document = {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": {"name": "kaito-dashboard", "namespace": "kaito-system",
                     "labels": {"grafana_dashboard": "1", "app.kubernetes.io/name": "kaito"}},
        "data": {"kaito.json": body},
    }
    header = ("# Generated by `python -m kaito.dashboard --write` from kaito/dashboard.py;"
              " do not edit.\n")
    return header + yaml.dump(document, Dumper=_BlockDumper, sort_keys=False, width=100)


class _BlockDumper(yaml.SafeDumper):
    """Writes multi-line strings as literal blocks, so the JSON reads as JSON in a diff."""


def _represent_str(dumper: yaml.SafeDumper, text: str) -> yaml.ScalarNode:
    style = "|" if "\n" in text else None
    return dumper.represent_scalar("tag:yaml.org,2002:str", text, style=style)


_BlockDumper.add_representer(str, _represent_str)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="kaito dashboard", description=__doc__)
    parser.add_argument("--write", action="store_true",
                        help=f"write {CONFIG_MAP_PATH.name} instead of printing it")
    args = parser.parse_args(argv)
    text = config_map()
    if args.write:
        CONFIG_MAP_PATH.write_text(text)
        print(CONFIG_MAP_PATH)
    else:
        sys.stdout.write(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
