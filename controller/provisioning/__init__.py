"""The node provisioner: Karpenter-core NodeClaims (and legacy Machines) become GPU nodes.

Its own controller on the shared controller runtime, run as its own process
(`kaito provisioner`) under its own ServiceAccount. Backends: `local` (kwok nodes, for the
dev cluster and the e2e tier) and `aks` (one AKS agent pool per claim).
"""
