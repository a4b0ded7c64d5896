"""Serving throughput: 16 concurrent clients vs one request at a time, same server, same run.

Starts ``python -m runtime.serving`` on loopback (or uses ``--url``), warms it up, then
1. baseline: ``--requests`` completions one after another;
2. load: ``--clients`` concurrent clients sharing the same number of requests per client;
while probing ``/health`` every 100 ms. Throughput is generated tokens per second (the
server's ``usage``), so answers of different lengths compare fairly. Prints one JSON
object: both throughputs, their ratio (goal ≥ 3), TTFT-free request latencies and
``/health`` latency percentiles during load.

    python benchmarks/serving_bench.py --model smollm2-135m-instruct
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import socket
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import httpx

REPO = Path(__file__).resolve().parents[1]
PROMPTS = [
    "Write a short story about a lighthouse keeper.",
    "Explain how a bicycle works.",
    "Describe a walk through a forest in autumn.",
    "What are the benefits of learning to cook?",
    "Tell me about the history of the printing press.",
    "Why do people keep gardens?",
    "Describe the life cycle of a butterfly.",
    "What makes a good friend?",
]


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


async def _wait_healthy(url: str, seconds: float) -> None:
    deadline = time.monotonic() + seconds
    async with httpx.AsyncClient(timeout=5) as client:
        while time.monotonic() < deadline:
            try:
                if (await client.get(url + "/health")).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            await asyncio.sleep(0.5)
    raise RuntimeError("server not healthy")


async def _one(client: httpx.AsyncClient, model: str, index: int, max_tokens: int) -> int:
    response = await client.post("/v1/chat/completions", json={
        "model": model,
        "messages": [{"role": "user", "content": PROMPTS[index % len(PROMPTS)]}],
        "max_tokens": max_tokens, "temperature": 0})
    response.raise_for_status()
    return int(response.json()["usage"]["completion_tokens"])


async def _probe_health(url: str, stop: asyncio.Event, latencies: list[float]) -> None:
    async with httpx.AsyncClient(base_url=url, timeout=30) as client:
        while not stop.is_set():
            started = time.perf_counter()
            response = await client.get("/health")
            latencies.append(time.perf_counter() - started)
            assert response.status_code == 200
            await asyncio.sleep(0.1)


async def _phase(url: str, model: str, clients: int, per_client: int, max_tokens: int
                 ) -> dict[str, Any]:
    health: list[float] = []
    stop = asyncio.Event()
    latencies: list[float] = []
    limits = httpx.Limits(max_connections=clients + 4)
    async with httpx.AsyncClient(base_url=url, timeout=600, limits=limits) as client:

        async def worker(worker_index: int) -> int:
            tokens = 0
            for k in range(per_client):
                started = time.perf_counter()
                tokens += await _one(client, model, worker_index * per_client + k, max_tokens)
                latencies.append(time.perf_counter() - started)
            return tokens

        probe = asyncio.create_task(_probe_health(url, stop, health), name="health-probe")
        started = time.perf_counter()
        counts = await asyncio.gather(*(worker(i) for i in range(clients)))
        elapsed = time.perf_counter() - started
        stop.set()
        await probe
    health_ms = sorted(h * 1000 for h in health)
    return {
        "clients": clients,
        "requests": clients * per_client,
        "generated_tokens": sum(counts),
        "seconds": round(elapsed, 2),
        "tokens_per_second": round(sum(counts) / elapsed, 2),
        "request_seconds_p50": round(statistics.median(latencies), 2),
        "health_ms_p50": round(health_ms[len(health_ms) // 2], 2),
        "health_ms_p99": round(health_ms[min(len(health_ms) - 1,
                                             int(len(health_ms) * 0.99))], 2),
        "health_ms_max": round(health_ms[-1], 2),
        "health_probes": len(health_ms),
    }


def _start_server(args: argparse.Namespace) -> tuple[str, subprocess.Popen[bytes]]:
    port = _free_port()
    command = [sys.executable, "-m", "runtime.serving", "--model", args.model,
               "--host", "127.0.0.1", "--port", str(port),
               "--max-batch-size", str(args.clients), "--served-model-name", "bench"]
    if args.torch_threads:
        command += ["--torch-threads", str(args.torch_threads)]
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    process = subprocess.Popen(command, cwd=REPO, env=env, stdout=subprocess.DEVNULL,
                               stderr=subprocess.DEVNULL)
    return f"http://127.0.0.1:{port}", process


async def _run(url: str, args: argparse.Namespace) -> dict[str, Any]:
    await _wait_healthy(url, 300)
    async with httpx.AsyncClient(base_url=url, timeout=600) as client:
        model = (await client.get("/v1/models")).json()["data"][0]["id"]
        await _one(client, model, 0, 4)  # warm-up
    baseline = await _phase(url, model, 1, args.requests, args.max_tokens)
    load = await _phase(url, model, args.clients, args.per_client, args.max_tokens)
    return {
        "max_tokens": args.max_tokens,
        "baseline": baseline,
        "concurrent": load,
        "throughput_ratio": round(load["tokens_per_second"] / baseline["tokens_per_second"], 2),
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="smollm2-135m-instruct")
    parser.add_argument("--url", help="use a running server instead of starting one")
    parser.add_argument("--clients", type=int, default=16)
    parser.add_argument("--per-client", type=int, default=2)
    parser.add_argument("--requests", type=int, default=4, help="baseline requests")
    parser.add_argument("--max-tokens", type=int, default=64)
    parser.add_argument("--torch-threads", type=int)
    args = parser.parse_args()
    process = None
    url = args.url
    if url is None:
        url, process = _start_server(args)
    try:
        result = asyncio.run(_run(url, args))
    finally:
        if process is not None:
            process.terminate()
            process.wait(30)
    print(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
