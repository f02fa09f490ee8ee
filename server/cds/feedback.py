"""CDS Hooks feedback (https://cds-hooks.hl7.org/2.0/#feedback): stored, and queryable by service and card.

``POST /cds-services/{id}/feedback`` with ``{"feedback": [...]}``; each item needs ``card`` (the
card's uuid), ``outcome`` (``accepted`` | ``overridden``) and ``outcomeTimestamp``; ``accepted``
may list ``acceptedSuggestions`` (``[{"id": uuid}]``), ``overridden`` may carry an
``overrideReason`` (``reason`` Coding, ``userComment``). The whole request is checked before
anything is stored (400 otherwise), then every item is written in one transaction.

Storage: each item is a FHIR ``Basic`` resource (http://hl7.org/fhir/R4/basic.html) in the
server's own store — versioned and audited like everything else, and found with the ordinary
search machinery: ``code`` :data:`FEEDBACK_CODE`, identifiers ``urn:bigmed:cds-service|<id>``
and ``urn:bigmed:cds-card|<uuid>``, ``created`` the outcome date, and the item as received in the
extension :data:`ITEM_EXTENSION` (``valueString``, JSON). :func:`query` lists them (newest first).
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from typing import Any

from server import jsonio
from server.cds.registry import service
from server.errors import BadRequest
from server.fhir import crud
from server.fhir.context import FhirContext
from server.fhir.resource import new_id
from server.search.query import build_sql, parse_search

__all__ = ["FEEDBACK_CODE", "ITEM_EXTENSION", "query", "store"]

FEEDBACK_SYSTEM = "http://bigmed.example/fhir/CodeSystem/cds"
FEEDBACK_CODE = {"system": FEEDBACK_SYSTEM, "code": "cds-feedback", "display": "CDS Hooks card feedback"}
ITEM_EXTENSION = "http://bigmed.example/fhir/StructureDefinition/cds-feedback-item"
SERVICE_SYSTEM = "urn:bigmed:cds-service"
CARD_SYSTEM = "urn:bigmed:cds-card"
_TIMESTAMP = re.compile(r"^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}(:\d{2}(\.\d+)?)?(Z|[+-]\d{2}:\d{2})$")
_MAX_ITEMS = 1000


def _check_item(i: int, item: Any) -> None:
    where = f"feedback[{i}]"
    if not isinstance(item, Mapping):
        raise BadRequest(f"{where} must be an object")
    if not isinstance(item.get("card"), str) or not item["card"]:
        raise BadRequest(f"{where}.card (the card's uuid) is required")
    if item.get("outcome") not in ("accepted", "overridden"):
        raise BadRequest(f"{where}.outcome must be 'accepted' or 'overridden'")
    if not isinstance(item.get("outcomeTimestamp"), str) or not _TIMESTAMP.match(item["outcomeTimestamp"]):
        raise BadRequest(f"{where}.outcomeTimestamp must be an ISO 8601 instant with a time zone")
    accepted = item.get("acceptedSuggestions")
    if accepted is not None:
        if item["outcome"] != "accepted":
            raise BadRequest(f"{where}: acceptedSuggestions only go with outcome 'accepted'")
        if not isinstance(accepted, list) or not all(
            isinstance(a, Mapping) and isinstance(a.get("id"), str) for a in accepted
        ):
            raise BadRequest(f"{where}.acceptedSuggestions must be [{{'id': uuid}}, …]")
    reason = item.get("overrideReason")
    if reason is not None:
        if item["outcome"] != "overridden":
            raise BadRequest(f"{where}: overrideReason only goes with outcome 'overridden'")
        if not isinstance(reason, Mapping) or ("reason" in reason and not isinstance(reason["reason"], Mapping)):
            raise BadRequest(f"{where}.overrideReason must be {{'reason': Coding, 'userComment': string}}")


def store(ctx: FhirContext, service_id: str, body: Any) -> list[str]:
    """Store every feedback item of ``body`` (all or none); returns the ids of the Basic resources."""
    service(service_id)
    if not isinstance(body, Mapping) or not isinstance(body.get("feedback"), list) or not body["feedback"]:
        raise BadRequest("Feedback is {'feedback': [ … ]} with at least one item")
    items = body["feedback"]
    if len(items) > _MAX_ITEMS:
        raise BadRequest(f"At most {_MAX_ITEMS} feedback items per request")
    for i, item in enumerate(items):
        _check_item(i, item)
    resources = []
    for item in items:
        resources.append(
            (
                new_id(),
                {
                    "resourceType": "Basic",
                    "identifier": [
                        {"system": SERVICE_SYSTEM, "value": service_id},
                        {"system": CARD_SYSTEM, "value": item["card"]},
                    ],
                    "code": {"coding": [FEEDBACK_CODE], "text": f"{item['outcome']} card of {service_id}"},
                    "created": item["outcomeTimestamp"][:10],
                    "extension": [{"url": ITEM_EXTENSION, "valueString": json.dumps(item, ensure_ascii=False)}],
                },
            )
        )

    def write(tx: Any) -> list[str]:
        return [crud.write_in_tx(ctx, tx, "Basic", id_, res, "POST").resource.id for id_, res in resources]

    return crud.retrying(ctx, write)


def query(ctx: FhirContext, service_id: str, card: str | None = None, limit: int = 1000) -> dict[str, Any]:
    """``{"feedback": [...]}``: the stored items of a service (of one card), newest first, each with ``id``."""
    service(service_id)
    pairs = [("code", f"{FEEDBACK_SYSTEM}|cds-feedback"), ("identifier", f"{SERVICE_SYSTEM}|{service_id}")]
    if card:
        pairs.append(("identifier", f"{CARD_SYSTEM}|{card}"))
    parsed = parse_search(ctx.registry, "Basic", pairs, strict=True)
    sql, params = build_sql(parsed)
    rids = [int(r[0]) for r in ctx.store.query(sql, params)]
    out = []
    for res in ctx.store.read_many(rids[-limit:]):
        if res.content is None:
            continue
        doc = jsonio.loads(res.content)
        ext = next((e for e in doc.get("extension") or () if e.get("url") == ITEM_EXTENSION), None)
        if ext is None:
            continue
        item = json.loads(ext["valueString"])
        item["id"] = res.id
        item["received"] = (doc.get("meta") or {}).get("lastUpdated")
        out.append(item)
    out.sort(key=lambda x: (x.get("outcomeTimestamp") or "", x.get("received") or ""), reverse=True)
    return {"feedback": out}
