"""The audit trail: an AuditEvent for every access to patient data (http://hl7.org/fhir/R4/auditevent.html).

Each access becomes one row of the append-only table ``audit_event`` (``server/store/schema.py``)
holding the AuditEvent JSON and the columns it is searched by (time, agent, patient, action,
outcome). Following the R4 RESTful audit pattern (IHE BALP-like): ``type`` rest, ``subtype`` the
interaction (read, search-type, create …), ``action`` C R U D E, ``outcome`` 0 success / 4
minor failure (4xx) / 8 serious failure (5xx), ``agent`` the client id (``anonymous`` in
``BIGMED_AUTH=open``) with the request's source address, ``entity`` the resources
(``what``) or the query (``query``, base64 as the spec requires) and the patient (role 1).

When it is written:

* every write of a resource through :func:`server.fhir.crud.write_in_tx` (REST, transaction and
  batch entries, PGx calls) records a row **inside the same database transaction**
  (:func:`record_write`): no committed change without its trace, and a failed trace rolls the
  change back;
* every request under ``/fhir`` and ``/hl7v2`` (reads, searches, operations, exports, and the
  write requests themselves) and every CDS Hooks service call records one row per patient before
  its response is sent (``server/api/audit.py``): queued for the group-commit writer
  (:func:`writer`, :mod:`server.audit_queue`, ``BIGMED_AUDIT_MODE=async``) or inserted in a
  transaction of its own (:func:`record`, ``sync``). Either way it fails closed: when the record
  cannot be kept the client gets a 503, never the data.

Audit records are append-only: there is no update or delete path (the API answers 405), and
``GET /fhir/AuditEvent`` (search by ``patient``, ``agent``, ``date``, ``action``, ``outcome``,
``_count``) and ``GET /fhir/AuditEvent/{id}`` need the scope ``system/AuditEvent.rs``
(a patient-level client is never given the trail).
"""

from __future__ import annotations

import base64
import time
import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any
from urllib.parse import urlencode

from server import jsonio
from server.audit_queue import AuditWriter
from server.errors import BadRequest, NotFound
from server.search.query import date_range
from server.store.base import Store, WriteTx

__all__ = ["AuditRecord", "audit_bundle", "find", "read", "record", "record_write", "rows", "writer"]

_SYSTEM_ID = "urn:bigmed:client"
_EVENT_TYPE = {"system": "http://terminology.hl7.org/CodeSystem/audit-event-type", "code": "rest"}
_INTERACTION = "http://hl7.org/fhir/restful-interaction"
_INSERT = "INSERT INTO audit_event (ts, agent, patient, action, outcome, content) VALUES (?, ?, ?, ?, ?, ?)"


@dataclass
class AuditRecord:
    """What one access did, before it is turned into an AuditEvent."""

    agent: str
    action: str  # C R U D E
    subtype: str  # read, vread, search-type, create, update, patch, delete, operation, transaction …
    outcome: str = "0"  # 0 4 8 12
    outcome_desc: str | None = None
    patients: Sequence[str] = ()
    entities: Sequence[str] = ()  # Type/id[/_history/v] references
    query: str | None = None  # the request's query string or operation URL
    address: str | None = None
    ts: float = field(default_factory=time.time)
    agent_alt: str | None = None  # a second name of the agent (a CDS client's ``sub`` beside its ``iss``)
    identifiers: Sequence[tuple[str, str]] = ()  # (system, value) of entities that are not resources

    def event(self) -> dict[str, Any]:
        recorded = datetime.fromtimestamp(self.ts, UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")
        agent: dict[str, Any] = {
            "type": {
                "coding": [
                    {
                        "system": "http://terminology.hl7.org/CodeSystem/extra-security-role-type",
                        "code": "datacollector" if self.action in "CUD" else "humanuser",
                    }
                ]
            },
            "who": {"identifier": {"system": _SYSTEM_ID, "value": self.agent}, "display": self.agent},
            "requestor": True,
        }
        if self.agent_alt:
            agent["altId"] = self.agent_alt
        if self.address:
            agent["network"] = {"address": self.address, "type": "2"}
        entities: list[dict[str, Any]] = [
            {"what": {"reference": f"Patient/{p}"}, "type": _entity_type("1"), "role": _entity_role("1")}
            for p in self.patients
        ]
        entities += [{"what": {"reference": ref}, "type": _entity_type("2")} for ref in self.entities]
        entities += [
            {"what": {"identifier": {"system": system, "value": value}}, "type": _entity_type("2")}
            for system, value in self.identifiers
        ]
        if self.query:
            entities.append(
                {"type": _entity_type("2"), "role": _entity_role("24"), "query": _b64(self.query)}  # 24 = query
            )
        event: dict[str, Any] = {
            "resourceType": "AuditEvent",
            "id": uuid.uuid4().hex,
            "type": _EVENT_TYPE,
            "subtype": [{"system": _INTERACTION, "code": self.subtype}],
            "action": self.action,
            "recorded": recorded,
            "outcome": self.outcome,
            "agent": [agent],
            "source": {
                "observer": {"display": "BigMed FHIR"},
                "type": [{"system": "http://terminology.hl7.org/CodeSystem/security-source-type", "code": "4"}],
            },
        }
        if self.outcome_desc:
            event["outcomeDesc"] = self.outcome_desc
        if entities:
            event["entity"] = entities
        return event

    def row(self) -> tuple[Any, ...]:
        event = self.event()
        patient = self.patients[0] if self.patients else None
        return (self.ts, self.agent, patient, self.action, self.outcome, jsonio.dumps(event).decode())


def _b64(text: str) -> str:
    return base64.b64encode(text.encode()).decode()


def _entity_type(code: str) -> dict[str, str]:
    return {"system": "http://terminology.hl7.org/CodeSystem/audit-entity-type", "code": code}


def _entity_role(code: str) -> dict[str, str]:
    return {"system": "http://terminology.hl7.org/CodeSystem/object-role", "code": code}


def rows(rec: AuditRecord) -> list[tuple[Any, ...]]:
    """The ``audit_event`` rows of one access: one per patient, so ``?patient=`` finds every access to each."""
    if len(rec.patients) > 1:
        return [AuditRecord(**{**rec.__dict__, "patients": [p]}).row() for p in rec.patients]
    return [rec.row()]


def record(store: Store, rec: AuditRecord) -> None:
    """Persist one AuditEvent in a transaction of its own (``BIGMED_AUDIT_MODE=sync``)."""
    with store.transaction() as tx:
        tx.execute_many(_INSERT, rows(rec))


def writer(store: Store, capacity: int, batch: int = 500) -> AuditWriter:
    """The group-commit writer of ``BIGMED_AUDIT_MODE=async`` for ``store`` (:mod:`server.audit_queue`)."""
    return AuditWriter(store, _INSERT, capacity=capacity, batch=batch, convert=_rows_of)


def _rows_of(records: list[AuditRecord]) -> list[tuple[Any, ...]]:
    """The rows of a batch of records (the async writer builds them in its thread)."""
    return [row for rec in records for row in rows(rec)]


def record_write(tx: WriteTx, rec: AuditRecord) -> None:
    """Persist the AuditEvent of a write inside the write's own transaction."""
    tx.execute_many(_INSERT, [rec.row()])


# -- reading the trail ------------------------------------------------------------------------------

_SEARCH = {"patient", "agent", "date", "action", "outcome", "_count", "_format", "_pretty", "_cursor"}


def read(store: Store, id_: str) -> dict[str, Any]:
    rows = store.query("SELECT content FROM audit_event WHERE aid = ?", (int(id_),)) if id_.isdigit() else []
    if not rows:
        raise NotFound(f"AuditEvent/{id_} is not known")
    return _with_id(rows[0][0], id_)


def _with_id(content: Any, id_: str) -> dict[str, Any]:
    event: dict[str, Any] = jsonio.loads(content)
    event["id"] = id_
    return event


def _reference_value(raw: str, prefix: str) -> str:
    return raw.rsplit("|", maxsplit=1)[-1].removeprefix(prefix)


def find(
    store: Store, params: Sequence[tuple[str, str]], default_count: int, max_count: int
) -> tuple[list[dict[str, Any]], int | None]:
    """AuditEvents matching ``params``, newest first; and the aid to continue before (next page)."""
    where: list[str] = []
    args: list[Any] = []
    count = default_count
    for key, raw in params:
        name, _, modifier = key.partition(":")
        if name not in _SEARCH or (modifier and name != "patient"):
            known = ", ".join(sorted(_SEARCH - {"_format", "_pretty"}))
            raise BadRequest(f"AuditEvent search supports {known}; not '{key}'")
        if name == "patient":
            values = [_reference_value(v, "Patient/") for v in raw.split(",")]
            where.append(f"patient IN ({', '.join('?' for _ in values)})")
            args += values
        elif name == "agent":
            values = [_reference_value(v, "") for v in raw.split(",")]
            where.append(f"agent IN ({', '.join('?' for _ in values)})")
            args += values
        elif name in ("action", "outcome"):
            values = raw.split(",")
            where.append(f"{name} IN ({', '.join('?' for _ in values)})")
            args += values
        elif name == "date":
            prefix, value = (raw[:2], raw[2:]) if raw[:2] in ("ge", "gt", "le", "lt", "eq") else ("eq", raw)
            try:
                low, high = date_range(value)
            except ValueError as exc:
                raise BadRequest(f"date: {exc}") from None
            cond = {"ge": "ts >= ?", "gt": "ts >= ?", "le": "ts < ?", "lt": "ts < ?"}.get(prefix)
            if cond is None:
                where.append("ts >= ? AND ts < ?")
                args += [low, high]
            else:
                where.append(cond)
                args.append(high if prefix in ("gt", "le") else low)
        elif name == "_count":
            if not raw.isdigit():
                raise BadRequest("_count must be a non-negative integer")
            count = min(int(raw), max_count)
        elif name == "_cursor":
            if not raw.isdigit():
                raise BadRequest("_cursor is not valid")
            where.append("aid < ?")
            args.append(int(raw))
    sql = "SELECT aid, content FROM audit_event"
    if where:
        sql += " WHERE " + " AND ".join(where)
    rows = store.query(f"{sql} ORDER BY aid DESC LIMIT {int(count) + 1}", args)
    more = len(rows) > count
    rows = rows[:count]
    events = [_with_id(content, str(aid)) for aid, content in rows]
    return events, (int(rows[-1][0]) if more and rows else None)


def audit_bundle(
    base: str, events: list[dict[str, Any]], params: Sequence[tuple[str, str]], next_aid: int | None
) -> dict[str, Any]:
    kept = [(k, v) for k, v in params if k != "_cursor"]
    url = f"{base}/AuditEvent"
    links = [{"relation": "self", "url": f"{url}?{urlencode(list(params))}" if params else url}]
    if next_aid is not None:
        links.append({"relation": "next", "url": f"{url}?{urlencode([*kept, ('_cursor', str(next_aid))])}"})
    return {
        "resourceType": "Bundle",
        "type": "searchset",
        "link": links,
        "entry": [
            {"fullUrl": f"{base}/AuditEvent/{e['id']}", "resource": e, "search": {"mode": "match"}} for e in events
        ],
    }
