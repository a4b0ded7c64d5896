"""Benchmark: the admission webhook over TLS against a minimal aiohttp TLS handler.

Serves, in this process, the real webhook app and a reference app that only parses the
AdmissionReview and answers ``allowed`` (the least any Python webhook must do), both
with the same self-made certificate on 127.0.0.1. A load generator in another process
(benchmarks/loadgen.py) posts the seed workspace's AdmissionReview to /validate and
/mutate and to the reference, ``--concurrency`` connections, ``--requests`` each.
Rounds alternate reference and ours so drift in background load hits both alike, and
each round rotates their order (so no target always runs in the same place); the median
round is reported. Rows: p99 latency (goal ≤ 1.5× the reference) and requests/s (goal
≥ 0.7×) of each endpoint, and the servers' CPU time per request (no goal: it says whether
a low throughput ratio is our cost or the machine's noise).

    python -m benchmarks.webhook_latency --requests 20000 --concurrency 64 [--json out.json]
"""

from __future__ import annotations

import argparse
import asyncio
import datetime
import json
import statistics
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

import yaml
from aiohttp import web

from benchmarks.common import Goal, Row, row, write_result
from presets.catalog import load_catalog
from webhook.certs import next_bundle
from webhook.metrics import WebhookMetrics
from webhook.serve import TlsState
from webhook.server import MUTATE_PATH, VALIDATE_PATH, build_app

REPO = Path(__file__).resolve().parents[1]
SEED: dict[str, Any] = yaml.safe_load(
    (REPO / "examples/fine-tuning/kaito_workspace_tuning_phi_3.yaml").read_text())
REFERENCE_NAME = "minimal aiohttp TLS handler"
LOADGEN_WARMUP = 200


class _NoConfigMaps:
    async def read(self, namespace: str, name: str) -> dict[str, str] | None:
        return None


def review(obj: dict[str, Any]) -> bytes:
    return json.dumps({
        "apiVersion": "admission.k8s.io/v1", "kind": "AdmissionReview",
        "request": {"uid": str(uuid.uuid4()), "operation": "CREATE", "namespace": "default",
                    "kind": {"group": "kaito.sh", "version": "v1alpha1", "kind": "Workspace"},
                    "object": obj},
    }).encode()


async def _allow(request: web.Request) -> web.Response:
    """The reference: parse the review, echo its uid, allow."""
    document = await request.json()
    return web.json_response({
        "apiVersion": "admission.k8s.io/v1", "kind": "AdmissionReview",
        "response": {"uid": document["request"]["uid"], "allowed": True}})


def reference_app() -> web.Application:
    app = web.Application()
    app.router.add_post("/allow", _allow)
    return app


async def _serve(app: web.Application, tls: TlsState) -> tuple[web.AppRunner, int]:
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0, ssl_context=tls.context)
    await site.start()
    return runner, site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]


async def load(url: str, body_path: Path, cafile: Path, requests: int,
               concurrency: int) -> dict[str, float]:
    """One run of the load generator in a child process."""
    child = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "benchmarks.loadgen", "--url", url, "--body", str(body_path),
        "--cafile", str(cafile), "--requests", str(requests),
        "--concurrency", str(concurrency), "--warmup", str(LOADGEN_WARMUP), cwd=REPO, stdout=asyncio.subprocess.PIPE)
    stdout, _ = await child.communicate()
    if child.returncode != 0:
        raise RuntimeError(f"load generator failed (exit {child.returncode}) on {url}")
    result: dict[str, float] = json.loads(stdout.decode().strip().splitlines()[-1])
    return result


async def load_measuring_cpu(url: str, body_path: Path, cafile: Path, requests: int,
                             concurrency: int) -> dict[str, float]:
    """``load``, plus the CPU time this process (the servers; the load generator is a
    child) spent per answered request, warm-up requests and TLS handshakes included. It
    is what a request costs the server, and is less sensitive than requests/s to whether
    the server or the load generator gets the busier core of a shared machine."""
    started = time.process_time()
    result = await load(url, body_path, cafile, requests, concurrency)
    answered = requests + max(LOADGEN_WARMUP, concurrency)
    result["server_cpu_us"] = round(1e6 * (time.process_time() - started) / answered, 1)
    return result


def round_order(names: list[str], round_index: int) -> list[str]:
    """The phases of one round, rotated by one place each round: a phase's position (the
    first after a loaded round, the one after the reference) changes its numbers on a
    shared machine, so over len(names) rounds every target takes every position once."""
    shift = round_index % len(names)
    return names[shift:] + names[:shift]


def _median_round(rounds: list[dict[str, float]]) -> dict[str, float]:
    return {key: round(statistics.median(r[key] for r in rounds), 3)
            for key in ("p50_ms", "p99_ms", "requests_per_second", "server_cpu_us")}


async def measure(requests: int, concurrency: int, rounds: int) -> dict[str, Any]:
    now = datetime.datetime.now(datetime.UTC)
    bundle = next_bundle(None, dns_names=["localhost"], ip_addresses=["127.0.0.1"], now=now,
                         ca_valid_days=1, cert_valid_days=1,
                         renew_before=datetime.timedelta(0))
    assert bundle is not None
    tls = TlsState()
    with tempfile.TemporaryDirectory() as workdir:
        folder = Path(workdir)
        (folder / "certs").mkdir()
        await tls.load_bundle(bundle, folder / "certs")
        cafile = folder / "ca.pem"
        cafile.write_bytes(bundle.ca.cert_pem)
        body = folder / "review.json"
        body.write_bytes(review(SEED))
        ours, our_port = await _serve(
            build_app(load_catalog(), _NoConfigMaps(), metrics=WebhookMetrics()), tls)
        reference, reference_port = await _serve(reference_app(), tls)
        targets = {"reference": f"https://127.0.0.1:{reference_port}/allow",
                   "validate": f"https://127.0.0.1:{our_port}{VALIDATE_PATH}",
                   "mutate": f"https://127.0.0.1:{our_port}{MUTATE_PATH}"}
        runs: dict[str, list[dict[str, float]]] = {name: [] for name in targets}
        try:
            for round_index in range(rounds):
                for name in round_order(list(targets), round_index):
                    runs[name].append(await load_measuring_cpu(targets[name], body, cafile,
                                                               requests, concurrency))
        finally:
            await ours.cleanup()
            await reference.cleanup()
    return {"requests": requests, "concurrency": concurrency, "rounds": rounds,
            "median": {name: _median_round(r) for name, r in runs.items()}, "runs": runs}


def rows(details: dict[str, Any]) -> list[Row]:
    median = details["median"]
    reference = median["reference"]
    result = []
    for endpoint in ("validate", "mutate"):
        ours = median[endpoint]
        result.append(row("webhook", f"/{endpoint} p99 latency", "ms", ours["p99_ms"],
                          reference["p99_ms"], REFERENCE_NAME, Goal("<=", 1.5)))
        result.append(row("webhook", f"/{endpoint} p50 latency", "ms", ours["p50_ms"],
                          reference["p50_ms"], REFERENCE_NAME))
        result.append(row("webhook", f"/{endpoint} throughput", "req/s",
                          ours["requests_per_second"], reference["requests_per_second"],
                          REFERENCE_NAME, Goal(">=", 0.7)))
        result.append(row("webhook", f"/{endpoint} server CPU per request", "µs",
                          ours["server_cpu_us"], reference["server_cpu_us"], REFERENCE_NAME))
    return result


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=20000)
    parser.add_argument("--concurrency", type=int, default=64)
    parser.add_argument("--rounds", type=int, default=1)
    parser.add_argument("--json", type=Path, help="write rows and measurements here")
    args = parser.parse_args()
    details = asyncio.run(measure(args.requests, args.concurrency, args.rounds))
    write_result(args.json, rows(details), details)
    return 0


if __name__ == "__main__":
    sys.exit(main())
