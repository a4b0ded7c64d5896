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
# The checkout wins over whatever the shared venv's editable install points at.
export PYTHONPATH="$root${PYTHONPATH:+:$PYTHONPATH}"
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 TOKENIZERS_PARALLELISM=false
set +e
"$venv/bin/python" -m pytest -ra --durations=15 "$@"
rc=$?
set -e
# pytest exits 5 when it collected no tests (e.g. a -m that matches nothing).
if [ "$rc" -eq 5 ]; then
  echo "test: no tests were collected" >&2
  rc=0
fi
exit "$rc"
