"""The claim reconciler: one NodeClaim (or Machine) through Karpenter-core's lifecycle.

One pass reads the claim and its node from the cache and moves it as far as it can:
finalizer → Launched (the backend made capacity; providerID and capacity in status) →
Registered (a node with the claim's label joined; its labels and taints are synced) →
Initialized (the node is Ready and reports its GPUs) → Ready. A launch or registration
that outlasts its time-out ends with a False condition naming the cause and the claim
deleted, so its owner makes a new one. A refused launch (quota, capacity) is a False
condition and is not retried: the owner decides. A refusal that made nothing (the
create itself refused, or an instance type nobody offers) is marked on the claim
(``kaito.sh/nothing-launched``), so deleting it asks the cloud nothing: a claim refused
and replaced with backoff costs one cloud create per attempt. Deletion removes the cloud
capacity, then the node, then the finalizer. Status is written only when it changed.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from controller.events import NORMAL, WARNING, EventRecorder
from controller.informer import Informer
from controller.kube.client import KubeClient
from controller.kube.errors import NotFound
from controller.kube.resources import NODES, KubeObject, ResourceType
from controller.provisioning.backend import Backend, Launched, LaunchFailed, Pending
from controller.provisioning.claims import (
    FINALIZER,
    INITIALIZED,
    LAUNCHED,
    NODECLAIM_LABEL,
    READY,
    REGISTERED,
    Claim,
    Conditions,
    is_node_ready,
    node_gpus,
    node_sync_patch,
    parse_claim,
    parse_time,
    with_condition,
    with_ready,
)
from controller.provisioning.metrics import ProvisioningMetrics
from controller.provisioning.offerings import UnavailableOfferings
from controller.reconcile import Request, Result
from presets.catalog import Catalog

log = logging.getLogger(__name__)

# On a claim whose launch was refused before anything was made: no cloud delete needed.
NOTHING_LAUNCHED_ANNOTATION = "kaito.sh/nothing-launched"


@dataclass(frozen=True)
class LifecycleSettings:
    launch_timeout_seconds: float = 900.0
    registration_timeout_seconds: float = 900.0
    recheck_seconds: float = 5.0
    unavailable_offering_seconds: float = 180.0


class ClaimReconciler:
    """Drives claims of one kind (`resource`) with one backend."""

    def __init__(
        self, client: KubeClient, resource: ResourceType, claims: Informer, nodes: Informer,
        catalog: Catalog, backend: Backend, events: EventRecorder,
        metrics: ProvisioningMetrics, settings: LifecycleSettings | None = None,
        clock: Callable[[], float] = time.time,
        offerings: UnavailableOfferings | None = None,
    ) -> None:
        self._offerings = offerings or UnavailableOfferings(0)
        self._client = client
        self._resource = resource
        self._claims = claims
        self._nodes = nodes
        self._catalog = catalog
        self._backend = backend
        self._events = events
        self._metrics = metrics
        self._settings = settings or LifecycleSettings()
        self._clock = clock

    def node_for(self, claim_name: str) -> KubeObject | None:
        found = self._nodes.cache.objects(labels={NODECLAIM_LABEL: claim_name})
        return found[0] if found else None

    async def reconcile(self, request: Request) -> Result:
        obj = self._claims.cache.get(request.key)
        if obj is None:
            return Result()
        claim = parse_claim(obj)
        if not claim.is_ours:
            return Result()
        if not claim.is_deleting and not claim.is_true(LAUNCHED):
            # A launch decision is a cloud call: make it on the claim as stored, not on a
            # cache that may not show yet what the previous pass wrote (a refusal, say).
            try:
                obj = await self._client.get(self._resource, claim.name)
            except NotFound:
                return Result()
            claim = parse_claim(obj)
        if claim.is_deleting:
            return await self._finalize(claim, obj)
        if FINALIZER not in claim.finalizers:
            obj = await self._client.patch(self._resource, claim.name, {"metadata": {
                "finalizers": [*claim.finalizers, FINALIZER],
                "resourceVersion": claim.resource_version}})
            claim = parse_claim(obj)
        conditions: Conditions = [dict(c) for c in claim.conditions]
        status = dict(obj.get("status") or {})
        result = await self._advance(claim, obj, conditions, status)
        if result.deleted:
            return Result()
        status["conditions"] = with_ready(result.conditions, self._clock())
        if status != (obj.get("status") or {}):
            await self._client.replace_status(self._resource, {**obj, "status": status})
            if not claim.is_true(READY) and _is_true(status["conditions"], READY):
                self._observe_ready(claim)
                await self._events.record(obj, NORMAL, "Ready",
                                          f"node {status.get('nodeName')} is Ready")
        if result.made_nothing and not _made_nothing(obj):
            await self._client.patch(self._resource, claim.name, {"metadata": {
                "annotations": {NOTHING_LAUNCHED_ANNOTATION: "true"}}})
        return result.outcome

    async def _advance(
        self, claim: Claim, obj: KubeObject, conditions: Conditions, status: dict[str, Any]
    ) -> _Step:
        now = self._clock()
        settings = self._settings
        if _status(conditions, LAUNCHED) == "False":
            return _Step(conditions, Result())  # refused: the owner deletes the claim
        if _status(conditions, LAUNCHED) != "True":
            created = claim.created_at or now
            if now - created > settings.launch_timeout_seconds:
                last = (_condition(conditions, LAUNCHED) or {}).get("message")
                return await self._time_out(
                    claim, obj, conditions, LAUNCHED, "LaunchTimeout",
                    f"not launched after {settings.launch_timeout_seconds:.0f} s"
                    + (f" (last: {last})" if last else ""))
            sku = self._catalog.sku(claim.instance_type or "")
            if sku is None:
                conditions = with_condition(
                    conditions, LAUNCHED, "False", "InstanceTypeUnknown",
                    f"instance type {claim.instance_type!r} is not a known GPU SKU", now)
                await self._events.record(obj, WARNING, "InstanceTypeUnknown",
                                          f"unknown instance type {claim.instance_type!r}")
                return _Step(conditions, Result(), made_nothing=True)
            remembered = self._offerings.refusal(sku.name)
            outcome = remembered or await self._backend.launch(
                claim, sku, wait_seconds=settings.launch_timeout_seconds - (now - created))
            if isinstance(outcome, Pending):
                conditions = with_condition(conditions, LAUNCHED, "Unknown", outcome.reason,
                                            outcome.message, now)
                return _Step(conditions, Result(
                    requeue_after_seconds=min(outcome.retry_after_seconds,
                                              settings.launch_timeout_seconds)))
            if isinstance(outcome, LaunchFailed):
                if remembered is None:
                    self._offerings.remember(sku.name, outcome)
                log.warning("launch refused", extra={
                    "nodeclaim": claim.name, "reason": outcome.reason,
                    "error": outcome.message})
                await self._events.record(obj, WARNING, outcome.reason, outcome.message)
                conditions = with_condition(conditions, LAUNCHED, "False", outcome.reason,
                                            outcome.message, now)
                # A remembered refusal asked the cloud nothing for this claim.
                return _Step(conditions, Result(),
                             made_nothing=remembered is not None or outcome.made_nothing)
            assert isinstance(outcome, Launched)
            status["providerID"] = outcome.provider_id
            status["capacity"] = dict(outcome.capacity)
            status["allocatable"] = dict(outcome.capacity)
            conditions = with_condition(conditions, LAUNCHED, "True", "Launched", "", now)
            log.info("nodeclaim launched", extra={"nodeclaim": claim.name,
                                                  "provider_id": outcome.provider_id})
            await self._events.record(obj, NORMAL, "Launched",
                                      f"launched {claim.instance_type} ({outcome.provider_id})")
        node = self.node_for(claim.name)
        if node is None:
            if _status(conditions, REGISTERED) == "True":
                await self._delete_claim(claim, obj, "NodeDeleted", "its node was deleted")
                return _Step(conditions, Result(), deleted=True)
            launched_at = _transition_time(conditions, LAUNCHED) or now
            waited = now - launched_at
            if waited > settings.registration_timeout_seconds:
                return await self._time_out(
                    claim, obj, conditions, REGISTERED, "RegistrationTimeout",
                    f"no node joined after {settings.registration_timeout_seconds:.0f} s")
            conditions = with_condition(conditions, REGISTERED, "Unknown", "AwaitingNode",
                                        "waiting for the node to join", now)
            return _Step(conditions, Result(requeue_after_seconds=settings.recheck_seconds))
        node_name = str(node["metadata"]["name"])
        patch = node_sync_patch(
            claim, node, with_taints=getattr(self._backend, "owns_node_objects", True))
        if patch is not None:
            await self._client.patch(NODES, node_name, patch)
        status["nodeName"] = node_name
        if (node.get("spec") or {}).get("providerID"):
            status["providerID"] = node["spec"]["providerID"]
        if _status(conditions, REGISTERED) != "True":
            log.info("node registered", extra={"nodeclaim": claim.name, "node": node_name})
        conditions = with_condition(conditions, REGISTERED, "True", "Registered", "", now)
        sku = self._catalog.sku(claim.instance_type or "")
        wanted_gpus = sku.gpu_count if sku is not None else 1
        if not (is_node_ready(node) and node_gpus(node) >= wanted_gpus):
            conditions = with_condition(
                conditions, INITIALIZED, "Unknown", "NodeNotReady",
                f"waiting for node {node_name} to be Ready with {wanted_gpus} GPU(s)", now)
            return _Step(conditions, Result(requeue_after_seconds=settings.recheck_seconds))
        conditions = with_condition(conditions, INITIALIZED, "True", "Initialized", "", now)
        return _Step(conditions, Result())

    async def _time_out(
        self, claim: Claim, obj: KubeObject, conditions: Conditions, condition_type: str,
        reason: str, message: str,
    ) -> _Step:
        now = self._clock()
        conditions = with_ready(
            with_condition(conditions, condition_type, "False", reason, message, now), now)
        status = {**(obj.get("status") or {}), "conditions": conditions}
        obj = await self._client.replace_status(self._resource, {**obj, "status": status})
        await self._delete_claim(claim, obj, reason, message)
        return _Step(conditions, Result(), deleted=True)

    async def _delete_claim(self, claim: Claim, obj: KubeObject, reason: str,
                            message: str) -> None:
        log.warning("deleting nodeclaim", extra={"nodeclaim": claim.name, "reason": reason})
        await self._events.record(obj, WARNING, reason, message)
        try:
            await self._client.delete(self._resource, claim.name)
        except NotFound:
            pass

    async def _finalize(self, claim: Claim, obj: KubeObject) -> Result:
        if FINALIZER not in claim.finalizers:
            return Result()
        if not _made_nothing(obj) and not await self._backend.delete(claim):
            return Result(requeue_after_seconds=self._settings.recheck_seconds)
        node = self.node_for(claim.name)
        names = {claim.node_name, (node or {}).get("metadata", {}).get("name")} - {None}
        if not getattr(self._backend, "owns_node_objects", True):
            names = set()  # the pool's nodes outlive their claims
        for name in names:
            try:
                await self._client.delete(NODES, str(name))
            except NotFound:
                pass
        try:
            await self._client.patch(self._resource, claim.name, {"metadata": {
                "finalizers": [f for f in claim.finalizers if f != FINALIZER],
                "resourceVersion": claim.resource_version}})
        except NotFound:
            return Result()  # finalized by an earlier pass the cache had not shown yet
        log.info("nodeclaim finalized", extra={"nodeclaim": claim.name})
        self._events.forget(claim.uid)
        return Result()

    def _observe_ready(self, claim: Claim) -> None:
        if claim.created_at is not None:
            seconds = max(0.0, self._clock() - claim.created_at)
            self._metrics.ready_seconds.labels(backend=self._backend.name).observe(seconds)
            log.info("nodeclaim ready", extra={"nodeclaim": claim.name,
                                               "seconds_to_ready": round(seconds, 1)})


@dataclass
class _Step:
    conditions: Conditions
    outcome: Result
    deleted: bool = False
    made_nothing: bool = False  # refused before anything was made in the cloud


def _made_nothing(obj: KubeObject) -> bool:
    annotations = (obj.get("metadata") or {}).get("annotations") or {}
    return bool(annotations.get(NOTHING_LAUNCHED_ANNOTATION) == "true")


def _condition(conditions: Conditions, condition_type: str) -> dict[str, Any] | None:
    for condition in conditions:
        if condition.get("type") == condition_type:
            return condition
    return None


def _status(conditions: Conditions, condition_type: str) -> str:
    condition = _condition(conditions, condition_type)
    return str(condition.get("status")) if condition else "Unknown"


def _is_true(conditions: Conditions, condition_type: str) -> bool:
    return _status(conditions, condition_type) == "True"


def _transition_time(conditions: Conditions, condition_type: str) -> float | None:
    condition = _condition(conditions, condition_type)
    return parse_time(condition.get("lastTransitionTime")) if condition else None
