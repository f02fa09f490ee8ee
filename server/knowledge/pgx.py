"""Loader of the vendored pharmacogenomic knowledge tables (CPIC/PharmVar via PharmCAT, CC0-1.0).

Owns reading ``server/knowledge/data/`` (written by ``scripts/gen_pgx_tables.py``; each file names
its source, version and licence in its header) into the dataclasses ``mappers.pgx`` takes:

- ``pgx-alleles.json`` + ``pgx-phenotypes.json`` -> :class:`mappers.pgx.PgxTables`
  (:func:`load_tables`): star-allele definitions on GRCh38 (https://www.pharmvar.org,
  https://cpicpgx.org/alleles/) and the CPIC allele function / diplotype -> phenotype tables;
- ``cpic-recommendations.json`` -> :class:`CpicDrug` / :class:`Recommendation`
  (:func:`load_recommendations`, :func:`recommendations_for`): the CPIC guideline
  recommendations (https://cpicpgx.org/guidelines/) of the drugs of these genes, for the CDS
  Hooks service to come.

Loaded once per process (``functools.cache``); the results are read-only. No Flask, no database.
"""

from __future__ import annotations

import functools
import json
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from mappers.pgx import DefinitionPosition, GeneDefinition, NamedAllele, PgxTables, PhenotypeTable

DATA = Path(__file__).resolve().parent / "data"
ALLELES_FILE = DATA / "pgx-alleles.json"
PHENOTYPES_FILE = DATA / "pgx-phenotypes.json"
RECOMMENDATIONS_FILE = DATA / "cpic-recommendations.json"


def _read(path: Path) -> dict[str, Any]:
    with path.open(encoding="utf-8") as fh:
        data: dict[str, Any] = json.load(fh)
    return data


def gene_definition(gene: str, entry: Mapping[str, Any]) -> GeneDefinition:
    """One gene of ``pgx-alleles.json`` as a :class:`GeneDefinition`."""
    positions = tuple(
        DefinitionPosition(position=pos, ref=ref, alts=tuple(alts), rsid=rsid, hgvs=hgvs)
        for pos, rsid, ref, alts, hgvs in entry["positions"]
    )
    alleles = tuple(NamedAllele(name, tuple(values)) for name, values in entry["alleles"])
    return GeneDefinition(
        gene=gene,
        chromosome=entry["chromosome"],
        positions=positions,
        alleles=alleles,
        mode=entry["mode"],
        default=entry["default"],
        pharmvar=entry["pharmvar"],
        refseq=entry["refseq"],
        version=entry["version"],
        suballeles=dict(entry["suballeles"]),
    )


def phenotype_table(gene: str, entry: Mapping[str, Any]) -> PhenotypeTable:
    """One gene of ``pgx-phenotypes.json`` as a :class:`PhenotypeTable`."""
    diplotypes: dict[tuple[str, str], tuple[str, str | None]] = {}
    for phenotype, score, pairs in entry["diplotypes"]:
        for pair in pairs:
            first, second = pair.split("/")
            key = (first, second) if first <= second else (second, first)
            diplotypes[key] = (phenotype, score)
    return PhenotypeTable(
        gene=gene,
        diplotypes=diplotypes,
        functions=dict(entry["functions"]),
        activity=dict(entry["activity"]),
        version=entry["version"],
    )


@functools.cache
def load_tables() -> PgxTables:
    """The star-allele definitions and phenotype tables of every vendored gene."""
    alleles = _read(ALLELES_FILE)
    phenotypes = _read(PHENOTYPES_FILE)
    return PgxTables(
        definitions={gene: gene_definition(gene, entry) for gene, entry in alleles["genes"].items()},
        phenotypes={gene: phenotype_table(gene, entry) for gene, entry in phenotypes["genes"].items()},
        source=f"{alleles['source']}, version {alleles['version']} ({alleles['licence']})",
    )


@dataclass(frozen=True)
class Recommendation:
    """One CPIC recommendation: applies when every gene's lookup key matches the patient's."""

    lookup: Mapping[str, str]  # gene -> phenotype, or activity score ("1.5") for CYP2C9 / DPYD
    phenotypes: Mapping[str, str]
    allele_status: Mapping[str, str]
    implications: Mapping[str, str]
    text: str | None
    strength: str
    population: str | None
    comments: str | None


@dataclass(frozen=True)
class CpicDrug:
    """A drug with CPIC recommendations that involve at least one vendored gene."""

    drug: str
    rxnorm: str | None
    genes: tuple[str, ...]
    guideline: str
    url: str
    cpic_version: str | None
    notes: str | None
    recommendations: tuple[Recommendation, ...]


@dataclass(frozen=True)
class CpicRecommendations:
    source: str
    version: str
    licence: str
    drugs: tuple[CpicDrug, ...]

    def drug(self, name_or_rxnorm: str) -> CpicDrug | None:
        wanted = name_or_rxnorm.strip().lower()
        return next((d for d in self.drugs if wanted in (d.drug.lower(), d.rxnorm)), None)


@functools.cache
def load_recommendations() -> CpicRecommendations:
    """The vendored CPIC recommendations (texts resolved)."""
    data = _read(RECOMMENDATIONS_FILE)
    texts: list[str] = data["texts"]

    def text(index: int | None) -> str | None:
        return None if index is None else texts[index]

    drugs = tuple(
        CpicDrug(
            drug=d["drug"],
            rxnorm=d["rxnorm"],
            genes=tuple(d["genes"]),
            guideline=d["guideline"],
            url=d["url"],
            cpic_version=d["cpic_version"],
            notes=d["notes"],
            recommendations=tuple(
                Recommendation(
                    lookup=r["lookup"],
                    phenotypes=r["phenotypes"],
                    allele_status=r["allele_status"],
                    implications={g: t for g, i in r["implications"].items() if (t := text(i)) is not None},
                    text=text(r["text"]),
                    strength=r["strength"],
                    population=r["population"],
                    comments=text(r["comments"]),
                )
                for r in d["recommendations"]
            ),
        )
        for d in data["drugs"]
    )
    return CpicRecommendations(data["source"], data["version"], data["licence"], drugs)


def lookup_key(value: str) -> str:
    """Normalise a lookup key: activity scores as the phenotype tables write them (``1`` -> ``1.0``,
    ``1.25`` stays), phenotypes unchanged."""
    try:
        return repr(float(value))
    except ValueError:
        return value


def recommendations_for(drug: str, keys: Mapping[str, str]) -> list[Recommendation]:
    """The recommendations of ``drug`` (name or RxNorm code) whose genes all have a matching key.

    ``keys``: gene -> phenotype (e.g. ``{"CYP2C19": "Poor Metabolizer"}``) or activity score
    (``{"DPYD": "1.5"}``). Drugs with several genes (e.g. CYP2C19 + CYP2D6) match only when every
    gene of the recommendation is given.
    """
    found = load_recommendations().drug(drug)
    if found is None:
        return []
    wanted = {gene: lookup_key(key) for gene, key in keys.items()}
    return [
        r for r in found.recommendations if all(wanted.get(gene) == lookup_key(key) for gene, key in r.lookup.items())
    ]
