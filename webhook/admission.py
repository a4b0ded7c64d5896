"""The two admission decisions (mutate, validate) for a parsed review.

Each turns the review's objects into Workspaces once, reads the tuning ConfigMap through an
injected reader (the only I/O), and calls the pure defaulting / validation functions.
"""

from __future__ import annotations

import asyncio
import functools
import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, ParamSpec, Protocol, TypeVar

from pydantic import ValidationError

from crds.addresses import Network
from crds.tuning_config import CONFIG_KEY, default_config_text, is_template_name, template_name
from crds.workspace import Workspace
from presets.catalog import Catalog, HfConfigSource, ModelPreset, is_hf_model_id
from webhook.defaulting import default, deprecation_warnings
from webhook.errors import FieldError, join
from webhook.patch import make_patch
from webhook.review import AdmissionReview, allowed, denied
from webhook.tuning_config import TrainingConfig, parse_tuning_config
from webhook.validation import admission_warnings, spec_unchanged, validate

log = logging.getLogger(__name__)

SPEC_KEYS = ("resource", "inference", "tuning")

_P = ParamSpec("_P")
_T = TypeVar("_T")


async def _run(offload: bool, fn: Callable[_P, _T], *args: _P.args, **kwargs: _P.kwargs) -> _T:
    """Runs a pure step here, or on a worker thread for large objects so the loop stays free."""
    if offload:
        return await asyncio.to_thread(functools.partial(fn, *args, **kwargs))
    return fn(*args, **kwargs)


DEFAULT_OPERATOR_NAMESPACE = "kaito-system"


@dataclass(frozen=True)
class AdmissionOptions:
    """The operator's choices that change admission decisions."""

    allowed_networks: Sequence[Network] = ()
    """Non-public networks tuning input URLs may point at."""
    operator_namespace: str = DEFAULT_OPERATOR_NAMESPACE
    """Where the default tuning configs (lora-/qlora-params-template) live."""
    node_provisioning: bool = True
    """False: bring-your-own nodes (upstream's disableNodeAutoProvisioning)."""
    hf_configs: HfConfigSource | None = None
    """Where best-effort presets' config.json come from (local dirs, the Hub); None: none."""


class ConfigMapUnavailable(Exception):
    """The ConfigMap could not be read (the API server failed or timed out)."""


class ConfigMapReader(Protocol):
    async def read(self, namespace: str, name: str) -> dict[str, str] | None:
        """The ConfigMap's data; None when it does not exist; raises ConfigMapUnavailable."""


def _parse_errors(error: ValidationError) -> list[FieldError]:
    """Pydantic's errors as field errors with API paths (`tuning.input.urls[0]`)."""
    found: list[FieldError] = []
    for item in error.errors():
        path = ".".join(
            f"[{part}]" if isinstance(part, int) else str(part) for part in item["loc"]
        ).replace(".[", "[")
        found.append(FieldError(path or "<root>", "Invalid value", item["msg"]))
    return found


def _workspace(obj: dict[str, Any]) -> Workspace | list[FieldError]:
    try:
        return Workspace.model_validate(obj)
    except ValidationError as error:
        return _parse_errors(error)


def _parse_pair(
    obj: dict[str, Any], old_obj: dict[str, Any] | None
) -> tuple[Workspace | list[FieldError], Workspace | None]:
    parsed = _workspace(obj)
    old = _workspace(old_obj) if old_obj is not None else None
    # A stored object we cannot read is treated as absent: rules run as on create.
    return parsed, (old if isinstance(old, Workspace) else None)


def _config_name(ws: Workspace) -> str:
    assert ws.tuning is not None
    return ws.tuning.config or template_name(ws.tuning.method or "lora")


def _default_patch(parsed: Workspace, old: Workspace | None, presets: Catalog,
                   config: TrainingConfig | None, node_provisioning: bool = True,
                   best_effort: ModelPreset | None = None) -> list[dict[str, Any]]:
    defaulted = default(parsed, presets, old=old, tuning_config=config,
                        node_provisioning=node_provisioning, best_effort=best_effort)
    before = {k: v for k, v in parsed.to_dict().items() if k in SPEC_KEYS}
    after = {k: v for k, v in defaulted.to_dict().items() if k in SPEC_KEYS}
    return make_patch(before, after)


async def _config_data(
    ws: Workspace, namespace: str, reader: ConfigMapReader, operator_namespace: str
) -> dict[str, str] | None:
    """The tuning config's ConfigMap data, found as upstream finds it: the named ConfigMap
    in the workspace's namespace; a default template's name (or no name: the method's
    template) falls back to the operator's namespace; a missing template under no name is
    the built-in default (the controller does the same)."""
    if ws.tuning is None:
        return None
    name = ws.tuning.config
    if name:
        data = await reader.read(namespace, name)
        if data is None and is_template_name(name):
            data = await reader.read(operator_namespace, name)
        return data
    method = ws.tuning.method or "lora"
    data = await reader.read(operator_namespace, template_name(method))
    if data is None and method in ("lora", "qlora"):
        data = {CONFIG_KEY: default_config_text("qlora" if method == "qlora" else "lora")}
    return data


async def _best_effort(ws: Workspace, presets: Catalog,
                       options: AdmissionOptions) -> ModelPreset | None:
    """The preset built from the config.json of a Hugging Face id the catalog lacks (read
    on a worker thread: local files or the Hub), or None."""
    preset = ws.inference.preset if ws.inference is not None else None
    source = options.hf_configs
    if (preset is None or source is None or not is_hf_model_id(preset.name)
            or presets.preset(preset.name) is not None):
        return None
    return await asyncio.to_thread(source.preset, preset.name)


def _namespace(review: AdmissionReview, ws: Workspace) -> str:
    return review.request.namespace or ws.metadata.namespace or "default"


async def mutate(review: AdmissionReview, presets: Catalog, reader: ConfigMapReader,
                 *, offload: bool = False,
                 options: AdmissionOptions | None = None) -> dict[str, Any]:
    """Defaults as a JSONPatch; objects the validator will deny pass through untouched."""
    request = review.request
    if request.operation not in ("CREATE", "UPDATE") or request.object is None:
        return allowed(request.uid)
    parsed, old = await _run(offload, _parse_pair, request.object, request.old_object)
    if isinstance(parsed, list):
        return denied(request.uid, join(parsed))
    options = options or AdmissionOptions()
    config: TrainingConfig | None = None
    try:
        data = await _config_data(parsed, _namespace(review, parsed), reader,
                                  options.operator_namespace)
    except ConfigMapUnavailable as error:
        return denied(request.uid, f"tuning.config: could not read the ConfigMap: {error}",
                      code=503, reason="ServiceUnavailable")
    if parsed.tuning is not None and data is not None:
        config, _ = parse_tuning_config(_config_name(parsed), data, parsed.tuning.method)
    best_effort = await _best_effort(parsed, presets, options)
    patch = await _run(offload, _default_patch, parsed, old, presets, config,
                       options.node_provisioning, best_effort)
    warnings = deprecation_warnings(parsed) if request.operation == "CREATE" else []
    return allowed(request.uid, patch=patch, warnings=warnings)


async def check(review: AdmissionReview, presets: Catalog, reader: ConfigMapReader,
                *, offload: bool = False,
                allowed_networks: Sequence[Network] = (),
                options: AdmissionOptions | None = None) -> dict[str, Any]:
    """Admits or denies with every problem named by its field path."""
    options = options or AdmissionOptions(allowed_networks=allowed_networks)
    request = review.request
    if request.operation not in ("CREATE", "UPDATE") or request.object is None:
        return allowed(request.uid)
    parsed, old = await _run(offload, _parse_pair, request.object, request.old_object)
    if isinstance(parsed, list):
        return denied(request.uid, join(parsed))
    if parsed.metadata.deletion_timestamp is not None:
        return allowed(request.uid)  # never block finalizer removal
    if old is not None and spec_unchanged(parsed, old):
        return allowed(request.uid)  # metadata-only update: no rule (and no I/O) applies
    try:
        data = await _config_data(parsed, _namespace(review, parsed), reader,
                                  options.operator_namespace)
    except ConfigMapUnavailable as error:
        return denied(request.uid, f"tuning.config: could not read the ConfigMap: {error}",
                      code=503, reason="ServiceUnavailable")
    best_effort = await _best_effort(parsed, presets, options)
    errors = await _run(offload, validate, parsed, old, presets, tuning_config_data=data,
                        allowed_networks=options.allowed_networks,
                        node_provisioning=options.node_provisioning, best_effort=best_effort)
    if errors:
        log.info("workspace denied", extra={"uid": request.uid, "workspace": parsed.metadata.name,
                                            "errors": len(errors)})
        return denied(request.uid, join(errors))
    warnings = await _run(offload, admission_warnings, parsed, presets,
                          tuning_config_data=data, best_effort=best_effort)
    return allowed(request.uid, warnings=warnings)
