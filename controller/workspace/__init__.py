"""The Workspace controller: from one Workspace to GPU nodes, a tuning Job and a served model.

Pure planners (``nodes``, ``tuning``, ``inference``, ``status``, ``revision``) compute the
desired objects and conditions from what the cache holds; ``reconciler`` only reads the
cache, diffs and writes; ``setup`` wires it into the manager.
"""
