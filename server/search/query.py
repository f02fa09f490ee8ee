"""Parsed search -> SQL over the index tables (http://hl7.org/fhir/R4/search.html).

A search is parsed against the registry (:mod:`server.search.registry`): every parameter is
looked up for the resource type and handled by its ``type`` — never by resource-type name.
Each parameter becomes one ``rid IN (…)`` clause on its index table (values of one parameter
are OR-ed, repeated parameters AND-ed). Results are current, non-deleted resources only.

Implemented here (the rest of the spec arrives with the search issue): string (default
starts-with, ``:exact``, ``:contains``), token (``code``, ``system|code``, ``|code``,
``system|``, ``:not``, ``:text``), reference (``Type/id``, ``id``, absolute URL, ``:[type]``),
date (prefixes eq ne gt lt ge le sa eb ap, partial precision as a range), number and quantity
(prefixes, implicit precision range), uri (``:below``, ``:above``), ``:missing`` on all of them,
and the common parameters (``_id`` on the resources table, ``_lastUpdated``, ``_tag``,
``_profile`` … through their index rows). Paging is keyset paging on the insertion order, which stays
correct while data changes.
"""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from decimal import Decimal, InvalidOperation
from typing import Any

from server.errors import BadRequest, Issue
from server.search.extract import date_range as extracted_date_range
from server.search.extract import normalize_string
from server.search.registry import Registry, SearchParam

__all__ = ["RESULT_PARAMS", "SUPPORTED_TYPES", "Clause", "ParsedSearch", "build_sql", "date_range", "parse_search"]

#: Result and control parameters (search.html#return); handled by the search interaction.
RESULT_PARAMS = frozenset(
    {
        "_count",
        "_sort",
        "_include",
        "_revinclude",
        "_summary",
        "_elements",
        "_total",
        "_contained",
        "_containedType",
        "_format",
        "_pretty",
        "_cursor",
        "_type",
    }
)

#: Parameter types this module searches; composite and special ones are reported as unsupported.
SUPPORTED_TYPES = frozenset({"string", "token", "reference", "date", "number", "quantity", "uri"})

_PREFIXES = ("eq", "ne", "gt", "lt", "ge", "le", "sa", "eb", "ap")
_BIG = 1e18


@dataclass
class Clause:
    """One parameter occurrence: a SQL condition on ``r`` (resources alias) and its values."""

    sql: str
    params: list[Any]


@dataclass
class ParsedSearch:
    resource_type: str
    clauses: list[Clause] = field(default_factory=list)
    unknown: list[str] = field(default_factory=list)
    control: dict[str, list[str]] = field(default_factory=dict)

    def warnings(self) -> list[Issue]:
        return [
            Issue(f"Unknown or unsupported search parameter '{name}' ignored", severity="warning", code="not-supported")
            for name in self.unknown
        ]


# -- value parsing -------------------------------------------------------------------------


def date_range(value: str) -> tuple[float, float]:
    """A FHIR date/dateTime/instant at its precision -> half-open UTC epoch range [low, high)."""
    found = extracted_date_range(value)
    if found is None:
        raise ValueError(f"'{value}' is not a valid date, dateTime or instant")
    return float(found[0]), float(found[1])


def _split_prefix(value: str) -> tuple[str, str]:
    if len(value) > 2 and value[:2] in _PREFIXES and (value[2].isdigit() or value[2] in "-+."):
        return value[:2], value[2:]
    return "eq", value


def _range_condition(prefix: str, lo_col: str, hi_col: str, low: Any, high: Any) -> tuple[str, list[Any]]:
    """Spec semantics of prefixes against a stored range [lo_col, hi_col) and a search range [low, high)."""
    if prefix == "eq":
        return f"({lo_col} >= ? AND {hi_col} <= ?)", [low, high]
    if prefix == "ne":
        return f"NOT ({lo_col} >= ? AND {hi_col} <= ?)", [low, high]
    if prefix == "gt":
        return f"{hi_col} > ?", [high]
    if prefix == "lt":
        return f"{lo_col} < ?", [low]
    if prefix == "ge":
        return f"{hi_col} > ?", [low]
    if prefix == "le":
        return f"{lo_col} < ?", [high]
    if prefix == "sa":
        return f"{lo_col} >= ?", [high]
    if prefix == "eb":
        return f"{hi_col} <= ?", [low]
    # ap: overlapping the search range widened by 10% of its distance from now (search.html#prefix)
    span = max(high - low, abs(time.time() - low) * 0.1)
    return f"({lo_col} < ? AND {hi_col} > ?)", [high + span, low - span]


def _number_condition(prefix: str, text: str) -> tuple[str, list[Any]]:
    """Prefixes on a stored point value (search.html#number): eq/ne use the implicit precision."""
    low, high = _number_range(text)
    exact = float(Decimal(text))
    if prefix == "eq":
        return "value >= ? AND value < ?", [float(low), float(high)]
    if prefix == "ne":
        return "NOT (value >= ? AND value < ?)", [float(low), float(high)]
    if prefix == "ap":
        margin = abs(exact) * 0.1
        return "value >= ? AND value <= ?", [exact - margin, exact + margin]
    op = {"gt": ">", "sa": ">", "lt": "<", "eb": "<", "ge": ">=", "le": "<="}[prefix]
    return f"value {op} ?", [exact]


def _number_range(text: str) -> tuple[Decimal, Decimal]:
    """Implicit precision of a number: 100 -> [99.5, 100.5), 1e2 -> [50, 150)."""
    try:
        value = Decimal(text)
    except InvalidOperation as exc:
        raise ValueError(f"'{text}' is not a number") from exc
    exponent = value.as_tuple().exponent
    half = Decimal(5).scaleb(int(exponent) - 1) if isinstance(exponent, int) else Decimal(0)
    return value - half, value + half


# -- per parameter type --------------------------------------------------------------------


def _index_subquery(table: str, param: str, res_type: str, condition: str, cparams: list[Any]) -> Clause:
    return Clause(
        f"r.rid IN (SELECT rid FROM idx_{table} WHERE param = ? AND res_type = ? AND ({condition}))",
        [param, res_type, *cparams],
    )


def _token_condition(value: str, modifier: str | None) -> tuple[str, list[Any]]:
    if modifier == "text":
        return "LOWER(text) LIKE ?", [normalize_string(value) + "%"]
    if "|" in value:
        system, code = value.split("|", 1)
        if system == "":
            return "(system IS NULL AND code = ?)", [code]
        if code == "":
            return "system = ?", [system]
        return "(system = ? AND code = ?)", [system, code]
    return "code = ?", [value]


def _reference_condition(value: str, modifier: str | None, sp: SearchParam) -> tuple[str, list[Any]]:
    if value.startswith(("http://", "https://", "urn:")):
        parts = value.rstrip("/").split("/")
        if len(parts) >= 2 and parts[-2][:1].isupper() and not value.startswith("urn:"):
            return "(url = ? OR (target_type = ? AND target_id = ?))", [value, parts[-2], parts[-1]]
        return "url = ?", [value]
    if "/" in value:
        target_type, target_id = value.split("/", 1)
        return "(target_type = ? AND target_id = ?)", [target_type, target_id]
    if modifier and modifier[:1].isupper():
        return "(target_type = ? AND target_id = ?)", [modifier, value]
    return "target_id = ?", [value]


def _condition(sp: SearchParam, value: str, modifier: str | None) -> tuple[str, str, list[Any]]:
    """(index table, SQL condition, params) for one value of one parameter."""
    kind = sp.type
    if kind == "string":
        if modifier == "exact":
            return "string", "exact = ?", [value]
        pattern = normalize_string(value).replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
        pattern = f"%{pattern}%" if modifier == "contains" else f"{pattern}%"
        return "string", "value LIKE ? ESCAPE '\\'", [pattern]
    if kind == "token":
        cond, params = _token_condition(value, modifier)
        return "token", cond, params
    if kind == "reference":
        cond, params = _reference_condition(value, modifier, sp)
        return "reference", cond, params
    if kind == "uri":
        if modifier == "below":
            return "uri", "value LIKE ?", [value.replace("%", "") + "%"]
        if modifier == "above":
            return "uri", "? LIKE value || '%'", [value]
        return "uri", "value = ?", [value]
    if kind == "date":
        prefix, text = _split_prefix(value)
        low, high = date_range(text)
        cond, params = _range_condition(prefix, "low", "high", low, high)
        return "date", cond, params
    if kind in ("number", "quantity"):
        prefix, text = _split_prefix(value)
        number, system, code = text, "", ""
        if kind == "quantity" and "|" in text:
            number, system, code = [*text.split("|", 2), "", ""][:3]
        cond, params = _number_condition(prefix, number)
        if system:
            cond += " AND system = ?"
            params.append(system)
        if code:
            cond += " AND code = ?" if system else " AND (code = ? OR unit = ?)"
            params.extend([code] if system else [code, code])
        return kind, f"({cond})", params
    raise BadRequest(f"Search parameter '{sp.code}' of type '{kind}' is not supported yet")


def _param_clause(res_type: str, sp: SearchParam, modifier: str | None, raw: str) -> Clause:
    if modifier == "missing":
        table = {"composite": "token", "special": "token"}.get(sp.type, sp.type)
        inner = f"SELECT rid FROM idx_{table} WHERE param = ? AND res_type = ?"
        negate = raw.lower() == "true"
        if raw.lower() not in ("true", "false"):
            raise BadRequest(f"':missing' takes true or false, not '{raw}'")
        return Clause(f"r.rid {'NOT ' if negate else ''}IN ({inner})", [sp.code, res_type])
    values = _split_or(raw)
    if sp.type == "token" and modifier == "not":
        table = "token"
        ors = [_token_condition(v, None) for v in values]
        cond = " OR ".join(c for c, _ in ors)
        return Clause(
            f"r.rid NOT IN (SELECT rid FROM idx_{table} WHERE param = ? AND res_type = ? AND ({cond}))",
            [sp.code, res_type, *[p for _, ps in ors for p in ps]],
        )
    parts = []
    table = ""
    for v in values:
        try:
            table, cond, params = _condition(sp, v, modifier)
        except ValueError as exc:
            raise BadRequest(f"Invalid value for search parameter '{sp.code}': {exc}") from exc
        parts.append((cond, params))
    cond = " OR ".join(c for c, _ in parts)
    return _index_subquery(table, sp.code, res_type, cond, [p for _, ps in parts for p in ps])


def _split_or(raw: str) -> list[str]:
    """Split a parameter value on unescaped commas (search.html#escaping)."""
    out, buf, i = [], [], 0
    while i < len(raw):
        ch = raw[i]
        if ch == "\\" and i + 1 < len(raw):
            buf.append(raw[i + 1])
            i += 2
            continue
        if ch == ",":
            out.append("".join(buf))
            buf = []
        else:
            buf.append(ch)
        i += 1
    out.append("".join(buf))
    return [v for v in out if v != ""]


def _special_clause(name: str, raw: str) -> Clause | None:
    if name == "_id":
        ids = _split_or(raw)
        return Clause(f"r.res_id IN ({', '.join('?' for _ in ids)})", list(ids))
    return None


def parse_search(
    registry: Registry,
    res_type: str,
    params: Sequence[tuple[str, str]] | Mapping[str, Sequence[str]],
    strict: bool = False,
) -> ParsedSearch:
    """Parse query parameters for a type-level search. ``strict`` makes unknown ones a 400."""
    items = [(k, v) for k, vs in params.items() for v in vs] if isinstance(params, Mapping) else list(params)
    parsed = ParsedSearch(res_type)
    for key, raw in items:
        name, _, modifier = key.partition(":")
        if name in RESULT_PARAMS:
            parsed.control.setdefault(name, []).append(raw)
            continue
        special = _special_clause(name, raw) if not modifier else None
        if special is not None:
            parsed.clauses.append(special)
            continue
        sp = registry.get(res_type, name)
        if sp is None or sp.type not in SUPPORTED_TYPES or "." in name:
            if strict:
                raise BadRequest(f"Unknown or unsupported search parameter '{key}' for resource type {res_type}")
            parsed.unknown.append(key)
            continue
        parsed.clauses.append(_param_clause(res_type, sp, modifier or None, raw))
    return parsed


def build_sql(parsed: ParsedSearch, after_rid: int = 0, limit: int | None = None) -> tuple[str, list[Any]]:
    """SQL returning (rid, res_id) of matches in insertion order, after the keyset cursor."""
    where = ["r.res_type = ?", "r.deleted = 0"]
    params: list[Any] = [parsed.resource_type]
    for c in parsed.clauses:
        where.append(c.sql)
        params.extend(c.params)
    if after_rid:
        where.append("r.rid > ?")
        params.append(after_rid)
    sql = f"SELECT r.rid, r.res_id FROM resources r WHERE {' AND '.join(where)} ORDER BY r.rid"
    if limit is not None:
        sql += f" LIMIT {int(limit)}"
    return sql, params


def count_sql(parsed: ParsedSearch) -> tuple[str, list[Any]]:
    sql, params = build_sql(parsed)
    return f"SELECT COUNT(*) FROM ({sql.rsplit(' ORDER BY', 1)[0]}) q", params
