"""The mutating webhook's JSON Patch: applied by a standard implementation, it gives the
defaulted document."""

from __future__ import annotations

import copy
from typing import Any

import jsonpatch
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from webhook.patch import make_patch

pytestmark = pytest.mark.unit


def _applied(before: Any, after: Any) -> Any:
    return jsonpatch.apply_patch(copy.deepcopy(before), make_patch(before, after))


@pytest.mark.parametrize(("before", "after", "operations"), [
    ({"a": 1}, {"a": 1}, []),
    ({"resource": {"labelSelector": {}}},
     {"resource": {"labelSelector": {}, "instanceType": "T4", "count": 1}},
     [{"op": "add", "path": "/resource/instanceType", "value": "T4"},
      {"op": "add", "path": "/resource/count", "value": 1}]),
    ({"r": {"count": 1}}, {"r": {"count": 2}}, [{"op": "replace", "path": "/r/count", "value": 2}]),
    ({"r": {"gone": 1, "kept": 2}}, {"r": {"kept": 2}}, [{"op": "remove", "path": "/r/gone"}]),
    ({"adapters": [{"n": "a"}, {"n": "b", "strength": "0.2"}]},
     {"adapters": [{"n": "a", "strength": "1.0"}, {"n": "b", "strength": "0.2"}]},
     [{"op": "add", "path": "/adapters/0/strength", "value": "1.0"}]),
    ({"l": [1]}, {"l": [1, 2]}, [{"op": "replace", "path": "/l", "value": [1, 2]}]),
    ({"a/b~c": 1}, {"a/b~c": 2}, [{"op": "replace", "path": "/a~1b~0c", "value": 2}]),
])
def test_patch_operations(before: Any, after: Any, operations: list[dict[str, Any]]) -> None:
    assert make_patch(before, after) == operations
    assert _applied(before, after) == after


_leaves = st.none() | st.booleans() | st.integers() | st.text(max_size=5)
_documents = st.recursive(
    _leaves,
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=4), inner,
                                                                max_size=4),
    max_leaves=12)


@settings(max_examples=300, deadline=None)
@given(st.dictionaries(st.text(max_size=4), _documents, max_size=4),
       st.dictionaries(st.text(max_size=4), _documents, max_size=4))
def test_applying_the_patch_gives_the_new_document(before: dict[str, Any],
                                                   after: dict[str, Any]) -> None:
    assert _applied(before, after) == after
