"""Where the serving engine puts a model's weights: ``loader.plan_placement`` (pure).

The serving pod asks for every GPU of its node, and a preset is admitted when it fits the
node's total GPU memory (presets.memory), so with several GPUs visible the weights must be
sharded over all of them (``device_map="auto"`` with a per-GPU ``max_memory``); with one
GPU, or on the CPU, the model goes to that one device as it always did.
"""

from __future__ import annotations

import pytest

from runtime.serving.loader import SHARDED_WEIGHTS_FRACTION, Placement, plan_placement

GIB = 1 << 30


def test_the_cpu_gets_the_whole_model_and_no_loader_arguments() -> None:
    placement = plan_placement(None, [])
    assert placement == Placement(device="cpu")
    assert placement.from_pretrained_kwargs() == {}
    assert (placement.is_sharded, placement.gpu_count) == (False, 0)


def test_one_visible_gpu_gets_the_whole_model() -> None:
    placement = plan_placement(None, [80 * GIB])
    assert placement == Placement(device="cuda")
    assert placement.from_pretrained_kwargs() == {}
    assert placement.gpu_count == 1


def test_several_visible_gpus_shard_the_weights_over_all_of_them() -> None:
    placement = plan_placement(None, [16 * GIB] * 4)
    budget = int(16 * GIB * SHARDED_WEIGHTS_FRACTION)
    assert placement.from_pretrained_kwargs() == {
        "device_map": "auto", "max_memory": {0: budget, 1: budget, 2: budget, 3: budget}}
    # Inputs go to the first GPU; no "cpu" or "disk" entry, so nothing is offloaded.
    assert placement.device == "cuda:0"
    assert (placement.is_sharded, placement.gpu_count) == (True, 4)
    # Room is left on each GPU for the CUDA context and the KV cache.
    assert 0.5 < SHARDED_WEIGHTS_FRACTION < 1
    assert placement.describe() == {
        "device": "cuda:0", "sharded": True, "gpus": 4, "device_map": "auto",
        "max_memory_bytes": {0: budget, 1: budget, 2: budget, 3: budget}}


def test_unequal_gpus_each_get_their_own_budget() -> None:
    kwargs = plan_placement("cuda", [80 * GIB, 40 * GIB]).from_pretrained_kwargs()
    assert kwargs["max_memory"] == {0: int(80 * GIB * SHARDED_WEIGHTS_FRACTION),
                                    1: int(40 * GIB * SHARDED_WEIGHTS_FRACTION)}


@pytest.mark.parametrize("device", ["cpu", "cuda:1"])
def test_an_explicit_device_pins_the_model_to_it(device: str) -> None:
    placement = plan_placement(device, [16 * GIB] * 2)
    assert placement == Placement(device=device)
    assert placement.from_pretrained_kwargs() == {}


def test_a_gpu_without_memory_is_a_clear_error() -> None:
    with pytest.raises(ValueError, match="positive memory"):
        plan_placement(None, [16 * GIB, 0])
