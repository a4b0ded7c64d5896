"""Turns a pydantic model's JSON schema into a structural OpenAPI v3 schema for a CRD.

The API server needs a *structural* schema: every node has a `type` (or is an explicit
int-or-string / preserve-unknown-fields node), no `$ref`, no `anyOf` of types, no `null`
type. Pydantic gives `$defs`/`$ref`, `anyOf [X, null]` for optional fields, `const` for
one-value literals and titles/defaults we do not want in a CRD; this module rewrites those.
Defaults are dropped on purpose: the mutating webhook fills them, and a schema default
would hide from it what the user wrote.
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel

_DROP = {"title", "default", "$defs", "additionalProperties"}
_NULL = {"type": "null"}
INT_OR_STRING: dict[str, Any] = {
    "x-kubernetes-int-or-string": True,
    "anyOf": [{"type": "integer"}, {"type": "string"}],
}


def _convert(node: dict[str, Any], defs: dict[str, Any]) -> dict[str, Any]:
    if "$ref" in node:
        target = defs[node["$ref"].rsplit("/", 1)[-1]]
        resolved = _convert(target, defs)
        siblings = {k: v for k, v in node.items() if k != "$ref"}
        return {**resolved, **_convert(siblings, defs)} if siblings else resolved
    if "anyOf" in node and "x-kubernetes-int-or-string" not in node:
        members = [m for m in node["anyOf"] if m != _NULL]
        siblings = {k: v for k, v in node.items() if k != "anyOf"}
        if len(members) == 1:
            return {**_convert(members[0], defs), **_convert(siblings, defs)}
        kinds = sorted(m.get("type", "") for m in members)
        if kinds == ["integer", "string"]:
            return {**INT_OR_STRING, **_convert(siblings, defs)}
        raise ValueError(f"cannot express anyOf {members} in a structural schema")
    out: dict[str, Any] = {}
    for key, value in node.items():
        if key in _DROP:
            continue
        if key == "const":
            out["enum"] = [value]
        elif key == "properties":
            out["properties"] = {name: _convert(sub, defs) for name, sub in value.items()}
        elif key == "items":
            out["items"] = _convert(value, defs)
        elif key == "description" and isinstance(value, str):
            out["description"] = " ".join(value.split())
        else:
            out[key] = value
    extra = node.get("additionalProperties")
    if isinstance(extra, dict) and not node.get("x-kubernetes-preserve-unknown-fields"):
        out["additionalProperties"] = _convert(extra, defs)
    if "enum" in out and "type" not in out:
        out["type"] = "string"
    return out


def structural_schema(model: type[BaseModel]) -> dict[str, Any]:
    """The model's structural schema; `metadata` is left to the API server (`type: object`)."""
    raw = model.model_json_schema(by_alias=True, mode="validation")
    schema = _convert(raw, raw.get("$defs", {}))
    properties = schema.get("properties", {})
    if "metadata" in properties:
        properties["metadata"] = {"type": "object"}
    _check_structural(schema, "")
    return schema


def _check_structural(node: dict[str, Any], path: str) -> None:
    if node.get("x-kubernetes-int-or-string") or node.get("x-kubernetes-preserve-unknown-fields"):
        if "type" not in node and not node.get("x-kubernetes-int-or-string"):
            raise ValueError(f"{path or '<root>'}: preserve-unknown-fields node needs a type")
        return
    if "type" not in node:
        raise ValueError(f"{path or '<root>'}: node has no type: {node}")
    for name, sub in node.get("properties", {}).items():
        _check_structural(sub, f"{path}.{name}")
    if "items" in node:
        _check_structural(node["items"], f"{path}[]")
    if isinstance(node.get("additionalProperties"), dict):
        _check_structural(node["additionalProperties"], f"{path}{{}}")
