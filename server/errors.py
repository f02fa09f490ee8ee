"""Typed errors and their one mapping to OperationOutcome + HTTP status.

Domain code raises a :class:`FhirError` subclass; :func:`init_app` installs the single handler
that turns it (and Werkzeug's HTTP errors, and anything unexpected) into an OperationOutcome
body (http://hl7.org/fhir/R4/operationoutcome.html) with the status from ``CATEGORIES``.
No endpoint maps exceptions itself, and no stack trace or SQL ever reaches a client.
"""

from __future__ import annotations

import logging
import uuid
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any, ClassVar

from flask import Response
from werkzeug.exceptions import HTTPException

from server import jsonio

__all__ = [
    "CATEGORIES",
    "BadRequest",
    "Conflict",
    "FhirError",
    "Forbidden",
    "Gone",
    "Invalid",
    "Issue",
    "MethodNotAllowed",
    "NotAcceptable",
    "NotFound",
    "NotSupported",
    "PayloadTooLarge",
    "PreconditionFailed",
    "TooManyRequests",
    "Unauthorized",
    "Unavailable",
    "UnsupportedMediaType",
    "error_for_status",
    "init_app",
    "operation_outcome",
]

log = logging.getLogger(__name__)

#: category -> (OperationOutcome issue code, HTTP status). The one table.
CATEGORIES: Mapping[str, tuple[str, int]] = {
    "invalid": ("invalid", 400),
    "unprocessable": ("processing", 422),
    "unauthorized": ("login", 401),
    "forbidden": ("forbidden", 403),
    "not-found": ("not-found", 404),
    "method-not-allowed": ("not-supported", 405),
    "not-acceptable": ("not-supported", 406),
    "conflict": ("conflict", 409),
    "gone": ("deleted", 410),
    "precondition-failed": ("conflict", 412),
    "too-large": ("too-costly", 413),
    "unsupported-media-type": ("not-supported", 415),
    "too-many-requests": ("throttled", 429),
    "internal": ("exception", 500),
    "not-supported": ("not-supported", 501),
    "unavailable": ("transient", 503),
}

#: HTTP status -> category, for errors raised by Werkzeug (unknown route, wrong method …).
_STATUS_CATEGORY = {status: cat for cat, (_, status) in CATEGORIES.items()}


@dataclass(frozen=True)
class Issue:
    """One OperationOutcome.issue."""

    diagnostics: str
    severity: str = "error"
    code: str | None = None
    expression: tuple[str, ...] = ()

    def to_fhir(self, default_code: str) -> dict[str, Any]:
        out: dict[str, Any] = {
            "severity": self.severity,
            "code": self.code or default_code,
            "diagnostics": self.diagnostics,
        }
        if self.expression:
            out["expression"] = list(self.expression)
        return out


class FhirError(Exception):
    """Base of every error a client may see. ``category`` selects code and status."""

    category: ClassVar[str] = "internal"

    def __init__(
        self,
        message: str,
        issues: Iterable[Issue] | None = None,
        headers: Mapping[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.issues: list[Issue] = list(issues) if issues else [Issue(message)]
        self.headers: dict[str, str] = dict(headers or {})

    @property
    def status(self) -> int:
        return CATEGORIES[self.category][1]

    @property
    def issue_code(self) -> str:
        return CATEGORIES[self.category][0]

    def outcome(self) -> dict[str, Any]:
        return operation_outcome(self.issues, self.issue_code)


class BadRequest(FhirError):
    category = "invalid"


class Invalid(FhirError):
    """Well-formed but not a valid resource (422, one issue per problem)."""

    category = "unprocessable"


class NotFound(FhirError):
    category = "not-found"


class Gone(FhirError):
    category = "gone"


class Conflict(FhirError):
    category = "conflict"


class PreconditionFailed(FhirError):
    category = "precondition-failed"


class UnsupportedMediaType(FhirError):
    category = "unsupported-media-type"


class NotAcceptable(FhirError):
    category = "not-acceptable"


class PayloadTooLarge(FhirError):
    category = "too-large"


class MethodNotAllowed(FhirError):
    category = "method-not-allowed"


class NotSupported(FhirError):
    category = "not-supported"


class Unauthorized(FhirError):
    category = "unauthorized"


class Forbidden(FhirError):
    category = "forbidden"


class TooManyRequests(FhirError):
    category = "too-many-requests"


class Unavailable(FhirError):
    """503: the server cannot serve the request now (e.g. the audit trail cannot be written)."""

    category = "unavailable"


def operation_outcome(issues: Iterable[Issue], default_code: str = "processing") -> dict[str, Any]:
    """Build an OperationOutcome resource dict from issues."""
    return {
        "resourceType": "OperationOutcome",
        "issue": [i.to_fhir(default_code) for i in issues],
    }


def error_for_status(status: int, message: str) -> FhirError:
    """A FhirError for a bare HTTP status (used for Werkzeug's own errors)."""
    category = _STATUS_CATEGORY.get(status, "internal" if status >= 500 else "invalid")
    classes = {cls.category: cls for cls in FhirError.__subclasses__()}
    return classes.get(category, FhirError)(message)


def _response(err: FhirError) -> Response:
    return Response(
        jsonio.dumps(err.outcome()),
        status=err.status,
        headers=err.headers,
        content_type="application/fhir+json; charset=utf-8",
    )


def init_app(app: Any) -> None:
    """Install the one error handler: every 4xx/5xx body is an OperationOutcome."""

    @app.errorhandler(FhirError)
    def _fhir(err: FhirError) -> Any:
        return _response(err)

    @app.errorhandler(HTTPException)
    def _http(exc: HTTPException) -> Any:
        status = exc.code or 500
        message = {
            404: "Not found: no such endpoint",
            405: "Method not allowed on this endpoint",
            413: "The request body is larger than this server accepts (BIGMED_MAX_BODY_BYTES)",
        }.get(status, exc.description or exc.name)
        err = error_for_status(status, message)
        allow = exc.get_headers() and dict(exc.get_headers()).get("Allow")
        if allow:
            err.headers["Allow"] = allow
        return _response(err)

    @app.errorhandler(Exception)
    def _unexpected(exc: Exception) -> Any:
        ref = uuid.uuid4().hex[:12]
        log.exception("unhandled error (reference %s)", ref)
        return _response(FhirError(f"Internal server error (reference {ref}); the details are in the server log"))
