"""Tuning progress in the workspace's status, read from the tuning pod's ``/progress``.

The pod serves its progress (runtime/progress.py) and has no API credentials; the
controller pulls it at most once per ``interval`` per workspace and writes status only
when what a user sees changed, so a thousand running jobs make a bounded number of
writes. ``progress_status`` is pure; ``ProgressReader`` is the HTTP edge.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Mapping
from typing import Any

import aiohttp

log = logging.getLogger(__name__)


def _evaluation(snapshot: Mapping[str, Any], when: str) -> dict[str, float] | None:
    value = (snapshot.get("evaluation") or {}).get(when)
    if not isinstance(value, dict):
        return None
    return {key: float(value[key]) for key in ("loss", "perplexity") if key in value}


def progress_status(snapshot: Mapping[str, Any], now: float) -> dict[str, Any]:
    """The ``status.tuning`` object (camelCase) from a runtime progress snapshot.

    Numbers a user reads are rounded (loss to 3 places, tokens/s to whole tokens), so
    the status only changes when something visible does.
    """
    step, total = snapshot.get("step"), snapshot.get("total_steps")
    loss, rate, eta = snapshot.get("loss"), snapshot.get("tokens_per_second"), snapshot.get(
        "eta_seconds")
    status: dict[str, Any] = {
        "phase": snapshot.get("phase"),
        "step": step,
        "totalSteps": total,
        "progress": f"{step}/{total}" if total else None,
        "loss": f"{float(loss):.3f}" if isinstance(loss, int | float) else None,
        "tokensPerSecond": f"{float(rate):.0f}" if isinstance(rate, int | float) else None,
        "etaSeconds": int(eta) if isinstance(eta, int | float) else None,
        "dtype": (snapshot.get("precision") or {}).get("dtype"),
        "evaluationBefore": _evaluation(snapshot, "before"),
        "evaluationAfter": _evaluation(snapshot, "after"),
        "updatedAt": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(now)),
    }
    return {key: value for key, value in status.items() if value is not None}


def same_progress(old: Mapping[str, Any] | None, new: Mapping[str, Any]) -> bool:
    """Whether two ``status.tuning`` objects differ only in ``updatedAt``."""
    if old is None:
        return False
    strip = {"updatedAt"}
    return {k: v for k, v in old.items() if k not in strip} == {
        k: v for k, v in new.items() if k not in strip}


class ProgressReader:
    """GETs ``http://<pod IP>:<port>/progress`` with a short timeout."""

    def __init__(self, port: int, timeout_seconds: float = 3.0) -> None:
        self._port = port
        self._timeout = aiohttp.ClientTimeout(total=timeout_seconds)
        self._session: aiohttp.ClientSession | None = None

    async def read(self, pod: Mapping[str, Any]) -> dict[str, Any] | None:
        """The pod's progress, or None when it has no IP or does not answer."""
        ip = (pod.get("status") or {}).get("podIP")
        if not ip:
            return None
        if self._session is None:
            self._session = aiohttp.ClientSession(timeout=self._timeout)
        host = f"[{ip}]" if ":" in str(ip) else str(ip)
        try:
            async with self._session.get(f"http://{host}:{self._port}/progress") as response:
                if response.status != 200:
                    return None
                body = await response.json()
                return body if isinstance(body, dict) else None
        except (TimeoutError, aiohttp.ClientError, ValueError) as error:
            log.debug("progress not readable", extra={"pod_ip": ip, "error": str(error)})
            return None

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None
