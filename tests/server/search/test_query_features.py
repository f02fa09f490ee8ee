"""Composites, modifiers, chains, ``_has`` and common parameters on hand-made data, on both
backends (http://hl7.org/fhir/R4/search.html: #composite, #modifiers, #chaining, #has, #all)."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest

from tests.server.search.searchdata import RESOURCES
from tests.server.search.searchutil import bundle, ids, loaded_app, warnings


@pytest.fixture(scope="module", params=["sqlite", "postgresql"])
def data(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    """The hand-made resources, loaded once per backend: the tests here only read."""
    with loaded_app(request.param, tmp_path_factory.mktemp("features"), RESOURCES) as app:
        yield app.test_client()


@pytest.mark.parametrize(
    ("query", "expected"),
    [
        # composite: both components on the same item (search.html#composite)
        ("Observation?code-value-quantity=http://loinc.org|718-7$gt10", ["hb1"]),
        ("Observation?code-value-quantity=718-7$lt10", ["hb2"]),
        ("Observation?code-value-quantity=718-7$13.5|http://unitsofmeasure.org|g/dL", ["hb1"]),
        ("Observation?code-value-quantity=718-7$13.5|http://unitsofmeasure.org|mg", []),
        ("Observation?component-code-value-quantity=http://loinc.org|8480-6$gt140", ["bp2"]),
        ("Observation?component-code-value-quantity=8462-4$gt75", ["bp1"]),
        ("Observation?component-code-value-quantity=8462-4$gt100", []),  # 150 is the other component
        ("Observation?component-code-value-quantity=8480-6$gt140,8462-4$gt75", ["bp1", "bp2"]),
        ("Observation?combo-code-value-quantity=718-7$13.5", ["hb1"]),
        ("Observation?combo-code-value-quantity=8480-6$120", ["bp1"]),
        ("Observation?code-value-quantity:missing=false", ["hb1", "hb2"]),
        ("MolecularSequence?chromosome-variant-coordinate=1$lt13$gt12", ["seq1"]),
        ("MolecularSequence?chromosome-variant-coordinate=1$gt12$gt12", []),
        ("MolecularSequence?chromosome-window-coordinate=1$10$20", ["seq1"]),
        # token modifiers
        ("Patient?identifier:of-type=http://terminology.hl7.org/CodeSystem/v2-0203|MR|123", ["ola"]),
        ("Patient?identifier:of-type=http://terminology.hl7.org/CodeSystem/v2-0203|MR|999", []),
        ("Patient?identifier=urn:mrn|123", ["ola"]),
        ("Patient?identifier:text=medical", ["ola"]),
        ("Observation?code:text=HEMOGLOBINE", ["hb1"]),  # display, case and accents ignored
        ("Observation?code:text=blood", ["bp1", "hb1"]),  # start of the display or of a word in it
        ("Observation?code:text=clinical note", ["byid"]),
        ("Observation?code:not=http://loinc.org|718-7", ["bp1", "bp2", "byid"]),
        ("Observation?code=http://loinc.org|", ["bp1", "bp2", "hb1", "hb2"]),
        ("Observation?code=85354-9,718-7&status=preliminary", ["hb2"]),
        ("Observation?status:not=final", ["hb2"]),
        # references
        ("Observation?subject:identifier=urn:mrn|42", ["byid"]),
        ("Observation?subject=Patient/ola/_history/1", ["bp1", "hb1"]),
        ("Observation?subject:Patient=ola", ["bp1", "hb1"]),
        ("Observation?subject:missing=true", []),
        ("DiagnosticReport?result=Observation/hb1", ["dr1"]),
        # chains (search.html#chaining)
        ("Observation?subject:Patient.name=nord", ["bp1", "hb1", "hb2"]),
        ("Observation?subject.name=alvarez", ["bp2"]),
        ("Observation?subject:Patient.organization.name=acme", ["bp1", "bp2", "hb1"]),
        ("Observation?subject.organization.name=beta", ["hb2"]),
        ("Observation?subject:Patient.organization:Organization.name:exact=Acme Hospital", ["bp1", "bp2", "hb1"]),
        ("Observation?subject:Patient._id=jose", ["bp2"]),
        ("Observation?performer:Practitioner.name=who", ["hb1"]),
        ("Observation?subject:Patient.gender=female&code=718-7", ["hb2"]),
        ("Encounter?subject.organization.name=acme", ["enc1"]),
        ("DiagnosticReport?result.code=85354-9", ["dr1"]),
        ("DiagnosticReport?result.subject:Patient.name=ola", ["dr1"]),
        ("Patient?general-practitioner.name=doctor", ["ola"]),
        # _has (search.html#has), nested
        ("Patient?_has:Observation:patient:code=718-7", ["kari", "ola"]),
        ("Patient?_has:Observation:subject:code=85354-9", ["jose", "ola"]),
        ("Patient?_has:Observation:patient:code=718-7&gender=female", ["kari"]),
        ("Patient?_has:Observation:patient:_has:DiagnosticReport:result:status=final", ["ola"]),
        ("Organization?_has:Patient:organization:_has:Observation:patient:code=718-7", ["org1", "org2"]),
        ("Organization?_has:Patient:organization:name=alvarez", ["org1"]),
        ("Patient?_has:Observation:patient:subject:Patient.name=kari", ["kari"]),
        # common parameters
        ("Patient?_tag=urn:tags|vip", ["ola"]),
        ("Patient?_profile=http://example.org/StructureDefinition/p", ["ola"]),
        ("Patient?_security=R", ["ola"]),
        ("Patient?_source=http://source.example/ehr", ["ola"]),
        ("Patient?_id:not=ola", ["jose", "kari"]),
        ("Patient?_lastUpdated=ge2020-01-01&_tag:missing=true", ["jose", "kari"]),
        # strings: LIKE wildcards in the value are literal
        ("Organization?name=beta clinic_", ["org2"]),
        ("Organization?name=beta clinic%", []),
        ("Organization?name:contains=c_1", ["org2"]),
        ("Organization?name:contains=%", []),
        ("Organization?name:contains=HOSP", ["org1"]),
        # uri
        ("ValueSet?url=http://example.org/fhir/ValueSet/colours", ["vs1"]),
        ("ValueSet?url=http://example.org/fhir/ValueSet", []),
        ("ValueSet?url:below=http://example.org/fhir", ["vs1"]),
        ("ValueSet?url:above=http://example.org/fhir/ValueSet/colours/extra", ["vs1"]),
        ("ValueSet?url:above=http://example.org/fhir", []),
        # number
        ("MolecularSequence?variant-start=12", ["seq1"]),
        ("MolecularSequence?variant-start=gt11", ["seq1"]),
        ("MolecularSequence?variant-start=gt12", []),
        ("MolecularSequence?variant-start=ge12&variant-end=le13", ["seq1"]),
        ("MolecularSequence?variant-start=ap11", ["seq1"]),
        ("MolecularSequence?variant-start=ne12", []),
    ],
)
def test_search(data: Any, query: str, expected: list[str]) -> None:
    assert sorted(ids(bundle(data, query))) == expected


@pytest.mark.parametrize(
    ("query", "expected"),
    [
        # hb2 is [2024-06-01, 2024-06-04): the spec's range semantics (search.html#prefix)
        ("Observation?date=eq2024-06", ["hb2"]),
        ("Observation?date=ge2024-06-03", []),  # above 06-03 is [06-04, …): no overlap; not contained
        ("Observation?date=ge2024-06-02", ["hb2"]),
        ("Observation?date=le2024-06-02", ["bp1", "bp2", "hb1", "hb2"]),
        ("Observation?date=gt2024-06-03", []),
        ("Observation?date=lt2024-06-01", ["bp1", "bp2", "hb1"]),
        ("Observation?date=sa2024-05-31", ["hb2"]),
        ("Observation?date=eb2024-06-04", ["bp1", "bp2", "hb1", "hb2"]),
        ("Observation?date=eb2024-06-03", ["bp1", "bp2", "hb1"]),
        ("Observation?date=ne2024-06", ["bp1", "bp2", "hb1"]),
        ("Observation?date=2024-05-01T08:00:00Z", ["hb1"]),
        ("Observation?date=2024-05-01T08:00Z", ["hb1"]),
        ("Observation?date=ge2023-01-01&date=lt2023-02-01", ["bp1"]),
    ],
)
def test_date_prefixes(data: Any, query: str, expected: list[str]) -> None:
    assert sorted(ids(bundle(data, query))) == expected


def test_date_approximately(data: Any) -> None:
    # ap: the search range widened by 10% of its distance from now, so the answer depends on today
    found = ids(bundle(data, "Observation?date=ap2024-06-02"))
    assert "hb2" in found
    assert ids(bundle(data, "Observation?date=ap1900-01-01")) == []


@pytest.mark.parametrize(
    ("query", "fragment"),
    [
        ("Observation?code:in=http://example.org/vs", "':in'"),
        ("Patient?name:text=x", "':text'"),
        ("Observation?date=2024-13-01", "Invalid value"),
        ("Observation?value-quantity=abc", "Invalid value"),
        ("Observation?subject.foo=x", "foo"),
        ("Observation?code.name=x", "not a reference"),
        ("Patient?_has:Observation:code:status=final", "not a reference"),
        ("Patient?_has:Foo:patient:code=1", "unknown resource type"),
        ("Patient?identifier:of-type=a|b", "of-type"),
        ("Observation?code-value-quantity=718-7", "components"),
        ("Observation?subject:Organization=x", "cannot refer"),
        ("Patient?_cursor=garbage", "_cursor"),
        ("Patient?_include=Patient", "Type:parameter"),
    ],
)
def test_bad_requests(data: Any, query: str, fragment: str) -> None:
    resp = data.get(f"/fhir/{query}", headers={"Prefer": "handling=strict"})
    assert resp.status_code == 400, resp.get_json()
    body = resp.get_json()
    assert body["resourceType"] == "OperationOutcome" and fragment in body["issue"][0]["diagnostics"]


@pytest.mark.parametrize(
    "query",
    [
        "Location?near=42.25|-83.69|10|km",
        "Patient?_text=cancer",
        "Patient?_content=cancer",
        "Patient?_contained=true",
        "Observation?subject.foo=x",
    ],
)
def test_unsupported_parameters_are_reported_or_strict(data: Any, query: str) -> None:
    name = query.split("?", 1)[1].split("=", 1)[0]
    lenient = bundle(data, query)
    assert any(name in w for w in warnings(lenient)), warnings(lenient)
    strict = data.get(f"/fhir/{query}", headers={"Prefer": "handling=strict"})
    assert strict.status_code == 400 and name in strict.get_json()["issue"][0]["diagnostics"]


def test_post_search_with_chains(data: Any) -> None:
    resp = data.post(
        "/fhir/Observation/_search",
        data={"subject:Patient.name": "nord", "code": "718-7"},
        content_type="application/x-www-form-urlencoded",
    )
    assert resp.status_code == 200
    assert sorted(ids(resp.get_json())) == ["hb1", "hb2"]
