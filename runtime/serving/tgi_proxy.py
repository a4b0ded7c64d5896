"""The TGI proxy backend: serve every API by forwarding to an external TGI server.

Instead of loading a model, prompts go to a text-generation-inference server through
the ``text_generation`` client, token by token. Chat messages are rendered with the
tokenizer named by ``--tokenizer`` (or ChatML when none is given); prompt tokens are
counted with that tokenizer or the server's ``/tokenize``. The proxy is ready once the
server's ``/info`` answers. Errors map back onto our tree: TGI validation → 400/422,
overload → 429, anything else from the server → 502.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncGenerator, Sequence
from contextlib import aclosing
from typing import Any

import aiohttp
from text_generation import AsyncClient
from text_generation import errors as tgi_errors

from runtime.serving.errors import (
    GenerationFailed,
    InvalidRequest,
    Overloaded,
    UnknownModel,
)
from runtime.serving.generation import (
    FinishEvent,
    FinishReason,
    GenerationEvent,
    GenerationRequest,
    ModelInfo,
    TokenEvent,
)

log = logging.getLogger(__name__)


class UpstreamFailed(GenerationFailed):
    """The TGI server failed or could not be reached."""

    status = 502
    kind = "upstream_error"


def chatml(messages: Sequence[dict[str, str]]) -> str:
    """The ChatML rendering used when no tokenizer (with a chat template) is given."""
    turns = "".join(
        f"<|im_start|>{m['role']}\n{m['content']}<|im_end|>\n" for m in messages
    )
    return turns + "<|im_start|>assistant\n"


class TGIProxyBackend:
    """Implements ``generation.Backend`` by calling a TGI server."""

    def __init__(
        self,
        url: str,
        *,
        tokenizer: str | None = None,
        served_model_name: str | None = None,
        timeout_seconds: float = 600.0,
        retry_seconds: float = 1.0,
    ) -> None:
        self._url = url.rstrip("/")
        self._tokenizer_name = tokenizer
        self._served_model_name = served_model_name
        self._client = AsyncClient(self._url, timeout=max(1, int(timeout_seconds)))
        self._retry_seconds = retry_seconds
        self._tokenizer: Any = None
        self._info: ModelInfo | None = None
        self._problem: str | None = None

    @property
    def is_ready(self) -> bool:
        """True once the server's ``/info`` answered."""
        return self._info is not None

    @property
    def problem(self) -> str | None:
        """The last reason the server could not be used, if any."""
        return self._problem if self._info is None else None

    @property
    def info(self) -> ModelInfo:
        """The upstream model, as ``/info`` described it."""
        if self._info is None:
            raise UpstreamFailed(self._problem or "the TGI server has not answered yet")
        return self._info

    async def start(self) -> None:
        """Load the tokenizer, then poll ``/info`` until the server answers."""
        if self._tokenizer_name is not None:
            from transformers import AutoTokenizer

            try:
                self._tokenizer = await asyncio.to_thread(
                    AutoTokenizer.from_pretrained, self._tokenizer_name
                )
            except (OSError, ValueError) as error:
                self._problem = f"cannot load tokenizer {self._tokenizer_name}: {error}"
                log.error("tokenizer failed to load", extra={"tokenizer": self._tokenizer_name})
                return
        while self._info is None:
            try:
                upstream = await self._get_json("/info")
            except (aiohttp.ClientError, TimeoutError, ValueError) as error:
                self._problem = f"TGI server {self._url} not reachable: {error}"
                await asyncio.sleep(self._retry_seconds)
                continue
            total = int(upstream.get("max_total_tokens") or 2048)
            self._info = ModelInfo(
                base_model_id=self._served_model_name or str(upstream.get("model_id", "tgi")),
                max_context_tokens=total,
                max_batch_size=int(upstream.get("max_batch_size") or 1),
                max_queue=int(upstream.get("max_concurrent_requests") or 0),
                dtype=str(upstream.get("model_dtype", "unknown")),
                device=str(upstream.get("model_device_type", "unknown")),
                extra={"upstream": self._url},
            )
            log.info("tgi server reachable", extra={"url": self._url})

    async def stop(self) -> None:
        """Nothing to release: every call opens and closes its own session."""

    async def _get_json(self, path: str, payload: Any = None) -> Any:
        timeout = aiohttp.ClientTimeout(total=10)
        async with aiohttp.ClientSession(timeout=timeout) as session:
            if payload is None:
                request = session.get(self._url + path)
            else:
                request = session.post(self._url + path, json=payload)
            async with request as response:
                response.raise_for_status()
                return await response.json()

    def format_prompt(self, text: str) -> str:
        """Wrap ``text`` as a user turn (the upstream model is assumed to be chat-tuned)."""
        return self.format_chat([{"role": "user", "content": text}])

    def format_chat(self, messages: Sequence[dict[str, str]]) -> str:
        """Render with the tokenizer's chat template, or ChatML without one."""
        if self._tokenizer is not None and getattr(self._tokenizer, "chat_template", None):
            try:
                return str(self._tokenizer.apply_chat_template(
                    list(messages), tokenize=False, add_generation_prompt=True))
            except Exception as error:  # jinja's own errors for bad conversations
                raise InvalidRequest(f"cannot apply the chat template: {error}") from error
        return chatml(messages)

    async def tokenize(self, text: str) -> list[tuple[int, str]]:
        """``text``'s tokens: local tokenizer, else the server's ``/tokenize``."""
        if self._tokenizer is not None:
            ids = self._tokenizer.encode(text, add_special_tokens=False)
            return [(int(i), str(self._tokenizer.decode([i]))) for i in ids]
        try:
            tokens = await self._get_json("/tokenize", {"inputs": text})
        except (aiohttp.ClientError, TimeoutError, ValueError) as error:
            raise UpstreamFailed(f"cannot tokenize on the TGI server: {error}") from error
        return [(int(t["id"]), str(t.get("text", ""))) for t in tokens]

    async def generate(self, request: GenerationRequest) -> AsyncGenerator[GenerationEvent, None]:
        """Stream from the server's ``generate_stream``."""
        if request.adapter is not None:
            raise UnknownModel("the TGI proxy serves no adapters", param="model")
        params = request.params
        prompt_tokens = len(await self.tokenize(request.prompt))
        kwargs: dict[str, Any] = {
            "do_sample": not params.is_greedy,
            "max_new_tokens": params.max_new_tokens,
            "stop_sequences": list(params.stop),
            "seed": params.seed,
            "repetition_penalty": (
                None if params.repetition_penalty == 1.0 else params.repetition_penalty),
            "frequency_penalty": params.frequency_penalty or None,
        }
        if not params.is_greedy:
            kwargs["temperature"] = params.temperature
            kwargs["top_k"] = params.top_k or None
            kwargs["top_p"] = params.top_p if params.top_p < 1.0 else None
        try:
            stream = self._client.generate_stream(request.prompt, **kwargs)
            async with aclosing(stream) as responses:
                async for response in responses:
                    token = response.token
                    yield TokenEvent(token.id, token.text, token.logprob or 0.0, token.special)
                    if response.details is not None:
                        reason: FinishReason = response.details.finish_reason.value
                        yield FinishEvent(
                            reason,
                            prompt_tokens=prompt_tokens,
                            generated_tokens=response.details.generated_tokens,
                            text=response.generated_text or "",
                            seed=response.details.seed,
                        )
                        return
        except (tgi_errors.ValidationError, tgi_errors.BadRequestError) as error:
            raise InvalidRequest(str(error)) from error
        except (tgi_errors.OverloadedError, tgi_errors.RateLimitExceededError) as error:
            raise Overloaded(str(error)) from error
        except tgi_errors.NotFoundError as error:
            raise UnknownModel(str(error)) from error
        except (tgi_errors.UnknownError, tgi_errors.GenerationError,
                tgi_errors.IncompleteGenerationError, tgi_errors.ShardNotReadyError,
                tgi_errors.ShardTimeoutError, tgi_errors.NotSupportedError) as error:
            raise UpstreamFailed(str(error)) from error
        except (aiohttp.ClientError, TimeoutError) as error:
            raise UpstreamFailed(f"TGI server {self._url} failed: {error}") from error
        raise UpstreamFailed("the TGI stream ended without details")
