#!/usr/bin/env bash
# The main job (`make demo`): on a fresh machine, builds what it needs, then runs
# `kaito demo` (local cluster, CRDs, webhook, the seed Workspace, a /chat answer from the
# inference runtime). `make demo-down` (this script with `down`) stops the cluster, puts
# back what the real node changed on the host, and stops the image registry on
# 127.0.0.1:5001 when `make demo` started it (one already running is left alone).
set -euo pipefail
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$root"
bash hack/apt-deps.sh
venv=$(bash hack/venv.sh)
KUBEBUILDER_ASSETS=$(bash hack/k8s-binaries.sh)
export KUBEBUILDER_ASSETS HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1
export PYTHONPATH="$root${PYTHONPATH:+:$PYTHONPATH}"
if [ "${1:-}" = "down" ]; then
  exec "$venv/bin/kaito" dev down
fi
exec "$venv/bin/kaito" demo "$@"
