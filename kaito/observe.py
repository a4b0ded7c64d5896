"""The demo's window on the operator: Debian's Prometheus on loopback scraping the
controller and provisioner the demo started, one query answered, and the dashboard's
panels drawn from that live data into a PNG a person can open.

The scrape config is the loopback equivalent of config/prometheus/monitor.yaml (static
targets instead of Kubernetes discovery); the panels are the generated dashboard's
(kaito.dashboard), so the picture shows exactly what Grafana would.
"""

from __future__ import annotations

import json
import math
import shutil
import subprocess
import time
import urllib.parse
import urllib.request
from pathlib import Path
from typing import Any

import yaml

RATE_WINDOW = "1m"


def prometheus_available() -> bool:
    return shutil.which("prometheus") is not None


def write_config(path: Path, targets: dict[str, str], interval_seconds: int = 2) -> None:
    """``targets``: job name -> host:port serving /metrics over HTTP."""
    config = {
        "global": {"scrape_interval": f"{interval_seconds}s",
                   "evaluation_interval": f"{interval_seconds}s"},
        "scrape_configs": [{"job_name": job, "static_configs": [{"targets": [address]}]}
                           for job, address in sorted(targets.items())],
    }
    path.write_text(yaml.safe_dump(config))


def start_prometheus(workdir: Path, log_path: Path, port: int,
                     targets: dict[str, str]) -> subprocess.Popen[bytes]:
    """Start ``prometheus`` on 127.0.0.1:``port`` in its own session; wait until ready."""
    workdir.mkdir(parents=True, exist_ok=True)
    write_config(workdir / "prometheus.yml", targets)
    with log_path.open("ab") as log:
        process = subprocess.Popen(
            ["prometheus", f"--config.file={workdir / 'prometheus.yml'}",
             f"--storage.tsdb.path={workdir / 'data'}",
             f"--web.listen-address=127.0.0.1:{port}"],
            stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"prometheus exited; see {log_path}")
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/-/ready", timeout=2):
                return process
        except OSError:
            time.sleep(0.3)
    raise TimeoutError(f"prometheus not ready in 30 s; see {log_path}")


def api(url: str, path: str, **params: str) -> Any:
    """GET ``/api/v1/<path>``; the ``data`` of the answer."""
    query = urllib.parse.urlencode(params)
    with urllib.request.urlopen(f"{url}/api/v1/{path}?{query}", timeout=10) as reply:
        body = json.loads(reply.read())
    if body.get("status") != "success":
        raise RuntimeError(f"prometheus: {body}")
    return body["data"]


def query(url: str, expr: str) -> list[dict[str, Any]]:
    return list(api(url, "query", query=expr)["result"])


def _legend(template: str, labels: dict[str, str]) -> str:
    text = template
    for key, value in labels.items():
        text = text.replace("{{" + key + "}}", value)
    return text if "{{" not in text else ", ".join(f"{k}={v}" for k, v in labels.items())


def render_dashboard(url: str, out: Path, minutes: float = 5.0) -> int:
    """Draw every dashboard panel with data over the last ``minutes`` into ``out``;
    returns how many panels had data."""
    import matplotlib

    matplotlib.use("Agg")  # no display
    import matplotlib.pyplot as plt

    from kaito.dashboard import ROWS

    end = time.time()
    start = end - minutes * 60
    drawn: list[tuple[str, list[tuple[str, list[float], list[float]]]]] = []
    for _, panels in ROWS:
        for panel in panels:
            series: list[tuple[str, list[float], list[float]]] = []
            for target in panel.queries:
                expr = target.expr.replace("$__rate_interval", RATE_WINDOW)
                result = api(url, "query_range", query=expr, start=str(start), end=str(end),
                             step="2")["result"]
                for item in result:
                    points = [(float(t) - end, float(v)) for t, v in item["values"]
                              if not math.isnan(float(v))]
                    if points:
                        series.append((_legend(target.legend, item["metric"]),
                                       [p[0] for p in points], [p[1] for p in points]))
            if series:
                drawn.append((panel.title, series))
    if not drawn:
        return 0
    columns = 3
    rows = math.ceil(len(drawn) / columns)
    figure, axes = plt.subplots(rows, columns, figsize=(15, 3.2 * rows), squeeze=False)
    for index, axis in enumerate(axes.flat):
        if index >= len(drawn):
            axis.set_visible(False)
            continue
        title, series = drawn[index]
        for legend, xs, ys in series[:8]:
            axis.plot(xs, ys, label=legend[:40])
        axis.set_title(title, fontsize=10)
        axis.set_xlabel("seconds ago", fontsize=8)
        axis.tick_params(labelsize=7)
        axis.legend(fontsize=6, loc="upper left")
    figure.suptitle("Kaito dashboard panels (live data from the demo's Prometheus)")
    figure.tight_layout()
    figure.savefig(out, dpi=80)
    plt.close(figure)
    return len(drawn)
