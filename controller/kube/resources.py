"""Resource coordinates (group, version, plural) and the REST paths built from them."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any
from urllib.parse import quote

# An API object as the server sends it: parsed JSON, not yet validated.
KubeObject = dict[str, Any]


@dataclass(frozen=True)
class ResourceType:
    """One Kubernetes resource kind, enough to build its REST paths."""

    group: str
    version: str
    plural: str
    kind: str
    namespaced: bool = True

    @property
    def api_version(self) -> str:
        return f"{self.group}/{self.version}" if self.group else self.version

    def path(self, namespace: str | None = None, name: str | None = None) -> str:
        """`/api/v1/namespaces/ns/configmaps/name` and friends.

        A namespaced resource without a namespace gives the all-namespaces collection.
        """
        base = f"/apis/{self.group}/{self.version}" if self.group else f"/api/{self.version}"
        if self.namespaced and namespace:
            base += f"/namespaces/{quote(namespace, safe='')}"
        elif not self.namespaced and namespace:
            raise ValueError(f"{self.kind} is cluster-scoped; got namespace {namespace!r}")
        base += f"/{self.plural}"
        if name is not None:
            if not name:
                raise ValueError("object name must not be empty")
            base += f"/{quote(name, safe='')}"
        return base

    def __str__(self) -> str:
        return f"{self.plural}.{self.group}" if self.group else self.plural


CONFIGMAPS = ResourceType("", "v1", "configmaps", "ConfigMap")
LEASES = ResourceType("coordination.k8s.io", "v1", "leases", "Lease")
NAMESPACES = ResourceType("", "v1", "namespaces", "Namespace", namespaced=False)

# What the Workspace and node-claim controllers read and write.
WORKSPACES = ResourceType("kaito.sh", "v1beta1", "workspaces", "Workspace")
NODECLAIMS = ResourceType("karpenter.sh", "v1", "nodeclaims", "NodeClaim", namespaced=False)
MACHINES = ResourceType("karpenter.sh", "v1alpha5", "machines", "Machine", namespaced=False)
NODES = ResourceType("", "v1", "nodes", "Node", namespaced=False)
PODS = ResourceType("", "v1", "pods", "Pod")
SERVICES = ResourceType("", "v1", "services", "Service")
SECRETS = ResourceType("", "v1", "secrets", "Secret")
EVENTS = ResourceType("events.k8s.io", "v1", "events", "Event")
JOBS = ResourceType("batch", "v1", "jobs", "Job")
DEPLOYMENTS = ResourceType("apps", "v1", "deployments", "Deployment")
STATEFULSETS = ResourceType("apps", "v1", "statefulsets", "StatefulSet")
CONTROLLER_REVISIONS = ResourceType("apps", "v1", "controllerrevisions", "ControllerRevision")
