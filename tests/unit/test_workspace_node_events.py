"""Which Node events resync workspaces: a heartbeat must not (with 1,000 workspaces on
a few nodes, each status rewrite would queue all of them), a change the planner reads must."""

from __future__ import annotations

import copy
from typing import Any

import pytest

from controller.predicates import Event, EventType
from controller.workspace.setup import node_matters

pytestmark = pytest.mark.unit

NODE: dict[str, Any] = {
    "apiVersion": "v1", "kind": "Node",
    "metadata": {"name": "gpu-0", "labels": {"app": "a", "nvidia.com/gpu.count": "1"}},
    "spec": {"taints": [{"key": "sku", "value": "gpu", "effect": "NoSchedule"}]},
    "status": {"allocatable": {"nvidia.com/gpu": "1"}, "capacity": {"nvidia.com/gpu": "1"},
               "conditions": [{"type": "Ready", "status": "True",
                               "lastHeartbeatTime": "2026-11-30T10:00:00Z"}]},
}


def _update(change: Any) -> Event:
    new = copy.deepcopy(NODE)
    change(new)
    return Event(EventType.UPDATE, new, copy.deepcopy(NODE))


def test_a_heartbeat_or_an_unread_field_does_not_resync() -> None:
    def heartbeat(node: dict[str, Any]) -> None:
        node["status"]["conditions"][0]["lastHeartbeatTime"] = "2026-11-30T10:00:40Z"
        node["metadata"]["resourceVersion"] = "99"
        node["status"]["images"] = [{"names": ["x"]}]

    assert not node_matters(_update(heartbeat))


@pytest.mark.parametrize("change", [
    lambda n: n["metadata"]["labels"].update({"app": "b"}),
    lambda n: n["spec"].update({"taints": []}),
    lambda n: n["spec"].update({"unschedulable": True}),
    lambda n: n["status"]["allocatable"].update({"nvidia.com/gpu": "0"}),
    lambda n: n["status"]["conditions"][0].update({"status": "False"}),
    lambda n: n["metadata"].update({"deletionTimestamp": "2026-11-30T10:01:00Z"}),
])
def test_what_the_planner_reads_resyncs(change: Any) -> None:
    assert node_matters(_update(change))


def test_adds_and_deletes_resync() -> None:
    assert node_matters(Event(EventType.CREATE, NODE))
    assert node_matters(Event(EventType.DELETE, NODE))
