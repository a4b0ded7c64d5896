"""Prometheus metrics of the workspaces themselves (beside the runtime's reconcile metrics).

- ``kaito_workspaces{state,preset,mode}``: how many workspaces are in each state, counted
  from the informer cache on every scrape (so it is never stale and needs no bookkeeping);
- ``kaito_workspace_condition_seconds{condition,mode}``: seconds from a workspace's
  creation to each condition first turning True (a histogram, observed once per
  transition by the reconciler);
- ``kaito_workspace_tuning_*{namespace,workspace}``: the tuning progress shown in status
  (step, total steps, loss, ETA), also read from the cache at scrape time.
"""

from __future__ import annotations

import calendar
import time
from collections import Counter as Tally
from collections.abc import Callable, Iterable, Iterator, Mapping
from typing import Any

from prometheus_client import CollectorRegistry, Histogram
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

CONDITION_BUCKETS = (1, 2, 5, 10, 30, 60, 120, 300, 600, 1200, 1800, 3600, 7200, 14400,
                     28800, 86400)


def _mode(ws: Mapping[str, Any]) -> str:
    return "tuning" if ws.get("tuning") else "inference"


def _preset(ws: Mapping[str, Any]) -> str:
    spec = ws.get("tuning") or ws.get("inference") or {}
    return str((spec.get("preset") or {}).get("name") or "custom")


def _parse_time(text: str | None) -> float | None:
    if not text:
        return None
    try:
        return float(calendar.timegm(time.strptime(text, "%Y-%m-%dT%H:%M:%SZ")))
    except ValueError:
        return None


class WorkspaceCollector(Collector):
    """Scrape-time gauges over the workspaces in the cache."""

    def __init__(self, workspaces: Callable[[], Iterable[Mapping[str, Any]]]) -> None:
        self._workspaces = workspaces

    def collect(self) -> Iterator[GaugeMetricFamily]:
        states = GaugeMetricFamily("kaito_workspaces", "Workspaces by state, preset and mode",
                                   labels=["state", "preset", "mode"])
        step = GaugeMetricFamily("kaito_workspace_tuning_step", "Tuning steps done",
                                 labels=["namespace", "workspace"])
        total = GaugeMetricFamily("kaito_workspace_tuning_total_steps", "Tuning steps planned",
                                  labels=["namespace", "workspace"])
        loss = GaugeMetricFamily("kaito_workspace_tuning_loss", "Latest training loss",
                                 labels=["namespace", "workspace"])
        eta = GaugeMetricFamily("kaito_workspace_tuning_eta_seconds",
                                "Estimated seconds until tuning finishes",
                                labels=["namespace", "workspace"])
        tally: Tally[tuple[str, str, str]] = Tally()
        for ws in self._workspaces():
            status = ws.get("status") or {}
            tally[(str(status.get("state") or "Pending"), _preset(ws), _mode(ws))] += 1
            tuning = status.get("tuning") or {}
            metadata = ws.get("metadata") or {}
            labels = [str(metadata.get("namespace", "")), str(metadata.get("name", ""))]
            for family, key in ((step, "step"), (total, "totalSteps"), (eta, "etaSeconds")):
                if isinstance(tuning.get(key), int | float):
                    family.add_metric(labels, float(tuning[key]))
            try:
                loss.add_metric(labels, float(tuning["loss"]))
            except (KeyError, TypeError, ValueError):
                pass
        for (state, preset, mode), count in sorted(tally.items()):
            states.add_metric([state, preset, mode], count)
        yield from (states, step, total, loss, eta)


class WorkspaceMetrics:
    """The workspace metrics in ``registry``."""

    def __init__(self, registry: CollectorRegistry,
                 workspaces: Callable[[], Iterable[Mapping[str, Any]]]) -> None:
        self.condition_seconds = Histogram(
            "kaito_workspace_condition_seconds",
            "Seconds from a workspace's creation to a condition first turning True",
            ["condition", "mode"], buckets=CONDITION_BUCKETS, registry=registry)
        registry.register(WorkspaceCollector(workspaces))

    def observe_transitions(self, ws: Mapping[str, Any], old: Iterable[Mapping[str, Any]],
                            new: Iterable[Mapping[str, Any]]) -> None:
        """Observe each condition that is True in ``new`` and was not True in ``old``."""
        was_true = {c.get("type") for c in old if c.get("status") == "True"}
        created = _parse_time((ws.get("metadata") or {}).get("creationTimestamp"))
        if created is None:
            return
        for condition in new:
            if condition.get("status") != "True" or condition.get("type") in was_true:
                continue
            when = _parse_time(condition.get("lastTransitionTime"))
            if when is not None:
                self.condition_seconds.labels(
                    condition=str(condition.get("type")), mode=_mode(ws)
                ).observe(max(0.0, when - created))
