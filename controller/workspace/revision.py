"""The workspace's revision: a hash of what it asks for (``resource``, ``inference``,
``tuning``), kept as a ControllerRevision and in an annotation (pure).

A workload built from an older revision is replaced: a new tuning Job when the input,
output or config changed (as upstream does), a rolled Deployment for
inference. ControllerRevisions keep the history ``kubectl`` users know from
StatefulSets; the newest few are kept.
"""

from __future__ import annotations

import hashlib
import json
from typing import Any

from controller.workspace.workload import REVISION_ANNOTATION
from crds.workspace import Workspace

REVISION_HISTORY_LIMIT = 5


def spec_of(ws: Workspace) -> dict[str, Any]:
    """The part of the workspace a revision covers, as the API stores it."""
    body = ws.model_dump(by_alias=True, exclude_none=True, mode="json",
                         include={"resource", "inference", "tuning"})
    return body


def revision_hash(ws: Workspace) -> str:
    """A short stable hash of :func:`spec_of` (key order does not matter)."""
    text = json.dumps(spec_of(ws), sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def revision_name(ws: Workspace, revision: str) -> str:
    return f"{ws.metadata.name}-{revision[:10]}"[:253]


def build_controller_revision(
    ws: Workspace, revision: str, number: int, owner: dict[str, Any], labels: dict[str, str]
) -> dict[str, Any]:
    """The ControllerRevision recording ``revision`` (its ``revision`` field is the
    sequence number, as apps/v1 defines it)."""
    return {
        "apiVersion": "apps/v1",
        "kind": "ControllerRevision",
        "metadata": {
            "name": revision_name(ws, revision),
            "namespace": ws.metadata.namespace,
            "labels": labels,
            "annotations": {REVISION_ANNOTATION: revision},
            "ownerReferences": [owner],
        },
        "data": spec_of(ws),
        "revision": number,
    }


def revisions_to_prune(revisions: list[dict[str, Any]], keep: int = REVISION_HISTORY_LIMIT
                       ) -> list[str]:
    """Names of the oldest revisions beyond ``keep``."""
    ordered = sorted(revisions, key=lambda item: int(item.get("revision", 0)))
    return [str(item["metadata"]["name"]) for item in ordered[:-keep]] if keep else []
