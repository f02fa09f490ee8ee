"""Resource-level rules shared by the write interactions (http://hl7.org/fhir/R4/resource.html).

Checks a submitted resource (type, id syntax and agreement with the URL, validation),
stamps ``meta.versionId``/``meta.lastUpdated`` and renders the stored JSON. The client's own
content is kept as sent: only ``id`` and ``meta`` are touched.
"""

from __future__ import annotations

import os
import re
import time
import uuid
from datetime import UTC, datetime
from typing import Any

from server.errors import BadRequest, Invalid, Issue, NotFound
from server.fhir.validation import resource_types, validate_resource

__all__ = [
    "check_id",
    "check_resource",
    "check_type",
    "instant",
    "new_id",
    "stamp",
]

_ID_RE = re.compile(r"^[A-Za-z0-9\-.]{1,64}$")


def check_type(type_: str) -> None:
    """A resource type in a URL must be one this server serves (all of R4)."""
    if type_ not in resource_types():
        raise NotFound(f"Unknown resource type '{type_}': this server serves the FHIR R4 resource types")


def check_id(id_: str) -> None:
    if not _ID_RE.match(id_):
        raise BadRequest(f"Invalid resource id '{id_[:80]}': ids are 1-64 characters of A-Z a-z 0-9 - .")


def new_id() -> str:
    """A server-assigned id: a UUID version 7 (RFC 9562 5.7), its first 48 bits the Unix time in ms.

    Unlike random (version 4) uuids, ids assigned one after another ascend (within one
    millisecond in random order), so the store's B-trees keyed by id, the resources' and the
    references to them, grow at their end instead of at a random page per resource: the way
    HAPI FHIR's sequential ids behave for the database, without revealing a count.
    """
    ms = time.time_ns() // 1_000_000
    rand = int.from_bytes(os.urandom(10), "big")  # 80 random bits: 12 for rand_a, 62 for rand_b
    value = (ms & (2**48 - 1)) << 80 | 0x7 << 76 | (rand >> 68) << 64 | 0b10 << 62 | (rand & (2**62 - 1))
    return str(uuid.UUID(int=value))


def instant(ts: float) -> str:
    """FHIR instant (UTC, millisecond precision) of an epoch timestamp."""
    return datetime.fromtimestamp(ts, UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def check_resource(resource: Any, type_: str, id_: str | None, *, lenient: bool, need_id: bool = False) -> None:
    """Check a submitted body against the interaction's URL, then validate it (raises on errors).

    ``id_`` is the id from the URL (update, patch) or None (create: the server assigns one and
    ignores any id in the body, as http.html#create says).
    """
    if not isinstance(resource, dict):
        raise BadRequest("The body must be a JSON object holding one FHIR resource")
    body_type = resource.get("resourceType")
    if body_type != type_:
        raise BadRequest(
            f"The body's resourceType '{body_type}' does not match the URL's resource type '{type_}'"
            if body_type
            else "The body has no resourceType"
        )
    if id_ is not None:
        body_id = resource.get("id")
        if body_id is None and need_id:
            raise BadRequest(f"The resource must carry the id from the URL ('{id_}') in its id element")
        if body_id is not None and body_id != id_:
            raise BadRequest(f"The resource id '{body_id}' does not match the id in the URL '{id_}'")
    issues = validate_resource(resource, lenient=lenient)
    errors = [i for i in issues if i.severity in ("error", "fatal")]
    if errors:
        raise Invalid(
            f"{type_} is not valid: {len(errors)} problem(s)",
            [Issue(i.diagnostics, "error", i.code, tuple(i.expression)) for i in errors],
        )


def stamp(resource: dict[str, Any], id_: str, version: int, ts: float) -> dict[str, Any]:
    """Set id and the server-owned meta elements (versionId, lastUpdated) in place."""
    resource["id"] = id_
    meta = resource.get("meta")
    meta = dict(meta) if isinstance(meta, dict) else {}
    meta["versionId"] = str(version)
    meta["lastUpdated"] = instant(ts)
    resource["meta"] = meta
    return resource
