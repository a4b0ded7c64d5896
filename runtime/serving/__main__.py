"""``python -m runtime.serving``: parse flags, configure logging, serve.

Example: ``python -m runtime.serving --model smollm2-135m-instruct
--adapter mine=/mnt/adapter/mine:0.8 --port 5000``. Flags override ``KAITO_SERVING_*``
environment variables. Exit codes: 0 after a clean shutdown, 2 for bad settings.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import sys

from pydantic import ValidationError

from crds.logs import configure_logging
from runtime.serving.app import serve
from runtime.serving.settings import ServingSettings

log = logging.getLogger("runtime.serving")


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m runtime.serving",
        description="Serve an LLM over /chat, the OpenAI API and the TGI API.",
    )
    source = parser.add_mutually_exclusive_group()
    source.add_argument("--model", help="model folder or preset name (smollm2-135m-instruct)")
    source.add_argument("--tgi-url", help="proxy to this text-generation-inference server")
    parser.add_argument("--tokenizer", help="tokenizer folder for chat templates (TGI proxy)")
    parser.add_argument("--adapter", dest="adapters", action="append",
                        metavar="NAME=PATH[:STRENGTH]",
                        help="a LoRA adapter (repeatable); NAME[:STRENGTH] means"
                             " ADAPTER_DIR/NAME")
    parser.add_argument("--adapter-dir",
                        help="serve every adapter folder under this folder (/mnt/adapter)")
    parser.add_argument("--served-model-name", help="model id of the base model")
    parser.add_argument("--default-model",
                        help="model id for requests naming none (default: the only adapter,"
                             " else the base model)")
    parser.add_argument("--host")
    parser.add_argument("--port", type=int)
    parser.add_argument("--max-batch-size", type=int)
    parser.add_argument("--max-queue", type=int)
    parser.add_argument("--max-context-tokens", type=int)
    parser.add_argument("--default-max-tokens", type=int)
    parser.add_argument("--device")
    parser.add_argument("--dtype", help="auto (default: what the device computes fast), "
                        "bfloat16, float16 or float32")
    parser.add_argument("--torch-threads", type=int)
    parser.add_argument("--shutdown-grace-seconds", type=float,
                        help="on SIGTERM, how long in-flight requests may finish (20)")
    parser.add_argument("--log-level", default="INFO")
    return parser


def main(argv: list[str] | None = None) -> int:
    """Run the server; return the process exit code."""
    args = _parser().parse_args(argv)
    overrides = {k: v for k, v in vars(args).items() if v is not None and k != "log_level"}
    configure_logging(args.log_level, "json")
    try:
        settings = ServingSettings(**overrides)
        settings.adapter_specs()
    except (ValidationError, ValueError) as error:
        log.error("invalid settings", extra={"error": str(error)})
        return 2
    asyncio.run(serve(settings))
    return 0


if __name__ == "__main__":
    sys.exit(main())
