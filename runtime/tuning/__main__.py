"""``python -m runtime.tuning``: the tuning pod's entry point (``kaito tune`` calls main).

Exit codes: 0 done (sentinel written), 2 bad input (config, base model or data; nothing
was trained), 3 the registry refused or failed the push, 1 anything else.

With more than one process (``--nproc-per-node``, or torchrun's ``PET_*`` environment)
this process becomes torchrun's agent and the workers run this same command
(runtime/tuning/launch.py); a worker's termination message goes to the agent, which
writes the failing rank's into the container's.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from pathlib import Path

from crds.logs import configure_logging

EXIT_BAD_INPUT = 2
EXIT_PUSH_FAILED = 3


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m runtime.tuning", description="LoRA/QLoRA tuning of a causal LM"
    )
    parser.add_argument("--config", required=True, type=Path, help="training_config.yaml")
    parser.add_argument("--data-dir", required=True, type=Path, help="folder of data files")
    parser.add_argument("--output-dir", required=True, type=Path, help="adapter goes here")
    parser.add_argument("--base-model", help="model folder or preset name")
    parser.add_argument("--method", choices=("lora", "qlora"))
    parser.add_argument(
        "--progress-port",
        type=int,
        default=int(os.environ.get("KAITO_PROGRESS_PORT", "0") or 0),
        help="serve /progress and /metrics on this port (0: off)",
    )
    parser.add_argument("--push-to", help="push the adapter to this OCI reference")
    parser.add_argument(
        "--push-secret", type=Path, help="file holding the push secret's .dockerconfigjson"
    )
    parser.add_argument("--log-format", choices=("json", "text"), default="json")
    parser.add_argument(
        "--nproc-per-node",
        help="processes on this node: a number, or auto (one per GPU; one on a CPU node); "
             "default PET_NPROC_PER_NODE, else auto. More than one runs under torchrun, "
             "which also reads PET_NNODES, PET_NODE_RANK, PET_MASTER_ADDR, PET_MASTER_PORT")
    parser.add_argument(
        "--strategy", choices=("auto", "ddp", "fsdp"),
        default=os.environ.get("KAITO_TUNING_STRATEGY", "auto"),
        help="how several processes share the model: auto (DDP when it fits one device, "
             "else FSDP), or forced (default KAITO_TUNING_STRATEGY, else auto)")
    return parser


def main(argv: list[str] | None = None) -> int:
    arguments = list(sys.argv[1:] if argv is None else argv)
    args = build_parser().parse_args(arguments)
    configure_logging("INFO", args.log_format)
    from runtime.tuning import launch

    if launch.is_worker(os.environ):
        return _worker_main(args)
    import torch

    try:
        plan = launch.plan_launch(args.nproc_per_node, os.environ,
                                  torch.cuda.device_count() if torch.cuda.is_available() else 0)
    except ValueError as err:
        build_parser().error(str(err))
    if plan.is_distributed:
        return launch.launch(plan, arguments)
    return _main(args)


def _worker_main(args: argparse.Namespace) -> int:
    """One rank under torchrun: its termination message goes to a file of its own,
    handed to the agent on failure (rank 0's becomes the container's on success)."""
    from runtime.termination import TERMINATION_LOG
    from runtime.tuning.launch import ERROR_FILE_ENV, record_worker_failure

    container_log = os.environ.get("KAITO_TERMINATION_LOG", TERMINATION_LOG)
    error_file = os.environ.get(ERROR_FILE_ENV)
    own = Path(error_file).with_name("termination-message") if error_file else None
    if own is not None:
        os.environ["KAITO_TERMINATION_LOG"] = str(own)

    def message() -> str:
        try:
            return own.read_text(encoding="utf-8") if own is not None else ""
        except OSError:
            return ""

    try:
        code = _main(args)
    except BaseException as err:
        record_worker_failure(message() or f"{type(err).__name__}: {err}", err)
        raise
    if code != 0:
        record_worker_failure(message(), None)
    elif os.environ.get("RANK") == "0" and message():
        from runtime.termination import write_termination_message

        write_termination_message(message(), container_log)
    return code


def _main(args: argparse.Namespace) -> int:
    log = logging.getLogger("runtime.tuning")

    from runtime.base_model import BaseModelError
    from runtime.oci import RegistryError
    from runtime.progress import ProgressServer, ProgressTracker
    from runtime.termination import write_termination_message
    from runtime.tuning.config import ConfigError
    from runtime.tuning.data import DataError
    from runtime.tuning.job import PROGRESS_FILE, JobRequest, run_job

    # Under torchrun rank 0 alone writes the output folder and serves /progress.
    is_main_rank = os.environ.get("RANK", "0") == "0"
    if is_main_rank:
        args.output_dir.mkdir(parents=True, exist_ok=True)
    progress = ProgressTracker(args.output_dir / PROGRESS_FILE if is_main_rank else None)
    server = (ProgressServer(progress, port=args.progress_port).start()
              if args.progress_port and is_main_rank else None)
    try:
        push_secret = None
        if args.push_secret is not None:
            try:
                push_secret = args.push_secret.read_text(encoding="utf-8")
            except OSError as err:
                raise ConfigError(
                    f"cannot read the push secret at {args.push_secret}: does the Secret named "
                    "in tuning.output.imagePushSecret exist in the workspace's namespace, "
                    "with the key .dockerconfigjson?") from err
        result = run_job(
            JobRequest(
                config_path=args.config,
                data_dir=args.data_dir,
                output_dir=args.output_dir,
                base_model=args.base_model,
                method=args.method,
                push_reference=args.push_to,
                push_secret=push_secret,
                strategy=args.strategy,
            ),
            progress,
        )
    except (ConfigError, DataError, BaseModelError) as err:
        progress.set_phase("failed", str(err))
        write_termination_message(f"invalid input, nothing trained: {err}\n")
        log.error("invalid input, nothing trained", extra={"error": str(err)})
        return EXIT_BAD_INPUT
    except RegistryError as err:
        progress.set_phase("failed", str(err))
        write_termination_message(f"push failed: {err}\n")
        log.error("push failed", extra={"error": str(err)})
        return EXIT_PUSH_FAILED
    except BaseException as err:
        progress.set_phase("failed", f"{type(err).__name__}: {err}")
        if not isinstance(err, KeyboardInterrupt | SystemExit):
            write_termination_message(f"tuning failed: {type(err).__name__}: {err}\n")
        raise
    finally:
        if server is not None:
            server.stop()
    write_termination_message(progress.final_summary())
    log.info(
        "tuning done",
        extra={"evaluation": result.get("evaluation"), "artifact": result.get("artifact")},
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
