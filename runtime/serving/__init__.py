"""The inference server that runs in a Kaito workspace pod.

One batching engine behind three API dialects (``python -m runtime.serving``):

- upstream Kaito: ``POST /chat`` (``prompt``/``messages``, ``generate_kwargs``) →
  ``{"Result": ...}``; ``GET /health`` (503 while loading); ``GET /metrics``;
- OpenAI: ``POST /v1/chat/completions``, ``POST /v1/completions`` (SSE with
  ``stream``), ``GET /v1/models``; ``model`` picks the base model or an adapter;
- text-generation-inference: ``POST /``, ``/generate``, ``/generate_stream``,
  ``/tokenize``, ``GET /info`` (enough for the ``text_generation`` client, which is
  installed outside the resolver: ``pip install --no-deps "text-generation>=0.7"``,
  because it pins huggingface-hub < 1 while transformers 5 needs >= 1).

With ``--tgi-url`` the same APIs proxy to an external TGI server instead of loading a
model. Module map: ``engine`` (scheduling, no tensors), ``torch_model`` (the batched KV
cache), ``loader`` (weights, adapters), ``local``/``tgi_proxy`` (backends), ``api_*``
(HTTP dialects), ``app`` (aiohttp wiring), ``settings``/``__main__`` (configuration).
"""
