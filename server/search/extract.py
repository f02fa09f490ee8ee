"""Index values of a resource, extracted with each search parameter's compiled expression.

At write time every applicable parameter's FHIRPath ``expression`` is evaluated on the resource
and the results become rows of the index table of the parameter ``type``
(http://hl7.org/fhir/R4/search.html, "Search Parameter Types"). A generic FHIRPath interpreter is
far too slow for that hot path, so each (resource type, parameter) expression is compiled once
into Python closures over the JSON dicts. The compiler is typed by the R4 type model of the
registry: it knows that ``Observation.value`` is a choice element (JSON ``valueQuantity`` …) and
that ``Patient.telecom`` holds ContactPoints, so each compiled branch yields values of one known
type and its row builder is chosen at compile time.

Per resource type (:class:`TypeExtractor`) the branches are grouped by the top-level JSON
property they read, and Python source is generated with one function per property: branches that
only walk JSON properties (most of them: ``Claim.item.detail.udi``) are walked inline, each path
prefix once, the others call their closure; a resource only pays for the properties it has.
Composites with the same items and components share one evaluation per resource, and the pure
string functions (:func:`normalize_string`, :func:`reference_target`, :func:`date_range`) remember
their recent results. ``bench/extract.py`` measures the time per resource.

Supported FHIRPath (http://hl7.org/fhirpath/N1/): paths, ``|``, ``where()``, ``as``/``as()``/
``ofType()``/``is``, ``exists()``, ``empty()``, ``not()``, ``first()``, ``[n]``, ``extension(url)``,
``resolve() is Type`` (the type is read from the reference itself), ``=``/``!=``, ``and``/``or``
and literals. ``as`` on a collection filters it (the R4 search usage, FHIRPath ``ofType``).
Anything else falls back to fhirpathpy for that parameter (see :func:`fallback_expressions`).

Row semantics (one builder per parameter type and value type, shared with the fallback path):

* string: lower-cased (``casefold``), accents removed, whitespace collapsed; HumanName and
  Address give one row per part.
* token: Coding, CodeableConcept (+ ``text`` as a text-only row), Identifier (+ type text),
  ContactPoint value, and primitives (booleans as ``true``/``false``). The ``text`` column
  (display, CodeableConcept.text, Identifier.type.text) is normalised like string values, so
  ``:text`` is case- and accent-insensitive on every backend. An Identifier with a typed
  ``type.coding`` also gives a ``P:of-type`` row (type system, ``typecode|value``) for
  ``:of-type``.
* reference: target type and id parsed from relative or absolute references, canonical/uri
  values and ``urn:`` references as url only, contained (``#``) references skipped; a
  Reference.identifier also gives a token row for ``:identifier``.
* date: half-open UTC interval [low, high) in epoch seconds covering the value's precision;
  open Period ends are ``-1e18``/``1e18``; Timing gives the outer limits of its events/bounds.
* number / quantity / uri: the value (Decimal kept), Money as ISO 4217 quantity.
* ``_id`` and ``_lastUpdated`` are not indexed: the ``resources`` table has them (``RESOURCE_COLUMNS``).
* union parameters (:meth:`server.search.registry.Registry.unions`: R4's ``combo-*``, whose
  expression is the union of other parameters' expressions) are not indexed either: their rows
  would repeat those of the parameters they unite, which a search reads instead.
* narrowed reference parameters (``Registry.narrowings``: Observation's ``patient`` is
  ``subject.where(resolve() is Patient)``) get only their identifier token rows: their reference
  rows would be their source's rows of that target type, which a search reads instead. A
  reference row's ``target_type`` is the type ``resolve()`` sees: the url's, else
  ``Reference.type`` (a ``urn:uuid:`` reference declared a Patient is a Patient's).
* composites on the resource itself whose every component selects exactly the values of another
  parameter of the type (:func:`root_composites`: R4's ``code-value-quantity``,
  ``code-value-concept`` and ``code-value-date`` on Observation, a sixth of an Observation's
  rows) are not indexed either: the resource is their only item, so a search is the AND of
  the same values on those parameters (:mod:`server.search.query`).
* composite (search.html#composite): the composite's expression selects items (the resource
  itself, or e.g. each ``Observation.component``); each component's expression is evaluated on
  the item (``%resource.…`` on the resource) with the row builder of the component parameter's
  type, and its rows are stored under ``P:k`` (k = component index) with the item number as
  ``grp``, so a query can require all components to match on the same item (see
  ``server/store/schema.py``). Component token rows carry no text (composites match codes).
"""

from __future__ import annotations

import logging
import re
import unicodedata
import weakref
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field, fields
from decimal import Decimal
from typing import Any, NamedTuple, TypeVar

# fhirpathpy is untyped (pyproject's mypy override covers it); used for fallbacks only.
from fhirpathpy import compile as fp_compile
from fhirpathpy.engine.nodes import ResourceNode
from fhirpathpy.models import models as fp_models

from server.search.registry import Registry, SearchParam, TypeModel, default_registry, split_union

__all__ = [
    "NEG_INF",
    "POS_INF",
    "RESOURCE_COLUMNS",
    "CompileError",
    "CompiledExpression",
    "IndexRows",
    "TypeExtractor",
    "add_rows",
    "compile_expression",
    "composite_sources",
    "date_range",
    "extract",
    "extractor_for",
    "fallback_expressions",
    "fhirpath_values",
    "normalize_string",
    "parse_reference",
    "reference_target",
    "reference_type",
    "root_composites",
]

log = logging.getLogger(__name__)

#: Parameters answered from the ``resources`` table (its id and lastUpdated columns), so not indexed.
RESOURCE_COLUMNS = frozenset({"_id", "_lastUpdated"})
#: Open ends of date intervals: finite so they fit SQL REAL columns, far beyond any real date.
NEG_INF = -1e18
POS_INF = 1e18
ISO_4217 = "urn:iso:std:iso:4217"

Fn = Callable[[Any], list[Any]]
Emit = Callable[["IndexRows", str, Any], None]


#: One index row: ``(param, *value columns)`` in the column order of ``server.store.base.INDEX_TABLES``
#: (token: system, code, text; string: value, exact; reference: target_type, target_id, url;
#: date: low, high; number: value; quantity: value, system, code, unit; uri: value), plus a
#: trailing ``grp`` for the component rows of a composite.
Row = tuple[Any, ...]


_TABLES = ("token", "string", "reference", "date", "number", "quantity", "uri")


@dataclass(slots=True)
class IndexRows:
    """The index rows of one resource, by index table (each row starts with the parameter code)."""

    token: list[Row] = field(default_factory=list)
    string: list[Row] = field(default_factory=list)
    reference: list[Row] = field(default_factory=list)
    date: list[Row] = field(default_factory=list)
    number: list[Row] = field(default_factory=list)
    quantity: list[Row] = field(default_factory=list)
    uri: list[Row] = field(default_factory=list)

    def dedupe(self) -> None:
        """Drop repeated rows (keeping order), e.g. the same coding reached by two branches."""
        for name in _TABLES:  # a loop, not unrolled: unrolling measured 0.3 µs per resource faster
            rows = getattr(self, name)
            if len(rows) > 1 and len(unique := dict.fromkeys(rows)) < len(rows):
                setattr(self, name, list(unique))

    def __bool__(self) -> bool:
        return any(getattr(self, name) for name in _TABLES)

    def only(self, code: str) -> IndexRows:
        """The rows of one parameter, with its derived rows (``code:of-type``, composite ``code:k``)."""
        derived = code + ":"
        return IndexRows(
            *([r for r in getattr(self, f.name) if r[0] == code or r[0].startswith(derived)] for f in fields(self))
        )


# --------------------------------------------------------------------------------------------
# Value -> rows


def _str(value: Any) -> str | None:
    return value if isinstance(value, str) and value else None


#: Memo tables of the pure string functions below (display texts, references and dates repeat
#: across resources: a LOINC display, ``Patient/…`` of every resource of a patient): bounded by
#: emptying them when full; strings longer than ``_MEMO_MAX_LEN`` are not remembered.
_MEMO_SIZE = 20_000
_MEMO_MAX_LEN = 128

V = TypeVar("V")


class _Memo(dict[str, V]):
    """``memo[key]``: ``compute(key)``, remembered for short keys (a hit is one dict lookup in C)."""

    def __init__(self, compute: Callable[[str], V]) -> None:
        super().__init__()
        self.compute = compute

    def __missing__(self, key: str) -> V:
        out = self.compute(key)
        if len(key) <= _MEMO_MAX_LEN:
            if len(self) >= _MEMO_SIZE:
                self.clear()
            self[key] = out
        return out


def normalize_string(value: str) -> str:
    """The string-index form: case-folded, accents stripped, whitespace collapsed."""
    return _normalized[value]


def _normalize(value: str) -> str:
    if value.isascii():
        return " ".join(value.lower().split())
    decomposed = unicodedata.normalize("NFKD", value.casefold())
    stripped = "".join(ch for ch in decomposed if not unicodedata.combining(ch))
    return " ".join(stripped.split())


_normalized = _Memo(_normalize)

_REFERENCE = re.compile(r"(?:^|/)([A-Z][A-Za-z]+)/([A-Za-z0-9\-.]{1,64})(?:/_history/[A-Za-z0-9\-.]{1,64})?$")


def reference_target(reference: str) -> tuple[str | None, str | None]:
    """(type, id) of a literal reference, relative or absolute; (None, None) if not parseable."""
    return _targets[reference]


def parse_reference(reference: str) -> tuple[str | None, str | None]:
    """:func:`reference_target` without its memo (for references that do not repeat)."""
    if reference.startswith(("urn:", "#")):
        return None, None
    m = _REFERENCE.search(reference)
    if m is None:
        return None, None
    return m.group(1), m.group(2)


_targets = _Memo(parse_reference)


def reference_type(value: Any) -> str | None:
    """The resource type a Reference points to: from its url, else its ``type`` element."""
    if not isinstance(value, dict):
        return None
    ref = value.get("reference")
    if isinstance(ref, str) and ref and not ref.startswith("#"):
        rtype, _ = reference_target(ref)
        if rtype:
            return rtype
    declared = value.get("type")
    if isinstance(declared, str) and declared:
        return declared.rsplit("/", 1)[-1]
    return None


def _token_primitive(rows: IndexRows, code: str, value: Any) -> None:
    if isinstance(value, bool):
        rows.token.append((code, None, "true" if value else "false", None))
    elif isinstance(value, str):
        if value:
            rows.token.append((code, None, value, None))
    elif isinstance(value, int | Decimal | float):
        rows.token.append((code, None, str(value), None))


def _token_coding(rows: IndexRows, code: str, value: Any) -> None:
    if value.__class__ is dict:
        system, c, display = value.get("system"), value.get("code"), value.get("display")
        if system.__class__ is not str or not system:
            system = None
        if c.__class__ is not str or not c:
            c = None
        if display.__class__ is not str or not display:
            display = None
        if system or c or display:
            rows.token.append((code, system, c, _normalized[display] if display else None))


def _token_codeable_concept(rows: IndexRows, code: str, value: Any) -> None:
    if not isinstance(value, dict):
        return
    codings = value.get("coding")
    if isinstance(codings, list):
        for coding in codings:
            _token_coding(rows, code, coding)
    text = value.get("text")
    if isinstance(text, str) and text:
        rows.token.append((code, None, None, _normalized[text]))


def _token_identifier(rows: IndexRows, code: str, value: Any) -> None:
    if not isinstance(value, dict):
        return
    system, v = value.get("system"), value.get("value")
    if not isinstance(system, str) or not system:
        system = None
    if not isinstance(v, str) or not v:
        v = None
    if system or v:
        typ = value.get("type")
        text = _str(typ.get("text")) if isinstance(typ, dict) else None
        rows.token.append((code, system, v, _normalized[text] if text else None))
        codings = typ.get("coding") if isinstance(typ, dict) and v else None
        if isinstance(codings, list):
            for coding in codings:
                type_code = _str(coding.get("code")) if isinstance(coding, dict) else None
                if type_code:
                    rows.token.append((code + ":of-type", _str(coding.get("system")), f"{type_code}|{v}", None))


def _token_contact_point(rows: IndexRows, code: str, value: Any) -> None:
    if isinstance(value, dict):
        v = _str(value.get("value"))
        if v:
            rows.token.append((code, None, v, None))


def _string_primitive(rows: IndexRows, code: str, value: Any) -> None:
    if isinstance(value, str) and value:
        rows.string.append((code, _normalized[value], value))


def _string_parts(keys: Sequence[str]) -> Emit:
    def emit(rows: IndexRows, code: str, value: Any) -> None:
        if not isinstance(value, dict):
            return
        out = rows.string
        for key in keys:
            part = value.get(key)
            if part is None:
                continue
            for p in part if isinstance(part, list) else (part,):
                if isinstance(p, str) and p:
                    out.append((code, _normalized[p], p))

    return emit


def _reference_reference(rows: IndexRows, code: str, value: Any) -> None:
    if not isinstance(value, dict):
        return
    ref = value.get("reference")
    if isinstance(ref, str) and ref and not ref.startswith("#"):
        rtype, rid = _targets[ref]
        if rtype is None:  # a urn: or other url: the type resolve() sees is the declared one
            rtype = reference_type(value)
        rows.reference.append((code, rtype, rid, ref))
    _reference_identifier(rows, code, value)


def _reference_identifier(rows: IndexRows, code: str, value: Any) -> None:
    """The token row of a Reference's identifier (``:identifier``); alone, the rows of a narrowed
    parameter (``Registry.narrowings``), whose reference rows are its source's."""
    if not isinstance(value, dict):
        return
    ident = value.get("identifier")
    if isinstance(ident, dict):
        system, v = _str(ident.get("system")), _str(ident.get("value"))
        if system or v:
            rows.token.append((code, system, v, None))


def _reference_uri(rows: IndexRows, code: str, value: Any) -> None:
    if isinstance(value, str) and value and not value.startswith("#"):
        rows.reference.append((code, None, None, value))


_DATE = re.compile(
    r"(\d{4})(?:-(\d{2})(?:-(\d{2})"  # year, month, day
    r"(?:T(\d{2}):(\d{2})(?::(\d{2})(\.\d+)?)?(Z|[+-]\d{2}:\d{2})?)?)?)?",  # time, fraction, zone
)
_DAYS_BEFORE_MONTH = (0, 0, 31, 59, 90, 120, 151, 181, 212, 243, 273, 304, 334)


def _is_leap(y: int) -> bool:
    return y % 4 == 0 and (y % 100 != 0 or y % 400 == 0)


def _days_in_month(y: int, m: int) -> int:
    if m == 2:
        return 29 if _is_leap(y) else 28
    return 30 if m in (4, 6, 9, 11) else 31


def _epoch_day(y: int, m: int, d: int) -> int:
    """Days since 1970-01-01 of a proleptic Gregorian date (any year, no datetime limits)."""
    y1 = y - 1
    days = 365 * y1 + y1 // 4 - y1 // 100 + y1 // 400  # days before Jan 1 of year y, from 0001-01-01
    days += _DAYS_BEFORE_MONTH[m] + (1 if m > 2 and _is_leap(y) else 0) + d - 1
    return days - 719162  # 719162 = days from 0001-01-01 to 1970-01-01


def date_range(value: str) -> tuple[float, float] | None:
    """[low, high) in UTC epoch seconds of a FHIR date/dateTime/instant, covering its precision.

    No time zone means UTC. None if the string is not a FHIR date (remembered too).
    """
    return _ranges[value]


def _date_range(value: str) -> tuple[float, float] | None:
    m = _DATE.fullmatch(value)
    if m is None:
        return None
    year_s, month_s, day_s, hour_s, minute_s, second_s, frac_s, tz = m.groups()
    y = int(year_s)
    if month_s is None:
        return float(_epoch_day(y, 1, 1) * 86400), float(_epoch_day(y + 1, 1, 1) * 86400)
    mo = int(month_s)
    if not 1 <= mo <= 12:
        return None
    if day_s is None:
        ny, nm = (y + 1, 1) if mo == 12 else (y, mo + 1)
        return float(_epoch_day(y, mo, 1) * 86400), float(_epoch_day(ny, nm, 1) * 86400)
    d = int(day_s)
    if not 1 <= d <= _days_in_month(y, mo):
        return None
    day_start = _epoch_day(y, mo, d) * 86400
    if hour_s is None:
        return float(day_start), float(day_start + 86400)
    hh, mm = int(hour_s), int(minute_s)
    ss = int(second_s) if second_s is not None else 0
    if hh > 23 or mm > 59 or ss > 60:
        return None
    low: float = day_start + hh * 3600 + mm * 60 + ss
    if second_s is None:
        width: float = 60
    elif frac_s:
        low += float(frac_s)
        width = 10.0 ** -(len(frac_s) - 1)
    else:
        width = 1
    if tz and tz != "Z":
        offset = (int(tz[1:3]) * 60 + int(tz[4:6])) * 60
        low -= offset if tz[0] == "+" else -offset
    return low, low + width


_ranges = _Memo(_date_range)


def _date_primitive(rows: IndexRows, code: str, value: Any) -> None:
    if isinstance(value, str):
        rng = _ranges[value]
        if rng is not None:
            rows.date.append((code, rng[0], rng[1]))


def _period_range(value: Any) -> tuple[float, float] | None:
    if not isinstance(value, dict):
        return None
    start, end = value.get("start"), value.get("end")
    if not isinstance(start, str) and not isinstance(end, str):
        return None
    low, high = NEG_INF, POS_INF
    if isinstance(start, str):
        rng = date_range(start)
        if rng is None:
            return None
        low = rng[0]
    if isinstance(end, str):
        rng = date_range(end)
        if rng is None:
            return None
        high = rng[1]
    return low, high


def _date_period(rows: IndexRows, code: str, value: Any) -> None:
    rng = _period_range(value)
    if rng is not None:
        rows.date.append((code, rng[0], rng[1]))


def _date_timing(rows: IndexRows, code: str, value: Any) -> None:
    if not isinstance(value, dict):
        return
    ranges: list[tuple[float, float]] = []
    events = value.get("event")
    if isinstance(events, list):
        for event in events:
            rng = date_range(event) if isinstance(event, str) else None
            if rng is not None:
                ranges.append(rng)
    repeat = value.get("repeat")
    if isinstance(repeat, dict):
        bounds = _period_range(repeat.get("boundsPeriod"))
        if bounds is not None:
            ranges.append(bounds)
    if ranges:
        rows.date.append((code, min(r[0] for r in ranges), max(r[1] for r in ranges)))


def _number(value: Any) -> Decimal | float | None:
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return Decimal(value)
    if isinstance(value, Decimal | float):
        return value
    return None


def _number_primitive(rows: IndexRows, code: str, value: Any) -> None:
    n = _number(value)
    if n is not None:
        rows.number.append((code, n))


def _quantity(rows: IndexRows, code: str, value: Any) -> None:
    if isinstance(value, dict):
        n = value.get("value")
        if isinstance(n, bool):  # _number, inlined
            return
        if isinstance(n, int):
            n = Decimal(n)
        elif not isinstance(n, Decimal | float):
            return
        system, c, unit = value.get("system"), value.get("code"), value.get("unit")
        rows.quantity.append(
            (
                code,
                n,
                system if isinstance(system, str) and system else None,
                c if isinstance(c, str) and c else None,
                unit if isinstance(unit, str) and unit else None,
            )
        )


def _money(rows: IndexRows, code: str, value: Any) -> None:
    if isinstance(value, dict):
        n = _number(value.get("value"))
        if n is not None:
            currency = _str(value.get("currency"))
            rows.quantity.append((code, n, ISO_4217 if currency else None, currency, None))


def _uri_primitive(rows: IndexRows, code: str, value: Any) -> None:
    if isinstance(value, str) and value:
        rows.uri.append((code, value))


#: (parameter type, value type) -> row builder. Subtypes use their base's builder (code -> string,
#: canonical -> uri, Age -> Quantity …); value types without an entry give no rows (e.g. Range
#: for a quantity parameter, which has no single value).
_EMITTERS: Mapping[str, Mapping[str, Emit]] = {
    "token": {
        "Coding": _token_coding,
        "CodeableConcept": _token_codeable_concept,
        "Identifier": _token_identifier,
        "ContactPoint": _token_contact_point,
        "string": _token_primitive,
        "uri": _token_primitive,
        "boolean": _token_primitive,
        "integer": _token_primitive,
        "decimal": _token_primitive,
    },
    "string": {
        "string": _string_primitive,
        "uri": _string_primitive,
        "HumanName": _string_parts(("family", "given", "prefix", "suffix", "text")),
        "Address": _string_parts(("line", "city", "district", "state", "postalCode", "country", "text")),
    },
    "reference": {
        "Reference": _reference_reference,
        "uri": _reference_uri,
    },
    "date": {
        "date": _date_primitive,
        "dateTime": _date_primitive,
        "instant": _date_primitive,
        "Period": _date_period,
        "Timing": _date_timing,
    },
    "number": {"integer": _number_primitive, "decimal": _number_primitive},
    "quantity": {"Quantity": _quantity, "Money": _money},
    "uri": {"uri": _uri_primitive, "string": _uri_primitive},
}


def _emitter(types: TypeModel, param_type: str, value_type: str) -> Emit | None:
    table = _EMITTERS.get(param_type)
    if not table:
        return None
    for t in types.ancestors(types.canonical_name(value_type)):
        if t in table:
            return table[t]
    return None


def add_rows(
    rows: IndexRows, types: TypeModel, param_type: str, code: str, typed_values: Iterable[tuple[str, Any]]
) -> None:
    """Append the rows of ``(value type, value)`` pairs for a parameter of ``param_type``."""
    for value_type, value in typed_values:
        emit = _emitter(types, param_type, value_type)
        if emit is not None and value is not None:
            emit(rows, code, value)


# --------------------------------------------------------------------------------------------
# FHIRPath subset: tokens -> AST


class CompileError(Exception):
    """The expression uses FHIRPath this compiler does not handle (the caller falls back)."""


@dataclass(frozen=True, slots=True)
class _Lit:
    value: Any


@dataclass(frozen=True, slots=True)
class _This:
    pass


@dataclass(frozen=True, slots=True)
class _Member:
    target: _Node | None
    name: str


@dataclass(frozen=True, slots=True)
class _Call:
    target: _Node | None
    name: str
    args: tuple[_Node, ...]


@dataclass(frozen=True, slots=True)
class _Index:
    target: _Node
    index: _Node


@dataclass(frozen=True, slots=True)
class _Op:
    op: str
    left: _Node
    right: _Node


@dataclass(frozen=True, slots=True)
class _TypeOp:
    op: str  # "is" | "as"
    operand: _Node
    type_name: str


_Node = _Lit | _This | _Member | _Call | _Index | _Op | _TypeOp

_TOKEN = re.compile(
    r"\s*(?:(?P<num>\d+(?:\.\d+)?)|(?P<str>'(?:[^'\\]|\\.)*')|(?P<ident>[A-Za-z_][A-Za-z0-9_]*)"
    r"|(?P<quoted>`[^`]*`)|(?P<special>[$%@][A-Za-z0-9_]*)|(?P<op>!=|!~|<=|>=|[.()\[\],|=~<>+\-*/&{}]))"
)
_ESCAPES = {"'": "'", '"': '"', "`": "`", "\\": "\\", "/": "/", "f": "\f", "n": "\n", "r": "\r", "t": "\t"}


def _tokenize(text: str) -> list[tuple[str, str]]:
    tokens: list[tuple[str, str]] = []
    pos = 0
    while pos < len(text):
        if text[pos:].strip() == "":
            break
        m = _TOKEN.match(text, pos)
        if m is None:
            raise CompileError(f"cannot read {text[pos:]!r}")
        kind = m.lastgroup or ""
        tokens.append((kind, m.group(kind)))
        pos = m.end()
    return tokens


def _unquote(literal: str) -> str:
    body = literal[1:-1]
    return re.sub(r"\\(.)", lambda m: _ESCAPES.get(m.group(1), m.group(1)), body)


class _Parser:
    """Recursive descent over the FHIRPath grammar's precedence levels (subset)."""

    def __init__(self, text: str):
        self.tokens = _tokenize(text)
        self.pos = 0

    def peek(self, offset: int = 0) -> tuple[str, str] | None:
        i = self.pos + offset
        return self.tokens[i] if i < len(self.tokens) else None

    def accept(self, *values: str) -> str | None:
        tok = self.peek()
        if tok is not None and tok[0] in ("op", "ident") and tok[1] in values:
            self.pos += 1
            return tok[1]
        return None

    def expect(self, value: str) -> None:
        if self.accept(value) is None:
            raise CompileError(f"expected {value!r} at token {self.pos}")

    def parse(self) -> _Node:
        node = self.expression()
        if self.peek() is not None:
            raise CompileError(f"unexpected {self.peek()!r}")
        return node

    def expression(self) -> _Node:
        return self.binary(0)

    # lowest to highest precedence; each level is left-associative
    _LEVELS: tuple[tuple[str, ...], ...] = (
        ("implies",),
        ("or", "xor"),
        ("and",),
        ("in", "contains"),
        ("=", "~", "!=", "!~"),
        ("<", ">", "<=", ">="),
        ("|",),
    )

    def binary(self, level: int) -> _Node:
        if level == len(self._LEVELS):
            return self.type_expression()
        node = self.binary(level + 1)
        while True:
            op = self.accept(*self._LEVELS[level])
            if op is None:
                return node
            node = _Op(op, node, self.binary(level + 1))

    def type_expression(self) -> _Node:
        node = self.additive()
        while True:
            op = self.accept("is", "as")
            if op is None:
                return node
            node = _TypeOp(op, node, self.type_specifier())

    def type_specifier(self) -> str:
        tok = self.peek()
        if tok is None or tok[0] not in ("ident", "quoted"):
            raise CompileError("expected a type name")
        self.pos += 1
        name = tok[1].strip("`")
        while self.accept("."):
            nxt = self.peek()
            if nxt is None or nxt[0] != "ident":
                raise CompileError("expected a type name")
            self.pos += 1
            name += "." + nxt[1]
        return name

    def additive(self) -> _Node:
        node = self.unary()
        if self.accept("+", "-", "&", "*", "/", "div", "mod"):
            raise CompileError("arithmetic is not supported")
        return node

    def unary(self) -> _Node:
        if self.accept("+", "-"):
            raise CompileError("unary operators are not supported")
        return self.postfix(self.term())

    def postfix(self, node: _Node) -> _Node:
        while True:
            if self.accept("."):
                node = self.invocation(node)
            elif self.accept("["):
                index = self.expression()
                self.expect("]")
                node = _Index(node, index)
            else:
                return node

    def term(self) -> _Node:
        tok = self.peek()
        if tok is None:
            raise CompileError("unexpected end of expression")
        kind, text = tok
        if kind == "num":
            self.pos += 1
            return _Lit(Decimal(text) if "." in text else int(text))
        if kind == "str":
            self.pos += 1
            return _Lit(_unquote(text))
        if kind == "ident" and text in ("true", "false"):
            self.pos += 1
            return _Lit(text == "true")
        if kind == "special":
            if text == "$this":
                self.pos += 1
                return _This()
            raise CompileError(f"{text} is not supported")
        if self.accept("("):
            node = self.expression()
            self.expect(")")
            return node
        if kind in ("ident", "quoted"):
            return self.invocation(None)
        raise CompileError(f"unexpected {text!r}")

    def invocation(self, target: _Node | None) -> _Node:
        tok = self.peek()
        if tok is None or tok[0] not in ("ident", "quoted"):
            raise CompileError("expected a name")
        self.pos += 1
        name = tok[1].strip("`")
        if tok[0] == "ident" and self.accept("("):
            args: list[_Node] = []
            if not self.accept(")"):
                args.append(self.expression())
                while self.accept(","):
                    args.append(self.expression())
                self.expect(")")
            return _Call(target, name, tuple(args))
        return _Member(target, name)


# --------------------------------------------------------------------------------------------
# AST -> closures


class _Branch(NamedTuple):
    """Values of one static type: ``fn(context) -> list``.

    ``root``: fn is the identity; ``key``: the context's JSON property every value comes from
    (None when not known), so extraction can skip branches whose property is absent;
    ``path``: when fn only walks JSON properties from the context (``Patient.name.given``:
    ``("name", "given")``), their names, so extraction can generate that walk inline.
    """

    type: str
    fn: Fn
    root: bool = False
    key: str | None = None
    path: tuple[str, ...] | None = None


_RESOLVED = "@resolved"  # pseudo-type: resource type names produced by resolve()


def _identity(x: Any) -> list[Any]:
    return [x]


def _child_step(parent: _Branch, key: str, type_name: str) -> _Branch:
    if parent.root:

        def at_root(x: Any) -> list[Any]:
            v = x.get(key) if isinstance(x, dict) else None
            if v is None:
                return []
            return v if isinstance(v, list) else [v]

        return _Branch(type_name, at_root, False, key, (key,))
    f = parent.fn

    def step(x: Any) -> list[Any]:
        out: list[Any] = []
        for item in f(x):
            if isinstance(item, dict):
                v = item.get(key)
                if v is not None:
                    if isinstance(v, list):
                        out.extend(v)
                    else:
                        out.append(v)
        return out

    return _Branch(type_name, step, False, parent.key, None if parent.path is None else (*parent.path, key))


def _constant(value: Any) -> Fn:
    def constant(x: Any) -> list[Any]:
        return [value]

    return constant


def _slice(f: Fn, i: int) -> Fn:
    def item(x: Any) -> list[Any]:
        return f(x)[i : i + 1]

    return item


def _filter(f: Fn, pred: Callable[[Any], bool]) -> Fn:
    def where(x: Any) -> list[Any]:
        return [v for v in f(x) if pred(v)]

    return where


def _resolved_types(f: Fn) -> Fn:
    def resolve(x: Any) -> list[Any]:
        return [t for t in map(reference_type, f(x)) if t is not None]

    return resolve


def _concat(branches: Sequence[_Branch]) -> Fn:
    if len(branches) == 1:
        return branches[0].fn
    fns = [b.fn for b in branches]

    def union(x: Any) -> list[Any]:
        out: list[Any] = []
        for f in fns:
            out.extend(f(x))
        return out

    return union


def _singleton_bool(values: list[Any]) -> bool | None:
    """FHIRPath singleton evaluation of collections as a boolean (None: empty/undefined)."""
    if len(values) != 1:
        return None
    v = values[0]
    return v if isinstance(v, bool) else True


def _fp_equal(a: Any, b: Any) -> bool:
    if isinstance(a, bool) or isinstance(b, bool):
        return isinstance(a, bool) and isinstance(b, bool) and a == b
    if isinstance(a, str) or isinstance(b, str):
        return isinstance(a, str) and isinstance(b, str) and a == b
    return bool(a == b)


class _Compiler:
    def __init__(self, types: TypeModel):
        self.types = types

    def compile(self, node: _Node, focus: list[_Branch], context_type: str) -> list[_Branch]:
        if isinstance(node, _Lit):
            value = node.value
            vtype = (
                "boolean"
                if isinstance(value, bool)
                else "string"
                if isinstance(value, str)
                else "integer"
                if isinstance(value, int)
                else "decimal"
            )
            return [_Branch(vtype, _constant(value))]
        if isinstance(node, _This):
            return focus
        if isinstance(node, _Member):
            return self.member(node, focus, context_type)
        if isinstance(node, _Call):
            return self.call(node, focus, context_type)
        if isinstance(node, _Index):
            return self.index(self.compile(node.target, focus, context_type), node.index)
        if isinstance(node, _TypeOp):
            operand = self.compile(node.operand, focus, context_type)
            if node.op == "as":
                return self.of_type(operand, node.type_name)
            return [self.is_type(operand, node.type_name)]
        if isinstance(node, _Op):
            return self.operator(node, focus, context_type)
        raise CompileError(f"unsupported node {node!r}")

    def member(self, node: _Member, focus: list[_Branch], context_type: str) -> list[_Branch]:
        if node.target is None and node.name[:1].isupper():
            # A type name at the start of a path filters the context by type (Observation.code).
            if len(focus) == 1 and focus[0].root and self.types.is_a(context_type, node.name):
                return focus
            if self.types.known(node.name):
                return []  # another type's branch: no values here
            raise CompileError(f"unknown type {node.name}")
        parents = focus if node.target is None else self.compile(node.target, focus, context_type)
        out: list[_Branch] = []
        for parent in parents:
            if parent.type == _RESOLVED:
                raise CompileError("navigation into resolve() results is not supported")
            if self.types.is_primitive(parent.type):
                # a primitive's id/extension live in the JSON "_name" sibling: leave to fhirpathpy
                raise CompileError(f"element {node.name} of primitive {parent.type} is not supported")
            info = self.types.element(parent.type, node.name)
            if info is None:
                raise CompileError(f"{parent.type} has no element {node.name}")
            for t in info.types:
                out.append(_child_step(parent, info.json_key(t), t))
        return out

    def of_type(self, branches: list[_Branch], type_name: str) -> list[_Branch]:
        out: list[_Branch] = []
        wanted = self.types.canonical_name(type_name)
        for b in branches:
            if b.type == _RESOLVED:
                raise CompileError("as/ofType on resolve() results is not supported")
            if self.types.is_a(b.type, wanted):
                out.append(b)
            elif self.types.is_a(wanted, b.type) and self.types.is_a(wanted, "Resource"):
                # an abstract Resource-typed element (e.g. Bundle.entry.resource): check each value
                f = b.fn

                def narrowed(x: Any, f: Fn = f, wanted: str = wanted) -> list[Any]:
                    return [
                        r
                        for r in f(x)
                        if isinstance(r, dict)
                        and isinstance(r.get("resourceType"), str)
                        and self.types.is_a(r["resourceType"], wanted)
                    ]

                out.append(_Branch(wanted, narrowed, False, b.key))
        return out

    def is_type(self, branches: list[_Branch], type_name: str) -> _Branch:
        wanted = self.types.canonical_name(type_name)
        parts: list[tuple[Fn, bool | None]] = []
        for b in branches:
            if b.type == _RESOLVED:
                parts.append((b.fn, None))  # runtime: the values are type names
            elif self.types.is_a(b.type, "Resource") and b.type not in self.types.resource_types():
                raise CompileError("is on abstract resource values is not supported")
            else:
                parts.append((b.fn, self.types.is_a(b.type, wanted)))
        types = self.types

        def is_fn(x: Any) -> list[Any]:
            found: list[bool] = []
            for f, static in parts:
                for v in f(x):
                    found.append(types.is_a(v, wanted) if static is None else static)
            return [found[0]] if len(found) == 1 else []

        return _Branch("boolean", is_fn)

    def index(self, branches: list[_Branch], index_node: _Node) -> list[_Branch]:
        if (
            not isinstance(index_node, _Lit)
            or isinstance(index_node.value, bool)
            or not isinstance(index_node.value, int)
        ):
            raise CompileError("only literal integer indexes are supported")
        if len(branches) > 1:
            raise CompileError("indexing a mixed-type collection is not supported")
        if not branches:
            return []
        i, b = index_node.value, branches[0]
        return [_Branch(b.type, _slice(b.fn, i), False, b.key)]

    def operator(self, node: _Op, focus: list[_Branch], context_type: str) -> list[_Branch]:
        left = self.compile(node.left, focus, context_type)
        right = self.compile(node.right, focus, context_type)
        if node.op == "|":
            return left + right
        lf, rf = _concat(left), _concat(right)
        if node.op in ("=", "!="):
            negate = node.op == "!="

            def equality(x: Any) -> list[Any]:
                a, b = lf(x), rf(x)
                if not a or not b:
                    return []
                same = len(a) == len(b) and all(_fp_equal(p, q) for p, q in zip(a, b, strict=True))
                return [same != negate]

            return [_Branch("boolean", equality)]
        if node.op == "and":

            def and_fn(x: Any) -> list[Any]:
                a = _singleton_bool(lf(x))
                if a is False:
                    return [False]
                b = _singleton_bool(rf(x))
                if b is False:
                    return [False]
                return [True] if a and b else []

            return [_Branch("boolean", and_fn)]
        if node.op == "or":

            def or_fn(x: Any) -> list[Any]:
                a = _singleton_bool(lf(x))
                if a is True:
                    return [True]
                b = _singleton_bool(rf(x))
                if b is True:
                    return [True]
                return [False] if a is False and b is False else []

            return [_Branch("boolean", or_fn)]
        raise CompileError(f"operator {node.op} is not supported")

    def predicate(self, node: _Node, item_type: str) -> Callable[[Any], bool]:
        fast = self.field_equals(node, item_type) or self.resolves_to(node, item_type)
        if fast is not None:
            return fast
        branches = self.compile(node, [_Branch(item_type, _identity, True)], item_type)
        f = _concat(branches) if branches else (lambda x: [])
        return lambda item: _singleton_bool(f(item)) is True

    def field_equals(self, node: _Node, item_type: str) -> Callable[[Any], bool] | None:
        """``where(system = 'phone')`` on a plain element: one dict lookup instead of the general path."""
        if not (
            isinstance(node, _Op)
            and node.op == "="
            and isinstance(node.left, _Member)
            and node.left.target is None
            and isinstance(node.right, _Lit)
            and isinstance(node.right.value, str)
        ):
            return None
        info = self.types.element(item_type, node.left.name)
        if info is None or info.choice or not self.types.is_primitive(info.types[0]):
            return None
        key, literal = info.json_key(info.types[0]), node.right.value

        def equals(item: Any) -> bool:
            v = item.get(key) if isinstance(item, dict) else None
            if isinstance(v, list):  # a repeating element: only a single value can equal a literal
                v = v[0] if len(v) == 1 else None
            return isinstance(v, str) and v == literal

        return equals

    def resolves_to(self, node: _Node, item_type: str) -> Callable[[Any], bool] | None:
        """``where(resolve() is Patient)`` on a Reference: the type read from the reference, no lists."""
        if not (
            isinstance(node, _TypeOp)
            and node.op == "is"
            and isinstance(node.operand, _Call)
            and node.operand.target is None
            and node.operand.name == "resolve"
            and not node.operand.args
            and self.types.is_a(item_type, "Reference")
        ):
            return None
        types, wanted = self.types, self.types.canonical_name(node.type_name)
        known: dict[str, bool] = {}

        def resolves(item: Any) -> bool:
            rtype = reference_type(item)
            if rtype is None:
                return False
            found = known.get(rtype)
            if found is None:
                found = types.is_a(rtype, wanted)
                if len(known) < 1000:
                    known[rtype] = found
            return found

        return resolves

    def call(self, node: _Call, focus: list[_Branch], context_type: str) -> list[_Branch]:
        target = focus if node.target is None else self.compile(node.target, focus, context_type)
        name, args = node.name, node.args
        if name == "where" and len(args) == 1:
            out = []
            for b in target:
                if b.type == _RESOLVED:
                    raise CompileError("where() on resolve() results is not supported")
                pred, f = self.predicate(args[0], b.type), b.fn
                out.append(_Branch(b.type, _filter(f, pred), False, b.key))
            return out
        if name in ("as", "ofType") and len(args) == 1:
            return self.of_type(target, self._type_arg(args[0]))
        if name == "is" and len(args) == 1:
            return [self.is_type(target, self._type_arg(args[0]))]
        if name in ("exists", "empty") and len(args) <= 1:
            if args:
                target = self.call(_Call(None, "where", args), target, context_type)
            f = _concat(target) if target else (lambda x: [])
            want = name == "exists"
            return [_Branch("boolean", lambda x: [bool(f(x)) == want])]
        if name == "not" and not args:
            f = _concat(target) if target else (lambda x: [])

            def not_fn(x: Any) -> list[Any]:
                v = _singleton_bool(f(x))
                return [] if v is None else [not v]

            return [_Branch("boolean", not_fn)]
        if name == "first" and not args:
            return self.index(target, _Lit(0))
        if name == "resolve" and not args:
            out = []
            for b in target:
                if not self.types.is_a(b.type, "Reference"):
                    raise CompileError(f"resolve() on {b.type} is not supported")
                f = b.fn
                out.append(
                    _Branch(
                        _RESOLVED,
                        _resolved_types(f),
                        False,
                        b.key,
                    )
                )
            return out
        literal = args[0].value if len(args) == 1 and isinstance(args[0], _Lit) else None
        if name == "extension" and isinstance(literal, str):
            url = literal
            exts = self.member(_Member(None, "extension"), target, context_type)
            return [
                _Branch(
                    e.type,
                    _filter(e.fn, lambda v: isinstance(v, dict) and v.get("url") == url),
                    False,
                    e.key,
                )
                for e in exts
            ]
        raise CompileError(f"function {name}() is not supported")

    @staticmethod
    def _type_arg(node: _Node) -> str:
        if isinstance(node, _Member) and node.target is None:
            return node.name
        if isinstance(node, _Member) and isinstance(node.target, _Member) and node.target.target is None:
            return f"{node.target.name}.{node.name}"  # FHIR.Patient, System.String
        raise CompileError("expected a type name argument")


class CompiledExpression:
    """An expression compiled for one context type: ``__call__`` gives ``(type, value)`` pairs."""

    __slots__ = ("branches", "context_type", "expression")

    def __init__(self, expression: str, context_type: str, branches: Sequence[_Branch]):
        self.expression = expression
        self.context_type = context_type
        self.branches = tuple(branches)

    @property
    def result_types(self) -> tuple[str, ...]:
        return tuple(b.type for b in self.branches)

    def __call__(self, context: Any) -> list[tuple[str, Any]]:
        return [(b.type, v) for b in self.branches for v in b.fn(context) if v is not None]


def compile_expression(
    expression: str,
    context_type: str,
    types: TypeModel | None = None,
) -> CompiledExpression:
    """Compile ``expression`` evaluated on a value of ``context_type`` (a resource or any type).

    Raises :class:`CompileError` for FHIRPath outside the supported subset.
    """
    model = types if types is not None else default_registry().types
    ast = _Parser(expression).parse()
    branches = _Compiler(model).compile(ast, [_Branch(context_type, _identity, True)], context_type)
    return CompiledExpression(expression, context_type, branches)


# --------------------------------------------------------------------------------------------
# fhirpathpy fallback (also the reference the tests compare the compiler with)

_FP_MODEL = fp_models["r4"]
_FP_SYSTEM = {
    "System.String": "string",
    "System.Boolean": "boolean",
    "System.Integer": "integer",
    "System.Decimal": "decimal",
    "System.Date": "date",
    "System.DateTime": "dateTime",
    "System.Time": "time",
}


def _fp_resolve(inputs: list[Any]) -> list[Any]:
    """fhirpathpy has no resolve(): a stand-in resource of the referenced type, enough for ``is``."""
    out = []
    for ref in inputs:
        rtype = reference_type(ref)
        if rtype is not None:
            out.append(ResourceNode.create_node({"resourceType": rtype}))
    return out


_FP_OPTIONS = {"returnRawData": True, "userInvocationTable": {"resolve": {"fn": _fp_resolve}}}
_ABSTRACT_ROOT = re.compile(r"(^|[(|]\s*)(?:Resource|DomainResource)\.")
_AS_OPERATOR = re.compile(r"([A-Za-z_][\w.]*) as ([A-Za-z_]\w*)")


def _fp_expression(expression: str, resource_type: str) -> str:
    """The expression as fhirpathpy evaluates it with R4 search semantics.

    fhirpathpy roots paths only at the concrete type (``Resource.id`` finds nothing on a Patient)
    and implements ``as`` strictly (an error on collections of more than one), whereas R4 search
    expressions such as ``(Observation.component.value as Quantity)`` use it as a filter:
    rewrite both (``X as T`` / ``X.as(T)`` -> ``X.ofType(T)``).
    """
    text = _ABSTRACT_ROOT.sub(lambda m: f"{m.group(1)}{resource_type}.", expression)
    text = text.replace(".as(", ".ofType(")
    return _AS_OPERATOR.sub(r"\1.ofType(\2)", text)


def _fp_type(node: Any) -> str:
    if isinstance(node, ResourceNode):
        path = node.path if isinstance(node.path, str) else ""
        if path.startswith("System."):
            return _FP_SYSTEM.get(path, path)
        return path
    if isinstance(node, bool):
        return "boolean"
    if isinstance(node, str):
        return "string"
    if isinstance(node, int):
        return "integer"
    return "decimal"


_fp_cache: dict[tuple[str, str], list[Callable[..., list[Any]]]] = {}


def fhirpath_values(resource: Mapping[str, Any], expression: str) -> list[tuple[str, Any]]:
    """``(type, value)`` pairs of ``expression`` evaluated by fhirpathpy (slow; fallback only).

    Top-level union branches are evaluated one by one: fhirpathpy's ``|`` rebuilds its nodes
    without their type, and the rows are de-duplicated afterwards anyway.
    """
    rtype = str(resource.get("resourceType"))
    key = (rtype, expression)
    fns = _fp_cache.get(key)
    if fns is None:
        fns = _fp_cache[key] = [
            fp_compile(_fp_expression(branch, rtype), model=_FP_MODEL, options=_FP_OPTIONS)
            for branch in split_union(expression)
        ]
    out = []
    for fn in fns:
        for node in fn(resource):
            value = node.data if isinstance(node, ResourceNode) else node
            if value is not None:
                out.append((_fp_type(node), value))
    return out


# --------------------------------------------------------------------------------------------
# Composites

_ON_RESOURCE = "%resource."


#: One component of a composite: (row name, parts, item keys, tables); see :class:`_CompositeItems`.
_Component = tuple[str, tuple[tuple[Fn, Emit, bool], ...], tuple[str, ...] | None, tuple[str, ...]]
#: The rows of one matching item: ``(table, rows)`` per component, codes relative (``:k``).
_ItemRows = list[tuple[str, list[Row]]]
#: (expression text, context type) -> compiled; shared by the parameters of one resource type.
_CompileCache = dict[tuple[str, str], "CompiledExpression"]


class _CompositeItems:
    """The items of one branch of a composite's expression and their component values.

    ``components`` lists, last first, ``(row name, parts, item keys, tables)``: the row name is
    relative (``:k``, the parameter code is prefixed when the rows are stored); each part a
    ``(values fn, row builder, evaluated on the resource)`` triple; ``item keys`` (when every
    part reads a known JSON property of the item, else None) lets an item lacking all of them
    be skipped without evaluating anything; ``tables`` are the index tables the component's row
    builders write. Composites with the same items and components (two parameters defined
    alike, e.g. one from ``profiles/`` repeating an R4 one) share one instance, evaluated once
    per resource.
    """

    __slots__ = ("components", "fn", "key", "needs")

    def __init__(self, fn: Fn, key: str | None, components: Sequence[_Component], root: bool):
        self.fn = fn
        self.key = key
        self.components = tuple(components)
        #: resource properties of which one must be present for any item to match (None: unknown)
        self.needs: tuple[str, ...] | None = (key,) if key is not None else None
        if root and self.components:  # the item is the resource: its first component's keys
            self.needs = self.components[0][2]

    def __call__(self, resource: Mapping[str, Any]) -> list[_ItemRows]:
        """The rows of every item that has a value for every component, in item order."""
        out: list[_ItemRows] = []
        for item in self.fn(resource):
            # values first, last component first (usually the value[x], present on few items):
            # an item lacking a component has no composite value, so stop at the first gap
            found: list[tuple[str, list[tuple[Emit, Any]], tuple[str, ...]]] = []
            for name, parts, item_keys, tables in self.components:
                if item_keys is not None and (not isinstance(item, dict) or item.keys().isdisjoint(item_keys)):
                    break  # the parts would find nothing
                values = [
                    (emit, v)
                    for fn, emit, on_resource in parts
                    for v in fn(resource if on_resource else item)
                    if v is not None
                ]
                if not values:
                    break
                found.append((name, values, tables))
            else:
                item_rows: _ItemRows = []
                scratch = IndexRows([], [], [], [], [], [], [])
                for name, values, tables in found:
                    for emit, value in values:
                        emit(scratch, name, value)
                    empty = True
                    for table in tables:
                        part = getattr(scratch, table)
                        if not part:
                            continue
                        setattr(scratch, table, [])  # the next component's rows start afresh
                        if table == "token":
                            # a composite component matches on system/code, never on text: no text rows
                            part = [(r[0], r[1], r[2], None) for r in part if r[2] is not None]
                        if part:
                            item_rows.append((table, part))
                            empty = False
                    if empty:
                        break
                else:
                    out.append(item_rows)
        return out


class _CompositePlan:
    """The compiled extraction of one composite parameter on one resource type.

    ``items``: one :class:`_CompositeItems` per branch of the composite's expression. The rows of
    the k-th component are stored as ``code:k`` with the item's number (from 1, over all branches)
    as ``grp``.
    """

    __slots__ = ("code", "items")

    def __init__(self, code: str, items: Sequence[_CompositeItems]):
        self.code = code
        self.items = tuple(items)

    def __call__(
        self, resource: Mapping[str, Any], rows: IndexRows, memo: dict[_CompositeItems, list[_ItemRows]]
    ) -> None:
        """Append the rows to ``rows``; ``memo`` holds the items already evaluated on ``resource``."""
        grp = 0
        code = self.code
        for items in self.items:
            needs = items.needs
            if needs is not None and resource.keys().isdisjoint(needs):
                continue
            found = memo.get(items)
            if found is None:
                found = memo[items] = items(resource)
            for item_rows in found:
                grp += 1
                for table, part in item_rows:
                    getattr(rows, table).extend([(code + row[0], *row[1:], grp) for row in part])


#: The index tables each parameter type's row builders write (a Reference with an identifier
#: also gives a token row), in ``_TABLES`` order.
_PARAM_TABLES: Mapping[str, tuple[str, ...]] = {
    "token": ("token",),
    "string": ("string",),
    "reference": ("token", "reference"),
    "date": ("date",),
    "number": ("number",),
    "quantity": ("quantity",),
    "uri": ("uri",),
}


def _compile_cached(cache: _CompileCache, text: str, context_type: str, types: TypeModel) -> CompiledExpression:
    compiled = cache.get((text, context_type))
    if compiled is None:
        compiled = cache[(text, context_type)] = compile_expression(text, context_type, types)
    return compiled


def _compile_composite(
    registry: Registry,
    resource_type: str,
    param: SearchParam,
    expression: str,
    cache: _CompileCache,
    shared: dict[tuple[Any, ...], _CompositeItems],
) -> _CompositePlan | None:
    """The extraction plan of a composite, or None when a component is unknown or not compilable.

    ``cache`` and ``shared`` (by signature) let composites of one type share compiled functions
    and :class:`_CompositeItems`.
    """
    types = registry.types
    items = []
    try:
        definitions = []
        for definition, comp_expression in param.components:
            component = registry.by_url(definition)
            if component is None:
                log.warning("composite %s: component %s is not defined", param.url, definition)
                return None
            definitions.append((component.type, comp_expression))
        for union_part in split_union(expression):
            for branch in _compile_cached(cache, union_part, resource_type, types).branches:
                signature = (branch.fn, branch.type, branch.key, tuple(definitions))
                if signature in shared:
                    items.append(shared[signature])
                    continue
                components: list[_Component] = []
                for k, (component_type, comp_expression) in enumerate(definitions):
                    on_resource = comp_expression.startswith(_ON_RESOURCE)
                    text = comp_expression[len(_ON_RESOURCE) :] if on_resource else comp_expression
                    compiled = _compile_cached(cache, text, resource_type if on_resource else branch.type, types)
                    parts = []
                    item_keys: list[str] | None = None if on_resource else []
                    for b in compiled.branches:
                        emit = _emitter(types, component_type, b.type)
                        if emit is not None:
                            parts.append((b.fn, emit, on_resource))
                            if item_keys is not None:
                                item_keys = None if b.key is None else [*item_keys, b.key]
                    keys = None if item_keys is None else tuple(item_keys)
                    tables = _PARAM_TABLES.get(component_type, _TABLES)
                    components.append((f":{k}", tuple(parts), keys, tables))
                items.append(
                    shared.setdefault(
                        signature, _CompositeItems(branch.fn, branch.key, tuple(reversed(components)), branch.root)
                    )
                )
    except CompileError as exc:
        log.warning("composite search parameter %s on %s is not indexed: %s", param.code, resource_type, exc)
        return None
    return _CompositePlan(param.code, items)


# --------------------------------------------------------------------------------------------
# Composites on the resource itself, searched through their components' own parameters


def _values_signature(types: TypeModel, param_type: str, expression: str, resource_type: str) -> frozenset[Any]:
    """What ``expression`` indexes on a ``resource_type`` for a ``param_type`` parameter, as the
    (value type, JSON path) of each compiled branch that gives rows; empty when that is not known
    statically (a branch that does more than walk properties, or an expression that does not compile)."""
    found: set[tuple[str, tuple[str, ...]]] = set()
    try:
        for text in split_union(expression):
            for branch in compile_expression(text, resource_type, types).branches:
                if _emitter(types, param_type, branch.type) is None:
                    continue  # gives no rows (SampledData for a quantity)
                if branch.path is None:
                    return frozenset()
                found.add((branch.type, branch.path))
    except CompileError:
        return frozenset()
    return frozenset(found)


def root_composites(registry: Registry, resource_type: str) -> Mapping[str, tuple[SearchParam, ...]]:
    """Composites of ``resource_type`` that are searched through other parameters: code -> those
    parameters, one per component.

    A composite qualifies when its expression is the resource itself (its only item) and each
    component's expression gives, by its compiled branches, exactly the values of one parameter of
    the type with the component's type (e.g. ``code-value-quantity``: ``code`` is ``code``'s
    ``Observation.code``, ``value.as(Quantity)`` is ``value-quantity``'s Quantity branch, its
    SampledData branch giving no quantity rows). Its component rows would repeat that parameter's
    rows, so it has none (:class:`TypeExtractor`) and ``A$B`` is searched as ``code=A`` and
    ``value-quantity=B`` (:mod:`server.search.query`). Reference components are not considered
    (a reference row's meaning depends on how the reference was written).
    """
    return registry.derived(_find_root_composites, resource_type)


def composite_sources(registry: Registry, param: SearchParam) -> tuple[SearchParam, ...]:
    """The parameters a composite is searched through, or () (see :func:`root_composites`)."""
    if param.type != "composite" or len(param.base) != 1:
        return ()
    return root_composites(registry, param.base[0]).get(param.code, ())


def _find_root_composites(registry: Registry, resource_type: str) -> dict[str, tuple[SearchParam, ...]]:
    params = registry.params_for(resource_type)
    unions = registry.unions(resource_type)
    types = registry.types
    indexed: dict[tuple[str, frozenset[Any]], SearchParam] = {}
    for code, param in sorted(params.items()):
        expression = param.expression_for(resource_type)
        searched = param.type in _PARAM_TABLES and param.type != "reference" and expression
        if searched and code not in RESOURCE_COLUMNS and code not in unions:
            signature = _values_signature(types, param.type, expression or "", resource_type)
            if signature:
                indexed.setdefault((param.type, signature), param)
    out: dict[str, tuple[SearchParam, ...]] = {}
    for code, param in params.items():
        expression = param.expression_for(resource_type)
        if param.type != "composite" or param.base != (resource_type,) or (expression or "").strip() != resource_type:
            continue
        sources: list[SearchParam] = []
        for definition, component_expression in param.components:
            component = registry.by_url(definition)
            if component is None or component.type == "reference":
                break
            signature = _values_signature(types, component.type, component_expression, resource_type)
            source = indexed.get((component.type, signature)) if signature else None
            if source is None:
                break
            sources.append(source)
        else:
            if sources:
                out[code] = tuple(sources)
    return out


# --------------------------------------------------------------------------------------------
# Per-resource-type extractors


#: The branches of one values fn within a type's plan: (fn, JSON path walked by fn or None,
#: ``(code, row builder)`` targets).
_Group = tuple[Fn, tuple[str, ...] | None, tuple[tuple[str, Emit], ...]]
_Handler = Callable[[dict[str, Any], IndexRows], None]


def _generate_handlers(resource_type: str, by_key: Mapping[str, Sequence[_Group]]) -> tuple[str, dict[str, _Handler]]:
    """Python source of one function per top-level JSON property, and those functions.

    ``handler(resource, rows)`` (``resource`` a dict that has the property) does what the groups
    of that property do, in order: for each group its values (a JSON path walked inline, each
    path prefix once per call, or the compiled fn called), then each target's row builder on
    each value (the property's own single value is passed as is, without a list). Names of
    functions and codes are literals or globals of the generated module.
    """
    env: dict[str, Any] = {}
    names: dict[int, str] = {}

    def ref(obj: Any, prefix: str) -> str:
        name = names.get(id(obj))
        if name is None:
            name = names[id(obj)] = f"{prefix}{len(names)}"
            env[name] = obj
        return name

    lines: list[str] = []
    functions: dict[str, str] = {}
    for key, groups in by_key.items():
        function = functions[key] = f"_key{len(functions)}"
        body: list[str] = []
        walked: dict[tuple[str, ...], str] = {}

        def walk(path: tuple[str, ...], body: list[str] = body, walked: dict[tuple[str, ...], str] = walked) -> str:
            var = walked.get(path)
            if var is not None:
                return var
            if len(path) == 1:
                var = f"v{len(walked)}"
                body.append(f"    {var} = () if raw is None else raw if isinstance(raw, list) else (raw,)")
            else:
                parent = walk(path[:-1])
                var = f"v{len(walked)}"
                body += [
                    f"    {var} = []",
                    f"    for item in {parent}:",
                    "        if isinstance(item, dict):",
                    f"            x = item.get({path[-1]!r})",
                    "            if x is not None:",
                    "                if isinstance(x, list):",
                    f"                    {var}.extend(x)",
                    "                else:",
                    f"                    {var}.append(x)",
                ]
            walked[path] = var
            return var

        for fn, path, targets in groups:
            if path == (key,) and (key,) not in walked:  # the property's own value: no list for one value
                body.append("    if isinstance(raw, list):")
                for code, emit in targets:
                    body += [
                        "        for value in raw:",
                        "            if value is not None:",
                        f"                {ref(emit, '_emit')}(rows, {code!r}, value)",
                    ]
                body.append("    elif raw is not None:")
                body += [f"        {ref(emit, '_emit')}(rows, {code!r}, raw)" for code, emit in targets]
                continue
            if path is not None and path[0] == key:
                values = walk(path)
            else:
                values = "values"
                body.append(f"    values = {ref(fn, '_fn')}(resource)")
            body.append(f"    if {values}:")
            for code, emit in targets:
                body += [
                    f"        for value in {values}:",
                    "            if value is not None:",
                    f"                {ref(emit, '_emit')}(rows, {code!r}, value)",
                ]
        lines += [f"def {function}(resource, rows):  # {key!r}", f"    raw = resource[{key!r}]", *body, ""]
    source = "\n".join(lines)
    exec(compile(source, f"<search index extractor of {resource_type}>", "exec"), env)
    return source, {key: env[function] for key, function in functions.items()}


class TypeExtractor:
    """All index extractors of one resource type, compiled once; call it with a resource.

    ``plan`` lists ``(code, values fn, row builder)`` per compiled branch. Identical union
    branches of different parameters share one compiled function, and functions are grouped by
    the top-level JSON property they read, so a resource only pays for the properties it has.
    ``source`` is the Python code generated for those groups (see :func:`_generate_handlers`),
    used for dict resources; any other Mapping goes through the closures.
    """

    __slots__ = (
        "__weakref__",
        "_always",
        "_by_key",
        "_handlers",
        "composites",
        "fallbacks",
        "plan",
        "resource_type",
        "source",
        "types",
    )

    def __init__(self, resource_type: str, registry: Registry):
        self.resource_type = resource_type
        self.types = registry.types
        plan: list[tuple[str, Fn, Emit]] = []
        fallbacks: list[tuple[SearchParam, str]] = []
        composites: list[_CompositePlan] = []
        cache: _CompileCache = {}
        shared: dict[tuple[Any, ...], _CompositeItems] = {}
        compiled: dict[str, CompiledExpression] = {}
        # near (special), resources-table, union and root composite parameters are not indexed
        unions, roots = registry.unions(resource_type), root_composites(registry, resource_type)
        skipped = RESOURCE_COLUMNS | unions.keys() | roots.keys()
        for code, param in sorted(registry.params_for(resource_type).items()):
            expression = param.expression_for(resource_type)
            if param.type == "special" or not expression or code in skipped:
                continue
            if param.type == "composite":
                composite = _compile_composite(registry, resource_type, param, expression, cache, shared)
                if composite is not None:
                    composites.append(composite)
                continue
            try:
                for text in split_union(expression):
                    compiled[text] = _compile_cached(cache, text, resource_type, self.types)
            except CompileError as exc:
                log.info("search parameter %s on %s falls back to fhirpathpy: %s", code, resource_type, exc)
                fallbacks.append((param, expression))
                continue
            narrowed = registry.narrowing(resource_type, code) is not None
            for text in split_union(expression):
                for branch in compiled[text].branches:
                    emit = _emitter(self.types, param.type, branch.type)
                    if narrowed and emit is not None:
                        emit = _reference_identifier if emit is _reference_reference else None
                    if emit is not None:
                        plan.append((code, branch.fn, emit))
        branches = {b.fn: b for c in compiled.values() for b in c.branches}
        groups: dict[Fn, list[tuple[str, Emit]]] = {}
        for code, fn, emit in plan:
            groups.setdefault(fn, []).append((code, emit))
        by_key: dict[str, list[_Group]] = {}
        always: list[tuple[Fn, tuple[tuple[str, Emit], ...]]] = []
        for fn, targets in groups.items():
            key = branches[fn].key
            if key is None:
                always.append((fn, tuple(targets)))
            else:
                by_key.setdefault(key, []).append((fn, branches[fn].path, tuple(targets)))
        self.plan = tuple(plan)
        self.composites = tuple(composites)
        self.fallbacks = tuple(fallbacks)
        self._by_key = {k: tuple(v) for k, v in by_key.items()}
        self._always = tuple(always)
        self.source, self._handlers = _generate_handlers(resource_type, self._by_key)

    def __call__(self, resource: Mapping[str, Any]) -> IndexRows:
        rows = IndexRows([], [], [], [], [], [], [])
        if isinstance(resource, dict):
            handlers = self._handlers
            for key in resource:
                handler = handlers.get(key)
                if handler is not None:
                    handler(resource, rows)
        else:  # the generated handlers read dicts only; a Mapping takes the closures
            by_key = self._by_key
            for key in resource:
                for fn, _, targets in by_key.get(key, ()):
                    values = fn(resource)
                    if values:
                        for code, emit in targets:
                            for value in values:
                                if value is not None:
                                    emit(rows, code, value)
        for fn, targets in self._always:
            values = fn(resource)
            if values:
                for code, emit in targets:
                    for value in values:
                        if value is not None:
                            emit(rows, code, value)
        if self.composites:
            memo: dict[_CompositeItems, list[_ItemRows]] = {}
            for composite in self.composites:
                composite(resource, rows, memo)
        for param, expression in self.fallbacks:
            try:
                values = fhirpath_values(resource, expression)
            except Exception:  # fhirpathpy raises bare Exceptions on bad data; index what we can
                log.warning("fhirpathpy failed on %s for %s", param.url, self.resource_type, exc_info=True)
                continue
            add_rows(rows, self.types, param.type, param.code, values)
        rows.dedupe()
        return rows


_extractors: weakref.WeakKeyDictionary[Registry, dict[str, TypeExtractor]] = weakref.WeakKeyDictionary()


#: The extractors of the registry used last (most often the only one): skips the weak lookup.
_last_used: list[tuple[weakref.ref[Registry], dict[str, TypeExtractor]] | None] = [None]


def extractor_for(resource_type: str, registry: Registry | None = None) -> TypeExtractor:
    """The compiled extractors of ``resource_type`` (built on first use, then cached)."""
    reg = registry if registry is not None else default_registry()
    last = _last_used[0]
    if last is not None and last[0]() is reg:
        per_type = last[1]
    else:
        known = _extractors.get(reg)
        per_type = known if known is not None else _extractors.setdefault(reg, {})
        _last_used[0] = (weakref.ref(reg), per_type)
    extractor = per_type.get(resource_type)
    if extractor is None:
        extractor = per_type[resource_type] = TypeExtractor(resource_type, reg)
    return extractor


def extract(resource: Mapping[str, Any], registry: Registry | None = None) -> IndexRows:
    """Index rows of ``resource`` for every search parameter of its type."""
    rtype = resource.get("resourceType")
    if not isinstance(rtype, str):
        raise ValueError("resource has no resourceType")
    last = _last_used[0]  # extractor_for's first lookup, inlined: this runs for every resource written
    if last is not None and last[0]() is (registry if registry is not None else default_registry()):
        extractor = last[1].get(rtype)
        if extractor is not None:
            return extractor(resource)
    return extractor_for(rtype, registry)(resource)


def fallback_expressions(registry: Registry | None = None) -> list[tuple[str, str, str]]:
    """(resource type, code, expression) of every parameter evaluated by fhirpathpy."""
    reg = registry if registry is not None else default_registry()
    return [
        (rt, param.code, expression)
        for rt in sorted(reg.resource_types())
        for param, expression in extractor_for(rt, reg).fallbacks
    ]
