"""Running the tuner under torchrun when more than one process is asked for.

``kaito tune --nproc-per-node N`` (or torchrun's own ``PET_NPROC_PER_NODE`` /
``PET_NNODES`` environment, which the operator sets on each pod of a multi-node run)
starts ``torch.distributed.run``'s elastic agent in this process; it runs N workers of
``python -m runtime.tuning`` with the same arguments and torchrun's rendezvous
(``PET_MASTER_ADDR``/``PET_MASTER_PORT`` when set, else ``--standalone`` on a free
port). With ``--max-restarts 0`` a worker that fails makes the agent stop the others at
once; each worker records its error in the file torchrun gives it
(``TORCHELASTIC_ERROR_FILE``), and the agent's side here turns the root cause (the rank
that failed first for a reason of its own, not a rank that merely lost its peer) into
the container's termination message and exit code.

On a GPU node the default is one process per GPU; on a CPU node one, unless asked.
"""

from __future__ import annotations

import json
import logging
import os
import signal
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

log = logging.getLogger(__name__)

# Set by torchrun in every worker it starts: a process with it is a worker, never a launcher.
WORKER_ENV = "TORCHELASTIC_RUN_ID"
ERROR_FILE_ENV = "TORCHELASTIC_ERROR_FILE"
# What torchrun reports for a worker that left no error file (killed by a signal).
_NO_MESSAGE = ("<NONE>", "<N/A>")
_LOST_PEER_MARKS = ("Connection closed by peer", "Connection reset by peer",
                    "Broken pipe", "NCCL communicator was aborted")


@dataclass(frozen=True)
class LaunchPlan:
    """How many processes: per node and nodes (torchrun's own settings)."""

    nproc_per_node: int
    nnodes: int
    has_rendezvous_address: bool

    @property
    def world_size(self) -> int:
        return self.nproc_per_node * self.nnodes

    @property
    def is_distributed(self) -> bool:
        return self.world_size > 1


def _positive(name: str, value: str) -> int:
    try:
        number = int(value)
    except ValueError:
        number = 0
    if number < 1:
        raise ValueError(f"{name} must be a positive number of processes, not {value!r}")
    return number


def plan_launch(nproc_per_node: str | None, env: Mapping[str, str], gpu_count: int) -> LaunchPlan:
    """The launch for ``--nproc-per-node`` (None: ``PET_NPROC_PER_NODE``, else ``auto``):
    ``auto`` or ``gpu`` is one process per GPU (one on a CPU node). More processes than
    GPUs on a GPU node is refused: two ranks on one GPU only compete for its memory."""
    value = nproc_per_node or env.get("PET_NPROC_PER_NODE") or "auto"
    if value in ("auto", "gpu"):
        count = max(1, gpu_count)
    else:
        count = _positive("--nproc-per-node", value)
        if gpu_count and count > gpu_count:
            raise ValueError(f"--nproc-per-node {count} asks for more processes than the "
                             f"{gpu_count} GPUs of this node (one process per GPU)")
    # torchrun accepts "MIN:MAX" for elastic runs; the run here is as large as MAX.
    nnodes = _positive("PET_NNODES", env.get("PET_NNODES", "1").split(":")[-1])
    has_address = bool(env.get("PET_MASTER_ADDR") or env.get("PET_RDZV_ENDPOINT"))
    return LaunchPlan(count, nnodes, has_address)


def torchrun_arguments(plan: LaunchPlan, worker_arguments: Sequence[str]) -> list[str]:
    """torchrun's command line; what it does not name it reads from ``PET_*``."""
    arguments = ["--nproc-per-node", str(plan.nproc_per_node), "--max-restarts", "0"]
    if plan.nnodes == 1 and not plan.has_rendezvous_address:
        arguments.append("--standalone")  # a free port: concurrent runs never collide
    return [*arguments, "--module", "runtime.tuning", *worker_arguments]


def is_worker(env: Mapping[str, str]) -> bool:
    return WORKER_ENV in env


def is_lost_peer(err: BaseException) -> bool:
    """An error that only says another rank went away (its own error is the cause)."""
    text = str(err)
    return any(mark in text for mark in _LOST_PEER_MARKS)


def record_worker_failure(message: str, err: BaseException | None) -> None:
    """Hand this worker's failure to the agent (torchrun's error file, if it gave one)."""
    path = os.environ.get(ERROR_FILE_ENV)
    if not path:
        return
    data = {"message": message.strip(), "timestamp": int(time.time()),
            "lost_peer": err is not None and is_lost_peer(err)}
    try:
        with open(path, "w", encoding="utf-8") as handle:
            json.dump(data, handle)
    except OSError:
        log.warning("cannot write the worker error file", extra={"path": path})


@dataclass(frozen=True)
class RankFailure:
    rank: int
    exitcode: int
    message: str
    timestamp: int
    has_error_file: bool
    lost_peer: bool


def root_failure(failures: Sequence[RankFailure]) -> RankFailure:
    """The cause: a rank's own error before a rank killed without one (a signal, OOM),
    before a rank that only lost its peer or that the agent stopped (SIGTERM, how torchrun
    ends the survivors); earliest first, then lowest rank."""
    def order(failure: RankFailure) -> tuple[int, int, int]:
        if failure.lost_peer or failure.exitcode == -signal.SIGTERM:
            kind = 2
        else:
            kind = 0 if failure.has_error_file else 1
        return kind, failure.timestamp, failure.rank
    return min(failures, key=order)


def describe_failure(failure: RankFailure, world_size: int) -> str:
    """The termination message's line for the root cause."""
    how = f"exit code {failure.exitcode}"
    if failure.exitcode < 0:
        how = f"killed by signal {-failure.exitcode}"
    message = failure.message or "no error message (killed, or it crashed before reporting)"
    return f"rank {failure.rank} of {world_size} failed ({how}): {message}\n"


def rank_failures(err: Any) -> list[RankFailure]:
    """torchrun's ``ChildFailedError.failures`` as :class:`RankFailure` values."""
    failures = []
    for rank, failure in err.failures.items():
        data = failure.error_file_data if isinstance(failure.error_file_data, dict) else {}
        message = data.get("message", "")
        if isinstance(message, dict):  # torchrun's own @record layout
            message = message.get("message", "")
        message = "" if message in _NO_MESSAGE else str(message)
        failures.append(RankFailure(
            rank=int(rank), exitcode=int(failure.exitcode), message=message,
            timestamp=int(failure.timestamp), has_error_file=bool(message),
            lost_peer=bool(data.get("lost_peer"))))
    return failures


def launch(plan: LaunchPlan, worker_arguments: Sequence[str]) -> int:
    """Run the workers under torchrun; the exit code and termination message of the run."""
    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError
    from torch.distributed.run import get_args_parser, run

    from runtime.termination import write_termination_message

    arguments = torchrun_arguments(plan, worker_arguments)
    log.info("starting torchrun", extra={"nproc_per_node": plan.nproc_per_node,
                                         "nnodes": plan.nnodes, "world_size": plan.world_size})
    try:
        run(get_args_parser().parse_args(arguments))  # type: ignore[no-untyped-call]
    except ChildFailedError as err:
        cause = root_failure(rank_failures(err))
        text = describe_failure(cause, plan.world_size)
        write_termination_message(text)
        log.error("tuning failed on a rank", extra={"rank": cause.rank,
                                                    "exitcode": cause.exitcode,
                                                    "error": cause.message})
        return cause.exitcode if cause.exitcode > 0 else 1
    return 0
