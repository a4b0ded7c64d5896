#!/usr/bin/env bash
# Provides the Kubernetes binaries the test tiers run: etcd, kube-apiserver,
# kube-controller-manager, kube-scheduler, kubectl and kwok (envtest and e2e), and the
# kubelet and kube-proxy of the real-node tier (tests/kubelet, `kaito dev up --real-node`).
#
# If KUBEBUILDER_ASSETS names a folder holding them, that folder is used as is.
# Otherwise they are built from Go modules with this machine's Go toolchain (the
# modules under hack/k8s pin one Kubernetes release with `replace` lines for its
# staging modules) and cached outside the repository, keyed by version, so a second
# run is instant. Prints the folder holding the binaries on stdout.
set -euo pipefail

K8S_VERSION=v1.35.4
ETCD_VERSION=v3.6.5
KWOK_VERSION=v0.7.0
here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
cache_root=${KAITO_K8S_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/kaito-k8s}
bin_dir="$cache_root/$K8S_VERSION-etcd$ETCD_VERSION-kwok$KWOK_VERSION"
wanted=(etcd kube-apiserver kube-controller-manager kube-scheduler kubectl kwok kubelet kube-proxy)

have_all() {
  local dir=$1 b
  for b in "${wanted[@]}"; do [ -x "$dir/$b" ] || return 1; done
}

if [ -n "${KUBEBUILDER_ASSETS:-}" ] && have_all "$KUBEBUILDER_ASSETS"; then
  echo "$KUBEBUILDER_ASSETS"
  exit 0
fi
if have_all "$bin_dir"; then
  echo "$bin_dir"
  exit 0
fi

# One build at a time: a second caller waits, then finds the binaries in the cache.
mkdir -p "$cache_root"
exec 9>"$cache_root/.lock"
flock 9
if have_all "$bin_dir"; then
  echo "$bin_dir"
  exit 0
fi

command -v go >/dev/null || { echo "k8s-binaries: the Go toolchain is needed to build the control plane" >&2; exit 1; }
mkdir -p "$bin_dir"
tmp_dir=$(mktemp -d "$cache_root/build.XXXXXX")
trap 'rm -rf "$tmp_dir"' EXIT
start=$(date +%s)

# Version stamps, as the Kubernetes release build sets them, so `kubectl version`
# and the apiserver's /version say what they are.
pkg=k8s.io/component-base/version
ldflags="-s -w -X $pkg.gitVersion=$K8S_VERSION -X $pkg.gitMajor=1 -X $pkg.gitMinor=$(echo $K8S_VERSION | cut -d. -f2) -X $pkg.gitTreeState=clean -X $pkg.buildDate=1970-01-01T00:00:00Z"
ldflags="$ldflags -X k8s.io/client-go/pkg/version.gitVersion=$K8S_VERSION"

export CGO_ENABLED=0 GOFLAGS=-mod=mod
# Only what is missing is built: a cache made before the kubelet joined the list keeps
# its control plane and gains the two node binaries.
missing() { [ ! -x "$bin_dir/$1" ]; }
(
  cd "$here/k8s/kube"
  for cmd in kube-apiserver kube-controller-manager kube-scheduler kubectl kubelet kube-proxy; do
    missing "$cmd" || continue
    echo "k8s-binaries: building $cmd $K8S_VERSION" >&2
    go build -trimpath -ldflags "$ldflags" -o "$tmp_dir/$cmd" "k8s.io/kubernetes/cmd/$cmd"
  done
  if missing etcd; then
    echo "k8s-binaries: building etcd $ETCD_VERSION" >&2
    go build -trimpath -ldflags "-s -w" -o "$tmp_dir/etcd" go.etcd.io/etcd/server/v3
  fi
)
if missing kwok; then
  (
    cd "$here/k8s/kwok"
    echo "k8s-binaries: building kwok $KWOK_VERSION" >&2
    go build -trimpath -ldflags "-s -w" -o "$tmp_dir/kwok" sigs.k8s.io/kwok/cmd/kwok
  )
fi
find "$tmp_dir" -maxdepth 1 -type f -exec mv {} "$bin_dir"/ \;
echo "k8s-binaries: built in $(( $(date +%s) - start )) s into $bin_dir" >&2
echo "$bin_dir"
