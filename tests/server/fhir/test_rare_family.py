"""Parents from the record for Patient/$prioritize-variants: RelatedPerson and FamilyMemberHistory.

The family (written through the REST API, on SQLite and PostgreSQL):

- p1 (male, Marfan phenotypes): FBN1 stop-gained (het, in neither parent: de novo), CFTR missense
  (het, also in the mother), TTN missense (het, also in the father);
- mother m1 is known through RelatedPerson rp-m1 (relationship NMTH) that Patient m1 links to
  (``Patient.link.other``); father f1 through FamilyMemberHistory fmh-f1 (FTH) whose
  ``familymemberhistory-patient-record`` extension names Patient f1;
- p2 (female): the same calls; her parent is a RelatedPerson coded PRN sharing an identifier with
  Patient m2 (female: the mother); a FamilyMemberHistory names a father without a record here;
- p3: two different mothers (ambiguous), and a father whose Patient has no calls.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest

from server.fhir.operations import rare
from tests.conftest import make_app, postgres_url
from tests.server.fhir.test_rare_operations import MARFAN, genes, param, phenotype, variant

ROLE = "http://terminology.hl7.org/CodeSystem/v3-RoleCode"
MRN = "urn:oid:2.16.578.1.12.4.1.4.1"


def related(id_: str, patient: str, code: str, **extra: Any) -> dict[str, Any]:
    return {"resourceType": "RelatedPerson", "id": id_, "patient": {"reference": f"Patient/{patient}"},
            "relationship": [{"coding": [{"system": ROLE, "code": code}]}], **extra}  # fmt: skip


def history(id_: str, patient: str, code: str, record: str | None = None, **extra: Any) -> dict[str, Any]:
    out: dict[str, Any] = {"resourceType": "FamilyMemberHistory", "id": id_, "status": "completed",
                           "patient": {"reference": f"Patient/{patient}"},
                           "relationship": {"coding": [{"system": ROLE, "code": code}]}, **extra}  # fmt: skip
    if record:
        out["extension"] = [
            {
                "url": "http://hl7.org/fhir/StructureDefinition/familymemberhistory-patient-record",
                "valueReference": {"reference": f"Patient/{record}"},
            }
        ]
    return out


def child_calls(pid: str) -> list[dict[str, Any]]:
    return [
        *variant(f"{pid}-v1", pid, "FBN1", 48_500_000, "het", "stop_gained"),
        *variant(f"{pid}-v2", pid, "CFTR", 117_500_000, "het", "missense_variant", af=0.0002),
        *variant(f"{pid}-v4", pid, "TTN", 178_500_000, "het", "missense_variant", af=0.00001),
        *(phenotype(f"{pid}-h{i}", pid, code) for i, code in enumerate(MARFAN)),
    ]


def family() -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = [
        {"resourceType": "Patient", "id": "p1", "gender": "male"},
        {"resourceType": "Patient", "id": "p2", "gender": "female"},
        {"resourceType": "Patient", "id": "p3", "gender": "female"},
        {"resourceType": "Patient", "id": "m1", "gender": "female",
         "link": [{"other": {"reference": "RelatedPerson/rp-m1"}, "type": "seealso"}]},
        {"resourceType": "Patient", "id": "f1", "gender": "male"},
        {"resourceType": "Patient", "id": "m2", "gender": "female", "identifier": [{"system": MRN, "value": "M|2"}]},
        {"resourceType": "Patient", "id": "m3", "gender": "female"},
        {"resourceType": "Patient", "id": "f3", "gender": "male"},
    ]  # fmt: skip
    out += child_calls("p1") + child_calls("p2") + child_calls("p3")
    out += variant("m1-v2", "m1", "CFTR", 117_500_000, "het", "missense_variant")
    out += variant("f1-v4", "f1", "TTN", 178_500_000, "het", "missense_variant")
    out += variant("m2-v2", "m2", "CFTR", 117_500_000, "het", "missense_variant")
    out += variant("m3-v2", "m3", "CFTR", 117_500_000, "het", "missense_variant")
    out += [
        related("rp-m1", "p1", "NMTH"),
        history("fmh-f1", "p1", "FTH", record="f1"),
        related("rp-x1", "p1", "STPFTH"),  # a stepfather is no biological parent: ignored
        related("rp-p2", "p2", "PRN", identifier=[{"system": MRN, "value": "M|2"}]),
        history("fmh-f2", "p2", "NFTH"),  # no record of him here
        history("fmh-m3", "p3", "MTH", record="m3"),
        history("fmh-m1", "p3", "NMTH", record="m1"),
        history("fmh-f3", "p3", "FTH", record="f3"),
    ]
    return out


@pytest.fixture(scope="module", params=["sqlite", "postgresql"])
def client(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    url = f"sqlite:///{tmp_path_factory.mktemp('fam')}/test.sqlite" if request.param == "sqlite" else postgres_url()
    app = make_app(url, audit=False)  # the audit trail is not under test here
    test_client = app.test_client()
    for resource in family():
        response = test_client.put(f"/fhir/{resource['resourceType']}/{resource['id']}", json=resource)
        assert response.status_code in (200, 201), response.get_json()
    yield test_client
    app.extensions["bigmed"].store.close()


def origins(answer: dict[str, Any]) -> dict[str, str | None]:
    out = {}
    for gene in genes(answer):
        parts = {p["name"]: p for p in gene["variant"][0]}
        out[gene["symbol"][0]] = parts["origin"]["valueCode"] if "origin" in parts else None
    return out


def parents(answer: dict[str, Any]) -> dict[str, tuple[str, str]]:
    out = {}
    for parts in param(answer, "parent"):
        named = {p["name"]: p for p in parts}
        source = named["source"].get("valueReference", {}).get("reference") or named["source"]["valueString"]
        out[named["role"]["valueCode"]] = (named["patient"]["valueReference"]["reference"], source)
    return out


def test_parents_from_related_person_and_family_member_history(client: Any) -> None:
    answer = client.get("/fhir/Patient/p1/$prioritize-variants").get_json()
    assert parents(answer) == {
        "mother": ("Patient/m1", "RelatedPerson/rp-m1"),
        "father": ("Patient/f1", "FamilyMemberHistory/fmh-f1"),
    }
    found = origins(answer)
    assert found["FBN1"] == "de-novo" and found["CFTR"] == "maternal" and found["TTN"] == "paternal"
    assert genes(answer)[0]["symbol"] == ["FBN1"] and "de novo" in genes(answer)[0]["explanation"][0]
    # the same as naming the parents explicitly
    explicit = client.get("/fhir/Patient/p1/$prioritize-variants?mother=m1&father=f1&family=false").get_json()
    assert origins(explicit) == found
    assert parents(explicit) == {"mother": ("Patient/m1", "parameter"), "father": ("Patient/f1", "parameter")}
    # family=false: the record's parents are not used
    alone = client.get("/fhir/Patient/p1/$prioritize-variants?family=false").get_json()
    assert param(alone, "parent") == [] and set(origins(alone).values()) == {None}
    assert client.get("/fhir/Patient/p1/$prioritize-variants?family=maybe").status_code == 400


def test_a_parameter_wins_over_the_record_for_its_role(client: Any) -> None:
    answer = client.get("/fhir/Patient/p1/$prioritize-variants?mother=Patient/m2").get_json()
    assert parents(answer) == {
        "mother": ("Patient/m2", "parameter"),
        "father": ("Patient/f1", "FamilyMemberHistory/fmh-f1"),
    }


def test_parent_by_shared_identifier_and_sex_and_a_parent_without_record(client: Any) -> None:
    answer = client.get("/fhir/Patient/p2/$prioritize-variants").get_json()
    assert parents(answer) == {"mother": ("Patient/m2", "RelatedPerson/rp-p2")}
    found = origins(answer)
    assert found["CFTR"] == "maternal" and found["FBN1"] is None  # one parent: de novo cannot be told
    notes = " ".join(param(answer, "note"))
    assert "FamilyMemberHistory/fmh-f2" in notes and "without a Patient record" in notes


def test_ambiguous_mother_and_a_father_without_calls_are_not_used(client: Any) -> None:
    answer = client.get("/fhir/Patient/p3/$prioritize-variants").get_json()
    assert parents(answer) == {}
    notes = " ".join(param(answer, "note"))
    assert "more than one mother" in notes and "Patient/m1" in notes and "Patient/m3" in notes
    assert "father Patient/f3" in notes and "no variant calls" in notes
    assert genes(answer)[0]["symbol"] == ["FBN1"]  # the ranking goes on


def test_record_parents_and_top_candidates_use_them(client: Any) -> None:
    ctx = client.application.extensions["bigmed"]
    found, notes = rare.record_parents(ctx, "p1")
    assert sorted((p.role, p.patient_id, p.source) for p in found) == [
        ("father", "f1", "FamilyMemberHistory/fmh-f1"),
        ("mother", "m1", "RelatedPerson/rp-m1"),
    ]
    assert notes == []
    top = rare.top_candidates(ctx, "p1", 3)
    assert top[0]["gene"] == "FBN1" and "de novo" in top[0]["explanation"]
    assert "de novo" not in rare.top_candidates(ctx, "p1", 3, family=False)[0]["explanation"]
