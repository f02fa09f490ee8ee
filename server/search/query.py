"""Parsed search -> SQL over the index tables (http://hl7.org/fhir/R4/search.html).

A search is parsed against the registry (:mod:`server.search.registry`): every parameter is
looked up for the resource type(s) searched and handled by its ``type`` — never by resource-type
name. Each parameter occurrence becomes one condition ``r.rid [NOT] IN (subquery)`` on the
``resources`` row, or ``EXISTS`` (a probe per candidate) for open ranges such as
``date=ge2018`` that match much of a table. Values of one parameter (comma-separated) are
OR-ed, repeated parameters AND-ed. A search returns current, non-deleted resources only: index
rows exist for current versions alone (``server/store/base.py``) and the ``resources`` row
must not be a tombstone.

Parameter types (search.html#ptypes) and modifiers (#modifiers):

* string: starts-with on the normalised value (case/accent-insensitive; a byte-order range, so
  an index serves it), ``:exact`` (as written), ``:contains``.
* token: ``code``, ``system|code``, ``|code`` (no system), ``system|``; ``:not`` (no matching
  value, including no value at all), ``:text`` (display / CodeableConcept.text /
  Identifier.type.text, normalised: starts-with on the text or on one of its words),
  ``:of-type`` (``type-system|type-code|value`` of an Identifier).
* reference: ``Type/id``, ``id``, an absolute URL (matched as written, or by its ``Type/id``
  tail), canonical ``url|version``; ``:[type]``, ``:identifier`` (Reference.identifier).
  Chains of any depth (``subject:Patient.name=x``, ``subject.organization.name=y``: without a
  type modifier, every target type that defines the next parameter is tried) and reverse
  chains ``_has:Type:param:…`` (nested).
* date: prefixes with the spec's range semantics (#prefix): the search value and the indexed
  value are both ranges (the value's precision; Period start/end; Timing's outer bounds) —
  eq: search range contains the value; ne: not eq; gt/lt: the value overlaps the range
  above/below the search range; ge/le: gt/lt or eq; sa/eb: the value lies wholly after/before
  the search range; ap: overlap with the search range widened by 10 % of its distance from now.
* number, quantity: eq/ne with the implicit precision of the search value (``100`` is
  [99.5, 100.5)), gt lt ge le sa eb on the exact value, ap ±10 %; quantity
  ``value|system|code`` (system and code must match), ``value||code`` (code or unit),
  ``value`` (any unit). No unit conversion.
* uri: exact, ``:below`` (prefix), ``:above`` (the value is a prefix of the search value).
* composite: ``c1$c2[$c3]``, each component parsed by its component parameter's type; all
  components must match the same item (rows grouped by ``grp``, see ``server/store/schema.py``).
  A composite on the resource itself whose components are other parameters' values
  (``code-value-quantity``: ``code`` and ``value-quantity``, see ``extract.root_composites``)
  has no rows of its own: ``A$B`` is ``code=A`` and ``value-quantity=B`` on the resource.
* ``:missing=true|false`` on every type.
* union parameters (``combo-code`` is ``code`` | ``component-code``, see
  ``Registry.unions``) have no rows of their own: a clause on one is the OR of the same clause
  on each parameter it unites (AND for ``:not`` and ``:missing=true``), so a composite union
  matches its components on one item of one of them; ``_sort`` reads the rows of all of them.
* special (``near``): not supported — reported as an ignored parameter.

Common parameters: ``_id`` and ``_lastUpdated`` (columns of the resources table: ``res_id``,
``ts``), ``_tag``, ``_profile``, ``_security``, ``_source`` (through their index rows).
``_text``, ``_content``, ``_query``, ``_list``, ``_filter`` are not supported (reported). An
unsupported *modifier* is always a 400, as ignoring it would change what matches.

Paging and sorting SQL: the page query selects ``(rid, res_type, res_id, sort keys…)``; a sort
key is a correlated ``MIN``/``MAX`` over the parameter's index rows (served from the
``(rid, param, grp, value)`` index), computed once per match in a ``MATERIALIZED`` CTE before
the keyset condition and ``ORDER BY``. Without ``_sort`` the order is ``rid`` (insertion order);
a search whose clauses are index ranges (``rid IN (…)``, a compartment's membership among
them) and ``EXISTS`` probes is then driven by one range (see ``_driver``: the only one, or by a
fixed rank one reference target, then ``system|code``, then a bare code), the other ranges
tested in their ``EXISTS`` form on each match (see ``_driven_page_sql``): for one token
(``code``, ``system|code``) or one ``Type/id`` reference the range is already in ``rid`` order,
so a page reads about ``_count`` index entries (more when the probes reject many) however many
resources match, and a next page seeks to its cursor; other ranges are read whole and sorted.
Several ranges none of which has a rank are left to the planner, as before.

Result parameters (#return) parsed here: ``_sort`` (several keys, ``-`` for descending; dates
sort by their low bound ascending and their high bound descending, strings by the normalised
value, tokens by code, numbers/quantities by value, references by the reference as written,
``_id``, ``_lastUpdated``; resources without a value come last either way), ``_include`` /
``_revinclude`` (``Type:param[:target]``, ``Type:*``, ``*``, ``:iterate``).

Paging is keyset paging, chosen over a stored snapshot: a page is "the next ``_count`` rows
after this one in the sort order", the cursor (``_cursor``) carrying the sort-key values and
row id (``rid``, the tie-breaker) of the page's last row — or its first row, for a previous
link. Nothing is stored on the server, searches stay read-only (SQLite has one writer), links
never expire, and while data changes a page never repeats or skips a resource that kept its
place in the order; resources written meanwhile appear where they sort.
"""

from __future__ import annotations

import base64
import binascii
import itertools
import json
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from decimal import Decimal, InvalidOperation
from typing import Any

from server.errors import BadRequest, Issue
from server.search.compartments import SELF, Compartment
from server.search.extract import composite_sources, normalize_string
from server.search.extract import date_range as extracted_date_range
from server.search.implied import any_exists, compound, each_source, index_sources, union_all
from server.search.registry import Registry, SearchParam

__all__ = [
    "MAX_CHAIN_DEPTH",
    "RESULT_PARAMS",
    "SUPPORTED_TYPES",
    "UNSUPPORTED_COMMON",
    "Clause",
    "Cursor",
    "IncludeSpec",
    "ParsedSearch",
    "SortKey",
    "build_sql",
    "compartment_clause",
    "compartments_clause",
    "count_sql",
    "date_range",
    "include_sql",
    "page_sql",
    "parse_search",
    "range_size",
    "revinclude_sql",
    "searchable",
]

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

#: Parameter types this module searches; ``special`` (``near``) is reported as unsupported.
SUPPORTED_TYPES = frozenset({"string", "token", "reference", "date", "number", "quantity", "uri", "composite"})
#: Common parameters this server does not support (reported like unknown ones).
UNSUPPORTED_COMMON = frozenset({"_text", "_content", "_query", "_list", "_filter"})
#: Supported modifiers per parameter type (``:[type]`` on references is checked separately).
_MODIFIERS: Mapping[str, frozenset[str]] = {
    "string": frozenset({"exact", "contains", "missing"}),
    "token": frozenset({"not", "text", "of-type", "missing"}),
    "reference": frozenset({"identifier", "missing"}),
    "date": frozenset({"missing"}),
    "number": frozenset({"missing"}),
    "quantity": frozenset({"missing"}),
    "uri": frozenset({"below", "above", "missing"}),
    "composite": frozenset({"missing"}),
}
MAX_CHAIN_DEPTH = 4


def searchable(sp: SearchParam, resource_type: str) -> bool:
    """True when this module searches ``sp`` on ``resource_type`` (the CapabilityStatement lists these)."""
    return sp.type in SUPPORTED_TYPES and sp.code not in UNSUPPORTED_COMMON and bool(sp.expression_for(resource_type))


_PREFIXES = ("eq", "ne", "gt", "lt", "ge", "le", "sa", "eb", "ap")
_ONE_SIDED = frozenset({"gt", "lt", "ge", "le", "sa", "eb"})
#: Upper end of a byte-order prefix range: no UTF-8 string sorts after ``prefix + _TOP``.
_TOP = "\U0010ffff"
#: sort value column per parameter type: (ascending key, descending key) as (aggregate, column)
_SORT_COLUMNS: Mapping[str, tuple[tuple[str, str], tuple[str, str]]] = {
    "date": (("MIN", "low"), ("MAX", "high")),
    "string": (("MIN", "value"), ("MAX", "value")),
    "token": (("MIN", "code"), ("MAX", "code")),
    "number": (("MIN", "value"), ("MAX", "value")),
    "quantity": (("MIN", "value"), ("MAX", "value")),
    "uri": (("MIN", "value"), ("MAX", "value")),
    "reference": (("MIN", "url"), ("MAX", "url")),
}


@dataclass
class Clause:
    """One parameter occurrence: a SQL condition on the ``resources`` alias and its values."""

    sql: str
    params: list[Any]
    #: when ``sql`` is ``rid IN (subquery)`` on one index table: that subquery (``SELECT rid FROM
    #: idx_… WHERE …``, columns unqualified) and its values; :func:`page_sql` may walk it instead
    rids: tuple[str, list[Any]] | None = None
    #: when ``rids`` is a ``UNION ALL`` of ranges (rows the range index implies beside the index
    #: table's, :mod:`server.search.implied`): each range and its values, walked one by one
    arms: tuple[tuple[str, list[Any]], ...] = ()
    #: ``sql`` is a per-candidate ``EXISTS`` probe through a ``(rid, param …)`` index
    probe: bool = False
    #: the same condition as such a probe (``EXISTS (SELECT 1 FROM idx_… WHERE rid = r.rid …)``) and
    #: its values, for a ``rids`` clause another clause's range drives (:func:`_driver`)
    exists: tuple[str, list[Any]] | None = None
    #: how well ``rids`` drives a page among several ranges, best first (:func:`_driver`): 0 one
    #: ``Type/id`` reference or one compartment, 1 one bare-id reference, 2 one ``system|code``,
    #: 3 one bare ``code``; None: not chosen to drive when there is another range
    drive: int | None = None


@dataclass(frozen=True)
class SortKey:
    """One ``_sort`` key: a SQL expression on alias ``r`` (NULL when the resource has no value)."""

    name: str
    descending: bool
    sql: str
    params: tuple[Any, ...] = ()


@dataclass(frozen=True)
class IncludeSpec:
    """One ``_include``/``_revinclude`` value; None means ``*`` (any type / any parameter)."""

    source: str | None
    param: str | None
    target: str | None
    iterate: bool
    reverse: bool


@dataclass
class ParsedSearch:
    """A parsed search over one resource type (``types`` has several for system-level search)."""

    resource_type: str
    types: tuple[str, ...] = ()
    clauses: list[Clause] = field(default_factory=list)
    unknown: list[str] = field(default_factory=list)
    control: dict[str, list[str]] = field(default_factory=dict)
    sort: list[SortKey] = field(default_factory=list)
    includes: list[IncludeSpec] = field(default_factory=list)
    notes: list[Issue] = field(default_factory=list)
    all_types: bool = False  # system-level search without _type: no type filter

    def __post_init__(self) -> None:
        if not self.types and self.resource_type:
            self.types = (self.resource_type,)

    def warnings(self) -> list[Issue]:
        return [
            Issue(f"Unknown or unsupported search parameter '{name}' ignored", severity="warning", code="not-supported")
            for name in self.unknown
        ] + self.notes


# -- value parsing -------------------------------------------------------------------------


def date_range(value: str) -> tuple[float, float]:
    """A FHIR date/dateTime/instant at its precision -> half-open UTC epoch range [low, high)."""
    found = extracted_date_range(value)
    if found is None:
        raise ValueError(f"'{value}' is not a valid date, dateTime or instant")
    return float(found[0]), float(found[1])


def _split_escaped(raw: str, sep: str) -> list[str]:
    """Split on ``sep`` not preceded by a backslash, keeping escapes (search.html#escaping)."""
    out, buf, i = [], [], 0
    while i < len(raw):
        ch = raw[i]
        if ch == "\\" and i + 1 < len(raw):
            buf.append(raw[i : i + 2])
            i += 2
            continue
        if ch == sep:
            out.append("".join(buf))
            buf = []
        else:
            buf.append(ch)
        i += 1
    out.append("".join(buf))
    return out


def _unescape(value: str) -> str:
    out, i = [], 0
    while i < len(value):
        if value[i] == "\\" and i + 1 < len(value):
            out.append(value[i + 1])
            i += 2
        else:
            out.append(value[i])
            i += 1
    return "".join(out)


def _split_or(raw: str) -> list[str]:
    """A parameter's comma-separated values (escapes of ``|`` and ``$`` kept for the type parsers)."""
    return [v for v in _split_escaped(raw, ",") if v != ""]


def _split_prefix(value: str) -> tuple[str, str]:
    if len(value) > 2 and value[:2] in _PREFIXES and (value[2].isdigit() or value[2] in "-+."):
        return value[:2], value[2:]
    return "eq", value


def _like_escape(value: str) -> str:
    return value.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")


def _number_range(text: str) -> tuple[Decimal, Decimal]:
    """Implicit precision of a number: 100 -> [99.5, 100.5), 1e2 -> [50, 150)."""
    try:
        value = Decimal(text)
    except InvalidOperation as exc:
        raise ValueError(f"'{text}' is not a number") from exc
    if not value.is_finite():
        raise ValueError(f"'{text}' is not a number")
    exponent = value.as_tuple().exponent
    half = Decimal(5).scaleb(int(exponent) - 1) if isinstance(exponent, int) else Decimal(0)
    return value - half, value + half


# -- conditions on one index row (``p`` is the column prefix, e.g. "c0.") ---------------------


def _range_condition(
    p: str, prefix: str, low: float, high: float, lo: str | None = None, hi: str | None = None
) -> tuple[str, list[Any]]:
    """search.html#prefix for a stored range [lo, hi) against a search range [low, high)."""
    lo, hi = lo or f"{p}low", hi or f"{p}high"
    contained = f"({lo} >= ? AND {hi} <= ?)"
    if prefix == "eq":
        return contained, [low, high]
    if prefix == "ne":
        return f"NOT {contained}", [low, high]
    if prefix == "gt":
        return f"{hi} > ?", [high]
    if prefix == "lt":
        return f"{lo} < ?", [low]
    # ge = gt or eq: "hi > high OR (lo >= low AND hi <= high)", which (as lo <= hi) is the
    # index-friendly "hi > high OR lo >= low"; le likewise
    if prefix == "ge":
        return f"({hi} > ? OR {lo} >= ?)", [high, low]
    if prefix == "le":
        return f"({lo} < ? OR {hi} <= ?)", [low, high]
    if prefix == "sa":
        return f"{lo} >= ?", [high]
    if prefix == "eb":
        return f"{hi} <= ?", [low]
    # ap: overlapping the search range widened by 10% of its distance from now
    span = max(high - low, abs(time.time() - low) * 0.1)
    return f"({lo} < ? AND {hi} > ?)", [high + span, low - span]


def _number_condition(p: str, prefix: str, text: str) -> tuple[str, list[Any]]:
    """Prefixes on a stored point value (search.html#number): eq/ne use the implicit precision."""
    low, high = _number_range(text)
    exact = Decimal(text)
    col = f"{p}value"
    if prefix == "eq":
        return f"({col} >= ? AND {col} < ?)", [low, high]
    if prefix == "ne":
        return f"NOT ({col} >= ? AND {col} < ?)", [low, high]
    if prefix == "ap":
        margin = abs(exact) * Decimal("0.1")
        return f"({col} >= ? AND {col} <= ?)", [exact - margin, exact + margin]
    op = {"gt": ">", "sa": ">", "lt": "<", "eb": "<", "ge": ">=", "le": "<="}[prefix]
    return f"{col} {op} ?", [exact]


def _token_condition(p: str, value: str, modifier: str | None) -> tuple[str, list[Any]]:
    if modifier == "text":
        text = normalize_string(_unescape(value))
        pattern = _like_escape(text)
        return f"({p}text LIKE ? ESCAPE '\\' OR {p}text LIKE ? ESCAPE '\\')", [f"{pattern}%", f"% {pattern}%"]
    if modifier == "of-type":
        parts = [_unescape(v) for v in _split_escaped(value, "|")]
        if len(parts) != 3 or not all(parts):
            raise ValueError(f"':of-type' takes type-system|type-code|value, not '{value}'")
        return f"({p}system = ? AND {p}code = ?)", [parts[0], f"{parts[1]}|{parts[2]}"]
    parts = _split_escaped(value, "|")
    if len(parts) == 1:
        return f"{p}code = ?", [_unescape(value)]
    system, code = _unescape(parts[0]), _unescape("|".join(parts[1:]))
    if system == "":
        return f"({p}system IS NULL AND {p}code = ?)", [code]
    if code == "":
        return f"{p}system = ?", [system]
    return f"({p}code = ? AND {p}system = ?)", [code, system]


def _reference_condition(p: str, value: str, modifier: str | None) -> tuple[str, list[Any]]:
    value = _unescape(value)
    if "/_history/" in value:
        value = value.split("/_history/", 1)[0]
    if value.startswith(("http://", "https://", "urn:")):
        url, _, version = value.partition("|")
        urls = [value] if not version else [value, url]
        parts = url.rstrip("/").split("/")
        marks = ", ".join("?" for _ in urls)
        if len(parts) >= 2 and parts[-2][:1].isupper() and not url.startswith("urn:") and not version:
            return f"({p}url IN ({marks}) OR ({p}target_id = ? AND {p}target_type = ?))", [*urls, parts[-1], parts[-2]]
        return f"{p}url IN ({marks})", urls
    if "/" in value:
        target_type, target_id = value.split("/", 1)
        if modifier and modifier != target_type:
            raise ValueError(f"'{value}' is not a {modifier} reference")
        return f"({p}target_id = ? AND {p}target_type = ?)", [target_id, target_type]
    if modifier:
        return f"({p}target_id = ? AND {p}target_type = ?)", [value, modifier]
    return f"{p}target_id = ?", [value]


def _uri_condition(p: str, value: str, modifier: str | None) -> tuple[str, list[Any]]:
    value = _unescape(value)
    col = f"{p}value"
    if modifier == "below":
        return f"({col} >= ? AND {col} < ?)", [value, value + _TOP]
    if modifier == "above":
        return f"(? >= {col} AND substr(?, 1, length({col})) = {col})", [value, value]
    return f"{col} = ?", [value]


def _quantity_condition(p: str, kind: str, value: str) -> tuple[str, list[Any]]:
    prefix, text = _split_prefix(value)
    number, system, code = text, "", ""
    if kind == "quantity":
        parts = [_unescape(v) for v in _split_escaped(text, "|")]
        if len(parts) > 3:
            raise ValueError(f"'{value}' is not number|system|code")
        number, system, code = [*parts, "", ""][:3]
    cond, params = _number_condition(p, prefix, number)
    if system:
        cond += f" AND {p}system = ?"
        params.append(system)
    if code:
        cond += f" AND {p}code = ?" if system else f" AND ({p}code = ? OR {p}unit = ?)"
        params.extend([code] if system else [code, code])
    return f"({cond})", params


def _string_condition(p: str, value: str, modifier: str | None) -> tuple[str, list[Any]]:
    value = _unescape(value)
    if modifier == "exact":
        return f"({p}value = ? AND {p}exact = ?)", [normalize_string(value), value]
    text = normalize_string(value)
    if modifier == "contains":
        return f"{p}value LIKE ? ESCAPE '\\'", [f"%{_like_escape(text)}%"]
    return f"({p}value >= ? AND {p}value < ?)", [text, text + _TOP]


def _value_condition(p: str, sp_type: str, value: str, modifier: str | None) -> tuple[str, str, list[Any]]:
    """(index table, SQL condition, params) of one value of a non-composite parameter type."""
    if sp_type == "string":
        return ("string", *_string_condition(p, value, modifier))
    if sp_type == "token":
        return ("token", *_token_condition(p, value, modifier))
    if sp_type == "reference":
        return ("reference", *_reference_condition(p, value, modifier))
    if sp_type == "uri":
        return ("uri", *_uri_condition(p, value, modifier))
    if sp_type == "date":
        prefix, text = _split_prefix(value)
        low, high = date_range(text)
        return ("date", *_range_condition(p, prefix, low, high))
    if sp_type in ("number", "quantity"):
        return (sp_type, *_quantity_condition(p, sp_type, value))
    raise ValueError(f"parameters of type '{sp_type}' are not searchable")


# -- the parser ------------------------------------------------------------------------------


def _scope_sql(column: str, types: Sequence[str] | None) -> tuple[str, list[Any]]:
    """``column`` restricted to ``types`` (None: any type)."""
    if types is None:
        return "", []
    if len(types) == 1:
        return f" AND {column} = ?", [types[0]]
    return f" AND {column} IN ({', '.join('?' for _ in types)})", list(types)


def _joined(parts: Sequence[Clause], joiner: str) -> Clause:
    """``parts`` joined by `` AND `` or `` OR `` into one parenthesised clause."""
    return Clause("(" + joiner.join(c.sql for c in parts) + ")", [x for c in parts for x in c.params])


class _Unsupported(Exception):
    """This parameter is unknown or unsupported here (reported, or a 400 in strict mode)."""


class _Parser:
    def __init__(self, registry: Registry):
        self.registry = registry
        self._aliases = itertools.count(1)

    def alias(self, prefix: str) -> str:
        return f"{prefix}{next(self._aliases)}"

    # one parameter occurrence on resources alias ``a`` of ``types`` -----------------------
    def clause(self, a: str, types: Sequence[str] | None, key: str, raw: str, depth: int = 0) -> Clause:
        if depth > MAX_CHAIN_DEPTH:
            raise BadRequest(f"'{key}': chains and _has nest at most {MAX_CHAIN_DEPTH} levels")
        if key.startswith("_has:"):
            return self.has_clause(a, types, key, raw, depth)
        head, dot, rest = key.partition(".")
        name, _, modifier = head.partition(":")
        if name == "_id" and not dot:
            return self.id_clause(a, modifier, raw)
        if name == "_lastUpdated" and not dot:
            return self.last_updated_clause(a, modifier, raw)
        if name in UNSUPPORTED_COMMON or name == "_has":
            raise _Unsupported
        params = self.lookup(types, name)
        if dot:
            return self.chain_clause(a, types, params, name, modifier, rest, raw, depth)
        return self.param_clause(a, params, modifier or None, raw)

    def lookup(self, types: Sequence[str] | None, name: str) -> list[tuple[Sequence[str] | None, SearchParam]]:
        """The parameter ``name`` on every type searched, grouped by definition (and for reference
        parameters by where their rows are, :meth:`reference_rows`): [(types, param)].

        Unknown (on any of the types), unsupported types and expression-less parameters raise
        :class:`_Unsupported`.
        """
        if types is None:
            sp = self.registry.get("Resource", name) or _common(self.registry, name)
            if sp is None or sp.type not in SUPPORTED_TYPES or not sp.expression:
                raise _Unsupported
            return [(None, sp)]
        groups: dict[tuple[str, str | None, str | None], tuple[list[str], SearchParam]] = {}
        kinds = set()
        for t in types:
            sp = self.registry.get(t, name)
            if sp is None or not searchable(sp, t):
                raise _Unsupported
            kinds.add(sp.type)
            # one group per definition and, for a reference, per narrowing (see reference_rows)
            narrowed = self.registry.narrowing(t, name) if sp.type == "reference" else None
            key = (sp.url, *((narrowed[0].code, narrowed[1]) if narrowed else (None, None)))
            groups.setdefault(key, ([], sp))[0].append(t)
        if len(kinds) > 1:
            raise _Unsupported  # the same code with different types: ambiguous across _type
        return [(tuple(ts), sp) for ts, sp in groups.values()]

    def id_clause(self, a: str, modifier: str, raw: str) -> Clause:
        ids = [_unescape(v) for v in _split_or(raw)]
        if modifier == "missing":
            return Clause("1 = 1" if raw.lower() == "false" else "1 = 0", [])
        if modifier not in ("", "not"):
            raise BadRequest(f"Modifier ':{modifier}' is not supported on _id")
        if not ids:
            return Clause("1 = 1", [])
        marks = ", ".join("?" for _ in ids)
        return Clause(f"{a}.res_id {'NOT ' if modifier else ''}IN ({marks})", ids)

    def last_updated_clause(self, a: str, modifier: str, raw: str) -> Clause:
        """``_lastUpdated`` on the resources table's ``ts`` (the instant meta.lastUpdated shows)."""
        if modifier == "missing":
            return Clause("1 = 1" if raw.lower() == "false" else "1 = 0", [])
        if modifier:
            raise BadRequest(f"Modifier ':{modifier}' is not supported on _lastUpdated")
        ors: list[str] = []
        params: list[Any] = []
        for value in _split_or(raw):
            prefix, text = _split_prefix(value)
            try:
                low, high = date_range(text)
            except ValueError as exc:
                raise BadRequest(f"Invalid value for search parameter '_lastUpdated': {exc}") from exc
            cond, ps = _range_condition(f"{a}.", prefix, low, high, lo=f"{a}.ts", hi=f"{a}.ts")
            ors.append(cond)
            params += ps
        return Clause("(" + " OR ".join(ors) + ")", params) if ors else Clause("1 = 1", [])

    def param_clause(
        self, a: str, params: list[tuple[Sequence[str] | None, SearchParam]], modifier: str | None, raw: str
    ) -> Clause:
        if len(params) == 1:
            return self.one_param(a, params[0][0], params[0][1], modifier, raw)
        # several groups of types: each part holds for its own types only (a negated part, such
        # as :missing=true, would otherwise hold for every resource of the other groups' types)
        sqls: list[str] = []
        args: list[Any] = []
        for types, sp in params:
            part = self.one_param(a, types, sp, modifier, raw)
            scope, scope_params = _scope_sql(f"{a}.res_type", types)
            sqls.append(f"({scope[len(' AND ') :]} AND {part.sql})" if scope else part.sql)
            args += [*scope_params, *part.params]
        return Clause("(" + " OR ".join(sqls) + ")", args)

    def one_param(self, a: str, types: Sequence[str] | None, sp: SearchParam, modifier: str | None, raw: str) -> Clause:
        kind = sp.type
        allowed = _MODIFIERS.get(kind, frozenset())
        type_modifier = kind == "reference" and modifier is not None and modifier[:1].isupper()
        if modifier is not None and modifier not in allowed and not type_modifier:
            raise BadRequest(f"Modifier ':{modifier}' is not supported on search parameter '{sp.code}' ({kind})")
        if type_modifier and sp.target and modifier not in sp.target:
            raise BadRequest(f"'{sp.code}' cannot refer to a {modifier} (targets: {', '.join(sp.target)})")
        sources = self.registry.union_sources(sp)
        if sources:
            return self.union_clause(a, types, sources, modifier, raw)
        parts = composite_sources(self.registry, sp)
        if parts:
            return self.root_composite_clause(a, types, sp, parts, modifier, raw)
        scope, scope_params = _scope_sql("res_type", types)
        if modifier == "missing":
            return self.missing_clause(a, types, sp, scope, scope_params, raw)
        values = _split_or(raw)
        if not values:
            return Clause("1 = 1", [])
        try:
            if kind == "composite":
                return self.composite_clause(a, types, sp, values)
            if kind == "token" and modifier == "not":
                conds = [_token_condition("", v, None) for v in values]
                cond = " OR ".join(c for c, _ in conds)
                return Clause(
                    f"{a}.rid NOT IN (SELECT rid FROM idx_token WHERE param = ?{scope} AND ({cond}))",
                    [sp.code, *scope_params, *[x for _, ps in conds for x in ps]],
                )
            if kind == "reference" and modifier == "identifier":
                conds = [_token_condition("", v, None) for v in values]
                table = "token"
            elif kind == "token" and modifier == "of-type":
                conds = [_token_condition("", v, "of-type") for v in values]
                cond = " OR ".join(c for c, _ in conds)
                sub = f"SELECT rid FROM idx_token WHERE param = ?{scope} AND ({cond})"
                args = [f"{sp.code}:of-type", *scope_params, *[x for _, ps in conds for x in ps]]
                return Clause(f"{a}.rid IN ({sub})", args, rids=(sub, args))
            else:
                found = [_value_condition("", kind, v, modifier) for v in values]
                table = found[0][0]
                conds = [(c, ps) for _, c, ps in found]
        except (ValueError, InvalidOperation) as exc:
            raise BadRequest(f"Invalid value for search parameter '{sp.code}': {exc}") from exc
        # a narrowed reference parameter (patient: subject to a Patient) reads its source's rows
        code, narrow, narrow_args = self.reference_rows(types, sp) if table == "reference" else (sp.code, "", [])
        cond = " OR ".join(c for c, _ in conds)
        args = [code, *narrow_args, *scope_params, *[x for _, ps in conds for x in ps]]
        if kind in ("date", "number", "quantity") and all(_split_prefix(v)[0] in _ONE_SIDED for v in values):
            # an open range (date=ge2018) usually matches much of the table: probe each candidate
            # through the (rid, param …) index instead of listing every match first (no res_type
            # condition: the rid fixes the type, and the probe then reads the index alone)
            probe = [sp.code, *[x for _, ps in conds for x in ps]]
            sql = f"EXISTS (SELECT 1 FROM idx_{table} WHERE rid = {a}.rid AND param = ? AND ({cond}))"
            return Clause(sql, probe, probe=True)
        # rows may also be implied by the range index (server.search.implied): an arm each
        froms = index_sources(table, types, code)
        arms = each_source(froms, f"SELECT rid FROM {{src}} i WHERE param = ?{narrow}{scope} AND ({cond})", args)
        sub, args = compound(arms)
        exists, probe_args = any_exists(
            index_sources(table, types, code, by_rid=True),
            f"SELECT 1 FROM {{src}} i WHERE rid = {a}.rid AND param = ?{narrow} AND ({cond})",
            [code, *narrow_args, *[x for _, ps in conds for x in ps]],
        )
        drive = _drive_rank(kind, modifier, values) if table == kind else None
        return Clause(
            f"{a}.rid IN ({sub})",
            args,
            rids=(sub, args),
            arms=tuple(arms) if len(arms) > 1 else (),
            exists=(exists, probe_args),
            drive=drive,
        )

    def union_clause(
        self, a: str, types: Sequence[str] | None, sources: Sequence[SearchParam], modifier: str | None, raw: str
    ) -> Clause:
        """A union parameter (``combo-code``: ``code`` | ``component-code``; ``Registry.unions``) has
        no rows of its own: it matches when one of its sources does, and for ``:not`` and
        ``:missing=true`` (no value at all) when none does."""
        parts = [self.one_param(a, types, source, modifier, raw) for source in sources]
        negated = modifier == "not" or (modifier == "missing" and raw.lower() == "true")
        joiner = " AND " if negated else " OR "
        return _joined(parts, joiner)

    def root_composite_clause(
        self,
        a: str,
        types: Sequence[str] | None,
        sp: SearchParam,
        parts: Sequence[SearchParam],
        modifier: str | None,
        raw: str,
    ) -> Clause:
        """A composite on the resource itself (``code-value-quantity``; ``extract.root_composites``)
        has no rows of its own: the resource is its one item, so ``A$B`` matches when ``code``
        matches A and ``value-quantity`` matches B, and it has a value when each of them has one."""
        if modifier == "missing":  # each part checks the value
            found = [self.one_param(a, types, part, modifier, raw) for part in parts]
            return _joined(found, " OR " if raw.lower() == "true" else " AND ")
        ors: list[Clause] = []
        for value in _split_or(raw):
            values = _split_escaped(value, "$")
            if len(values) != len(parts) or not all(values):
                raise BadRequest(
                    f"Invalid value for search parameter '{sp.code}': "
                    f"'{value}' needs {len(parts)} components separated by '$'"
                )
            try:
                ands = [self.one_param(a, types, part, None, v) for part, v in zip(parts, values, strict=True)]
            except BadRequest as exc:
                raise BadRequest(f"Invalid value for search parameter '{sp.code}' ('{value}'): {exc.message}") from exc
            ors.append(_joined(ands, " AND "))
        return _joined(ors, " OR ") if ors else Clause("1 = 1", [])

    def reference_rows(
        self, types: Sequence[str] | None, sp: SearchParam, prefix: str = ""
    ) -> tuple[str, str, list[Any]]:
        """Where the reference rows of ``sp`` on ``types`` (one group of :meth:`lookup`) are: the
        param code, and an extra condition (`` AND {prefix}target_type = ?``) with its value when
        ``sp`` is a narrowed parameter (``Registry.narrowings``: ``patient`` is ``subject`` rows of
        Patients)."""
        found = self.registry.narrowing(types[0], sp.code) if types and sp.type == "reference" else None
        if found is None:
            return sp.code, "", []
        return found[0].code, f" AND {prefix}target_type = ?", [found[1]]

    def missing_clause(
        self, a: str, types: Sequence[str] | None, sp: SearchParam, scope: str, scope_params: list[Any], raw: str
    ) -> Clause:
        if raw.lower() not in ("true", "false"):
            raise BadRequest(f"':missing' takes true or false, not '{raw}'")
        negate = "NOT " if raw.lower() == "true" else ""
        if sp.type == "composite":
            first = self.registry.by_url(sp.components[0][0]) if sp.components else None
            table = first.type if first is not None else "token"
            sub = f"SELECT rid FROM idx_{table} WHERE param = ?{scope}"
            return Clause(f"{a}.rid {negate}IN ({sub})", [f"{sp.code}:0", *scope_params])
        code, narrow, narrow_args = self.reference_rows(types, sp)
        froms = index_sources(sp.type, types, code)
        sub, params = union_all(
            froms,
            f"SELECT rid FROM {{src}} i WHERE param = ?{narrow}{scope}",
            [code, *narrow_args, *scope_params],
        )
        if sp.type == "reference":  # a reference given only by identifier has a token row
            sub += f" UNION ALL SELECT rid FROM idx_token WHERE param = ?{scope}"
            params += [sp.code, *scope_params]
        return Clause(f"{a}.rid {negate}IN ({sub})", params)

    def composite_clause(self, a: str, types: Sequence[str] | None, sp: SearchParam, values: list[str]) -> Clause:
        components = []
        for definition, _ in sp.components:
            comp = self.registry.by_url(definition)
            if comp is None or comp.type not in SUPPORTED_TYPES or comp.type == "composite":
                raise _Unsupported
            components.append(comp)
        tables = [comp.type for comp in components]
        scope, scope_params = _scope_sql("c0.res_type", types)
        joins = " ".join(
            f"JOIN idx_{tables[k]} c{k} ON c{k}.rid = c0.rid AND c{k}.grp = c0.grp AND c{k}.param = ?"
            for k in range(1, len(tables))
        )
        join_params = [f"{sp.code}:{k}" for k in range(1, len(tables))]
        ors: list[str] = []
        or_params: list[Any] = []
        for value in values:
            parts = _split_escaped(value, "$")
            if len(parts) != len(components):
                raise ValueError(f"'{value}' needs {len(components)} components separated by '$'")
            conds = []
            for k, (comp, part) in enumerate(zip(components, parts, strict=True)):
                _, cond, ps = _value_condition(f"c{k}.", comp.type, part, None)
                conds.append(cond)
                or_params.extend(ps)
            ors.append("(" + " AND ".join(conds) + ")")
        sql = (
            f"{a}.rid IN (SELECT c0.rid FROM idx_{tables[0]} c0 {joins} "
            f"WHERE c0.param = ?{scope} AND ({' OR '.join(ors)}))"
        )
        return Clause(sql, [*join_params, f"{sp.code}:0", *scope_params, *or_params])

    def chain_clause(
        self,
        a: str,
        types: Sequence[str] | None,
        params: list[tuple[Sequence[str] | None, SearchParam]],
        name: str,
        modifier: str,
        rest: str,
        raw: str,
        depth: int,
    ) -> Clause:
        """``name[:Type].rest``: the reference's target must match ``rest`` (search.html#chaining)."""
        ors: list[str] = []
        out_params: list[Any] = []
        next_name = rest.partition(".")[0].partition(":")[0]
        for group_types, sp in params:
            if sp.type != "reference":
                raise BadRequest(f"'{name}' is not a reference parameter and cannot be chained")
            if modifier and not modifier[:1].isupper():
                raise BadRequest(f"Chained parameter '{name}' takes a resource type modifier, not ':{modifier}'")
            targets = [modifier] if modifier else list(sp.target)
            if modifier and sp.target and modifier not in sp.target:
                raise BadRequest(f"'{name}' cannot refer to a {modifier} (targets: {', '.join(sp.target)})")
            if not modifier:  # every target type on which the next parameter exists
                targets = [t for t in targets if _defines(self.registry, t, next_name)]
            x = self.alias("x")
            scope, scope_params = _scope_sql(f"{x}.res_type", group_types)
            t_parts: list[str] = []
            t_params: list[Any] = []
            for target in targets:
                c = self.alias("c")
                try:
                    inner = self.clause(c, (target,), rest, raw, depth + 1)
                except _Unsupported:
                    if modifier:
                        raise
                    continue
                t_parts.append(
                    f"({x}.target_type = ? AND {x}.target_id IN (SELECT {c}.res_id FROM resources {c} "
                    f"WHERE {c}.res_type = ? AND {c}.deleted = 0 AND {inner.sql}))"
                )
                t_params += [target, target, *inner.params]
            if not t_parts:
                raise _Unsupported
            code, narrow, narrow_args = self.reference_rows(group_types, sp, f"{x}.")
            sub, sub_params = union_all(
                index_sources("reference", group_types, code),
                f"SELECT {x}.rid FROM {{src}} {x} WHERE {x}.param = ?{narrow}{scope} AND ({' OR '.join(t_parts)})",
                [code, *narrow_args, *scope_params, *t_params],
            )
            ors.append(f"{a}.rid IN ({sub})")
            out_params += sub_params
        sql = ors[0] if len(ors) == 1 else "(" + " OR ".join(ors) + ")"
        return Clause(sql, out_params)

    def has_clause(self, a: str, types: Sequence[str] | None, key: str, raw: str, depth: int) -> Clause:
        """``_has:Type:param:rest``: resources referenced by a ``Type`` matching ``rest`` (#has)."""
        parts = key.split(":", 3)
        if len(parts) != 4 or not all(parts[1:]):
            raise BadRequest(f"'{key}' is not of the form _has:Type:reference-parameter:parameter")
        _, source, ref_name, rest = parts
        if source not in self.registry.resource_types():
            raise BadRequest(f"_has: unknown resource type '{source}'")
        ref = self.registry.get(source, ref_name)
        if ref is None or ref.type != "reference":
            raise BadRequest(f"_has: '{ref_name}' is not a reference parameter of {source}")
        h, x = self.alias("h"), self.alias("x")
        inner = self.clause(h, (source,), rest, raw, depth + 1)
        sources = (
            f"{x}.rid IN (SELECT {h}.rid FROM resources {h} WHERE {h}.res_type = ? AND {h}.deleted = 0 AND {inner.sql})"
        )
        code, narrow, narrow_args = self.reference_rows((source,), ref, f"{x}.")
        if types is not None and len(types) == 1:
            sql, params = union_all(
                index_sources("reference", (source,), code, types[0]),
                (
                    f"SELECT {x}.target_id FROM {{src}} {x} WHERE {x}.param = ?{narrow} AND {x}.res_type = ? "
                    f"AND {x}.target_type = ? AND {sources}"
                ),
                [code, *narrow_args, source, types[0], source, *inner.params],
            )
            return Clause(f"{a}.res_id IN ({sql})", params)
        sql, params = union_all(
            index_sources("reference", (source,), code),
            (
                f"SELECT {x}.target_type, {x}.target_id FROM {{src}} {x} WHERE {x}.param = ?{narrow} "
                f"AND {x}.res_type = ? AND {sources}"
            ),
            [code, *narrow_args, source, source, *inner.params],
        )
        return Clause(f"({a}.res_type, {a}.res_id) IN ({sql})", params)

    # result parameters -------------------------------------------------------------------
    def sort_keys(self, types: Sequence[str] | None, raw_values: list[str], unknown: list[str]) -> list[SortKey]:
        keys: list[SortKey] = []
        for raw in raw_values:
            for item in (v.strip() for v in raw.split(",")):
                if not item:
                    continue
                desc = item.startswith("-")
                name = item[1:] if desc else item
                if name == "_id":
                    keys.append(SortKey(name, desc, "r.res_id"))
                    continue
                if name == "_lastUpdated":
                    keys.append(SortKey(name, desc, "r.ts"))
                    continue
                try:
                    params = self.lookup(types, name)
                except _Unsupported:
                    unknown.append(f"_sort={item}")
                    continue
                sp = params[0][1]
                if sp.type not in _SORT_COLUMNS:
                    unknown.append(f"_sort={item}")
                    continue
                agg, col = _SORT_COLUMNS[sp.type][1 if desc else 0]
                conds: list[str] = []
                args: list[Any] = []
                all_codes: list[str] = []
                for group_types, group_sp in params:  # groups differ where a reference is narrowed
                    code, narrow, narrow_args = self.reference_rows(group_types, group_sp, "s.")
                    codes = [q.code for q in self.registry.union_sources(group_sp)] or [code]
                    all_codes += codes
                    scope, scope_params = _scope_sql("s.res_type", group_types if len(params) > 1 else None)
                    conds.append(f"s.param IN ({', '.join('?' for _ in codes)}){narrow}{scope}")
                    args += [*codes, *narrow_args, *scope_params]
                where = conds[0] if len(conds) == 1 else "(" + " OR ".join(f"({c})" for c in conds) + ")"
                froms = index_sources(sp.type, types, all_codes, by_rid=True)
                if len(froms) == 1:
                    sql = f"(SELECT {agg}(s.{col}) FROM {froms[0]} s WHERE s.rid = r.rid AND {where})"
                else:  # the key over the rows of every source
                    rows, args = union_all(
                        froms,
                        f"SELECT s.{col} AS k FROM {{src}} s WHERE s.rid = r.rid AND {where}",
                        args,
                    )
                    sql = f"(SELECT {agg}(m.k) FROM ({rows}) m)"
                keys.append(SortKey(name, desc, sql, tuple(args)))
        return keys

    def include_specs(self, raw: str, reverse: bool, iterate: bool, unknown: list[str], key: str) -> IncludeSpec | None:
        if raw == "*":
            return IncludeSpec(None, None, None, iterate, reverse)
        parts = raw.split(":")
        if len(parts) not in (2, 3) or not parts[0] or not parts[1]:
            raise BadRequest(f"{key} takes Type:parameter[:targetType] or *, not '{raw}'")
        source, name = parts[0], parts[1]
        target = parts[2] if len(parts) == 3 else None
        known = self.registry.resource_types()
        if source not in known or (target is not None and target not in known):
            unknown.append(f"{key}={raw}")
            return None
        if name == "*":
            return IncludeSpec(source, None, target, iterate, reverse)
        sp = self.registry.get(source, name)
        if sp is None or sp.type != "reference":
            unknown.append(f"{key}={raw}")
            return None
        narrowed = self.registry.narrowing(source, name)
        if narrowed is not None:  # its source's rows of its one target type (Registry.narrowings)
            if target is not None and target != narrowed[1]:
                unknown.append(f"{key}={raw}")
                return None
            return IncludeSpec(source, narrowed[0].code, narrowed[1], iterate, reverse)
        return IncludeSpec(source, name, target, iterate, reverse)


def _drive_rank(kind: str, modifier: str | None, values: Sequence[str]) -> int | None:
    """:attr:`Clause.drive` of a reference or token clause (one value, no modifier but a type)."""
    if len(values) != 1 or (modifier is not None and not (kind == "reference" and modifier[:1].isupper())):
        return None
    if kind == "reference" and not _unescape(values[0]).startswith(("http://", "https://", "urn:")):
        return 0 if "/" in _unescape(values[0]) or modifier else 1
    if kind == "token":
        parts = _split_escaped(values[0], "|")
        if len(parts) == 1:
            return 3
        return None if not "|".join(parts[1:]) else 2 if parts[0] else 3
    return None


def _common(registry: Registry, name: str) -> SearchParam | None:
    """A parameter defined on Resource/DomainResource (system-level search without _type)."""
    for p in registry.all():
        if p.code == name and set(p.base) & {"Resource", "DomainResource"}:
            return p
    return None


def _defines(registry: Registry, resource_type: str, name: str) -> bool:
    if name in ("_id", "_has") or name.startswith("_has"):
        return True
    sp = registry.get(resource_type, name)
    return sp is not None and searchable(sp, resource_type)


def parse_search(
    registry: Registry,
    res_type: str | None,
    params: Sequence[tuple[str, str]] | Mapping[str, Sequence[str]],
    strict: bool = False,
    types: Sequence[str] | None = None,
) -> ParsedSearch:
    """Parse query parameters for a search.

    ``res_type`` is the type of a type-level search. For a system-level search it is None and
    ``types`` lists the types searched (from ``_type``), or is None for every type (only the
    common parameters can then be used). ``strict`` makes unknown parameters a 400.
    """
    items = [(k, v) for k, vs in params.items() for v in vs] if isinstance(params, Mapping) else list(params)
    searched: tuple[str, ...] | None = (res_type,) if res_type else (tuple(types) if types is not None else None)
    parsed = ParsedSearch(res_type or "", types=searched or (), all_types=searched is None)
    parser = _Parser(registry)
    unknown = parsed.unknown
    for key, raw in items:
        name = key.partition(":")[0]
        if name in RESULT_PARAMS:
            parsed.control.setdefault(name, []).append(raw)
            continue
        try:
            parsed.clauses.append(parser.clause("r", searched, key, raw))
        except _Unsupported:
            unknown.append(key)
    for key in ("_include", "_revinclude"):
        for raw_key, raw in items:
            head, _, modifier = raw_key.partition(":")
            if head != key:
                continue
            if modifier not in ("", "iterate", "recurse"):
                raise BadRequest(f"{raw_key}: the only modifier of {key} is ':iterate'")
            for value in (v for v in raw.split(",") if v):
                spec = parser.include_specs(value, key == "_revinclude", modifier != "", unknown, raw_key)
                if spec is not None:
                    parsed.includes.append(spec)
    parsed.sort = parser.sort_keys(searched, parsed.control.get("_sort", []), unknown)
    contained = parsed.control.get("_contained", [])
    if any(v != "false" for v in contained):
        unknown.append("_contained")
    if parsed.control.get("_containedType"):
        unknown.append("_containedType")
    if strict and unknown:
        what = searched[0] if searched and len(searched) == 1 else "this search"
        raise BadRequest(
            f"Unknown or unsupported search parameter{'s' if len(unknown) > 1 else ''} "
            f"{', '.join(repr(u) for u in unknown)} for {what}"
        )
    return parsed


def compartment_clause(compartment: Compartment, owner_id: str, res_type: str) -> Clause:
    """Membership of ``res_type`` resources in the compartment of ``compartment.code/owner_id``.

    When the membership is by reference alone (not the owner itself), the clause is an index
    range that can drive a page (:attr:`Clause.drive` 0: one owner's compartment is small).
    """
    clause = compartments_clause(compartment, res_type, "= ?", [owner_id])
    refs = compartment.params_for(res_type)
    if SELF in refs:
        return clause
    marks = ", ".join("?" for _ in refs)
    cond = f"target_id = ? AND target_type = ? AND param IN ({marks})"
    sub = f"SELECT rid FROM idx_reference WHERE {cond} AND res_type = ?"
    exists = f"EXISTS (SELECT 1 FROM idx_reference WHERE rid = r.rid AND {cond})"
    values = [owner_id, compartment.code, *refs]
    return Clause(clause.sql, clause.params, rids=(sub, [*values, res_type]), exists=(exists, values), drive=0)


def compartments_clause(
    compartment: Compartment, res_type: str, owners: str | None, owner_params: Sequence[Any] = ()
) -> Clause:
    """Membership of ``res_type`` resources (alias ``r``) in the compartments of several owners.

    ``owners`` is the condition on an owner's id, ``= ?`` or ``IN (SELECT …)`` (with
    ``owner_params``); None means the compartment of any owner of ``compartment.code``.
    """
    params = compartment.params_for(res_type)
    if not params:
        raise BadRequest(f"{res_type} resources are not in the {compartment.code} compartment")
    refs = [p for p in params if p != SELF]
    parts: list[str] = []
    args: list[Any] = []
    if refs:
        marks = ", ".join("?" for _ in refs)
        owner = "" if owners is None else f"target_id {owners} AND "
        parts.append(
            f"r.rid IN (SELECT rid FROM idx_reference WHERE {owner}target_type = ? "
            f"AND res_type = ? AND param IN ({marks}))"
        )
        args += [*(owner_params if owners is not None else ()), compartment.code, res_type, *refs]
    if SELF in params:
        if owners is None:
            return Clause("1 = 1", [])
        parts.append(f"r.res_id {owners}")
        args += owner_params
    return Clause("(" + " OR ".join(parts) + ")", args)


# -- SQL of a page, a count, includes ----------------------------------------------------------


@dataclass(frozen=True)
class Cursor:
    """A page position: the sort-key values and rid of the row to continue after (or before)."""

    keys: tuple[Any, ...]
    rid: int
    backward: bool = False

    def encode(self) -> str:
        keys = [{"d": str(k)} if isinstance(k, Decimal) else k for k in self.keys]
        text = json.dumps(["p" if self.backward else "n", keys, self.rid], separators=(",", ":"))
        return base64.urlsafe_b64encode(text.encode()).decode().rstrip("=")

    @classmethod
    def decode(cls, token: str) -> Cursor:
        try:
            data = json.loads(base64.urlsafe_b64decode(token + "=" * (-len(token) % 4)))
            direction, keys, rid = data
            values = tuple(Decimal(k["d"]) if isinstance(k, dict) else k for k in keys)
            if direction not in ("n", "p") or not isinstance(rid, int):
                raise ValueError(direction)
        except (ValueError, TypeError, KeyError, binascii.Error, UnicodeDecodeError) as exc:
            raise BadRequest(f"_cursor '{token[:40]}' is not a cursor this server issued") from exc
        return cls(values, rid, direction == "p")


def _where(parsed: ParsedSearch, clauses: Sequence[Clause] | None = None) -> tuple[list[str], list[Any]]:
    """Conditions on ``resources r``: current, of the types searched, matching ``clauses`` (default: all)."""
    where = ["r.deleted = 0"]
    params: list[Any] = []
    if not parsed.all_types:
        scope, scope_params = _scope_sql("r.res_type", parsed.types)
        where.append(scope[len(" AND ") :])
        params += scope_params
    for c in parsed.clauses if clauses is None else clauses:
        where.append(c.sql)
        params.extend(c.params)
    return where, params


def _keyset(
    cols: Sequence[str], descending: Sequence[bool], nulls_first: bool, values: Sequence[Any]
) -> tuple[str, list[Any]]:
    """Rows strictly after ``values`` in the order given by ``cols`` (the last column never NULL)."""
    ors: list[str] = []
    params: list[Any] = []
    eq: list[str] = []
    eq_params: list[Any] = []
    for i, (col, desc, value) in enumerate(zip(cols, descending, values, strict=True)):
        last = i == len(cols) - 1
        if value is None:
            after = f"{col} IS NOT NULL" if nulls_first else None
            after_params: list[Any] = []
        else:
            after = f"{col} {'<' if desc else '>'} ?"
            after_params = [value]
            if not nulls_first and not last:
                after = f"({after} OR {col} IS NULL)"
        if after is not None:
            ors.append("(" + " AND ".join([*eq, after]) + ")")
            params += [*eq_params, *after_params]
        if value is None:
            eq.append(f"{col} IS NULL")
        else:
            eq.append(f"{col} = ?")
            eq_params.append(value)
    return ("(" + " OR ".join(ors) + ")" if ors else "1 = 0"), params


#: entries of a range counted at most when sizing the candidates to drive a page (see :func:`_driver`)
SIZE_LIMIT = 1000

#: runs ``SELECT COUNT(*) …`` with its values and returns the count (the store's query)
RangeCounter = Callable[[str, list[Any]], int]


def range_size(query: Callable[[str, Sequence[Any]], list[tuple[Any, ...]]]) -> RangeCounter:
    """A :data:`RangeCounter` over a store's ``query``."""
    return lambda sql, params: int(query(sql, params)[0][0])


def _bounded_size(clause: Clause, count: RangeCounter) -> int:
    """Entries of ``clause``'s index range, counted up to :data:`SIZE_LIMIT` (an index walk at most that long)."""
    assert clause.rids is not None
    sub, params = clause.rids
    return count(f"SELECT COUNT(*) FROM (SELECT 1 FROM ({sub}) s LIMIT {SIZE_LIMIT}) n", list(params))


def _driver(parsed: ParsedSearch, count: RangeCounter | None = None) -> Clause | None:
    """The clause a page in ``rid`` order can walk, the others being tested as probes on each match.

    The only index-range clause drives; among several, the others then tested through their
    ``EXISTS`` form, the smallest range drives when ``count`` can size them (each counted up to
    :data:`SIZE_LIMIT` entries: a bounded index walk per candidate), ties (every range that
    large) going to the best :attr:`Clause.drive` rank, the first of equals. The rank alone is a
    guess at which range is small without looking at the data: one patient's (one reference
    target's) resources are usually a few hundred, one code's can be a large share of a table,
    and ``system|code`` narrows a bare code. The guess is wrong for genomic data (a patient with
    100,000 variant Observations and a gene with ten): a wrong driver is read until a page is
    full (all of it when fewer match), probing each entry, hence the sizing. Ranges without a
    rank (several values, prefixes, two-sided dates…) do not drive others, nor does anything
    when a clause is neither a range with a probe form nor a probe.
    """
    if parsed.sort:
        return None
    ranges = [c for c in parsed.clauses if c.rids is not None]
    if len(ranges) == 1:
        driver = ranges[0]
    else:
        ranked = [c for c in ranges if c.drive is not None]
        if not ranked:
            return None
        if count is not None and len(ranked) > 1:
            sizes = {id(c): _bounded_size(c, count) for c in ranked}
            driver = min(ranked, key=lambda c: (sizes[id(c)], c.drive or 0))
        else:
            driver = min(ranked, key=lambda c: c.drive or 0)
    if not all(c.probe or c.exists is not None for c in parsed.clauses if c is not driver):
        return None
    return driver


def _probe(clause: Clause) -> Clause:
    """``clause`` as a per-candidate probe (its ``EXISTS`` form when it is a range)."""
    if clause.probe or clause.exists is None:
        return clause
    return Clause(clause.exists[0], list(clause.exists[1]), probe=True)


def _driven_page_sql(parsed: ParsedSearch, driver: Clause, cursor: Cursor | None, limit: int) -> tuple[str, list[Any]]:
    """A page in ``rid`` order that reads the driver's index range in that order and stops at ``limit``.

    ``r.rid IN (SELECT rid FROM idx_token WHERE param = ? AND res_type = ? AND code = ? …)``
    leaves PostgreSQL a semi-join: it hashes every match, or merge-joins the matches with
    ``resources`` read in key order, which on a store loaded type by type reads every row of the
    types loaded before the first match. Here the matches are the outer side of a join, in
    ``rid`` order (the order of an index range whose leading columns are all fixed by equality,
    e.g. ``idx_token_value`` for one code), de-duplicated by ``DISTINCT`` on that order and
    limited; the remaining clauses (probes, ``EXISTS (… WHERE rid = r.rid …)``) are tested on
    each match, as the range is aliased ``r`` (they need nothing but the rid), before it is
    looked up in ``resources t`` by key: a match a probe rejects costs no row read. ``r.rid +
    0`` puts the join key outside ``rid``'s equivalence class, so ``resources`` read in key
    order does not count as reading the matches in order (no merge join on the primary key).
    The keyset condition is on ``r.rid``, where the index range seeks to it. The outer query
    adds ``res_type, res_id`` to the page's rids.
    """
    assert driver.rids is not None
    where, params = ["t.deleted = 0"], []
    if not parsed.all_types:
        scope, scope_params = _scope_sql("t.res_type", parsed.types)
        where.append(scope[len(" AND ") :])
        params += scope_params
    for c in parsed.clauses:
        if c is not driver:
            probe = _probe(c)
            where.append(probe.sql)
            params += probe.params
    backward = cursor is not None and cursor.backward
    if cursor is not None:
        if cursor.keys:
            raise BadRequest("_cursor does not belong to this search (its _sort differs)")
        where.append(f"r.rid {'<' if backward else '>'} ?")
        params.append(cursor.rid)
    order = "DESC" if backward else "ASC"
    ranges = driver.arms or (driver.rids,)
    walks = [
        f"SELECT DISTINCT r.rid FROM ({sub}) r JOIN resources t ON t.rid = r.rid + 0 "
        f"WHERE {' AND '.join(where)} ORDER BY r.rid {order} LIMIT {int(limit)}"
        for sub, _ in ranges
    ]
    # a range of several arms (implied rows beside the index table's): each arm walked in rid order
    # and limited, then merged (a compound inside the join would be materialised whole first)
    inner = (
        walks[0]
        if len(walks) == 1
        else (
            " UNION ".join(f"SELECT rid FROM ({w}) w{k}" for k, w in enumerate(walks))
            + f" ORDER BY rid {order} LIMIT {int(limit)}"
        )
    )
    sql = (
        f"SELECT q.rid, r.res_type, r.res_id FROM ({inner}) q JOIN resources r ON r.rid = q.rid ORDER BY q.rid {order}"
    )
    return sql, [x for _, sub_params in ranges for x in (*sub_params, *params)]


def page_sql(
    parsed: ParsedSearch, cursor: Cursor | None, limit: int, count: RangeCounter | None = None
) -> tuple[str, list[Any]]:
    """SQL of one page: rows ``(rid, res_type, res_id, *sort keys)`` in page order.

    A backward cursor selects the rows before it, in reverse order (the caller reverses them).
    A search in ``rid`` order whose clauses are index ranges and probes walks one of the ranges
    (:func:`_driven_page_sql`); ``count`` (:func:`range_size` over the store) lets
    :func:`_driver` pick the smallest when there are several.
    """
    driver = _driver(parsed, count)
    if driver is not None:
        return _driven_page_sql(parsed, driver, cursor, limit)
    where, params = _where(parsed)
    backward = cursor is not None and cursor.backward
    keys = parsed.sort
    select_keys = "".join(f", {k.sql} AS k{i}" for i, k in enumerate(keys))
    key_params = [p for k in keys for p in k.params]
    inner = f"SELECT r.rid, r.res_type, r.res_id{select_keys} FROM resources r WHERE {' AND '.join(where)}"
    cols = [f"q.k{i}" for i in range(len(keys))] + ["q.rid"]
    descending = [k.descending != backward for k in keys] + [backward]
    nulls = "NULLS FIRST" if backward else "NULLS LAST"
    order = ", ".join(
        f"{c} {'DESC' if d else 'ASC'}{f' {nulls}' if c != 'q.rid' else ''}"
        for c, d in zip(cols, descending, strict=True)
    )
    outer_where = ""
    outer_params: list[Any] = []
    if cursor is not None:
        if len(cursor.keys) != len(keys):
            raise BadRequest("_cursor does not belong to this search (its _sort differs)")
        cond, outer_params = _keyset(cols, descending, backward, [*cursor.keys, cursor.rid])
        outer_where = f" WHERE {cond}"
    if keys:
        # every match needs its keys before the sort: compute them once (no re-evaluation of the
        # key subqueries in the keyset condition, which a flattened subquery would do)
        sql = f"WITH q AS MATERIALIZED ({inner}) SELECT * FROM q{outer_where} ORDER BY {order} LIMIT {int(limit)}"
    else:
        sql = f"SELECT * FROM ({inner}) q{outer_where} ORDER BY {order} LIMIT {int(limit)}"
    return sql, [*key_params, *params, *outer_params]


def count_sql(parsed: ParsedSearch) -> tuple[str, list[Any]]:
    where, params = _where(parsed)
    return f"SELECT COUNT(*) FROM resources r WHERE {' AND '.join(where)}", params


def build_sql(parsed: ParsedSearch, after_rid: int = 0, limit: int | None = None) -> tuple[str, list[Any]]:
    """SQL returning (rid, res_id) of matches in insertion order (conditional interactions)."""
    where, params = _where(parsed)
    if after_rid:
        where.append("r.rid > ?")
        params.append(after_rid)
    sql = f"SELECT r.rid, r.res_id FROM resources r WHERE {' AND '.join(where)} ORDER BY r.rid"
    if limit is not None:
        sql += f" LIMIT {int(limit)}"
    return sql, params


def include_sql(spec: IncludeSpec, source_rids: Sequence[int]) -> tuple[str, list[Any]]:
    """``_include``: current resources referenced by ``source_rids`` -> (rid, res_type, res_id)."""
    marks = ", ".join("?" for _ in source_rids)
    where = f"x.rid IN ({marks})"
    params: list[Any] = list(source_rids)
    # ``x.param || ''``: no index by parameter (idx_reference_value, every row of the parameter on
    # the type) looks cheaper to a planner without statistics than the page's rows by rid
    for column, value in (("x.res_type", spec.source), ("x.param || ''", spec.param), ("x.target_type", spec.target)):
        if value is not None:
            where += f" AND {column} = ?"
            params.append(value)
    froms = index_sources(
        "reference", None if spec.source is None else (spec.source,), spec.param, spec.target, by_rid=True
    )
    if len(froms) == 1:
        refs = "idx_reference x"
    else:  # some rows may be implied by the range index (server.search.implied)
        arms, params = union_all(froms, f"SELECT x.target_type, x.target_id FROM {{src}} x WHERE {where}", params)
        where = "1 = 1"
        refs = f"({arms}) x"
    sql = (
        f"SELECT DISTINCT t.rid, t.res_type, t.res_id FROM {refs} "
        "JOIN resources t ON t.res_type = x.target_type AND t.res_id = x.target_id "
        f"WHERE {where} AND t.deleted = 0"
    )
    return sql, params


def revinclude_sql(
    spec: IncludeSpec, target_type: str, target_ids: Iterable[str], registry: Registry
) -> tuple[str, list[Any]]:
    """``_revinclude``: current resources referring to ``target_type/target_ids``.

    The rows are found through ``idx_reference_value`` (``param, res_type, target_id, …``; there is
    no index by target alone, see ``server/store/schema.py``): one arm per source type (``spec``'s,
    else every type) asking for its reference rows of ``spec``'s parameter, or, for every
    parameter (``Type:*``, ``*``), of the codes its reference rows are written under
    (:func:`_reference_codes`).
    """
    ids = list(target_ids)
    arms: list[tuple[str, list[Any]]] = []
    sources = [spec.source] if spec.source is not None else sorted(registry.resource_types())
    for source in sources if ids else ():
        codes = _reference_codes(registry, source) if spec.param is None else [spec.param]
        if codes:
            arms += each_source(
                index_sources("reference", (source,), spec.param, target_type),
                f"SELECT x.rid FROM {{src}} x WHERE x.param IN ({', '.join('?' for _ in codes)}) "
                "AND x.res_type = ? AND x.target_id IN (SELECT id FROM ids) AND x.target_type = ?",
                [*codes, source, target_type],
            )
    if not arms:  # no ids, or no reference parameter
        return "SELECT rid, res_type, res_id FROM resources WHERE 1 = 0", []
    rows, params = compound(arms)
    values = ", ".join("(?)" for _ in ids)
    sql = (
        f"WITH ids (id) AS (VALUES {values}) SELECT DISTINCT t.rid, t.res_type, t.res_id FROM "
        f"({rows}) x JOIN resources t ON t.rid = x.rid WHERE t.deleted = 0"
    )
    return sql, [*ids, *params]


def _reference_codes(registry: Registry, resource_type: str) -> list[str]:
    """The ``param`` codes of ``resource_type``'s reference rows: its reference parameters, and the
    reference components of its composites (``code:k``), as the extractor writes them."""
    codes: list[str] = []
    for code, sp in sorted(registry.params_for(resource_type).items()):
        if sp.type == "reference":
            codes.append(code)
        elif sp.type == "composite":
            for k, (definition, _) in enumerate(sp.components):
                component = registry.by_url(definition)
                if component is not None and component.type == "reference":
                    codes.append(f"{code}:{k}")
    return codes
