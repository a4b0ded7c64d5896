"""The JSON Patch (RFC 6902) that turns one JSON document into another, for defaulting.

The mutating webhook's documents differ in a few filled-in leaves, so a plain recursive
walk is enough: a key only one side has is added or removed, objects are walked, lists of
equal length are walked element by element, anything else that differs is replaced. The
general-purpose differ (jsonpatch's, with list alignment and move detection) cost most of
a mutating review's time and buys nothing here. Containers that compare equal in Python
are taken as equal (inside them True == 1): both documents are dumps of the same typed
model, whose fields do not change type.
"""

from __future__ import annotations

from typing import Any

__all__ = ["make_patch"]


def _pointer_token(key: str) -> str:
    return key.replace("~", "~0").replace("/", "~1")


def make_patch(before: Any, after: Any) -> list[dict[str, Any]]:
    """Operations that, applied to ``before``, give ``after`` (empty when equal)."""
    operations: list[dict[str, Any]] = []
    _diff(before, after, "", operations)
    return operations


def _diff(before: Any, after: Any, path: str, operations: list[dict[str, Any]]) -> None:
    if isinstance(before, dict) and isinstance(after, dict):
        if before == after:  # most of the document: one C-level comparison, no walk
            return
        for key, old_value in before.items():
            if key not in after:
                operations.append({"op": "remove", "path": f"{path}/{_pointer_token(key)}"})
            elif old_value != after[key] or type(old_value) is not type(after[key]):
                _diff(old_value, after[key], f"{path}/{_pointer_token(key)}", operations)
        for key, new_value in after.items():
            if key not in before:
                operations.append({"op": "add", "path": f"{path}/{_pointer_token(key)}",
                                   "value": new_value})
        return
    if (isinstance(before, list) and isinstance(after, list)
            and len(before) == len(after)):
        for index, (old_item, new_item) in enumerate(zip(before, after, strict=True)):
            if old_item != new_item or type(old_item) is not type(new_item):
                _diff(old_item, new_item, f"{path}/{index}", operations)
        return
    # bool is an int in Python but not in JSON: True == 1 must still be replaced.
    if type(before) is not type(after) or before != after:
        operations.append({"op": "replace", "path": path, "value": after})
