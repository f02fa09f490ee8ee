"""Regenerate the vendored search-parameter table ``server/search/data/search-parameters-r4.json``.

Reads the official FHIR R4 (4.0.1) definitions (CC0-1.0, http://hl7.org/fhir/R4/downloads.html):

* ``search-parameters.json.gz`` - the Bundle of the 1,375 official SearchParameters
  (http://hl7.org/fhir/R4/searchparameter.html); each is kept with only the fields search needs
  (url, code, base, type, expression, target, modifier, comparator, multipleOr/multipleAnd,
  component, chain) - description, contact, xpath, narrative … are dropped.
* ``profiles-types.json.gz`` and ``profiles-resources.json.gz`` - the StructureDefinitions of
  the base types and resources (http://hl7.org/fhir/R4/structuredefinition.html), reduced to
  a type hierarchy (``types``) and the declared type(s) of every element (``elements``). The
  expression compiler in ``server/search/extract.py`` needs them to know that ``Observation.value``
  is a choice element (JSON ``valueQuantity``, ``valueCodeableConcept`` …) and that
  ``Patient.telecom`` holds ContactPoints, without guessing from the data.

Usage: ``python scripts/gen_search_params.py [--source DIR] [--out FILE]`` (defaults: the shared
R4 data folder next to the repository, and the vendored path). Output is deterministic: sorted,
one parameter / type per line, so a regeneration diff shows only what changed.
"""

from __future__ import annotations

import gzip
import json
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

from _vendored import arguments, compact, joined, write_table

REPO = Path(__file__).resolve().parent.parent
DEFAULT_SOURCE = REPO.parent / "shared" / "data" / "fhir-r4"
DEFAULT_OUT = REPO / "server" / "search" / "data" / "search-parameters-r4.json"

FHIR_VERSION = "4.0.1"
#: SearchParameter fields kept, in output order (all other fields are documentation).
KEPT_FIELDS = (
    "url",
    "code",
    "base",
    "type",
    "expression",
    "target",
    "modifier",
    "comparator",
    "multipleOr",
    "multipleAnd",
    "component",
    "chain",
)
#: Elements every Element / BackboneElement has; the compiler inherits them, so not repeated.
IMPLIED_ELEMENTS = frozenset({"id", "extension", "modifierExtension"})
#: StructureDefinition kinds that define the base types (logical models are not data).
KINDS = ("resource", "complex-type", "primitive-type")
FHIR_TYPE_EXT = "http://hl7.org/fhir/StructureDefinition/structuredefinition-fhir-type"
FHIRPATH_SYSTEM = "http://hl7.org/fhirpath/System."


def read_bundle(path: Path) -> Iterator[dict[str, Any]]:
    """Yield the resources of a (gzipped) JSON Bundle."""
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rt", encoding="utf-8") as fh:
        bundle = json.load(fh)
    for entry in bundle.get("entry", []):
        yield entry["resource"]


def compact_search_parameter(sp: Mapping[str, Any]) -> dict[str, Any]:
    """The fields of one SearchParameter that search uses (absent/empty fields omitted)."""
    out: dict[str, Any] = {}
    for key in KEPT_FIELDS:
        value = sp.get(key)
        if value is None or value == []:
            continue
        if key == "component":
            value = [{"definition": c["definition"], "expression": c["expression"]} for c in value]
        out[key] = value
    return out


def _element_type(element: Mapping[str, Any], backbone_paths: set[str]) -> str | list[str] | None:
    """The declared type of one snapshot element: a type name, a backbone path, or a choice list."""
    path = element["path"]
    if "contentReference" in element:
        return str(element["contentReference"]).lstrip("#")
    if path in backbone_paths:
        return str(path)
    codes: list[str] = []
    for t in element.get("type", []):
        code = str(t["code"])
        if code.startswith(FHIRPATH_SYSTEM):
            fhir_type = [e["valueUrl"] for e in t.get("extension", []) if e["url"] == FHIR_TYPE_EXT]
            code = fhir_type[0] if fhir_type else code[len(FHIRPATH_SYSTEM) :].lower()
        codes.append(code)
    if not codes:
        return None
    if path.endswith("[x]"):
        return codes
    return codes[0]


def build_types(sds: list[dict[str, Any]]) -> tuple[dict[str, Any], dict[str, Any]]:
    """(types, elements) from the base StructureDefinitions (profiles/constraints skipped)."""
    kept = [sd for sd in sds if sd["kind"] in KINDS and sd.get("derivation") != "constraint"]
    types: dict[str, Any] = {}
    for sd in kept:
        base = (sd.get("baseDefinition") or "").rsplit("/", 1)[-1] or None
        entry: dict[str, Any] = {"kind": sd["kind"]}
        if base:
            entry["base"] = base
        if sd.get("abstract"):
            entry["abstract"] = True
        types[sd["id"]] = entry

    raw: dict[str, dict[str, str | list[str]]] = {}
    for sd in kept:
        if sd["kind"] == "primitive-type":
            continue  # their only child is the primitive value itself
        snapshot = sd["snapshot"]["element"]
        paths = {el["path"] for el in snapshot}
        backbone = {p for p in paths if any(q.startswith(p + ".") for q in paths)}
        root = snapshot[0]["path"]
        backbone.discard(root)
        for el in snapshot[1:]:
            owner, _, name = el["path"].rpartition(".")
            if name.endswith("[x]"):
                name = name[:-3]
            typ = _element_type(el, backbone)
            if typ is not None:
                raw.setdefault(owner, {})[name] = typ

    def inherited(type_name: str, name: str) -> str | list[str] | None:
        parent = types.get(type_name, {}).get("base")
        while parent:
            found = raw.get(parent, {}).get(name)
            if found is not None:
                return found
            parent = types.get(parent, {}).get("base")
        return None

    elements: dict[str, Any] = {}
    for owner, children in raw.items():
        is_type_root = "." not in owner
        kept_children = {}
        for name, typ in children.items():
            if owner not in ("Element", "BackboneElement", "Resource", "DomainResource"):
                if name in IMPLIED_ELEMENTS and not is_type_root:
                    continue  # backbone elements inherit these from BackboneElement
                if is_type_root and inherited(owner, name) == typ:
                    continue  # e.g. Observation.meta is Resource.meta
            kept_children[name] = typ
        if kept_children:
            elements[owner] = dict(sorted(kept_children.items()))
    return dict(sorted(types.items())), dict(sorted(elements.items()))


def build(source: Path) -> dict[str, Any]:
    """The whole vendored document."""
    params = [
        compact_search_parameter(sp)
        for sp in read_bundle(source / "search-parameters.json.gz")
        if sp.get("resourceType") == "SearchParameter"
    ]
    params.sort(key=lambda p: p["url"])
    sds = [
        r
        for name in ("profiles-types.json.gz", "profiles-resources.json.gz")
        for r in read_bundle(source / name)
        if r.get("resourceType") == "StructureDefinition"
    ]
    types, elements = build_types(sds)
    header = {
        "source": "FHIR R4 definitions: search-parameters.json, profiles-types.json, "
        "profiles-resources.json (http://hl7.org/fhir/R4/downloads.html)",
        "fhirVersion": FHIR_VERSION,
        "license": "CC0-1.0",
        "generatedBy": "scripts/gen_search_params.py",
        "contents": "searchParameters: official SearchParameters (search fields only); "
        "types: type -> kind/base/abstract; elements: owner type or backbone path -> element name "
        "-> type (a list for choice elements [x], a dotted path for backbone elements)",
    }
    return {"header": header, "searchParameters": params, "types": types, "elements": elements}


def dump(doc: Mapping[str, Any]) -> str:
    """Deterministic JSON: one parameter, type or element owner per line."""

    lines = ["{", f'"header":{compact(doc["header"])},', '"searchParameters":[']
    lines += joined(compact(p) for p in doc["searchParameters"])
    lines.append("],")
    for section in ("types", "elements"):
        lines.append(f'"{section}":{{')
        lines += joined(f"{compact(k)}:{compact(v)}" for k, v in doc[section].items())
        lines.append("}," if section == "types" else "}")
    lines.append("}")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> None:
    args = arguments(__doc__, DEFAULT_SOURCE, DEFAULT_OUT, argv)
    doc = build(args.source)
    text = write_table(args.out, doc, dump(doc))
    print(
        f"wrote {args.out}: {len(doc['searchParameters'])} search parameters, "
        f"{len(doc['types'])} types, {len(doc['elements'])} element owners ({len(text):,} bytes)"
    )


if __name__ == "__main__":
    main()
