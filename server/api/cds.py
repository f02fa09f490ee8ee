"""CDS Hooks 2.0 over HTTP at ``/cds-services`` (https://cds-hooks.hl7.org/2.0/).

Routes only: ``GET /cds-services`` (discovery), ``POST /cds-services/{id}`` (a hook call),
``POST /cds-services/{id}/feedback`` and ``GET /cds-services/{id}/feedback?card=`` (stored
feedback). Before each request the CDS client's JWT is verified (:mod:`server.cds.jwt`; CORS
preflights excepted); after each, CORS headers for browser clients (any origin with
``BIGMED_AUTH=open`` — the public sandbox runs in a browser —, else ``BIGMED_CORS_ORIGINS``).
Every service call is audited (:func:`_audit`, :mod:`server.api.audit`), fail closed like /fhir.
The work is in :mod:`server.cds`.
"""

from __future__ import annotations

from collections.abc import Mapping

from flask import Blueprint, Flask, Response, current_app, g, jsonify, request

from server import audit
from server.api import audit as audit_api
from server.api.auth import token_service
from server.api.http import ctx, fhir_base, read_json_body
from server.auth.access import Access
from server.auth.jose import JwtError
from server.cds import feedback, hooks, registry
from server.cds.jwt import CdsClientVerifier
from server.errors import Unauthorized

__all__ = ["bp", "init_app"]

bp = Blueprint("cds", __name__, url_prefix="/cds-services")


def init_app(app: Flask) -> None:
    """Register the blueprint and the app's CDS client JWT verifier."""
    app.extensions["bigmed_cds_verifier"] = CdsClientVerifier(app.extensions["bigmed"].config)
    app.register_blueprint(bp)


def _root() -> str:
    return fhir_base().removesuffix("/fhir")


def _audiences() -> list[str]:
    """The URL called, as ``aud`` must name it (with and without a trailing slash)."""
    urls = {request.base_url, _root() + request.path}
    return sorted({u.rstrip("/") for u in urls} | {u.rstrip("/") + "/" for u in urls})


@bp.before_request
def _verify_client() -> None:
    if request.method == "OPTIONS":
        return
    verifier: CdsClientVerifier = current_app.extensions["bigmed_cds_verifier"]
    g.bigmed_cds_claims = verifier.verify(request.headers.get("Authorization"), _audiences()) or {}
    if request.endpoint == "cds.call":
        audit_api.ensure_writable()  # fail closed: no service call while its record could not be kept


#: entity systems of a CDS call's AuditEvent (the service called, the hook instance)
CDS_SERVICE = "urn:bigmed:cds-service"
CDS_HOOK_INSTANCE = "urn:bigmed:cds-hook-instance"


@bp.after_request
def _audit(resp: Response) -> Response:
    """The AuditEvent of a service call (issue 9: "CDS service call"): agent the CDS client (JWT
    ``iss``, ``sub`` as altId; ``anonymous`` with ``BIGMED_CDS_JWT=off``), the context's patient,
    action E, the service id (and hookInstance) as entities; 503 instead of cards when it cannot be kept."""
    if request.endpoint != "cds.call" or not ctx().config.audit or "bigmed_cds_claims" not in g:
        return resp  # not a call, or the client was not verified (401: nothing was done)
    claims = g.bigmed_cds_claims
    iss, sub = claims.get("iss"), claims.get("sub")
    agent = str(iss) if iss else "anonymous"
    ids = [(CDS_SERVICE, str((request.view_args or {}).get("service_id")))]
    ids += [(CDS_HOOK_INSTANCE, h) for h in g.get("bigmed_cds_hook_instance", [])]
    rec = audit.AuditRecord(
        agent=agent,
        agent_alt=str(sub) if sub and sub != iss else None,
        action="E",
        subtype="operation",
        outcome="0" if resp.status_code < 400 else ("4" if resp.status_code < 500 else "8"),
        outcome_desc=None if resp.status_code < 400 else f"HTTP {resp.status_code}",
        patients=list(dict.fromkeys(g.get("bigmed_audit_patients", []))),
        identifiers=ids,
        query=f"POST {request.path}",
        address=request.remote_addr,
    )
    return audit_api.finish(resp, rec)


@bp.after_request
def _cors(resp: Response) -> Response:
    origin = request.headers.get("Origin")
    allowed = ctx().config.cors_origins
    if origin and (ctx().config.auth == "open" or "*" in allowed or origin.rstrip("/") in allowed):
        resp.headers["Access-Control-Allow-Origin"] = origin
        resp.headers["Vary"] = "Origin"
        resp.headers["Access-Control-Allow-Methods"] = "GET, POST, OPTIONS"
        resp.headers["Access-Control-Allow-Headers"] = "Authorization, Content-Type, Accept"
        resp.headers["Access-Control-Max-Age"] = "600"
    return resp


@bp.get("")
@bp.get("/")
def discovery() -> Response:
    return jsonify(registry.discovery())


def _authenticate(token: str) -> Access:
    try:
        return token_service().authenticate(token, fhir_base())
    except JwtError as exc:
        raise Unauthorized(f"{exc}") from None


@bp.post("/<service_id>")
def call(service_id: str) -> Response:
    body = read_json_body()
    context = body.get("context") if isinstance(body, Mapping) else None
    if isinstance(context, Mapping) and isinstance(context.get("patientId"), str):
        audit_api.note(patients=[context["patientId"]])
    if isinstance(body, Mapping) and isinstance(body.get("hookInstance"), str):
        g.bigmed_cds_hook_instance = [body["hookInstance"]]
    answer = hooks.call_service(
        ctx(),
        service_id,
        body,
        own_bases={fhir_base(), request.host_url.rstrip("/") + "/fhir"},
        ui_base=_root(),
        authenticate=_authenticate,
    )
    return jsonify(answer)


@bp.post("/<service_id>/feedback")
def post_feedback(service_id: str) -> Response:
    ids = feedback.store(ctx(), service_id, read_json_body())
    return jsonify({"stored": len(ids), "ids": ids})


@bp.get("/<service_id>/feedback")
def get_feedback(service_id: str) -> Response:
    return jsonify(feedback.query(ctx(), service_id, request.args.get("card") or None))
