"""The admission webhook: defaults and validates Workspaces for the kube-apiserver."""
