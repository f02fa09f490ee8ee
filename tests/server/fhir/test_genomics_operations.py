"""The Genomics Reporting operations at /fhir/Observation/$find-…, on both backends, with hand-checked answers.

Data (ingested once per backend):

- p1, p5: tests/data/vcf/vep_clinvar_grch37.vcf (GRCh37). Variants, 0-based half-open:
  NC_000010.10 [96541615, 96541616) G>A (CYP2C19 rs4244285, ClinVar drug response);
  NC_000013.10 [32914437, 32914439) CT>C (BRCA2, pathogenic); [32915004, 32915005) G>C (of G>C,T, GT 0/1);
  [32915999, 32916000) A>G (VUS); [32916999, 32917000) A>G (conflicting: text).
- p2: NB6TK328_filtered.vcf (GRCh38, shared): NC_000013.11 [32355249, 32355250) T>C (BRCA2) and four others.
- p3: vcf_structural_variants.vcf (GRCh38, shared): e.g. <DEL> NC_000001.11 [756294, 756329), two <INV>
  [12855626, 13448530) and [12898305, 13414502), a 19-base insertion T>TAGC… at [15518744, 15518745).
- p4: vcf_example3.vcf (GRCh37, shared): phased NC_000023.10 variants at 60578, 60582, 60592 (0-based
  starts), phase relationships 60578~60582 and 60582~60592.
- p1 also gets a hand-made CYP2C19 genotype (*1/*2), haplotype (*2), CYP2C9 genotype (*1/*1) and a
  TherapeuticImplication (clopidogrel) derived from the CYP2C19 genotype.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from server.fhir import crud
from server.fhir.operations import ingest_vcf as ingest
from tests.conftest import SHARED, make_app, postgres_url

DATA = Path(__file__).resolve().parents[2] / "data" / "vcf"
VCF2FHIR = SHARED / "vcf" / "vcf2fhir"
OP = "/fhir/Observation/$"
GENES = "http://www.genenames.org/geneId"
LOINC = "http://loinc.org"
TBD = "http://hl7.org/fhir/uv/genomics-reporting/CodeSystem/tbd-codes-cs"


def _gene(symbol: str, hgnc: str) -> dict[str, Any]:
    return {
        "code": {"coding": [{"system": LOINC, "code": "48018-6"}]},
        "valueCodeableConcept": {"coding": [{"system": GENES, "code": hgnc, "display": symbol}]},
    }


def _observation(id_: str, code: dict[str, Any], value: str, gene: dict[str, Any], **extra: Any) -> dict[str, Any]:
    return {
        "resourceType": "Observation",
        "id": id_,
        "status": "final",
        "category": [{"coding": [{"system": "http://terminology.hl7.org/CodeSystem/v2-0074", "code": "GE"}]}],
        "code": code,
        "subject": {"reference": "Patient/p1"},
        "valueCodeableConcept": {"text": value},
        "component": [gene],
        **extra,
    }


@pytest.fixture(scope="module", params=["sqlite", "postgresql"])
def client(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    for path in (VCF2FHIR / "NB6TK328_filtered.vcf", VCF2FHIR / "vcf_structural_variants.vcf"):
        if not path.exists():
            pytest.skip(f"shared test data not found: {path}")
    if request.param == "sqlite":
        url = f"sqlite:///{tmp_path_factory.mktemp('genomics')}/test.sqlite"
    else:
        url = postgres_url()
    app = make_app(url)
    ctx = app.extensions["bigmed"]
    for patient, path in (
        ("p1", DATA / "vep_clinvar_grch37.vcf"),
        ("p5", DATA / "vep_clinvar_grch37.vcf"),
        ("p2", VCF2FHIR / "NB6TK328_filtered.vcf"),
        ("p3", VCF2FHIR / "vcf_structural_variants.vcf"),
        ("p4", VCF2FHIR / "vcf_example3.vcf"),
    ):
        crud.update(ctx, "Patient", patient, {"resourceType": "Patient", "id": patient})
        ingest.ingest_vcf(ctx, path, patient)
    crud.update(ctx, "Patient", "p6", {"resourceType": "Patient", "id": "p6"})  # no genomic data
    genotype = {"coding": [{"system": LOINC, "code": "84413-4"}]}
    haplotype = {"coding": [{"system": LOINC, "code": "84414-2"}]}
    cyp2c19 = _gene("CYP2C19", "HGNC:2621")
    for resource in (
        _observation("gt-2c19", genotype, "*1/*2", cyp2c19),
        _observation("ht-2c19", haplotype, "*2", cyp2c19),
        _observation("gt-2c9", genotype, "*1/*1", _gene("CYP2C9", "HGNC:2623")),
        {
            "resourceType": "Observation",
            "id": "tx-2c19",
            "status": "final",
            "code": {"coding": [{"system": TBD, "code": "therapeutic-implication"}]},
            "subject": {"reference": "Patient/p1"},
            "derivedFrom": [{"reference": "Observation/gt-2c19"}],
            "component": [
                {
                    "code": {"coding": [{"system": TBD, "code": "therapeutic-implication"}]},
                    "valueCodeableConcept": {"text": "Intermediate Metabolizer"},
                },
                {
                    "code": {"coding": [{"system": LOINC, "code": "51963-7"}]},
                    "valueCodeableConcept": {
                        "coding": [
                            {
                                "system": "http://www.nlm.nih.gov/research/umls/rxnorm",
                                "code": "32968",
                                "display": "clopidogrel",
                            }
                        ]
                    },
                },
            ],
        },
    ):
        crud.update(ctx, "Observation", resource["id"], resource)
    yield app.test_client()
    ctx.store.close()


def _get(client: Any, name: str, query: str, status: int = 200) -> Any:
    response = client.get(f"{OP}{name}?{query}")
    assert response.status_code == status, response.json
    return response.json


def _answers(parameters: dict[str, Any]) -> list[dict[str, list[Any]]]:
    """Each output parameter's parts as name -> values (valueX, or the resource's id)."""
    assert parameters["resourceType"] == "Parameters"
    out = []
    for parameter in parameters["parameter"]:
        parts: dict[str, list[Any]] = {}
        for part in parameter.get("part", [parameter]):
            value = next((v for k, v in part.items() if k.startswith("value")), None)
            if "resource" in part:
                value = part["resource"]["id"]
            if isinstance(value, dict) and "value" in value:
                value = value["value"]
            parts.setdefault(part["name"], []).append(value)
        out.append(parts)
    return out


def _presence(client: Any, query: str, name: str = "find-subject-variants") -> list[bool]:
    return [a["presence"][0] for a in _answers(_get(client, name, query))]


# -- $find-subject-variants -----------------------------------------------------------------


def test_ranges_are_zero_based_half_open(client: Any) -> None:
    s = "subject=Patient/p1&ranges="
    assert _presence(client, s + "NC_000010.10:96541615-96541616") == [True]  # exactly the variant
    assert _presence(client, s + "NC_000010.10:96541600-96541615") == [False]  # ends where the variant starts
    assert _presence(client, s + "NC_000010.10:96541616-96541700") == [False]  # starts where it ends
    assert _presence(client, s + "NC_000010.10:96541614-96541616") == [True]
    # the deletion covers two bases: [32914437, 32914439)
    assert _presence(client, s + "NC_000013.10:32914438-32914439") == [True]
    assert _presence(client, s + "NC_000013.10:32914439-32914440") == [False]
    # another build's accession, another chromosome
    assert _presence(client, s + "NC_000010.11:96541615-96541616") == [False]
    assert _presence(client, s + "NC_000001.10:0-248956422") == [False]
    # a bare id is a Patient; several ranges answer in order, comma-separated or repeated
    both = "subject=p1&ranges=NC_000010.10:96541600-96541615,NC_000013.10:32914000-32917000"
    answers = _answers(_get(client, "find-subject-variants", both))
    assert [a["rangeItem"] for a in answers] == [["NC_000010.10:96541600-96541615"], ["NC_000013.10:32914000-32917000"]]
    assert [a["presence"] for a in answers] == [[False], [True]]
    assert "variant" not in answers[1]  # includeVariants defaults to false
    repeated = "subject=p1&ranges=NC_000010.10:96541600-96541615&ranges=NC_000013.10:32914000-32917000"
    assert _answers(_get(client, "find-subject-variants", repeated)) == answers


def test_include_variants_returns_the_observations(client: Any) -> None:
    query = "subject=Patient/p1&ranges=NC_000013.10:32914000-32917000&includeVariants=true"
    answer = _answers(_get(client, "find-subject-variants", query))[0]
    assert len(answer["variant"]) == 4  # the deletion, G>C, and the two A>G; the range ends at 32917000
    parameters = _get(client, "find-subject-variants", query)
    variant = parameters["parameter"][0]["part"][2]["resource"]
    assert variant["resourceType"] == "Observation" and variant["code"]["coding"][0]["code"] == "69548-6"
    assert variant["subject"] == {"reference": "Patient/p1"}
    # ending at the last variant's start leaves it out
    query = "subject=Patient/p1&ranges=NC_000013.10:32914000-32916999&includeVariants=true"
    assert len(_answers(_get(client, "find-subject-variants", query))[0]["variant"]) == 3
    # other subjects' variants never leak in
    query = "subject=Patient/p2&ranges=NC_000013.10:32914000-32917000&includeVariants=true"
    assert _answers(_get(client, "find-subject-variants", query)) == [
        {"rangeItem": ["NC_000013.10:32914000-32917000"], "presence": [False]}
    ]
    query = "subject=Patient/p2&ranges=NC_000013.11:32355249-32355250&includeVariants=true"
    assert len(_answers(_get(client, "find-subject-variants", query))[0]["variant"]) == 1


def test_genomic_source_class_and_post(client: Any) -> None:
    base = "subject=Patient/p1&ranges=NC_000010.10:96541615-96541616"
    assert _presence(client, base + "&genomicSourceClass=germline") == [True]
    assert _presence(client, base + "&genomicSourceClass=somatic") == [False]
    assert _presence(client, base + "&genomicSourceClass=LA6683-2") == [True]
    body = {
        "resourceType": "Parameters",
        "parameter": [
            {"name": "subject", "valueString": "Patient/p1"},
            {"name": "ranges", "valueString": "NC_000010.10:96541615-96541616"},
            {"name": "includeVariants", "valueBoolean": True},
        ],
    }
    response = client.post(f"{OP}find-subject-variants", json=body, content_type="application/fhir+json")
    assert response.status_code == 200, response.json
    answer = _answers(response.json)[0]
    assert answer["presence"] == [True] and len(answer["variant"]) == 1


def test_include_phasing(client: Any) -> None:
    query = "subject=Patient/p4&ranges=NC_000023.10:60578-60593&includePhasing=true"
    answer = _answers(_get(client, "find-subject-variants", query))[0]
    assert len(answer["variant"]) == 3
    assert len(answer["sequencePhaseRelationship"]) == 2
    # one of the pairs leaves the range: only the relationship inside it is returned
    query = "subject=Patient/p4&ranges=NC_000023.10:60578-60584&includePhasing=true"
    answer = _answers(_get(client, "find-subject-variants", query))[0]
    assert len(answer["variant"]) == 2 and len(answer["sequencePhaseRelationship"]) == 1


def test_simple_and_structural_variants_are_apart(client: Any) -> None:
    deletion = "subject=Patient/p3&ranges=NC_000001.11:756300-756310"
    assert _presence(client, deletion) == [False]
    assert _presence(client, deletion, "find-subject-structural-intersecting-variants") == [True]
    assert _presence(
        client, "subject=Patient/p3&ranges=NC_000001.11:756200-756294", "find-subject-structural-intersecting-variants"
    ) == [False]
    inversions = "subject=Patient/p3&ranges=NC_000001.11:13420000-13420001&includeVariants=true"
    answer = _answers(_get(client, "find-subject-structural-intersecting-variants", inversions))[0]
    assert len(answer["variant"]) == 1  # [12855626, 13448530); [12898305, 13414502) ends before
    # both inversions; the duplications [12855609, 13199037) and [12907552, 13183799) end before
    inversions = "subject=Patient/p3&ranges=NC_000001.11:13300000-13300001&includeVariants=true"
    assert len(_answers(_get(client, "find-subject-structural-intersecting-variants", inversions))[0]["variant"]) == 2
    spanning = "subject=Patient/p3&ranges=NC_000001.11:13199036-13199037&includeVariants=true"
    assert len(_answers(_get(client, "find-subject-structural-intersecting-variants", spanning))[0]["variant"]) == 3
    insertion = "subject=Patient/p3&ranges=NC_000001.11:15518744-15518745"
    assert _presence(client, insertion) == [True]
    assert _presence(client, insertion, "find-subject-structural-intersecting-variants") == [False]


@pytest.mark.parametrize(
    ("query", "status", "message"),
    [
        ("ranges=NC_000010.10:1-2", 400, "'subject' is required"),
        ("subject=Patient/p1", 400, "'ranges' is required"),
        ("subject=Patient/nobody&ranges=NC_000010.10:1-2", 404, "subject Patient/nobody is not known"),
        ("subject=Patient/p1&ranges=NC_000010.10:5-5", 400, "is empty"),
        ("subject=Patient/p1&ranges=chr10:1-2", 400, "zero-based RefSeq:start-end"),
        ("subject=Patient/p1&ranges=NC_000010:1-2", 400, "zero-based RefSeq:start-end"),
        ("subject=Patient/p1&ranges=NC_000010.10:1-2&includeVariants=yes", 400, "true or false"),
        ("subject=Patient/p1&ranges=NC_000010.10:1-2&testIdentifiers=x", 400, "not supported"),
        ("subject=Patient/p1&ranges=NC_000010.10:1-2&genomicSourceClass=mosaic", 400, "germline or somatic"),
        ("subject=Patient/p1&ranges=NC_000010.10:1-2&colour=red", 400, "unknown parameter 'colour'"),
    ],
)
def test_bad_requests(client: Any, query: str, status: int, message: str) -> None:
    outcome = _get(client, "find-subject-variants", query, status)
    assert outcome["resourceType"] == "OperationOutcome"
    assert message in outcome["issue"][0]["diagnostics"]


# -- $find-subject-specific-variants --------------------------------------------------------


@pytest.mark.parametrize(
    ("variant", "present"),
    [
        ("NC_000010.10:96541615:G:A", True),  # SPDI
        ("NC_000010.10:96541615:G:T", False),
        ("NC_000010.10:96541616:G:A", False),  # one off
        ("NC_000010.10:g.96541616G>A", True),  # HGVS, 1-based
        ("NC_000010.10:g.96541615G>A", False),
        ("NC_000013.10:32914438:T:", True),  # the deletion, trimmed
        ("NC_000013.10:32914437:CT:C", True),  # the deletion, as in the VCF
        ("NC_000013.10:32914438:1:", True),  # deleted length
        ("NC_000013.10:32914438:2:", False),
        ("NC_000013.10:g.32914439del", True),
        ("NC_000013.10:g.32914439delT", True),
        ("NC_000013.10:g.32914439_32914440del", False),
        ("NC_000013.10:32915004:G:C", True),  # the called ALT of a G>C,T record (GT 0/1)
        ("NC_000013.10:32915004:G:T", False),  # the ALT not called
        ("NC_000013.11:32355249:T:C", False),  # p2's variant
    ],
)
def test_specific_variants(client: Any, variant: str, present: bool) -> None:
    query = f"subject=Patient/p1&variants={variant}&includeVariants=true"
    answer = _answers(_get(client, "find-subject-specific-variants", query))[0]
    assert answer["variantItem"] == [variant]
    assert answer["presence"] == [present]
    assert len(answer.get("variant", [])) == (1 if present else 0)


def test_specific_variants_list_and_errors(client: Any) -> None:
    query = "subject=Patient/p1&variants=NC_000010.10:96541615:G:A,NC_000010.10:96541615:G:T"
    assert _presence(client, query, "find-subject-specific-variants") == [True, False]
    for bad in ("NM_000769.4:c.681G>A", "rs4244285", "NC_000010.10:g.96541616dup", "NC_000010.10:1:X:A"):
        outcome = _get(client, "find-subject-specific-variants", f"subject=Patient/p1&variants={bad}", 400)
        assert bad in outcome["issue"][0]["diagnostics"]
    # the insertion of the structural file is a simple variant (REF/ALT sequences)
    query = "subject=Patient/p3&variants=NC_000001.11:15518745::AGCGTAAGTACACGGGTGG"
    assert _presence(client, query, "find-subject-specific-variants") == [True]


# -- $find-population-specific-variants ------------------------------------------------------


def test_population_counts_and_lists_subjects(client: Any) -> None:
    # p1 and p5 carry the CYP2C19 variant; five subjects have variant data (p6 has none)
    query = (
        "variants=NC_000010.10:96541615:G:A,NC_000013.11:32355249:T:C,NC_000010.10:96541615:G:T&includePatientList=true"
    )
    answers = _answers(_get(client, "find-population-specific-variants", query))
    assert answers == [
        {
            "variantItem": ["NC_000010.10:96541615:G:A"],
            "numerator": [2],
            "denominator": [5],
            "subject": ["Patient/p1", "Patient/p5"],
        },
        {"variantItem": ["NC_000013.11:32355249:T:C"], "numerator": [1], "denominator": [5], "subject": ["Patient/p2"]},
        {"variantItem": ["NC_000010.10:96541615:G:T"], "numerator": [0], "denominator": [5]},
    ]
    # repeated: AND (each an OR of its items); without the list only counts
    query = "variants=NC_000010.10:96541615:G:A&variants=NC_000013.10:g.32914439del,NC_000013.11:32355249:T:C"
    assert _answers(_get(client, "find-population-specific-variants", query)) == [
        {
            "variantItem": ["NC_000010.10:96541615:G:A AND NC_000013.10:g.32914439del,NC_000013.11:32355249:T:C"],
            "numerator": [2],
            "denominator": [5],
        }
    ]
    query = "variants=NC_000010.10:96541615:G:A&variants=NC_000013.11:32355249:T:C"
    assert _answers(_get(client, "find-population-specific-variants", query))[0]["numerator"] == [0]
    query = "variants=NC_000010.10:96541615:G:A&genomicSourceClass=somatic"
    assert _answers(_get(client, "find-population-specific-variants", query))[0]["numerator"] == [0]
    _get(client, "find-population-specific-variants", "includePatientList=true", 400)


# -- $find-subject-haplotypes -----------------------------------------------------------------


def test_haplotypes(client: Any) -> None:
    answers = _answers(_get(client, "find-subject-haplotypes", "subject=Patient/p1&genes=CYP2C19,HGNC:2623,BRCA1"))
    assert answers == [
        {"geneItem": ["CYP2C19"], "genotype": ["gt-2c19"], "haplotype": ["ht-2c19"]},
        {"geneItem": ["HGNC:2623"], "genotype": ["gt-2c9"]},
        {"geneItem": ["BRCA1"]},
    ]
    answers = _answers(_get(client, "find-subject-haplotypes", "subject=Patient/p1"))
    assert answers == [
        {"geneItem": ["CYP2C19"], "genotype": ["gt-2c19"], "haplotype": ["ht-2c19"]},
        {"geneItem": ["CYP2C9"], "genotype": ["gt-2c9"]},
    ]
    assert _get(client, "find-subject-haplotypes", "subject=Patient/p6")["parameter"] == []


# -- $find-subject-tx-implications / $find-subject-dx-implications -----------------------------


def test_tx_implications(client: Any) -> None:
    everything = _answers(_get(client, "find-subject-tx-implications", "subject=Patient/p1"))
    assert everything == [{"implication": ["tx-2c19"]}, {"genotype": ["gt-2c19"]}]
    assert _answers(_get(client, "find-subject-tx-implications", "subject=Patient/p1&haplotypes=*1/*2")) == everything
    assert _get(client, "find-subject-tx-implications", "subject=Patient/p1&haplotypes=*1/*1")["parameter"] == []
    assert _answers(_get(client, "find-subject-tx-implications", "subject=Patient/p1&treatments=32968")) == everything
    query = "subject=Patient/p1&treatments=http://www.nlm.nih.gov/research/umls/rxnorm|32968"
    assert _answers(_get(client, "find-subject-tx-implications", query)) == everything
    assert (
        _answers(_get(client, "find-subject-tx-implications", "subject=Patient/p1&treatments=Clopidogrel"))
        == everything
    )
    assert _get(client, "find-subject-tx-implications", "subject=Patient/p1&treatments=warfarin")["parameter"] == []
    assert _get(client, "find-subject-tx-implications", "subject=Patient/p2")["parameter"] == []


def test_dx_implications(client: Any) -> None:
    # ClinVar: 4 implications in p1's file (the G>C,T record has two ALTs: none)
    everything = _answers(_get(client, "find-subject-dx-implications", "subject=Patient/p1"))
    assert sum(1 for a in everything if "implication" in a) == 4
    assert sum(1 for a in everything if "variant" in a) == 4
    ranged = _answers(
        _get(client, "find-subject-dx-implications", "subject=Patient/p1&ranges=NC_000013.10:32914000-32916999")
    )
    assert sum(1 for a in ranged if "implication" in a) == 2  # BRCA2 deletion, the VUS; 32916999 is left out
    specific = _get(client, "find-subject-dx-implications", "subject=Patient/p1&variants=NC_000013.10:32914438:T:")
    implication = specific["parameter"][0]["resource"]
    assert implication["component"][0]["valueCodeableConcept"]["coding"][0]["code"] == "LA6668-3"  # pathogenic
    assert [p["name"] for p in specific["parameter"]] == ["implication", "variant"]
    assert _get(client, "find-subject-dx-implications", "subject=Patient/p1&conditions=C0006142")["parameter"] == []
    _get(client, "find-subject-dx-implications", "subject=Patient/p1&treatments=32968", 400)


def test_unknown_operation(client: Any) -> None:
    response = client.get(f"{OP}find-nothing?subject=Patient/p1")
    assert response.status_code == 404 and response.json["resourceType"] == "OperationOutcome"
