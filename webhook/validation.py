"""Validation: every rule upstream's webhook enforces, plus the tuning memory estimate.

`validate(new, old, presets, ...)` is pure: the handler fetches the tuning ConfigMap's data
first and passes it in. Rules run on create and on update (adapters, tuning urls, output
and config may change, so they are checked again); `old` adds the immutability rules.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Sequence
from decimal import Decimal, InvalidOperation

from crds.addresses import Network, url_problem
from crds.tuning_config import template_name
from crds.workspace import TUNING_METHODS, Workspace
from presets.catalog import Catalog, ModelPreset, is_hf_model_id
from webhook.errors import FieldError
from webhook.fit import (
    inference_fit_errors,
    tuning_fit_errors,
    tuning_plan,
)
from webhook.tuning_config import computes_in_bfloat16, config_warnings, parse_tuning_config

MAX_ADAPTERS = 10
_DNS1123_LABEL = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")
_RESERVED_LABEL_PREFIXES = ("kaito.sh/workspace", "karpenter.sh/")
_ALLOW_HINT = "an operator can allow a network with KAITO_WEBHOOK_FETCH_ALLOW_CIDRS"
_PLACEHOLDER = re.compile(r"[<>]|^\$\{|_HERE\b")
_MIG_PROFILE = re.compile(r"^[1-9][0-9]*g\.[1-9][0-9]*gb$")
_BYO_HINT = ("with node auto-provisioning disabled (KAITO_WEBHOOK_NODE_PROVISIONING=false, "
             "upstream's disableNodeAutoProvisioning) any instance type of your own nodes is "
             "accepted")


def resolve_preset(
    catalog: Catalog, name: str, best_effort: ModelPreset | None = None
) -> ModelPreset | None:
    """The catalog's preset, else the best-effort one admission built for this name."""
    found = catalog.preset(name)
    if found is None and best_effort is not None and best_effort.name == name:
        return best_effort
    return found


def is_placeholder(value: str) -> bool:
    """Whether an instance type is a template placeholder such as <your-vm-sku>."""
    return bool(_PLACEHOLDER.search(value))


def validate(
    new: Workspace,
    old: Workspace | None,
    presets: Catalog,
    *,
    tuning_config_data: dict[str, str] | None = None,
    allowed_networks: Sequence[Network] = (),
    node_provisioning: bool = True,
    best_effort: ModelPreset | None = None,
) -> list[FieldError]:
    """All problems with `new` (an update when `old` is given); empty means admitted.

    `allowed_networks`: the operator's non-public networks tuning urls may point at.
    `node_provisioning`: False is bring-your-own nodes (unknown instance types and
    resource.partition allowed; GPU fit is the controller's, from the nodes' labels).
    `best_effort`: the preset admission built from the config.json of a Hugging Face id
    that is not in the catalog (None: not readable).
    `tuning_config_data`: the tuning ConfigMap's data (for an empty tuning.config, the
    method's default template's), None when it does not exist.

    An update that leaves resource/inference/tuning as they were (metadata only: labels,
    finalizers, annotations) is always admitted, so a ConfigMap deleted after creation or a
    rule added later cannot block the controller's own writes.
    """
    if old is not None and spec_unchanged(new, old):
        return []
    errors = _name_errors(new)
    has_inference, has_tuning = new.inference is not None, new.tuning is not None
    if has_inference == has_tuning:
        errors.append(FieldError("inference", "Invalid value" if has_tuning else "Required value",
                                 "exactly one of inference or tuning must be set"))
    errors += _resource_errors(new, presets, node_provisioning)
    if has_inference and not has_tuning:
        errors += _inference_errors(new, presets, node_provisioning, best_effort)
    if has_tuning and not has_inference:
        errors += _tuning_errors(new, presets, tuning_config_data, allowed_networks,
                                 node_provisioning)
    if old is not None:
        errors += _update_errors(new, old)
    return errors


def spec_unchanged(new: Workspace, old: Workspace) -> bool:
    """Whether an update leaves the workspace's spec keys as they were."""
    return (new.resource, new.inference, new.tuning) == (old.resource, old.inference, old.tuning)


def _name_errors(ws: Workspace) -> list[FieldError]:
    name = ws.metadata.name
    if name is None or (len(name) <= 63 and _DNS1123_LABEL.match(name)):
        return []
    return [FieldError(
        "metadata.name", "Invalid value",
        "a workspace name must be a lowercase RFC 1123 label: at most 63 characters of "
        "a-z, 0-9 and '-', starting and ending with an alphanumeric character",
        name,
    )]


def _resource_errors(ws: Workspace, presets: Catalog,
                     node_provisioning: bool = True) -> list[FieldError]:
    resource = ws.resource
    if resource is None:
        return [FieldError("resource", "Required value", "resource.labelSelector is required")]
    errors: list[FieldError] = []
    selector = resource.label_selector
    keys = list((selector.match_labels or {}).keys()) + [
        e.key for e in selector.match_expressions or []
    ]
    if not keys:
        errors.append(FieldError("resource.labelSelector", "Required value",
                                 "matchLabels or matchExpressions must select the nodes"))
    elif all(key.startswith(_RESERVED_LABEL_PREFIXES) for key in keys):
        errors.append(FieldError(
            "resource.labelSelector", "Invalid value",
            "uses only reserved label keys (kaito.sh/workspace*, karpenter.sh/*); add a label "
            "of your own", keys,
        ))
    instance_type = resource.instance_type
    if instance_type and node_provisioning and presets.sku(instance_type) is None:
        what = ("is a placeholder, not an instance type" if is_placeholder(instance_type)
                else "is not a known GPU instance type (see presets/skus.yaml)")
        errors.append(FieldError("resource.instanceType", "Unsupported value",
                                 f"{what}; {_BYO_HINT}", instance_type))
    errors += _partition_errors(ws, node_provisioning)
    return errors


def _partition_errors(ws: Workspace, node_provisioning: bool) -> list[FieldError]:
    """Upstream's rules: partitions are for inference on bring-your-own nodes only."""
    assert ws.resource is not None
    partition = ws.resource.partition
    if partition is None:
        return []
    path = "resource.partition"
    errors: list[FieldError] = []
    if ws.tuning is not None:
        errors.append(FieldError(path, "Forbidden", "GPU partitions are not supported for "
                                                    "tuning"))
    if node_provisioning:
        errors.append(FieldError(path, "Forbidden",
                                 "GPU partitions need bring-your-own nodes: disable node "
                                 "auto-provisioning (KAITO_WEBHOOK_NODE_PROVISIONING=false)"))
    if ws.resource.instance_type:
        errors.append(FieldError("resource.instanceType", "Forbidden",
                                 "must be empty with resource.partition (bring-your-own nodes)",
                                 ws.resource.instance_type))
    if partition.mode == "mig":
        if not partition.profile:
            errors.append(FieldError(f"{path}.profile", "Required value",
                                     "mig needs a MIG profile such as 1g.10gb"))
        elif not _MIG_PROFILE.match(partition.profile):
            errors.append(FieldError(f"{path}.profile", "Invalid value",
                                     "a MIG profile looks like <n>g.<m>gb, e.g. 1g.10gb",
                                     partition.profile))
        if partition.count not in (None, 1):
            errors.append(FieldError(f"{path}.count", "Invalid value",
                                     "each pod gets exactly one MIG slice", partition.count))
    elif partition.profile:
        errors.append(FieldError(f"{path}.profile", "Forbidden",
                                 "profile applies to mode mig only", partition.profile))
    return errors


def mig_profile_gib(profile: str) -> float | None:
    """The memory a MIG profile advertises (``3g.40gb`` -> 40)."""
    match = _MIG_PROFILE.match(profile)
    return float(profile.split(".")[1].removesuffix("gb")) if match else None


def _inference_errors(ws: Workspace, presets: Catalog, node_provisioning: bool = True,
                      best_effort: ModelPreset | None = None) -> list[FieldError]:
    inference = ws.inference
    assert inference is not None
    errors: list[FieldError] = []
    has_preset, has_template = inference.preset is not None, inference.template is not None
    if has_preset == has_template:
        errors.append(FieldError("inference", "Invalid value" if has_preset else "Required value",
                                 "exactly one of preset or template must be set"))
    if inference.preset is not None and not has_template:
        name = inference.preset.name
        preset = resolve_preset(presets, name, best_effort)
        if preset is None and not is_hf_model_id(name):
            errors.append(FieldError("inference.preset.name", "Unsupported value",
                                     "not in the preset catalog (a Hugging Face model id "
                                     "such as org/model is served best-effort)", name))
        elif preset is not None and ws.resource is not None:
            errors += _inference_fit(ws, preset, presets, node_provisioning)
        elif preset is None and node_provisioning and ws.resource is not None and not (
                ws.resource.instance_type):
            errors.append(FieldError("resource.instanceType", "Required value",
                                     f"the size of {name} is unknown here, so no instance type "
                                     "can be chosen for it: name one"))
        options = inference.preset.preset_options
        if options is not None and options.model_weights_sub_path and not (
                options.model_weights_pvc):
            errors.append(FieldError("inference.preset.presetOptions.modelWeightsSubPath",
                                     "Invalid value", "needs modelWeightsPVC"))
    errors += _adapter_errors(ws)
    return errors


def _inference_fit(ws: Workspace, preset: ModelPreset, presets: Catalog,
                   node_provisioning: bool) -> list[FieldError]:
    assert ws.resource is not None
    partition = ws.resource.partition
    if partition is not None and partition.mode == "mig" and partition.profile:
        slice_gib = mig_profile_gib(partition.profile)
        if slice_gib is not None and preset.weights_gib > slice_gib:
            return [FieldError("resource.partition.profile", "Invalid value",
                               f"preset {preset.name} has {preset.weights_gib:g}Gi of weights; "
                               f"a {partition.profile} slice has {slice_gib:g}Gi")]
        return []
    sku = presets.sku(ws.resource.instance_type or "")
    if sku is None:
        return []  # BYO: the controller checks the nodes' GPU labels
    return inference_fit_errors(preset, sku, presets)


def _adapter_errors(ws: Workspace) -> list[FieldError]:
    assert ws.inference is not None
    adapters = ws.inference.adapters or []
    errors: list[FieldError] = []
    if adapters and ws.inference.preset is None:
        errors.append(FieldError("inference.adapters", "Forbidden",
                                 "adapters need inference.preset (not a template)"))
    if len(adapters) > MAX_ADAPTERS:
        errors.append(FieldError("inference.adapters", "Too many",
                                 f"{len(adapters)}: must have at most {MAX_ADAPTERS} items"))
    seen: set[str] = set()
    for index, adapter in enumerate(adapters):
        path = f"inference.adapters[{index}]"
        source = adapter.source
        if source is None or not source.name:
            errors.append(FieldError(f"{path}.source.name", "Required value",
                                     "every adapter needs a source with a name"))
        else:
            if source.name in seen:
                errors.append(FieldError(f"{path}.source.name", "Duplicate value",
                                         "adapter names must be unique", source.name))
            seen.add(source.name)
            if (source.image is None) == (source.volume_source is None):
                errors.append(FieldError(f"{path}.source", "Invalid value",
                                         "exactly one of image or volumeSource must be set"))
        if adapter.strength is not None and not _is_strength(adapter.strength):
            errors.append(FieldError(f"{path}.strength", "Invalid value",
                                     "must be a decimal number between 0 and 1",
                                     adapter.strength))
    return errors


def _is_strength(text: str) -> bool:
    try:
        value = Decimal(text)
    except InvalidOperation:
        return False
    return value.is_finite() and Decimal(0) <= value <= Decimal(1)


def _tuning_errors(
    ws: Workspace, presets: Catalog, config_data: dict[str, str] | None,
    allowed_networks: Sequence[Network], node_provisioning: bool = True,
) -> list[FieldError]:
    tuning = ws.tuning
    assert tuning is not None
    errors: list[FieldError] = []
    if tuning.method not in TUNING_METHODS:
        errors.append(FieldError("tuning.method", "Unsupported value",
                                 'supported values: "lora", "qlora"', tuning.method))
    if tuning.preset is None or not tuning.preset.name:
        errors.append(FieldError("tuning.preset", "Required value",
                                 "tuning needs a preset to tune"))
    else:
        preset = presets.preset(tuning.preset.name)
        if preset is None:
            errors.append(FieldError("tuning.preset.name", "Unsupported value",
                                     "not in the preset catalog (tuning needs a catalog "
                                     "preset)", tuning.preset.name))
        elif tuning.method in TUNING_METHODS and not preset.tuning.supports(tuning.method):
            errors.append(FieldError("tuning.preset.name", "Invalid value",
                                     f"preset does not support {tuning.method} tuning",
                                     tuning.preset.name))
    if ws.resource is not None and (ws.resource.count or 1) > 1:
        errors.append(FieldError("resource.count", "Invalid value",
                                 "tuning runs on one node", ws.resource.count))
    options = tuning.preset.preset_options if tuning.preset is not None else None
    if options is not None and (options.model_weights_pvc or options.model_weights_sub_path):
        errors.append(FieldError("tuning.preset.presetOptions.modelWeightsPVC", "Forbidden",
                                 "model weights from a PVC are for inference only"))
    errors += _input_errors(ws, allowed_networks)
    errors += _output_errors(ws)
    config = None
    if tuning.config or config_data is not None:
        name = tuning.config or template_name(tuning.method or "lora")
        config, config_errors = parse_tuning_config(name, config_data, tuning.method)
        errors += config_errors
    plan = tuning_plan(ws, presets, config)
    if plan is not None and not errors and ws.resource is not None:
        sku = presets.sku(ws.resource.instance_type or "")
        if sku is not None:
            errors += tuning_fit_errors(plan, sku, presets)
        elif not ws.resource.instance_type and node_provisioning:
            errors.append(FieldError("resource.instanceType", "Required value",
                                     "no known instance type can hold this tuning job"))
    return errors


def _input_errors(ws: Workspace, allowed_networks: Sequence[Network]) -> list[FieldError]:
    assert ws.tuning is not None
    source = ws.tuning.input
    if source is None:
        return [FieldError("tuning.input", "Required value", "tuning needs input data")]
    given = [name for name, value in (("urls", source.urls), ("image", source.image),
                                      ("volumeSource", source.volume_source)) if value]
    if len(given) != 1:
        return [FieldError("tuning.input", "Invalid value",
                           "exactly one of urls, image or volumeSource must be set",
                           given or None)]
    errors: list[FieldError] = []
    for index, url in enumerate(source.urls or []):
        problem = _url_problem(url, tuple(allowed_networks))
        if problem is not None:
            errors.append(FieldError(f"tuning.input.urls[{index}]", "Invalid value", problem, url))
    return errors


@functools.lru_cache(maxsize=1024)
def _url_problem(url: str, allowed_networks: tuple[Network, ...]) -> str | None:
    """url_problem, once per URL: a pure function of its arguments (no DNS), and the same
    dataset URLs come back with every review of a workspace."""
    return url_problem(url, allowed_networks, hint=_ALLOW_HINT)


def _output_errors(ws: Workspace) -> list[FieldError]:
    assert ws.tuning is not None
    output = ws.tuning.output
    if output is None:
        return [FieldError("tuning.output", "Required value",
                           "tuning needs an output image or volumeSource")]
    if bool(output.image) == bool(output.volume_source):
        return [FieldError("tuning.output", "Invalid value",
                           "exactly one of image or volumeSource must be set")]
    if output.image and not output.image_push_secret:
        return [FieldError("tuning.output.imagePushSecret", "Required value",
                           "pushing the adapter image needs a docker-registry Secret")]
    return []


def _update_errors(new: Workspace, old: Workspace) -> list[FieldError]:
    errors: list[FieldError] = []
    for kind in ("inference", "tuning"):
        if (getattr(new, kind) is None) != (getattr(old, kind) is None):
            errors.append(FieldError(kind, "Forbidden",
                                     "inference and tuning cannot be switched on or off"))
    if errors:
        return errors
    immutable: list[tuple[str, object, object]] = []
    if new.resource is not None and old.resource is not None:
        immutable += [
            ("resource.count", new.resource.count, old.resource.count),
            ("resource.instanceType", new.resource.instance_type, old.resource.instance_type),
            ("resource.labelSelector", new.resource.label_selector, old.resource.label_selector),
            ("resource.partition", new.resource.partition, old.resource.partition),
        ]
    if new.inference is not None and old.inference is not None:
        immutable.append(("inference.preset", new.inference.preset, old.inference.preset))
    if new.tuning is not None and old.tuning is not None:
        new_input, old_input = new.tuning.input, old.tuning.input
        immutable += [
            ("tuning.preset", new.tuning.preset, old.tuning.preset),
            ("tuning.method", new.tuning.method, old.tuning.method),
            ("tuning.input.name", new_input and new_input.name, old_input and old_input.name),
        ]
    for path, new_value, old_value in immutable:
        if new_value != old_value:
            errors.append(FieldError(path, "Forbidden", "field is immutable"))
    return errors


def admission_warnings(
    ws: Workspace, presets: Catalog, *, tuning_config_data: dict[str, str] | None = None,
    best_effort: ModelPreset | None = None,
) -> list[str]:
    """Warnings for an admitted workspace (the request still succeeds)."""
    warnings: list[str] = []
    sku = presets.sku(ws.resource.instance_type or "") if ws.resource is not None else None
    config = None
    if ws.tuning is not None and (ws.tuning.config or tuning_config_data is not None):
        name = ws.tuning.config or template_name(ws.tuning.method or "lora")
        config, _ = parse_tuning_config(name, tuning_config_data, ws.tuning.method)
        if config is not None:
            warnings += config_warnings(config)
    if ws.inference is not None and ws.inference.preset is not None:
        warnings += _best_effort_warnings(ws.inference.preset.name, presets, best_effort)
        options = ws.inference.preset.preset_options
        if options is not None and options.model_weights_pvc:
            warnings.append(
                "inference.preset.presetOptions.modelWeightsPVC is accepted but not used yet by "
                "this operator: the weights are downloaded into the pod as usual")
    if ws.tuning is not None and sku is not None and not sku.bf16 and computes_in_bfloat16(config):
        # runtime.precision computes bfloat16 requests (and auto) in float16 on such GPUs.
        warnings.append(
            f"{sku.name} ({sku.gpu_model}) has no bfloat16: tuning runs in float16 instead"
        )
    if ws.inference is not None and ws.inference.preset is not None:
        preset = presets.preset(ws.inference.preset.name)
        options = ws.inference.preset.preset_options
        if preset is not None and preset.gated and not (options and options.model_access_secret):
            warnings.append(
                f"{preset.name} is gated on Hugging Face: set "
                "inference.preset.presetOptions.modelAccessSecret to a Secret with HF_TOKEN"
            )
    return warnings


def _best_effort_warnings(name: str, presets: Catalog,
                          best_effort: ModelPreset | None) -> list[str]:
    if presets.preset(name) is not None or not is_hf_model_id(name):
        return []
    preset = resolve_preset(presets, name, best_effort)
    if preset is None:
        return [(f"inference.preset.name: {name} is not in the preset catalog and its "
                "config.json could not be read (this operator does not fetch from Hugging "
                "Face at admission; see KAITO_WEBHOOK_HF_CONFIG_DIRS): it is served "
                "best-effort with vLLM and its GPU memory was not checked")]
    return [(f"inference.preset.name: {name} is not in the preset catalog: served best-effort "
            f"with vLLM; memory estimated from its config.json "
            f"({preset.params_billion:.1f}B parameters, ~{preset.weights_gib:.0f}Gi of weights)")]
