"""The Workspace API (group kaito.sh) and the Karpenter-core objects, as pydantic models."""
