"""The controller runtime, the Workspace reconciler and the node provisioners."""
