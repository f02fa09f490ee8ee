"""The search-parameter registry: every SearchParameter the server knows, by resource type.

Built from the official R4 SearchParameters (vendored, search fields only, in
``data/search-parameters-r4.json`` - regenerate with ``scripts/gen_search_params.py``) plus any
SearchParameter JSON in ``profiles/`` (our own, e.g. the genomics parameters). A parameter whose
``base`` is ``Resource`` or ``DomainResource`` (``_id``, ``_lastUpdated``, ``_tag`` …) applies to
every resource type derived from it. Definitions: http://hl7.org/fhir/R4/searchparameter.html,
semantics: http://hl7.org/fhir/R4/search.html.

Union parameters (:meth:`Registry.unions`), whose expression is exactly the union of other
parameters' expressions (R4's ``combo-*`` on Observation), are recognised from the definitions
alone: they are not indexed (:mod:`server.search.extract`) and are searched through the
parameters they unite (:mod:`server.search.query`).

The same vendored file carries the R4 type model (type hierarchy and the declared types of every
element, from the base StructureDefinitions): :class:`TypeModel` answers "what is
``Observation.value``?" so that ``extract`` can compile expressions without guessing from data.
Nothing in this module names a resource type; types come from the definitions.
"""

from __future__ import annotations

import functools
import logging
import re
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from types import MappingProxyType
from typing import Any

from server import jsonio

__all__ = [
    "PROFILES_DIR",
    "VENDORED_PATH",
    "ElementInfo",
    "Registry",
    "SearchParam",
    "TypeModel",
    "branch_root",
    "default_registry",
    "parse_search_parameter",
    "split_union",
]

log = logging.getLogger(__name__)

VENDORED_PATH = Path(__file__).resolve().parent / "data" / "search-parameters-r4.json"
PROFILES_DIR = Path(__file__).resolve().parents[2] / "profiles"

#: The abstract roots of the resource hierarchy; a parameter based on one applies to its subtypes.
_ABSTRACT_BASES = ("Resource", "DomainResource")
#: FHIRPath System type names -> the FHIR type they correspond to (http://hl7.org/fhirpath/#types).
_SYSTEM_TYPES = {
    "String": "string",
    "Boolean": "boolean",
    "Integer": "integer",
    "Decimal": "decimal",
    "Date": "date",
    "DateTime": "dateTime",
    "Time": "time",
}


@dataclass(frozen=True, slots=True)
class SearchParam:
    """One search parameter, as defined by a SearchParameter resource.

    ``expressions`` holds, for each entry of ``base``, the union branches of ``expression`` that
    apply to that type (``Patient.name | Person.name`` -> ``Patient: Patient.name``); a branch
    rooted at ``Resource``/``DomainResource`` or at a relative path applies to every base.
    """

    code: str
    url: str
    type: str
    base: tuple[str, ...]
    expression: str | None
    target: tuple[str, ...] = ()
    modifiers: tuple[str, ...] = ()
    comparators: tuple[str, ...] = ()
    components: tuple[tuple[str, str], ...] = ()
    chain: tuple[str, ...] = ()
    multiple_or: bool | None = None
    multiple_and: bool | None = None
    expressions: tuple[tuple[str, str], ...] = ()

    def expression_for(self, resource_type: str) -> str | None:
        """The part of ``expression`` that applies to ``resource_type`` (None: no values)."""
        fallback = None
        for base, expr in self.expressions:
            if base == resource_type:
                return expr
            if base in _ABSTRACT_BASES:
                fallback = expr
        return fallback


#: ``X.where(resolve() is T)``: a reference parameter narrowed to one target type (``Registry.narrowings``)
_NARROWED = re.compile(r"^(.+)\.where\(\s*resolve\(\)\s+is\s+([A-Za-z]+)\s*\)$")


def _strip_parens(branch: str) -> str:
    """A branch without the parentheses around all of it (``(Observation.subject)`` -> ``Observation.subject``;
    ``(a).b`` and ``(a) | (b)`` stay as they are)."""
    text = branch.strip()
    while text.startswith("(") and _closing(text) == len(text) - 1:
        text = text[1:-1].strip()
    return text


def _closing(text: str) -> int:
    """Index of the parenthesis closing the one ``text`` starts with (-1: none)."""
    depth = 0
    for i, ch in enumerate(text):
        depth += (ch == "(") - (ch == ")")
        if depth == 0:
            return i
    return -1


def split_union(expression: str) -> list[str]:
    """Split a FHIRPath expression on its top-level ``|`` (not inside (), [] or quotes)."""
    parts: list[str] = []
    depth = 0
    quote: str | None = None
    start = 0
    i = 0
    while i < len(expression):
        ch = expression[i]
        if quote:
            if ch == "\\":
                i += 1
            elif ch == quote:
                quote = None
        elif ch in "'`\"":
            quote = ch
        elif ch in "([{":
            depth += 1
        elif ch in ")]}":
            depth -= 1
        elif ch == "|" and depth == 0:
            parts.append(expression[start:i].strip())
            start = i + 1
        i += 1
    parts.append(expression[start:].strip())
    return [p for p in parts if p]


def branch_root(branch: str) -> str | None:
    """The type a union branch starts from (``(Observation.value as X)`` -> Observation).

    None when the branch is relative (starts with an element name, e.g. ``name | alias``).
    """
    text = branch.lstrip("( \t\r\n")
    name = ""
    for ch in text:
        if ch.isalnum() or ch == "_":
            name += ch
        else:
            break
    return name if name[:1].isupper() else None


def _branches_by_base(expression: str | None, base: tuple[str, ...]) -> tuple[tuple[str, str], ...]:
    if not expression:
        return ()
    branches = split_union(expression)
    out: list[tuple[str, str]] = []
    for b in base:
        kept = [br for br in branches if branch_root(br) in (b, None, *_ABSTRACT_BASES)]
        if kept:
            out.append((b, " | ".join(kept)))
    return tuple(out)


def parse_search_parameter(definition: Mapping[str, Any]) -> SearchParam:
    """A :class:`SearchParam` from a SearchParameter resource (or its vendored compact form)."""
    missing = [k for k in ("url", "code", "base", "type") if not definition.get(k)]
    if missing:
        raise ValueError(f"SearchParameter {definition.get('url') or definition.get('id')!r} lacks {missing}")
    base = tuple(str(b) for b in definition["base"])
    components = definition.get("component", ())
    expression = definition.get("expression") or None
    return SearchParam(
        code=str(definition["code"]),
        url=str(definition["url"]),
        type=str(definition["type"]),
        base=base,
        expression=expression,
        target=tuple(definition.get("target", ())),
        modifiers=tuple(definition.get("modifier", ())),
        comparators=tuple(definition.get("comparator", ())),
        components=tuple((str(c["definition"]), str(c["expression"])) for c in components),
        chain=tuple(definition.get("chain", ())),
        multiple_or=definition.get("multipleOr"),
        multiple_and=definition.get("multipleAnd"),
        expressions=_branches_by_base(expression, base),
    )


@dataclass(frozen=True, slots=True)
class ElementInfo:
    """The declared type(s) of one element; ``choice`` for ``name[x]`` elements (JSON ``nameType``)."""

    name: str
    types: tuple[str, ...]
    choice: bool

    def json_key(self, type_name: str) -> str:
        """The JSON property holding this element when it has ``type_name``."""
        if not self.choice:
            return self.name
        return self.name + type_name[:1].upper() + type_name[1:]


class TypeModel:
    """R4 type hierarchy and element types (from the base StructureDefinitions).

    A type is a type name (``Observation``, ``Quantity``, ``code``) or, for a backbone element,
    its path (``Observation.component``), whose elements are listed under that path.
    """

    def __init__(self, types: Mapping[str, Mapping[str, Any]], elements: Mapping[str, Mapping[str, Any]]):
        self._types = {k: dict(v) for k, v in types.items()}
        self._elements = {k: dict(v) for k, v in elements.items()}
        self._cache: dict[tuple[str, str], ElementInfo | None] = {}
        self._resources = frozenset(
            name for name, t in self._types.items() if t.get("kind") == "resource" and not t.get("abstract")
        )

    def resource_types(self) -> frozenset[str]:
        """Every concrete resource type."""
        return self._resources

    def known(self, type_name: str) -> bool:
        return type_name in self._types or type_name in self._elements

    def is_primitive(self, type_name: str) -> bool:
        """True for FHIR primitive types (``string``, ``date``, ``code`` …)."""
        return self._types.get(type_name, {}).get("kind") == "primitive-type"

    def parent(self, type_name: str) -> str | None:
        """The base type (a backbone path's parent is ``BackboneElement``)."""
        entry = self._types.get(type_name)
        if entry is not None:
            base = entry.get("base")
            return str(base) if base else None
        if "." in type_name:
            return "BackboneElement"
        return None

    def ancestors(self, type_name: str) -> Iterator[str]:
        """``type_name`` and its base types, nearest first."""
        current: str | None = type_name
        seen: set[str] = set()
        while current and current not in seen:
            seen.add(current)
            yield current
            current = self.parent(current)

    def canonical_name(self, type_name: str) -> str:
        """``FHIR.Patient`` -> ``Patient``; ``System.DateTime``/``DateTime`` -> ``dateTime``."""
        name = type_name.rsplit(".", 1)[-1] if type_name.startswith(("FHIR.", "System.")) else type_name
        if name not in self._types and name in _SYSTEM_TYPES:
            return _SYSTEM_TYPES[name]
        return name

    def is_a(self, type_name: str, wanted: str) -> bool:
        """True when ``type_name`` is ``wanted`` or derives from it (FHIRPath ``is``)."""
        return self.canonical_name(wanted) in self.ancestors(self.canonical_name(type_name))

    def element(self, owner: str, name: str) -> ElementInfo | None:
        """The element ``name`` of type/backbone ``owner`` (inherited elements included)."""
        key = (owner, name)
        if key in self._cache:
            return self._cache[key]
        info = None
        for t in self.ancestors(owner):
            declared = self._elements.get(t, {}).get(name)
            if declared is not None:
                if isinstance(declared, list):
                    info = ElementInfo(name, tuple(declared), True)
                else:
                    info = ElementInfo(name, (str(declared),), False)
                break
        self._cache[key] = info
        return info


class Registry:
    """Search parameters by resource type and code, plus the type model they are evaluated in."""

    def __init__(self, params: Iterable[SearchParam], types: TypeModel):
        self.types = types
        self._all = tuple(params)
        self._by_url = {p.url: p for p in self._all}
        by_base: dict[str, list[SearchParam]] = {}
        for p in self._all:
            for b in p.base:
                by_base.setdefault(b, []).append(p)
        by_type: dict[str, dict[str, SearchParam]] = {}
        for rt in sorted(types.resource_types()):
            chosen: dict[str, SearchParam] = {}
            # Most general base first, so a type's own definition wins over a common (Resource)
            # one, and within one base a later definition (profiles/) wins over an earlier one.
            for base in reversed(list(types.ancestors(rt))):
                for p in by_base.get(base, ()):
                    if p.code in chosen and chosen[p.code].url != p.url:
                        log.info("search parameter %s on %s replaced by %s", chosen[p.code].url, rt, p.url)
                    chosen[p.code] = p
            by_type[rt] = chosen
        for p in self._all:
            unknown = [b for b in p.base if b not in by_type and b not in _ABSTRACT_BASES]
            if unknown:
                log.warning("search parameter %s has unknown base type(s) %s", p.url, unknown)
        self._by_type: Mapping[str, Mapping[str, SearchParam]] = {
            rt: MappingProxyType(params) for rt, params in by_type.items()
        }
        self._derived: dict[tuple[Callable[..., Any], str], Mapping[str, Any]] = {}

    @classmethod
    def load(cls, extra_paths: Iterable[str | Path] | None = None) -> Registry:
        """The official R4 parameters plus SearchParameters from ``extra_paths``.

        ``extra_paths`` are JSON files or folders of ``*.json`` files; ``None`` means the
        repository's ``profiles/`` folder. Files that are not SearchParameters are ignored, so
        ``profiles/`` can also hold StructureDefinitions.
        """
        doc = jsonio.loads(VENDORED_PATH.read_bytes())
        params = [parse_search_parameter(d) for d in doc["searchParameters"]]
        paths = [PROFILES_DIR] if extra_paths is None else [Path(p) for p in extra_paths]
        for definition, source in _profile_search_parameters(paths):
            try:
                params.append(parse_search_parameter(definition))
            except ValueError as exc:
                raise ValueError(f"{source}: {exc}") from exc
        return cls(params, TypeModel(doc["types"], doc["elements"]))

    def params_for(self, resource_type: str) -> Mapping[str, SearchParam]:
        """Parameters by code that apply to ``resource_type`` (common ones included)."""
        return self._by_type.get(resource_type, MappingProxyType({}))

    def get(self, resource_type: str, code: str) -> SearchParam | None:
        return self.params_for(resource_type).get(code)

    def union_sources(self, param: SearchParam) -> tuple[SearchParam, ...]:
        """The parameters whose values together are exactly ``param``'s, or () (see :meth:`unions`)."""
        return self.unions(param.base[0]).get(param.code, ()) if len(param.base) == 1 else ()

    def unions(self, resource_type: str) -> Mapping[str, tuple[SearchParam, ...]]:
        """Union parameters of ``resource_type``: code -> the parameters it is the union of.

        A parameter is a union when it has one base (``resource_type``), and the branches of its
        expression (its top-level ``|`` parts) are exactly the branches of other parameters of
        the same type together, each of them having fewer branches, and, for a composite, the
        same components (type and expression) as each of them. R4's ``combo-code`` is
        ``Observation.code | Observation.component.code``: ``code`` with ``component-code``. Its
        index rows would repeat theirs, so the extractor writes none for it and a search reads
        theirs (:mod:`server.search.query`). In R4 these are the six ``combo-*`` parameters of
        Observation (a fifth of the index rows of the Synthea sample).
        """
        return self.derived(Registry._find_unions, resource_type)

    def derived(self, find: Callable[[Registry, str], Mapping[str, Any]], resource_type: str) -> Mapping[str, Any]:
        """``find(self, resource_type)``, computed once per registry and type (the definitions do
        not change): :meth:`unions`, :meth:`narrowings`, ``extract.root_composites``."""
        key = (find, resource_type)
        found = self._derived.get(key)
        if found is None:
            found = self._derived[key] = MappingProxyType(dict(find(self, resource_type)))
        return found

    def _find_unions(self, resource_type: str) -> dict[str, tuple[SearchParam, ...]]:
        params = self.params_for(resource_type)
        branches: dict[str, frozenset[str]] = {}
        for code, p in params.items():
            expression = p.expression_for(resource_type)
            if expression and p.type not in ("special", "reference") and not code.startswith("_"):
                branches[code] = frozenset(split_union(expression))
        out: dict[str, tuple[SearchParam, ...]] = {}
        for code, mine in branches.items():
            p = params[code]
            parts = [
                params[other]
                for other, theirs in sorted(branches.items())
                if other != code
                and params[other].type == p.type
                and len(theirs) < len(mine)
                and theirs <= mine
                and self._components(params[other]) == self._components(p)
            ]
            if (
                p.base == (resource_type,)  # one base: a search finds the union by the parameter alone
                and len(mine) > 1
                and parts
                and frozenset().union(*(branches[q.code] for q in parts)) == mine
            ):
                out[code] = tuple(parts)
        return out

    def narrowings(self, resource_type: str) -> Mapping[str, tuple[SearchParam, str]]:
        """Reference parameters of ``resource_type`` that are another one narrowed to one target
        type: code -> (that parameter, the target type).

        A parameter is one when every branch of its expression is ``X.where(resolve() is T)``
        with one ``T``, and another reference parameter of the type has exactly the ``X``
        branches: R4's ``patient`` of Observation is ``Observation.subject.where(resolve() is
        Patient)``, ``subject`` narrowed to Patient (47 such pairs in R4, on ``subject``,
        ``actor``, ``link`` …). Its reference rows would repeat the source's rows of that target
        type, so the extractor writes none for it (a reference row's ``target_type`` is the
        type ``resolve()`` sees: the url's, else ``Reference.type``) and a search reads the
        source's rows of that type (:mod:`server.search.query`). The token rows of a reference
        given by identifier only are still written under the parameter itself (``:identifier``).
        """
        return self.derived(Registry._find_narrowings, resource_type)

    def narrowing(self, resource_type: str, code: str) -> tuple[SearchParam, str] | None:
        """``narrowings(resource_type)[code]``, or None."""
        return self.narrowings(resource_type).get(code)

    def _find_narrowings(self, resource_type: str) -> dict[str, tuple[SearchParam, str]]:
        params = self.params_for(resource_type)
        plain: dict[frozenset[str], SearchParam] = {}
        narrowed: dict[str, tuple[frozenset[str], str]] = {}
        for code, p in sorted(params.items()):
            expression = p.expression_for(resource_type)
            if p.type != "reference" or not expression:
                continue
            branches = [_strip_parens(b) for b in split_union(expression)]
            matches = [_NARROWED.match(b) for b in branches]
            if all(m is not None for m in matches):
                targets = {m.group(2) for m in matches if m is not None}
                if len(targets) == 1:
                    sources = frozenset(_strip_parens(m.group(1)) for m in matches if m is not None)
                    narrowed[code] = (sources, targets.pop())
            else:
                plain.setdefault(frozenset(branches), p)
        out: dict[str, tuple[SearchParam, str]] = {}
        for code, (sources, target) in narrowed.items():
            source = plain.get(sources)
            if source is not None:
                out[code] = (source, target)
        return out

    def _components(self, param: SearchParam) -> tuple[tuple[str | None, str], ...]:
        """A composite's components as (type, expression): what makes two composites' items compare alike."""
        out = []
        for url, expression in param.components:
            component = self.by_url(url)
            out.append((component.type if component is not None else None, expression))
        return tuple(out)

    def by_url(self, url: str) -> SearchParam | None:
        """A parameter by its canonical url (e.g. a composite's component definition)."""
        return self._by_url.get(url)

    def resource_types(self) -> frozenset[str]:
        """Every resource type with parameters: all concrete types, since ``_id`` etc. apply to all."""
        return frozenset(self._by_type)

    def all(self) -> tuple[SearchParam, ...]:
        """Every parameter definition, in load order (official first, then profiles)."""
        return self._all


def _profile_search_parameters(paths: Iterable[Path]) -> Iterator[tuple[Mapping[str, Any], Path]]:
    files: list[Path] = []
    for path in paths:
        if path.is_dir():
            files.extend(sorted(path.glob("*.json")))
        elif path.is_file():
            files.append(path)
    for file in files:
        try:
            doc = jsonio.loads(file.read_bytes())
        except (jsonio.JSONDecodeError, UnicodeDecodeError) as exc:
            log.warning("skipping %s: not JSON (%s)", file, exc)
            continue
        if isinstance(doc, dict) and doc.get("resourceType") == "SearchParameter":
            yield doc, file


@functools.cache
def default_registry() -> Registry:
    """The process-wide registry (official R4 + ``profiles/``), loaded once."""
    return Registry.load()
