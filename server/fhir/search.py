"""The search interaction at type level (http://hl7.org/fhir/R4/http.html#search, search.html).

Parses the query against the registry (:mod:`server.search.query`), pages with a keyset
cursor (``_cursor``, the last internal row id of the page) so pages stay correct while data
changes, and answers a ``searchset`` Bundle. ``_total``: ``accurate`` counts, ``none`` and
``estimate`` (the default) count only when the whole result fits on the first page.
Unknown parameters are ignored and reported in an OperationOutcome entry (mode ``outcome``);
with ``strict`` they are a 400.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any
from urllib.parse import urlencode

from server import jsonio
from server.errors import BadRequest, operation_outcome
from server.fhir.bundle import fragment, searchset_bundle
from server.fhir.context import FhirContext
from server.fhir.resource import check_type
from server.fhir.subset import subset
from server.search.query import build_sql, count_sql, parse_search

__all__ = ["search"]


def _one(control: dict[str, list[str]], name: str) -> str | None:
    values = control.get(name)
    return values[-1] if values else None


def _int(value: str | None, name: str) -> int | None:
    if value is None or value == "":
        return None
    if not value.isdigit():
        raise BadRequest(f"{name} must be a non-negative integer, not '{value}'")
    return int(value)


def search(
    ctx: FhirContext, base: str, type_: str, params: Sequence[tuple[str, str]], strict: bool = False
) -> dict[str, Any]:
    check_type(type_)
    parsed = parse_search(ctx.registry, type_, params, strict=strict)
    control = parsed.control
    summary = _one(control, "_summary")
    total_mode = _one(control, "_total") or "estimate"
    if total_mode not in ("none", "estimate", "accurate"):
        raise BadRequest(f"_total must be none, estimate or accurate, not '{total_mode}'")
    count = _int(_one(control, "_count"), "_count")
    count = ctx.config.default_page_size if count is None else min(count, ctx.config.max_page_size)
    cursor = _int(_one(control, "_cursor"), "_cursor") or 0
    elements_raw = _one(control, "_elements")
    elements = [e.split(".")[-1] for e in elements_raw.split(",")] if elements_raw else None
    for name in ("_sort", "_include", "_revinclude"):
        if name in control:
            parsed.unknown.append(name)

    total: int | None = None
    rows: list[tuple[Any, ...]] = []
    if summary == "count" or count == 0 or total_mode == "accurate":
        sql, args = count_sql(parsed)
        total = int(ctx.store.query(sql, args)[0][0])
    if summary != "count" and count > 0:
        sql, args = build_sql(parsed, after_rid=cursor, limit=count + 1)
        rows = ctx.store.query(sql, args)
    more = len(rows) > count
    rows = rows[:count]
    if total is None and not more and not cursor and total_mode != "none":
        total = len(rows)

    stored = ctx.store.read_many([r[0] for r in rows])
    matches: list[tuple[Any, Any]] = []
    for res in stored:
        if summary in (None, "false") and not elements:
            matches.append((res, fragment(res)))
        else:
            assert res.content is not None
            matches.append((res, subset(jsonio.loads(res.content), summary, elements)))

    keep = [(k, v) for k, v in params if k != "_cursor"]
    self_params = [*keep, *([("_cursor", str(cursor))] if cursor else [])]
    links = [("self", f"{base}/{type_}?{urlencode(self_params)}".rstrip("?"))]
    if more:
        links.append(("next", f"{base}/{type_}?{urlencode([*keep, ('_cursor', str(rows[-1][0]))])}"))
    warnings = parsed.warnings()
    outcome = operation_outcome(warnings, "not-supported") if warnings else None
    return searchset_bundle(base, matches, (), total, links, outcome)
