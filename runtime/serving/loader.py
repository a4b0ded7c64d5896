"""Loading the base model, its tokenizer and LoRA adapters into an ``HFBatchModel``.

Placement: one device (the CPU, or the one visible GPU) gets the whole model, as before;
with several CUDA devices visible (the serving pod asks for every GPU of its node) the
weights are sharded over all of them with transformers' ``device_map="auto"`` and a
per-GPU ``max_memory`` leaving room for the CUDA context and the KV cache. This is what
lets a node's total GPU memory hold a model (presets.memory's serving rule);
``plan_placement`` is the pure choice, ``/info`` shows it.

Adapters come from folders holding ``adapter_config.json`` + ``adapter_model.safetensors``
(``/mnt/adapter/<name>`` in a pod). Each adapter's LoRA scaling is multiplied by its
strength, which is how upstream Kaito's per-adapter ``strength`` weighs an adapter. With
several adapters, one more, ``kaito-combined``, applies them all at once (upstream's
behaviour for every request).
"""

from __future__ import annotations

import logging
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from runtime.serving.errors import ServingError

log = logging.getLogger(__name__)

COMBINED_ADAPTER = "kaito-combined"  # every adapter at its strength, at once
_ADAPTER_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,62}$")
# Of each GPU's memory, what the weights may take when sharded; the rest is for the CUDA
# context, the KV cache and activations (which grow with the running batch).
SHARDED_WEIGHTS_FRACTION = 0.85


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


@dataclass(frozen=True)
class Placement:
    """Where the model's weights go: one device, or sharded over several GPUs."""

    device: str
    """Where inputs go: ``cpu``, ``cuda``, ``cuda:1``; with sharding, the first GPU."""
    max_memory: dict[int, int] | None = None
    """Sharded only: the most bytes of weights each GPU (by index) may hold."""

    @property
    def is_sharded(self) -> bool:
        return self.max_memory is not None

    @property
    def gpu_count(self) -> int:
        """GPUs the weights are spread over (0 on the CPU)."""
        if self.max_memory is not None:
            return len(self.max_memory)
        return 0 if self.device == "cpu" else 1

    def from_pretrained_kwargs(self) -> dict[str, Any]:
        """What ``from_pretrained`` needs besides the dtype: nothing for one device (the
        model is then moved there), ``device_map`` and ``max_memory`` when sharded. No CPU
        or disk entry, so a model too large for the GPUs fails to load rather than
        running offloaded."""
        if self.max_memory is None:
            return {}
        return {"device_map": "auto", "max_memory": dict(self.max_memory)}

    def describe(self) -> dict[str, Any]:
        """The placement for logs and ``/info``."""
        return {"device": self.device, "sharded": self.is_sharded, "gpus": self.gpu_count,
                "device_map": "auto" if self.is_sharded else None,
                "max_memory_bytes": dict(self.max_memory or {})}


def plan_placement(device: str | None, gpu_memory_bytes: Sequence[int]) -> Placement:
    """Choose the placement (pure). ``gpu_memory_bytes``: the total memory of each visible
    CUDA device, empty when none is visible. ``device`` (``--device``): None chooses; an
    explicit ``cuda:N`` or ``cpu`` pins the model to that one device."""
    if device is None:
        device = "cuda" if gpu_memory_bytes else "cpu"
    if device == "cuda" and len(gpu_memory_bytes) > 1:
        if any(memory <= 0 for memory in gpu_memory_bytes):
            raise ValueError("every GPU must report a positive memory size")
        budget = {index: int(memory * SHARDED_WEIGHTS_FRACTION)
                  for index, memory in enumerate(gpu_memory_bytes)}
        return Placement(device="cuda:0", max_memory=budget)
    return Placement(device=device)


def visible_gpu_memory() -> list[int]:
    """The total memory of each visible CUDA device (empty without one)."""
    import torch

    if not torch.cuda.is_available():
        return []
    return [int(torch.cuda.get_device_properties(index).total_memory)
            for index in range(torch.cuda.device_count())]


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

    placement = plan_placement(device, visible_gpu_memory())
    log.info("model placement chosen", extra=placement.describe())
    precision = resolve_precision(dtype, placement.device.split(":", 1)[0])
    tokenizer = AutoTokenizer.from_pretrained(model_path)
    model: Any = AutoModelForCausalLM.from_pretrained(
        model_path, dtype=precision.torch_dtype(), **placement.from_pretrained_kwargs())
    if not placement.is_sharded:
        model = model.to(placement.device)
    elif "disk" in (devices := set(getattr(model, "hf_device_map", {}).values())) or (
            "cpu" in devices):
        raise LoadError(f"{model_path}: the weights do not fit the {placement.gpu_count} GPUs")
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
        extra={"model": str(model_path), "device": placement.device,
               "gpus": placement.gpu_count, "adapters": len(adapters)},
    )
    batch_model = HFBatchModel(
        model,
        tokenizer,
        max_context_tokens=context,
        eos_token_ids=frozenset(eos),
        has_adapters=bool(adapters),
        placement=placement.describe(),
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
