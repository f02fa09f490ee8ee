"""The audit trail over HTTP: one AuditEvent per request, and ``/fhir/AuditEvent`` to read it.

Every request under a protected prefix (``server/api/auth.py``) is recorded by :mod:`server.audit`
before its response leaves (``after_request``): with ``BIGMED_AUDIT_MODE=async`` (default) its
rows are handed to the process's group-commit writer (:mod:`server.audit_queue`), with ``sync``
inserted in a transaction of their own. Fail closed: while the writer cannot commit, every audited
request is refused with 503 before any work (``before_request``); when a record cannot be taken
(queue full, writer failing, insert failed) the answer is a 503 instead of the data — except for a
successful write interaction, whose change already committed its own AuditEvent in the same
transaction (a 503 would then misreport a change that happened). The patient of the event comes
from the URL (``Patient/{id}/…``), the ``patient``/``subject`` search parameters, the resource
answered by a read, the client's own patient, or what the route added with :func:`note`; the
entities from the URL, the ``Location``/``Content-Location`` of the answer (a created resource,
the DiagnosticReport of ``$ingest-vcf``, the Task of a background ingestion) and :func:`note`.
Reading the trail first waits for this process's queue to be committed (read-your-writes).
CDS Hooks calls are recorded through :func:`finish` by ``server/api/cds.py``.
``GET /fhir/AuditEvent?patient=&agent=&date=`` and ``GET /fhir/AuditEvent/{id}``
need ``system/AuditEvent.rs`` (or ``.read``); every write method on AuditEvent answers 405
(append-only, https://hl7.org/fhir/R4/auditevent.html "AuditEvents should not be changed").
"""

from __future__ import annotations

import logging
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from flask import Blueprint, Flask, Request, Response, current_app, g, request

from server import audit, jsonio
from server.api.auth import _protected
from server.api.http import ctx, fhir_base, fhir_response, negotiate, query_pairs
from server.audit_queue import AuditUnavailable, AuditWriter
from server.auth.access import Access, compartment_patients, require
from server.errors import Forbidden, Issue, MethodNotAllowed, Unavailable, operation_outcome

__all__ = [
    "Facts",
    "bp",
    "ensure_writable",
    "facts_of",
    "finish",
    "flush_trail",
    "init_app",
    "note",
    "persist",
    "refused",
    "request_record",
]

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
    flush_trail()
    events, next_aid = audit.find(
        ctx().store, query_pairs(), ctx().config.default_page_size, ctx().config.max_page_size
    )
    return fhir_response(audit.audit_bundle(fhir_base(), events, query_pairs(), next_aid), media=media)


@bp.get("/AuditEvent/<id_>")
def read(id_: str) -> Response:
    media = negotiate()
    _trail_access()
    flush_trail()
    return fhir_response(audit.read(ctx().store, id_), media=media)


bp.add_url_rule("/AuditEvent", "forbid_type", _forbid_writes, methods=["POST", "PUT", "PATCH", "DELETE"])
bp.add_url_rule("/AuditEvent/<id_>", "forbid_instance", _forbid_writes, methods=["PUT", "PATCH", "DELETE"])


def _trail_access() -> Access:
    access = require("AuditEvent", "r" if request.view_args and "id_" in request.view_args else "s")
    if access.patient is not None:
        raise Forbidden("The audit trail is not available to patient-level clients")
    return access


# -- recording ---------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Facts:
    """What a request's AuditEvent is made of: from Flask's request (:func:`facts_of`) or, for a
    cache hit answered before Flask runs, from the WSGI environ (``server/api/cache_front.py``)."""

    method: str
    path: str
    full_path: str  # path?query, as werkzeug's ``Request.full_path``
    endpoint: str
    view_args: Mapping[str, Any]
    args: Sequence[tuple[str, str]]
    address: str | None


def facts_of(req: Request) -> Facts:
    return Facts(
        req.method,
        req.path,
        req.full_path,
        req.endpoint or "",
        req.view_args or {},
        list(req.args.items(multi=True)),
        req.remote_addr,
    )


def _patients(access: Access, status: int, body: Callable[[], bytes], facts: Facts) -> list[str]:
    found: list[str] = []
    args = facts.view_args
    if args.get("type_") == "Patient" and args.get("id_"):
        found.append(str(args["id_"]))
    if args.get("compartment") == "Patient" and args.get("id_"):
        found.append(str(args["id_"]))
    path = facts.path
    if path.startswith("/fhir/Patient/") and "$" in path:
        found.append(path.split("/")[3])
    for key, value in facts.args:
        name = key.partition(":")[0]
        if name in ("patient", "subject"):
            for v in value.split(","):
                ref = v.rsplit("/", 2)
                if name == "patient" and len(ref) == 1:
                    found.append(v)
                elif len(ref) >= 2 and ref[-2] == "Patient":
                    found.append(ref[-1])
    single = (args.get("id_") and args.get("type_")) or facts.endpoint == "fhir.ingest_vcf_status"
    if not found and status == 200 and facts.method == "GET" and single:
        try:
            resource = jsonio.loads(body())
            if isinstance(resource, dict):
                found += compartment_patients(resource)
        except ValueError:
            pass
    if access.patient and access.patient not in found:
        found.append(access.patient)
    return list(dict.fromkeys(found))


def _outcome(status: int) -> str:
    return "0" if status < 400 else ("4" if status < 500 else "8")


#: write interactions whose change carries its own AuditEvent, written in the change's transaction
_WRITES = frozenset(
    f"fhir.{n}"
    for n in ("create", "update", "conditional_update", "patch", "conditional_patch", "delete", "conditional_delete")
)
_LOCATION = re.compile(r"^/?([A-Z][A-Za-z]+)/([A-Za-z0-9\-.]{1,64})(?:/_history/([A-Za-z0-9\-.]{1,64}))?(?:/|$)")


def note(
    patients: Sequence[str] = (), entities: Sequence[str] = (), identifiers: Sequence[tuple[str, str]] = ()
) -> None:
    """Add patients, resources (``Type/id``) and other entities ((system, value)) to the AuditEvent
    of the running request."""
    g.setdefault("bigmed_audit_patients", []).extend(patients)
    g.setdefault("bigmed_audit_entities", []).extend(entities)
    g.setdefault("bigmed_audit_identifiers", []).extend(identifiers)


def _location_entity(resp: Response) -> str | None:
    """``Type/id[/_history/v]`` of the resource a response points to (Location / Content-Location)."""
    found = {name.lower(): value for name, value in resp.headers.items()}  # .get() raises inside per miss
    url = found.get("location") or found.get("content-location")
    if not url:
        return None
    path = url.removeprefix(fhir_base())
    if path == url and "://" in url:
        return None
    m = _LOCATION.match(path)
    if not m:
        return None
    return f"{m[1]}/{m[2]}" + (f"/_history/{m[3]}" if m[3] else "")


def _writer() -> AuditWriter | None:
    found: AuditWriter | None = current_app.extensions.get("bigmed_audit_writer")
    return found


def persist(rec: audit.AuditRecord) -> None:
    """Record one access: queued for the group commit (async mode) or inserted now (sync mode).

    Raises :class:`~server.audit_queue.AuditUnavailable` (or the store's error in sync mode) when the
    record cannot be taken: the caller must not send the data.
    """
    writer = _writer()
    if writer is None:
        audit.record(ctx().store, rec)
    else:
        writer.submit([rec])  # its rows are built in the writer's thread


_UNAVAILABLE = "The access could not be recorded in the audit trail; nothing was returned. Retry later."


def refused() -> Response:
    """The 503 answered instead of data whose access could not be recorded (fail closed)."""
    resp = fhir_response(operation_outcome([Issue(_UNAVAILABLE)], "transient"), 503)
    resp.headers["Retry-After"] = "5"
    return resp


def finish(resp: Response, rec: audit.AuditRecord, *, covered: bool = False) -> Response:
    """``resp`` once ``rec`` is recorded; :func:`refused` when it cannot be (unless ``covered``:
    the access already has its AuditEvent, committed with the change it made)."""
    try:
        persist(rec)
    except Exception as exc:  # any storage failure: fail closed, never hand out unaudited data
        if covered:
            log.warning("request AuditEvent not recorded (%s); the change's own AuditEvent was committed", exc)
            return resp
        if isinstance(exc, AuditUnavailable):
            log.warning("refusing a response: %s", exc)
        else:
            log.exception("could not record the AuditEvent of a request; answering 503")
        return refused()
    return resp


def _audited(req: Request) -> bool:
    return bool(ctx().config.audit) and _protected(req.path) and req.method != "OPTIONS" and "bigmed_access" in g


def ensure_writable() -> None:
    """503 (:class:`~server.errors.Unavailable`) while the async writer cannot commit: refuse the work
    before doing it."""
    writer = _writer()
    if writer is not None and ctx().config.audit:
        try:
            writer.check()
        except AuditUnavailable:
            raise Unavailable(_UNAVAILABLE, headers={"Retry-After": "5"}) from None


def _check_writer() -> None:
    """Before the work: refuse every audited request while the trail cannot be written."""
    if _audited(request._get_current_object()):  # type: ignore[attr-defined]
        ensure_writable()


def request_record(
    access: Access,
    facts: Facts,
    status: int,
    body: Callable[[], bytes],
    located: str | None = None,
    noted: Any = None,
) -> audit.AuditRecord:
    """The AuditEvent of one answered request (``body``: the answer's bytes, read only when the
    patient must come from a read resource; ``located``: what its Location names; ``noted``: what
    the route added with :func:`note`, ``flask.g``)."""
    noted = {} if noted is None else noted
    action, subtype = _SUBTYPES.get(facts.endpoint, ("E", "operation"))
    args = facts.view_args
    entities: list[str] = []
    if args.get("type_") and args.get("id_"):
        entities.append(f"{args['type_']}/{args['id_']}" + (f"/_history/{args['vid']}" if args.get("vid") else ""))
    if located and status < 400 and not any(located.startswith(e) for e in entities):
        entities.append(located)
    entities += noted.get("bigmed_audit_entities", [])
    patients = [*_patients(access, status, body, facts), *noted.get("bigmed_audit_patients", [])]
    return audit.AuditRecord(
        agent=access.client_id,
        action=action,
        subtype=subtype,
        outcome=_outcome(status),
        outcome_desc=None if status < 400 else f"HTTP {status}",
        patients=list(dict.fromkeys(patients)),
        entities=list(dict.fromkeys(entities)),
        query=f"{facts.method} {facts.full_path.rstrip('?')}",
        address=facts.address,
        identifiers=noted.get("bigmed_audit_identifiers", []),
    )


def _record(resp: Response) -> Response:
    req: Request = request._get_current_object()  # type: ignore[attr-defined]  # once, not per attribute
    if not _audited(req):
        return resp
    state = g._get_current_object()
    located = _location_entity(resp) if resp.status_code < 400 else None
    rec = request_record(state.bigmed_access, facts_of(req), resp.status_code, resp.get_data, located, state)
    return finish(resp, rec, covered=req.endpoint in _WRITES and resp.status_code < 400)


def flush_trail() -> None:
    """Before the trail is read: everything this process recorded so far is committed (or 503)."""
    writer = _writer()
    if writer is not None and not writer.flush(5.0):
        raise Unavailable(_UNAVAILABLE, headers={"Retry-After": "5"})


def init_app(app: Flask) -> None:
    cfg = app.extensions["bigmed"].config
    if cfg.audit and cfg.audit_mode == "async":
        app.extensions["bigmed_audit_writer"] = audit.writer(app.extensions["bigmed"].store, cfg.audit_queue)
    app.register_blueprint(bp)
    app.before_request(_check_writer)
    app.after_request(_record)
