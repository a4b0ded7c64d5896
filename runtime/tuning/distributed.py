"""The torch.distributed side of a tuning worker: process group, DDP/FSDP, collectives.

A worker started by torchrun (runtime/tuning/launch.py) finds its rank in the
environment, joins the process group (gloo on CPU, nccl on GPU, one GPU per local rank)
and wraps the peft model with DDP or FSDP (``fully_shard`` on each decoder layer and the
root, mixed precision from ``runtime.precision``). The helpers here are the only
collectives the trainer uses: sums of a few numbers, a broadcast from rank 0, and the
gathering of the (small) trainable state into rank 0 for checkpoints and the adapter.
A one-process run has no process group and every helper is a no-op.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

import torch

log = logging.getLogger(__name__)

# A rank that waits longer than this in a collective fails (a peer that died without
# closing its sockets, or a hung GPU): never a run that waits forever.
TIMEOUT_ENV = "KAITO_DISTRIBUTED_TIMEOUT_SECONDS"
DEFAULT_TIMEOUT_SECONDS = 600


@dataclass(frozen=True)
class World:
    rank: int = 0
    local_rank: int = 0
    world_size: int = 1
    local_world_size: int = 1

    @property
    def is_distributed(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @classmethod
    def from_env(cls, env: Mapping[str, str]) -> World:
        """torchrun's ``RANK``, ``LOCAL_RANK``, ``WORLD_SIZE``, ``LOCAL_WORLD_SIZE``."""
        if "WORLD_SIZE" not in env or "RANK" not in env:
            return cls()
        return cls(int(env["RANK"]), int(env.get("LOCAL_RANK", "0")), int(env["WORLD_SIZE"]),
                   int(env.get("LOCAL_WORLD_SIZE", env["WORLD_SIZE"])))


def device_for(world: World) -> torch.device:
    if torch.cuda.is_available():
        return torch.device("cuda", world.local_rank)
    return torch.device("cpu")


def init(world: World, device: torch.device) -> None:
    if not world.is_distributed:
        return
    import torch.distributed as dist

    if device.type == "cuda":
        torch.cuda.set_device(device)
    timeout = timedelta(seconds=float(os.environ.get(TIMEOUT_ENV, DEFAULT_TIMEOUT_SECONDS)))
    backend = "nccl" if device.type == "cuda" else "gloo"
    dist.init_process_group(backend, timeout=timeout, device_id=device if
                            device.type == "cuda" else None)
    log.info("process group ready", extra={"backend": backend, "rank": world.rank,
                                           "world_size": world.world_size})


def shutdown(world: World) -> None:
    import torch.distributed as dist

    if world.is_distributed and dist.is_initialized():
        dist.destroy_process_group()


def sum_floats(world: World, values: list[float], device: torch.device) -> list[float]:
    """Element-wise sum over the ranks (float64, so the sum order barely matters)."""
    if not world.is_distributed:
        return values
    import torch.distributed as dist

    tensor = torch.tensor(values, dtype=torch.float64, device=device)
    dist.all_reduce(tensor)
    return [float(value) for value in tensor.tolist()]


def broadcast_object(world: World, value: Any) -> Any:
    """Rank 0's ``value`` on every rank (other ranks' ``value`` is ignored)."""
    if not world.is_distributed:
        return value
    import torch.distributed as dist

    holder = [value if world.is_main else None]
    dist.broadcast_object_list(holder, src=0)
    return holder[0]


def barrier(world: World) -> None:
    if world.is_distributed:
        import torch.distributed as dist

        dist.barrier()


def wrap(model: Any, strategy: str, device: torch.device, compute_dtype: torch.dtype,
         find_unused_parameters: bool = False) -> Any:
    """The module to train: ``model`` itself (one process, FSDP in place) or a DDP
    wrapper. FSDP shards every decoder layer, then the rest (embeddings, head)."""
    if strategy == "ddp":
        from torch.nn.parallel import DistributedDataParallel

        ids = [device.index] if device.type == "cuda" else None
        return DistributedDataParallel(model, device_ids=ids,
                                       find_unused_parameters=find_unused_parameters)
    if strategy == "fsdp":
        from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard

        policy = MixedPrecisionPolicy(param_dtype=compute_dtype, reduce_dtype=torch.float32)
        for layer in decoder_layers(model):
            fully_shard(layer, mp_policy=policy)
        fully_shard(model, mp_policy=policy)
        return model
    return model


def decoder_layers(model: Any) -> list[Any]:
    """The transformer blocks of a peft causal LM (``model.layers``-style models)."""
    found = [module for name, module in model.named_modules()
             if name.endswith(".layers") and isinstance(module, torch.nn.ModuleList)]
    if not found:
        raise ValueError("FSDP: cannot find the model's decoder layers (no '.layers' list)")
    return list(found[0])


def _full(tensor: Any) -> torch.Tensor:
    """A whole tensor on the CPU; a sharded DTensor is gathered (a collective)."""
    from torch.distributed.tensor import DTensor

    if isinstance(tensor, DTensor):
        tensor = tensor.full_tensor()
    return tensor.detach().to("cpu").contiguous()  # type: ignore[no-any-return]


def trainable_state(model: Any) -> dict[str, torch.Tensor]:
    """Every trainable parameter, whole, by its name in the peft model. Under FSDP all
    ranks must call it (it gathers); every rank gets the tensors."""
    return {name: _full(param) for name, param in model.named_parameters()
            if param.requires_grad}


def load_trainable_state(model: Any, state: Mapping[str, torch.Tensor]) -> None:
    """Copy whole tensors into the trainable parameters (each rank keeps its shard)."""
    from torch.distributed.tensor import DTensor, distribute_tensor

    named = dict(model.named_parameters())
    with torch.no_grad():
        for name, tensor in state.items():
            param = named[name]
            if isinstance(param, DTensor):
                local = distribute_tensor(tensor.to(param.dtype), param.device_mesh,
                                          param.placements, src_data_rank=None)
                param.to_local().copy_(local.to_local())
            else:
                param.copy_(tensor.to(param.device))


def optimizer_state(optimizer: torch.optim.Optimizer) -> dict[str, Any]:
    """``optimizer.state_dict()`` with sharded tensors gathered whole (all ranks call)."""
    saved = optimizer.state_dict()
    saved["state"] = {index: {key: _full(value) if isinstance(value, torch.Tensor) and
                              value.dim() > 0 else value for key, value in entry.items()}
                      for index, entry in saved["state"].items()}
    return saved


def load_optimizer_state(optimizer: torch.optim.Optimizer, saved: dict[str, Any]) -> None:
    """Load a state saved by :func:`optimizer_state`, resharding like the parameters."""
    from torch.distributed.tensor import DTensor, distribute_tensor

    params = [param for group in optimizer.param_groups for param in group["params"]]
    state: dict[Any, Any] = {}
    for index, entry in saved["state"].items():
        param = params[int(index)]
        converted = {}
        for key, value in entry.items():
            if isinstance(param, DTensor) and isinstance(value, torch.Tensor) and value.dim():
                value = distribute_tensor(value.to(param.device_mesh.device_type),
                                          param.device_mesh, param.placements,
                                          src_data_rank=None)
            converted[key] = value
        state[index] = converted
    optimizer.load_state_dict({**saved, "state": state})
