"""One tuning job from start to sentinel: config, data, model, training, adapter, push.

Everything that can be checked without training (config, base model, every data row) is
checked first, so bad input fails in seconds with a message naming the file, row and
column. The output folder ends up holding the adapter (``adapter_config.json``,
``adapter_model.safetensors``), ``training_result.json`` (held-out loss and perplexity
before and after, losses, speed, dataset digest, hyper-parameters) and the sentinel
``fine_tuning_completed.txt`` that tells the pod (and a push sidecar) it is done. Rows
longer than ``max_seq_length`` are truncated or dropped (encoding.py) and counted under
``data`` in the result and in progress. A job
whose sentinel exists does nothing, so a restarted pod after success is harmless.

Under torchrun every rank runs this function: all validate the same input and train
(runtime/tuning/strategy.py picks one process, DDP or FSDP), rank 0 alone decides
whether there is anything to do, checks the push credentials, writes the output folder
and pushes; the strategy and world size are in the log, progress and the result.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import math
import os
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from runtime.base_model import resolve_model_path
from runtime.progress import ProgressTracker, write_atomically
from runtime.tuning import distributed
from runtime.tuning.config import ConfigError, Method, TrainingConfig, load_training_config
from runtime.tuning.data import load_dataset
from runtime.tuning.distributed import World
from runtime.tuning.encoding import encode_dataset, split_train_eval
from runtime.tuning.strategy import StrategyChoice, choose_strategy

log = logging.getLogger(__name__)

SENTINEL = "fine_tuning_completed.txt"
RESULT_FILE = "training_result.json"
PROGRESS_FILE = "progress.json"


@dataclass(frozen=True)
class JobRequest:
    config_path: Path
    data_dir: Path
    output_dir: Path
    base_model: str | None = None
    method: Method | None = None
    push_reference: str | None = None
    push_secret: str | None = None  # the dockerconfigjson text
    strategy: str = "auto"  # auto | ddp | fsdp (strategy.py)


def infer_method(config_path: Path) -> Method:
    """``qlora`` when the file asks for 4/8-bit loading, else ``lora``."""
    import yaml

    try:
        document = yaml.safe_load(config_path.read_text(encoding="utf-8")) or {}
    except (OSError, yaml.YAMLError, UnicodeDecodeError) as err:
        raise ConfigError(f"{config_path}: cannot read: {err}") from err
    body = document.get("training_config") if isinstance(document, dict) else None
    quantization = (body or {}).get("QuantizationConfig") or {}
    is_quantized = quantization.get("load_in_4bit") is True or quantization.get(
        "load_in_8bit"
    ) is True
    return "qlora" if is_quantized else "lora"


def check_training_argument_keys(config: TrainingConfig) -> None:
    """Unknown TrainingArguments keys are errors (the schema's pinned list, checked again
    against the installed transformers); known ones this runtime does not act on, and
    settings it cannot honour, are logged as warnings (the webhook warns about the same)."""
    from transformers import TrainingArguments

    known = {item.name for item in dataclasses.fields(TrainingArguments)}
    extra = config.training.extra_keys()
    unknown = sorted(key for key in extra if key not in known)
    if unknown:
        raise ConfigError(f"TrainingArguments: unknown keys {unknown}")
    if extra:
        log.warning("training arguments not used by this runtime", extra={"keys": sorted(extra)})
    for message in config.training.ignored_settings():
        log.warning("training setting ignored", extra={"detail": message})


def _fingerprint(config: TrainingConfig, dataset_digest: str, model_path: Path) -> str:
    payload = json.dumps(
        {
            "config": config.model_dump(mode="json", by_alias=True),
            "dataset": dataset_digest,
            "model": str(model_path),
        },
        sort_keys=True,
    )
    return hashlib.sha256(payload.encode()).hexdigest()


def _max_positions(model_path: Path) -> int | None:
    try:
        config = json.loads((model_path / "config.json").read_text())
    except (OSError, json.JSONDecodeError):
        return None
    value = config.get("max_position_embeddings")
    return int(value) if isinstance(value, int) else None


def _adapter_saved(output_dir: Path) -> bool:
    names = ("adapter_config.json", "adapter_model.safetensors", RESULT_FILE)
    return all((output_dir / name).is_file() for name in names)


def _weight_bytes(model_path: Path, dtype_size: int) -> int:
    """The base model's weights in the compute dtype, from the safetensors headers."""
    from safetensors import safe_open

    count = 0
    for path in sorted(model_path.glob("*.safetensors")):
        with safe_open(str(path), "pt") as handle:
            for key in handle.keys():  # noqa: SIM118 (safe_open is not a dict)
                count += math.prod(handle.get_slice(key).get_shape())
    return count * dtype_size


def _device_bytes(device: Any, world: World) -> int | None:
    """Memory one process may use: its GPU's, or the host's shared by the node's ranks."""
    import torch

    if device.type == "cuda":
        return int(torch.cuda.get_device_properties(device).total_memory)
    try:
        host = os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError):
        return None
    return int(host // world.local_world_size)


def _choose(request: JobRequest, method: Method, model_path: Path, config: TrainingConfig,
            world: World, device: Any) -> StrategyChoice:
    from runtime.tuning.model import training_precision

    dtype_size = {"float32": 4}.get(training_precision(config, device).dtype, 2)
    choice = choose_strategy(
        request.strategy, method=method, world_size=world.world_size,
        weight_bytes=_weight_bytes(model_path, dtype_size),
        device_bytes=_device_bytes(device, world))
    # Nodes may differ in memory: rank 0's choice is the run's.
    decided: StrategyChoice = distributed.broadcast_object(world, choice)
    return decided


def run_job(request: JobRequest, progress: ProgressTracker) -> dict[str, Any]:
    """Run the job; return the result written to ``training_result.json``."""
    world = World.from_env(os.environ)
    device = distributed.device_for(world)
    distributed.init(world, device)
    try:
        return _run_job(request, progress, world, device)
    finally:
        distributed.shutdown(world)


def _run_job(request: JobRequest, progress: ProgressTracker, world: World,
             device: Any) -> dict[str, Any]:
    output_dir = request.output_dir
    sentinel = output_dir / SENTINEL
    # Rank 0's output folder says whether anything is left to do; the others follow it.
    done_before = distributed.broadcast_object(world, "done" if sentinel.exists() else (
        "trained" if _adapter_saved(output_dir) else None))
    if done_before == "done":
        log.info("sentinel present, job already done", extra={"sentinel": str(sentinel)})
        progress.set_phase("succeeded", "already done")
        if not world.is_main:
            return {}
        result: dict[str, Any] = json.loads((output_dir / RESULT_FILE).read_text())
        return result
    if done_before == "trained":
        # Trained before, but the push (or the sentinel) did not happen: only finish.
        log.info("adapter already saved, finishing the job", extra={"dir": str(output_dir)})
        if not world.is_main:
            return {}
        return _push_and_finish(request, json.loads((output_dir / RESULT_FILE).read_text()),
                                progress)
    method = request.method or infer_method(request.config_path)
    progress.set_phase("validating")
    config = load_training_config(request.config_path, method)
    check_training_argument_keys(config)
    base_name = request.base_model or config.model.pretrained_model_name_or_path
    if not base_name:
        raise ConfigError("no base model: pass --base-model or set "
                          "ModelConfig.pretrained_model_name_or_path")
    model_path = resolve_model_path(base_name)
    data = config.dataset
    positions = _max_positions(model_path)
    max_seq_length = min(data.max_seq_length, positions) if positions else data.max_seq_length
    config = config.model_copy(
        update={"dataset": data.model_copy(update={"max_seq_length": max_seq_length})}
    )

    from runtime.tuning.model import load_for_training, load_tokenizer

    tokenizer = load_tokenizer(model_path)
    dataset = load_dataset(request.data_dir, config.dataset)
    fitted = encode_dataset(tokenizer, dataset.examples, max_seq_length)
    encoded, lengths = fitted.items, fitted.report
    progress.record_data(lengths.as_dict())
    if lengths.truncated or lengths.dropped:
        log.warning("rows longer than max_seq_length were truncated or dropped",
                    extra=lengths.as_dict())
    train, held_out = split_train_eval(
        encoded, data.train_test_split, data.shuffle_seed, shuffle=data.shuffle_dataset
    )
    log.info(
        "data validated",
        extra={"files": len(dataset.files), "examples": len(encoded), "train": len(train),
               "held_out": len(held_out), "truncated": lengths.truncated,
               "dropped": lengths.dropped, "digest": dataset.digest},
    )

    if request.push_reference and world.is_main:  # the output is an input too
        from runtime.oci import RegistryAuthError, RegistryTLSError, check_push_access

        try:
            check_push_access(request.push_reference, request.push_secret)
        except RegistryAuthError as err:
            # Bad input like bad data: the same secret would be refused on every retry.
            raise ConfigError(f"the registry refused the push credentials: {err}") from err
        except RegistryTLSError as err:
            # Likewise an untrusted certificate: a retry has the same CAs.
            raise ConfigError(f"the registry's certificate is not trusted: {err}") from err

    choice = _choose(request, method, model_path, config, world, device)
    log.info("distribution chosen", extra=choice.as_dict())
    if choice.warning:
        log.warning("the model may not fit", extra={"detail": choice.warning})
    progress.record_distribution(choice.as_dict())

    progress.set_phase("loading")
    # FSDP shards a model that may not fit one device: load it on the CPU, shard it there.
    import torch

    load_device = torch.device("cpu") if choice.strategy == "fsdp" else device
    loaded = load_for_training(model_path, config, device, load_device=load_device)
    progress.record_precision(loaded.precision.as_dict())

    from runtime.tuning.trainer import Trainer

    trainer = Trainer(
        loaded.model,
        config,
        train,
        held_out,
        output_dir=output_dir,
        pad_token_id=int(tokenizer.pad_token_id),
        fingerprint=_fingerprint(config, dataset.digest, model_path),
        progress=progress,
        device=loaded.device,
        dtype=loaded.dtype,
        world=world,
        strategy=choice.strategy,
    )
    outcome = trainer.train()

    progress.set_phase("saving")
    from runtime.tuning.model import quiet_library_deprecations

    adapter = distributed.trainable_state(loaded.model)  # every rank: FSDP gathers
    if not world.is_main:
        return {}
    with quiet_library_deprecations():
        loaded.model.save_pretrained(output_dir, state_dict=adapter, safe_serialization=True)
    result = {
        "base_model": base_name,
        "method": method,
        "dataset_digest": dataset.digest,
        "examples": {"train": len(train), "held_out": len(held_out)},
        "data": lengths.as_dict(),
        "hyperparameters": config.hyperparameters(),
        "evaluation": {"before": outcome.eval_before, "after": outcome.eval_after},
        "total_steps": outcome.total_steps,
        "resumed_from_step": outcome.start_step or None,
        "losses": outcome.losses,
        "tokens_trained_this_run": outcome.tokens_trained,
        "seconds_per_step": outcome.seconds_per_step,
        "tokens_per_second": outcome.tokens_per_second,
        "dtype": loaded.precision.dtype,
        "precision": loaded.precision.as_dict(),
        "device": str(loaded.device),
        "strategy": choice.strategy,
        "world_size": choice.world_size,
        "distributed": choice.as_dict(),
        "finished_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }
    write_atomically(output_dir / RESULT_FILE, json.dumps(result, indent=2))
    shutil.rmtree(trainer.checkpoint_root, ignore_errors=True)
    return _push_and_finish(request, result, progress)


def _push_and_finish(
    request: JobRequest, result: dict[str, Any], progress: ProgressTracker
) -> dict[str, Any]:
    if request.push_reference:
        progress.set_phase("pushing")
        from runtime.oci import Reference, build_annotations, push_adapter

        annotations = build_annotations(
            base_model=result["base_model"],
            method=result["method"],
            dataset_digest=result["dataset_digest"],
            hyperparameters=result["hyperparameters"],
            evaluation=result["evaluation"],
        )
        digest = push_adapter(
            request.output_dir,
            request.push_reference,
            request.push_secret,
            annotations,
            [RESULT_FILE],
        )
        result["artifact"] = Reference.parse(request.push_reference).with_digest(digest)
    sentinel = request.output_dir / SENTINEL
    write_atomically(sentinel, json.dumps({"artifact": result.get("artifact")}) + "\n")
    progress.set_phase("succeeded", result.get("artifact"))
    return result
