"""Generates the CustomResourceDefinitions (Workspace, NodeClaim, Machine) from the models.

`kaito crds` prints `render_crds()`; `kaito crds --write` writes one file per CRD into
config/crd/bases/, and a unit test fails when the committed files drift from the models.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel

from crds import karpenter, workspace
from crds.schema import structural_schema


def _condition_column(name: str, condition_type: str, priority: int = 0) -> dict[str, Any]:
    column: dict[str, Any] = {
        "name": name,
        "type": "string",
        "jsonPath": f'.status.conditions[?(@.type=="{condition_type}")].status',
        "description": f"Status of the {condition_type} condition",
    }
    if priority:
        column["priority"] = priority
    return column


_AGE = {"name": "Age", "type": "date", "jsonPath": ".metadata.creationTimestamp"}

WORKSPACE_COLUMNS: list[dict[str, Any]] = [
    {
        "name": "Instance",
        "type": "string",
        "jsonPath": ".resource.instanceType",
        "description": "The GPU node SKU",
    },
    _condition_column("ResourceReady", workspace.CONDITION_RESOURCE_READY),
    _condition_column("InferenceReady", workspace.CONDITION_INFERENCE_READY),
    _condition_column("WorkspaceReady", workspace.CONDITION_WORKSPACE_READY),
    _condition_column("JobStarted", workspace.CONDITION_JOB_STARTED, priority=1),
    _condition_column("WorkspaceSucceeded", workspace.CONDITION_WORKSPACE_SUCCEEDED, priority=1),
    {
        "name": "TargetNodeCount",
        "type": "integer",
        "jsonPath": ".status.targetNodeCount",
        "description": "How many nodes the workspace needs",
        "priority": 1,
    },
    {
        "name": "Progress",
        "type": "string",
        "jsonPath": ".status.tuning.progress",
        "description": "Tuning steps done/planned",
        "priority": 1,
    },
    {
        "name": "Loss",
        "type": "string",
        "jsonPath": ".status.tuning.loss",
        "description": "Training loss of the latest step",
        "priority": 1,
    },
    {
        "name": "State",
        "type": "string",
        "jsonPath": ".status.state",
        "description": "The workspace's phase",
        "priority": 1,
    },
    _AGE,
]

NODE_COLUMNS: list[dict[str, Any]] = [
    {
        "name": "Type",
        "type": "string",
        "jsonPath": ".metadata.labels.node\\.kubernetes\\.io/instance-type",
    },
    _condition_column("Ready", "Ready"),
    {"name": "Node", "type": "string", "jsonPath": ".status.nodeName"},
    _AGE,
]


def _crd(
    *,
    group: str,
    kind: str,
    plural: str,
    scope: str,
    versions: list[tuple[str, bool]],
    model: type[BaseModel],
    columns: list[dict[str, Any]],
    short_names: list[str] | None = None,
    categories: list[str] | None = None,
) -> dict[str, Any]:
    names: dict[str, Any] = {
        "kind": kind,
        "listKind": f"{kind}List",
        "plural": plural,
        "singular": kind.lower(),
    }
    if short_names:
        names["shortNames"] = short_names
    if categories:
        names["categories"] = categories
    schema = structural_schema(model)
    return {
        "apiVersion": "apiextensions.k8s.io/v1",
        "kind": "CustomResourceDefinition",
        "metadata": {"name": f"{plural}.{group}"},
        "spec": {
            "group": group,
            "names": names,
            "scope": scope,
            "versions": [
                {
                    "name": name,
                    "served": True,
                    "storage": storage,
                    "schema": {"openAPIV3Schema": schema},
                    "subresources": {"status": {}},
                    "additionalPrinterColumns": columns,
                }
                for name, storage in versions
            ],
        },
    }


def crd_documents() -> dict[str, dict[str, Any]]:
    """Every CRD as a dict, keyed by the file name it is committed under."""
    return {
        "kaito.sh_workspaces.yaml": _crd(
            group=workspace.GROUP,
            kind=workspace.KIND,
            plural=workspace.PLURAL,
            scope="Namespaced",
            versions=[(v, v == workspace.STORAGE_VERSION) for v in workspace.VERSIONS],
            model=workspace.Workspace,
            columns=WORKSPACE_COLUMNS,
            short_names=["wk", "wks"],
            categories=["workspace"],
        ),
        "karpenter.sh_nodeclaims.yaml": _crd(
            group=karpenter.GROUP,
            kind="NodeClaim",
            plural="nodeclaims",
            scope="Cluster",
            versions=[(karpenter.NODECLAIM_VERSION, True)],
            model=karpenter.NodeClaim,
            columns=NODE_COLUMNS,
            categories=["karpenter"],
        ),
        "karpenter.sh_machines.yaml": _crd(
            group=karpenter.GROUP,
            kind="Machine",
            plural="machines",
            scope="Cluster",
            versions=[(karpenter.MACHINE_VERSION, True)],
            model=karpenter.Machine,
            columns=NODE_COLUMNS,
            categories=["karpenter"],
        ),
    }


_HEADER = "# Generated by `kaito crds --write` from the models in crds/; do not edit.\n"


class _NoAliasDumper(yaml.SafeDumper):
    """Writes shared sub-trees out in full: anchors would only confuse readers of the CRD."""

    def ignore_aliases(self, data: Any) -> bool:
        return True


def _dump(document: dict[str, Any]) -> str:
    return yaml.dump(
        document, Dumper=_NoAliasDumper, sort_keys=False, default_flow_style=False, width=100
    )


def render_crd_files() -> dict[str, str]:
    """File name -> YAML text, exactly as committed in config/crd/bases/."""
    return {name: _HEADER + "---\n" + _dump(doc) for name, doc in crd_documents().items()}


def render_crds() -> str:
    """All CRDs as one multi-document YAML stream."""
    return "".join("---\n" + _dump(doc) for doc in crd_documents().values())


def write_crds(out_dir: Path) -> list[Path]:
    """Writes one file per CRD into out_dir and returns the paths written."""
    out_dir.mkdir(parents=True, exist_ok=True)
    written: list[Path] = []
    for name, text in render_crd_files().items():
        path = out_dir / name
        path.write_text(text)
        written.append(path)
    return written
