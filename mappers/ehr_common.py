"""What the EHR mappers (``hl7v2``, ``csv_ehr``) share: report records, ids, transaction entries.

* :class:`Problem` and :class:`Quarantined`: the per-record report. A record that cannot be mapped
  is never dropped: it becomes a ``Quarantined`` with its source, position, location (segment and
  field, or column) and reason, and the raw record so it can be fixed and sent again.
* Deterministic resource ids (:func:`fhir_id`, UUID v5 over a fixed namespace): mapping the same
  record twice yields the same ids, so storing it twice changes nothing.
* Transaction Bundle entries (http://hl7.org/fhir/R4/http.html#transaction): update by id,
  conditional update (``PUT Patient?identifier=system|value``,
  http://hl7.org/fhir/R4/http.html#cond-update) and conditional create (``ifNoneExist``), and the
  conditional reference strings (``Patient?identifier=system|value``,
  http://hl7.org/fhir/R4/http.html#trules) that the server resolves inside a transaction.
* Identifier systems of well-known assigning authorities (Norwegian person numbers and HPR,
  US SSN/NPI) and local fallbacks (``urn:bigmed:id:<authority>``).

Pure: imports nothing of ``server``.
"""

from __future__ import annotations

import functools
import hashlib
import uuid
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import quote

from mappers.norwegian_id import SYSTEMS, IdKind

__all__ = [
    "HPR_SYSTEM",
    "LOCAL_SYSTEM_PREFIX",
    "NORWEGIAN_PERSON",
    "Problem",
    "Quarantined",
    "conditional_create",
    "conditional_update",
    "fhir_id",
    "identifier_query",
    "local_system",
    "transaction_bundle",
    "ucum_code",
    "update_by_id",
]

#: UUID v5 namespace of all ids the EHR mappers derive (a fixed random UUID; never change it)
_NAMESPACE = uuid.UUID("5d0b3c5e-8f1e-4a53-9c1e-6f2b7d1a9e41")
_NAMESPACE_BYTES = _NAMESPACE.bytes

UCUM = "http://unitsofmeasure.org"
HPR_SYSTEM = "urn:oid:2.16.578.1.12.4.1.4.4"  # Helsepersonellregisteret (HPR-nummer)
LOCAL_SYSTEM_PREFIX = "urn:bigmed:id:"
#: marker in authority tables: "a Norwegian person number; the number itself tells fnr/dnr/hnr"
NORWEGIAN_PERSON = "norwegian-person-number"

#: assigning authorities (HL7 v2 CX-4/XCN-9 namespace, or identifier type CX-5), upper case -> system
KNOWN_AUTHORITIES: dict[str, str] = {
    "FNR": NORWEGIAN_PERSON,
    "DNR": NORWEGIAN_PERSON,
    "HNR": NORWEGIAN_PERSON,
    "FHNR": NORWEGIAN_PERSON,
    "NOR": NORWEGIAN_PERSON,
    "NNNOR": NORWEGIAN_PERSON,
    "FREG": NORWEGIAN_PERSON,
    "FOLKEREGISTERET": NORWEGIAN_PERSON,
    SYSTEMS[IdKind.FNR]: NORWEGIAN_PERSON,
    SYSTEMS[IdKind.DNR]: NORWEGIAN_PERSON,
    SYSTEMS[IdKind.HNR]: NORWEGIAN_PERSON,
    "HPR": HPR_SYSTEM,
    "SSN": "http://hl7.org/fhir/sid/us-ssn",
    "SSA": "http://hl7.org/fhir/sid/us-ssn",
    "NPI": "http://hl7.org/fhir/sid/us-npi",
}


@dataclass(frozen=True, slots=True)
class Problem:
    """One finding about a record: where (``PID-3[2]``, ``line 7, column birth_date``) and why."""

    location: str
    reason: str
    severity: str = "error"  # error | warning | info
    #: HL7 v2 table 0357 message error condition code, for the ERR segment of an ACK
    code: str = "207"

    def __str__(self) -> str:
        return f"{self.location}: {self.reason}" if self.location else self.reason


@dataclass(slots=True)
class Quarantined:
    """A record that was not mapped, with everything needed to report, fix and resend it."""

    source: str
    #: message index in the stream (HL7 v2, 0-based) or line number in the file (CSV, 1-based)
    record: int
    problem: Problem
    raw: str
    control_id: str | None = None
    message_type: str | None = None
    #: acknowledgment code the sender should get: AE (error in the data) or AR (rejected: unsupported)
    ack_code: str = "AE"
    warnings: list[Problem] = field(default_factory=list)
    #: the parsed message (HL7 v2), for building its ACK
    message: Any = None

    @property
    def reason(self) -> str:
        return self.problem.reason

    @property
    def location(self) -> str:
        return self.problem.location

    def report(self) -> dict[str, Any]:
        """A JSON-ready report line."""
        out: dict[str, Any] = {
            "source": self.source,
            "record": self.record,
            "location": self.problem.location,
            "reason": self.problem.reason,
        }
        if self.control_id is not None:
            out["control_id"] = self.control_id
        if self.message_type is not None:
            out["message_type"] = self.message_type
        return out


def fhir_id(*parts: str) -> str:
    """A deterministic resource id (UUID v5, RFC 4122 4.3) for the given key parts.

    Same value as ``str(uuid.uuid5(namespace, "\\x1f".join(parts)))``, computed without the UUID
    object (this runs for every resource mapped).
    """
    digest = bytearray(
        hashlib.sha1(_NAMESPACE_BYTES + "\x1f".join(parts).encode("utf-8")).digest()[:16]
    )  # UUID v5 is defined on SHA-1
    digest[6] = (digest[6] & 0x0F) | 0x50
    digest[8] = (digest[8] & 0x3F) | 0x80
    h = digest.hex()
    return f"{h[:8]}-{h[8:12]}-{h[12:16]}-{h[16:20]}-{h[20:]}"


def _escape_search_value(value: str) -> str:
    # FHIR search escaping (http://hl7.org/fhir/R4/search.html#escaping) then URL encoding
    escaped = value.replace("\\", "\\\\").replace("|", "\\|").replace(",", "\\,").replace("$", "\\$")
    return quote(escaped, safe=":/.-_~\\@")


@functools.lru_cache(maxsize=8192)
def identifier_query(system: str | None, value: str) -> str:
    """The ``identifier=system|value`` search for a token (system escaped and encoded)."""
    if system:
        return f"identifier={_escape_search_value(system)}|{_escape_search_value(value)}"
    return f"identifier={_escape_search_value(value)}"


@functools.lru_cache(maxsize=1024)
def local_system(authority: str) -> str:
    """The system of identifiers from an authority not in the known tables: ``urn:bigmed:id:<authority>``."""
    return LOCAL_SYSTEM_PREFIX + quote(authority.strip(), safe="-._~:")


def _full_url(method: str, url: str) -> str:
    return "urn:uuid:" + fhir_id("entry", method, url)


def update_by_id(resource: dict[str, Any]) -> dict[str, Any]:
    """``PUT Type/id`` (the id is deterministic, so a repeat overwrites with identical content)."""
    url = f"{resource['resourceType']}/{resource['id']}"
    return {"fullUrl": "urn:uuid:" + resource["id"], "resource": resource, "request": {"method": "PUT", "url": url}}


def conditional_update(resource: dict[str, Any], system: str | None, value: str) -> dict[str, Any]:
    """``PUT Type?identifier=system|value``: update the match, or create when there is none."""
    url = f"{resource['resourceType']}?{identifier_query(system, value)}"
    return {"fullUrl": _full_url("PUT", url), "resource": resource, "request": {"method": "PUT", "url": url}}


def conditional_create(resource: dict[str, Any], system: str | None, value: str) -> dict[str, Any]:
    """``POST Type`` with ``ifNoneExist``: create only when no resource has this identifier."""
    rtype = resource["resourceType"]
    query = identifier_query(system, value)
    return {
        "fullUrl": _full_url("POST", f"{rtype}?{query}"),
        "resource": resource,
        "request": {"method": "POST", "url": rtype, "ifNoneExist": query},
    }


def transaction_bundle(entries: list[dict[str, Any]]) -> dict[str, Any]:
    """A ``transaction`` Bundle of the entries (stored atomically, all or nothing)."""
    return {"resourceType": "Bundle", "type": "transaction", "entry": entries}


#: UCUM codes for unit spellings laboratories send (keys lower case)
_UCUM: dict[str, str] = {
    u.lower(): u
    for u in (
        "%",
        "/min",
        "/uL",
        "10*9/L",
        "10*12/L",
        "10*6/L",
        "[IU]/L",
        "Cel",
        "L",
        "U/L",
        "a",
        "cm",
        "d",
        "fL",
        "g",
        "g/L",
        "g/dL",
        "h",
        "kPa",
        "kg",
        "kg/m2",
        "m[IU]/L",
        "mL",
        "mL/min",
        "mL/min/{1.73_m2}",
        "mg",
        "mg/L",
        "mg/dL",
        "mg/mmol",
        "mm",
        "mm/h",
        "mm[Hg]",
        "mmol/L",
        "mmol/mol",
        "mol/L",
        "nmol/L",
        "ng/L",
        "ng/mL",
        "pg",
        "pmol/L",
        "s",
        "ug/L",
        "umol/L",
        "{ratio}",
    )
}
_UCUM |= {
    "µmol/l": "umol/L",
    "μmol/l": "umol/L",
    "µg/l": "ug/L",
    "10^9/l": "10*9/L",
    "x10^9/l": "10*9/L",
    "10e9/l": "10*9/L",
    "x10e9/l": "10*9/L",
    "10^12/l": "10*12/L",
    "x10^12/l": "10*12/L",
    "10e12/l": "10*12/L",
    "x10e12/l": "10*12/L",
    "mmhg": "mm[Hg]",
    "iu/l": "[IU]/L",
    "miu/l": "m[IU]/L",
    "sec": "s",
    "bpm": "/min",
    "°c": "Cel",
    "degc": "Cel",
    "ml/min/1.73m2": "mL/min/{1.73_m2}",
    "years": "a",
}


def ucum_code(unit: str) -> str | None:
    """The UCUM code (http://unitsofmeasure.org) for a unit as laboratories write it, or None."""
    return _UCUM.get(unit.strip().lower())
