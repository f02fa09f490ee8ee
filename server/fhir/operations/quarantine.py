"""``GET /fhir/$quarantine``: the EHR records that did not become FHIR, as OperationOutcomes.

A server-defined system-level operation (in the manner of http://hl7.org/fhir/R4/operations.html)
over the ``ehr_quarantine`` table that :mod:`.ehr_store` fills: every HL7 v2 message and CSV row
quarantined by its mapper (bad segment, missing MSH, wrong encoding characters, invalid dates,
unknown codes …) or refused by the store (a conditional reference matching no Patient …), from
the CLI and from ``POST /hl7v2`` alike.

Parameters (all optional, combined with AND): ``source`` (the file name, or ``POST /hl7v2 …`` of
a request, exact), ``kind`` (``hl7v2`` | ``csv``), ``since`` (an instant or a date: quarantined at
or after it), ``control-id`` (MSH-10), ``_count`` (page size) and ``_cursor`` (from a ``next``
link). The answer is a ``collection`` Bundle, newest first, one OperationOutcome
(http://hl7.org/fhir/R4/operationoutcome.html) per record: the issue has the reason as
``details.text`` (HL7 table 0357 code as coding), the location (``PID-3[1]``, ``OBX-8[1]``, a CSV
column) in ``location``, and a readable ``diagnostics``; where it came from is in extensions
(:data:`EXTENSION` + ``source``, ``record``, ``kind``, ``control-id``, ``message-type``, ``raw``, the
record as received, to be fixed and sent again).
"""

from __future__ import annotations

import uuid
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any
from urllib.parse import urlencode

from server.errors import BadRequest
from server.fhir.context import FhirContext
from server.fhir.resource import instant

__all__ = ["EXTENSION", "quarantine_bundle"]

EXTENSION = "http://bigmed.example/fhir/StructureDefinition/ehr-quarantine-"
V2_0357 = "http://terminology.hl7.org/CodeSystem/v2-0357"
_NOT_SUPPORTED = ("200", "201", "202", "203")
_PARAMS = ("source", "kind", "since", "control-id", "_count", "_cursor", "_format", "_pretty")


def _since(value: str) -> float:
    text = value.strip()
    try:
        when = datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError as exc:
        raise BadRequest(f"since must be an instant or a date (2024-03-01T12:00:00Z), not '{value}'") from exc
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    return when.timestamp()


def _outcome(row: tuple[Any, ...]) -> dict[str, Any]:
    qid, ts, kind, source, record, control_id, message_type, location, reason, code, raw = row
    label = f"message {record}" if kind == "hl7v2" else f"line {record}"
    ext: list[dict[str, Any]] = [
        {"url": EXTENSION + "source", "valueString": source},
        {"url": EXTENSION + "kind", "valueCode": kind},
    ]
    if record is not None:
        ext.append({"url": EXTENSION + "record", "valueInteger": int(record)})
    if control_id:
        ext.append({"url": EXTENSION + "control-id", "valueString": control_id})
    if message_type:
        ext.append({"url": EXTENSION + "message-type", "valueString": message_type})
    if raw:
        ext.append({"url": EXTENSION + "raw", "valueString": raw})
    issue: dict[str, Any] = {
        "severity": "error",
        "code": "not-supported" if code in _NOT_SUPPORTED else "invalid",
        "details": {"text": reason},
        "diagnostics": f"{source} {label}"
        + (f" ({control_id})" if control_id else "")
        + (f": {location}" if location else "")
        + f": {reason}",
    }
    if code:
        issue["details"]["coding"] = [{"system": V2_0357, "code": code}]
    if location:
        issue["location"] = [location]
    return {
        "resourceType": "OperationOutcome",
        "id": f"q{qid}",
        "meta": {"lastUpdated": instant(float(ts))},
        "extension": ext,
        "issue": [issue],
    }


def quarantine_bundle(ctx: FhirContext, base: str, params: Mapping[str, str]) -> dict[str, Any]:
    """The page of quarantined records that ``params`` asks for (see the module docstring)."""
    unknown = sorted(k for k in params if k not in _PARAMS)
    if unknown:
        known = ", ".join(_PARAMS[:6])
        raise BadRequest(f"$quarantine does not know the parameter(s) {', '.join(unknown)}; it takes {known}")
    clauses: list[str] = []
    args: list[Any] = []
    if params.get("source"):
        clauses.append("source = ?")
        args.append(params["source"])
    if params.get("kind"):
        if params["kind"] not in ("hl7v2", "csv"):
            raise BadRequest(f"kind must be hl7v2 or csv, not '{params['kind']}'")
        clauses.append("kind = ?")
        args.append(params["kind"])
    if params.get("since"):
        clauses.append("ts >= ?")
        args.append(_since(params["since"]))
    if params.get("control-id"):
        clauses.append("control_id = ?")
        args.append(params["control-id"])
    if params.get("_cursor"):
        if not params["_cursor"].isdigit():
            raise BadRequest(f"_cursor '{params['_cursor']}' is not one this server gave")
        clauses.append("qid < ?")
        args.append(int(params["_cursor"]))
    raw_count = params.get("_count") or str(ctx.config.default_page_size)
    if not raw_count.isdigit():
        raise BadRequest(f"_count must be a whole number, not '{raw_count}'")
    count = min(int(raw_count), ctx.config.max_page_size)
    where = " AND ".join(clauses) or "1 = 1"
    rows = ctx.store.query(
        "SELECT qid, ts, kind, source, record, control_id, message_type, location, reason, code, raw "
        f"FROM ehr_quarantine WHERE {where} ORDER BY qid DESC LIMIT ?",
        [*args, count + 1],
    )
    page = rows[:count]
    kept = {k: v for k, v in params.items() if k not in ("_cursor", "_format", "_pretty")}
    links = [{"relation": "self", "url": f"{base}/$quarantine" + (f"?{urlencode(params)}" if params else "")}]
    if len(rows) > count and page:
        nxt = urlencode({**kept, "_count": str(count), "_cursor": str(page[-1][0])})
        links.append({"relation": "next", "url": f"{base}/$quarantine?{nxt}"})
    bundle: dict[str, Any] = {
        "resourceType": "Bundle",
        "id": str(uuid.uuid4()),
        "meta": {"lastUpdated": instant(datetime.now(UTC).timestamp())},
        "type": "collection",
        "link": links,
    }
    if page:
        bundle["entry"] = [{"resource": _outcome(r)} for r in page]
    return bundle
