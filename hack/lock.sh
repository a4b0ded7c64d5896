#!/usr/bin/env bash
# Refreshes the lock files under requirements/ (`make lock`): the exact version and the
# hashes of every Python dependency, per extra, for CPython 3.11 on x86_64 Linux.
# Upgrading a dependency is this command plus a commit; nothing else resolves versions.
#   requirements/dev.txt       every extra (operator, runtime, dev): the test venv
#   requirements/operator.txt  the operator image (no torch)
#   requirements/runtime.txt   the runtime image (tuning and serving)
#   requirements/nodeps.txt    installed without their dependencies (see nodeps.in)
#   requirements/build.txt     the build backend for installing this project (build.in)
#   requirements/bench.txt     `make bench` only: llama.cpp's server (benchmarks/venv.sh)
# operator.txt, runtime.txt and bench.txt are constrained by dev.txt, so each package has one
# version everywhere. Uses uv (pinned), installed once into a cache folder.
# With an argument, writes the five files into that folder instead (`make test UPGRADE=1`).
set -euo pipefail
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
out=${1:-$root/requirements}
UV_VERSION=0.13.9
tools=${XDG_CACHE_HOME:-$HOME/.cache}/kaito-tools/uv-$UV_VERSION
python=${PYTHON:-python3}
if [ ! -x "$tools/bin/uv" ]; then
  "$python" -m venv "$tools" >&2
  "$tools/bin/pip" install -q "uv==$UV_VERSION" >&2
fi
uv=$tools/bin/uv
mkdir -p "$out"
cd "$root"
common=(--quiet --generate-hashes --python-version 3.11 --python-platform x86_64-manylinux_2_28
        --no-header --custom-compile-command "make lock")
# Without an existing lock to start from, uv resolves the newest versions.
upgrade=()
[ "$out" = "$root/requirements" ] || upgrade=(--upgrade)
"$uv" pip compile "${common[@]}" "${upgrade[@]}" pyproject.toml \
  --extra operator --extra runtime --extra dev -o "$out/dev.txt"
"$uv" pip compile "${common[@]}" pyproject.toml --extra operator \
  -c "$out/dev.txt" -o "$out/operator.txt"
"$uv" pip compile "${common[@]}" pyproject.toml --extra runtime \
  -c "$out/dev.txt" -o "$out/runtime.txt"
"$uv" pip compile "${common[@]}" pyproject.toml --extra bench \
  -c "$out/dev.txt" -o "$out/bench.txt"
"$uv" pip compile "${common[@]}" "${upgrade[@]}" --no-deps requirements/nodeps.in -o "$out/nodeps.txt"
"$uv" pip compile "${common[@]}" "${upgrade[@]}" requirements/build.in -o "$out/build.txt"
echo "lock: wrote $out/{dev,operator,runtime,bench,nodeps,build}.txt" >&2
