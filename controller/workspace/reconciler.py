"""The Workspace reconciler: read the cache, plan with the pure builders, write the
differences, report status.

One pass: finalizer → revision → nodes (claims) → tuning Job or serving workload →
status. Every object it makes carries a hash of its desired form
(``workspace.kaito.sh/desired-hash``); an object whose hash matches is left alone, so a
resync with nothing new makes no API write. Names are deterministic, so a create that
races a restart gets 409 and the next pass adopts what exists. Deletion removes the
workload and the claims and waits for the claims to be gone before dropping the
finalizer.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from controller.events import NORMAL, WARNING, EventRecorder
from controller.informer import Informer
from controller.kube.client import KubeClient
from controller.kube.errors import AlreadyExists, Conflict, NotFound
from controller.kube.resources import (
    CONFIGMAPS,
    CONTROLLER_REVISIONS,
    DEPLOYMENTS,
    JOBS,
    MACHINES,
    NODECLAIMS,
    SERVICES,
    STATEFULSETS,
    WORKSPACES,
    KubeObject,
    ResourceType,
)
from controller.reconcile import Request, Result
from controller.workspace import inference as inference_builders
from controller.workspace import registry_ca as registry_ca_builders
from controller.workspace import tuning as tuning_builders
from controller.workspace.metrics import WorkspaceMetrics
from controller.workspace.nodes import (
    byo_fit_problem,
    byo_node_count,
    claim_labels,
    nodes_gpu_sku,
    partition_sku,
    plan_nodes,
)
from controller.workspace.progress import ProgressReader, progress_status, same_progress
from controller.workspace.revision import (
    build_controller_revision,
    revision_hash,
    revision_name,
    revisions_to_prune,
)
from controller.workspace.status import (
    STATE_DELETING,
    Observed,
    StatusPlan,
    Verdict,
    apply_conditions,
    plan_status,
)
from controller.workspace.workload import (
    REVISION_ANNOTATION,
    WorkloadSettings,
    owner_reference,
    workspace_labels,
)
from crds.tuning_config import (
    CONFIG_KEY,
    ConfigError,
    Method,
    default_config_text,
    is_template_name,
    parse_training_config_text,
    template_name,
    with_target_modules,
)
from crds.workspace import CONDITION_INFERENCE_READY, CONDITION_WORKSPACE_READY, Workspace
from presets.catalog import Catalog, HfConfigSource, ModelPreset, is_hf_model_id
from presets.memory import DEFAULT_TUNING_SEQ_LEN, TuningShape

log = logging.getLogger(__name__)

FINALIZER = "workspace.kaito.sh/finalizer"
DESIRED_HASH_ANNOTATION = "workspace.kaito.sh/desired-hash"
# Upstream releases the nodes after tuning; here the adapter is served unless this is "false".
SERVE_AFTER_TUNING_ANNOTATION = "kaito.sh/serve-after-tuning"
JOB_NAME_LABEL = "batch.kubernetes.io/job-name"
BEST_EFFORT_RETRY_SECONDS = 300.0  # a model whose config.json could not be read
_WAITING_REASONS = frozenset({
    "TuningInProgress", "JobNotCreated", "JobPending", "NodeClaimNotReady",
    "WorkloadNotCreated", "InferenceNotReady"})


@dataclass(frozen=True)
class WorkspaceSettings:
    """What the reconciler needs besides the cluster."""

    workload: WorkloadSettings = field(default_factory=WorkloadSettings)
    can_provision: bool = True  # create NodeClaims (off: bring-your-own nodes only)
    use_machines: bool = False  # legacy karpenter.sh/v1alpha5 Machines instead of NodeClaims
    progress_interval_seconds: float = 15.0
    deletion_poll_seconds: float = 2.0
    operator_namespace: str = "kaito-system"  # where lora-/qlora-params-template live
    hf_configs: HfConfigSource | None = None  # config.json of best-effort presets
    # The ConfigMap of registry CA bundles in operator_namespace (None: no private CAs).
    registry_ca_config_map: str | None = None


@dataclass
class Informers:
    """The informers the reconciler reads (each filtered to what it needs)."""

    workspaces: Informer
    nodes: Informer
    claims: Informer
    jobs: Informer
    deployments: Informer
    statefulsets: Informer
    services: Informer
    pods: Informer
    configmaps: Informer
    revisions: Informer
    registry_ca: Informer | None = None  # the one source ConfigMap of registry CAs


def desired_hash(obj: Mapping[str, Any]) -> str:
    text = json.dumps(obj, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def with_hash(obj: KubeObject) -> KubeObject:
    """A copy of ``obj`` annotated with the hash of ``obj``."""
    metadata = dict(obj.get("metadata") or {})
    metadata["annotations"] = {**(metadata.get("annotations") or {}),
                               DESIRED_HASH_ANNOTATION: desired_hash(obj)}
    return {**obj, "metadata": metadata}


def _annotation(obj: Mapping[str, Any] | None, key: str) -> str | None:
    if obj is None:
        return None
    value = ((obj.get("metadata") or {}).get("annotations") or {}).get(key)
    return None if value is None else str(value)


def _now() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())


class WorkspaceReconciler:
    """Drives one Workspace toward nodes, a tuning Job and/or a served model."""

    def __init__(
        self,
        client: KubeClient,
        informers: Informers,
        catalog: Catalog,
        recorder: EventRecorder,
        settings: WorkspaceSettings | None = None,
        progress: ProgressReader | None = None,
        metrics: WorkspaceMetrics | None = None,
    ) -> None:
        self._client = client
        self._informers = informers
        self._catalog = catalog
        self._recorder = recorder
        self._settings = settings or WorkspaceSettings()
        self._progress = progress or ProgressReader(self._settings.workload.progress_port)
        self._last_progress_read: dict[str, float] = {}
        # key -> the resourceVersion our last write of that workspace replaced
        self._superseded: dict[str, str] = {}
        self._metrics = metrics
        self._claims_resource = MACHINES if self._settings.use_machines else NODECLAIMS
        self.writes = 0  # API writes made, for tests and the benchmark

    async def close(self) -> None:
        await self._progress.close()

    # -- the pass ------------------------------------------------------------------------

    async def reconcile(self, request: Request) -> Result:
        obj = self._informers.workspaces.cache.get(request.key)
        if obj is None:
            self._last_progress_read.pop(request.key, None)
            self._superseded.pop(request.key, None)
            return Result()
        ws = Workspace.model_validate(obj)
        if self._superseded.get(request.key) == ws.metadata.resource_version:
            # Our own write of this workspace is not in the cache yet: acting on the older
            # copy would only repeat it (a 409). Its watch event brings the next pass.
            return Result()
        self._superseded.pop(request.key, None)
        if ws.metadata.deletion_timestamp:
            return await self._finalize(ws, obj)
        revision = revision_hash(ws)
        has_finalizer = FINALIZER in (ws.metadata.finalizers or [])
        if not has_finalizer or _annotation(obj, REVISION_ANNOTATION) != revision:
            # One patch for both; the update it makes wakes the next pass.
            await self._record_revision(ws, obj, revision, add_finalizer=not has_finalizer)
            return Result()

        is_tuning = ws.tuning is not None
        spec = ws.tuning.preset if ws.tuning else (ws.inference.preset if ws.inference else None)
        preset = self._catalog.preset(spec.name) if spec else None
        if spec is not None and preset is None and self._settings.hf_configs is not None:
            # Best-effort Hugging Face id: its config.json (cached; files or the Hub).
            preset = await asyncio.to_thread(self._settings.hf_configs.preset, spec.name)
        instance_type = ws.resource.instance_type if ws.resource else None
        sku = self._catalog.sku(instance_type) if instance_type else None
        if preset is None:
            plan = StatusPlan()
            if spec is None:  # inference.template: a custom pod template
                plan.conditions["ResourceReady"] = Verdict(
                    "False", "CustomTemplateNotSupported",
                    "inference.template workspaces are not run by this controller yet; "
                    "use a preset")
            elif is_hf_model_id(spec.name):
                plan.conditions["ResourceReady"] = Verdict(
                    "False", "ModelConfigUnavailable",
                    f"{spec.name} is not in this operator's catalog and its config.json could "
                    "not be read (KAITO_WORKSPACE__HF_CONFIG_DIRS, KAITO_WORKSPACE__HF_ENDPOINT):"
                    " its size, and so its nodes, cannot be worked out; retried in 5 minutes")
            else:
                plan.conditions["ResourceReady"] = Verdict(
                    "False", "PresetNotFound",
                    f"preset {spec.name!r} is not in this operator's catalog")
            await self._write_status(ws, obj, plan, target=None, workers=None, tuning=None)
            if spec is not None and is_hf_model_id(spec.name):
                return Result(requeue_after_seconds=BEST_EFFORT_RETRY_SECONDS)
            return Result()

        namespace = ws.metadata.namespace or "default"
        name = ws.metadata.name or ""
        serves_after_tuning = _annotation(obj, SERVE_AFTER_TUNING_ANNOTATION) != "false"
        target = 1 if is_tuning else max(1, (ws.resource.count if ws.resource else None) or 1)
        if is_tuning and not serves_after_tuning and self._tuned(namespace, name, revision):
            target = 0  # done and not served: the nodes go back, as upstream does
        nodes = list(self._informers.nodes.cache.objects())
        byo_sku = None
        if not self._settings.can_provision and sku is None and not (
                ws.resource and ws.resource.partition):
            # Bring-your-own nodes of a size the SKU table does not know: their GPUs come
            # from GPU feature discovery's labels, and fit is checked against those.
            byo_sku = nodes_gpu_sku(ws, nodes)
            if byo_sku is not None and not is_tuning and target > 0 and not (
                    ws.resource and ws.resource.count):
                target = byo_node_count(preset, byo_sku)
        claims = self._informers.claims.cache.objects(labels=claim_labels(ws))
        if target == 0:
            for claim in claims:
                if not (claim.get("metadata") or {}).get("deletionTimestamp"):
                    await self._delete(self._claims_resource, claim["metadata"]["name"], None)
                    await self._recorder.record(
                        obj, NORMAL, "NodesReleased",
                        f"tuning finished: NodeClaim {claim['metadata']['name']} released",
                        action="Provision")
        node_plan = plan_nodes(ws, target_node_count=target, instance_type=instance_type,
                               nodes=nodes, claims=claims,
                               can_provision=self._settings.can_provision,
                               claim_kind="Machine" if self._settings.use_machines
                               else "NodeClaim")
        if sku is None and ws.resource is not None and ws.resource.partition is not None:
            sku = partition_sku(ws)  # the pod asks for its partitions, not whole GPUs
        if byo_sku is not None and target > 0:
            node_plan.fit_problem = byo_fit_problem(
                preset, byo_sku, is_tuning=is_tuning, node_count=target,
                shape=TuningShape(method=(ws.tuning.method or "lora") if ws.tuning else "lora",
                                  seq_len=min(preset.context_length, DEFAULT_TUNING_SEQ_LEN)))
            sku = byo_sku
        for claim in node_plan.claims_to_create:
            await self._create(self._claims_resource, claim)
            await self._recorder.record(obj, NORMAL, "NodeClaimCreated",
                                        f"NodeClaim {claim['metadata']['name']} created for "
                                        f"a {instance_type} node", action="Provision")
        for name in node_plan.claims_to_delete:
            await self._delete(self._claims_resource, name, None)
            await self._recorder.record(obj, WARNING, "NodeClaimFailed",
                                        "; ".join(node_plan.failures), action="Provision")

        observed = Observed(nodes=node_plan, is_tuning=is_tuning,
                            serves_after_tuning=serves_after_tuning)
        registry_ca = await self._ensure_registry_ca(ws)
        if is_tuning:
            observed.job, observed.config_problem = await self._ensure_job(
                ws, obj, preset, sku, revision, may_create=node_plan.is_ready,
                registry_ca=registry_ca)
            observed.job_pods = self._pods(namespace, {JOB_NAME_LABEL: name})
            succeeded = bool(observed.job and (observed.job.get("status") or {}).get("succeeded"))
            if succeeded and observed.serves_after_tuning and node_plan.is_ready:
                adapter = inference_builders.tuned_adapter(ws)
                observed.workload = await self._ensure_inference(
                    ws, preset, sku, revision, 1, [adapter], registry_ca)
        elif node_plan.is_ready:
            observed.workload = await self._ensure_inference(
                ws, preset, sku, revision, target, inference_builders.adapters_for(ws),
                registry_ca)
        else:
            observed.workload = self._existing_workload(ws)
        if observed.workload is not None:
            observed.workload_pods = self._pods(namespace, {
                **workspace_labels(ws), "app.kubernetes.io/component": "inference"})

        status_plan = plan_status(observed)
        tuning_status, requeue = await self._tuning_progress(request.key, ws, observed)
        changed = await self._write_status(
            ws, obj, status_plan, target=target, workers=node_plan.worker_nodes,
            tuning=tuning_status)
        if changed:
            await self._record_transitions(obj, status_plan)
        if requeue is not None:
            return Result(requeue_after_seconds=requeue)
        return Result()

    # -- pieces --------------------------------------------------------------------------

    async def _record_revision(
        self, ws: Workspace, obj: KubeObject, revision: str, *, add_finalizer: bool
    ) -> None:
        """Keep ``revision`` as a ControllerRevision (pruning old ones) and in the
        workspace's annotation, adding the finalizer in the same patch when missing."""
        namespace = ws.metadata.namespace or "default"
        mine = [item for item in self._informers.revisions.cache.objects(
            namespace, labels=workspace_labels(ws))]
        if not any((item.get("metadata") or {}).get("name") == revision_name(ws, revision)
                   for item in mine):
            number = 1 + max((int(item.get("revision", 0)) for item in mine), default=0)
            await self._create(CONTROLLER_REVISIONS, build_controller_revision(
                ws, revision, number, owner_reference(ws), workspace_labels(ws)))
            mine.append({"metadata": {"name": revision_name(ws, revision)}, "revision": number})
        for old in revisions_to_prune(mine):
            await self._delete(CONTROLLER_REVISIONS, old, namespace)
        metadata: dict[str, Any] = {"annotations": {REVISION_ANNOTATION: revision},
                                    "resourceVersion": ws.metadata.resource_version}
        if add_finalizer:
            metadata["finalizers"] = [*(ws.metadata.finalizers or []), FINALIZER]
        await self._patch_workspace(obj, {"metadata": metadata})

    async def _ensure_job(
        self, ws: Workspace, obj: KubeObject, preset: Any, sku: Any, revision: str, *,
        may_create: bool, registry_ca: str | None = None,
    ) -> tuple[KubeObject | None, str | None]:
        """The tuning Job (made when the nodes are ready), and why the default config
        cannot be used when the operator's template no longer parses."""
        assert ws.tuning is not None
        namespace = ws.metadata.namespace or "default"
        name = ws.metadata.name or ""
        current = self._informers.jobs.cache.get(f"{namespace}/{name}")
        if current is not None and _annotation(current, REVISION_ANNOTATION) != revision:
            # Input, output or config changed: a Job's pod template is immutable, so the
            # old Job goes and a new one is made on a later pass.
            if not (current.get("metadata") or {}).get("deletionTimestamp"):
                await self._delete(JOBS, name, namespace)
                await self._recorder.record(obj, NORMAL, "TuningJobReplaced",
                                            "the tuning spec changed: the Job is re-run",
                                            action="Tune")
            return None, None
        if current is not None or not may_create:
            return current, None
        config_name = ws.tuning.config
        if not config_name or (is_template_name(config_name)
                               and not await self._exists(CONFIGMAPS, config_name, namespace)):
            config_map, problem = await self._default_config_map(
                ws, preset, config_name, namespace)
            if problem is not None:
                return None, problem
            config_name = str(config_map["metadata"]["name"])
            await self._ensure(CONFIGMAPS, config_map, self._informers.configmaps)
        job = tuning_builders.build_tuning_job(
            ws, preset, sku, settings=self._settings.workload, revision=revision,
            config_map_name=config_name, registry_ca=registry_ca)
        created = await self._create(JOBS, with_hash(job))
        await self._recorder.record(obj, NORMAL, "TuningJobCreated",
                                    f"Job {name} created", action="Tune")
        return created, None

    async def _default_config_map(
        self, ws: Workspace, preset: ModelPreset, config_name: str | None, namespace: str
    ) -> tuple[KubeObject, str | None]:
        """``<ws>-tuning-config``: the operator's template for the method (found by name
        in the operator's namespace, as upstream does; the built-in default when it is
        missing) with the preset's LoRA target modules, checked with the schema the webhook
        and the tuning pod use; the problem when it does not parse (edited since)."""
        assert ws.tuning is not None
        method: Method = "qlora" if ws.tuning.method == "qlora" else "lora"
        name = config_name or template_name(method)
        try:
            template = await self._client.get(CONFIGMAPS, name, self._settings.operator_namespace)
            text = str((template.get("data") or {}).get(CONFIG_KEY) or "")
        except NotFound:
            text = ""
        config_map = tuning_builders.build_default_tuning_config(ws, preset, method, namespace)
        final = with_target_modules(text or default_config_text(method),
                                    preset.lora_target_modules)
        config_map["data"] = {CONFIG_KEY: final}
        try:
            parse_training_config_text(final, method)
        except ConfigError as error:
            where = f"ConfigMap {name} in {self._settings.operator_namespace}"
            return config_map, f"{where}: {error}"
        return config_map, None

    async def _exists(self, resource: ResourceType, name: str, namespace: str) -> bool:
        try:
            await self._client.get(resource, name, namespace)
        except NotFound:
            return False
        return True

    async def _ensure_inference(
        self, ws: Workspace, preset: Any, sku: Any, revision: str, node_count: int,
        adapters: list[Any], registry_ca: str | None = None,
    ) -> KubeObject | None:
        await self._ensure(SERVICES, inference_builders.build_service(ws),
                           self._informers.services)
        if node_count > 1:
            await self._ensure(SERVICES, inference_builders.build_headless_service(ws),
                               self._informers.services)
        workload = inference_builders.build_inference_workload(
            ws, preset, sku, settings=self._settings.workload, revision=revision,
            node_count=node_count, adapters=adapters, registry_ca=registry_ca)
        resource, informer = (DEPLOYMENTS, self._informers.deployments) if (
            workload["kind"] == "Deployment") else (STATEFULSETS, self._informers.statefulsets)
        return await self._ensure(resource, workload, informer)

    async def _ensure_registry_ca(self, ws: Workspace) -> str | None:
        """The workspace's copy of the operator's registry CA ConfigMap, written when it
        differs from the source's bundles; its name, or None when there is nothing to
        mount (no setting, no bundles, or no registry used by this workspace)."""
        source_name = self._settings.registry_ca_config_map
        if not source_name or self._informers.registry_ca is None or not (
                registry_ca_builders.uses_registry(ws)):
            return None
        source = self._informers.registry_ca.cache.get(
            f"{self._settings.operator_namespace}/{source_name}")
        copy = registry_ca_builders.build_registry_ca_copy(ws, source)
        if copy is None:
            return None
        await self._ensure(CONFIGMAPS, copy, self._informers.configmaps)
        return str(copy["metadata"]["name"])

    def _tuned(self, namespace: str, name: str, revision: str) -> bool:
        """Whether this revision's tuning Job has succeeded."""
        job = self._informers.jobs.cache.get(f"{namespace}/{name}")
        return bool(job and _annotation(job, REVISION_ANNOTATION) == revision
                    and (job.get("status") or {}).get("succeeded"))

    def _existing_workload(self, ws: Workspace) -> KubeObject | None:
        namespace = ws.metadata.namespace or "default"
        deployment = inference_builders.workload_name(ws, 1)
        statefulset = inference_builders.workload_name(ws, 2)
        return (self._informers.deployments.cache.get(f"{namespace}/{deployment}")
                or self._informers.statefulsets.cache.get(f"{namespace}/{statefulset}"))

    def _pods(self, namespace: str, labels: Mapping[str, str]) -> list[KubeObject]:
        return self._informers.pods.cache.objects(namespace, labels=dict(labels))

    async def _ensure(
        self, resource: ResourceType, desired: KubeObject, informer: Informer
    ) -> KubeObject:
        """Create ``desired`` or update what exists when its desired hash differs."""
        desired = with_hash(desired)
        metadata = desired["metadata"]
        key = f"{metadata.get('namespace')}/{metadata['name']}"
        current = informer.cache.get(key)
        if current is None:
            return await self._create(resource, desired)
        if _annotation(current, DESIRED_HASH_ANNOTATION) == metadata["annotations"][
                DESIRED_HASH_ANNOTATION]:
            return current
        updated = dict(current)
        for part in desired:
            if part not in ("metadata", "status"):
                updated[part] = desired[part]
        if resource == SERVICES:  # allocated fields must be kept
            spec = dict(desired.get("spec") or {})
            for kept in ("clusterIP", "clusterIPs", "ipFamilies", "ipFamilyPolicy"):
                if kept in (current.get("spec") or {}):
                    spec[kept] = current["spec"][kept]
            updated["spec"] = spec
        current_meta = dict(current.get("metadata") or {})
        current_meta["labels"] = {**(current_meta.get("labels") or {}),
                                  **(metadata.get("labels") or {})}
        current_meta["annotations"] = {**(current_meta.get("annotations") or {}),
                                       **metadata["annotations"]}
        updated["metadata"] = current_meta
        self.writes += 1
        replaced: KubeObject = await self._client.replace(resource, updated)
        return replaced

    async def _create(self, resource: ResourceType, obj: KubeObject) -> KubeObject:
        self.writes += 1
        try:
            created: KubeObject = await self._client.create(resource, obj)
            return created
        except AlreadyExists:
            metadata = obj["metadata"]
            existing: KubeObject = await self._client.get(
                resource, metadata["name"], metadata.get("namespace"))
            return existing

    async def _delete(self, resource: ResourceType, name: str, namespace: str | None) -> None:
        self.writes += 1
        try:
            await self._client.request(
                "DELETE", resource.path(namespace, name),
                body={"apiVersion": "v1", "kind": "DeleteOptions",
                      "propagationPolicy": "Background"})
        except NotFound:
            pass

    async def _patch_workspace(self, obj: KubeObject, patch: dict[str, Any]) -> None:
        metadata = obj.get("metadata") or {}
        self.writes += 1
        await self._client.patch(WORKSPACES, metadata["name"], patch, metadata.get("namespace"))
        self._note_superseded(obj)

    def _note_superseded(self, obj: KubeObject) -> None:
        metadata = obj.get("metadata") or {}
        key = f"{metadata.get('namespace')}/{metadata.get('name')}"
        if metadata.get("resourceVersion"):
            self._superseded[key] = str(metadata["resourceVersion"])

    # -- status --------------------------------------------------------------------------

    async def _tuning_progress(
        self, key: str, ws: Workspace, observed: Observed
    ) -> tuple[dict[str, Any] | None, float | None]:
        """(status.tuning, requeue_after) — reads the pod at most once per interval."""
        previous = ws.status.tuning.model_dump(by_alias=True, exclude_none=True, mode="json") if (
            ws.status and ws.status.tuning) else None
        if not observed.is_tuning or observed.job is None:
            return previous, None
        job_status = observed.job.get("status") or {}
        if job_status.get("succeeded") or job_status.get("failed") and not job_status.get(
                "active"):
            return previous, None
        interval = self._settings.progress_interval_seconds
        now = time.monotonic()
        last = self._last_progress_read.get(key)
        if last is not None and now - last < interval:
            return previous, interval - (now - last)
        self._last_progress_read[key] = now
        running = [pod for pod in observed.job_pods
                   if (pod.get("status") or {}).get("phase") == "Running"]
        if not running:
            return previous, interval
        snapshot = await self._progress.read(running[-1])
        if snapshot is None:
            return previous, interval
        fresh = progress_status(snapshot, time.time())
        return (previous if same_progress(previous, fresh) else fresh), interval

    async def _write_status(
        self, ws: Workspace, obj: KubeObject, plan: StatusPlan, *, target: int | None,
        workers: list[str] | None, tuning: dict[str, Any] | None,
    ) -> bool:
        """Replace the status when it differs from what is stored; True if written."""
        current = dict(obj.get("status") or {})
        conditions = apply_conditions(ws.status.conditions if ws.status else None, plan,
                                      ws.metadata.generation, _now())
        status: dict[str, Any] = {
            "conditions": [c.model_dump(by_alias=True, exclude_none=True, mode="json")
                           for c in conditions],
            "state": plan.state,
        }
        if target is not None:
            status["targetNodeCount"] = target
        if workers:
            status["workerNodes"] = workers
        if tuning:
            status["tuning"] = tuning
        if status == current:
            return False
        body = dict(obj)
        body["status"] = status
        self.writes += 1
        # A Conflict means a newer workspace is on its way: the retry reads it.
        await self._client.replace_status(WORKSPACES, body)
        self._note_superseded(obj)
        if self._metrics is not None:
            self._metrics.observe_transitions(obj, current.get("conditions") or [],
                                              status["conditions"])
        return True

    async def _record_transitions(self, obj: KubeObject, plan: StatusPlan) -> None:
        """An Event for each condition whose status or reason changed in this pass.

        Waiting is not news; WorkspaceReady=False only repeats another condition's reason;
        and when WorkspaceReady turns True, InferenceReady turning True in the same pass is
        folded into it (one Event per step, not per condition)."""
        before = {c.get("type"): (c.get("status"), c.get("reason"))
                  for c in (obj.get("status") or {}).get("conditions") or []}
        changed = {kind: verdict for kind, verdict in plan.conditions.items()
                   if before.get(kind) != (verdict.status, verdict.reason)}
        ready = changed.get(CONDITION_WORKSPACE_READY)
        for condition_type, verdict in changed.items():
            if verdict.status == "False" and (
                    verdict.reason in _WAITING_REASONS
                    or condition_type == CONDITION_WORKSPACE_READY):
                continue
            if (condition_type == CONDITION_INFERENCE_READY and verdict.status == "True"
                    and ready is not None and ready.status == "True"):
                continue
            await self._recorder.record(
                obj, NORMAL if verdict.status == "True" else WARNING, verdict.reason,
                f"{condition_type}: {verdict.message}")

    # -- deletion ------------------------------------------------------------------------

    async def _finalize(self, ws: Workspace, obj: KubeObject) -> Result:
        if FINALIZER not in (ws.metadata.finalizers or []):
            return Result()
        namespace = ws.metadata.namespace or "default"
        name = ws.metadata.name or ""
        if (obj.get("status") or {}).get("state") != STATE_DELETING:
            body = dict(obj)
            body["status"] = {**(obj.get("status") or {}), "state": STATE_DELETING}
            self.writes += 1
            try:
                await self._client.replace_status(WORKSPACES, body)
            except (Conflict, NotFound):
                pass
        for resource, informer, child in (
                (JOBS, self._informers.jobs, name),
                (DEPLOYMENTS, self._informers.deployments,
                 inference_builders.workload_name(ws, 1)),
                (STATEFULSETS, self._informers.statefulsets,
                 inference_builders.workload_name(ws, 2))):
            current = informer.cache.get(f"{namespace}/{child}")
            if current is not None and not (current.get("metadata") or {}).get(
                    "deletionTimestamp"):
                await self._delete(resource, child, namespace)
        claims = self._informers.claims.cache.objects(labels=claim_labels(ws))
        for claim in claims:
            if not (claim.get("metadata") or {}).get("deletionTimestamp"):
                await self._delete(self._claims_resource, claim["metadata"]["name"], None)
        if claims:
            return Result(requeue_after_seconds=self._settings.deletion_poll_seconds)
        finalizers = [f for f in ws.metadata.finalizers or [] if f != FINALIZER]
        await self._recorder.record(obj, NORMAL, "WorkspaceDeleted",
                                    "workload and node claims removed", action="Delete")
        try:
            await self._patch_workspace(obj, {"metadata": {
                "finalizers": finalizers, "resourceVersion": ws.metadata.resource_version}})
        except NotFound:
            pass
        self._recorder.forget(ws.metadata.uid or "")
        return Result()
