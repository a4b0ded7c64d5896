"""``kaito fetch-model --repo ID --dest DIR``: a preset's weights from Hugging Face.

The init container of a tuning or inference pod runs this to fill the /mnt/model emptyDir
the main container then loads from (``local_files_only``). The token of a gated model
comes from ``HF_TOKEN`` (a secretKeyRef), never from the command line. When the repository
has safetensors, the duplicate PyTorch/TF/Flax/ONNX/GGUF weights are skipped. Exit codes:
0 done, 2 the repository does not exist or the token may not read it (retrying cannot
help), 3 the download failed.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from pathlib import Path

from crds.logs import configure_logging

log = logging.getLogger(__name__)

EXIT_REFUSED = 2
EXIT_FAILED = 3
# Never needed by transformers when safetensors are present.
_DUPLICATE_WEIGHTS = ["*.bin", "*.pt", "*.pth", "*.h5", "*.msgpack", "*.ot", "*.onnx",
                      "*.onnx_data", "*.gguf", "*.tflite", "original/*", "onnx/*"]
_FOREIGN_WEIGHTS = ["*.h5", "*.msgpack", "*.ot", "*.onnx", "*.onnx_data", "*.gguf",
                    "*.tflite", "onnx/*"]


def _ignore_patterns(repo: str, revision: str | None, token: str | None) -> list[str]:
    from huggingface_hub import HfApi

    files = HfApi().list_repo_files(repo, revision=revision, token=token)
    if any(name.endswith(".safetensors") for name in files):
        return _DUPLICATE_WEIGHTS
    return _FOREIGN_WEIGHTS


def fetch_model(repo: str, dest: Path, revision: str | None = None) -> Path:
    """Download the repository's files into ``dest``."""
    from huggingface_hub import snapshot_download

    token = os.environ.get("HF_TOKEN") or None
    dest.mkdir(parents=True, exist_ok=True)
    ignore = _ignore_patterns(repo, revision, token)
    path = snapshot_download(
        repo, revision=revision, local_dir=dest, token=token, ignore_patterns=ignore
    )
    log.info("model fetched", extra={"repo": repo, "revision": revision, "dest": str(dest)})
    return Path(str(path))


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="kaito fetch-model", description="Download a model from Hugging Face."
    )
    parser.add_argument("--repo", required=True, help="repository id, e.g. microsoft/phi-4")
    parser.add_argument("--dest", required=True, type=Path, help="folder to write into")
    parser.add_argument("--revision", help="branch, tag or commit (default: main)")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    from huggingface_hub import errors

    from runtime.termination import command_failed
    configure_logging("INFO", "json")
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    try:
        fetch_model(args.repo, args.dest, args.revision)
    except errors.GatedRepoError:
        message = (f"model {args.repo} is gated: set presetOptions.modelAccessSecret to a "
                   "Secret whose HF_TOKEN may read it")
        code = EXIT_REFUSED
    except (errors.RepositoryNotFoundError, errors.RevisionNotFoundError):
        message = f"model {args.repo} (revision {args.revision or 'main'}) was not found"
        code = EXIT_REFUSED
    # Network (httpx2), disk and the hub's own errors all mean "try again later".
    except Exception as err:  # noqa: BLE001
        message = f"download of {args.repo} failed: {type(err).__name__}: {err}"
        code = EXIT_FAILED
    else:
        return 0
    return command_failed(log, "kaito fetch-model", message, code, repo=args.repo)


if __name__ == "__main__":
    sys.exit(main())
