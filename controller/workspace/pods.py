"""Why a workspace's pod is not doing its job, read from the pod's status (pure).

The kubelet and the scheduler already say what is wrong: a PodScheduled condition with
reason ``Unschedulable`` ("0/3 nodes are available: 3 Insufficient nvidia.com/gpu"), a
container waiting in ``ImagePullBackOff`` or ``CrashLoopBackOff``, a last termination
``OOMKilled`` with its exit code and termination message, a started container whose
readiness probe fails. This module turns those into one ``PodTrouble`` (a CamelCase
reason, the kubelet's word where it has one, and a message naming the pod, container,
image and probe) that the workspace's conditions carry, so a workspace is never shown
Ready, or merely "waiting", while its pod is failing.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

PULL_FAILURES = frozenset({"ErrImagePull", "ImagePullBackOff", "InvalidImageName",
                           "ErrImageNeverPull", "RegistryUnavailable"})
START_FAILURES = frozenset({"CreateContainerConfigError", "CreateContainerError",
                            "RunContainerError", "PreCreateHookError", "PostStartHookError"})
REASON_UNSCHEDULABLE = "Unschedulable"
REASON_CRASH_LOOP = "CrashLoopBackOff"
REASON_OOM_KILLED = "OOMKilled"
REASON_PROBE_FAILING = "ProbeFailing"
REASON_CONTAINER_FAILED = "ContainerFailed"
REASON_POD_FAILED = "PodFailed"
# A readiness probe that has just begun may fail once or twice: only a container started
# this long ago whose probe still fails is reported.
PROBE_GRACE_SECONDS = 30.0


@dataclass(frozen=True)
class PodTrouble:
    """What is wrong with one pod."""

    reason: str
    message: str
    # Whether the pod cannot even start (scheduling, image, container config): for the
    # tuning Job's JobStarted.
    is_start_failure: bool = False


def _name(obj: Mapping[str, Any]) -> str:
    return str((obj.get("metadata") or {}).get("name", "?"))


def _parse_time(value: Any) -> float | None:
    if not isinstance(value, str) or not value:
        return None
    try:
        return datetime.fromisoformat(value).timestamp()  # Python 3.11 reads "Z"
    except ValueError:
        return None


def _spec_container(pod: Mapping[str, Any], name: str) -> Mapping[str, Any]:
    spec = pod.get("spec") or {}
    for container in list(spec.get("initContainers") or []) + list(
            spec.get("containers") or []):
        if container.get("name") == name:
            return dict(container)
    return {}


def _termination(terminated: Mapping[str, Any]) -> str:
    """``OOMKilled (exit code 137): <message>``."""
    reason = terminated.get("reason") or "Error"
    text = f"{reason} (exit code {terminated.get('exitCode', '?')})"
    message = str(terminated.get("message") or "").strip()
    return f"{text}: {message}" if message else text


def _oom(where: str, pod: Mapping[str, Any], container: str,
         terminated: Mapping[str, Any]) -> str:
    """``... was OOMKilled (memory limit 8Gi, exit code 137): <message>``."""
    limits = (_spec_container(pod, container).get("resources") or {}).get("limits") or {}
    details = [f"memory limit {limits['memory']}"] if limits.get("memory") else []
    details.append(f"exit code {terminated.get('exitCode', '?')}")
    message = str(terminated.get("message") or "").strip()
    return f"{where} was OOMKilled ({', '.join(details)})" + (f": {message}" if message else "")


def _probe_text(probe: Mapping[str, Any]) -> str:
    http = probe.get("httpGet")
    if isinstance(http, Mapping):
        return f"HTTP GET {http.get('path', '/')} on port {http.get('port')}"
    if isinstance(probe.get("tcpSocket"), Mapping):
        return f"TCP port {probe['tcpSocket'].get('port')}"
    if isinstance(probe.get("exec"), Mapping):
        return "exec " + " ".join(str(part) for part in probe["exec"].get("command") or [])
    return "its probe"


def _container_trouble(pod: Mapping[str, Any], container: Mapping[str, Any],
                       now: float) -> PodTrouble | None:
    pod_name = _name(pod)
    name = container.get("name", "?")
    where = f"pod {pod_name} container {name}"
    state = container.get("state") or {}
    last = (container.get("lastState") or {}).get("terminated") or {}
    waiting = state.get("waiting") or {}
    reason = waiting.get("reason")
    detail = str(waiting.get("message") or "").strip()
    if reason in PULL_FAILURES:
        image = _spec_container(pod, name).get("image") or container.get("image") or "?"
        return PodTrouble(reason, f"{where} cannot pull image {image}: {reason}"
                          + (f": {detail}" if detail else ""), is_start_failure=True)
    if reason in START_FAILURES:
        return PodTrouble(reason, f"{where} cannot start: {reason}"
                          + (f": {detail}" if detail else ""), is_start_failure=True)
    restarts = int(container.get("restartCount") or 0)
    if reason == REASON_CRASH_LOOP:
        if last.get("reason") == REASON_OOM_KILLED:
            return PodTrouble(REASON_OOM_KILLED, _oom(where, pod, name, last)
                              + f"; restarted {restarts} times, with back-off")
        return PodTrouble(REASON_CRASH_LOOP, f"{where} keeps crashing (restarted {restarts} "
                          f"times); last exit: {_termination(last) if last else 'unknown'}")
    terminated = state.get("terminated") or {}
    if terminated and terminated.get("exitCode", 0) != 0:
        if terminated.get("reason") == REASON_OOM_KILLED:
            return PodTrouble(REASON_OOM_KILLED, _oom(where, pod, name, terminated))
        return PodTrouble(REASON_CONTAINER_FAILED, f"{where} failed: {_termination(terminated)}")
    running = state.get("running") or {}
    if running and container.get("started") and not container.get("ready"):
        started_at = _parse_time(running.get("startedAt"))
        probe = _spec_container(pod, name).get("readinessProbe")
        if probe and started_at is not None and now - started_at >= PROBE_GRACE_SECONDS:
            since = f" (running since {running.get('startedAt')}"
            since += f", restarted {restarts} times)" if restarts else ")"
            return PodTrouble(REASON_PROBE_FAILING, f"{where} is running but fails its "
                              f"readiness probe, {_probe_text(probe)}{since}")
    return None


def probe_recheck_seconds(pod: Mapping[str, Any], now: float) -> float | None:
    """Seconds until a started, not-ready container's readiness probe has failed for
    PROBE_GRACE_SECONDS (nothing in the pod changes while a probe keeps failing, so the
    controller must look again by itself), or None when no container is in that window."""
    if (pod.get("metadata") or {}).get("deletionTimestamp"):
        return None
    waits = []
    for container in (pod.get("status") or {}).get("containerStatuses") or []:
        running = (container.get("state") or {}).get("running") or {}
        started_at = _parse_time(running.get("startedAt"))
        if running and container.get("started") and not container.get("ready") and (
                started_at is not None):
            remaining = started_at + PROBE_GRACE_SECONDS - now
            if remaining > 0:
                waits.append(remaining + 1.0)
    return min(waits) if waits else None


def pod_trouble(pod: Mapping[str, Any], now: float) -> PodTrouble | None:
    """What keeps ``pod`` from running and being ready, or None (fine, or just starting).

    A pod being deleted is nobody's trouble any more. ``now`` is Unix time (how long a
    readiness probe has been failing)."""
    if (pod.get("metadata") or {}).get("deletionTimestamp"):
        return None
    status = pod.get("status") or {}
    for condition in status.get("conditions") or []:
        if (condition.get("type") == "PodScheduled" and condition.get("status") == "False"
                and condition.get("reason") == REASON_UNSCHEDULABLE):
            message = str(condition.get("message") or "no node fits it").strip()
            return PodTrouble(REASON_UNSCHEDULABLE,
                              f"pod {_name(pod)} cannot be scheduled: {message}",
                              is_start_failure=True)
    statuses = list(status.get("initContainerStatuses") or []) + list(
        status.get("containerStatuses") or [])
    for container in statuses:
        trouble = _container_trouble(pod, container, now)
        if trouble is not None:
            return trouble
    if status.get("phase") == "Failed":
        reason = str(status.get("reason") or REASON_POD_FAILED)
        message = str(status.get("message") or "the pod failed").strip()
        return PodTrouble(reason, f"pod {_name(pod)} {reason}: {message}")
    return None


def newest(pods: Sequence[Mapping[str, Any]]) -> Mapping[str, Any] | None:
    """The most recently created pod that is not being deleted."""
    live = [pod for pod in pods if not (pod.get("metadata") or {}).get("deletionTimestamp")]
    if not live:
        return None
    return max(live, key=lambda pod: (
        str((pod.get("metadata") or {}).get("creationTimestamp") or ""), _name(pod)))


def final_progress(pods: Sequence[Mapping[str, Any]], container: str) -> dict[str, Any] | None:
    """The tuning run's last progress snapshot, which the tuning container leaves as its
    termination message (JSON) when it exits: the controller cannot ask a finished pod."""
    for pod in sorted(pods, key=lambda p: str((p.get("metadata") or {}).get(
            "creationTimestamp") or ""), reverse=True):
        for status in (pod.get("status") or {}).get("containerStatuses") or []:
            if status.get("name") != container:
                continue
            terminated = (status.get("state") or {}).get("terminated") or {}
            message = str(terminated.get("message") or "").strip()
            if not message.startswith("{"):
                continue
            try:
                snapshot = json.loads(message)
            except ValueError:
                continue
            if isinstance(snapshot, dict):
                return snapshot
    return None
