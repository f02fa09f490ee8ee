"""Seed the sandbox with synthetic patients: ``python -m server seed`` (run by ``make run``).

Owns the sandbox's data, generated here from nothing but this module and the project's vendored
PGx tables (``server/knowledge/data``) — never from ``../shared``. Five synthetic patients (every
name, date and value is invented), each with labs, conditions and medications, and a small VCF
(GRCh38) written by :func:`write_vcf` and stored through the VCF ingestion
(:mod:`server.fhir.operations.ingest_vcf`, which also calls the pharmacogenes):

===========================  ===============================================================
``sandbox-cyp2c19-pm``       CYP2C19 ``*2/*2`` (poor metabolizer), acute coronary syndrome, clopidogrel
``sandbox-dpyd-2a``          DPYD c.1905+1G>A (``*2A``) carrier, breast cancer, capecitabine
``sandbox-long-qt``          KCNH2 pathogenic missense (long QT syndrome type 2), nadolol
``sandbox-kras-crc``         somatic KRAS c.35G>A p.Gly12Asp, colon cancer, fluorouracil, CEA
``sandbox-newborn``          newborn with seizures (HPO phenotype Observations, one excluded), SCN1A de novo
===========================  ===============================================================

The germline VCFs call every single-nucleotide definition position of CYP2C19 and DPYD from
the vendored PharmVar/CPIC tables (``0/0`` where the diplotype has the reference base), so the
star-allele calls are certain. The CYP2C19, DPYD and KRAS positions are the real GRCh38
ones (the KRAS G12D change is chr12:25245350 C>T); the KCNH2 and SCN1A variants lie inside their
genes but their positions and reference bases are illustrative (the header says so).

**Idempotent.** Every resource has a stable id (``sandbox-…``) and fixed dates; the clinical
resources are one ``transaction`` Bundle loaded by the bulk loader (unchanged resources get no
new version), and the VCFs are byte-identical on every run, so the ingestion finds its resources
in place. Running the seeder again writes nothing.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from server import jsonio
from server.errors import FhirError
from server.fhir.context import FhirContext
from server.fhir.load import LoadReport, load
from server.fhir.operations.ingest_vcf import ingest_vcf
from server.knowledge.pgx import ALLELES_FILE

__all__ = ["PATIENTS", "SandboxPatient", "SeedReport", "Variant", "clinical_bundle", "seed", "write_vcf"]

LOINC = "http://loinc.org"
SNOMED = "http://snomed.info/sct"
RXNORM = "http://www.nlm.nih.gov/research/umls/rxnorm"
HPO = "http://purl.obolibrary.org/obo/hp.owl"
UCUM = "http://unitsofmeasure.org"
SAMPLE = "SAMPLE"
_CONTIGS = {"chr1": 248956422, "chr2": 242193529, "chr7": 159345973, "chr10": 133797422, "chr12": 133275309}
_CSQ = "Allele|Consequence|IMPACT|SYMBOL|Gene|Feature_type|Feature|BIOTYPE|HGVSc|HGVSp|CANONICAL|HGNC_ID"


@dataclass(frozen=True)
class Variant:
    """One non-PGx VCF record of a patient (heterozygous unless ``af`` says otherwise)."""

    chrom: str
    pos: int
    ref: str
    alt: str
    gene: str
    hgnc: str
    consequence: str
    hgvsc: str
    hgvsp: str
    clnsig: str
    af: float = 0.5


@dataclass(frozen=True)
class SandboxPatient:
    id: str
    family: str
    given: str
    gender: str
    birth_date: str
    conditions: tuple[tuple[str, str, str], ...]  # (SNOMED code, display, onset)
    medications: tuple[tuple[str, str, str], ...]  # (RxNorm code, display, authoredOn)
    labs: tuple[tuple[str, str, float, str, str], ...]  # (LOINC code, display, value, unit, date)
    diplotypes: dict[str, tuple[str, str]] = field(default_factory=dict)  # gene -> two named alleles
    variants: tuple[Variant, ...] = ()
    source_class: str = "germline"
    phenotypes: tuple[tuple[str, str, bool], ...] = ()  # (HPO id, label, present)


_NORMAL = {"CYP2C19": ("*1", "*1"), "DPYD": ("Reference", "Reference")}
_CREATININE = ("2160-0", "Creatinine [Mass/volume] in Serum or Plasma")
_POTASSIUM = ("2823-3", "Potassium [Moles/volume] in Serum or Plasma")
_HEMOGLOBIN = ("718-7", "Hemoglobin [Mass/volume] in Blood")
_CEA = ("2039-6", "Carcinoembryonic Ag [Mass/volume] in Serum or Plasma")

PATIENTS: tuple[SandboxPatient, ...] = (
    SandboxPatient(
        "sandbox-cyp2c19-pm",
        "Nordmann",
        "Kari",
        "female",
        "1958-04-12",
        conditions=(("394659003", "Acute coronary syndrome", "2024-03-02"),),
        medications=(("32968", "clopidogrel", "2024-03-03"),),
        labs=(
            (*_CREATININE, 0.9, "mg/dL", "2024-03-02"),
            (*_POTASSIUM, 4.1, "mmol/L", "2024-03-02"),
            (*_HEMOGLOBIN, 13.2, "g/dL", "2024-03-02"),
        ),
        diplotypes={"CYP2C19": ("*2", "*2"), "DPYD": ("Reference", "Reference")},
    ),
    SandboxPatient(
        "sandbox-dpyd-2a",
        "Berg",
        "Ingrid",
        "female",
        "1971-09-30",
        conditions=(("254837009", "Malignant neoplasm of breast", "2023-11-20"),),
        medications=(("194000", "capecitabine", "2024-01-08"),),
        labs=((*_CREATININE, 0.8, "mg/dL", "2024-01-05"), (*_HEMOGLOBIN, 12.1, "g/dL", "2024-01-05")),
        diplotypes={"CYP2C19": ("*1", "*1"), "DPYD": ("Reference", "c.1905+1G>A (*2A)")},
    ),
    SandboxPatient(
        "sandbox-long-qt",
        "Johansen",
        "Lars",
        "male",
        "1990-06-18",
        conditions=(("9651007", "Long QT syndrome", "2022-08-14"),),
        medications=(("7226", "nadolol", "2022-08-20"),),
        labs=((*_POTASSIUM, 3.4, "mmol/L", "2024-05-10"), (*_CREATININE, 1.0, "mg/dL", "2024-05-10")),
        diplotypes=dict(_NORMAL),
        variants=(
            Variant(
                "chr7",
                150951234,
                "G",
                "A",
                "KCNH2",
                "HGNC:6251",
                "missense_variant",
                "NM_000238.4:c.1841C>T",
                "NP_000229.1:p.Ala614Val",
                "Pathogenic",
            ),
        ),
    ),
    SandboxPatient(
        "sandbox-kras-crc",
        "Olsen",
        "Per",
        "male",
        "1962-02-25",
        conditions=(("363406005", "Malignant neoplasm of colon", "2023-06-01"),),
        medications=(("4492", "fluorouracil", "2023-07-03"),),
        labs=(
            (*_CEA, 12.4, "ng/mL", "2023-06-01"),
            (*_CEA, 6.2, "ng/mL", "2023-10-02"),
            (*_HEMOGLOBIN, 11.4, "g/dL", "2023-06-01"),
        ),
        variants=(
            Variant(
                "chr12",
                25245350,
                "C",
                "T",
                "KRAS",
                "HGNC:6407",
                "missense_variant",
                "NM_004985.5:c.35G>A",
                "NP_004976.2:p.Gly12Asp",
                "Pathogenic",
                af=0.31,
            ),
        ),
        source_class="somatic",
    ),
    SandboxPatient(
        "sandbox-newborn",
        "Larsen",
        "Baby",
        "female",
        "2025-01-15",
        conditions=(("91175000", "Seizure", "2025-02-01"),),
        medications=(),
        labs=((*_POTASSIUM, 4.6, "mmol/L", "2025-02-01"),),
        diplotypes=dict(_NORMAL),
        variants=(
            Variant(
                "chr2",
                166036278,
                "C",
                "T",
                "SCN1A",
                "HGNC:10585",
                "missense_variant",
                "NM_001165963.4:c.2836C>T",
                "NP_001159435.1:p.Arg946Cys",
                "Pathogenic",
            ),
        ),
        phenotypes=(
            ("HP:0001250", "Seizure", True),
            ("HP:0001252", "Hypotonia", True),
            ("HP:0011968", "Feeding difficulties", True),
            ("HP:0002133", "Status epilepticus", True),
            ("HP:0000252", "Microcephaly", False),
        ),
    ),
)
HOSPITAL = "sandbox-hospital"
DOCTOR = "sandbox-dr-hansen"


# -- clinical resources ----------------------------------------------------------------------------


def _coding(system: str, code: str, display: str) -> dict[str, Any]:
    return {"coding": [{"system": system, "code": code, "display": display}], "text": display}


def _clinical(p: SandboxPatient) -> Iterator[dict[str, Any]]:
    subject = {"reference": f"Patient/{p.id}"}
    yield {
        "resourceType": "Patient",
        "id": p.id,
        "meta": {"tag": [{"system": "http://bigmed.example/fhir/CodeSystem/tag", "code": "sandbox"}]},
        "identifier": [{"system": "http://bigmed.example/fhir/sandbox-id", "value": p.id}],
        "name": [{"family": p.family, "given": [p.given]}],
        "gender": p.gender,
        "birthDate": p.birth_date,
        "managingOrganization": {"reference": f"Organization/{HOSPITAL}"},
        "generalPractitioner": [{"reference": f"Practitioner/{DOCTOR}"}],
    }
    for n, (code, display, onset) in enumerate(p.conditions, start=1):
        yield {
            "resourceType": "Condition",
            "id": f"{p.id}-condition-{n}",
            "clinicalStatus": _coding("http://terminology.hl7.org/CodeSystem/condition-clinical", "active", "Active"),
            "verificationStatus": _coding(
                "http://terminology.hl7.org/CodeSystem/condition-ver-status", "confirmed", "Confirmed"
            ),
            "code": _coding(SNOMED, code, display),
            "subject": subject,
            "onsetDateTime": onset,
            "recorder": {"reference": f"Practitioner/{DOCTOR}"},
        }
    for n, (code, display, authored) in enumerate(p.medications, start=1):
        yield {
            "resourceType": "Medication",
            "id": f"sandbox-medication-{code}",
            "code": _coding(RXNORM, code, display),
        }
        yield {
            "resourceType": "MedicationRequest",
            "id": f"{p.id}-medreq-{n}",
            "status": "active",
            "intent": "order",
            "medicationReference": {"reference": f"Medication/sandbox-medication-{code}", "display": display},
            "subject": subject,
            "authoredOn": authored,
            "requester": {"reference": f"Practitioner/{DOCTOR}"},
        }
    for n, (code, display, value, unit, date) in enumerate(p.labs, start=1):
        yield {
            "resourceType": "Observation",
            "id": f"{p.id}-lab-{n}",
            "status": "final",
            "category": [
                _coding("http://terminology.hl7.org/CodeSystem/observation-category", "laboratory", "Laboratory")
            ],
            "code": _coding(LOINC, code, display),
            "subject": subject,
            "effectiveDateTime": date,
            "performer": [{"reference": f"Organization/{HOSPITAL}"}],
            "valueQuantity": {"value": value, "unit": unit, "system": UCUM, "code": unit},
        }
    for n, (hpo, label, present) in enumerate(p.phenotypes, start=1):
        yield {
            "resourceType": "Observation",
            "id": f"{p.id}-phenotype-{n}",
            "status": "final",
            "category": [_coding("http://terminology.hl7.org/CodeSystem/observation-category", "exam", "Exam")],
            "code": _coding(HPO, hpo, label),
            "subject": subject,
            "effectiveDateTime": p.conditions[0][2] if p.conditions else p.birth_date,
            "valueCodeableConcept": _coding(LOINC, "LA9633-4", "Present")
            if present
            else _coding(LOINC, "LA9634-2", "Absent"),
        }


def clinical_bundle() -> dict[str, Any]:
    """Every clinical resource of the sandbox as one ``transaction`` Bundle of PUTs (stable ids)."""
    resources: list[dict[str, Any]] = [
        {"resourceType": "Organization", "id": HOSPITAL, "name": "BigMed Sandbox Hospital", "active": True},
        {
            "resourceType": "Practitioner",
            "id": DOCTOR,
            "name": [{"family": "Hansen", "given": ["Eva"], "prefix": ["Dr."]}],
        },
    ]
    seen: set[tuple[str, str]] = set()
    for patient in PATIENTS:
        for res in _clinical(patient):
            key = (res["resourceType"], res["id"])
            if key not in seen:
                seen.add(key)
                resources.append(res)
    return {
        "resourceType": "Bundle",
        "type": "transaction",
        "entry": [
            {"resource": r, "request": {"method": "PUT", "url": f"{r['resourceType']}/{r['id']}"}} for r in resources
        ],
    }


# -- VCFs ------------------------------------------------------------------------------------------


@functools.cache
def _pgx_tables() -> dict[str, Any]:
    genes: dict[str, Any] = jsonio.loads(ALLELES_FILE.read_bytes())["genes"]
    return genes


def _plain(bases: str) -> bool:
    return bool(bases) and all(c in "ACGT" for c in bases)


def _pgx_records(gene: str, diplotype: tuple[str, str]) -> list[tuple[str, int, str, str, str]]:
    """(chrom, pos, ref, alts, GT) at every single-nucleotide definition position of ``gene``."""
    table = _pgx_tables()[gene]
    alleles = {name: bases for name, bases in table["alleles"]}
    missing = [a for a in diplotype if a not in alleles]
    if missing:
        raise ValueError(f"{gene}: no allele named {', '.join(missing)} in the vendored tables")
    reference = alleles[table["reference"]]
    out = []
    for i, (pos, _rsid, ref, alts, _hgvs) in enumerate(table["positions"]):
        if len(ref) != 1 or not _plain(ref) or not all(len(a) == 1 and _plain(a) for a in alts):
            continue
        haplotype = []
        for name in diplotype:
            base = alleles[name][i] or reference[i] or ref
            haplotype.append(base if base in ("A", "C", "G", "T") else ref)  # IUPAC codes: the reference base
        alt_list = list(dict.fromkeys([*(b for b in haplotype if b != ref), *alts]))
        gt = "/".join("0" if b == ref else str(alt_list.index(b) + 1) for b in haplotype)
        out.append((table["chromosome"], int(pos), ref, ",".join(alt_list), gt))
    return out


def write_vcf(folder: Path, patient: SandboxPatient) -> Path:
    """Write ``patient``'s VCF (the same bytes on every run) and return its path."""
    lines = [
        "##fileformat=VCFv4.2",
        "##source=BigMed FHIR sandbox generator (server/sandbox/seed.py): a SYNTHETIC sample; "
        "KCNH2 and SCN1A positions and REF bases are illustrative",
        "##reference=GRCh38",
        *(f"##contig=<ID={c},length={n},assembly=GRCh38>" for c, n in _CONTIGS.items()),
        f'##INFO=<ID=CSQ,Number=.,Type=String,Description="Consequence annotations from Ensembl VEP. Format: {_CSQ}">',
        '##INFO=<ID=CLNSIG,Number=.,Type=String,Description="Clinical significance for this single variant">',
        '##FORMAT=<ID=GT,Number=1,Type=String,Description="Genotype">',
        '##FORMAT=<ID=AD,Number=R,Type=Integer,Description="Allelic depths for the ref and alt alleles">',
        '##FORMAT=<ID=DP,Number=1,Type=Integer,Description="Read depth">',
        "\t".join(["#CHROM", "POS", "ID", "REF", "ALT", "QUAL", "FILTER", "INFO", "FORMAT", SAMPLE]),
    ]
    records: list[tuple[str, int, str]] = []
    for gene, diplotype in sorted(patient.diplotypes.items()):
        for chrom, pos, ref, alts, gt in _pgx_records(gene, diplotype):
            depth = 40
            records.append((chrom, pos, f"{chrom}\t{pos}\t.\t{ref}\t{alts}\t60\tPASS\t.\tGT:DP\t{gt}:{depth}"))
    for v in patient.variants:
        csq = f"{v.alt}|{v.consequence}|MODERATE|{v.gene}||Transcript|{v.hgvsc.split(':')[0]}|protein_coding|"
        csq += f"{v.hgvsc}|{v.hgvsp}|YES|{v.hgnc}"
        alt_reads = round(60 * v.af)
        gt = "0/1" if v.af < 0.9 else "1/1"
        info = f"CSQ={csq};CLNSIG={v.clnsig}"
        row = (
            f"{v.chrom}\t{v.pos}\t.\t{v.ref}\t{v.alt}\t60\tPASS\t{info}\tGT:AD:DP\t{gt}:{60 - alt_reads},{alt_reads}:60"
        )
        records.append((v.chrom, v.pos, row))
    order = list(_CONTIGS)
    records.sort(key=lambda r: (order.index(r[0]), r[1]))
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{patient.id}.vcf"
    text = "\n".join([*lines, *(r[2] for r in records)]) + "\n"
    if not path.exists() or path.read_text() != text:
        path.write_text(text)
    return path


# -- seeding ---------------------------------------------------------------------------------------


@dataclass
class SeedReport:
    """What a seeding run did: resources written (created/updated) and found unchanged."""

    written: int = 0
    unchanged: int = 0
    lines: list[str] = field(default_factory=list)

    def summary(self) -> str:
        head = f"Sandbox: {len(PATIENTS)} patients; {self.written:,} resources written, {self.unchanged:,} unchanged"
        return "\n".join([head, *self.lines])


def seed(ctx: FhirContext, folder: Path, step: Callable[[str], Any] | None = None) -> SeedReport:
    """Write the sandbox's files under ``folder`` and store them (idempotent); FhirError when something fails."""
    report = SeedReport()
    folder.mkdir(parents=True, exist_ok=True)
    bundle_path = folder / "clinical.json"
    text = jsonio.dumps(clinical_bundle(), pretty=True)
    if not bundle_path.exists() or bundle_path.read_bytes() != text:
        bundle_path.write_bytes(text)
    loaded: LoadReport = load(ctx, [bundle_path], progress=False, workers=0)
    if loaded.failures:
        first = loaded.failures[0]
        raise FhirError(f"sandbox clinical data failed to load: {first.where}: {first.reason}")
    report.written += loaded.written
    report.unchanged += loaded.unchanged
    report.lines.append(f"  clinical: {loaded.created} created, {loaded.updated} updated, {loaded.unchanged} unchanged")
    if step is not None:
        step("clinical")
    for patient in PATIENTS:
        path = write_vcf(folder / "vcf", patient)
        result = ingest_vcf(
            ctx, path, patient.id, sample=SAMPLE, build="GRCh38", source_class=patient.source_class, workers=0
        )
        report.written += result.created + result.updated + result.deleted
        report.unchanged += result.unchanged
        report.lines.append(
            f"  {patient.id}: {path.name}: {result.created} created, {result.updated} updated, "
            f"{result.unchanged} unchanged"
        )
        if step is not None:
            step(patient.id)
    return report


def steps() -> Sequence[str]:
    """The names of the seeding steps (for a progress bar)."""
    return ["clinical", *(p.id for p in PATIENTS)]
