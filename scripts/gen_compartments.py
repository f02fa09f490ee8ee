"""Regenerate the vendored compartment table ``server/search/data/compartments-r4.json``.

Reads the five official FHIR R4 (4.0.1) CompartmentDefinitions (CC0-1.0,
http://hl7.org/fhir/R4/compartmentdefinition.html, files ``CompartmentDefinition-*.json`` from
npm ``hl7.fhir.r4.examples`` 4.0.1) and keeps, per compartment (Patient, Encounter,
RelatedPerson, Practitioner, Device), its canonical url and, per resource type that can be in
it, the search parameters that link a resource to the compartment owner
(http://hl7.org/fhir/R4/compartmentdefinition.html#use, search.html "compartments"). ``{def}``
is kept as written: the owner resource itself is in its compartment.

Usage: ``python scripts/gen_compartments.py [--source DIR] [--out FILE]`` (defaults: the shared
R4 data folder next to the repository, and the vendored path). Output is deterministic.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from _vendored import arguments, compact, joined, write_table

REPO = Path(__file__).resolve().parent.parent
DEFAULT_SOURCE = REPO.parent / "shared" / "data" / "fhir-r4"
DEFAULT_OUT = REPO / "server" / "search" / "data" / "compartments-r4.json"


def build(source: Path) -> dict[str, Any]:
    compartments: dict[str, Any] = {}
    files = sorted(source.glob("CompartmentDefinition-*.json"))
    if not files:
        raise SystemExit(f"no CompartmentDefinition-*.json in {source}")
    for path in files:
        definition = json.loads(path.read_text(encoding="utf-8"))
        resources = sorted(definition["resource"], key=lambda r: r["code"])
        members = {r["code"]: list(r["param"]) for r in resources if r.get("param")}
        compartments[definition["code"]] = {"url": definition["url"], "resources": members}
    return {
        "header": {
            "source": "FHIR R4 4.0.1 CompartmentDefinitions (npm hl7.fhir.r4.examples 4.0.1)",
            "license": "CC0-1.0",
            "generator": "scripts/gen_compartments.py",
        },
        "compartments": dict(sorted(compartments.items())),
    }


def dump(doc: dict[str, Any]) -> str:
    """Deterministic JSON: one compartment member type per line."""

    lines = ["{", f'"header":{compact(doc["header"])},', '"compartments":{']
    names = list(doc["compartments"])
    for i, name in enumerate(names):
        comp = doc["compartments"][name]
        lines.append(f'{compact(name)}:{{"url":{compact(comp["url"])},"resources":{{')
        lines += joined(f"{compact(k)}:{compact(v)}" for k, v in comp["resources"].items())
        lines.append("}}" + ("," if i < len(names) - 1 else ""))
    lines += ["}", "}"]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> None:
    args = arguments(__doc__, DEFAULT_SOURCE, DEFAULT_OUT, argv)
    doc = build(args.source)
    text = write_table(args.out, doc, dump(doc))
    counts = ", ".join(f"{k} {len(v['resources'])}" for k, v in doc["compartments"].items())
    print(f"wrote {args.out}: resource types per compartment: {counts} ({len(text):,} bytes)")


if __name__ == "__main__":
    main()
