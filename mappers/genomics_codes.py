"""Codes, code systems and vendored tables of the HL7 Genomics Reporting mapping.

Owns the facts the genomic mappers write into FHIR: the LOINC codes and answer codes of the
Genomics Reporting IG (STU3, http://hl7.org/fhir/uv/genomics-reporting/) variant, implication and
phase profiles, the code-system URIs, and three vendored tables under ``mappers/data/`` (each file
names its source and licence in its header):

- ``refseq_chromosomes.tsv``: GRCh37/GRCh38 chromosome -> RefSeq ``NC_`` accession and length,
- ``hgnc_genes.tsv``: gene symbol -> HGNC ID,
- ``sequence_ontology.tsv``: Sequence Ontology variant classes and consequence terms, with the
  SnpEff "classic" effect names.

It also normalises what VCF headers say about the reference build (``GRCh37``, ``hg19``,
``b37``, ``human_g1k_v37`` …) and chromosome names (``chr1``/``1``, ``chrM``/``MT``,
``NC_000001.10``). CodeableConcepts built here are shared, read-only objects (see
:mod:`mappers.vcf`). Imports nothing from ``server``.
"""

from __future__ import annotations

import csv
import functools
import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

DATA = Path(__file__).resolve().parent / "data"

# -- code systems -------------------------------------------------------------------------------
LOINC = "http://loinc.org"
SO = "http://www.sequenceontology.org"
HGNC = "http://www.genenames.org/geneId"
REFSEQ = "http://www.ncbi.nlm.nih.gov/refseq"
NUCCORE = "http://www.ncbi.nlm.nih.gov/nuccore"
ENSEMBL = "http://www.ensembl.org"
LRG = "http://www.lrg-sequence.org"
HGVS = "http://varnomen.hgvs.org"
DBSNP = "http://www.ncbi.nlm.nih.gov/snp"
CLINVAR = "http://www.ncbi.nlm.nih.gov/clinvar"
UCUM = "http://unitsofmeasure.org"
OBSERVATION_CATEGORY = "http://terminology.hl7.org/CodeSystem/observation-category"
V2_0074 = "http://terminology.hl7.org/CodeSystem/v2-0074"
TBD_CODES = "http://hl7.org/fhir/uv/genomics-reporting/CodeSystem/tbd-codes-cs"
PHASE_RELATIONSHIP = "http://terminology.hl7.org/CodeSystem/sequence-phase-relationship-cs"
CHROMOSOME_HUMAN = "http://terminology.hl7.org/CodeSystem/chromosome-human"

PROFILE_BASE = "http://hl7.org/fhir/uv/genomics-reporting/StructureDefinition/"
VARIANT_PROFILE = PROFILE_BASE + "variant"
MOLECULAR_CONSEQUENCE_PROFILE = PROFILE_BASE + "molecular-consequence"
DIAGNOSTIC_IMPLICATION_PROFILE = PROFILE_BASE + "diagnostic-implication"
PHASE_RELATIONSHIP_PROFILE = PROFILE_BASE + "sequence-phase-relationship"

# -- LOINC codes of the Genomics Reporting profiles (facts of the standard, see DESIGN.md) --------
VARIANT_ASSESSMENT = "69548-6"
PRESENT = "LA9633-4"
GENE_STUDIED = "48018-6"
GENOMIC_REF_SEQ = "48013-7"
REFERENCE_ASSEMBLY = "62374-4"
COORDINATE_SYSTEM = "92822-6"
ZERO_BASED_INTERVAL = "LA30100-4"
EXACT_START_END = "81254-5"
OUTER_START_END = "81301-4"
INNER_START_END = "81302-2"
REF_ALLELE = "69547-8"
ALT_ALLELE = "69551-0"
ALLELIC_STATE = "53034-5"
SAMPLE_ALLELIC_FREQUENCY = "81258-6"
ALLELIC_READ_DEPTH = "82121-5"
POPULATION_ALLELE_FREQUENCY = "92821-8"
GENOMIC_SOURCE_CLASS = "48002-0"
CODING_HGVS = "48004-6"
PROTEIN_HGVS = "48005-3"
TRANSCRIPT_REF_SEQ = "51958-7"
VARIATION_CODE = "81252-9"
DNA_CHANGE_TYPE = "48019-4"
COPY_NUMBER = "82155-3"
CLINICAL_SIGNIFICANCE = "53037-8"
ALLELIC_PHASE = "82120-7"
GENETIC_ANALYSIS_REPORT = "51969-4"

ASSEMBLY_ANSWERS = {"GRCh37": "LA14029-5", "GRCh38": "LA26806-2"}
ALLELIC_STATES = {
    "heterozygous": ("LA6706-1", "Heterozygous"),
    "homozygous": ("LA6705-3", "Homozygous"),
    "hemizygous": ("LA6707-9", "Hemizygous"),
    "heteroplasmic": ("LA6703-8", "Heteroplasmic"),
    "homoplasmic": ("LA6704-6", "Homoplasmic"),
}
SOURCE_CLASSES = {"germline": ("LA6683-2", "Germline"), "somatic": ("LA6684-0", "Somatic")}
#: ClinVar CLNSIG value (lower case, ``_`` as space) -> LOINC answer of 53037-8 (answer list LL4034-6)
CLINICAL_SIGNIFICANCES = {
    "pathogenic": ("LA6668-3", "Pathogenic"),
    "likely pathogenic": ("LA26332-9", "Likely pathogenic"),
    "uncertain significance": ("LA26333-7", "Uncertain significance"),
    "likely benign": ("LA26334-5", "Likely benign"),
    "benign": ("LA6675-8", "Benign"),
}


def concept(system: str, code: str, display: str | None = None, text: str | None = None) -> dict[str, Any]:
    """A CodeableConcept with one coding."""
    coding: dict[str, Any] = {"system": system, "code": code}
    if display:
        coding["display"] = display
    result: dict[str, Any] = {"coding": [coding]}
    if text:
        result["text"] = text
    return result


def loinc(code: str, display: str | None = None) -> dict[str, Any]:
    return concept(LOINC, code, display)


def component(code: str, value_key: str, value: Any) -> dict[str, Any]:
    """An Observation.component with a LOINC code: ``{"code": …, value_key: value}``."""
    return {"code": loinc(code), value_key: value}


# -- gene symbols -> HGNC ------------------------------------------------------------------------
def _rows(name: str) -> Iterator[dict[str, str]]:
    with (DATA / name).open(encoding="utf-8", newline="") as fh:
        lines = (line for line in fh if line.strip() and not line.startswith("#"))
        yield from csv.DictReader(lines, delimiter="\t")


@functools.cache
def hgnc_ids() -> dict[str, str]:
    """Approved gene symbol -> ``HGNC:n`` (vendored subset, see ``data/hgnc_genes.tsv``)."""
    return {row["symbol"]: row["hgnc_id"] for row in _rows("hgnc_genes.tsv")}


@functools.cache
def gene_concept(symbol: str) -> dict[str, Any]:
    """Gene studied value: HGNC ID as code with the symbol as display, else the symbol as text."""
    hgnc_id = hgnc_ids().get(symbol)
    if hgnc_id is None:
        return {"text": symbol}
    return concept(HGNC, hgnc_id, symbol)


# -- Sequence Ontology ---------------------------------------------------------------------------
@dataclass(frozen=True)
class SoTerm:
    id: str
    term: str
    kind: str


@functools.cache
def _so_tables() -> tuple[dict[str, SoTerm], dict[str, SoTerm]]:
    by_term: dict[str, SoTerm] = {}
    by_classic: dict[str, SoTerm] = {}
    for row in _rows("sequence_ontology.tsv"):
        term = SoTerm(row["so_id"], row["term"], row["kind"])
        by_term[term.term] = term
        for name in filter(None, (row.get("snpeff_classic") or "").split(",")):
            by_classic[name] = term
    return by_term, by_classic


def so_term(name: str) -> SoTerm | None:
    """The SO term named ``name`` (``missense_variant``), or None when it is not vendored."""
    return _so_tables()[0].get(name)


def so_from_snpeff_classic(name: str) -> SoTerm | None:
    """SO term for a SnpEff classic EFF effect name (``NON_SYNONYMOUS_CODING`` -> missense_variant)."""
    return _so_tables()[1].get(name.replace(" ", "_").upper())


@functools.cache
def so_concept(name: str) -> dict[str, Any]:
    """CodeableConcept for an SO term name; text only when the term is not in the vendored table."""
    term = so_term(name)
    if term is None:
        return {"text": name}
    return concept(SO, term.id, term.term)


# -- reference builds and chromosomes ------------------------------------------------------------
BUILDS = ("GRCh37", "GRCh38")
_BUILD_TOKEN = re.compile(
    r"(?<![a-z0-9])(?:(grch|hg|b|build|ncbi|hs|g1k_v|assembly)[ _]?(37|38|19)(?:d5|dh)?"
    r"|(gc[af]_000001405)\.(\d+))(?![0-9])"
)
_OTHER_BUILD = re.compile(r"(?<![a-z0-9])(?:grch|hg|b|build|ncbi)[ _]?(36|18|17)(?![0-9])")


def build_from_text(text: str) -> str | None:
    """The build a free-text header value names (``hg19``, ``b37``, ``GRCh38``, ``GCF_000001405.26``).

    Returns ``GRCh37``, ``GRCh38``, ``other:<token>`` for a recognised older build (NCBI36/hg18),
    or None when the text names no build.
    """
    lowered = text.lower()
    found: set[str] = set()
    for match in _BUILD_TOKEN.finditer(lowered):
        prefix, number, accession, version = match.groups()
        if accession:
            v = int(version)
            # GenBank GCA_000001405.1-.14 / RefSeq GCF_000001405.13-.25 are GRCh37 (and patches),
            # GCA .15-.29 / GCF .26-.40 are GRCh38 (and patches)
            if accession.startswith("gca"):
                found.add("GRCh37" if v <= 14 else "GRCh38")
            elif 13 <= v <= 25:
                found.add("GRCh37")
            elif v >= 26:
                found.add("GRCh38")
            continue
        if number == "19":
            if prefix in ("hg", "assembly"):  # UCSC hg19; GATK's Homo_sapiens_assembly19 is b37
                found.add("GRCh37")
        else:
            found.add("GRCh37" if number == "37" else "GRCh38")
    if len(found) == 1:
        return found.pop()
    if len(found) > 1:
        return "conflict:" + "/".join(sorted(found))
    other = _OTHER_BUILD.search(lowered)
    if other:
        return "other:" + other.group(0)
    return None


def normalise_build(value: str) -> str | None:
    """``build=`` parameter value -> ``GRCh37``/``GRCh38`` (accepts hg19, b37, hg38 …), else None."""
    stripped = value.strip()
    for build in BUILDS:
        if stripped.lower() == build.lower():
            return build
    found = build_from_text(stripped)
    return found if found in BUILDS else None


@dataclass(frozen=True)
class RefSeqChromosome:
    build: str
    chromosome: str
    accession: str
    length: int


@functools.cache
def refseq_chromosomes() -> dict[str, dict[str, RefSeqChromosome]]:
    """build (``GRCh37``, ``GRCh38``, ``hg19-chrM``) -> chromosome (``1``…``22``, ``X``, ``Y``, ``MT``) -> row."""
    table: dict[str, dict[str, RefSeqChromosome]] = {}
    for row in _rows("refseq_chromosomes.tsv"):
        entry = RefSeqChromosome(row["build"], row["chromosome"], row["accession"], int(row["length"]))
        table.setdefault(entry.build, {})[entry.chromosome] = entry
    return table


@functools.cache
def _accession_index() -> dict[str, RefSeqChromosome]:
    return {row.accession: row for rows in refseq_chromosomes().values() for row in rows.values()}


_CHROMOSOMES = frozenset([str(n) for n in range(1, 23)] + ["X", "Y", "MT"])


@functools.cache
def chromosome_name(contig: str) -> str | None:
    """Canonical chromosome (``1``…``22``, ``X``, ``Y``, ``MT``) of a VCF contig name, else None.

    Accepts ``chr1``/``1``/``CHR1``, ``chrM``/``M``/``MT``/``chrMT`` and RefSeq accessions
    (``NC_000001.10``). Unplaced/alt/decoy contigs (``chr1_KI270706v1_random``, ``GL000192.1``,
    ``hs37d5``) return None.
    """
    name = contig.strip()
    row = _accession_index().get(name)
    if row is not None:
        return row.chromosome
    upper = name.upper()
    if upper.startswith("CHR"):
        upper = upper[3:]
    if upper == "M":
        upper = "MT"
    return upper if upper in _CHROMOSOMES else None


def accession_build(contig: str) -> str | None:
    """The build a RefSeq-accession contig name belongs to (``NC_000001.10`` -> GRCh37)."""
    row = _accession_index().get(contig.strip())
    if row is None or row.chromosome == "MT":  # NC_012920.1 is shared by both builds
        return None
    return row.build if row.build in BUILDS else None


def build_from_length(chromosome: str, length: int) -> str | None:
    """The build whose ``chromosome`` has ``length`` bases (MT is identical in both and says nothing).

    Returns ``GRCh37``/``GRCh38``, ``other`` when the length matches neither, None for MT/unknown.
    """
    if chromosome == "MT" or chromosome not in _CHROMOSOMES:
        return None
    for build in BUILDS:
        if refseq_chromosomes()[build][chromosome].length == length:
            return build
    return "other"


def chromosome_concept(chromosome: str) -> dict[str, Any]:
    """MolecularSequence.referenceSeq.chromosome value (chromosome-human has no code for MT)."""
    if chromosome == "MT":
        return {"text": "MT"}
    return concept(CHROMOSOME_HUMAN, chromosome)
