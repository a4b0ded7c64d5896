"""Open-loop HTTP load at a fixed rate, as its own process: latency at a steady request
rate rather than the most a server can take (benchmarks/loadgen.py measures that).

Starts one POST every 1/``--rate`` seconds whether or not earlier ones have been answered
(so a slow server meets the same arrivals, as a webhook meets an apiserver's), for
``--seconds`` or until SIGTERM/SIGINT, then prints one JSON object: requests answered,
p50/p99/max latency in milliseconds. Every answer must be HTTP 200. ``--samples`` adds
every request's wall-clock send time and latency, for callers that split the run into
windows (benchmarks/controller_bench.py does).

    python -m benchmarks.paced_load --url https://127.0.0.1:9443/validate --body review.json \
        --cafile ca.pem --rate 100 --seconds 20
"""

from __future__ import annotations

import argparse
import asyncio
import json
import signal
import ssl
import time
from pathlib import Path
from typing import Any

import aiohttp

from benchmarks.common import percentile


async def run(url: str, body: bytes, cafile: str | None, rate: float, seconds: float,
              warmup: int = 20, with_samples: bool = False) -> dict[str, Any]:
    context = ssl.create_default_context(cafile=cafile) if cafile else False
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    latencies: list[float] = []
    samples: list[tuple[float, float]] = []
    failures: list[str] = []
    headers = {"Content-Type": "application/json"}
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(ssl=context)) as session:

        async def one(measured: bool) -> None:
            sent_at, started = time.time(), time.perf_counter()
            try:
                async with session.post(url, data=body, headers=headers) as response:
                    await response.read()
                    if response.status != 200:
                        failures.append(f"HTTP {response.status}")
                        return
            except aiohttp.ClientError as error:
                failures.append(repr(error))
                return
            if measured:
                latencies.append(time.perf_counter() - started)
                samples.append((round(sent_at, 4), round(1000 * latencies[-1], 3)))

        await asyncio.gather(*(one(False) for _ in range(warmup)))  # opens connections
        interval = 1.0 / rate
        in_flight: set[asyncio.Task[None]] = set()
        started = time.perf_counter()
        sent = 0
        while not stop.is_set() and time.perf_counter() - started < seconds:
            task = asyncio.create_task(one(True))
            in_flight.add(task)
            task.add_done_callback(in_flight.discard)
            sent += 1
            delay = started + sent * interval - time.perf_counter()
            if delay > 0:
                try:
                    await asyncio.wait_for(stop.wait(), delay)
                except TimeoutError:
                    pass
        elapsed = time.perf_counter() - started
        await asyncio.gather(*in_flight)
    if failures:
        raise RuntimeError(f"{len(failures)} of {sent} requests failed, first: {failures[0]}")
    latencies.sort()
    result: dict[str, Any] = {
        "requests": len(latencies), "seconds": round(elapsed, 2),
        "requests_per_second": round(len(latencies) / elapsed, 1),
        "p50_ms": round(1000 * percentile(latencies, 0.50), 3),
        "p99_ms": round(1000 * percentile(latencies, 0.99), 3),
        "max_ms": round(1000 * latencies[-1], 3)}
    if with_samples:
        result["samples"] = samples
    return result


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--url", required=True)
    parser.add_argument("--body", required=True, help="file holding the request body")
    parser.add_argument("--cafile", help="CA to verify the server with (https)")
    parser.add_argument("--rate", type=float, default=100.0, help="requests per second")
    parser.add_argument("--seconds", type=float, default=3600.0,
                        help="stop after this long (or at SIGTERM)")
    parser.add_argument("--samples", action="store_true",
                        help="also print each request's send time and latency")
    args = parser.parse_args()
    result = asyncio.run(run(args.url, Path(args.body).read_bytes(), args.cafile, args.rate,
                             args.seconds, with_samples=args.samples))
    print(json.dumps(result), flush=True)
