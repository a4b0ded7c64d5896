#!/usr/bin/env bash
# The main job (`make demo`): on a fresh machine, builds what it needs, starts the local
# cluster (etcd, kube-apiserver, controller-manager, scheduler, kwok GPU nodes), installs
# the Workspace CRDs and applies the seed's fine-tuning Workspace.
# `make demo-down` stops the cluster.
set -euo pipefail
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$root"
venv=$(bash hack/venv.sh)
bin_dir=$(bash hack/k8s-binaries.sh)
export KUBEBUILDER_ASSETS=$bin_dir
kaito="$venv/bin/kaito"
if [ "${1:-}" = "down" ]; then
  exec "$kaito" dev down
fi
"$kaito" dev up --gpu-nodes 1 | tee /tmp/kaito-dev-up.txt
KUBECONFIG=$(sed -n 's/^export KUBECONFIG=//p' /tmp/kaito-dev-up.txt)
export KUBECONFIG
kubectl=("$bin_dir/kubectl")
echo "+ kubectl get nodes"
"${kubectl[@]}" get nodes -o wide
if "$venv/bin/python" -c "import crds.generate" 2>/dev/null; then
  echo "+ kaito crds | kubectl apply -f -"
  "$kaito" crds | "${kubectl[@]}" apply -f -
  "${kubectl[@]}" wait --for=condition=Established crd/workspaces.kaito.sh --timeout=60s
  echo "+ kubectl apply -f examples/fine-tuning/kaito_workspace_tuning_phi_3.yaml"
  "${kubectl[@]}" apply -f examples/fine-tuning/kaito_workspace_tuning_phi_3.yaml
  "${kubectl[@]}" get workspace -o wide
fi
echo
echo "The cluster keeps running; use it with:"
echo "  export KUBECONFIG=$KUBECONFIG"
echo "Stop it with: make demo-down"
