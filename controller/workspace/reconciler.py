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
import logging
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from controller.events import NORMAL, EventRecorder
from controller.informer import Informer
from controller.kube.client import KubeClient
from controller.kube.errors import Conflict, NotFound
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
from controller.objects import ObjectWriter, annotation, with_hash
from controller.reconcile import Request, Result
from controller.workspace import inference as inference_builders
from controller.workspace import registry_ca as registry_ca_builders
from controller.workspace import tuning as tuning_builders
from controller.workspace.capacity import (
    NODE_NAME_INDEX,
    container_gpus,
    gpus_used_by_others,
    nodes_with_pods_of,
)
from controller.workspace.metrics import WorkspaceMetrics
from controller.workspace.nodes import (
    ClaimRetry,
    NodePlan,
    byo_fit_problem,
    claim_attempt,
    claim_labels,
    nodes_gpu_sku,
    partition_sku,
    plan_nodes,
    usable_nodes,
)
from controller.workspace.progress import ProgressReader
from controller.workspace.report import StatusReporter
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
    plan_status,
)
from controller.workspace.workload import (
    REVISION_ANNOTATION,
    WorkloadSettings,
    gpu_resources,
    owner_reference,
    workspace_labels,
)
from crds.tuning_config import (
    CONFIG_KEY,
    ConfigError,
    Method,
    is_template_name,
    parse_training_config_text,
    template_name,
)
from crds.workspace import (
    PresetSpec,
    Workspace,
)
from presets.catalog import Catalog, GpuSku, HfConfigSource, ModelPreset, is_hf_model_id
from presets.memory import DEFAULT_TUNING_SEQ_LEN, TuningShape, inference_fit_problem

log = logging.getLogger(__name__)

FINALIZER = "workspace.kaito.sh/finalizer"
# Upstream releases the nodes after tuning; here the adapter is served unless this is "false".
SERVE_AFTER_TUNING_ANNOTATION = "kaito.sh/serve-after-tuning"
JOB_NAME_LABEL = "batch.kubernetes.io/job-name"
BEST_EFFORT_RETRY_SECONDS = 300.0  # a model whose config.json could not be read


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
    # Waits between attempts at a NodeClaim the provider refused (doubling, capped).
    claim_retry: ClaimRetry = field(default_factory=ClaimRetry)
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
    bound_pods: Informer  # every bound, running pod, projected (GPU accounting)
    registry_ca: Informer | None = None  # the one source ConfigMap of registry CAs


@dataclass(frozen=True)
class _Model:
    """What the workspace asks to run, and on which GPUs."""

    spec: PresetSpec | None
    preset: ModelPreset | None
    instance_type: str | None
    sku: GpuSku | None  # the catalog's SKU of the instance type


@dataclass(frozen=True)
class _Nodes:
    """The node phase's outcome."""

    plan: NodePlan
    target: int
    sku: GpuSku | None  # what one pod is sized for (SKU, partition or labelled GPUs)
    serves_after_tuning: bool


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
        # key -> the resourceVersion our last write of that workspace replaced
        self._superseded: dict[str, str] = {}
        self._claims_resource = MACHINES if self._settings.use_machines else NODECLAIMS
        self._objects = ObjectWriter(client)
        self._reporter = StatusReporter(
            self._objects, recorder,
            progress or ProgressReader(self._settings.workload.progress_port),
            progress_interval_seconds=self._settings.progress_interval_seconds, metrics=metrics)

    @property
    def writes(self) -> int:
        """API writes made, for tests and the benchmark."""
        return self._objects.writes

    async def close(self) -> None:
        await self._reporter.close()

    # -- the pass ------------------------------------------------------------------------

    async def reconcile(self, request: Request) -> Result:
        obj = self._informers.workspaces.cache.get(request.key)
        if obj is None:
            self._reporter.forget(request.key)
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
        if not has_finalizer or annotation(obj, REVISION_ANNOTATION) != revision:
            # One patch for both; the update it makes wakes the next pass.
            await self._record_revision(ws, obj, revision, add_finalizer=not has_finalizer)
            return Result()

        model = await self._model(ws)
        if model.preset is None:
            return await self._report_unknown_model(ws, obj, model.spec)
        nodes = await self._provision(ws, obj, model, revision)
        observed = await self._run_workload(ws, obj, model, nodes, revision)
        return await self._report(request.key, ws, obj, observed, nodes)

    # -- the phases ----------------------------------------------------------------------

    async def _model(self, ws: Workspace) -> _Model:
        """The preset the workspace names (catalog, else a best-effort Hugging Face id's
        config.json) and the GPUs its instance type has."""
        spec = ws.tuning.preset if ws.tuning else (ws.inference.preset if ws.inference else None)
        preset = self._catalog.preset(spec.name) if spec else None
        if spec is not None and preset is None and self._settings.hf_configs is not None:
            preset = await asyncio.to_thread(self._settings.hf_configs.preset, spec.name)
        instance_type = ws.resource.instance_type if ws.resource else None
        sku = self._catalog.sku(instance_type) if instance_type else None
        return _Model(spec=spec, preset=preset, instance_type=instance_type, sku=sku)

    async def _report_unknown_model(
        self, ws: Workspace, obj: KubeObject, spec: PresetSpec | None
    ) -> Result:
        plan = StatusPlan()
        if spec is None:  # inference.template: a custom pod template
            plan.conditions["ResourceReady"] = Verdict(
                "False", "CustomTemplateNotSupported",
                "inference.template workspaces are not run by this controller yet; use a preset")
        elif is_hf_model_id(spec.name):
            plan.conditions["ResourceReady"] = Verdict(
                "False", "ModelConfigUnavailable",
                f"{spec.name} is not in this operator's catalog and its config.json could "
                "not be read (KAITO_WORKSPACE__HF_CONFIG_DIRS, KAITO_WORKSPACE__HF_ENDPOINT):"
                " its size, and so its nodes, cannot be worked out; retried in 5 minutes")
        else:
            plan.conditions["ResourceReady"] = Verdict(
                "False", "PresetNotFound", f"preset {spec.name!r} is not in this operator's catalog")
        await self._write_status(ws, obj, plan, target=None, workers=None, tuning=None)
        if spec is not None and is_hf_model_id(spec.name):
            return Result(requeue_after_seconds=BEST_EFFORT_RETRY_SECONDS)
        return Result()

    async def _provision(
        self, ws: Workspace, obj: KubeObject, model: _Model, revision: str
    ) -> _Nodes:
        """How many nodes the workspace needs, which it uses, and the claims made or
        released for it (refused ones replaced once their backoff ends)."""
        assert model.preset is not None
        namespace, name = ws.metadata.namespace or "default", ws.metadata.name or ""
        is_tuning = ws.tuning is not None
        serves_after_tuning = annotation(obj, SERVE_AFTER_TUNING_ANNOTATION) != "false"
        target = 1 if is_tuning else max(1, (ws.resource.count if ws.resource else None) or 1)
        if is_tuning and not serves_after_tuning and self._tuned(namespace, name, revision):
            target = 0  # done and not served: the nodes go back, as upstream does
        nodes = list(self._informers.nodes.cache.objects())
        claims = self._informers.claims.cache.objects(labels=claim_labels(ws))
        if target == 0:
            await self._release_claims(obj, claims)
        sku = model.sku
        byo_sku = None
        if not self._settings.can_provision and sku is None and not (
                ws.resource and ws.resource.partition):
            # Bring-your-own nodes of a size the SKU table does not know: their GPUs come
            # from GPU feature discovery's labels, and fit is checked against those.
            byo_sku = nodes_gpu_sku(ws, nodes)
        if sku is None and ws.resource is not None and ws.resource.partition is not None:
            sku = partition_sku(ws)  # the pod asks for its partitions, not whole GPUs
        if byo_sku is not None and target > 0:
            sku = byo_sku
        bound_pods = [pod for node_name in usable_nodes(ws, nodes)
                      for pod in self._informers.bound_pods.cache.by_index(
                          NODE_NAME_INDEX, node_name)]
        plan = plan_nodes(ws, target_node_count=target, instance_type=model.instance_type,
                          nodes=nodes, claims=claims,
                          can_provision=self._settings.can_provision,
                          claim_kind="Machine" if self._settings.use_machines else "NodeClaim",
                          gpus_per_pod=container_gpus(gpu_resources(sku)),
                          gpus_used=gpus_used_by_others(bound_pods, namespace=namespace,
                                                        name=name),
                          nodes_in_use=nodes_with_pods_of(bound_pods, namespace=namespace,
                                                          name=name),
                          now=time.time(), retry=self._settings.claim_retry)
        if byo_sku is not None and target > 0:
            plan.fit_problem = byo_fit_problem(
                model.preset, byo_sku, is_tuning=is_tuning, catalog=self._catalog,
                shape=TuningShape(method=(ws.tuning.method or "lora") if ws.tuning else "lora",
                                  seq_len=min(model.preset.context_length,
                                              DEFAULT_TUNING_SEQ_LEN)))
        elif not is_tuning and model.sku is not None and target > 0:
            # Admitted by an operator that served across nodes: one node must hold it now,
            # and no node is claimed that could not.
            plan.fit_problem = inference_fit_problem(model.preset, model.sku, self._catalog)
            if plan.fit_problem is not None:
                plan.claims_to_create = []
                plan.fit_hint = ("resource.instanceType cannot be changed: delete the "
                                 "workspace and create it with that instance type")
        for claim in plan.claims_to_create:
            await self._objects.create(self._claims_resource, claim)
            attempt = claim_attempt(claim)
            await self._recorder.record(
                obj, NORMAL, "NodeClaimCreated",
                f"NodeClaim {claim['metadata']['name']} created for a {model.instance_type} "
                "node" + (f" (attempt {attempt})" if attempt > 1 else ""), action="Provision")
        for claim_to_delete in plan.claims_to_delete:
            # A refused claim whose backoff is over: its replacement was made above.
            await self._objects.delete(self._claims_resource, claim_to_delete, None)
        return _Nodes(plan=plan, target=target, sku=sku,
                      serves_after_tuning=serves_after_tuning)

    async def _release_claims(self, obj: KubeObject, claims: list[KubeObject]) -> None:
        for claim in claims:
            if not (claim.get("metadata") or {}).get("deletionTimestamp"):
                await self._objects.delete(self._claims_resource, claim["metadata"]["name"], None)
                await self._recorder.record(
                    obj, NORMAL, "NodesReleased",
                    f"tuning finished: NodeClaim {claim['metadata']['name']} released",
                    action="Provision")

    async def _run_workload(
        self, ws: Workspace, obj: KubeObject, model: _Model, nodes: _Nodes, revision: str
    ) -> Observed:
        """The tuning Job, then (or instead) the serving Deployment, once the nodes are
        ready; what exists of them and their pods."""
        assert model.preset is not None
        namespace, name = ws.metadata.namespace or "default", ws.metadata.name or ""
        plan = nodes.plan
        observed = Observed(nodes=plan, is_tuning=ws.tuning is not None,
                            serves_after_tuning=nodes.serves_after_tuning, now=time.time())
        registry_ca = await self._ensure_registry_ca(ws)
        if observed.is_tuning:
            observed.job, observed.config_problem = await self._ensure_job(
                ws, obj, model.preset, nodes.sku, revision, may_create=plan.is_ready,
                registry_ca=registry_ca)
            observed.job_pods = self._pods(namespace, {JOB_NAME_LABEL: name})
            succeeded = bool(observed.job and (observed.job.get("status") or {}).get("succeeded"))
            if succeeded and observed.serves_after_tuning and plan.is_ready:
                adapter = inference_builders.tuned_adapter(ws)
                observed.workload = await self._ensure_inference(
                    ws, model.preset, nodes.sku, revision, 1, [adapter], registry_ca)
        elif plan.is_ready:
            observed.workload = await self._ensure_inference(
                ws, model.preset, nodes.sku, revision, nodes.target,
                inference_builders.adapters_for(ws), registry_ca)
        else:
            observed.workload = self._existing_workload(ws)
        if observed.workload is not None:
            observed.workload_pods = self._pods(namespace, {
                **workspace_labels(ws), "app.kubernetes.io/component": "inference"})
        return observed

    async def _report(
        self, key: str, ws: Workspace, obj: KubeObject, observed: Observed, nodes: _Nodes
    ) -> Result:
        """Conditions, state and tuning progress written when they changed, an Event per
        step, and when to look again (progress, a probe's grace, a claim's backoff)."""
        status_plan = plan_status(observed)
        tuning_status, requeue = await self._reporter.tuning_progress(key, ws, observed)
        changed = await self._write_status(
            ws, obj, status_plan, target=nodes.target, workers=nodes.plan.worker_nodes,
            tuning=tuning_status)
        if changed:
            await self._reporter.record_transitions(obj, status_plan)
        waits = [wait for wait in (requeue, status_plan.recheck_after_seconds) if wait is not None]
        if nodes.plan.retry_at is not None:  # look again when the backoff ends
            waits.append(max(0.0, nodes.plan.retry_at - time.time()) + 0.5)
        if waits:
            return Result(requeue_after_seconds=min(waits))
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
            await self._objects.create(CONTROLLER_REVISIONS, build_controller_revision(
                ws, revision, number, owner_reference(ws), workspace_labels(ws)))
            mine.append({"metadata": {"name": revision_name(ws, revision)}, "revision": number})
        for old in revisions_to_prune(mine):
            await self._objects.delete(CONTROLLER_REVISIONS, old, namespace)
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
        if current is not None and annotation(current, REVISION_ANNOTATION) != revision:
            # Input, output or config changed: a Job's pod template is immutable, so the
            # old Job goes and a new one is made on a later pass.
            if not (current.get("metadata") or {}).get("deletionTimestamp"):
                await self._objects.delete(JOBS, name, namespace)
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
            await self._objects.ensure(CONFIGMAPS, config_map, self._informers.configmaps)
        job = tuning_builders.build_tuning_job(
            ws, preset, sku, settings=self._settings.workload, revision=revision,
            config_map_name=config_name, registry_ca=registry_ca)
        created = await self._objects.create(JOBS, with_hash(job))
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
        config_map = tuning_builders.build_default_tuning_config(ws, preset, method, namespace,
                                                                 template_text=text)
        final = str(config_map["data"][CONFIG_KEY])
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
        self, ws: Workspace, preset: Any, sku: Any, revision: str, replicas: int,
        adapters: list[Any], registry_ca: str | None = None,
    ) -> KubeObject | None:
        await self._delete_legacy_multinode(ws)
        await self._objects.ensure(SERVICES, inference_builders.build_service(ws),
                           self._informers.services)
        workload = inference_builders.build_inference_workload(
            ws, preset, sku, settings=self._settings.workload, revision=revision,
            replicas=replicas, adapters=adapters, registry_ca=registry_ca)
        return await self._objects.ensure(DEPLOYMENTS, workload, self._informers.deployments)

    async def _delete_legacy_multinode(self, ws: Workspace) -> None:
        """Upgrade path: delete the StatefulSet and headless Service an earlier operator
        version made for a multi-node preset (nothing ever served across them)."""
        namespace = ws.metadata.namespace or "default"
        for resource, informer, child in (
                (STATEFULSETS, self._informers.statefulsets,
                 inference_builders.legacy_statefulset_name(ws)),
                (SERVICES, self._informers.services,
                 inference_builders.legacy_headless_service_name(ws))):
            current = informer.cache.get(f"{namespace}/{child}")
            if current is not None and not (current.get("metadata") or {}).get(
                    "deletionTimestamp"):
                await self._objects.delete(resource, child, namespace)

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
        await self._objects.ensure(CONFIGMAPS, copy, self._informers.configmaps)
        return str(copy["metadata"]["name"])

    def _tuned(self, namespace: str, name: str, revision: str) -> bool:
        """Whether this revision's tuning Job has succeeded."""
        job = self._informers.jobs.cache.get(f"{namespace}/{name}")
        return bool(job and annotation(job, REVISION_ANNOTATION) == revision
                    and (job.get("status") or {}).get("succeeded"))

    def _existing_workload(self, ws: Workspace) -> KubeObject | None:
        namespace = ws.metadata.namespace or "default"
        deployment = inference_builders.workload_name(ws)
        return self._informers.deployments.cache.get(f"{namespace}/{deployment}")

    def _pods(self, namespace: str, labels: Mapping[str, str]) -> list[KubeObject]:
        return self._informers.pods.cache.objects(namespace, labels=dict(labels))

    async def _patch_workspace(self, obj: KubeObject, patch: dict[str, Any]) -> None:
        metadata = obj.get("metadata") or {}
        await self._objects.patch(WORKSPACES, metadata["name"], patch, metadata.get("namespace"))
        self._note_superseded(obj)

    def _note_superseded(self, obj: KubeObject) -> None:
        metadata = obj.get("metadata") or {}
        key = f"{metadata.get('namespace')}/{metadata.get('name')}"
        if metadata.get("resourceVersion"):
            self._superseded[key] = str(metadata["resourceVersion"])

    # -- status --------------------------------------------------------------------------

    async def _write_status(
        self, ws: Workspace, obj: KubeObject, plan: StatusPlan, *, target: int | None,
        workers: list[str] | None, tuning: dict[str, Any] | None,
    ) -> bool:
        written = await self._reporter.write(ws, obj, plan, target=target, workers=workers,
                                             tuning=tuning)
        if written:
            self._note_superseded(obj)
        return written

    # -- deletion ------------------------------------------------------------------------

    async def _finalize(self, ws: Workspace, obj: KubeObject) -> Result:
        if FINALIZER not in (ws.metadata.finalizers or []):
            return Result()
        namespace = ws.metadata.namespace or "default"
        name = ws.metadata.name or ""
        if (obj.get("status") or {}).get("state") != STATE_DELETING:
            body = dict(obj)
            body["status"] = {**(obj.get("status") or {}), "state": STATE_DELETING}
            try:
                await self._objects.replace_status(WORKSPACES, body)
            except (Conflict, NotFound):
                pass
        for resource, informer, child in (
                (JOBS, self._informers.jobs, name),
                (DEPLOYMENTS, self._informers.deployments,
                 inference_builders.workload_name(ws)),
                (STATEFULSETS, self._informers.statefulsets,  # an earlier version's
                 inference_builders.legacy_statefulset_name(ws))):
            current = informer.cache.get(f"{namespace}/{child}")
            if current is not None and not (current.get("metadata") or {}).get(
                    "deletionTimestamp"):
                await self._objects.delete(resource, child, namespace)
        claims = self._informers.claims.cache.objects(labels=claim_labels(ws))
        for claim in claims:
            if not (claim.get("metadata") or {}).get("deletionTimestamp"):
                await self._objects.delete(self._claims_resource, claim["metadata"]["name"], None)
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
