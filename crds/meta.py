"""Kubernetes meta types the API objects share: object metadata, label selectors, conditions.

Only what our objects read or write is typed; object metadata keeps unknown keys so that a
round trip through the models never drops what the API server sent.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, WithJsonSchema
from pydantic.alias_generators import to_camel

# A JSON-schema fragment the CRD generator keeps as an opaque object (PodTemplateSpec,
# VolumeSource, ...): the API server validates those types where they are used.
FREE_FORM: dict[str, Any] = {"type": "object", "x-kubernetes-preserve-unknown-fields": True}

FreeForm = Annotated[dict[str, Any], WithJsonSchema(FREE_FORM)]

# Conditions are a map keyed by type (server-side apply merges them by type).
CONDITIONS_LIST_MAP: dict[str, Any] = {
    "x-kubernetes-list-type": "map",
    "x-kubernetes-list-map-keys": ["type"],
}


def conditions_field(description: str) -> Any:
    """A `conditions` field: optional list of Condition, a list-map keyed by type."""
    return Field(default=None, description=description, json_schema_extra=CONDITIONS_LIST_MAP)


class ApiModel(BaseModel):
    """Base of every API model: camelCase on the wire, snake_case in Python."""

    model_config = ConfigDict(
        alias_generator=to_camel,
        populate_by_name=True,
        extra="ignore",
        use_attribute_docstrings=True,
    )


class ObjectMeta(ApiModel):
    """Standard object metadata (a subset is typed; other keys are kept)."""

    model_config = ConfigDict(extra="allow")

    name: str | None = None
    generate_name: str | None = None
    namespace: str | None = None
    uid: str | None = None
    resource_version: str | None = None
    generation: int | None = None
    labels: dict[str, str] | None = None
    annotations: dict[str, str] | None = None
    creation_timestamp: str | None = None
    deletion_timestamp: str | None = None
    finalizers: list[str] | None = None


class LabelSelectorRequirement(ApiModel):
    """A selector requirement: a key, an operator and (for In/NotIn) values."""

    key: str
    """The label key that the selector applies to."""
    operator: Literal["In", "NotIn", "Exists", "DoesNotExist"]
    """How the key relates to the values: In, NotIn, Exists or DoesNotExist."""
    values: list[str] | None = None
    """The values for In and NotIn; must be empty for Exists and DoesNotExist."""


class LabelSelector(ApiModel):
    """A label query over nodes: the results of matchLabels and matchExpressions are ANDed."""

    match_labels: dict[str, str] | None = None
    """Label key/value pairs a node must carry."""
    match_expressions: list[LabelSelectorRequirement] | None = None
    """Label selector requirements a node must satisfy."""


class Condition(ApiModel):
    """A standard metav1.Condition."""

    type: str
    """Type of the condition in CamelCase, e.g. ResourceReady."""
    status: Literal["True", "False", "Unknown"]
    """Status of the condition: True, False or Unknown."""
    observed_generation: int | None = None
    """The .metadata.generation the condition was set from."""
    last_transition_time: str
    """Last time the condition changed status (RFC 3339)."""
    reason: str
    """A CamelCase reason for the condition's last transition."""
    message: str
    """A human readable message about the transition."""


def find_condition(conditions: list[Condition] | None, condition_type: str) -> Condition | None:
    """The condition of this type, or None."""
    for condition in conditions or []:
        if condition.type == condition_type:
            return condition
    return None


def is_condition_true(conditions: list[Condition] | None, condition_type: str) -> bool:
    """Whether a condition of this type exists with status True."""
    condition = find_condition(conditions, condition_type)
    return condition is not None and condition.status == "True"


def set_condition(
    conditions: list[Condition] | None,
    condition: Condition,
) -> list[Condition]:
    """A new list with `condition` set; lastTransitionTime is kept when the status is the same.

    Order is preserved (a new type is appended), so writing the same conditions twice gives
    the same object and no needless update.
    """
    updated: list[Condition] = []
    found = False
    for existing in conditions or []:
        if existing.type != condition.type:
            updated.append(existing)
            continue
        found = True
        if existing.status == condition.status:
            condition = condition.model_copy(
                update={"last_transition_time": existing.last_transition_time}
            )
        updated.append(condition)
    if not found:
        updated.append(condition)
    return updated
