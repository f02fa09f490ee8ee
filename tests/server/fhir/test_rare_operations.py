"""Patient/$prioritize-variants and Patient/$similar end to end, on SQLite and PostgreSQL.

A small synthetic family and cohort, written through the REST API:

- p1 (male): Marfan phenotypes (arachnodactyly, ectopia lentis; aortic root aneurysm as a Condition),
  seizures excluded; variants: FBN1 stop-gained (het, de novo: neither parent has it), CFTR
  missense (het, from the mother; ClinVar pathogenic), SCN1A synonymous (het, common), TTN
  missense (het, from the father). Mother m1 and father f1 have their own calls.
- p1 also has the real ingested VCF tests/data/vcf/vep_clinvar_grch37.vcf (BRCA2 frameshift
  pathogenic …) in the second test family (p9) to check the path from $ingest-vcf.
- p2: Marfan-like phenotypes, a rare FBN1 frameshift: the most similar patient.
- p3: the same phenotypes as p1, but an active Consent denying research use: never returned.
- p4: cystic fibrosis phenotypes: dissimilar.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from server.fhir.operations import ingest_vcf as ingest
from server.fhir.operations import rare
from server.fhir.validation import validate_resource
from tests.conftest import make_app, postgres_url

HPO = "http://human-phenotype-ontology.org"
LOINC = "http://loinc.org"
TBD = "http://hl7.org/fhir/uv/genomics-reporting/CodeSystem/tbd-codes-cs"
VCF = Path(__file__).resolve().parents[2] / "data" / "vcf" / "vep_clinvar_grch37.vcf"
ZYGOSITY = {"het": "LA6706-1", "hom": "LA6705-3", "hemi": "LA6707-9"}
CHROMOSOMES = {"FBN1": "NC_000015.10", "CFTR": "NC_000007.14", "SCN1A": "NC_000002.12", "TTN": "NC_000002.12"}


def loinc(code: str) -> dict[str, Any]:
    return {"coding": [{"system": LOINC, "code": code}]}


def phenotype(id_: str, patient: str, code: str, present: bool = True) -> dict[str, Any]:
    return {
        "resourceType": "Observation",
        "id": id_,
        "status": "final",
        "code": {"coding": [{"system": HPO, "code": code}]},
        "subject": {"reference": f"Patient/{patient}"},
        "valueCodeableConcept": loinc("LA9633-4" if present else "LA9634-2"),
    }


def variant(id_: str, patient: str, gene: str, start: int, zygosity: str, consequence: str,
            clinvar: str | None = None, af: float | None = None) -> list[dict[str, Any]]:  # fmt: skip
    subject = {"reference": f"Patient/{patient}"}
    components = [
        {"code": loinc("48018-6"), "valueCodeableConcept": {"coding": [
            {"system": "http://www.genenames.org/geneId", "code": f"HGNC:{gene}", "display": gene}]}},
        {"code": loinc("48013-7"), "valueCodeableConcept": {"coding": [
            {"system": "http://www.ncbi.nlm.nih.gov/refseq", "code": CHROMOSOMES[gene]}]}},
        {"code": loinc("81254-5"), "valueRange": {"low": {"value": start}, "high": {"value": start + 1}}},
        {"code": loinc("69547-8"), "valueString": "C"},
        {"code": loinc("69551-0"), "valueString": "T"},
        {"code": loinc("53034-5"), "valueCodeableConcept": loinc(ZYGOSITY[zygosity])},
    ]  # fmt: skip
    if af is not None:
        components.append({"code": loinc("92821-8"), "valueQuantity": {"value": af}})
    out = [
        {"resourceType": "Observation", "id": id_, "status": "final", "code": loinc("69548-6"), "subject": subject,
         "valueCodeableConcept": loinc("LA9633-4"), "component": components},
        {"resourceType": "Observation", "id": f"{id_}-mc", "status": "final",
         "code": {"coding": [{"system": TBD, "code": "molecular-consequence"}]}, "subject": subject,
         "focus": [{"reference": f"Observation/{id_}"}],
         "component": [{"code": {"coding": [{"system": TBD, "code": "feature-consequence"}]},
                        "valueCodeableConcept": {"coding": [
                            {"system": "http://www.sequenceontology.org", "code": "SO:0", "display": consequence}]}}]},
    ]  # fmt: skip
    if clinvar:
        out.append(
            {"resourceType": "Observation", "id": f"{id_}-di", "status": "final",
             "code": {"coding": [{"system": TBD, "code": "diagnostic-implication"}]}, "subject": subject,
             "derivedFrom": [{"reference": f"Observation/{id_}"}],
             "component": [{"code": loinc("53037-8"), "valueCodeableConcept": loinc(clinvar)}]}
        )  # fmt: skip
    return out


MARFAN = ["HP:0001166", "HP:0001083"]


def cohort() -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []
    for pid, gender in (("p1", "male"), ("m1", "female"), ("f1", "male"), ("p2", "female"), ("p3", "female"),
                        ("p4", "male"), ("p5", "female"), ("p9", "female")):  # fmt: skip
        out.append({"resourceType": "Patient", "id": pid, "gender": gender})
    out += [phenotype(f"p1-h{i}", "p1", code) for i, code in enumerate(MARFAN)]
    out.append(phenotype("p1-h9", "p1", "HP:0001250", present=False))  # seizures excluded
    out.append({"resourceType": "Condition", "id": "p1-c1", "subject": {"reference": "Patient/p1"},
                "code": {"coding": [{"system": HPO, "code": "HP:0002616"}]},
                "verificationStatus": {"coding": [{"system": "http://terminology.hl7.org/CodeSystem/"
                                                   "condition-ver-status", "code": "confirmed"}]}})  # fmt: skip
    out += variant("p1-v1", "p1", "FBN1", 48_500_000, "het", "stop_gained")
    out += variant("p1-v2", "p1", "CFTR", 117_500_000, "het", "missense_variant", clinvar="LA6668-3", af=0.0002)
    out += variant("p1-v3", "p1", "SCN1A", 166_000_000, "het", "synonymous_variant", af=0.2)
    out += variant("p1-v4", "p1", "TTN", 178_500_000, "het", "missense_variant", af=0.00001)
    out += variant("m1-v2", "m1", "CFTR", 117_500_000, "het", "missense_variant")
    out += variant("f1-v4", "f1", "TTN", 178_500_000, "het", "missense_variant")
    out += [phenotype(f"p2-h{i}", "p2", code) for i, code in enumerate([*MARFAN, "HP:0001519"])]
    out += variant("p2-v1", "p2", "FBN1", 48_600_000, "het", "frameshift_variant")
    out += [phenotype(f"p3-h{i}", "p3", code) for i, code in enumerate([*MARFAN, "HP:0002616"])]
    out += [phenotype(f"p4-h{i}", "p4", code) for i, code in enumerate(["HP:0002110", "HP:0001738"])]
    out.append({"resourceType": "Consent", "id": "p3-research", "status": "active",
                "scope": {"coding": [{"system": "http://terminology.hl7.org/CodeSystem/consentscope",
                                      "code": "research"}]},
                "category": [{"coding": [{"system": LOINC, "code": "57016-8"}]}],
                "patient": {"reference": "Patient/p3"},
                "policyRule": {"coding": [{"system": "http://terminology.hl7.org/CodeSystem/v3-ActCode",
                                           "code": "OPTOUT"}]},
                "provision": {"type": "deny"}})  # fmt: skip
    out += [phenotype(f"p9-h{i}", "p9", code) for i, code in enumerate(["HP:0003002", "HP:0100615"])]
    return out


@pytest.fixture(scope="module", params=["sqlite", "postgresql"])
def client(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    url = f"sqlite:///{tmp_path_factory.mktemp('rare')}/test.sqlite" if request.param == "sqlite" else postgres_url()
    app = make_app(url)
    test_client = app.test_client()
    for resource in cohort():
        response = test_client.put(f"/fhir/{resource['resourceType']}/{resource['id']}", json=resource)
        assert response.status_code in (200, 201), response.get_json()
    ingest.ingest_vcf(app.extensions["bigmed"], VCF, "p9")
    yield test_client
    app.extensions["bigmed"].store.close()


def genes(answer: dict[str, Any]) -> list[dict[str, Any]]:
    out = []
    for parameter in answer["parameter"]:
        if parameter["name"] == "gene":
            parts: dict[str, Any] = {}
            for part in parameter["part"]:
                value = next((v for k, v in part.items() if k.startswith("value")), part.get("part"))
                parts.setdefault(part["name"], []).append(value)
            out.append(parts)
    return out


def param(answer: dict[str, Any], name: str) -> list[Any]:
    return [next((v for k, v in p.items() if k.startswith("value") or k in ("resource", "part")), None)
            for p in answer["parameter"] if p["name"] == name]  # fmt: skip


def test_prioritize_variants_ranks_the_explaining_gene_first(client: Any) -> None:
    response = client.get("/fhir/Patient/p1/$prioritize-variants")
    assert response.status_code == 200
    answer = response.get_json()
    assert answer["resourceType"] == "Parameters"
    assert param(answer, "hpoRelease") == [rare.hpo_release()]
    assert {c["code"] for c in param(answer, "phenotype")} == {"HP:0001166", "HP:0001083", "HP:0002616"}
    assert [c["code"] for c in param(answer, "excludedPhenotype")] == ["HP:0001250"]
    ranked = genes(answer)
    first = ranked[0]
    assert first["symbol"] == ["FBN1"] and first["rank"] == [1] and first["inheritance"] == ["AD"]
    assert first["score"][0] > 0 and 0 < first["phenotypeScore"][0] <= 1 and first["variantScore"][0] == 1.0
    assert "FBN1" in first["explanation"][0] and "Marfan" in str(first)
    variant_parts = {p["name"]: p for p in first["variant"][0]}
    assert variant_parts["observation"]["valueReference"] == {"reference": "Observation/p1-v1"}
    assert variant_parts["zygosity"]["valueCode"] == "heterozygous"
    diseases = [p for d in first["disease"] for p in d if p["name"] == "code"]
    assert any(d["valueCoding"] == {"system": "https://omim.org", "code": "154700", "display": "Marfan syndrome"}
               for d in diseases)  # fmt: skip
    assert "SCN1A" not in [g["symbol"][0] for g in ranked[:1]]
    # POST with a Parameters body answers the same
    body = {"resourceType": "Parameters", "parameter": [{"name": "count", "valueInteger": 2}]}
    posted = client.post("/fhir/Patient/p1/$prioritize-variants", json=body).get_json()
    assert [g["symbol"] for g in genes(posted)] == [g["symbol"] for g in ranked[:2]]


def test_parents_make_the_de_novo_variant_visible(client: Any) -> None:
    answer = client.get("/fhir/Patient/p1/$prioritize-variants?mother=Patient/m1&father=f1").get_json()
    origins = {
        g["symbol"][0]: next(p["valueCode"] for p in g["variant"][0] if p["name"] == "origin") for g in genes(answer)
    }
    assert origins["FBN1"] == "de-novo" and origins.get("CFTR", "maternal") == "maternal"
    assert genes(answer)[0]["symbol"] == ["FBN1"] and "de novo" in genes(answer)[0]["explanation"][0]


def test_report_is_a_valid_preliminary_genomic_diagnostic_report(client: Any) -> None:
    answer = client.get("/fhir/Patient/p1/$prioritize-variants?report=true&count=3").get_json()
    (report,) = param(answer, "report")
    assert report["resourceType"] == "DiagnosticReport" and report["status"] == "preliminary"
    assert report["code"]["coding"][0]["code"] == "51969-4"
    assert {"reference": "Observation/p1-v1"} in report["result"]
    assert "FBN1" in report["conclusion"] and "not reviewed" in report["conclusion"]
    assert validate_resource(report) == []
    assert client.get("/fhir/DiagnosticReport?subject=Patient/p1").get_json().get("total", 0) == 0  # not stored


def test_ingested_vcf_calls_are_read(client: Any) -> None:
    answer = client.get("/fhir/Patient/p9/$prioritize-variants").get_json()
    first = genes(answer)[0]
    assert first["symbol"] == ["BRCA2"]
    labels = [p["valueString"] for v in first["variant"] for p in v if p["name"] == "label"]
    assert "ENSP00000369497.3:p.Ser1982ArgfsTer22" in labels
    assert "frameshift" in first["explanation"][0] and "ClinVar pathogenic" in first["explanation"][0]


def test_top_candidates_for_the_cds_service(client: Any) -> None:
    ctx = client.application.extensions["bigmed"]
    top = rare.top_candidates(ctx, "p1", 2)
    assert [c["gene"] for c in top][:1] == ["FBN1"] and len(top) <= 2
    assert top[0]["variants"] == ["Observation/p1-v1"] and top[0]["hpoRelease"] == rare.hpo_release()
    assert rare.top_candidates(ctx, "p4", 3) == []  # phenotypes but no variants


def test_errors_are_operation_outcomes(client: Any) -> None:
    cases = [
        ("/fhir/Patient/nobody/$prioritize-variants", 404, "not known"),
        ("/fhir/Patient/p1/$prioritize-variants?count=x", 400, "count"),
        ("/fhir/Patient/p1/$prioritize-variants?colour=red", 400, "unknown parameter"),
        ("/fhir/Patient/p1/$prioritize-variants?mother=Patient/nobody", 404, "mother"),
        ("/fhir/Patient/p1/$prioritize-variants?father=Patient/p4", 400, "no variant calls"),
        ("/fhir/Patient/p1/$prioritize-variants?report=maybe", 400, "report"),
        ("/fhir/Patient/p1/$similar?minScore=2", 400, "minScore"),
        ("/fhir/Patient/m1/$similar", 400, "no HPO phenotype"),
    ]
    for url, status, text in cases:
        response = client.get(url)
        body = response.get_json()
        assert response.status_code == status, (url, body)
        assert body["resourceType"] == "OperationOutcome" and text in body["issue"][0]["diagnostics"], url


def test_an_unknown_hpo_code_in_the_record_is_a_clear_error_and_an_obsolete_one_is_replaced(client: Any) -> None:
    client.put("/fhir/Observation/p5-h1", json=phenotype("p5-h1", "p5", "HP:0000057"))  # obsolete -> HP:0008665
    answer = client.get("/fhir/Patient/p5/$prioritize-variants").get_json()
    (replaced,) = param(answer, "replacedTerm")
    parts = {p["name"]: p for p in replaced}
    assert parts["obsolete"]["valueCode"] == "HP:0000057"
    assert parts["replacement"]["valueCoding"]["code"] == "HP:0008665"
    assert param(answer, "note")  # no variants: said so
    client.put("/fhir/Observation/p5-h2", json=phenotype("p5-h2", "p5", "HP:9999999"))
    response = client.get("/fhir/Patient/p5/$prioritize-variants")
    assert response.status_code == 422
    diagnostics = response.get_json()["issue"][0]["diagnostics"]
    assert "Observation/p5-h2" in diagnostics and "HP:9999999" in diagnostics
    client.delete("/fhir/Observation/p5-h2")


def test_similar_patients_by_phenotype_and_gene_without_those_who_denied_research(client: Any) -> None:
    answer = client.get("/fhir/Patient/p1/$similar?minScore=0").get_json()
    matches = [{p["name"]: p for p in m} for m in param(answer, "match")]
    order = [m["patient"]["valueReference"]["reference"] for m in matches]
    assert order[0] == "Patient/p2"
    assert "Patient/p3" not in order  # denied research use
    assert "Patient/p1" not in order
    best = matches[0]
    assert best["sharedGene"]["valueString"] == "FBN1"
    assert "FBN1" in best["explanation"]["valueString"] and best["score"]["valueDecimal"] > 0.5
    scores = [m["score"]["valueDecimal"] for m in matches]
    assert scores == sorted(scores, reverse=True)
    cf = next(m for m in matches if m["patient"]["valueReference"]["reference"] == "Patient/p4")
    assert cf["score"]["valueDecimal"] < best["score"]["valueDecimal"]
    # minScore and count narrow the answer
    strict = client.get(f"/fhir/Patient/p1/$similar?minScore={cf['score']['valueDecimal'] + 0.01}&count=5").get_json()
    assert "Patient/p4" not in str(strict) and len(param(client.get("/fhir/Patient/p1/$similar?count=1&minScore=0")
                                                          .get_json(), "match")) == 1  # fmt: skip
    # withdrawing the denial makes p3 appear
    consent = client.get("/fhir/Consent/p3-research").get_json()
    client.put("/fhir/Consent/p3-research", json={**consent, "status": "inactive"})
    again = client.get("/fhir/Patient/p1/$similar?minScore=0").get_json()
    assert "Patient/p3" in str(again)
    client.put("/fhir/Consent/p3-research", json=consent)


def test_capability_statement_lists_the_operations_with_the_hpo_release(client: Any) -> None:
    statement = client.get("/fhir/metadata").get_json()
    patient = next(r for r in statement["rest"][0]["resource"] if r["type"] == "Patient")
    operations = {o["name"]: o for o in patient.get("operation", [])}
    for name in ("prioritize-variants", "similar"):
        assert rare.hpo_release() in operations[name]["documentation"]
