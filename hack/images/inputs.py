"""What goes into each image hack/images.sh builds, and the content tag derived from it.

An image is tagged with a hash of its inputs: the Dockerfile, the files its target's
stages COPY from the build context (read from the Dockerfile itself, so a new COPY line
is covered without touching this file), and whatever the caller adds (the base image's
tag). An unchanged tree gives the same tag, so `hack/images.sh build` finds the image
already there; an edit to a file the target does not copy (tests/, docs, the other
target's sources) leaves the tag alone.

The build context handed to buildah is staged from exactly the hashed files, with fixed
timestamps and modes, so the tag and the image agree, git-ignored files (__pycache__,
build/) never enter an image, and buildah's layer cache hits in a fresh clone too.

Standard library only: it runs under the host's python3 before any venv exists.
    inputs.py tag   --root DIR --dockerfile FILE --target NAME [--extra K=V]...
    inputs.py files --root DIR --dockerfile FILE --target NAME
    inputs.py stage --root DIR --dockerfile FILE --target NAME DEST
    inputs.py hash  FILE... [--extra K=V]...
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import shlex
import shutil
import stat
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path

TAG_LENGTH = 16
# 2024-01-01T00:00:00Z: any fixed time after 1980 (wheels are zip files, which cannot
# hold earlier timestamps, and `pip install .` zips the staged sources).
STAGED_MTIME_SECONDS = 1704067200
_IGNORED_WITHOUT_GIT = {"__pycache__", ".mypy_cache", ".pytest_cache", ".ruff_cache"}


@dataclass
class Stage:
    """One FROM block: the stage it builds on (if a stage of this file) and its COPY sources."""

    name: str
    parent: str | None
    copy_sources: list[str] = field(default_factory=list)


def _logical_lines(text: str) -> list[str]:
    """Dockerfile instructions with backslash continuations joined and comments dropped."""
    lines: list[str] = []
    pending = ""
    for raw in text.splitlines():
        stripped = raw.strip()
        if not pending and (not stripped or stripped.startswith("#")):
            continue
        if pending and stripped.startswith("#"):
            continue
        if stripped.endswith("\\"):
            pending += stripped[:-1] + " "
            continue
        lines.append(pending + stripped)
        pending = ""
    if pending.strip():
        lines.append(pending.strip())
    return lines


def parse_stages(dockerfile_text: str) -> dict[str, Stage]:
    """The stages of a Dockerfile by name (unnamed stages by their index)."""
    stages: dict[str, Stage] = {}
    current: Stage | None = None
    for line in _logical_lines(dockerfile_text):
        instruction, _, rest = line.partition(" ")
        keyword = instruction.upper()
        if keyword == "FROM":
            words = [w for w in rest.split() if not w.startswith("--")]
            name = words[2] if len(words) >= 3 and words[1].upper() == "AS" else str(len(stages))
            parent = words[0] if words and words[0] in stages else None
            current = Stage(name=name, parent=parent)
            stages[name] = current
        elif keyword in ("COPY", "ADD") and current is not None:
            rest = rest.strip()
            if rest.startswith("["):
                words = json.loads(rest)
            else:
                words = shlex.split(rest)
            if any(w.startswith("--from") for w in words):
                continue  # from another stage or image, not from the build context
            paths = [w for w in words if not w.startswith("--")]
            current.copy_sources.extend(paths[:-1])
    return stages


def target_sources(dockerfile_text: str, target: str) -> list[str]:
    """The build-context paths the stages leading to `target` copy, in order."""
    stages = parse_stages(dockerfile_text)
    if target not in stages:
        raise KeyError(f"no stage {target!r} in the Dockerfile (stages: {', '.join(stages)})")
    chain: list[Stage] = []
    name: str | None = target
    while name is not None:
        chain.append(stages[name])
        name = stages[name].parent
    sources: list[str] = []
    for stage in reversed(chain):
        sources.extend(s for s in stage.copy_sources if s not in sources)
    return sources


def _is_git_tree(root: Path) -> bool:
    result = subprocess.run(
        ["git", "-C", str(root), "rev-parse", "--is-inside-work-tree"],
        capture_output=True, text=True, check=False,
    )
    return result.returncode == 0 and result.stdout.strip() == "true"


def list_files(root: Path, sources: list[str]) -> list[str]:
    """Files (relative paths, sorted) under `sources`, without what git ignores."""
    for source in sources:
        if not (root / source).exists():
            raise FileNotFoundError(f"the Dockerfile copies {source!r}, missing under {root}")
    if _is_git_tree(root):
        listed = subprocess.run(
            ["git", "-C", str(root), "ls-files", "-z", "--cached", "--others",
             "--exclude-standard", "--", *sources],
            capture_output=True, check=True,
        ).stdout.decode().split("\0")
        # --cached still lists a tracked file deleted from the tree.
        files = {f for f in listed if f and os.path.lexists(root / f)}
    else:
        files = set()
        for source in sources:
            path = root / source
            if not path.is_dir():
                files.add(source)
                continue
            for dirpath, dirnames, filenames in os.walk(path):
                dirnames[:] = [d for d in dirnames if d not in _IGNORED_WITHOUT_GIT]
                for filename in filenames:
                    if not filename.endswith(".pyc"):
                        files.add(os.path.relpath(os.path.join(dirpath, filename), root))
    return sorted(files)


def content_tag(root: Path, files: list[str], extra: dict[str, str] | None = None) -> str:
    """A hash of the files' paths, contents and executable bits, and of `extra`."""
    digest = hashlib.sha256()
    for key, value in sorted((extra or {}).items()):
        digest.update(f"extra\0{key}\0{value}\0".encode())
    for relative in sorted(files):
        path = root / relative
        info = path.lstat()
        if stat.S_ISLNK(info.st_mode):
            body = b"link:" + os.readlink(path).encode()
        else:
            body = hashlib.sha256(path.read_bytes()).hexdigest().encode()
        executable = b"x" if info.st_mode & 0o111 else b"-"
        digest.update(relative.encode() + b"\0" + executable + b"\0" + body + b"\0")
    return digest.hexdigest()[:TAG_LENGTH]


def target_files(root: Path, dockerfile: Path, target: str) -> list[str]:
    """The build-context files `target` copies (the Dockerfile is hashed beside them)."""
    return list_files(root, target_sources(dockerfile.read_text(), target))


def target_tag(root: Path, dockerfile: Path, target: str, extra: dict[str, str]) -> str:
    """The content tag of one Dockerfile target."""
    dockerfile_digest = hashlib.sha256(dockerfile.read_bytes()).hexdigest()
    return content_tag(
        root, target_files(root, dockerfile, target),
        {**extra, "target": target, "dockerfile": dockerfile_digest},
    )


def stage_context(root: Path, files: list[str], dest: Path) -> None:
    """Copy `files` into the empty directory `dest` with fixed modes and timestamps."""
    for relative in files:
        source = root / relative
        target = dest / relative
        target.parent.mkdir(parents=True, exist_ok=True)
        if source.is_symlink():
            os.symlink(os.readlink(source), target)
            continue
        shutil.copyfile(source, target)
        target.chmod(0o755 if source.stat().st_mode & 0o111 else 0o644)
    for dirpath, dirnames, filenames in os.walk(dest, topdown=False):
        for name in filenames + dirnames:
            os.utime(os.path.join(dirpath, name), (STAGED_MTIME_SECONDS,) * 2,
                     follow_symlinks=False)
        os.chmod(dirpath, 0o755)
        os.utime(dirpath, (STAGED_MTIME_SECONDS,) * 2)


def _extras(pairs: list[str]) -> dict[str, str]:
    extra: dict[str, str] = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep:
            raise SystemExit(f"--extra wants KEY=VALUE, got {pair!r}")
        extra[key] = value
    return extra


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    for name in ("tag", "files", "stage"):
        command = sub.add_parser(name)
        command.add_argument("--root", type=Path, required=True)
        command.add_argument("--dockerfile", type=Path, required=True)
        command.add_argument("--target", required=True)
        command.add_argument("--extra", action="append", default=[])
        if name == "stage":
            command.add_argument("dest", type=Path)
    hash_files = sub.add_parser("hash")
    hash_files.add_argument("files", nargs="+", type=Path)
    hash_files.add_argument("--extra", action="append", default=[])
    args = parser.parse_args(argv)

    if args.command == "hash":
        paths = [p.resolve() for p in args.files]
        base = Path(os.path.commonpath([p.parent for p in paths]))
        print(content_tag(base, [str(p.relative_to(base)) for p in paths], _extras(args.extra)))
        return 0
    root = args.root.resolve()
    if args.command == "tag":
        print(target_tag(root, args.dockerfile, args.target, _extras(args.extra)))
    elif args.command == "files":
        print("\n".join(target_files(root, args.dockerfile, args.target)))
    else:
        if args.dest.exists() and any(args.dest.iterdir()):
            raise SystemExit(f"{args.dest} is not empty")
        args.dest.mkdir(parents=True, exist_ok=True)
        stage_context(root, target_files(root, args.dockerfile, args.target), args.dest)
    return 0


if __name__ == "__main__":
    sys.exit(main())
