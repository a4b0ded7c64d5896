"""The controller runtime, the Workspace reconciler and the node provisioners.

The runtime mirrors controller-runtime; a controller is wired like this::

    client = await KubeClient.from_kubeconfig(path)        # controller.kube
    manager = Manager(client, elector=LeaseElector(...))   # controller.manager / .leader
    informer = manager.informer(WORKSPACES)                 # shared list+watch+cache
    controller = Controller("workspace", reconciler, workers=4, metrics=manager.metrics)
    controller.watch(informer)                            # primary: each object's key
    controller.watch(manager.informer(JOBS), enqueue_owner("Workspace", "kaito.sh"))
    controller.watch(manager.informer(NODECLAIMS),
                     enqueue_by_labels("kaito.sh/workspace", "kaito.sh/workspacenamespace"))
    manager.add_controller(controller)
    await manager.run()   # /healthz /readyz /metrics; SIGTERM -> manager.stop()

A reconciler implements `async reconcile(request) -> Result` (controller.reconcile):
raise to retry with backoff, raise `TerminalError` for bad input, return
`Result(requeue_after_seconds=...)` to look again later. `python -m controller` runs the
manager with the Workspace controller (controller.workspace); the envtests also run the
runtime with a small ConfigMap-copy reconciler (tests/envtest/configmap_copy.py).
"""
