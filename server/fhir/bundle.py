"""Bundles the server returns: history and searchset (http://hl7.org/fhir/R4/bundle.html).

Stored resources are already JSON; a Bundle embeds their bytes with ``orjson.Fragment`` instead
of parsing and re-serialising each one, so a page of 100 resources costs one serialisation.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterable, Sequence
from datetime import UTC, datetime
from email.utils import format_datetime
from typing import Any

import orjson

from server.fhir.resource import instant
from server.store.base import HistoryEntry, StoredResource

__all__ = ["etag", "fragment", "history_bundle", "http_date", "resource_url", "searchset_bundle"]


def http_date(ts: float) -> str:
    """RFC 7231 date of an epoch timestamp (Last-Modified)."""
    return format_datetime(datetime.fromtimestamp(ts, UTC), usegmt=True)


def etag(version: int) -> str:
    return f'W/"{version}"'


def resource_url(base: str, res: StoredResource) -> str:
    return f"{base}/{res.type}/{res.id}"


def fragment(res: StoredResource) -> Any:
    """The stored JSON of a resource, for embedding in a larger document without re-parsing."""
    assert res.content is not None
    return orjson.Fragment(res.content)


def _links(links: Sequence[tuple[str, str]]) -> list[dict[str, str]]:
    return [{"relation": rel, "url": url} for rel, url in links]


def history_bundle(
    base: str, entries: Iterable[HistoryEntry], total: int | None, links: Sequence[tuple[str, str]]
) -> dict[str, Any]:
    out: list[dict[str, Any]] = []
    for e in entries:
        res = e.resource
        url = f"{res.type}/{res.id}"
        entry: dict[str, Any] = {"fullUrl": f"{base}/{url}"}
        if not res.deleted:
            entry["resource"] = fragment(res)
        status = {"POST": "201 Created", "DELETE": "204 No Content"}.get(e.method, "200 OK")
        if e.method == "PUT" and res.version == 1:
            status = "201 Created"
        entry["request"] = {"method": e.method, "url": url if e.method != "POST" else res.type}
        entry["response"] = {"status": status, "etag": etag(res.version), "lastModified": instant(res.ts)}
        out.append(entry)
    bundle: dict[str, Any] = {
        "resourceType": "Bundle",
        "id": str(uuid.uuid4()),
        "meta": {"lastUpdated": instant(datetime.now(UTC).timestamp())},
        "type": "history",
    }
    if total is not None:
        bundle["total"] = total
    bundle["link"] = _links(links)
    bundle["entry"] = out
    return bundle


def searchset_bundle(
    base: str,
    matches: Iterable[Any],
    included: Iterable[Any],
    total: int | None,
    links: Sequence[tuple[str, str]],
    outcome: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """``matches``/``included`` are (StoredResource, resource JSON or Fragment) pairs."""
    entries: list[dict[str, Any]] = []
    for mode, items in (("match", matches), ("include", included)):
        for res, body in items:
            entries.append({"fullUrl": resource_url(base, res), "resource": body, "search": {"mode": mode}})
    if outcome is not None:
        entries.append({"resource": outcome, "search": {"mode": "outcome"}})
    bundle: dict[str, Any] = {
        "resourceType": "Bundle",
        "id": str(uuid.uuid4()),
        "meta": {"lastUpdated": instant(datetime.now(UTC).timestamp())},
        "type": "searchset",
    }
    if total is not None:
        bundle["total"] = total
    bundle["link"] = _links(links)
    bundle["entry"] = entries
    return bundle
