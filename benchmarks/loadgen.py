"""HTTP load generator, run as its own process so it does not share the server's event loop.

Posts one JSON body to one URL over keep-alive connections, ``--concurrency`` requests
in flight, until ``--requests`` have been answered (after ``--warmup`` unmeasured ones
that also open the TLS connections). Every answer must be HTTP 200. Prints one JSON
object: p50/p99/max latency in milliseconds and requests per second.

    python -m benchmarks.loadgen --url https://127.0.0.1:8443/validate --body review.json \
        --cafile ca.pem --requests 20000 --concurrency 64
"""

from __future__ import annotations

import argparse
import asyncio
import json
import ssl
import time
from pathlib import Path

import aiohttp

from benchmarks.common import percentile


async def _drive(session: aiohttp.ClientSession, url: str, body: bytes, requests: int,
                 concurrency: int) -> tuple[list[float], float]:
    latencies: list[float] = []
    remaining = requests
    headers = {"Content-Type": "application/json"}

    async def worker() -> None:
        nonlocal remaining
        while remaining > 0:
            remaining -= 1
            started = time.perf_counter()
            async with session.post(url, data=body, headers=headers) as response:
                await response.read()
                if response.status != 200:
                    raise RuntimeError(f"HTTP {response.status} from {url}")
            latencies.append(time.perf_counter() - started)

    started = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(concurrency)))
    return latencies, time.perf_counter() - started


async def main(args: argparse.Namespace) -> dict[str, float]:
    context = ssl.create_default_context(cafile=args.cafile) if args.cafile else None
    connector = aiohttp.TCPConnector(ssl=context if context else False,
                                     limit=args.concurrency)
    body = Path(args.body).read_bytes()
    async with aiohttp.ClientSession(connector=connector) as session:
        await _drive(session, args.url, body, max(args.warmup, args.concurrency),
                     args.concurrency)
        latencies, elapsed = await _drive(session, args.url, body, args.requests,
                                          args.concurrency)
    latencies.sort()
    return {"requests": len(latencies), "seconds": round(elapsed, 3),
            "requests_per_second": round(len(latencies) / elapsed, 1),
            "p50_ms": round(1000 * percentile(latencies, 0.50), 3),
            "p99_ms": round(1000 * percentile(latencies, 0.99), 3),
            "max_ms": round(1000 * latencies[-1], 3)}


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--url", required=True)
    parser.add_argument("--body", required=True, help="file holding the request body")
    parser.add_argument("--cafile", help="CA to verify the server with (https)")
    parser.add_argument("--requests", type=int, default=20000)
    parser.add_argument("--concurrency", type=int, default=64)
    parser.add_argument("--warmup", type=int, default=200)
    print(json.dumps(asyncio.run(main(parser.parse_args()))))
