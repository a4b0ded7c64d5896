"""The pure rules of distributed tuning: strategy, launch, data split, checkpoints, and the
``save_*`` fields of the shared config schema."""

from __future__ import annotations

from types import SimpleNamespace

import pytest

from crds.tuning_config import ConfigError, default_config_document, parse_training_config
from runtime.tuning import schedule
from runtime.tuning.launch import (
    LaunchPlan,
    RankFailure,
    describe_failure,
    plan_launch,
    rank_failures,
    root_failure,
    torchrun_arguments,
)
from runtime.tuning.strategy import GIB, choose_strategy

pytestmark = pytest.mark.unit


def test_lora_is_ddp_when_the_model_fits_one_device_else_fsdp() -> None:
    fits = choose_strategy("auto", method="lora", world_size=4, weight_bytes=8 * GIB,
                           device_bytes=16 * GIB)
    assert (fits.strategy, fits.world_size) == ("ddp", 4)
    assert "fits one device" in fits.reason
    sharded = choose_strategy("auto", method="lora", world_size=4, weight_bytes=28 * GIB,
                              device_bytes=16 * GIB)
    assert sharded.strategy == "fsdp" and "does not fit one device" in sharded.reason
    assert sharded.as_dict()["world_size"] == 4


def test_one_process_is_single_and_an_explicit_strategy_wins() -> None:
    assert choose_strategy("auto", method="lora", world_size=1, weight_bytes=GIB,
                           device_bytes=16 * GIB).strategy == "single"
    forced = choose_strategy("fsdp", method="lora", world_size=2, weight_bytes=GIB,
                             device_bytes=16 * GIB)
    assert forced.strategy == "fsdp" and forced.reason == "fsdp requested"
    assert choose_strategy("ddp", method="lora", world_size=2, weight_bytes=40 * GIB,
                           device_bytes=16 * GIB).strategy == "ddp"


def test_qlora_is_ddp_only_and_says_so() -> None:
    with pytest.raises(ConfigError, match="QLoRA trains with DDP only"):
        choose_strategy("fsdp", method="qlora", world_size=2, weight_bytes=GIB,
                        device_bytes=16 * GIB)
    tight = choose_strategy("auto", method="qlora", world_size=2, weight_bytes=40 * GIB,
                            device_bytes=16 * GIB)
    assert tight.strategy == "ddp" and tight.warning is not None
    assert "DDP only" in tight.warning and "may not fit" in tight.warning
    with pytest.raises(ConfigError, match="tuning strategy 'zero3'"):
        choose_strategy("zero3", method="lora", world_size=2, weight_bytes=GIB,
                        device_bytes=None)


def test_launch_is_one_process_per_gpu_or_as_asked() -> None:
    assert plan_launch(None, {}, gpu_count=0) == LaunchPlan(1, 1, False)
    assert plan_launch(None, {}, gpu_count=4).nproc_per_node == 4
    assert plan_launch("3", {}, gpu_count=0).world_size == 3
    env = {"PET_NPROC_PER_NODE": "2", "PET_NNODES": "2", "PET_MASTER_ADDR": "ws-0.ws"}
    plan = plan_launch(None, env, gpu_count=2)
    assert (plan.world_size, plan.is_distributed, plan.has_rendezvous_address) == (4, True, True)
    assert plan_launch(None, {"PET_NNODES": "1:3"}, gpu_count=0).nnodes == 3
    with pytest.raises(ValueError, match="more processes than the 2 GPUs"):
        plan_launch("4", {}, gpu_count=2)
    with pytest.raises(ValueError, match="positive number"):
        plan_launch("0", {}, gpu_count=0)


def test_torchrun_runs_this_module_and_never_restarts() -> None:
    local = torchrun_arguments(LaunchPlan(2, 1, False), ["--config", "c"])
    assert local == ["--nproc-per-node", "2", "--max-restarts", "0", "--standalone",
                     "--module", "runtime.tuning", "--config", "c"]
    # Several nodes: the rendezvous comes from PET_MASTER_ADDR/PORT, not --standalone.
    assert "--standalone" not in torchrun_arguments(LaunchPlan(1, 2, True), [])


def test_the_root_cause_is_a_ranks_own_error_not_a_lost_peer() -> None:
    lost = RankFailure(0, 1, "Connection closed by peer", 100, True, True)
    killed = RankFailure(2, -9, "", 101, False, False)
    own = RankFailure(1, 2, "invalid input, nothing trained: bad row", 102, True, False)
    assert root_failure([lost, killed, own]) == own
    assert root_failure([lost, killed]) == killed
    assert describe_failure(own, 4) == (
        "rank 1 of 4 failed (exit code 2): invalid input, nothing trained: bad row\n")
    assert "killed by signal 9" in describe_failure(killed, 4)


def test_a_rank_the_agent_stopped_is_not_the_cause() -> None:
    # torchrun's view after rank 1 was SIGKILLed and the agent SIGTERMed rank 0, in the
    # same second: no error files (torchrun's "<NONE>").
    failures = SimpleNamespace(failures={
        0: SimpleNamespace(error_file_data={"message": "<NONE>"}, exitcode=-15,
                           timestamp=100),
        1: SimpleNamespace(error_file_data={"message": "<NONE>"}, exitcode=-9, timestamp=100),
        2: SimpleNamespace(error_file_data={"message": "boom", "lost_peer": False},
                           exitcode=1, timestamp=101),
    })
    parsed = rank_failures(failures)
    assert [(f.rank, f.message, f.has_error_file) for f in parsed] == [
        (0, "", False), (1, "", False), (2, "boom", True)]
    assert root_failure(parsed).rank == 2
    assert root_failure(parsed[:2]).rank == 1


def test_each_row_is_trained_once_per_epoch_on_one_rank() -> None:
    # 1 process x accumulation 4 and 2 processes x accumulation 2: same rows per step.
    for step in range(3):
        single = schedule.micro_batch_indices(step, 4, 1, 0)
        pair = [schedule.micro_batch_indices(step, 2, 2, rank) for rank in (0, 1)]
        assert sorted(pair[0] + pair[1]) == single == list(schedule.step_indices(step, 4, 1))
        assert not set(pair[0]) & set(pair[1])
    assert schedule.updates_per_epoch(10, 2, 2) == 3
    with pytest.raises(ValueError):
        schedule.micro_batch_indices(0, 1, 2, 2)


def test_checkpoints_follow_save_strategy_and_save_total_limit() -> None:
    assert schedule.checkpoint_interval("no", 500, 100, 10) is None
    assert not any(schedule.is_checkpoint_step(done, None, 100) for done in range(1, 101))
    assert schedule.checkpoint_interval("steps", 4, 100, 10) == 4
    assert schedule.checkpoint_interval("steps", 0.25, 100, 10) == 25
    assert schedule.checkpoint_interval("epoch", 500, 100, 10) == 10
    saved = [d for d in range(1, 13) if schedule.is_checkpoint_step(d, 4, 12)]
    assert saved == [4, 8]  # the last step saves the adapter, not a checkpoint
    assert schedule.checkpoints_to_prune([6, 2, 4], None) == []
    assert schedule.checkpoints_to_prune([6, 2, 4], 2) == [2]


def test_save_fields_mean_what_training_arguments_mean() -> None:
    config = parse_training_config({"training_config": {}}, "lora")
    assert config.training.save_strategy == "no"
    assert config.training.save_total_limit is None
    explicit = parse_training_config({"training_config": {"TrainingArguments": {
        "save_strategy": "steps", "save_steps": 3, "save_total_limit": None}}}, "lora")
    assert (explicit.training.save_steps, explicit.training.save_total_limit) == (3, None)
    with pytest.raises(ConfigError, match="save_strategy 'best' needs evaluation"):
        parse_training_config({"training_config": {"TrainingArguments": {
            "save_strategy": "best"}}}, "lora")
    with pytest.raises(ConfigError, match="save_total_limit"):
        parse_training_config({"training_config": {"TrainingArguments": {
            "save_total_limit": 0}}}, "lora")
    for method in ("lora", "qlora"):
        shipped = default_config_document(method)
        arguments = shipped["training_config"]["TrainingArguments"]
        assert arguments["save_strategy"] == "no" and arguments["num_train_epochs"] == 3
