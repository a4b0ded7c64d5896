"""A small typed Kubernetes client: raw JSON objects in, one error tree out."""

from controller.kube.client import KubeClient, ListPage, WatchEvent
from controller.kube.errors import (
    AlreadyExists,
    ApiUnavailable,
    BadRequest,
    Conflict,
    Forbidden,
    Gone,
    Invalid,
    KubeError,
    NotFound,
    ServerError,
    TooManyRequests,
    Unauthorized,
)
from controller.kube.resources import CONFIGMAPS, LEASES, NAMESPACES, ResourceType
from controller.kube.typed import TypedResource

__all__ = [
    "CONFIGMAPS",
    "LEASES",
    "NAMESPACES",
    "AlreadyExists",
    "ApiUnavailable",
    "BadRequest",
    "Conflict",
    "Forbidden",
    "Gone",
    "Invalid",
    "KubeClient",
    "KubeError",
    "ListPage",
    "NotFound",
    "ResourceType",
    "ServerError",
    "TooManyRequests",
    "TypedResource",
    "Unauthorized",
    "WatchEvent",
]
