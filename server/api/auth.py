"""Authorization over HTTP: the token endpoint, SMART discovery and the per-request guard.

* ``POST /auth/token`` — SMART Backend Services client_credentials with a private_key_jwt
  assertion (https://hl7.org/fhir/smart-app-launch/backend-services.html); answers are OAuth 2
  JSON (``{"error": …, "error_description": …}``, RFC 6749 §5.2), not OperationOutcomes, as
  OAuth clients expect. ``GET /auth/jwks`` — the public key that signs access tokens.
* ``GET /fhir/.well-known/smart-configuration`` — SMART discovery
  (https://hl7.org/fhir/smart-app-launch/conformance.html#using-well-known); readable without a
  token, like ``/fhir/metadata``.
* The guard (:func:`init_app`): before every request under a protected prefix, the bearer token
  is checked (``BIGMED_AUTH=smart``: missing or invalid -> 401 with ``WWW-Authenticate: Bearer``;
  ``open``: the anonymous, unrestricted :data:`~server.auth.access.ANONYMOUS`), the request is
  counted against the client's rate limit (429 + ``Retry-After``), and the resulting
  :class:`~server.auth.access.Access` is made current for the domain code, which enforces scopes
  and compartments (:mod:`server.auth.access`). After every request: security headers and CORS
  (``BIGMED_CORS_ORIGINS`` allow-list). Tokens are never logged: nothing here logs a header.
"""

from __future__ import annotations

from dataclasses import replace
from typing import Any

from flask import Blueprint, Flask, Response, current_app, g, jsonify, request

from server.api.http import ctx, fhir_base
from server.auth.access import ANONYMOUS, Access, require, reset_access, set_access
from server.auth.jose import JwtError
from server.auth.ratelimit import RateLimiter
from server.auth.token import ASSERTION_TYPE, OAuthError, TokenService
from server.errors import Forbidden, NotFound, TooManyRequests, Unauthorized

__all__ = [
    "ACCESS_ENVIRON",
    "PROTECTED_PREFIXES",
    "PUBLIC_PATHS",
    "authenticate",
    "bp",
    "init_app",
    "rate_limited",
    "security_headers",
    "token_service",
]

bp = Blueprint("auth", __name__)

#: paths whose requests need a token in smart mode (and are audited)
PROTECTED_PREFIXES = ("/fhir", "/hl7v2")
#: readable without a token in every mode
PUBLIC_PATHS = frozenset({"/fhir/metadata", "/fhir/.well-known/smart-configuration"})

_SECURITY_HEADERS = {
    "X-Content-Type-Options": "nosniff",
    "X-Frame-Options": "DENY",
    "Referrer-Policy": "no-referrer",
    "Content-Security-Policy": "default-src 'none'; frame-ancestors 'none'",
    "Cache-Control": "no-store",
}
_SECURITY_LIST = [(name.lower(), name, value) for name, value in _SECURITY_HEADERS.items()]


def token_service() -> TokenService:
    service: TokenService = current_app.extensions["bigmed_auth"]
    return service


def _root() -> str:
    return fhir_base().removesuffix("/fhir")


def _oauth_error(err: OAuthError) -> Response:
    resp = jsonify(err.body())
    resp.status_code = err.status
    resp.headers["Cache-Control"] = "no-store"
    if err.status == 401:
        resp.headers["WWW-Authenticate"] = 'Bearer realm="bigmed"'
    return resp


@bp.post("/auth/token")
def token() -> Response:
    if request.mimetype != "application/x-www-form-urlencoded":
        return _oauth_error(
            OAuthError("invalid_request", "send the token request as application/x-www-form-urlencoded")
        )
    try:
        answer = token_service().issue(request.form.to_dict(), f"{_root()}/auth/token", fhir_base())
    except OAuthError as err:
        return _oauth_error(err)
    resp = jsonify(answer)
    resp.headers["Cache-Control"] = "no-store"
    resp.headers["Pragma"] = "no-cache"
    return resp


@bp.get("/auth/jwks")
def jwks() -> Response:
    return jsonify(token_service().key.jwks)


def smart_configuration_document(root: str) -> dict[str, Any]:
    return {
        "issuer": f"{root}/auth",
        "token_endpoint": f"{root}/auth/token",
        "jwks_uri": f"{root}/auth/jwks",
        "grant_types_supported": ["client_credentials"],
        "token_endpoint_auth_methods_supported": ["private_key_jwt"],
        "token_endpoint_auth_signing_alg_values_supported": ["RS384", "ES384"],
        "client_assertion_types_supported": [ASSERTION_TYPE],
        "scopes_supported": [
            "system/*.rs",
            "system/*.cruds",
            "system/*.read",
            "system/*.write",
            "system/AuditEvent.rs",
        ],
        "capabilities": ["client-confidential-asymmetric", "permission-v1", "permission-v2"],
    }


@bp.get("/fhir/.well-known/smart-configuration")
def smart_configuration() -> Response:
    return jsonify(smart_configuration_document(_root()))


# -- the guard -------------------------------------------------------------------------------


def _protected(path: str) -> bool:
    return path.startswith(PROTECTED_PREFIXES) and path not in PUBLIC_PATHS


def _bearer(header: str | None) -> str | None:
    scheme, _, value = (header or "").partition(" ")
    return value.strip() if scheme.lower() == "bearer" and value.strip() else None


def _challenge(message: str, error: str | None = None) -> Unauthorized:
    params = 'realm="bigmed"' + (f', error="{error}"' if error else "")
    return Unauthorized(message, headers={"WWW-Authenticate": f"Bearer {params}"})


def authenticate(app: Flask, authorization: str | None, base: str, address: str | None) -> Access:
    """The Access of a request to a protected path (its ``Authorization`` header, the FHIR base it
    was sent to, its source address); 401 (:class:`Unauthorized`) when it has none or a bad one.
    Shared by the guard and the cache front (``server/api/cache_front.py``)."""
    if app.extensions["bigmed"].config.auth == "open":
        return replace(ANONYMOUS, address=address)
    token = _bearer(authorization)
    if token is None:
        raise _challenge("This request needs an access token: Authorization: Bearer <token> (see /auth/token)")
    try:
        service: TokenService = app.extensions["bigmed_auth"]
        return replace(service.authenticate(token, base), address=address)
    except JwtError as exc:
        raise _challenge(f"The access token is not valid: {exc}", "invalid_token") from None


def rate_limited(app: Flask, access: Access) -> int | None:
    """Count the request against its client's limit: seconds to wait when the limit is reached."""
    if not access.authenticated:
        return None  # the limit is per client: the open sandbox has none (bench/ runs thousands of req/s)
    limiter: RateLimiter = app.extensions["bigmed_ratelimit"]
    return limiter.hit(access.client_id)


#: environ key where the cache front leaves the Access it authenticated for a request it then
#: passed on (a miss): the guard uses it instead of checking the token again
ACCESS_ENVIRON = "bigmed.access"


def _before() -> None:
    if request.method == "OPTIONS" or not _protected(request.path):
        return
    app = current_app._get_current_object()  # type: ignore[attr-defined]
    env = request.environ
    access = env.get(ACCESS_ENVIRON) or authenticate(
        app, env.get("HTTP_AUTHORIZATION"), fhir_base(), request.remote_addr
    )
    g.bigmed_access = access
    g.bigmed_access_token = set_access(access)
    _check_route(access)
    retry = rate_limited(app, access)
    if retry is not None:
        limit = app.extensions["bigmed_ratelimit"].limit
        raise TooManyRequests(
            f"Rate limit of {limit} requests per minute reached; retry in {retry} s",
            headers={"Retry-After": str(retry)},
        )


# -- route-level rules for operations that do not go through the checked interactions -----------

#: endpoints whose domain functions check scopes and compartments themselves (server/fhir/guard.py)
_DOMAIN_CHECKED = frozenset(
    {
        *(
            f"fhir.{name}"
            for name in [
                "metadata",
                "read",
                "vread",
                "history_instance",
                "history_type",
                "history_system",
                "search_type",
                "search_type_post",
                "search_all",
                "search_in_compartment",
                "create",
                "update",
                "patch",
                "delete",
                "conditional_update",
                "conditional_patch",
                "conditional_delete",
                "transaction",
                "unknown",
            ]
        ),
        "audit.search",
        "audit.read",
        "audit.forbid_type",
        "audit.forbid_instance",
    }
)
_VCF_TYPES = ("Observation", "MolecularSequence", "DiagnosticReport")
_EHR_TYPES = ("Patient", "Encounter", "Observation", "Condition", "Practitioner", "Organization")


def _own_patient(access: Access, patient_id: str | None) -> None:
    """A patient-level client names only its own patient (others: 404, existence never leaks)."""
    if access.patient is not None and patient_id != access.patient:
        raise NotFound(f"Patient/{patient_id} is not known")


def _not_patient_level(access: Access, what: str) -> None:
    if access.patient is not None:
        raise Forbidden(f"{what} covers many patients: not available to a patient-level client")


def _needs(access: Access, types: Any, permission: str) -> None:
    for t in types:
        require(t, permission, access)


def _requested_types(default: str = "*") -> list[str]:
    raw = request.args.get("_type") or (request.form.get("_type") if request.mimetype.endswith("urlencoded") else None)
    return [t.strip() for t in (raw or default).split(",") if t.strip()]


def _check_route(access: Access) -> None:
    """Scopes of the operations that bypass the checked interactions; unknown endpoints are refused."""
    endpoint = request.endpoint or ""
    if access.unrestricted or endpoint in _DOMAIN_CHECKED:
        return
    args = request.view_args or {}
    if endpoint == "fhir.ingest_vcf":
        _own_patient(access, args.get("id_"))
        _needs(access, _VCF_TYPES, "cu")
        _needs(access, ("Task",), "c")
    elif endpoint == "fhir.ingest_vcf_status":
        _needs(access, ("Task", "DiagnosticReport"), "r")
    elif endpoint == "fhir.call_pgx":
        _own_patient(access, args.get("id_"))
        _needs(access, ("Observation",), "rs")
    elif endpoint == "fhir.patient_everything":
        _needs(access, ("Patient",), "r")
        if "id_" in args:
            _own_patient(access, args["id_"])
        else:
            _not_patient_level(access, "Patient/$everything without an id")
    elif endpoint.startswith("fhir.genomics_"):
        _needs(access, ("Observation",), "s")
        if "population" in endpoint:
            _not_patient_level(access, "A population operation")
        elif access.patient is not None:
            if request.method != "GET":
                raise Forbidden("A patient-level client calls genomics operations with GET and a subject parameter")
            _own_patient(access, (request.args.get("subject") or "").removeprefix("Patient/"))
    elif endpoint in ("fhir.rare_prioritize-variants", "fhir.rare_similar"):
        # both read other patients' records (parents; the whole cohort): not for a patient-level client
        _not_patient_level(access, f"Patient/${endpoint.removeprefix('fhir.rare_')}")
        _needs(access, ("Patient",), "r")
        _needs(access, ("Observation", "Condition"), "rs")
    elif endpoint in ("bulk.export_system", "bulk.export_patients", "bulk.export_group"):
        _not_patient_level(access, "Bulk export")
        _needs(access, _requested_types(), "rs")
    elif endpoint in ("bulk.export_status", "bulk.export_file", "bulk.export_cancel"):
        _not_patient_level(access, "Bulk export")  # requiresAccessToken: the token was checked above
    elif endpoint == "hl7v2.quarantine":
        _not_patient_level(access, "The EHR quarantine")
        _needs(access, ("*",), "r")
    elif endpoint == "hl7v2.receive":
        _not_patient_level(access, "HL7 v2 ingest")
        _needs(access, _EHR_TYPES, "cu")
    else:
        raise Forbidden(f"{request.path} is not yet open to scoped clients (ask for an unrestricted registration)")


def _teardown(_: BaseException | None) -> None:
    token = g.pop("bigmed_access_token", None)
    if token is not None:
        reset_access(token)


def _cors(resp: Response, origin: str) -> None:
    allowed = ctx().config.cors_origins
    if not allowed or (origin.rstrip("/") not in allowed and "*" not in allowed):
        return
    resp.headers["Access-Control-Allow-Origin"] = origin
    resp.headers["Vary"] = "Origin"
    resp.headers["Access-Control-Expose-Headers"] = "Location, ETag, Content-Location, Retry-After, X-Cache"
    if request.method == "OPTIONS":
        resp.headers["Access-Control-Allow-Methods"] = "GET, POST, PUT, PATCH, DELETE, OPTIONS"
        resp.headers["Access-Control-Allow-Headers"] = (
            "Authorization, Content-Type, Accept, Prefer, If-Match, If-None-Match, If-None-Exist"
        )
        resp.headers["Access-Control-Max-Age"] = "600"


def security_headers(present: set[str], path: str, auth: str) -> list[tuple[str, str]]:
    """The security headers an answer to ``path`` lacks (``present``: the lower-cased names it has;
    ``auth``: the auth mode — ``Cache-Control: no-store`` goes on protected answers in smart mode)."""
    return [
        (name, value)
        for low, name, value in _SECURITY_LIST
        if low not in present and (low != "cache-control" or (auth == "smart" and _protected(path)))
    ]


def _after(resp: Response) -> Response:
    present = {name.lower() for name, _ in resp.headers.items()}  # setdefault() raises inside per miss
    resp.headers.extend(security_headers(present, request.path, ctx().config.auth))
    origin = request.environ.get("HTTP_ORIGIN")
    if origin:
        _cors(resp, origin)
    return resp


def init_app(app: Flask) -> None:
    """Attach the token service, the rate limiter and the guard to ``app``."""
    context = app.extensions["bigmed"]
    app.extensions["bigmed_auth"] = TokenService.create(context.store, context.config)
    app.extensions["bigmed_ratelimit"] = RateLimiter(context.config.rate_limit, context.config.redis_url)
    app.before_request(_before)
    app.after_request(_after)
    app.teardown_request(_teardown)
    app.register_blueprint(bp)
