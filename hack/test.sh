#!/usr/bin/env bash
# The test command (`make test`): does all of its own set-up on a fresh machine —
# Debian packages, the venv (outside the clone, reused while pyproject.toml is
# unchanged), the Kubernetes binaries (built once from Go modules, cached) — then runs
# every tier. Extra arguments go to pytest, e.g. `make test ARGS="-m unit"`.
set -euo pipefail
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$root"
bash hack/apt-deps.sh
venv=$(bash hack/venv.sh)
# Build (or find) the control-plane binaries before pytest starts, so the build's
# minutes show up here and not inside a test's timeout.
KUBEBUILDER_ASSETS=$(bash hack/k8s-binaries.sh)
export KUBEBUILDER_ASSETS
# kubectl (and the other binaries) on PATH: the tests that call it must find it, and
# fail rather than skip when it is missing.
export PATH="$KUBEBUILDER_ASSETS:$PATH"
# The checkout wins over whatever the shared venv's editable install points at.
export PYTHONPATH="$root${PYTHONPATH:+:$PYTHONPATH}"
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 TOKENIZERS_PARALLELISM=false
# KAITO_FORCE_CPU_CAPABILITY=avx2 runs the suite as on a CPU without native bfloat16: the
# runtime chooses its precision for that CPU, and torch's and oneDNN's kernels are held
# to that instruction set too, so the speed is that CPU's as well.
case "${KAITO_FORCE_CPU_CAPABILITY:-}" in
  "") ;;
  default) export ATEN_CPU_CAPABILITY=default ONEDNN_MAX_CPU_ISA=SSE41 ;;
  avx2) export ATEN_CPU_CAPABILITY=avx2 ONEDNN_MAX_CPU_ISA=AVX2 ;;
  avx512) export ATEN_CPU_CAPABILITY=avx512 ONEDNN_MAX_CPU_ISA=AVX512_CORE ;;
  avx512_bf16) export ATEN_CPU_CAPABILITY=avx512 ONEDNN_MAX_CPU_ISA=AVX512_CORE_BF16 ;;
  amx) export ATEN_CPU_CAPABILITY=avx512 ONEDNN_MAX_CPU_ISA=AVX512_CORE_AMX ;;
  *) echo "test: KAITO_FORCE_CPU_CAPABILITY must be default, avx2, avx512, avx512_bf16 or amx" >&2
     exit 2 ;;
esac
# pytest's own exit status, 5 (no tests were collected: a -m or -k that matches nothing)
# included: a test command that ran nothing has not passed.
exec "$venv/bin/python" -m pytest -ra --durations=15 "$@"
