"""The search interaction: type, system and compartment level (http://hl7.org/fhir/R4/http.html#search).

``GET [base]/[type]?…`` (and ``POST [base]/[type]/_search``), ``GET [base]?_type=A,B&…`` /
``GET [base]?…`` (system level: common parameters, or those every ``_type`` defines) and
``GET [base]/[Compartment]/[id]/[type]?…`` (compartments, ``*`` for every member type;
http://hl7.org/fhir/R4/compartmentdefinition.html). Parsing and SQL live in
:mod:`server.search.query`; this module runs the queries and assembles the ``searchset`` Bundle
(http://hl7.org/fhir/R4/search.html):

* paging (#count): keyset cursors (``_cursor``, see the :mod:`server.search.query` docstring)
  with ``self``, ``first``, ``next`` and ``previous`` links that stay correct while data changes;
* ``_total`` (#total): ``accurate`` counts; ``estimate`` (the default) and ``none`` only report
  a total when the first page holds every match (no extra query);
* ``_include`` / ``_revinclude`` (#include) for the page's matches, ``:iterate`` repeated on what
  was included (at most ``MAX_INCLUDE_ROUNDS`` rounds and ``MAX_INCLUDED`` resources; reaching
  a limit is reported in the OperationOutcome entry);
* ``_summary`` and ``_elements`` (#summary, #elements) on every entry; ``_contained`` is not
  supported (only ``false``).

Unknown or unsupported parameters are ignored and reported in an OperationOutcome entry (mode
``outcome``); with ``strict`` (``Prefer: handling=strict``) they are a 400.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any
from urllib.parse import urlencode

from server import jsonio
from server.auth.access import current_access
from server.errors import BadRequest, Issue, NotFound, operation_outcome
from server.fhir import guard
from server.fhir.bundle import fragment, searchset_bundle
from server.fhir.context import FhirContext
from server.fhir.resource import check_type
from server.fhir.subset import subset
from server.search.compartments import compartments
from server.search.query import (
    Clause,
    Cursor,
    IncludeSpec,
    ParsedSearch,
    compartment_clause,
    count_sql,
    include_sql,
    page_sql,
    parse_search,
    range_size,
    revinclude_sql,
)
from server.store.base import StoredResource

__all__ = ["MAX_INCLUDED", "MAX_INCLUDE_ROUNDS", "run_parsed", "search", "search_compartment", "search_system"]

MAX_INCLUDED = 5000
MAX_INCLUDE_ROUNDS = 8
_CHUNK = 500

Row = tuple[int, str, str]  # rid, type, id


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
    """Type-level search: ``GET [base]/[type]?params``."""
    check_type(type_)
    guard.searchable(type_)
    parsed = parse_search(ctx.registry, type_, params, strict=strict)
    _patient_scope(parsed, [type_])
    return _run(ctx, base, type_, parsed, params)


def _patient_scope(parsed: ParsedSearch, types: Sequence[str]) -> None:
    """A patient-level client searches only its patient's compartment (types outside it are not patient data)."""
    patient = current_access().patient
    if patient is None:
        return
    comp = compartments()["Patient"]
    parts = [(t, compartment_clause(comp, patient, t)) for t in types if comp.params_for(t)]
    if len(types) == 1:
        if parts:
            parsed.clauses.insert(0, parts[0][1])
        return
    inside = {t for t, _ in parts}
    sql = " OR ".join(
        [f"(r.res_type = ? AND {p.sql})" for _, p in parts] + ["r.res_type = ?" for t in types if t not in inside]
    )
    args = [x for t, p in parts for x in (t, *p.params)] + [t for t in types if t not in inside]
    parsed.clauses.insert(0, Clause(f"({sql})", args))


def _allowed_types(ctx: FhirContext, wanted: list[str] | None) -> list[str] | None:
    """The types a system-level search may cover: all wanted ones must be granted (403), else the granted ones."""
    access = current_access()
    if access.unrestricted:
        return wanted
    if wanted is not None:
        for t in wanted:
            guard.searchable(t)
        return wanted
    return access.allowed_types("s", sorted(ctx.registry.resource_types()))


def search_system(
    ctx: FhirContext, base: str, params: Sequence[tuple[str, str]], strict: bool = False
) -> dict[str, Any]:
    """System-level search: ``GET [base]?_type=A,B&params`` (no ``_type``: every type)."""
    types: list[str] | None = None
    for key, raw in params:
        if key == "_type":
            types = [*(types or []), *(t.strip() for t in raw.split(",") if t.strip())]
    if types is not None:
        for t in types:
            if t not in ctx.registry.resource_types():
                raise BadRequest(f"_type: unknown resource type '{t}'")
        types = list(dict.fromkeys(types))
    types = _allowed_types(ctx, types)
    if types == []:
        guard.searchable("*")  # nothing granted: 403
    parsed = parse_search(ctx.registry, None, params, strict=strict, types=types)
    if types is not None:
        _patient_scope(parsed, types)
    return _run(ctx, base, "", parsed, params)


def search_compartment(
    ctx: FhirContext,
    base: str,
    compartment: str,
    owner_id: str,
    type_: str,
    params: Sequence[tuple[str, str]],
    strict: bool = False,
) -> dict[str, Any]:
    """Compartment search: ``GET [base]/[Compartment]/[id]/[type]?params`` (``*``: every member type)."""
    comp = compartments().get(compartment)
    if comp is None:
        raise NotFound(f"There is no {compartment} compartment (compartments: {', '.join(compartments())})")
    path = f"{compartment}/{owner_id}/{type_}"
    if type_ == "*":
        members = sorted(t for t in ctx.registry.resource_types() if comp.params_for(t))
        wanted = {t.strip() for key, raw in params if key == "_type" for t in raw.split(",")}
        if wanted:
            members = [t for t in members if t in wanted]
        members = _allowed_types(ctx, members) or []
        if not members:
            guard.searchable("*")  # nothing granted: 403
        parsed = parse_search(ctx.registry, None, params, strict=strict, types=members)
        parts = [compartment_clause(comp, owner_id, t) for t in members]
        sql = " OR ".join(f"(r.res_type = ? AND {p.sql})" for p in parts)
        parsed.clauses.insert(
            0, Clause(f"({sql})", [x for t, p in zip(members, parts, strict=True) for x in (t, *p.params)])
        )
        _patient_scope(parsed, members)
        return _run(ctx, base, path, parsed, params)
    check_type(type_)
    guard.searchable(type_)
    parsed = parse_search(ctx.registry, type_, params, strict=strict)
    parsed.clauses.insert(0, compartment_clause(comp, owner_id, type_))
    _patient_scope(parsed, [type_])
    return _run(ctx, base, path, parsed, params)


def run_parsed(
    ctx: FhirContext, base: str, path: str, parsed: ParsedSearch, params: Sequence[tuple[str, str]]
) -> dict[str, Any]:
    """Page a search another interaction built (``$everything``): ``parsed`` selects, ``params`` make the links."""
    return _run(ctx, base, path, parsed, params)


def _link(base: str, path: str, params: Sequence[tuple[str, str]], cursor: str | None) -> str:
    kept = [(k, v) for k, v in params if k != "_cursor"]
    if cursor:
        kept.append(("_cursor", cursor))
    url = f"{base}/{path}" if path else base
    return f"{url}?{urlencode(kept)}" if kept else url


def _run(
    ctx: FhirContext, base: str, path: str, parsed: ParsedSearch, params: Sequence[tuple[str, str]]
) -> dict[str, Any]:
    control = parsed.control
    summary = _one(control, "_summary")
    total_mode = _one(control, "_total") or "estimate"
    if total_mode not in ("none", "estimate", "accurate"):
        raise BadRequest(f"_total must be none, estimate or accurate, not '{total_mode}'")
    count = _int(_one(control, "_count"), "_count")
    count = ctx.config.default_page_size if count is None else min(count, ctx.config.max_page_size)
    cursor_raw = _one(control, "_cursor")
    cursor = Cursor.decode(cursor_raw) if cursor_raw else None
    elements_raw = _one(control, "_elements")
    elements = [e.split(".")[-1] for e in elements_raw.split(",")] if elements_raw else None

    total: int | None = None
    rows: list[tuple[Any, ...]] = []
    if summary == "count" or count == 0 or total_mode == "accurate":
        sql, args = count_sql(parsed)
        total = int(ctx.store.query(sql, args)[0][0])
    has_next = has_previous = False
    if summary != "count" and count > 0:
        sql, args = page_sql(parsed, cursor, count + 1, range_size(ctx.store.query))
        rows = ctx.store.query(sql, args)
        more = len(rows) > count
        rows = rows[:count]
        if cursor is not None and cursor.backward:
            rows.reverse()
            has_previous, has_next = more, True
        else:
            has_previous, has_next = cursor is not None, more
    if total is None and cursor is None and not has_next and total_mode != "none" and summary != "count":
        total = len(rows)

    stored = [r for r in ctx.store.read_many([int(r[0]) for r in rows]) if not r.deleted and r.content is not None]
    stored = guard.visible_resources(stored)  # scopes and compartment, again (defence in depth)
    notes: list[Issue] = []
    included: list[StoredResource] = []
    if parsed.includes and stored:
        included, notes = _includes(ctx, parsed.includes, stored)
        # _include/_revinclude may reach types the token does not grant, or other patients: left out
        included = guard.visible_resources(included)

    def body(res: StoredResource) -> Any:
        if summary in (None, "false") and not elements:
            return fragment(res)
        assert res.content is not None
        return subset(jsonio.loads(res.content), summary, elements)

    links = [("self", _link(base, path, params, cursor_raw))]
    if cursor is not None:
        links.append(("first", _link(base, path, params, None)))
    if rows and has_previous:
        first = rows[0]
        links.append(("previous", _link(base, path, params, Cursor(tuple(first[3:]), int(first[0]), True).encode())))
    if rows and has_next:
        last = rows[-1]
        links.append(("next", _link(base, path, params, Cursor(tuple(last[3:]), int(last[0])).encode())))
    warnings = parsed.warnings() + notes
    outcome = operation_outcome(warnings, "not-supported") if warnings else None
    return searchset_bundle(
        base,
        [(r, body(r)) for r in stored],
        [(r, body(r)) for r in included],
        total,
        links,
        outcome,
    )


def _includes(
    ctx: FhirContext, specs: Sequence[IncludeSpec], matches: Sequence[StoredResource]
) -> tuple[list[StoredResource], list[Issue]]:
    """Resources to add for ``_include``/``_revinclude``; ``:iterate`` specs also follow what they add."""
    seen = {m.rid for m in matches}
    frontier: list[Row] = [(m.rid, m.type, m.id) for m in matches]
    found: list[Row] = []
    notes: list[Issue] = []
    for round_ in range(MAX_INCLUDE_ROUNDS + 1):
        active = list(specs) if round_ == 0 else [s for s in specs if s.iterate]
        if not active or not frontier:
            break
        if round_ == MAX_INCLUDE_ROUNDS:
            notes.append(Issue(f"_include:iterate stopped after {MAX_INCLUDE_ROUNDS} rounds", "warning", "incomplete"))
            break
        new: list[Row] = []
        for spec in active:
            for row in _follow(ctx, spec, frontier):
                if row[0] not in seen:
                    seen.add(row[0])
                    new.append(row)
        found += new
        frontier = new
        if len(found) >= MAX_INCLUDED:
            found = found[:MAX_INCLUDED]
            notes.append(
                Issue(f"Only the first {MAX_INCLUDED} included resources are returned", "warning", "too-costly")
            )
            break
    resources = ctx.store.read_many([r[0] for r in found])
    return [r for r in resources if not r.deleted and r.content is not None], notes


def _follow(ctx: FhirContext, spec: IncludeSpec, frontier: Sequence[Row]) -> list[Row]:
    out: list[Row] = []
    if not spec.reverse:
        sources = [rid for rid, type_, _ in frontier if spec.source in (None, type_)]
        for start in range(0, len(sources), _CHUNK):
            sql, args = include_sql(spec, sources[start : start + _CHUNK])
            out += [(int(r[0]), str(r[1]), str(r[2])) for r in ctx.store.query(sql, args)]
        return out
    by_type: dict[str, list[str]] = {}
    for _, type_, id_ in frontier:
        if spec.target in (None, type_):
            by_type.setdefault(type_, []).append(id_)
    for type_, ids in by_type.items():
        for start in range(0, len(ids), _CHUNK):
            sql, args = revinclude_sql(spec, type_, ids[start : start + _CHUNK], ctx.registry)
            out += [(int(r[0]), str(r[1]), str(r[2])) for r in ctx.store.query(sql, args)]
    return out
