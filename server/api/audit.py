"""The audit trail over HTTP: one AuditEvent per request, and ``/fhir/AuditEvent`` to read it.

Every request under a protected prefix (``server/api/auth.py``) is recorded by :mod:`server.audit`
before its response leaves (``after_request``); a failure to record answers 503 instead of the
data (fail closed). The patient of the event comes from the URL (``Patient/{id}/…``), the
``patient``/``subject`` search parameters, the resource answered by a read, or the client's
own patient. ``GET /fhir/AuditEvent?patient=&agent=&date=`` and ``GET /fhir/AuditEvent/{id}``
need ``system/AuditEvent.rs`` (or ``.read``); every write method on AuditEvent answers 405
(append-only, https://hl7.org/fhir/R4/auditevent.html "AuditEvents should not be changed").
"""

from __future__ import annotations

import logging
from typing import Any

from flask import Blueprint, Flask, Response, g, request

from server import audit, jsonio
from server.api.auth import PUBLIC_PATHS, _protected
from server.api.http import ctx, fhir_base, fhir_response, negotiate, query_pairs
from server.auth.access import Access, compartment_patients, require
from server.errors import Forbidden, Issue, MethodNotAllowed, operation_outcome

__all__ = ["bp", "init_app"]

log = logging.getLogger(__name__)

bp = Blueprint("audit", __name__, url_prefix="/fhir")

_SUBTYPES = {
    "fhir.read": ("R", "read"),
    "fhir.vread": ("R", "vread"),
    "fhir.history_instance": ("R", "history-instance"),
    "fhir.history_type": ("R", "history-type"),
    "fhir.history_system": ("R", "history-system"),
    "fhir.search_type": ("E", "search-type"),
    "fhir.search_type_post": ("E", "search-type"),
    "fhir.search_all": ("E", "search-system"),
    "fhir.search_in_compartment": ("E", "search-type"),
    "fhir.create": ("C", "create"),
    "fhir.update": ("U", "update"),
    "fhir.conditional_update": ("U", "update"),
    "fhir.patch": ("U", "patch"),
    "fhir.conditional_patch": ("U", "patch"),
    "fhir.delete": ("D", "delete"),
    "fhir.conditional_delete": ("D", "delete"),
    "fhir.transaction": ("E", "transaction"),
}


def _forbid_writes(*_: Any, **__: Any) -> Response:
    raise MethodNotAllowed("AuditEvents are append-only: they cannot be created, changed or deleted through the API")


@bp.get("/AuditEvent")
@bp.post("/AuditEvent/_search")
def search() -> Response:
    media = negotiate()
    _trail_access()
    events, next_aid = audit.find(
        ctx().store, query_pairs(), ctx().config.default_page_size, ctx().config.max_page_size
    )
    return fhir_response(audit.audit_bundle(fhir_base(), events, query_pairs(), next_aid), media=media)


@bp.get("/AuditEvent/<id_>")
def read(id_: str) -> Response:
    media = negotiate()
    _trail_access()
    return fhir_response(audit.read(ctx().store, id_), media=media)


bp.add_url_rule("/AuditEvent", "forbid_type", _forbid_writes, methods=["POST", "PUT", "PATCH", "DELETE"])
bp.add_url_rule("/AuditEvent/<id_>", "forbid_instance", _forbid_writes, methods=["PUT", "PATCH", "DELETE"])


def _trail_access() -> Access:
    access = require("AuditEvent", "r" if request.view_args and "id_" in request.view_args else "s")
    if access.patient is not None:
        raise Forbidden("The audit trail is not available to patient-level clients")
    return access


# -- recording ---------------------------------------------------------------------------------


def _patients(access: Access, resp: Response) -> list[str]:
    found: list[str] = []
    args = request.view_args or {}
    if args.get("type_") == "Patient" and args.get("id_"):
        found.append(str(args["id_"]))
    if args.get("compartment") == "Patient" and args.get("id_"):
        found.append(str(args["id_"]))
    if request.path.startswith("/fhir/Patient/") and "$" in request.path:
        found.append(request.path.split("/")[3])
    for key, value in request.args.items(multi=True):
        name = key.partition(":")[0]
        if name in ("patient", "subject"):
            for v in value.split(","):
                ref = v.rsplit("/", 2)
                if name == "patient" and len(ref) == 1:
                    found.append(v)
                elif len(ref) >= 2 and ref[-2] == "Patient":
                    found.append(ref[-1])
    if not found and resp.status_code == 200 and request.method == "GET" and args.get("id_") and args.get("type_"):
        try:
            resource = jsonio.loads(resp.get_data())
            if isinstance(resource, dict):
                found += compartment_patients(resource)
        except ValueError:
            pass
    if access.patient and access.patient not in found:
        found.append(access.patient)
    return list(dict.fromkeys(found))


def _outcome(status: int) -> str:
    return "0" if status < 400 else ("4" if status < 500 else "8")


def _record(resp: Response) -> Response:
    if not ctx().config.audit or not _protected(request.path) or request.path in PUBLIC_PATHS:
        return resp
    if request.method == "OPTIONS" or "bigmed_access" not in g:
        return resp
    access: Access = g.bigmed_access
    action, subtype = _SUBTYPES.get(request.endpoint or "", ("E", "operation"))
    args = request.view_args or {}
    entity = None
    if args.get("type_") and args.get("id_"):
        entity = f"{args['type_']}/{args['id_']}" + (f"/_history/{args['vid']}" if args.get("vid") else "")
    rec = audit.AuditRecord(
        agent=access.client_id,
        action=action,
        subtype=subtype,
        outcome=_outcome(resp.status_code),
        outcome_desc=None if resp.status_code < 400 else f"HTTP {resp.status_code}",
        patients=_patients(access, resp),
        entities=[entity] if entity else [],
        query=f"{request.method} {request.full_path.rstrip('?')}",
        address=request.remote_addr,
    )
    try:
        audit.record(ctx().store, rec)
    except Exception:  # any storage failure: fail closed, never hand out unaudited data
        log.exception("could not record the AuditEvent of a request; answering 503")
        body = operation_outcome(
            [Issue("The access could not be recorded in the audit trail; nothing was returned. Retry later.")],
            "transient",
        )
        return fhir_response(body, 503)
    return resp


def init_app(app: Flask) -> None:
    app.register_blueprint(bp)
    app.after_request(_record)
