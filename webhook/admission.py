"""The two admission decisions (mutate, validate) for a parsed review.

Each turns the review's objects into Workspaces once, reads the tuning ConfigMap through an
injected reader (the only I/O), and calls the pure defaulting / validation functions.
"""

from __future__ import annotations

import logging
from typing import Any, Protocol

import jsonpatch
from pydantic import ValidationError

from crds.workspace import Workspace
from presets.catalog import Catalog
from webhook.defaulting import default, deprecation_warnings
from webhook.errors import FieldError, join
from webhook.review import AdmissionReview, allowed, denied
from webhook.tuning_config import TuningConfig, parse_tuning_config
from webhook.validation import admission_warnings, validate

log = logging.getLogger(__name__)

SPEC_KEYS = ("resource", "inference", "tuning")


class ConfigMapUnavailable(Exception):
    """The ConfigMap could not be read (the API server failed or timed out)."""


class ConfigMapReader(Protocol):
    async def read(self, namespace: str, name: str) -> dict[str, str] | None:
        """The ConfigMap's data; None when it does not exist; raises ConfigMapUnavailable."""


def _parse_errors(error: ValidationError, root: str) -> list[FieldError]:
    found: list[FieldError] = []
    for item in error.errors():
        path = ".".join(
            f"[{part}]" if isinstance(part, int) else str(part) for part in item["loc"]
        ).replace(".[", "[")
        found.append(FieldError(f"{root}{path}" if path else root or "<root>",
                                "Invalid value", item["msg"]))
    return found


def _workspace(obj: dict[str, Any], root: str = "") -> Workspace | list[FieldError]:
    try:
        return Workspace.model_validate(obj)
    except ValidationError as error:
        return _parse_errors(error, root)


async def _config_data(
    ws: Workspace, namespace: str, reader: ConfigMapReader
) -> dict[str, str] | None:
    if ws.tuning is None or not ws.tuning.config:
        return None
    return await reader.read(namespace, ws.tuning.config)


def _namespace(review: AdmissionReview, ws: Workspace) -> str:
    return review.request.namespace or ws.metadata.namespace or "default"


async def mutate(review: AdmissionReview, presets: Catalog, reader: ConfigMapReader) -> dict[str, Any]:
    """Defaults as a JSONPatch; objects the validator will deny pass through untouched."""
    request = review.request
    if request.operation not in ("CREATE", "UPDATE") or request.object is None:
        return allowed(request.uid)
    parsed = _workspace(request.object)
    if isinstance(parsed, list):
        return denied(request.uid, join(parsed))
    old = _workspace(request.old_object) if request.old_object is not None else None
    if isinstance(old, list):
        old = None  # a stored object we cannot read: default as on create
    config: TuningConfig | None = None
    try:
        data = await _config_data(parsed, _namespace(review, parsed), reader)
    except ConfigMapUnavailable as error:
        return denied(request.uid, f"tuning.config: could not read the ConfigMap: {error}",
                      code=503, reason="ServiceUnavailable")
    if parsed.tuning is not None and parsed.tuning.config:
        config, _ = parse_tuning_config(parsed.tuning.config, data)
    defaulted = default(parsed, presets, old=old, tuning_config=config)
    before = {k: v for k, v in parsed.to_dict().items() if k in SPEC_KEYS}
    after = {k: v for k, v in defaulted.to_dict().items() if k in SPEC_KEYS}
    patch = list(jsonpatch.make_patch(before, after))
    warnings = deprecation_warnings(parsed) if request.operation == "CREATE" else []
    return allowed(request.uid, patch=patch, warnings=warnings)


async def check(review: AdmissionReview, presets: Catalog, reader: ConfigMapReader) -> dict[str, Any]:
    """Admits or denies with every problem named by its field path."""
    request = review.request
    if request.operation not in ("CREATE", "UPDATE") or request.object is None:
        return allowed(request.uid)
    parsed = _workspace(request.object)
    if isinstance(parsed, list):
        return denied(request.uid, join(parsed))
    if parsed.metadata.deletion_timestamp is not None:
        return allowed(request.uid)  # never block finalizer removal
    old = _workspace(request.old_object) if request.old_object is not None else None
    if isinstance(old, list):
        old = None
    try:
        data = await _config_data(parsed, _namespace(review, parsed), reader)
    except ConfigMapUnavailable as error:
        return denied(request.uid, f"tuning.config: could not read the ConfigMap: {error}",
                      code=503, reason="ServiceUnavailable")
    errors = validate(parsed, old, presets, tuning_config_data=data)
    if errors:
        log.info("workspace denied", extra={"uid": request.uid, "workspace": parsed.metadata.name,
                                            "errors": len(errors)})
        return denied(request.uid, join(errors))
    return allowed(request.uid, warnings=admission_warnings(parsed, presets,
                                                           tuning_config_data=data))
