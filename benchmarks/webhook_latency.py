"""Benchmark: admission latency and throughput of the webhook over HTTPS.

Serves the real aiohttp app with a self-made certificate on 127.0.0.1, then posts
AdmissionReviews (the seed workspace, a denied one, and a mutate) with a fixed number of
concurrent clients, and prints p50/p99 latency and requests per second for each.

    python -m benchmarks.webhook_latency --requests 2000 --concurrency 16
"""

from __future__ import annotations

import argparse
import asyncio
import datetime
import json
import ssl
import statistics
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

import aiohttp
import yaml
from aiohttp import web

from presets.catalog import load_catalog
from webhook.certs import next_bundle
from webhook.metrics import WebhookMetrics
from webhook.serve import TlsState
from webhook.server import MUTATE_PATH, VALIDATE_PATH, build_app

REPO = Path(__file__).resolve().parents[1]
SEED: dict[str, Any] = yaml.safe_load(
    (REPO / "examples/fine-tuning/kaito_workspace_tuning_phi_3.yaml").read_text())


class _NoConfigMaps:
    async def read(self, namespace: str, name: str) -> dict[str, str] | None:
        return None


def _review(obj: dict[str, Any]) -> bytes:
    return json.dumps({
        "apiVersion": "admission.k8s.io/v1", "kind": "AdmissionReview",
        "request": {"uid": str(uuid.uuid4()), "operation": "CREATE", "namespace": "default",
                    "object": obj},
    }).encode()


async def _run(path: str, body: bytes, url: str, ssl_context: ssl.SSLContext, requests: int,
               concurrency: int) -> dict[str, float]:
    latencies: list[float] = []
    queue: asyncio.Queue[int] = asyncio.Queue()
    for index in range(requests):
        queue.put_nowait(index)
    connector = aiohttp.TCPConnector(ssl=ssl_context, limit=concurrency)
    async with aiohttp.ClientSession(connector=connector) as session:

        async def worker() -> None:
            while not queue.empty():
                queue.get_nowait()
                started = time.perf_counter()
                async with session.post(url + path, data=body,
                                        headers={"Content-Type": "application/json"}) as resp:
                    await resp.read()
                    assert resp.status == 200
                latencies.append(time.perf_counter() - started)

        started = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(concurrency)))
        elapsed = time.perf_counter() - started
    latencies.sort()
    return {
        "p50_ms": 1000 * statistics.median(latencies),
        "p99_ms": 1000 * latencies[int(0.99 * (len(latencies) - 1))],
        "requests_per_second": requests / elapsed,
    }


async def main(requests: int, concurrency: int) -> None:
    now = datetime.datetime.now(datetime.UTC)
    bundle = next_bundle(None, dns_names=["localhost"], ip_addresses=["127.0.0.1"], now=now,
                         ca_valid_days=1, cert_valid_days=1,
                         renew_before=datetime.timedelta(0))
    assert bundle is not None
    tls = TlsState()
    with tempfile.TemporaryDirectory() as cert_dir:
        await tls.load_bundle(bundle, Path(cert_dir))
        runner = web.AppRunner(build_app(load_catalog(), _NoConfigMaps(),
                                         metrics=WebhookMetrics()), access_log=None)
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", 0, ssl_context=tls.context)
        await site.start()
        port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
        client_context = ssl.create_default_context(cadata=bundle.ca.cert_pem.decode())
        url = f"https://127.0.0.1:{port}"
        denied = {**SEED, "tuning": {**SEED["tuning"], "method": "full"}}
        cases = [("validate seed (allowed)", VALIDATE_PATH, _review(SEED)),
                 ("validate invalid (denied)", VALIDATE_PATH, _review(denied)),
                 ("mutate seed (patch)", MUTATE_PATH, _review(SEED))]
        try:
            for name, path, body in cases:
                await _run(path, body, url, client_context, min(200, requests), concurrency)
                result = await _run(path, body, url, client_context, requests, concurrency)
                print(f"{name:28s} p50 {result['p50_ms']:6.2f} ms  p99 {result['p99_ms']:6.2f} ms"
                      f"  {result['requests_per_second']:7.0f} req/s")
        finally:
            await runner.cleanup()


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--requests", type=int, default=2000)
    parser.add_argument("--concurrency", type=int, default=16)
    args = parser.parse_args()
    asyncio.run(main(args.requests, args.concurrency))
