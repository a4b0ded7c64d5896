"""AdmissionReview (admission.k8s.io/v1) in and out: parsing at the boundary, replies built here.

A body that is not a v1 AdmissionReview with a request, a uid and an object is malformed
(the handler answers HTTP 400). A well-formed review whose object is not a valid Workspace
is answered with a denial naming the bad fields.
"""

from __future__ import annotations

import base64
import json
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

API_VERSION = "admission.k8s.io/v1"
KIND = "AdmissionReview"


class MalformedReview(ValueError):
    """The body is not an AdmissionReview this server can answer (HTTP 400)."""

    def __init__(self, message: str, uid: str | None = None) -> None:
        super().__init__(message)
        self.uid = uid


class AdmissionRequest(BaseModel):
    """The part of an AdmissionRequest the webhook reads."""

    model_config = ConfigDict(extra="ignore", populate_by_name=True)

    uid: str = Field(min_length=1)
    operation: Literal["CREATE", "UPDATE", "DELETE", "CONNECT"]
    namespace: str | None = None
    name: str | None = None
    object: dict[str, Any] | None = None
    old_object: dict[str, Any] | None = Field(default=None, alias="oldObject")
    dry_run: bool | None = Field(default=None, alias="dryRun")
    sub_resource: str | None = Field(default=None, alias="subResource")


class AdmissionReview(BaseModel):
    """An AdmissionReview request envelope."""

    model_config = ConfigDict(extra="ignore", populate_by_name=True)

    api_version: Literal["admission.k8s.io/v1"] = Field(alias="apiVersion")
    kind: Literal["AdmissionReview"]
    request: AdmissionRequest


def _uid_of(document: object) -> str | None:
    if isinstance(document, dict):
        request = document.get("request")
        if isinstance(request, dict) and isinstance(request.get("uid"), str):
            return str(request["uid"])
    return None


def parse_review(body: bytes) -> AdmissionReview:
    """The review in the body, or MalformedReview (with the uid when one was readable)."""
    try:
        # pydantic's own JSON parser: about half the time of json.loads + model_validate.
        review = AdmissionReview.model_validate_json(body)
    except ValueError:
        review = _parse_slowly(body)  # says why, in the words json and pydantic use
    return _checked(review)


def _parse_slowly(body: bytes) -> AdmissionReview:
    try:
        document = json.loads(body)
    except (ValueError, UnicodeDecodeError, RecursionError) as error:
        raise MalformedReview(f"body is not JSON: {error.__class__.__name__}") from None
    uid = _uid_of(document)
    try:
        review = AdmissionReview.model_validate(document)
    except ValidationError as error:
        first = error.errors()[0]
        where = ".".join(str(part) for part in first["loc"]) or "<root>"
        raise MalformedReview(f"not an admission.k8s.io/v1 AdmissionReview: {where}: "
                              f"{first['msg']}", uid) from None
    return review


def _checked(review: AdmissionReview) -> AdmissionReview:
    request = review.request
    if request.operation in ("CREATE", "UPDATE") and request.object is None:
        raise MalformedReview("request.object is required for CREATE and UPDATE", request.uid)
    if request.operation == "UPDATE" and request.old_object is None:
        raise MalformedReview("request.oldObject is required for UPDATE", request.uid)
    return review


def allowed(
    uid: str, *, patch: list[dict[str, Any]] | None = None, warnings: list[str] | None = None
) -> dict[str, Any]:
    """An admitting reply, optionally with a JSONPatch and warnings."""
    response: dict[str, Any] = {"uid": uid, "allowed": True}
    if patch:
        response["patchType"] = "JSONPatch"
        response["patch"] = base64.b64encode(json.dumps(patch).encode()).decode()
    if warnings:
        response["warnings"] = warnings
    return _envelope(response)


def denied(uid: str, message: str, *, code: int = 422, reason: str = "Invalid",
           warnings: list[str] | None = None) -> dict[str, Any]:
    """A denial: HTTP 200 carrying allowed=false, a 4xx status code and the message."""
    response: dict[str, Any] = {
        "uid": uid,
        "allowed": False,
        "status": {"code": code, "reason": reason, "message": message},
    }
    if warnings:
        response["warnings"] = warnings
    return _envelope(response)


def _envelope(response: dict[str, Any]) -> dict[str, Any]:
    return {"apiVersion": API_VERSION, "kind": KIND, "response": response}
