"""Tests of ``mappers.vcf``: VCF -> Genomics Reporting resources, skips, errors, ids.

Uses the shared test VCFs (../shared/data/vcf: vcf2fhir and cyvcf2 test files) and the hand-made
files in tests/data/vcf. Every produced resource is checked against the R4 StructureDefinitions
(``profiles.validate``) and the fhir.resources R4B models; hand-checked records assert component
codes and values.
"""

from __future__ import annotations

import gzip
import hashlib
import json
import re
import struct
import uuid
from collections import Counter
from pathlib import Path
from typing import Any

import pytest

from mappers import genomics_codes as gc
from mappers.vcf import EXT_INGESTION, NAMESPACE, VcfError, map_vcf, read_bed

HERE = Path(__file__).resolve().parent
DATA = HERE.parent / "data" / "vcf"
SHARED = HERE.parents[2] / "shared" / "data"
VCF2FHIR = SHARED / "vcf" / "vcf2fhir"
CYVCF2 = SHARED / "vcf" / "cyvcf2"

LOINC = "http://loinc.org"


def shared(path: Path) -> Path:
    if not path.exists():
        pytest.skip(f"shared test data not found: {path}")
    return path


def run(path: Path, patient: str = "pat-1", **kwargs: Any) -> tuple[Any, list[dict[str, Any]]]:
    mapping = map_vcf(path, patient, **kwargs)
    return mapping, list(mapping.resources())


def code_of(concept: dict[str, Any]) -> str | None:
    codings = concept.get("coding") or [{}]
    return codings[0].get("code")


def components(observation: dict[str, Any], code: str) -> list[dict[str, Any]]:
    return [c for c in observation.get("component", []) if code_of(c["code"]) == code]


def one(observation: dict[str, Any], code: str) -> Any:
    """The value of the single component with ``code`` (code of a CodeableConcept, else the raw value)."""
    found = components(observation, code)
    assert len(found) == 1, f"{code}: {found}"
    comp = found[0]
    if "valueCodeableConcept" in comp:
        value = comp["valueCodeableConcept"]
        return code_of(value) if "coding" in value else value["text"]
    if "valueRange" in comp:
        return (comp["valueRange"]["low"]["value"], comp["valueRange"]["high"]["value"])
    if "valueQuantity" in comp:
        return comp["valueQuantity"]["value"]
    return comp["valueString"]


def variants(resources: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [r for r in resources if r["resourceType"] == "Observation" and code_of(r["code"]) == gc.VARIANT_ASSESSMENT]


def by_code(resources: list[dict[str, Any]], code: str) -> list[dict[str, Any]]:
    return [r for r in resources if r["resourceType"] == "Observation" and code_of(r["code"]) == code]


def variant_at(resources: list[dict[str, Any]], start: int, alt: str | None = None) -> dict[str, Any]:
    """The variant Observation whose MolecularSequence starts at ``start`` (0-based), optionally with ALT."""
    sequences = {r["id"]: r for r in resources if r["resourceType"] == "MolecularSequence"}
    found = []
    for observation in variants(resources):
        sequence = sequences[observation["derivedFrom"][0]["reference"].split("/")[1]]
        if sequence["variant"][0]["start"] == start and (alt is None or one(observation, gc.ALT_ALLELE) == alt):
            found.append(observation)
    assert len(found) == 1, f"{len(found)} variants at {start} {alt}"
    return found[0]


def sequence_of(resources: list[dict[str, Any]], observation: dict[str, Any]) -> dict[str, Any]:
    ref = observation["derivedFrom"][0]["reference"]
    return next(r for r in resources if f"{r['resourceType']}/{r['id']}" == ref)


def derived_from(resources: list[dict[str, Any]], observation: dict[str, Any], code: str) -> list[dict[str, Any]]:
    ref = f"Observation/{observation['id']}"
    return [r for r in by_code(resources, code) if ref in [d["reference"] for d in r.get("derivedFrom", [])]]


TBD = "http://hl7.org/fhir/uv/genomics-reporting/CodeSystem/tbd-codes-cs"


def consequences_of(resources: list[dict[str, Any]], observation: dict[str, Any]) -> list[dict[str, Any]]:
    ref = f"Observation/{observation['id']}"
    return [
        r
        for r in resources
        if r["resourceType"] == "Observation"
        and code_of(r["code"]) == "molecular-consequence"
        and r["focus"] == [{"reference": ref}]
    ]


# -- the shared files are there ------------------------------------------------------------------
def test_shared_vcf_files_are_listed() -> None:
    names = {p.name for p in shared(VCF2FHIR).iterdir()} | {p.name for p in shared(CYVCF2).iterdir()}
    for expected in (
        "HG00403A.vcf.gz",
        "vcf_example1.vcf",
        "vcf_structural_variants.vcf",
        "NB6TK328_filtered.vcf",
        "vcftests.vcf",
        "test.snpeff.vcf",
        "test-haploidX.vcf",
        "test-invalid-header.vcf",
        "empty.vcf",
        "test.vcf.gz",
    ):
        assert expected in names


# -- structure: every resource validates ----------------------------------------------------------
VALIDATION_CASES = [
    (VCF2FHIR / "HG00403A.vcf.gz", {"skip_filtered": False}),
    (VCF2FHIR / "HG00404_b37.vcf", {}),
    (VCF2FHIR / "NB6TK328_filtered.vcf", {}),
    (VCF2FHIR / "vcf_structural_variants.vcf", {}),
    (VCF2FHIR / "vcftests.vcf", {"build": "GRCh37"}),
    (VCF2FHIR / "vcf_example3.vcf", {}),
    (CYVCF2 / "test.snpeff.vcf", {"sample": "1094PC0012"}),
    (CYVCF2 / "test-haploidX.vcf", {"sample": "37150"}),
    (CYVCF2 / "test-hemi.vcf", {"sample": "15G17765", "build": "GRCh37", "skip_filtered": False}),
    (CYVCF2 / "test.vcf.gz", {"sample": "101976-101976"}),
    (CYVCF2 / "o.vcf.gz", {"sample": "JH-027F"}),
    (DATA / "cases_grch38.vcf", {"sample": "NA00001", "skip_filtered": False}),
    (DATA / "phased_grch38.vcf", {}),
    (DATA / "vep_clinvar_grch37.vcf", {}),
]


@pytest.mark.parametrize(("path", "kwargs"), VALIDATION_CASES, ids=[p.name for p, _ in VALIDATION_CASES])
def test_every_resource_validates_against_r4(path: Path, kwargs: dict[str, Any]) -> None:
    from fhir.resources.R4B import get_fhir_model_class

    from profiles.validate import validate_structure

    mapping, resources = run(shared(path) if SHARED in path.parents else path, **kwargs)
    assert resources, "nothing produced"
    # large files: every kind of resource is repeated thousands of times; check a stride of them
    checked = resources if len(resources) < 3000 else [*resources[::13], resources[-1]]
    assert {r["resourceType"] for r in checked} == {r["resourceType"] for r in resources}
    for resource in checked:
        issues = validate_structure(resource)
        assert not issues, (resource["resourceType"], resource["id"], issues[:3])
        get_fhir_model_class(resource["resourceType"]).model_validate(resource)
        json.dumps(resource)  # plain JSON types only
    assert mapping.report.complete


def test_write_order_references_resolve_backwards() -> None:
    _, resources = run(shared(VCF2FHIR / "vcftests.vcf"), build="GRCh37")
    seen: set[str] = set()
    for resource in resources:
        for ref in resource.get("derivedFrom", []) + resource.get("focus", []) + resource.get("result", []):
            assert ref["reference"] in seen, f"{resource['resourceType']} refers forward to {ref['reference']}"
        seen.add(f"{resource['resourceType']}/{resource['id']}")
        if resource["resourceType"] in ("Observation", "DiagnosticReport"):
            assert resource["subject"] == {"reference": "Patient/pat-1"}
        else:
            assert resource["patient"] == {"reference": "Patient/pat-1"}
    assert resources[-1]["resourceType"] == "DiagnosticReport"
    assert [r["resourceType"] for r in resources].count("DiagnosticReport") == 1


# -- hand-checked records --------------------------------------------------------------------------
def test_het_snv_grch37_with_read_depths() -> None:
    # HG00403A line: 1 17345877 A G ... GT:PS:FT:...:DP:AD  1|0:17345877:PASS:...:31:15,16
    _, resources = run(shared(VCF2FHIR / "HG00403A.vcf.gz"))
    observation = variant_at(resources, 17345876)
    assert observation["meta"]["profile"] == ["http://hl7.org/fhir/uv/genomics-reporting/StructureDefinition/variant"]
    assert code_of(observation["code"]) == "69548-6"
    assert code_of(observation["valueCodeableConcept"]) == "LA9633-4"
    assert [code_of(c) for c in observation["category"]] == ["laboratory", "GE"]
    assert observation["category"][1]["coding"][0]["system"] == "http://terminology.hl7.org/CodeSystem/v2-0074"
    assert one(observation, "48013-7") == "NC_000001.10"
    assert one(observation, "62374-4") == "LA14029-5"
    assert one(observation, "92822-6") == "LA30100-4"
    assert one(observation, "81254-5") == (17345876, 17345877)
    assert one(observation, "69547-8") == "A"
    assert one(observation, "69551-0") == "G"
    assert one(observation, "48019-4") == "SO:0001483"
    assert one(observation, "53034-5") == "LA6706-1"
    assert one(observation, "81258-6") == round(16 / 31, 4)
    assert one(observation, "82121-5") == 16
    assert one(observation, "48002-0") == "LA6683-2"
    assert components(observation, "81258-6")[0]["valueQuantity"]["system"] == "http://unitsofmeasure.org"
    sequence = sequence_of(resources, observation)
    assert sequence["type"] == "dna"
    assert sequence["coordinateSystem"] == 0
    assert sequence["referenceSeq"] == {
        "referenceSeqId": {"coding": [{"system": "http://www.ncbi.nlm.nih.gov/nuccore", "code": "NC_000001.10"}]},
        "strand": "watson",
        "windowStart": 17345876,
        "windowEnd": 17345877,
    }
    assert sequence["variant"] == [{"start": 17345876, "end": 17345877, "observedAllele": "G", "referenceAllele": "A"}]
    assert sequence["readCoverage"] == 31
    assert sequence["id"] == observation["id"]  # one id, two resource types


def test_hom_deletion_uses_format_af_not_info_af() -> None:
    _, resources = run(DATA / "cases_grch38.vcf", sample="NA00001")
    deletion = variant_at(resources, 2999)  # chr1 3000 ACGT A  1/1:0,30:30:0.97
    assert one(deletion, "81254-5") == (2999, 3003)
    assert one(deletion, "69547-8") == "ACGT"
    assert one(deletion, "69551-0") == "A"
    assert one(deletion, "48019-4") == "SO:0000159"
    assert one(deletion, "53034-5") == "LA6705-3"
    assert one(deletion, "81258-6") == 0.97  # FORMAT/AF wins over AD (30/30)
    assert one(deletion, "82121-5") == 30
    assert one(deletion, "48013-7") == "NC_000001.11"
    assert one(deletion, "62374-4") == "LA26806-2"
    assert sequence_of(resources, deletion)["readCoverage"] == 30


def test_hom_indel_from_structural_variant_file() -> None:
    _, resources = run(shared(VCF2FHIR / "vcf_structural_variants.vcf"))
    deletion = variant_at(resources, 2827693)  # 1 2827694 CGTGGATGCGGGGAC C ... 1/1
    assert one(deletion, "48019-4") == "SO:0000159"
    assert one(deletion, "53034-5") == "LA6705-3"
    assert one(deletion, "81254-5") == (2827693, 2827708)
    insertion = variant_at(resources, 957966)  # T -> TTGTAGTCTGACCTGTGGTCTGAC 1/1
    assert one(insertion, "48019-4") == "SO:0000667"
    assert one(insertion, "53034-5") == "LA6705-3"


@pytest.mark.parametrize(
    ("start", "ref", "alt", "so"),
    [(3999, "G", "GTTA", "SO:0000667"), (4999, "CT", "GA", "SO:0002007"), (5999, "CTG", "CA", "SO:1000032")],
)
def test_dna_change_types(start: int, ref: str, alt: str, so: str) -> None:
    _, resources = run(DATA / "cases_grch38.vcf", sample="NA00001")
    observation = variant_at(resources, start)
    assert (one(observation, "69547-8"), one(observation, "69551-0")) == (ref, alt)
    assert one(observation, "48019-4") == so


def test_multiallelic_0_2_reports_only_the_called_allele() -> None:
    # chr1 1000 rs1001 A G,T  INFO AF=0.9,0.9  GT:AD:DP 0/2:10,0,7:17
    _, resources = run(DATA / "cases_grch38.vcf", sample="NA00001")
    at_site = [o for o in variants(resources) if one(o, "81254-5") == (999, 1000)]
    assert len(at_site) == 1
    observation = at_site[0]
    assert one(observation, "69551-0") == "T"
    assert one(observation, "53034-5") == "LA6706-1"
    assert one(observation, "81258-6") == round(7 / 17, 4)  # AD[2]/sum(AD), never INFO/AF
    assert one(observation, "82121-5") == 7
    variation = components(observation, "81252-9")
    assert [c["valueCodeableConcept"]["coding"][0] for c in variation] == [
        {"system": "http://www.ncbi.nlm.nih.gov/snp", "code": "rs1001"}
    ]
    # 1/2: both alleles, each heterozygous
    pair = [o for o in variants(resources) if one(o, "81254-5") == (1999, 2000)]
    assert sorted(one(o, "69551-0") for o in pair) == ["A", "G"]
    assert {one(o, "53034-5") for o in pair} == {"LA6706-1"}
    assert {one(o, "82121-5") for o in pair} == {9, 11}


def test_multiallelic_second_sample_is_hom() -> None:
    _, resources = run(DATA / "cases_grch38.vcf", sample="NA00002")
    observation = variant_at(resources, 999)
    assert one(observation, "69551-0") == "G"
    assert one(observation, "53034-5") == "LA6705-3"
    assert one(observation, "81258-6") == 1.0


def test_mitochondrial_calls_are_hetero_or_homoplasmic() -> None:
    _, resources = run(DATA / "cases_grch38.vcf", sample="NA00001")
    hetero = variant_at(resources, 99)  # chrM 100 0/1 AF 0.3
    assert one(hetero, "53034-5") == "LA6703-8"
    assert one(hetero, "81258-6") == 0.3
    assert one(hetero, "48013-7") == "NC_012920.1"
    assert sequence_of(resources, hetero)["referenceSeq"]["referenceSeqId"]["coding"][0]["code"] == "NC_012920.1"
    homo = variant_at(resources, 199)  # chrM 200 1/1
    assert one(homo, "53034-5") == "LA6704-6"
    # haploid mitochondrial call (vcf2fhir vcftests.vcf: M 6018 ... GT 1)
    _, resources = run(shared(VCF2FHIR / "vcftests.vcf"), build="GRCh37")
    haploid = variant_at(resources, 6017)
    assert one(haploid, "53034-5") == "LA6704-6"
    assert one(haploid, "48013-7") == "NC_012920.1"
    assert one(variant_at(resources, 6020), "53034-5") == "LA6703-8"  # 0|1


def test_haploid_x_call_is_hemizygous() -> None:
    # cyvcf2 test-haploidX.vcf: chrX 2700157 G A, sample 37150 GT 1, AD 0,52; VEP CSQ gene XG
    _, resources = run(shared(CYVCF2 / "test-haploidX.vcf"), sample="37150")
    observation = variant_at(resources, 2700156)
    assert one(observation, "53034-5") == "LA6707-9"
    assert one(observation, "48013-7") == "NC_000023.10"
    assert one(observation, "82121-5") == 52
    assert one(observation, "81258-6") == 1.0
    assert one(observation, "48018-6") == "XG"  # no HGNC id vendored: text
    _, resources = run(DATA / "cases_grch38.vcf", sample="NA00001")
    assert one(variant_at(resources, 19999), "53034-5") == "LA6707-9"  # chrX GT 1
    assert one(variant_at(resources, 29999), "53034-5") == "LA6707-9"  # chrY GT 1
    assert one(variant_at(resources, 29999), "48013-7") == "NC_000024.10"


def test_partial_genotype_has_no_allelic_state() -> None:
    _, resources = run(DATA / "cases_grch38.vcf", sample="NA00001")
    observation = variant_at(resources, 15999)  # 1/.
    assert components(observation, "53034-5") == []
    assert one(observation, "82121-5") == 4


def test_phased_pairs_give_cis_and_trans() -> None:
    _, resources = run(DATA / "phased_grch38.vcf")
    relations = by_code(resources, "82120-7")
    ids = {(one(v, "48013-7"), one(v, "81254-5")[0]): f"Observation/{v['id']}" for v in variants(resources)}
    chr7, chr8 = "NC_000007.14", "NC_000008.11"
    found = {
        (r["derivedFrom"][0]["reference"], r["derivedFrom"][1]["reference"]): code_of(r["valueCodeableConcept"])
        for r in relations
    }
    assert found == {
        (ids[(chr7, 99)], ids[(chr7, 199)]): "Cis",  # 0|1, 0|1 in PS 100
        (ids[(chr7, 199)], ids[(chr7, 299)]): "Trans",  # 0|1, 1|0
        (ids[(chr7, 299)], ids[(chr7, 699)]): "Trans",  # 1|0, 0|1 (1|1, other PS and 0/1 in between)
        (ids[(chr8, 199)], ids[(chr8, 299)]): "Cis",  # phased without PS: one set per chromosome
    }
    relation = relations[0]
    assert relation["meta"]["profile"] == [gc.PHASE_RELATIONSHIP_PROFILE]
    assert relation["valueCodeableConcept"]["coding"][0]["system"] == gc.PHASE_RELATIONSHIP
    assert code_of(relation["code"]) == "82120-7"


def test_phased_complete_genomics_file() -> None:
    # vcf2fhir vcftests.vcf: X 60579/60583/60593 all 1|0 in PS 60579 -> two Cis links
    _, resources = run(shared(VCF2FHIR / "vcftests.vcf"), build="GRCh37")
    relations = by_code(resources, "82120-7")
    a, b, c = (f"Observation/{variant_at(resources, s)['id']}" for s in (60578, 60582, 60592))
    pairs = {(r["derivedFrom"][0]["reference"], r["derivedFrom"][1]["reference"]): r for r in relations}
    assert code_of(pairs[(a, b)]["valueCodeableConcept"]) == "Cis"
    assert code_of(pairs[(b, c)]["valueCodeableConcept"]) == "Cis"
    assert len(relations) == 3  # and M 6021/6027 0|1 in PS 60003


def test_structural_variant_with_cipos_and_ciend() -> None:
    # 1 10477130 . C <DEL> ... IMPRECISE;END=10477585;CIPOS=-140,140;CIEND=-140,140  GT ... 0/1 ... CN 5
    _, resources = run(shared(VCF2FHIR / "vcf_structural_variants.vcf"))
    observation = variant_at(resources, 10477129)
    assert one(observation, "48019-4") == "SO:0000159"
    assert one(observation, "81301-4") == (10477129 - 140, 10477585 + 140)
    assert one(observation, "81302-2") == (10477129 + 140, 10477585 - 140)
    assert components(observation, "81254-5") == []  # imprecise: no exact start-end
    assert components(observation, "69547-8") == [] and components(observation, "69551-0") == []
    assert one(observation, "82155-3") == 5
    copy_number = components(observation, "82155-3")[0]["valueQuantity"]
    assert copy_number["system"] == "http://unitsofmeasure.org" and copy_number["code"] == "1"
    assert observation["note"] == [{"text": "VCF ALT: <DEL>"}]
    sequence = sequence_of(resources, observation)
    assert sequence["variant"] == [{"start": 10477129, "end": 10477585}]
    assert sequence["structureVariant"] == [
        {"exact": False, "outer": {"start": 10476989, "end": 10477725}, "inner": {"start": 10477269, "end": 10477445}}
    ]


def test_structural_variant_kinds_and_copy_numbers() -> None:
    _, resources = run(shared(VCF2FHIR / "vcf_structural_variants.vcf"))
    precise = variant_at(resources, 756294)  # Sniffles PRECISE <DEL> END=756329 SVLEN=34
    assert one(precise, "81254-5") == (756294, 756329)
    assert sequence_of(resources, precise)["structureVariant"] == [{"exact": True, "length": 34}]
    assert one(variant_at(resources, 12855951), "48019-4") == "SO:1000036"  # <INV>
    assert one(variant_at(resources, 12907779), "48019-4") == "SO:1000035"  # <DUP>
    assert one(variant_at(resources, 915), "48019-4") == "SO:0001837"  # <INS:ME:L1>
    cn0 = variant_at(resources, 41449093)  # <CN0> 0|1: one REF copy + zero
    assert one(cn0, "48019-4") == "SO:0001019"
    assert one(cn0, "82155-3") == 1
    cn2 = variant_at(resources, 42523950)  # <CN0>,<CN2>,… GT 0/2 FORMAT CN=3
    assert one(cn2, "82155-3") == 3
    assert cn2["note"] == [{"text": "VCF ALT: <CN2>"}]


def test_breakends() -> None:
    _, resources = run(shared(VCF2FHIR / "vcftests.vcf"), build="GRCh37")
    intra = variant_at(resources, 11550)  # M 11551 T TN[M:16141[
    assert one(intra, "48019-4") == "SO:0001874"
    assert one(intra, "81254-5") == (11550, 11551)
    inter = variant_at(resources, 11561)  # M 11562 T TN]11:49883566]
    assert one(inter, "48019-4") == "SO:0001873"


def test_snpeff_eff_annotation_and_molecular_consequence() -> None:
    # cyvcf2 test.snpeff.vcf (SnpEff 3.1 EFF): chr1 69511 A G
    # NON_SYNONYMOUS_CODING(MODERATE|MISSENSE|Aca/Gca|T141A|305|OR4F5|protein_coding|CODING|ENST00000335137|)
    _, resources = run(shared(CYVCF2 / "test.snpeff.vcf"), sample="1094PC0012")
    observation = variant_at(resources, 69510)
    assert one(observation, "48018-6") == "OR4F5"
    assert one(observation, "51958-7") == "ENST00000335137"
    assert components(observation, "51958-7")[0]["valueCodeableConcept"]["coding"][0]["system"] == gc.ENSEMBL
    assert one(observation, "48005-3") == "p.Thr141Ala"
    [consequence] = consequences_of(resources, observation)
    assert consequence["meta"]["profile"] == [gc.MOLECULAR_CONSEQUENCE_PROFILE]
    assert consequence["code"]["coding"][0] == {
        "system": TBD,
        "code": "molecular-consequence",
        "display": "Molecular Consequence",
    }
    assert "valueCodeableConcept" not in consequence  # STU3 GenomicImplication: value[x] 0..0
    assert consequence["derivedFrom"] == [{"reference": f"Observation/{observation['id']}"}]
    assert one(consequence, "feature-consequence") == "SO:0001583"
    feature = components(consequence, "feature-consequence")[0]
    assert feature["code"]["coding"][0]["system"] == TBD
    assert feature["valueCodeableConcept"]["coding"][0] == {
        "system": "http://www.sequenceontology.org",
        "code": "SO:0001583",
        "display": "missense_variant",
    }
    assert one(consequence, "48005-3") == "p.Thr141Ala"
    synonymous = variant_at(resources, 69269)  # SYNONYMOUS_CODING S60
    assert one(synonymous, "48005-3") == "p.Ser60="
    assert one(consequences_of(resources, synonymous)[0], "feature-consequence") == "SO:0001819"


def test_snpeff_ann_annotation_with_clinvar() -> None:
    # vcf2fhir NB6TK328_filtered.vcf: chr5 112841059 rs459552;21030 T A  1/1, ANN APC missense, CLNSIG=Benign
    _, resources = run(shared(VCF2FHIR / "NB6TK328_filtered.vcf"))
    observation = variant_at(resources, 112841058)
    gene = components(observation, "48018-6")[0]["valueCodeableConcept"]
    assert gene == {"coding": [{"system": "http://www.genenames.org/geneId", "code": "HGNC:583", "display": "APC"}]}
    assert one(observation, "48004-6") == "ENST00000508376.6:c.5465T>A"
    assert one(observation, "48005-3") == "p.Val1822Asp"
    assert one(observation, "48013-7") == "NC_000005.10"
    assert one(observation, "53034-5") == "LA6705-3"
    codes = [c["valueCodeableConcept"]["coding"][0] for c in components(observation, "81252-9")]
    assert codes == [
        {"system": "http://www.ncbi.nlm.nih.gov/snp", "code": "rs459552"},
        {"system": "http://www.ncbi.nlm.nih.gov/clinvar", "code": "21030"},
    ]
    [implication] = derived_from(resources, observation, "diagnostic-implication")
    assert implication["meta"]["profile"] == [gc.DIAGNOSTIC_IMPLICATION_PROFILE]
    assert one(implication, "53037-8") == "LA6675-8"
    assert "valueCodeableConcept" not in implication
    assert one(consequences_of(resources, observation)[0], "feature-consequence") == "SO:0001583"
    mybpc3 = variant_at(resources, 47348489)  # Benign/Likely_benign: kept as text
    [implication] = derived_from(resources, mybpc3, "diagnostic-implication")
    assert one(implication, "53037-8") == "Benign/Likely benign"
    assert one(mybpc3, "48018-6") == "HGNC:7551"


def test_vep_csq_annotation_and_clinical_significance() -> None:
    _, resources = run(DATA / "vep_clinvar_grch37.vcf")
    star2 = variant_at(resources, 96541615)  # CYP2C19 rs4244285; CANONICAL entry chosen
    assert one(star2, "48018-6") == "HGNC:2621"
    assert one(star2, "51958-7") == "ENST00000371321"
    assert one(star2, "48004-6") == "ENST00000371321.4:c.681G>A"
    assert one(star2, "48005-3") == "ENSP00000360372.3:p.Pro227="
    [consequence] = consequences_of(resources, star2)
    assert [code_of(c["valueCodeableConcept"]) for c in components(consequence, "feature-consequence")] == [
        "SO:0001630",
        "SO:0001819",
    ]
    [implication] = derived_from(resources, star2, "diagnostic-implication")
    assert one(implication, "53037-8") == "drug response"
    frameshift = variant_at(resources, 32914437)  # CT>C, VEP Allele '-'
    assert one(frameshift, "48018-6") == "HGNC:1101"
    assert one(frameshift, "48019-4") == "SO:0000159"
    assert one(consequences_of(resources, frameshift)[0], "feature-consequence") == "SO:0001589"
    [implication] = derived_from(resources, frameshift, "diagnostic-implication")
    assert one(implication, "53037-8") == "LA6668-3"
    multi = variant_at(resources, 32915004)  # VCV accession, two ALTs: no implication (site-level CLNSIG)
    assert [c["valueCodeableConcept"]["coding"][0]["code"] for c in components(multi, "81252-9")] == ["41599"]
    assert derived_from(resources, multi, "diagnostic-implication") == []
    assert one(derived_from(resources, variant_at(resources, 32915999), "diagnostic-implication")[0], "53037-8") == (
        "LA26333-7"
    )


# -- skips and the report ------------------------------------------------------------------------
def test_skipped_counts_by_reason() -> None:
    mapping, resources = run(DATA / "cases_grch38.vcf", sample="NA00001")
    assert dict(mapping.report.skipped) == {
        "filtered": 1,
        "sample_filtered": 1,
        "reference_block": 1,
        "non_ref_allele": 1,
        "spanning_deletion": 1,
        "no_call": 2,
        "hom_ref": 1,
        "unsupported_contig": 1,
    }
    assert mapping.report.records == 21
    assert mapping.report.variants == len(variants(resources)) == 15
    # gVCF record with a called <NON_REF> beside C: only C is reported
    assert [one(o, "69551-0") for o in variants(resources) if one(o, "81254-5")[0] in (9999, 10999, 11999)] == [
        "C",
        "C",
        "C",
    ]


def test_filtered_calls_kept_with_a_note_when_asked() -> None:
    mapping, resources = run(DATA / "cases_grch38.vcf", sample="NA00001", skip_filtered=False)
    assert "filtered" not in mapping.report.skipped
    assert variant_at(resources, 6999)["note"] == [{"text": "VCF FILTER: LowQual"}]
    assert variant_at(resources, 7999)["note"] == [{"text": "VCF FORMAT/FT: LowDP"}]


def _independent_counts(path: Path) -> Counter[str]:
    """Records, called records/ALT alleles, and those with FORMAT/FT PASS or missing, read without the mapper."""
    counts: Counter[str] = Counter()
    with gzip.open(path, "rt") as fh:
        for line in fh:
            if line.startswith("#"):
                continue
            counts["records"] += 1
            fields = line.rstrip("\n").split("\t")
            values = dict(zip(fields[8].split(":"), fields[9].split(":"), strict=False))
            alleles = {a for a in values.get("GT", ".").replace("|", "/").split("/") if a not in (".", "0")}
            if alleles:
                counts["called records"] += 1
                counts["called alleles"] += len(alleles)
                if values.get("FT", ".") in ("PASS", "."):
                    counts["passing records"] += 1
                    counts["passing alleles"] += len(alleles)
    return counts


def test_complete_genomics_file_counts_match_an_independent_reading() -> None:
    path = shared(VCF2FHIR / "HG00403A.vcf.gz")
    expected = _independent_counts(path)
    mapping, resources = run(path)
    report = mapping.report
    assert report.records == expected["records"] == 20834
    assert report.variants == expected["passing alleles"] == len(variants(resources))
    assert report.skipped["sample_filtered"] == expected["called records"] - expected["passing records"]
    assert report.skipped["no_call"] == expected["records"] - expected["called records"]
    assert report.skipped == Counter({"no_call": 12410, "sample_filtered": 580})
    assert report.complete
    kept, _ = run(path, skip_filtered=False)
    assert kept.report.variants == expected["called alleles"]


def test_diagnostic_report_summarises_the_ingestion() -> None:
    mapping, resources = run(DATA / "cases_grch38.vcf", sample="NA00001")
    report = resources[-1]
    assert report["resourceType"] == "DiagnosticReport"
    assert code_of(report["code"]) == "51969-4"
    assert report["code"]["coding"][0]["system"] == LOINC
    assert report["category"][0]["coding"][0]["code"] == "GE"
    assert report["status"] == "final"
    assert report["effectiveDateTime"] == "2024-01-31"
    observations = [f"Observation/{r['id']}" for r in resources if r["resourceType"] == "Observation"]
    assert [r["reference"] for r in report["result"]] == observations
    [extension] = report["extension"]
    assert extension["url"] == EXT_INGESTION
    values = {e["url"]: e for e in extension["extension"]}
    assert values["fileName"]["valueString"] == "cases_grch38.vcf"
    assert values["sha256"]["valueString"] == mapping.sha256
    assert values["sample"]["valueString"] == "NA00001"
    assert values["build"]["valueString"] == "GRCh38"
    assert values["records"]["valueInteger"] == 21
    assert values["variants"]["valueInteger"] == 15
    skipped = {
        next(x["valueCode"] for x in e["extension"] if x["url"] == "reason"): next(
            x["valueInteger"] for x in e["extension"] if x["url"] == "count"
        )
        for e in extension["extension"]
        if e["url"] == "skipped"
    }
    assert skipped == dict(mapping.report.skipped)
    assert "15 variant(s) from cases_grch38.vcf" in report["conclusion"]
    assert "no_call 2" in report["conclusion"]


def test_somatic_source_class_and_regions() -> None:
    mapping, resources = run(
        DATA / "cases_grch38.vcf",
        sample="NA00001",
        source_class="somatic",
        regions=[("1", 999, 2000), ("chrM", 0, 150)],
    )
    assert {one(o, "48002-0") for o in variants(resources)} == {"LA6684-0"}
    assert sorted(one(o, "81254-5")[0] for o in variants(resources)) == [99, 999, 1999, 1999]
    assert mapping.report.skipped["outside_regions"] == 18


def test_regions_from_bed_files() -> None:
    mapping, resources = run(shared(VCF2FHIR / "HG00403A.vcf.gz"), regions=shared(VCF2FHIR / "HG00403A_convert.bed"))
    assert mapping.report.variants == 0  # the BED holds 1:10-100 only
    assert mapping.report.skipped["outside_regions"] == 20834
    regions = read_bed(shared(VCF2FHIR / "RegionsToConvert_example3.bed"))
    assert regions["X"] == ([50000, 55000], [52000, 60600])
    assert regions["MT"] == ([50000], [60025])
    crlf = read_bed(shared(VCF2FHIR / "NB6TK328_conversion_region.bed"))
    assert "1" in crlf and "5" in crlf
    mapping, resources = run(shared(VCF2FHIR / "vcf_example3.vcf"), regions=VCF2FHIR / "RegionsToConvert_example3.bed")
    assert {one(o, "48013-7") for o in variants(resources)} <= {"NC_000023.10", "NC_012920.1"}


# -- identity ------------------------------------------------------------------------------------
def test_ids_are_deterministic_and_ascend_through_the_file() -> None:
    first = [r["id"] for r in run(DATA / "phased_grch38.vcf", patient="pat-1")[1]]
    second = [r["id"] for r in run(DATA / "phased_grch38.vcf", patient="pat-1")[1]]
    other = [r["id"] for r in run(DATA / "phased_grch38.vcf", patient="pat-2")[1]]
    assert first == second
    assert not set(first) & set(other)
    mapping = map_vcf(DATA / "phased_grch38.vcf", "pat-1")
    first_record = 1 + next(
        i for i, line in enumerate((DATA / "phased_grch38.vcf").open()) if line.startswith("#CHROM")
    )
    ingestion = hashlib.sha1(NAMESPACE.bytes + f"pat-1\x1fS1\x1f{mapping.sha256}".encode()).hexdigest()[:16]
    key = hashlib.sha1(f"{first_record + 1}:chr7:100:G:A".encode()).hexdigest()[:16]
    assert first[0] == f"{ingestion}-{first_record + 1:09d}-{key}"
    assert all(re.fullmatch(r"[0-9a-f]{16}-[0-9]{9}-[0-9a-f]{16}", i) for i in first[:-1])
    # the report (last) keeps the uuid5 of every earlier version: a re-ingestion after an upgrade finds it
    assert first[-1] == str(uuid.uuid5(NAMESPACE, f"pat-1\x1fS1\x1f{mapping.sha256}\x1freport"))
    observations = [r for r in run(DATA / "phased_grch38.vcf")[1] if r["resourceType"] == "Observation"]
    assert len({r["id"] for r in observations}) == len(observations)
    # in file order, the ids ascend line by line (the store's id-keyed B-trees grow at their end)
    lines = [r["id"].split("-")[1] for r in observations]
    assert lines == sorted(lines) and len(set(lines)) > 3


def test_mapping_attributes_and_rerun_resets_the_report() -> None:
    mapping = map_vcf(DATA / "cases_grch38.vcf", "pat-1", sample="NA00002")
    assert (mapping.sample, mapping.build) == ("NA00002", "GRCh38")
    assert len(mapping.sha256) == 64
    assert mapping.report.records == 0 and not mapping.report.complete
    first = sum(1 for _ in mapping.resources())
    counts = mapping.report.as_dict()
    assert sum(1 for _ in mapping.resources()) == first
    assert mapping.report.as_dict() == counts
    assert counts["buildEvidence"][0] == "##reference=GRCh38 -> GRCh38"


def test_bgzipped_and_plain_files_map_alike() -> None:
    plain = run(shared(VCF2FHIR / "vcf_example4.vcf"), build="GRCh37")[1]
    packed = run(shared(VCF2FHIR / "vcf_example4.vcf.gz"), build="GRCh37")[1]
    assert [v["component"] for v in variants(plain)] == [v["component"] for v in variants(packed)]


def test_multi_sample_file_maps_the_chosen_sample() -> None:
    from cyvcf2 import VCF

    path = shared(CYVCF2 / "test.vcf.gz")
    sample = "100920-100920"
    expected = Counter()
    for record in VCF(str(path), samples=[sample]):
        alleles = record.genotypes[0][:-1]
        if max(alleles) > 0:
            expected["variants"] += len({a for a in alleles if a > 0})
    mapping, resources = run(path, sample=sample)
    assert mapping.report.variants == expected["variants"] > 0
    assert {r["subject"]["reference"] for r in variants(resources)} == {"Patient/pat-1"}


# -- errors --------------------------------------------------------------------------------------
def _example1_with(tmp_path: Path, line: str) -> Path:
    """vcf2fhir's vcf_example1.vcf header with one record line (the record is then line 4)."""
    header = shared(VCF2FHIR / "vcf_example1.vcf").read_text().splitlines()[:3]
    path = tmp_path / "one.vcf"
    path.write_text("\n".join([*header, line]) + "\n")
    return path


def test_malformed_rows_of_vcf_example1_name_file_and_line() -> None:
    path = shared(VCF2FHIR / "vcf_example1.vcf")
    with pytest.raises(VcfError) as caught:
        run(path, build="GRCh37")
    assert caught.value.file == str(path)
    assert caught.value.line == 4
    assert "REF '.'" in caught.value.message
    assert str(caught.value).startswith(f"{path}: line 4: ")


@pytest.mark.parametrize(
    ("line", "message"),
    [
        ("1\t15\t.\t.\tG\t.\t.\t.\tGT:PS\t0/1:.", "REF '.'"),
        ("1\t16\t.\tA,T\tG\t.\t.\t.\tGT:PS\t0/1:.", "REF 'A,T'"),
        ("1\t20\t.\t\tG\t.\t.\t.\tGT:PS\t0/1:.", "REF ''"),
        ("1\tabc\t.\tA\tG\t.\t.\t.\tGT:PS\t0/1:.", "POS 'abc'"),
        ("1\t21\t.\tA\tG\t.\t.\t.\tGT", "columns"),
        ("1\t22\t.\tA\tG<\t.\t.\t.\tGT:PS\t0/1:.", "ALT allele 'G<'"),
        ("1\t23\t.\tA\tG\t.\t.\t.\tGT:PS\t0/2:.", "GT allele 2"),
        ("", "blank line"),
        ("\t24\t.\tA\tG\t.\t.\t.\tGT:PS\t0/1:.", "empty CHROM"),
    ],
)
def test_broken_record_lines(tmp_path: Path, line: str, message: str) -> None:
    path = _example1_with(tmp_path, line)
    with pytest.raises(VcfError) as caught:
        run(path, build="GRCh37")
    assert caught.value.line == 4
    assert message in caught.value.message
    assert caught.value.file == str(path)


def test_tolerated_rows_of_vcf_example1(tmp_path: Path) -> None:
    # undeclared FILTER, INFO SVTYPE on a SNV, FORMAT without GT, no-calls, chr1 beside 1
    rows = [
        "1\t17\t.\tA\tG\t.\t27\t.\tGT:PS\t0/1:.",
        "1\t18\t.\tA\tG\t.\t.\tSVTYPE=INV\tGT:PS\t0/1:.",
        "1\t25\t.\tA\tG\t.\t.\t.\tPS\t.",
        "1\t26\t.\tA\tG\t.\t.\t.\tGT:PS\t./.:.",
        "chr1\t301\t.\tA\tG\t.\t.\t.\tGT:PS\t0/1:.",
    ]
    path = _example1_with(tmp_path, "\n".join(rows))
    mapping, resources = run(path, build="GRCh37")
    assert mapping.report.skipped == Counter({"filtered": 1, "no_genotype": 1, "no_call": 1})
    assert {one(o, "48013-7") for o in variants(resources)} == {"NC_000001.10"}


def test_invalid_header_empty_file_and_missing_file() -> None:
    with pytest.raises(VcfError) as caught:
        map_vcf(shared(CYVCF2 / "test-invalid-header.vcf"), "pat-1", build="GRCh37")
    assert caught.value.line == 2
    assert "empty sample name" in caught.value.message
    with pytest.raises(VcfError, match="empty file") as caught:
        map_vcf(shared(CYVCF2 / "empty.vcf"), "pat-1")
    assert caught.value.file.endswith("empty.vcf")
    with pytest.raises(VcfError, match="no such file"):
        map_vcf(DATA / "absent.vcf", "pat-1")


def test_not_a_vcf_and_bad_header_lines(tmp_path: Path) -> None:
    path = tmp_path / "x.vcf"
    path.write_text("hello\n")
    with pytest.raises(VcfError, match="line 1: not a VCF file"):
        map_vcf(path, "pat-1")
    path.write_text("##fileformat=VCFv4.2\n#CHROM\tPOS\tID\tREF\tALT\n")
    with pytest.raises(VcfError, match="line 2: the header line must start with"):
        map_vcf(path, "pat-1")
    path.write_text("##fileformat=VCFv4.2\n##contig=<ID=1,length=249250621>\n")
    with pytest.raises(VcfError, match="line 2: the header has no #CHROM line"):
        map_vcf(path, "pat-1")
    path.write_text("##fileformat=VCFv4.2\n#CHROM\tPOS\tID\tREF\tALT\tQUAL\tFILTER\tINFO\n")
    with pytest.raises(VcfError, match="no sample columns"):
        map_vcf(path, "pat-1", build="GRCh37")


def test_sample_must_be_in_the_file() -> None:
    with pytest.raises(VcfError) as caught:
        map_vcf(DATA / "cases_grch38.vcf", "pat-1", sample="NOPE")
    assert caught.value.line == 23  # the #CHROM line
    assert "sample 'NOPE' is not in the file" in caught.value.message
    with pytest.raises(VcfError, match=r"2 samples .*: pass sample="):
        map_vcf(DATA / "cases_grch38.vcf", "pat-1")


def test_unknown_and_conflicting_builds(tmp_path: Path) -> None:
    with pytest.raises(VcfError, match="unknown build: the header names no assembly"):
        map_vcf(shared(VCF2FHIR / "vcftests.vcf"), "pat-1")
    with pytest.raises(VcfError, match="unknown build 'hg18'"):
        map_vcf(shared(VCF2FHIR / "vcftests.vcf"), "pat-1", build="hg18")
    with pytest.raises(VcfError, match="conflicting build: build=GRCh38 but the header says") as caught:
        map_vcf(shared(VCF2FHIR / "HG00404_b37.vcf"), "pat-1", build="GRCh38")
    assert caught.value.file.endswith("HG00404_b37.vcf")
    assert caught.value.line == 21  # ##reference=ftp://ftp.completegenomics.com/ReferenceFiles/build37.fa.bz2
    assert map_vcf(shared(VCF2FHIR / "HG00404_b37.vcf"), "pat-1", build="hg19").build == "GRCh37"
    text = (DATA / "phased_grch38.vcf").read_text().replace("##reference=hg38", "##reference=ucsc.hg19.fasta")
    conflicted = tmp_path / "conflict.vcf"
    conflicted.write_text(text)
    with pytest.raises(VcfError, match=r"conflicting build in the header: line 3 .*GRCh37.*GRCh38") as caught:
        map_vcf(conflicted, "pat-1")
    assert caught.value.line == 4  # the first contig length that disagrees with ##reference (line 3)
    old = tmp_path / "ncbi36.vcf"
    old.write_text(text.replace("##reference=ucsc.hg19.fasta", "##reference=NCBI36.fa").replace(",length=", ",x="))
    with pytest.raises(VcfError, match="unsupported build") as caught:
        map_vcf(old, "pat-1")
    assert caught.value.line == 3


def _bgzf_blocks(data: bytes) -> list[int]:
    offsets, offset = [], 0
    while offset < len(data):
        offsets.append(offset)
        offset += struct.unpack("<H", data[offset + 16 : offset + 18])[0] + 1
    return offsets


def test_truncated_bgzip_files(tmp_path: Path) -> None:
    data = shared(VCF2FHIR / "HG00403A.vcf.gz").read_bytes()
    blocks = _bgzf_blocks(data)
    at_boundary = tmp_path / "cut.vcf.gz"
    at_boundary.write_bytes(data[: blocks[len(blocks) // 2]])  # decodes cleanly, EOF marker missing
    with pytest.raises(VcfError, match="BGZF end-of-file marker is missing"):
        map_vcf(at_boundary, "pat-1")
    mid_block = tmp_path / "torn.vcf.gz"
    mid_block.write_bytes(data[:300000] + data[-28:])  # a torn block, then a valid EOF marker
    mapping = map_vcf(mid_block, "pat-1")
    with pytest.raises(VcfError) as caught:
        list(mapping.resources())
    assert caught.value.line is not None and caught.value.line > 100
    assert not mapping.report.complete


def test_corrupt_plain_gzip(tmp_path: Path) -> None:
    text = (DATA / "phased_grch38.vcf").read_bytes()
    packed = gzip.compress(text)
    path = tmp_path / "p.vcf.gz"
    path.write_bytes(packed[: len(packed) - 20])
    with pytest.raises(VcfError):
        list(map_vcf(path, "pat-1").resources())


def test_bad_arguments_and_bed(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="patient_id"):
        map_vcf(DATA / "phased_grch38.vcf", "not a fhir id!")
    with pytest.raises(ValueError, match="source_class"):
        map_vcf(DATA / "phased_grch38.vcf", "pat-1", source_class="fetal")
    bed = tmp_path / "bad.bed"
    bed.write_text("chr1\t10\t20\nchr1\tten\t20\n")
    with pytest.raises(VcfError) as caught:
        map_vcf(DATA / "phased_grch38.vcf", "pat-1", regions=bed)
    assert (caught.value.file, caught.value.line) == (str(bed), 2)


# -- vendored tables -------------------------------------------------------------------------------
def test_refseq_table_agrees_with_shared_references() -> None:
    table = gc.refseq_chromosomes()
    mapping = shared(SHARED / "pgx" / "alleles" / "chr_build_mapping.tsv")
    for line in mapping.read_text().splitlines():
        build, chromosome, _, accession = line.split("\t")
        if build in ("b37", "b38"):
            assert table["GRCh37" if build == "b37" else "GRCh38"][chromosome].accession == accession
    for path, build in ((VCF2FHIR / "HG00403A.vcf.gz", "GRCh37"), (VCF2FHIR / "NB6TK328_filtered.vcf", "GRCh38")):
        opener = gzip.open if path.suffix == ".gz" else open
        with opener(shared(path), "rt") as fh:
            for line in fh:
                if not line.startswith("##"):
                    break
                if line.startswith("##contig=<ID=") and ",length=" in line:
                    name = line.split("ID=")[1].split(",")[0]
                    length = int(line.split("length=")[1].split(",")[0].rstrip(">\n"))
                    chromosome = gc.chromosome_name(name)
                    if chromosome:
                        assert table[build][chromosome].length == length, name


def test_reference_names_and_builds() -> None:
    assert gc.chromosome_name("chr1") == gc.chromosome_name("1") == "1"
    assert gc.chromosome_name("chrM") == gc.chromosome_name("MT") == "MT"
    assert gc.chromosome_name("NC_000023.11") == "X"
    assert gc.chromosome_name("chr1_KI270706v1_random") is None
    assert gc.build_from_text("ftp://ftp.completegenomics.com/ReferenceFiles/build37.fa.bz2") == "GRCh37"
    assert gc.build_from_text("file:///refs/human_g1k_v37.fasta") == "GRCh37"
    assert gc.build_from_text("Homo_sapiens_assembly38.fasta") == "GRCh38"
    assert gc.build_from_text("GCF_000001405.25") == "GRCh37"
    assert gc.build_from_text("/data/genome.fa") is None
    assert gc.gene_concept("CYP2D6") == {
        "coding": [{"system": "http://www.genenames.org/geneId", "code": "HGNC:2625", "display": "CYP2D6"}]
    }
    assert gc.gene_concept("CYP4F2") == {"text": "CYP4F2"}  # not vendored: no guessed ID
    required = "CYP2C19 CYP2C9 CYP2D6 CYP3A5 DPYD TPMT NUDT15 SLCO1B1 UGT1A1 VKORC1 IFNL3 KCNQ1 KCNH2 SCN5A MYBPC3"
    required += " MYH7 KCNE1 RYR2 LMNA MLH1 MSH2 MSH6 PMS2 APC KRAS NRAS BRAF TP53 BRCA1 BRCA2 EPCAM MUTYH SMAD4 PTEN"
    assert set(required.split()) <= set(gc.hgnc_ids())
    assert gc.so_from_snpeff_classic("CODON_CHANGE_PLUS CODON_DELETION").id == "SO:0001826"


def test_hg19_chrm_is_not_rcrs(tmp_path: Path) -> None:
    text = (DATA / "phased_grch38.vcf").read_text()
    text = text.replace("##reference=hg38", "##reference=ucsc.hg19.fasta")
    text = "\n".join(line for line in text.splitlines() if not line.startswith("##contig")) + "\n"
    text = text.replace("#CHROM", "##contig=<ID=chrM,length=16571>\n#CHROM")
    text += "chrM\t150\t.\tT\tC\t.\tPASS\t.\tGT\t1\n"
    path = tmp_path / "hg19.vcf"
    path.write_text(text)
    _, resources = run(path)
    assert one(variant_at(resources, 149), "48013-7") == "NC_001807.4"
    assert one(variant_at(resources, 499), "48013-7") == "NC_000007.13"


def test_top_level_parts_are_not_shared_between_resources() -> None:
    _, resources = run(DATA / "phased_grch38.vcf")
    observations = variants(resources)
    observations[0]["meta"]["versionId"] = "1"
    observations[0]["subject"]["reference"] = "Patient/other"
    observations[0]["derivedFrom"].append({"reference": "Observation/x"})
    assert "versionId" not in observations[1]["meta"]
    assert observations[1]["subject"] == {"reference": "Patient/pat-1"}
    assert len(observations[1]["derivedFrom"]) == 1


@pytest.mark.parametrize(
    ("path", "kwargs"),
    [
        (VCF2FHIR / "vcf_structural_variants.vcf", {}),
        (CYVCF2 / "test.snpeff.vcf", {"sample": "1094PC0012"}),
        (HERE.parent / "data" / "vcf" / "vep_clinvar_grch37.vcf", {"source_class": "somatic"}),
    ],
)
def test_variant_facts_are_the_resources_own_values(path: Path, kwargs: dict[str, Any]) -> None:
    """items(): a sequence variant's MolecularSequence and Observation come with the same facts,
    equal to (the concepts: identical with) what the resources hold; every other resource, and a
    structural variant, with None."""
    items = list(map_vcf(shared(path), "pat-1", **kwargs).items())
    assert [r for r, _ in items] == list(map_vcf(path, "pat-1", **kwargs).resources())
    with_facts = 0
    for n, (resource, facts) in enumerate(items):
        sequence = resource if resource["resourceType"] == "MolecularSequence" else items[n - 1][0]
        expected = sequence["resourceType"] == "MolecularSequence" and "structureVariant" not in sequence
        if resource["resourceType"] == "Observation":
            expected = expected and resource["code"]["coding"][0]["code"] == gc.VARIANT_ASSESSMENT
        assert (facts is not None) == expected, resource["id"]
        if facts is None:
            continue
        if resource["resourceType"] == "MolecularSequence":
            assert items[n + 1][1] is facts  # the variant Observation that follows shares them
            assert resource["patient"] == {"reference": facts.subject}
            assert resource["referenceSeq"]["referenceSeqId"] is facts.accession
            variant = resource["variant"][0]
            assert (variant["start"], variant["end"]) == (facts.start, facts.end)
            assert (variant["referenceAllele"], variant["observedAllele"]) == (facts.ref, facts.alt)
            continue
        with_facts += 1
        assert resource["subject"] == {"reference": facts.subject}
        assert resource["derivedFrom"] == [{"reference": facts.sequence}]
        assert facts.sequence == "MolecularSequence/" + resource["id"]
        by_code = {c["code"]["coding"][0]["code"]: c for c in resource["component"]}
        assert by_code["48013-7"]["valueCodeableConcept"] is facts.chromosome
        assert facts.chromosome["coding"][0]["code"] == facts.ref_seq
        gene = by_code.get("48018-6")
        assert (gene["valueCodeableConcept"] if gene else None) is facts.gene
        exact = by_code["81254-5"]["valueRange"]
        assert (exact["low"]["value"], exact["high"]["value"]) == (facts.start, facts.end)
        assert (by_code["69547-8"]["valueString"], by_code["69551-0"]["valueString"]) == (facts.ref, facts.alt)
        assert facts.source_class == kwargs.get("source_class", "germline")
    assert with_facts > 0


def test_modules_state_what_they_own() -> None:
    import mappers.genomics_codes
    import mappers.vcf
    import mappers.vcf_annotations

    for module in (mappers.vcf, mappers.vcf_annotations, mappers.genomics_codes):
        assert module.__doc__ and "genomics-reporting" in module.__doc__
    assert "hts-specs" in (mappers.vcf.__doc__ or "")


# -- population allele frequency (92821-8) ---------------------------------------------------------
def test_population_allele_frequency_from_named_keys_only() -> None:
    from profiles.validate import validate_structure

    _, resources = run(DATA / "population_af_grch38.vcf")
    for resource in resources:
        assert not validate_structure(resource), resource["id"]
    fbn1 = variant_at(resources, 48500000)
    # INFO gnomAD_AF 0.00002 and AF_popmax 0.0001: the highest; INFO/AF (cohort, 0.5) never
    assert one(fbn1, "92821-8") == 0.0001
    [component] = components(fbn1, "92821-8")
    assert component["code"]["coding"][0] == {
        "system": LOINC,
        "code": "92821-8",
        "display": "Population allele frequency",
    }
    assert component["code"]["text"] == "Population allele frequency (gnomAD_AF, AF_popmax)"
    assert component["valueQuantity"]["code"] == "1"
    # VEP CSQ: gnomADe 0.001, gnomADg 0.0008&0.0012, MAX_AF 0.002 -> 0.002; CSQ AF (1000 Genomes) 0.3 not read
    cftr = variant_at(resources, 117500000)
    assert one(cftr, "92821-8") == 0.002
    assert "CSQ MAX_AF" in components(cftr, "92821-8")[0]["code"]["text"]
    # multi-allelic Number=A: the called second ALT's values (0 is a frequency, '.' is none)
    second = variant_at(resources, 117500100, "T")
    assert one(second, "92821-8") == 0.0
    # only the cohort AF, or values that are no frequency: no component
    assert components(variant_at(resources, 117500200), "92821-8") == []
