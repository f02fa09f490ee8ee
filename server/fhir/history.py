"""History at instance, type and system level (http://hl7.org/fhir/R4/http.html#history).

Newest first, with ``_since`` (an instant) and ``_count``; pages are cut on the history
sequence number (``_cursor``), so a page stays correct while new versions are written. The
Bundle's ``total`` is the number of versions matching ``_since`` at the time of the request.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any
from urllib.parse import urlencode

from server.errors import BadRequest, NotFound
from server.fhir import guard
from server.fhir.bundle import history_bundle
from server.fhir.context import FhirContext
from server.fhir.resource import check_type
from server.search.query import date_range

__all__ = ["history"]


def _int_param(params: Mapping[str, str], name: str, default: int | None) -> int | None:
    raw = params.get(name)
    if raw is None or raw == "":
        return default
    if not raw.isdigit():
        raise BadRequest(f"{name} must be a non-negative integer, not '{raw}'")
    return int(raw)


def history(
    ctx: FhirContext, base: str, params: Mapping[str, str], type_: str | None = None, id_: str | None = None
) -> dict[str, Any]:
    if type_ is not None:
        check_type(type_)
    guard.history_allowed(ctx, type_, id_)  # r on the type (all types at system level); compartment
    count = _int_param(params, "_count", ctx.config.default_page_size) or ctx.config.default_page_size
    count = min(count, ctx.config.max_page_size)
    cursor = _int_param(params, "_cursor", None)
    since: float | None = None
    if params.get("_since"):
        try:
            since = date_range(params["_since"])[0]
        except ValueError as exc:
            raise BadRequest(f"_since must be an instant: {exc}") from exc
    entries = ctx.store.history(type_, id_, since=since, before_seq=cursor, limit=count + 1)
    if id_ is not None and not entries and cursor is None and ctx.store.read(type_ or "", id_) is None:
        raise NotFound(f"{type_}/{id_} is not known")
    more = len(entries) > count
    entries = entries[:count]
    path = "/".join(p for p in (base, type_, id_, "_history") if p)
    keep = {k: v for k, v in params.items() if k in ("_since", "_count")}
    links = [("self", f"{path}?{urlencode({**keep, **({'_cursor': cursor} if cursor else {})})}".rstrip("?"))]
    if more:
        links.append(("next", f"{path}?{urlencode({**keep, '_cursor': entries[-1].seq})}"))
    total = ctx.store.count_history(type_, id_, since)
    return history_bundle(base, entries, total, links)
