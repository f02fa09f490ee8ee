"""Generate ``profiles/data/r4-definitions.json.gz`` from the official R4 StructureDefinitions.

Reads the FHIR R4 (4.0.1) definition Bundles ``profiles-resources.json.gz`` and
``profiles-types.json.gz`` (npm package hl7.fhir.r4.core, CC0-1.0) and writes the compact table that
:mod:`profiles.validate` uses for structural validation (http://hl7.org/fhir/R4/validation.html,
http://hl7.org/fhir/R4/elementdefinition.html):

- ``resourceTypes``: every concrete resource type (kind ``resource``, not abstract);
- ``primitives``: per primitive type, its JSON representation (``string``, ``boolean``,
  ``integer`` or ``decimal``, following the ``baseDefinition`` chain, as
  http://hl7.org/fhir/R4/json.html#primitive prescribes) and the value regex taken from the
  ``value`` element's http://hl7.org/fhir/StructureDefinition/regex extension;
- ``types``: for each concrete resource and each complex datatype (``Element`` included, for the
  ``_element`` siblings of primitives), its snapshot elements as ``{relative path: [min, max,
  types]}`` where ``types`` is the list of type codes (a choice ``[x]`` element lists each allowed
  type) or, for a contentReference, the string ``"#Type.path"``.

FHIRPath system types (``http://hl7.org/fhirpath/System.String`` on ``Element.id``,
``Extension.url`` …) are replaced by the FHIR type named in their structuredefinition-fhir-type
extension. ``Resource.id`` is recorded as ``id`` (its documented type,
http://hl7.org/fhir/R4/resource.html#id), not ``string`` as the 4.0.1 snapshot says.

Usage: ``python scripts/gen_r4_definitions.py [--source DIR] [--out FILE]``.
"""

from __future__ import annotations

import argparse
import gzip
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
DEFAULT_SOURCE = ROOT.parent / "shared" / "data" / "fhir-r4"
DEFAULT_OUT = ROOT / "profiles" / "data" / "r4-definitions.json.gz"

FHIR_TYPE_EXT = "http://hl7.org/fhir/StructureDefinition/structuredefinition-fhir-type"
REGEX_EXT = "http://hl7.org/fhir/StructureDefinition/regex"
#: primitive types whose JSON form is not a string (http://hl7.org/fhir/R4/json.html#primitive)
JSON_KINDS = {"boolean": "boolean", "integer": "integer", "decimal": "decimal"}


def structure_definitions(source: Path) -> Iterator[dict[str, Any]]:
    for name in ("profiles-types.json.gz", "profiles-resources.json.gz"):
        with gzip.open(source / name, "rt", encoding="utf-8") as fh:
            bundle = json.load(fh)
        for entry in bundle["entry"]:
            resource = entry["resource"]
            if resource["resourceType"] == "StructureDefinition":
                yield resource


def type_code(element_type: dict[str, Any]) -> str:
    code: str = element_type["code"]
    if code.startswith("http://hl7.org/fhirpath/System."):
        for ext in element_type.get("extension", ()):
            if ext["url"] == FHIR_TYPE_EXT:
                return str(ext["valueUrl"])
        raise ValueError(f"system type without fhir-type extension: {element_type}")
    return code


def regex_of(element: dict[str, Any]) -> str | None:
    extensions = list(element.get("extension", ()))
    for element_type in element.get("type", ()):
        extensions.extend(element_type.get("extension", ()))
    for ext in extensions:
        if ext["url"] == REGEX_EXT:
            return str(ext["valueString"])
    return None


def reduce_elements(sd: dict[str, Any]) -> dict[str, list[Any]]:
    root = sd["type"]
    out: dict[str, list[Any]] = {}
    for element in sd["snapshot"]["element"]:
        path: str = element["path"]
        if path == root:
            continue
        if not path.startswith(root + "."):
            raise ValueError(f"{sd['id']}: unexpected path {path}")
        rel = path[len(root) + 1 :]
        if sd["kind"] == "resource" and rel == "id":
            types: str | list[str] = ["id"]
        elif "contentReference" in element:
            types = str(element["contentReference"])
        else:
            types = list(dict.fromkeys(type_code(t) for t in element["type"]))
            if len(types) != 1 and not rel.endswith("[x]"):
                raise ValueError(f"{path}: several types on a non-choice element")
        out[rel] = [int(element["min"]), str(element["max"]), types]
    return out


def build(source: Path) -> dict[str, Any]:
    sds = {sd["id"]: sd for sd in structure_definitions(source)}
    resource_types: list[str] = []
    primitives: dict[str, dict[str, Any]] = {}
    types: dict[str, dict[str, list[Any]]] = {}
    for sd in sds.values():
        kind = sd["kind"]
        if sd.get("derivation") == "constraint" or kind == "logical":
            continue  # profiles (SimpleQuantity …) and logical models are not base types
        if kind == "primitive-type":
            base = sd["id"]
            while base not in JSON_KINDS and base in sds and "baseDefinition" in sds[base]:
                base = sds[base]["baseDefinition"].rsplit("/", 1)[1]
            value = next(e for e in sd["snapshot"]["element"] if e["path"] == sd["id"] + ".value")
            entry: dict[str, Any] = {"json": JSON_KINDS.get(base, "string")}
            regex = regex_of(value)
            if regex is not None:
                entry["regex"] = regex
            primitives[sd["id"]] = entry
        elif kind == "complex-type":
            if sd["id"] == "Element" or not sd.get("abstract"):
                types[sd["id"]] = reduce_elements(sd)
        elif kind == "resource" and not sd.get("abstract"):
            resource_types.append(sd["id"])
            types[sd["id"]] = reduce_elements(sd)
    return {
        "source": {
            "package": "hl7.fhir.r4.core",
            "version": "4.0.1",
            "examples": "hl7.fhir.r4.examples 4.0.1",
            "license": "CC0-1.0",
            "url": "http://hl7.org/fhir/R4/downloads.html",
            "generatedBy": "scripts/gen_r4_definitions.py",
        },
        "fhirVersion": "4.0.1",
        "resourceTypes": sorted(resource_types),
        "primitives": dict(sorted(primitives.items())),
        "types": dict(sorted(types.items())),
    }


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--source", type=Path, default=DEFAULT_SOURCE, help="folder with profiles-*.json.gz")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help="output .json.gz")
    args = parser.parse_args(argv)
    table = build(args.source)
    data = json.dumps(table, separators=(",", ":"), ensure_ascii=False).encode("utf-8")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    # mtime=0: the same input gives byte-identical output
    with gzip.GzipFile(args.out, "wb", compresslevel=9, mtime=0) as fh:
        fh.write(data)
    print(
        f"{args.out}: {len(table['resourceTypes'])} resource types, {len(table['types'])} types, "
        f"{len(table['primitives'])} primitives, {args.out.stat().st_size} bytes"
    )


if __name__ == "__main__":
    main()
