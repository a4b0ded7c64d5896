#!/usr/bin/env bash
# `make bench` (`make bench QUICK=1` for small sizes): the same set-up as `make test`
# (the locked venv, the Kubernetes binaries) plus the benchmark-only venv with llama.cpp's
# server (benchmarks/venv.sh; its first run compiles llama.cpp), then every benchmark
# through benchmarks/run.py: one table of same-run ratios, and
# benchmarks/results/<date>.json. Extra arguments go to run.py, e.g. `--only webhook`.
set -euo pipefail
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$root"
venv=$(bash hack/venv.sh)
KUBEBUILDER_ASSETS=$(bash hack/k8s-binaries.sh)
export KUBEBUILDER_ASSETS
export PATH="$KUBEBUILDER_ASSETS:$PATH"
bench_venv=$(bash benchmarks/venv.sh)
export PYTHONPATH="$root${PYTHONPATH:+:$PYTHONPATH}"
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 TOKENIZERS_PARALLELISM=false
quick=()
[ "${KAITO_BENCH_QUICK:-}" = 1 ] && quick=(--quick)
exec "$venv/bin/python" -m benchmarks.run "${quick[@]}" \
  --llama-cpp-python "$bench_venv/bin/python" "$@"
