"""The one error tree for Kubernetes API failures.

Only the client wrapper turns HTTP statuses and transport failures into these classes;
everything above it catches `NotFound`, `Conflict`, `Gone`... and never looks at a status
code. The mapping is pure so it is tested without a server.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any


class KubeError(Exception):
    """Any failure talking to the Kubernetes API."""

    status_code: int = 0

    def __init__(
        self,
        message: str,
        *,
        status_code: int | None = None,
        reason: str = "",
        details: Mapping[str, Any] | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        if status_code is not None:
            self.status_code = status_code
        self.reason = reason
        self.details: Mapping[str, Any] = details or {}


class ApiUnavailable(KubeError):
    """The API server could not be reached, or the connection broke mid-request."""


class BadRequest(KubeError):
    status_code = 400


class Unauthorized(KubeError):
    status_code = 401


class Forbidden(KubeError):
    status_code = 403


class NotFound(KubeError):
    status_code = 404


class Conflict(KubeError):
    """409 from an update with a stale resourceVersion."""

    status_code = 409


class AlreadyExists(Conflict):
    """409 from a create whose name is taken (reason AlreadyExists)."""


class Gone(KubeError):
    """410: the requested resourceVersion is too old (compacted); relist."""

    status_code = 410


class Invalid(KubeError):
    """422: the object failed validation."""

    status_code = 422


class TooManyRequests(KubeError):
    """429, carrying the server's Retry-After."""

    status_code = 429

    def __init__(self, message: str, *, retry_after_seconds: float, **kwargs: Any) -> None:
        super().__init__(message, **kwargs)
        self.retry_after_seconds = retry_after_seconds


class ServerError(KubeError):
    """5xx other than the ones above."""


_BY_STATUS: dict[int, type[KubeError]] = {
    400: BadRequest,
    401: Unauthorized,
    403: Forbidden,
    404: NotFound,
    409: Conflict,
    410: Gone,
    422: Invalid,
}

DEFAULT_RETRY_AFTER_SECONDS = 1.0


def parse_retry_after(value: str | None, default: float = DEFAULT_RETRY_AFTER_SECONDS) -> float:
    """Seconds from a Retry-After header (integer seconds form; dates fall back to default)."""
    if value is None:
        return default
    try:
        seconds = float(value.strip())
    except ValueError:
        return default
    return seconds if seconds >= 0 else default


def _parse_status_body(body: bytes | str | None) -> dict[str, Any]:
    if not body:
        return {}
    try:
        parsed = json.loads(body)
    except (ValueError, UnicodeDecodeError):
        return {}
    return parsed if isinstance(parsed, dict) else {}


def error_from_response(
    status_code: int, body: bytes | str | None, headers: Mapping[str, str] | None = None
) -> KubeError:
    """Map an HTTP error response (a `metav1.Status` body, usually) to our error tree."""
    status = _parse_status_body(body)
    message = str(status.get("message") or f"HTTP {status_code}")
    reason = str(status.get("reason") or "")
    details = status.get("details") if isinstance(status.get("details"), dict) else None
    if status_code == 429:
        retry_after = parse_retry_after((headers or {}).get("Retry-After"))
        return TooManyRequests(
            message,
            retry_after_seconds=retry_after,
            status_code=429,
            reason=reason,
            details=details,
        )
    if status_code == 409 and reason == "AlreadyExists":
        return AlreadyExists(message, status_code=409, reason=reason, details=details)
    cls = _BY_STATUS.get(status_code)
    if cls is None:
        cls = ServerError if status_code >= 500 else KubeError
    return cls(message, status_code=status_code, reason=reason, details=details)


def error_from_status_object(status: Mapping[str, Any]) -> KubeError:
    """Map a watch `ERROR` event's Status object (e.g. code 410 Expired) to our tree."""
    code = status.get("code")
    code_int = int(code) if isinstance(code, int | str) and str(code).isdigit() else 500
    return error_from_response(code_int, json.dumps(dict(status)))
