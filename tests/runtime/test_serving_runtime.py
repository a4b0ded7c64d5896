"""The serving runtime end to end on CPU with SmolLM2-135M-Instruct.

One real server process (base model + an adapter trained here by the tuning CLI) on
loopback, a second one proxying to it through the TGI client; the official ``openai``
and ``text_generation`` clients, ``curl`` with the seed's exact ``/chat`` request, and a
bounded hypothesis fuzz of every endpoint that must never see a 5xx.
"""

from __future__ import annotations

import asyncio
import json
import subprocess
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from text_generation import AsyncClient

from tests.runtime.serving_helpers import (
    PHRASE,
    ServerProcess,
    start_server,
    train_phrase_adapter,
)

pytestmark = pytest.mark.runtime

BASE = "smollm2-135m-instruct"
CONTEXT = 1024
QUESTION = "What is the capital of France?"
# text_generation 0.7 calls pydantic's deprecated ``.dict()``; not ours to fix.
TGI_CLIENT_WARNINGS = pytest.mark.filterwarnings(
    "ignore::pydantic.warnings.PydanticDeprecatedSince20")


@pytest.fixture(scope="module")
def adapter(tmp_path_factory: pytest.TempPathFactory, smollm2_path: Path) -> Path:
    return train_phrase_adapter(smollm2_path, tmp_path_factory.mktemp("phrase"))


@pytest.fixture(scope="module")
def server(
    tmp_path_factory: pytest.TempPathFactory, smollm2_path: Path, adapter: Path
) -> Iterator[ServerProcess]:
    logs = tmp_path_factory.mktemp("server")
    process = start_server(
        ["--model", str(smollm2_path), "--served-model-name", BASE,
         "--adapter", f"phrase={adapter}", "--adapter", f"phrase-off={adapter}:0",
         "--default-model", BASE, "--torch-threads", "1",
         "--max-context-tokens", str(CONTEXT), "--max-batch-size", "8", "--max-queue", "32",
         "--default-max-tokens", "24",
         # float32 on every CPU: these tests compare answers token for token between
         # batched and lone requests, which reduced precision does not promise.
         "--dtype", "float32"],
        logs / "server.log",
    )
    yield process
    process.stop()


@pytest.fixture(scope="module")
def proxy(tmp_path_factory: pytest.TempPathFactory, server: ServerProcess,
          smollm2_path: Path) -> Iterator[ServerProcess]:
    logs = tmp_path_factory.mktemp("proxy")
    process = start_server(["--tgi-url", server.url, "--tokenizer", str(smollm2_path)],
                           logs / "proxy.log")
    yield process
    process.stop()


def _openai(url: str) -> openai.OpenAI:
    return openai.OpenAI(base_url=url + "/v1", api_key="unused", timeout=120, max_retries=0)


def _chat(client: openai.OpenAI, model: str, question: str, max_tokens: int = 24) -> str:
    reply = client.chat.completions.create(
        model=model, messages=[{"role": "user", "content": question}],
        max_tokens=max_tokens, temperature=0)
    return reply.choices[0].message.content or ""


def test_openai_chat_and_stream(server: ServerProcess) -> None:
    client = _openai(server.url)
    reply = client.chat.completions.create(
        model=BASE, messages=[{"role": "user", "content": QUESTION}], max_tokens=24,
        temperature=0)
    answer = reply.choices[0].message.content or ""
    assert "Paris" in answer
    assert reply.usage is not None and reply.usage.prompt_tokens > 5
    assert reply.usage.completion_tokens <= 24
    stream = client.chat.completions.create(
        model=BASE, messages=[{"role": "user", "content": QUESTION}], max_tokens=24,
        temperature=0, stream=True, stream_options={"include_usage": True})
    pieces, finish, usage = [], None, None
    for chunk in stream:
        if chunk.usage is not None:
            usage = chunk.usage
        for choice in chunk.choices:
            pieces.append(choice.delta.content or "")
            finish = choice.finish_reason or finish
    assert "".join(pieces) == answer
    assert len([p for p in pieces if p]) > 2, "the answer was not streamed token by token"
    assert finish in ("stop", "length")
    assert usage is not None and usage.completion_tokens == reply.usage.completion_tokens
    assert [m.id for m in client.models.list()] == [
        BASE, "phrase", "phrase-off", "kaito-combined"]


def test_openai_completions_and_stream(server: ServerProcess) -> None:
    client = _openai(server.url)
    completion = client.completions.create(
        model=BASE, prompt="The capital of France is", max_tokens=6, temperature=0)
    text = completion.choices[0].text
    assert "Paris" in text
    streamed = "".join(
        chunk.choices[0].text for chunk in client.completions.create(
            model=BASE, prompt="The capital of France is", max_tokens=6, temperature=0,
            stream=True) if chunk.choices)
    assert streamed == text


def test_openai_errors_are_typed(server: ServerProcess) -> None:
    client = _openai(server.url)
    with pytest.raises(openai.NotFoundError):
        _chat(client, "no-such-adapter", QUESTION)
    with pytest.raises(openai.BadRequestError, match="context"):
        _chat(client, BASE, "word " * (CONTEXT + 10))
    with pytest.raises(openai.BadRequestError, match="maximum of new tokens"):
        _chat(client, BASE, QUESTION, max_tokens=CONTEXT * 2)


@TGI_CLIENT_WARNINGS
async def test_text_generation_client(server: ServerProcess) -> None:
    client = AsyncClient(server.url, timeout=120)
    response = await client.generate("The capital of France is", max_new_tokens=6)
    assert "Paris" in response.generated_text
    assert response.details.generated_tokens == len(response.details.tokens)
    tokens = [r async for r in client.generate_stream("The capital of France is",
                                                       max_new_tokens=6)]
    assert "".join(r.token.text for r in tokens if not r.token.special) == (
        response.generated_text)
    assert tokens[-1].generated_text == response.generated_text
    assert tokens[-1].details is not None
    sampled = await client.generate("Once upon a time", max_new_tokens=8, do_sample=True,
                                    temperature=0.9, top_k=20, top_p=0.9, seed=42)
    again = await client.generate("Once upon a time", max_new_tokens=8, do_sample=True,
                                  temperature=0.9, top_k=20, top_p=0.9, seed=42)
    assert sampled.generated_text == again.generated_text


def test_seed_chat_request_with_curl(server: ServerProcess) -> None:
    # The seed document's exact command, against our server.
    result = subprocess.run(
        ["curl", "-sS", "-X", "POST", server.url + "/chat", "-H", "accept: application/json",
         "-H", "Content-Type: application/json", "-d", json.dumps({"prompt": QUESTION})],
        capture_output=True, text=True, timeout=300, check=True)
    body = json.loads(result.stdout)
    assert set(body) == {"Result"}
    assert body["Result"].startswith(QUESTION)
    assert len(body["Result"]) > len(QUESTION) + 5
    greedy = subprocess.run(
        ["curl", "-sS", "-X", "POST", server.url + "/chat", "-H", "Content-Type: application/json",
         "-d", json.dumps({"prompt": QUESTION, "generate_kwargs": {"do_sample": False,
                                                                   "max_length": 60}})],
        capture_output=True, text=True, timeout=300, check=True)
    assert "Paris" in json.loads(greedy.stdout)["Result"]
    missing = subprocess.run(
        ["curl", "-sS", "-w", "\n%{http_code}", "-X", "POST", server.url + "/chat",
         "-H", "Content-Type: application/json", "-d", "{}"],
        capture_output=True, text=True, timeout=60, check=True)
    body_text, code = missing.stdout.rsplit("\n", 1)
    assert code == "400"
    assert json.loads(body_text) == {"detail": "Text generation parameter prompt required"}


def test_adapter_answers_as_trained_and_batches_do_not_mix(server: ServerProcess) -> None:
    client = _openai(server.url)
    unseen = ["What is the tallest animal?", "How do volcanoes form?", "Who was Napoleon?"]
    for question in unseen:
        assert PHRASE in _chat(client, "phrase", question), question
        assert "PINEAPPLE" not in _chat(client, BASE, question), question
    # All adapters at their strengths at once: phrase x 1 + phrase x 0 = phrase.
    assert PHRASE in _chat(client, "kaito-combined", unseen[0])
    chat = httpx.post(server.url + "/chat", timeout=120, json={
        "prompt": unseen[0], "model": "phrase", "return_full_text": False,
        "generate_kwargs": {"do_sample": False, "max_new_tokens": 16}})
    assert chat.json() == {"Result": PHRASE}
    alone = {q: (_chat(client, BASE, q), _chat(client, "phrase", q)) for q in unseen[:2]}

    async def together() -> list[str]:
        async with openai.AsyncOpenAI(base_url=server.url + "/v1", api_key="unused",
                                      timeout=120, max_retries=0) as async_client:
            calls = [async_client.chat.completions.create(
                model=model, messages=[{"role": "user", "content": q}], max_tokens=24,
                temperature=0) for q in unseen[:2] for model in (BASE, "phrase", "phrase-off")]
            replies = await asyncio.gather(*calls)
        return [r.choices[0].message.content or "" for r in replies]

    steps_before = _metric(server.url, "kaito_serving_batch_size_count")
    lone_before = _metric(server.url, 'kaito_serving_batch_size_bucket{le="1.0"}')
    mixed = asyncio.run(together())
    # The same adapter loaded again at strength 0 must act exactly like the base model,
    # also while sharing a batch with the full-strength copy and the base.
    assert mixed == [answer for q in unseen[:2] for answer in (*alone[q], alone[q][0])]
    # ...and they did share one: the engine's own histogram counted decode steps of more
    # than one sequence while these six ran (requests run one by one would show none).
    steps = _metric(server.url, "kaito_serving_batch_size_count") - steps_before
    lone = _metric(server.url, 'kaito_serving_batch_size_bucket{le="1.0"}') - lone_before
    assert steps - lone > 0, (steps, lone)


@TGI_CLIENT_WARNINGS
async def test_tgi_proxy_backend(server: ServerProcess, proxy: ServerProcess) -> None:
    direct = AsyncClient(server.url, timeout=120)
    through = AsyncClient(proxy.url, timeout=120)
    expected = await direct.generate("The capital of France is", max_new_tokens=6)
    proxied = await through.generate("The capital of France is", max_new_tokens=6)
    assert proxied.generated_text == expected.generated_text
    streamed = [r async for r in through.generate_stream("The capital of France is",
                                                         max_new_tokens=6)]
    assert streamed[-1].generated_text == expected.generated_text
    async with openai.AsyncOpenAI(base_url=proxy.url + "/v1", api_key="unused", timeout=120,
                                  max_retries=0) as client:
        reply = await client.chat.completions.create(
            model=BASE, messages=[{"role": "user", "content": QUESTION}], max_tokens=24,
            temperature=0)
    assert reply.choices[0].message.content == _chat(_openai(server.url), BASE, QUESTION)
    async with httpx.AsyncClient() as http:
        health = await http.get(proxy.url + "/health")
    assert health.json() == {"status": "Healthy"}


def _metric(url: str, name: str) -> float:
    with urllib.request.urlopen(url + "/metrics") as response:
        for line in response.read().decode().splitlines():
            if line.startswith(name + " "):
                return float(line.split()[1])
    raise AssertionError(f"metric {name} missing")


def test_disconnect_stops_generation(server: ServerProcess) -> None:
    body = {"model": BASE, "prompt": "Count to one thousand: 1, 2, 3,", "max_tokens": 800,
            "temperature": 0, "stream": True}
    with httpx.Client(timeout=120) as client, client.stream(
            "POST", server.url + "/v1/completions", json=body) as response:
        # Three streamed chunks mean tokens are being generated, not merely queued.
        chunks = 0
        for line in response.iter_lines():
            chunks += line.startswith("data:")
            if chunks == 3:
                break
        running_deadline = time.monotonic() + 10
        while _metric(server.url, "kaito_serving_running_requests") < 1:
            assert time.monotonic() < running_deadline, "the request never ran"
            time.sleep(0.05)
    deadline = time.monotonic() + 30
    while _metric(server.url, "kaito_serving_running_requests") > 0:
        assert time.monotonic() < deadline, "generation kept running after the disconnect"
        time.sleep(0.2)
    with urllib.request.urlopen(server.url + "/metrics") as response:
        text = response.read().decode()
    assert 'code="499"' in text


_scalars = st.one_of(
    st.none(), st.booleans(), st.integers(-5, 40), st.floats(allow_nan=True),
    st.text(max_size=12), st.sampled_from([BASE, "phrase", "nope", "user", ""]),
)
_json = st.recursive(
    _scalars,
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=8), inner,
                                                                max_size=3),
    max_leaves=8,
)
_messages = st.lists(st.fixed_dictionaries(
    {"role": st.sampled_from(["user", "system", "assistant", "robot", 3]),
     "content": st.one_of(st.text(max_size=20), st.none(), st.integers())}), max_size=2)
_small = st.one_of(st.integers(-2, 4), st.none(), st.text(max_size=3), st.floats(-1, 3))
_bodies = st.one_of(
    st.tuples(st.just("/v1/chat/completions"), st.fixed_dictionaries(
        {"model": st.sampled_from([BASE, "phrase", "nope"]), "messages": _messages},
        optional={"max_tokens": _small, "temperature": _small, "top_p": _small,
                  "stream": st.booleans(), "stop": _json, "n": _small, "seed": _small,
                  "presence_penalty": _small})),
    st.tuples(st.just("/v1/completions"), st.fixed_dictionaries(
        {"model": st.sampled_from([BASE, "phrase"]), "prompt": _json},
        optional={"max_tokens": _small, "echo": _json, "stream": st.booleans(),
                  "logprobs": _small, "temperature": _small})),
    st.tuples(st.sampled_from(["/generate", "/generate_stream", "/"]), st.fixed_dictionaries(
        {"inputs": st.one_of(st.text(max_size=30), _json)},
        optional={"parameters": st.fixed_dictionaries({}, optional={
            "max_new_tokens": _small, "temperature": _small, "top_k": _small,
            "top_p": _small, "stop": _json, "adapter_id": _json, "seed": _small,
            "repetition_penalty": _small, "do_sample": _json, "truncate": _small}),
            "stream": st.booleans()})),
    st.tuples(st.just("/chat"), st.fixed_dictionaries({
        # Always bounded: upstream's default max_length (200) would make examples slow.
        "generate_kwargs": st.fixed_dictionaries(
            {"max_new_tokens": st.integers(1, 4)},
            optional={"temperature": _small, "top_k": _small, "top_p": _small,
                      "do_sample": _json, "max_length": _small})},
        optional={"prompt": st.one_of(st.text(max_size=30), _json), "messages": _messages,
                  "return_full_text": _json})),
    st.tuples(st.sampled_from(["/v1/chat/completions", "/generate", "/chat", "/tokenize"]),
              _json),
)


def test_fuzzed_requests_never_get_a_5xx(server: ServerProcess) -> None:
    with httpx.Client(base_url=server.url, timeout=120) as client:

        @settings(max_examples=60, deadline=None,
                  suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
        @given(_bodies, st.booleans())
        def check(case: tuple[str, Any], as_text: bool) -> None:
            path, body = case
            if as_text:  # sometimes send raw (possibly broken) bytes instead of JSON
                content = json.dumps(body, allow_nan=True).encode()[:-1]
            else:
                content = json.dumps(body, allow_nan=True).encode()
            response = client.post(path, content=content,
                                   headers={"Content-Type": "application/json"})
            assert response.status_code < 500, (path, body, response.text)

        check()
    with urllib.request.urlopen(server.url + "/health") as response:
        assert response.status == 200


def test_default_precision_follows_the_cpu(
    smollm2_path: Path, tmp_path: Path
) -> None:
    from runtime.precision import cpu_capability

    expected = "bfloat16" if cpu_capability().has_native_bfloat16 else "float32"
    process = start_server(["--model", str(smollm2_path), "--torch-threads", "1"],
                           tmp_path / "server.log")
    try:
        info = httpx.get(process.url + "/info", timeout=30).json()
        assert info["model_dtype"] == expected
        # No GPU here: the whole model on the CPU, nothing sharded (loader.plan_placement).
        assert info["model_placement"]["device"] == "cpu"
        assert info["model_placement"]["sharded"] is False
        answer = httpx.post(process.url + "/chat", timeout=120, json={
            "prompt": "Say hello.", "generate_kwargs": {"max_new_tokens": 4}}).json()
        assert answer["Result"]
    finally:
        process.stop()
