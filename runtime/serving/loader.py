"""Loading the base model, its tokenizer and LoRA adapters into an ``HFBatchModel``.

Adapters come from folders holding ``adapter_config.json`` + ``adapter_model.safetensors``
(``/mnt/adapter/<name>`` in a pod). Each adapter's LoRA scaling is multiplied by its
strength, which is how upstream Kaito's per-adapter ``strength`` weighs an adapter. With
several adapters, one more, ``kaito-combined``, applies them all at once (upstream's
behaviour for every request).
"""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from runtime.serving.errors import ServingError

log = logging.getLogger(__name__)

COMBINED_ADAPTER = "kaito-combined"  # every adapter at its strength, at once
_ADAPTER_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,62}$")


class LoadError(ServingError):
    """The model or an adapter cannot be loaded; the message says which and why."""


@dataclass(frozen=True)
class AdapterSpec:
    """An adapter to serve: the model id clients use, where it is, and its strength."""

    name: str
    path: Path
    strength: float = 1.0

    @classmethod
    def parse(cls, text: str, adapter_dir: Path | None = None) -> AdapterSpec:
        """Parse the ``--adapter`` flag: ``name=path[:strength]``, or ``name[:strength]``
        for the folder ``adapter_dir/name`` (upstream mounts ``/mnt/adapter/<name>``)."""
        name, sep, rest = text.partition("=")
        if not sep:
            name, colon, strength_text = text.partition(":")
            if adapter_dir is None or not name or (colon and not strength_text):
                raise ValueError(f"expected name=path[:strength] or name[:strength], got {text!r}")
            rest = f"{adapter_dir / name}:{strength_text}" if colon else str(adapter_dir / name)
        if not name or not rest:
            raise ValueError(f"expected name=path[:strength], got {text!r}")
        path_text, strength = rest, 1.0
        head, colon, tail = rest.rpartition(":")
        if colon and head:
            try:
                strength = float(tail)
                path_text = head
            except ValueError:
                pass  # a colon inside the path, not a strength
        spec = cls(name, Path(path_text), strength)
        spec.check()
        return spec

    def check(self) -> None:
        """Validate the name and strength (not the files)."""
        if not _ADAPTER_NAME.match(self.name):
            raise ValueError(
                f"adapter name {self.name!r} must be 1-63 letters, digits, '.', '_' or '-'"
            )
        if not 0.0 <= self.strength <= 1.0:
            raise ValueError(f"adapter {self.name}: strength must be in [0, 1]")


def default_device() -> str:
    """``cuda`` when a GPU is visible, else ``cpu``."""
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


def load_batch_model(
    model_path: Path,
    adapters: list[AdapterSpec],
    *,
    device: str | None = None,
    dtype: str = "auto",
    max_context_tokens: int | None = None,
) -> Any:
    """Load weights and adapters; return an ``HFBatchModel`` (blocking: call in a thread)."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from runtime.precision import resolve as resolve_precision
    from runtime.serving.torch_model import HFBatchModel

    device = device or default_device()
    precision = resolve_precision(dtype, device.split(":", 1)[0])
    tokenizer = AutoTokenizer.from_pretrained(model_path)
    model: Any = AutoModelForCausalLM.from_pretrained(model_path, dtype=precision.torch_dtype())
    model = model.to(device)
    model.eval()
    combined = None
    if adapters:
        model, combined = _attach_adapters(model, adapters)
    config = model.config
    context = int(getattr(config, "max_position_embeddings", 2048) or 2048)
    if max_context_tokens is not None:
        context = min(context, max_context_tokens)
    eos: set[int] = set()
    for source in (getattr(model, "generation_config", None), config):
        value = getattr(source, "eos_token_id", None)
        if isinstance(value, int):
            eos.add(value)
        elif isinstance(value, list):
            eos.update(int(v) for v in value)
    if tokenizer.eos_token_id is not None:
        eos.add(int(tokenizer.eos_token_id))
    log.info(
        "model loaded",
        extra={"model": str(model_path), "device": device, "adapters": len(adapters)},
    )
    batch_model = HFBatchModel(
        model,
        tokenizer,
        max_context_tokens=context,
        eos_token_ids=frozenset(eos),
        has_adapters=bool(adapters),
    )
    batch_model.combined_adapter = combined
    return batch_model


def _attach_adapters(model: Any, adapters: list[AdapterSpec]) -> tuple[Any, str | None]:
    from peft import PeftModel
    from peft.tuners.lora import LoraLayer

    for spec in adapters:
        if not (spec.path / "adapter_config.json").is_file():
            raise LoadError(
                f"adapter {spec.name}: {spec.path} has no adapter_config.json"
            )
    first, *rest = adapters
    try:
        peft_model = PeftModel.from_pretrained(model, first.path, adapter_name=first.name)
        for spec in rest:
            peft_model.load_adapter(spec.path, adapter_name=spec.name)
    except (OSError, ValueError, KeyError, RuntimeError) as error:
        raise LoadError(f"cannot load adapters: {error}") from error
    strengths = {spec.name: spec.strength for spec in adapters}
    for module in peft_model.modules():
        if isinstance(module, LoraLayer):
            for name, strength in strengths.items():
                if name in module.scaling:
                    module.scaling[name] *= strength
    combined = None
    if len(adapters) > 1 and COMBINED_ADAPTER not in strengths:
        # Upstream applies all its adapters at once; "cat" stacks the LoRA ranks, which
        # is exactly the strength-weighted sum of the adapters (strengths are already in
        # each adapter's scaling, hence weights of 1).
        try:
            peft_model.add_weighted_adapter(
                adapters=list(strengths), weights=[1.0] * len(strengths),
                adapter_name=COMBINED_ADAPTER, combination_type="cat")
            combined = COMBINED_ADAPTER
        except ValueError as error:
            log.warning("adapters cannot be combined", extra={"reason": str(error)})
    peft_model.eval()
    return peft_model, combined
