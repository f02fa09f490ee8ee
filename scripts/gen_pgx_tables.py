"""Regenerate the vendored pharmacogenomic knowledge tables in ``server/knowledge/data/``.

Reads the CPIC/PharmVar content that PharmCAT distributes (https://github.com/PharmGKB/PharmCAT;
CPIC data CC0-1.0, https://cpicpgx.org; PharmVar allele definitions, https://www.pharmvar.org)
from the shared data folder and writes three compact, deterministic JSON files, one gene or drug
per line so a regeneration diff shows only what changed:

* ``pgx-alleles.json`` - star-allele definitions of the genes the server calls
  (``alleles/GENE_translation.json.gz``): the GRCh38 positions (VCF POS, REF, ALTs, rsID, HGVS)
  and every named allele's VCF allele per position (``null`` = same as the reference allele,
  IUPAC codes kept as written), the reference allele, the default allele (``*1`` when defined),
  the sub-allele -> allele map (SLCO1B1 ``*45.001`` -> ``*45``), the calling mode and whether
  the names are PharmVar star alleles;
* ``pgx-phenotypes.json`` - allele function / activity value and diplotype -> phenotype /
  activity score (``phenotypes/GENE.json.gz``), the diplotypes grouped as
  ``[phenotype, activity score, ["A/B", …]]``;
* ``cpic-recommendations.json`` - the CPIC recommendations (``cpic/recommendations-cpic-v1.20.json.gz``,
  PharmCAT's ``reporter/drugs.json`` of CPIC database v1.20) of every drug that involves one of
  these genes: drug name, RxNorm code, genes, lookup keys (phenotype, or activity score in the
  phenotype table's ``x.y`` form), implications, recommendation text, strength, population,
  comments and guideline URL. Citations are dropped (the guideline URL leads to them); the
  long texts, repeated across the drugs of one guideline, are interned in a ``texts`` list.

Every file starts with ``source``, ``version``, ``licence`` (CC0-1.0) and ``generated_from``
(file name + sha256), so the server can say where a call came from.

The script checks what the calling code relies on and stops with a message otherwise: the
reference allele spells the VCF REF at every position, every allele value is a VCF allele of its
position or an IUPAC code at an SNV, and every diplotype of the phenotype table has two alleles.

Usage: ``python scripts/gen_pgx_tables.py [--source DIR] [--out DIR]`` (defaults: the shared
``pgx`` folder next to the repository, and ``server/knowledge/data``).
"""

from __future__ import annotations

import argparse
import gzip
import hashlib
import json
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
DEFAULT_SOURCE = REPO.parent / "shared" / "data" / "pgx"
DEFAULT_OUT = REPO / "server" / "knowledge" / "data"

#: The genes of GitHub issue 7 and how each is called (see mappers/pgx.py).
GENES = {
    "CYP2C19": "diplotype",
    "CYP2C9": "diplotype",
    "CYP3A5": "diplotype",
    "NUDT15": "diplotype",
    "SLCO1B1": "diplotype",
    "TPMT": "diplotype",
    "UGT1A1": "diplotype",
    "DPYD": "lowest-two",  # CPIC: activity score of the two lowest-function variants
    "VKORC1": "genotype",  # CPIC reports the rs9923231 genotype
}
#: Genes whose star-allele names PharmVar curates (https://www.pharmvar.org/genes). TPMT and
#: UGT1A1 are named by their own nomenclature committees, DPYD is reported by variant (HGVS) names
#: in CPIC, VKORC1 by genotype: their Genotype Observations carry the call as text only.
PHARMVAR_GENES = frozenset({"CYP2C19", "CYP2C9", "CYP3A5", "NUDT15", "SLCO1B1"})
IUPAC = frozenset("RYSWKMBDHVN")
LICENCE = "CC0-1.0"
ATTRIBUTION = "CPIC (https://cpicpgx.org) and PharmVar (https://www.pharmvar.org) content, as distributed by PharmCAT"


def read_json(path: Path) -> Any:
    with gzip.open(path, "rt", encoding="utf-8") as fh:
        return json.load(fh)


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


class DataError(Exception):
    """The source data breaks an assumption the calling code relies on."""


def allele_table(gene: str, doc: dict[str, Any]) -> dict[str, Any]:
    """One gene's definition, reduced to what the caller needs (checked on the way)."""
    variants = doc["variants"]
    positions = []
    for v in variants:
        if v["chromosome"] != doc["chromosome"]:
            raise DataError(f"{gene}: position {v['position']} is on {v['chromosome']}, not {doc['chromosome']}")
        positions.append([v["position"], v["rsid"], v["ref"], v["alts"], v["chromosomeHgvsName"]])
    named = doc["namedAlleles"]
    references = [a for a in named if a["reference"]]
    if len(references) != 1 or named[0] is not references[0]:
        raise DataError(f"{gene}: expected exactly one reference allele, listed first")
    reference = references[0]
    alleles = []
    for allele in named:
        values = allele["alleles"]
        if len(values) != len(variants):
            raise DataError(f"{gene} {allele['name']}: {len(values)} alleles for {len(variants)} positions")
        for value, v in zip(values, variants, strict=True):
            if value is None or value == v["ref"] or value in v["alts"]:
                continue
            snv = len(v["ref"]) == 1 and all(len(alt) == 1 for alt in v["alts"])
            if not (snv and value in IUPAC):
                raise DataError(f"{gene} {allele['name']}: {value!r} at {v['position']} is no VCF allele")
        if allele["structuralVariant"]:
            raise DataError(f"{gene} {allele['name']}: structural alleles are not supported")
        alleles.append([allele["name"], values])
    for value, v in zip(reference["alleles"], variants, strict=True):
        if value != v["ref"]:
            raise DataError(f"{gene}: reference allele has {value!r} at {v['position']}, VCF REF is {v['ref']!r}")
    names = [a["name"] for a in named]
    default = "*1" if "*1" in names else reference["name"]
    return {
        "chromosome": doc["chromosome"],
        "refseq": doc["refSeqChromosomeId"],
        "assembly": doc["genomeBuild"],
        "version": doc["version"],
        "mode": GENES[gene],
        "pharmvar": gene in PHARMVAR_GENES,
        "reference": reference["name"],
        "default": default,
        "suballeles": doc.get("suballelesMap") or {},
        "positions": positions,
        "alleles": alleles,
    }


def phenotype_table(gene: str, doc: dict[str, Any]) -> dict[str, Any]:
    """Allele functions and diplotype -> phenotype / activity score of one gene."""
    functions = {a["name"]: a["functionValue"] for a in doc["namedAlleles"]}
    activity = {a["name"]: a["activityValue"] for a in doc["namedAlleles"] if a["activityValue"] is not None}
    groups: dict[tuple[str, str | None], list[str]] = {}
    for row in doc["diplotypes"]:
        key = row["diplotypekey"]
        pair = [name for name, count in key.items() for _ in range(count)]
        if len(pair) != 2 or any("/" in name for name in pair):
            raise DataError(f"{gene}: diplotype {row['diplotype']!r} is not two alleles without '/'")
        score = row["activityScore"] if activity else None
        groups.setdefault((row["generesult"], score), []).append("/".join(pair))
    # [phenotype, activity score or null, ["A/B", …]]: the table's rows grouped by result
    diplotypes = [[phenotype, score, pairs] for (phenotype, score), pairs in groups.items()]
    return {"version": doc["version"], "functions": functions, "activity": activity, "diplotypes": diplotypes}


def activity_key(value: str) -> str:
    """CPIC lookup keys spell activity scores ``1``/``1.5``; the phenotype tables ``1.0``/``1.5``."""
    try:
        return repr(float(value))  # shortest round-trip form: 1 -> 1.0, 1.25 -> 1.25
    except ValueError:
        return value


class Texts:
    """Interned strings: the TCA, SSRI, PPI, NSAID and statin drugs repeat the same long texts."""

    def __init__(self) -> None:
        self.strings: list[str] = []
        self._index: dict[str, int] = {}

    def __call__(self, text: str | None) -> int | None:
        if text is None or text.strip() in ("", "n/a"):
            return None
        found = self._index.get(text)
        if found is None:
            found = self._index[text] = len(self.strings)
            self.strings.append(text)
        return found


def recommendation_table(drugs: list[dict[str, Any]], activity_genes: set[str], texts: Texts) -> list[dict[str, Any]]:
    """The drugs (and their recommendations) that involve at least one of GENES; texts interned."""
    result = []
    for drug in sorted(drugs, key=lambda d: d["drugname"]):
        if not set(drug["genes"]) & set(GENES):
            continue
        rxnorm = drug["drugid"].removeprefix("RxNorm:") if drug["drugid"].startswith("RxNorm:") else None
        recommendations = []
        for rec in drug.get("recommendations", []):
            lookup = {
                gene: activity_key(key) if gene in activity_genes else key for gene, key in rec["lookupkey"].items()
            }
            recommendations.append(
                {
                    "lookup": lookup,
                    "phenotypes": rec["phenotypes"],
                    "allele_status": rec["allelestatus"],
                    "implications": {gene: texts(text) for gene, text in rec["implications"].items()},
                    "text": texts(rec["drugrecommendation"]),
                    "strength": rec["classification"],
                    "population": (rec.get("population") or "").strip() or None,
                    "comments": texts(rec.get("comments")),
                }
            )
        result.append(
            {
                "drug": drug["drugname"],
                "rxnorm": rxnorm,
                "genes": drug["genes"],
                "guideline": drug["guidelinename"],
                "url": drug["url"],
                "cpic_version": drug.get("cpicVersion"),
                "notes": drug.get("notesonusage"),
                # empty for warfarin: CPIC's warfarin guideline is a dosing algorithm, not a lookup table
                "recommendations": recommendations,
            }
        )
    return result


def write(path: Path, header: dict[str, Any], sections: dict[str, dict[str, Any] | list[Any]]) -> None:
    """``{header…, section: {name: entry} | [entry]}`` with one header field / entry per line."""
    lines = [f"{json.dumps(k)}: {json.dumps(v, ensure_ascii=False)}" for k, v in header.items()]
    for key, section in sections.items():
        if isinstance(section, dict):
            rows = [
                f"{json.dumps(n)}:{json.dumps(v, ensure_ascii=False, separators=(',', ':'))}"
                for n, v in section.items()
            ]
            lines.append(f"{json.dumps(key)}: {{\n" + ",\n".join(rows) + "\n}")
        else:
            rows = [json.dumps(v, ensure_ascii=False, separators=(",", ":")) for v in section]
            lines.append(f"{json.dumps(key)}: [\n" + ",\n".join(rows) + "\n]")
    text = "{\n" + ",\n".join(lines) + "\n}\n"
    json.loads(text)  # the hand-built layout must stay valid JSON
    path.write_text(text, encoding="utf-8")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--source", type=Path, default=DEFAULT_SOURCE, help="the shared pgx data folder")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help="output folder")
    args = parser.parse_args()
    source: Path = args.source
    out: Path = args.out
    out.mkdir(parents=True, exist_ok=True)

    allele_files = {gene: source / "alleles" / f"{gene}_translation.json.gz" for gene in GENES}
    allele_docs = {gene: read_json(path) for gene, path in allele_files.items()}
    versions = sorted({doc["version"] for doc in allele_docs.values()})
    write(
        out / "pgx-alleles.json",
        {
            "description": "Star-allele definitions (GRCh38) of the genes BigMed FHIR calls (gen_pgx_tables.py)",
            "source": "PharmCAT definition/alleles (CPIC/PharmVar allele definition tables), "
            + "source "
            + ", ".join(sorted({doc["source"] for doc in allele_docs.values()})),
            "version": versions[0] if len(versions) == 1 else versions,
            "licence": LICENCE,
            "attribution": ATTRIBUTION,
            "generated_from": {f"alleles/{p.name}": sha256(p) for p in allele_files.values()},
        },
        {"genes": {gene: allele_table(gene, doc) for gene, doc in sorted(allele_docs.items())}},
    )

    phenotype_files = {gene: source / "phenotypes" / f"{gene}.json.gz" for gene in GENES}
    phenotype_docs = {gene: read_json(path) for gene, path in phenotype_files.items()}
    tables = {gene: phenotype_table(gene, doc) for gene, doc in sorted(phenotype_docs.items())}
    versions = sorted({doc["version"] for doc in phenotype_docs.values()})
    write(
        out / "pgx-phenotypes.json",
        {
            "description": "Allele function, activity values and diplotype -> phenotype / activity score",
            "source": "PharmCAT phenotype/ (CPIC allele functionality and diplotype-phenotype tables)",
            "version": versions[0] if len(versions) == 1 else versions,
            "licence": LICENCE,
            "attribution": ATTRIBUTION,
            "generated_from": {f"phenotypes/{p.name}": sha256(p) for p in phenotype_files.values()},
        },
        {"genes": tables},
    )

    rec_file = source / "cpic" / "recommendations-cpic-v1.20.json.gz"
    drugs = read_json(rec_file)
    activity_genes = {gene for gene, table in tables.items() if table["activity"]}
    texts = Texts()
    reduced = recommendation_table(drugs, activity_genes, texts)
    cpic_versions = sorted({d["cpic_version"] for d in reduced if d["cpic_version"]})
    write(
        out / "cpic-recommendations.json",
        {
            "description": "CPIC drug recommendations of the drugs that involve " + ", ".join(sorted(GENES)),
            "source": "CPIC database via PharmCAT reporter/drugs.json (https://cpicpgx.org/guidelines/)",
            "version": cpic_versions[0] if len(cpic_versions) == 1 else cpic_versions,
            "licence": LICENCE,
            "attribution": "CPIC (https://cpicpgx.org), as distributed by PharmCAT",
            "lookup_note": "lookup keys of activity-score genes ("
            + ", ".join(sorted(activity_genes))
            + ") are written x.y like the phenotype table's activity scores",
            "generated_from": {f"cpic/{rec_file.name}": sha256(rec_file)},
            "texts_note": "implications, text and comments are indexes into texts (null: none / n/a)",
        },
        {"drugs": reduced, "texts": texts.strings},
    )
    for name in ("pgx-alleles.json", "pgx-phenotypes.json", "cpic-recommendations.json"):
        print(f"wrote {out / name} ({(out / name).stat().st_size:,} bytes)")


if __name__ == "__main__":
    main()
