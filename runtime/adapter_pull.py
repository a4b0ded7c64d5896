"""``kaito pull-adapter --reference REF --dest DIR [--secret PATH]...``: an adapter for serving.

The init container of an inference pod runs this to pull a LoRA adapter pushed as an
OCI artifact (by a tuning Job, ``runtime.oci``) into /mnt/adapter/<name>, verifying each
file's digest. ``--secret`` names mounted ``.dockerconfigjson`` files (the adapter's
imagePullSecrets); their ``auths`` are merged. Exit codes: 0 done, 2 a bad reference or
credentials the registry refused, 3 the pull failed.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path
from typing import Any

from crds.logs import configure_logging

log = logging.getLogger(__name__)

EXIT_REFUSED = 2
EXIT_FAILED = 3


def merged_dockerconfig(paths: list[Path]) -> str | None:
    """One ``.dockerconfigjson`` text holding the ``auths`` of every file (first wins)."""
    if not paths:
        return None
    auths: dict[str, Any] = {}
    for path in paths:
        try:
            found = json.loads(path.read_text(encoding="utf-8"))["auths"]
            entries = list(found.items())
        except (json.JSONDecodeError, KeyError, TypeError, AttributeError):
            raise ValueError(f"{path} is not a .dockerconfigjson ({{auths: ...}})") from None
        for host, entry in entries:
            auths.setdefault(host, entry)
    return json.dumps({"auths": auths})


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="kaito pull-adapter", description="Pull a LoRA adapter OCI artifact."
    )
    parser.add_argument("--reference", required=True, help="registry/repository:tag or @digest")
    parser.add_argument("--dest", required=True, type=Path, help="folder to write into")
    parser.add_argument("--secret", action="append", type=Path, default=[],
                        help="a mounted .dockerconfigjson file (repeatable)")
    args = parser.parse_args(argv)
    configure_logging("INFO", "json")

    from runtime.oci import Reference, RegistryAuthError, RegistryError, pull_adapter
    from runtime.termination import command_failed

    try:
        Reference.parse(args.reference)
        config = merged_dockerconfig(args.secret)
    except (RegistryError, ValueError, OSError) as err:
        message, code = f"refused: {err}", EXIT_REFUSED
    else:
        try:
            artifact = pull_adapter(args.reference, args.dest, config)
        except RegistryAuthError as err:
            message, code = f"refused: {err}", EXIT_REFUSED
        except (RegistryError, OSError) as err:
            message, code = f"pull failed: {err}", EXIT_FAILED
        else:
            print(json.dumps({"files": [str(path) for path in artifact.files]}))
            return 0
    return command_failed(log, "kaito pull-adapter", message, code, reference=args.reference)


if __name__ == "__main__":
    sys.exit(main())
