"""Generate server/fhir/data/summary-elements.json from the official R4 StructureDefinitions.

For every resource type: its top-level elements marked ``isSummary`` (used by ``_summary=true``)
and those with ``min >= 1`` (kept by ``_summary=text`` and ``_elements``), see
http://hl7.org/fhir/R4/search.html#summary. Source: ../shared/data/fhir-r4/profiles-resources.json.gz
(npm hl7.fhir.r4.examples 4.0.1, CC0-1.0).

Usage: python scripts/gen_summary_elements.py [PROFILES_RESOURCES_JSON_GZ]
"""

from __future__ import annotations

import gzip
import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
DEFAULT_SOURCE = ROOT.parent / "shared" / "data" / "fhir-r4" / "profiles-resources.json.gz"
TARGET = ROOT / "server" / "fhir" / "data" / "summary-elements.json"


def main(source: Path) -> None:
    bundle = json.loads(gzip.decompress(source.read_bytes()))
    out: dict[str, dict[str, list[str]]] = {}
    for entry in bundle["entry"]:
        sd = entry["resource"]
        if sd.get("resourceType") != "StructureDefinition" or sd.get("kind") != "resource" or sd.get("abstract"):
            continue
        summary: list[str] = []
        mandatory: list[str] = []
        for el in sd["snapshot"]["element"]:
            path = el["path"].split(".")
            if len(path) != 2:
                continue
            name = path[1].replace("[x]", "")
            if el.get("isSummary"):
                summary.append(name)
            if el.get("min", 0) >= 1:
                mandatory.append(name)
        out[sd["type"]] = {"summary": sorted(set(summary)), "mandatory": sorted(set(mandatory))}
    doc = {
        "_source": "HL7 FHIR R4 4.0.1 StructureDefinitions (npm hl7.fhir.r4.examples 4.0.1), CC0-1.0",
        "_generated_by": "scripts/gen_summary_elements.py",
        "types": dict(sorted(out.items())),
    }
    TARGET.parent.mkdir(parents=True, exist_ok=True)
    TARGET.write_text(json.dumps(doc, indent=0, sort_keys=False) + "\n")
    print(f"wrote {TARGET} ({len(out)} resource types)")


if __name__ == "__main__":
    main(Path(sys.argv[1]) if len(sys.argv) > 1 else DEFAULT_SOURCE)
