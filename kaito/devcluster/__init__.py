"""A real local Kubernetes control plane for tests and humans.

It runs etcd and kube-apiserver (and, for the e2e tier, kube-controller-manager,
kube-scheduler and kwok with simulated GPU nodes) from binaries built by
hack/k8s-binaries.sh, the way controller-runtime's envtest does.
"""

from kaito.devcluster.cluster import LocalCluster, find_binaries

__all__ = ["LocalCluster", "find_binaries"]
