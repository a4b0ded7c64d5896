#!/usr/bin/env bash
# Creates (once) the benchmark-only venv: llama.cpp's OpenAI-compatible server
# (llama-cpp-python[server]), the CPU engine `make bench` compares our serving runtime
# against. It is a venv of its own, not the test venv, because PyPI ships llama-cpp-python
# as source only: installing it compiles llama.cpp (10+ minutes on two cores), which
# neither CI nor `make test` should pay. Every package comes from requirements/bench.txt
# at its locked version and hash (`make lock` refreshes it). Keyed by a hash of that lock,
# kept outside the clone, reused by later runs. Prints the venv path on stdout.
set -euo pipefail
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
layout=1  # bump when the install steps below change
python=${PYTHON:-python3}
cache=${XDG_CACHE_HOME:-$HOME/.cache}
lock=$root/requirements/bench.txt
key=$( (cat "$lock"; echo "$layout") | sha256sum | cut -c1-16)
venv=${KAITO_BENCH_VENV:-$cache/kaito-bench-venv/$key}

mkdir -p "$(dirname "$venv")"
exec 9>"$venv.lock"
flock 9  # concurrent callers wait for one build instead of racing it

if [ ! -f "$venv/.complete" ]; then
  echo "bench venv: building llama.cpp into $venv (first run only: 10+ minutes)" >&2
  rm -rf "$venv"
  "$python" -m venv "$venv"
  # The multimodal (llava/mtmd) library is not benchmarked: skipping it halves the build.
  CMAKE_ARGS="-DLLAVA_BUILD=OFF ${CMAKE_ARGS:-}" CMAKE_BUILD_PARALLEL_LEVEL=$(nproc) \
    "$venv/bin/pip" install -q --disable-pip-version-check --no-deps --require-hashes \
    -r "$lock" >&2
  touch "$venv/.complete"
fi
echo "$venv"
