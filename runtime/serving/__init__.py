"""The inference server that runs in a Kaito workspace pod.

It answers upstream Kaito's legacy ``POST /chat``, the OpenAI API (``/v1/...``) and the
text-generation-inference API (``/generate``, ``/generate_stream``, ``/info``) from one
batching engine (or, with ``--tgi-url``, by proxying to an external TGI server).
Entry point: ``python -m runtime.serving`` (see ``__main__``).
"""
