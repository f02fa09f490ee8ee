"""Consent decisions read from Consent resources (http://hl7.org/fhir/R4/consent.html).

Owns one question other features ask before using a patient's data beyond their care: *has this
patient denied research use?* A patient has when a current Consent exists with ``status``
``active``, ``scope`` research (``http://terminology.hl7.org/CodeSystem/consentscope#research``),
``patient`` the Patient, and a ``provision`` of ``type`` ``deny`` (the base provision, or a
nested one whose ``purpose`` is research use, v3-ActReason ``HRESCH``/``CLINTRCH``/``RESCH``)
whose ``period``, if any, covers now. A later ``permit`` Consent does not lift an active deny:
withdrawing the denial means setting that Consent's status to ``inactive``/``rejected``.

Used by ``Patient/$similar`` (:mod:`server.fhir.operations.rare`), which must never return such
a patient; the security layer can call :func:`research_denied` for other research-facing reads.
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Mapping
from datetime import datetime
from typing import Any

from server import jsonio
from server.fhir.context import FhirContext
from server.search.query import build_sql, parse_search

__all__ = ["RESEARCH_PURPOSES", "denies_research", "research_denied"]

RESEARCH_PURPOSES = frozenset({"HRESCH", "CLINTRCH", "RESCH", "research"})


def _codes(concept: Any) -> set[str]:
    if not isinstance(concept, Mapping):
        return set()
    return {str(c.get("code")) for c in concept.get("coding") or [] if isinstance(c, Mapping)}


def _epoch(value: Any) -> float | None:
    if not isinstance(value, str) or not value:
        return None
    text = value.replace("Z", "+00:00")
    if len(text) == 4:
        text += "-01-01"
    elif len(text) == 7:
        text += "-01"
    try:
        moment = datetime.fromisoformat(text)
    except ValueError:
        return None
    return moment.timestamp()


def _current(provision: Mapping[str, Any], now: float) -> bool:
    period = provision.get("period")
    if not isinstance(period, Mapping):
        return True
    start, end = _epoch(period.get("start")), _epoch(period.get("end"))
    return (start is None or start <= now) and (end is None or now < end)


def denies_research(consent: Mapping[str, Any], now: float | None = None) -> bool:
    """Whether one Consent resource is an active denial of research use."""
    now = time.time() if now is None else now
    if consent.get("status") != "active" or "research" not in _codes(consent.get("scope")):
        return False
    provision = consent.get("provision")
    if not isinstance(provision, Mapping) or not _current(provision, now):
        return False
    if provision.get("type") == "deny":
        return True
    for nested in provision.get("provision") or []:
        if not isinstance(nested, Mapping) or nested.get("type") != "deny" or not _current(nested, now):
            continue
        purposes = {str(p.get("code")) for p in nested.get("purpose") or [] if isinstance(p, Mapping)}
        if purposes & RESEARCH_PURPOSES:
            return True
    return False


def research_denied(ctx: FhirContext, patient_ids: Iterable[str] | None = None) -> set[str]:
    """Ids of the Patients (of ``patient_ids``, or all) with an active denial of research use."""
    wanted = None if patient_ids is None else set(patient_ids)
    parsed = parse_search(ctx.registry, "Consent", [("scope", "research"), ("status", "active")], strict=True)
    sql, params = build_sql(parsed)
    rids = [int(row[0]) for row in ctx.store.query(sql, params)]
    denied: set[str] = set()
    now = time.time()
    for res in ctx.store.read_many(rids):
        if res.content is None:
            continue
        consent = jsonio.loads(res.content)
        reference = (consent.get("patient") or {}).get("reference")
        if not isinstance(reference, str) or "Patient/" not in reference:
            continue
        patient = reference.rpartition("Patient/")[2].split("/")[0]
        if (wanted is None or patient in wanted) and denies_research(consent, now):
            denied.add(patient)
    return denied
