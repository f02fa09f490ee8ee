"""Generate ``server/knowledge/data/cds-drugs.json``: how the CDS services recognise a drug in an order.

For every drug of the vendored CPIC recommendations (``server/knowledge/data/cpic-recommendations.json``)
and of the QT table (``server/knowledge/data/qt-drugs.json``), plus the P2Y12 alternatives the
clopidogrel card suggests, it writes:

- the RxNorm **ingredient** (IN) code, from those two files (CPIC database v1.20, CC0-1.0);
- RxNorm **clinical / branded drug** (SCD/SBD) codes that real orders carry: every RxNorm coding
  of a MedicationRequest in the Synthea sample (``../shared/data/synthea/smart-sample-100.tgz``,
  smart-on-fhir/generated-sample-data, Apache-2.0; the codes are RxNorm's, NLM) whose display
  names the ingredient, plus the codes listed in :data:`EXTRA_CLINICAL_DRUGS` (stated source);
- **ATC** codes (WHO Collaborating Centre for Drug Statistics Methodology, ATC/DDD Index,
  https://atcddd.fhi.no/atc_ddd_index/, entered by hand in :data:`ATC`);
- **names** for text matching: the ingredient and the brand names in :data:`BRANDS`.

Run: ``.venv/bin/python scripts/gen_cds_drugs.py`` (rewrites the file; a test checks it is current).
"""

from __future__ import annotations

import hashlib
import json
import re
import sys
import tarfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
KNOWLEDGE = ROOT / "server" / "knowledge" / "data"
SYNTHEA = ROOT.parent / "shared" / "data" / "synthea" / "smart-sample-100.tgz"
OUT = KNOWLEDGE / "cds-drugs.json"
RXNORM = "http://www.nlm.nih.gov/research/umls/rxnorm"

#: WHO ATC codes (ATC/DDD Index), by ingredient
ATC = {
    "amitriptyline": "N06AA09",
    "atazanavir": "J05AE08",
    "atorvastatin": "C10AA05",
    "azathioprine": "L04AX01",
    "capecitabine": "L01BC06",
    "celecoxib": "M01AH01",
    "citalopram": "N06AB04",
    "clomipramine": "N06AA04",
    "clopidogrel": "B01AC04",
    "dexlansoprazole": "A02BC06",
    "doxepin": "N06AA12",
    "escitalopram": "N06AB10",
    "fluorouracil": "L01BC02",
    "flurbiprofen": "M01AE09",
    "fluvastatin": "C10AA04",
    "fosphenytoin": "N03AB05",
    "ibuprofen": "M01AE01",
    "imipramine": "N06AA02",
    "lansoprazole": "A02BC03",
    "lornoxicam": "M01AC05",
    "lovastatin": "C10AA02",
    "meloxicam": "M01AC06",
    "mercaptopurine": "L01BB02",
    "omeprazole": "A02BC01",
    "pantoprazole": "A02BC02",
    "phenytoin": "N03AB02",
    "piroxicam": "M01AC01",
    "pitavastatin": "C10AA08",
    "pravastatin": "C10AA03",
    "rosuvastatin": "C10AA07",
    "sertraline": "N06AB06",
    "simvastatin": "C10AA01",
    "tacrolimus": "L04AD02",
    "tenoxicam": "M01AC02",
    "thioguanine": "L01BB03",
    "trimipramine": "N06AA06",
    "voriconazole": "J02AC03",
    "warfarin": "B01AA03",
    "prasugrel": "B01AC22",
    "ticagrelor": "B01AC24",
}
#: drugs the cards suggest that are in neither table: RxNorm ingredient codes (RxNav, NLM)
ALTERNATIVES = {"prasugrel": "613391", "ticagrelor": "1116632"}
#: brand names (US labels) recognised in free text
BRANDS = {
    "clopidogrel": ["Plavix"],
    "simvastatin": ["Zocor"],
    "capecitabine": ["Xeloda"],
    "fluorouracil": ["5-FU", "Adrucil"],
    "azathioprine": ["Imuran"],
    "mercaptopurine": ["Purinethol", "Purixan"],
    "thioguanine": ["Tabloid"],
    "warfarin": ["Coumadin", "Jantoven"],
    "prasugrel": ["Effient"],
    "ticagrelor": ["Brilinta"],
    "amiodarone": ["Cordarone", "Pacerone"],
    "sotalol": ["Betapace"],
    "dofetilide": ["Tikosyn"],
    "citalopram": ["Celexa"],
    "ondansetron": ["Zofran"],
    "azithromycin": ["Zithromax"],
    "methadone": ["Dolophine"],
}
#: SCD codes real orders carry that the Synthea sample lacks: (code, display, source)
EXTRA_CLINICAL_DRUGS: dict[str, list[tuple[str, str, str]]] = {
    "clopidogrel": [("309362", "clopidogrel 75 MG Oral Tablet", "GitHub issue 7 / RxNorm SCD")],
}


def synthea_codes() -> dict[str, str]:
    """RxNorm code -> display of every medication coding in the Synthea sample."""
    found: dict[str, str] = {}
    with tarfile.open(SYNTHEA) as tar:
        for member in tar:
            if not member.isfile() or not member.name.endswith(".json"):
                continue
            handle = tar.extractfile(member)
            assert handle is not None
            bundle = json.load(handle)
            for entry in bundle.get("entry", []):
                resource = entry.get("resource", {})
                if resource.get("resourceType") not in ("MedicationRequest", "Medication", "MedicationStatement"):
                    continue
                concept = resource.get("medicationCodeableConcept") or resource.get("code") or {}
                for coding in concept.get("coding", []):
                    if coding.get("system") == RXNORM and coding.get("code"):
                        found[coding["code"]] = coding.get("display", "")
    return found


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def main() -> int:
    cpic_path = KNOWLEDGE / "cpic-recommendations.json"
    qt_path = KNOWLEDGE / "qt-drugs.json"
    cpic = json.loads(cpic_path.read_text())
    qt = json.loads(qt_path.read_text())
    ingredients: dict[str, str | None] = {d["drug"]: d["rxnorm"] for d in cpic["drugs"]}
    for d in qt["drugs"]:
        ingredients.setdefault(d["drug"], d["rxnorm"])
    ingredients.update({k: v for k, v in ALTERNATIVES.items() if k not in ingredients})
    atc = dict(ATC)
    atc.update({d["drug"]: d["atc"] for d in qt["drugs"]})
    if not SYNTHEA.exists():
        print(f"missing {SYNTHEA}", file=sys.stderr)
        return 1
    codes = synthea_codes()
    drugs = {}
    for name in sorted(ingredients):
        clinical = {
            code: {"display": display, "source": "Synthea sample (smart-on-fhir/generated-sample-data)"}
            for code, display in sorted(codes.items())
            if re.search(rf"\b{name}\b", display.lower()) and " / " not in display  # single-ingredient products only
        }
        for code, display, source in EXTRA_CLINICAL_DRUGS.get(name, []):
            clinical.setdefault(code, {"display": display, "source": source})
        drugs[name] = {
            "rxnorm": ingredients[name],
            "atc": [atc[name]] if name in atc else [],
            "clinical_drugs": clinical,
            "names": [name, *BRANDS.get(name, [])],
        }
    out = {
        "description": "Drug recognition for the CDS Hooks services: RxNorm ingredient, SCD/SBD codes, ATC, names",
        "generated_by": "scripts/gen_cds_drugs.py",
        "sources": {
            "rxnorm_ingredients": (
                "CPIC database v1.20 via PharmCAT (CC0-1.0); qt-drugs.json; RxNav (prasugrel, ticagrelor)"
            ),
            "clinical_drugs": (
                "RxNorm codes (NLM) as used by the Synthea sample smart-sample-100 (Apache-2.0), plus stated extras"
            ),
            "atc": "WHO ATC/DDD Index https://atcddd.fhi.no/atc_ddd_index/ (entered by hand)",
        },
        "licence": "CC0-1.0 (this compilation); RxNorm and ATC codes are facts of their code systems",
        "inputs": {
            "cpic-recommendations.json": sha256(cpic_path),
            "qt-drugs.json": sha256(qt_path),
            "smart-sample-100.tgz": sha256(SYNTHEA),
        },
        "drugs": drugs,
    }
    OUT.write_text(json.dumps(out, indent=1, ensure_ascii=False) + "\n")
    codes_written = sum(len(d["clinical_drugs"]) for d in drugs.values())
    print(f"wrote {OUT.relative_to(ROOT)}: {len(drugs)} drugs, {codes_written} SCD/SBD codes")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
