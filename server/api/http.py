"""HTTP plumbing shared by the blueprints: content negotiation, bodies, FHIR responses.

Formats (http://hl7.org/fhir/R4/http.html#mime-type): JSON only — ``application/fhir+json``
and ``application/json`` (``_format=json`` too); asking only for XML or Turtle is a 406.
Bodies must be JSON with one of those content types (415 otherwise), at most
``BIGMED_MAX_BODY_BYTES`` (413) and ``BIGMED_MAX_JSON_DEPTH`` levels deep (400).
``Prefer`` (http.html#ops): ``return=minimal|representation|OperationOutcome`` and
``handling=strict|lenient``.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from flask import Response, current_app, request

from server import jsonio
from server.errors import BadRequest, NotAcceptable, UnsupportedMediaType
from server.fhir.context import FhirContext

__all__ = [
    "FHIR_JSON",
    "ctx",
    "fhir_base",
    "fhir_response",
    "if_match",
    "memo_base",
    "memo_media",
    "negotiate",
    "prefer",
    "pretty",
    "query_pairs",
    "read_json_body",
]

FHIR_JSON = "application/fhir+json"
_JSON_TYPES = ("application/fhir+json", "application/json", "application/json+fhir", "text/json")
_PATCH_TYPES = ("application/json-patch+json",)
_FORMAT_ALIASES = {"json": FHIR_JSON, "application/json": "application/json", "application/fhir+json": FHIR_JSON}


def ctx() -> FhirContext:
    context: FhirContext = current_app.extensions["bigmed"]
    return context


#: memo bound: a client sending ever new Host or Accept headers cannot grow it past this
_MEMO_LIMIT = 256
_bases: dict[tuple[Any, ...], str] = {}
_media: dict[tuple[str | None, str | None], str] = {}


def _base_key(environ: Mapping[str, Any]) -> tuple[Any, ...]:
    return (
        environ.get("wsgi.url_scheme"),
        environ.get("HTTP_HOST"),
        environ.get("SERVER_NAME"),
        environ.get("SERVER_PORT"),
    )


def memo_base(configured: str | None, environ: Mapping[str, Any]) -> str | None:
    """The base :func:`fhir_base` gave a request with this Host before (None: not yet seen)."""
    return f"{configured}/fhir" if configured else _bases.get(_base_key(environ))


def fhir_base() -> str:
    """``{scheme}://{host}/fhir`` of the request (or ``BIGMED_BASE_URL``/fhir), remembered per Host."""
    configured = ctx().config.base_url
    base = memo_base(configured, request.environ)
    if base is None:  # werkzeug's host_url (IRI decoding, default ports) costs ~30 µs a request
        base = f"{request.host_url.rstrip('/')}/fhir"
        if len(_bases) < _MEMO_LIMIT:
            _bases[_base_key(request.environ)] = base
    return base


def memo_media(fmt: str | None, accept: str | None) -> str | None:
    """The media type :func:`negotiate` chose for this ``_format`` and Accept before (None: not yet)."""
    return _media.get((fmt, accept))


def negotiate() -> str:
    """The response media type from ``_format`` or ``Accept``; 406 when JSON is not acceptable.

    Remembered per (``_format``, ``Accept``) pair: parsing the Accept header is a large share of
    a cached answer's cost.
    """
    fmt, accept = request.args.get("_format"), request.environ.get("HTTP_ACCEPT")
    chosen = memo_media(fmt, accept)
    if chosen is None:
        chosen = _negotiate(fmt)
        if len(_media) < _MEMO_LIMIT:
            _media[(fmt, accept)] = chosen
    return chosen


def _negotiate(fmt: str | None) -> str:
    if fmt:
        chosen = _FORMAT_ALIASES.get(fmt.split(";")[0].strip().lower())
        if chosen is None:
            raise NotAcceptable(f"_format '{fmt}' is not supported: this server speaks JSON (use _format=json)")
        return chosen
    accept = request.accept_mimetypes
    if not accept.provided:
        return FHIR_JSON
    best = accept.best_match([FHIR_JSON, "application/json", "text/html"])
    if best is None:
        raise NotAcceptable(
            f"Cannot answer in '{request.headers.get('Accept')}': this server speaks application/fhir+json"
        )
    return "application/json" if best == "application/json" else FHIR_JSON


def _depth_ok(obj: Any, limit: int) -> bool:
    stack: list[tuple[Any, int]] = [(obj, 1)]
    while stack:
        node, depth = stack.pop()
        if depth > limit:
            return False
        if isinstance(node, dict):
            stack.extend((v, depth + 1) for v in node.values() if isinstance(v, dict | list))
        elif isinstance(node, list):
            stack.extend((v, depth + 1) for v in node if isinstance(v, dict | list))
    return True


def read_json_body(patch: bool = False) -> Any:
    """The request body parsed as JSON, after content-type, size and depth checks."""
    mimetype = (request.mimetype or "").lower()
    allowed = _PATCH_TYPES if patch else _JSON_TYPES
    if mimetype not in allowed:
        what = "a JSON Patch (application/json-patch+json)" if patch else "FHIR JSON (application/fhir+json)"
        got = request.content_type or "no Content-Type"
        raise UnsupportedMediaType(f"Expected {what}, got {got}")
    data = request.get_data(cache=False)  # raises 413 past MAX_CONTENT_LENGTH
    if not data.strip():
        raise BadRequest("The request body is empty")
    try:
        body = jsonio.loads(data)
    except UnicodeDecodeError as exc:
        raise BadRequest(f"The body is not UTF-8: {exc.reason} at byte {exc.start}") from exc
    except jsonio.JSONDecodeError as exc:
        raise BadRequest(f"The body is not valid JSON: {exc.msg} at line {exc.lineno} column {exc.colno}") from exc
    except RecursionError as exc:
        raise BadRequest("The body nests too deeply") from exc
    if not _depth_ok(body, ctx().config.max_json_depth):
        raise BadRequest(f"The body nests deeper than {ctx().config.max_json_depth} levels")
    return body


def prefer(name: str) -> str | None:
    """A value of the Prefer header (``return``, ``handling``, ``respond-async``)."""
    for part in request.headers.get("Prefer", "").split(","):
        key, _, value = part.strip().partition("=")
        if key.strip().lower() == name:
            return value.strip().strip('"') or "true"
    return None


def pretty() -> bool:
    return request.args.get("_pretty", "").lower() == "true"


def query_pairs() -> list[tuple[str, str]]:
    """Query parameters (and form fields of a POST _search) in order, repeated ones kept."""
    pairs = list(request.args.items(multi=True))
    if request.method == "POST" and request.mimetype == "application/x-www-form-urlencoded":
        pairs.extend(request.form.items(multi=True))
    return pairs


def if_match() -> int | None:
    """The version in an ``If-Match: W/"3"`` header, if any."""
    raw = request.headers.get("If-Match")
    if raw is None:
        return None
    value = raw.strip()
    if value.startswith("W/"):
        value = value[2:]
    value = value.strip('"')
    if not value.isdigit():
        raise BadRequest(f"If-Match must carry a version ETag like W/\"3\", not '{raw}'")
    return int(value)


def fhir_response(
    body: Any, status: int = 200, headers: dict[str, str] | None = None, media: str | None = None
) -> Response:
    """Serialise a resource dict (or pre-serialised JSON bytes) as a FHIR JSON response."""
    if isinstance(body, bytes):
        payload = jsonio.dumps(jsonio.loads(body), pretty=True) if pretty() else body
    elif body is None:
        payload = b""
    elif pretty():  # re-read so embedded stored resources (orjson fragments) are indented too
        payload = jsonio.dumps(jsonio.loads(jsonio.dumps(body)), pretty=True)
    else:
        payload = jsonio.dumps(body)
    resp = Response(payload, status=status, headers=headers)
    if body is not None:
        resp.content_type = f"{media or FHIR_JSON}; charset=utf-8"
    return resp
