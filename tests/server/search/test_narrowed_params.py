"""Narrowed reference parameters: ``patient`` is ``subject`` narrowed to Patients.

R4 defines Observation's ``patient`` as ``Observation.subject.where(resolve() is Patient)``
(``Registry.narrowings``: 47 such pairs). Its reference rows would repeat ``subject``'s rows of
Patients, so only ``subject``'s are stored, with the target type ``resolve()`` sees (the url's,
else ``Reference.type``), and every reader of ``patient`` reads them: search with every value
form and modifier, chains, ``_has``, ``_include``/``_revinclude``, ``_sort``, compartments and a
search over several types where ``patient`` is narrowed on one and plain on the other. Each is
checked on both backends against resources whose subject is a Patient, a Group, a urn, an
absolute url, or an identifier with and without a type.
"""

from __future__ import annotations

from typing import Any

import pytest

from server.search.registry import Registry, SearchParam, default_registry
from tests.server.search.searchutil import backend_fixtures, bundle, entries, ids, warnings

URN = "urn:uuid:6f1c3c1e-1b7a-4a55-9b43-1d2f0e6c7a10"
ABSOLUTE = "http://other.example/fhir/Patient/p2"
LOINC = "http://loinc.org"


def _obs(id_: str, subject: dict[str, Any] | None, code: str = "718-7") -> dict[str, Any]:
    out: dict[str, Any] = {
        "resourceType": "Observation",
        "id": id_,
        "status": "final",
        "code": {"coding": [{"system": LOINC, "code": code}]},
    }
    if subject is not None:
        out["subject"] = subject
    return out


RESOURCES: list[dict[str, Any]] = [
    {"resourceType": "Patient", "id": "p1", "name": [{"family": "Alpha"}]},
    {"resourceType": "Patient", "id": "p2", "name": [{"family": "Beta"}]},
    {"resourceType": "Group", "id": "g1", "type": "person", "actual": True, "name": "Alpha"},
    {"resourceType": "Practitioner", "id": "dr1", "name": [{"family": "Doctor"}]},
    _obs("o-patient", {"reference": "Patient/p1"}, "2345-7"),
    _obs("o-group", {"reference": "Group/g1"}),
    _obs("o-urn", {"reference": URN, "type": "Patient"}),
    _obs("o-ident", {"identifier": {"system": "urn:mrn", "value": "42"}, "type": "Patient"}),
    _obs("o-untyped", {"identifier": {"system": "urn:mrn", "value": "43"}}),
    _obs("o-absolute", {"reference": ABSOLUTE}),
    _obs("o-none", None),
    {
        "resourceType": "Condition",
        "id": "c1",
        "subject": {"reference": "Patient/p1"},
        "asserter": {"reference": "Practitioner/dr1"},
    },
    {"resourceType": "Condition", "id": "c-group", "subject": {"reference": "Group/g1"}},
    {
        "resourceType": "AllergyIntolerance",
        "id": "a1",
        "patient": {"reference": "Patient/p1"},
    },
    {
        "resourceType": "Appointment",
        "id": "ap1",
        "status": "booked",
        "participant": [
            {"actor": {"reference": "Patient/p1"}, "status": "accepted"},
            {"actor": {"reference": "Practitioner/dr1"}, "status": "accepted"},
        ],
    },
]
OBSERVATIONS = sorted(r["id"] for r in RESOURCES if r["resourceType"] == "Observation")


def test_r4s_narrowed_parameters() -> None:
    registry = default_registry()
    found = {
        (t, code): (q.code, target)
        for t in registry.resource_types()
        for code, (q, target) in registry.narrowings(t).items()
    }
    assert len(found) == 47
    assert found[("Observation", "patient")] == ("subject", "Patient")
    assert found[("Task", "patient")] == ("subject", "Patient")  # Task.for is subject's expression
    assert found[("Appointment", "practitioner")] == ("actor", "Practitioner")
    assert found[("Person", "relatedperson")] == ("link", "RelatedPerson")
    # AllergyIntolerance.patient is an element of its own; AuditEvent.patient narrows two elements
    # that no single parameter has
    assert ("AllergyIntolerance", "patient") not in found and ("AuditEvent", "patient") not in found


def _with(registry: Registry, code: str, base: str, expression: str) -> Registry:
    """``registry`` and one more reference parameter ``code`` on ``base``."""
    extra = SearchParam(
        code, f"http://example.org/sp/{code}", "reference", (base,), expression, expressions=((base, expression),)
    )
    return Registry([*registry.all(), extra], registry.types)


def test_a_parameter_is_narrowed_only_to_one_type_of_an_existing_parameter() -> None:
    registry = default_registry()
    two_types = _with(
        registry, "either", "Observation", "Observation.subject.where(resolve() is Patient or resolve() is Group)"
    )
    assert "either" not in two_types.narrowings("Observation")
    no_source = _with(registry, "by-focus", "Observation", "Observation.note.author.where(resolve() is Patient)")
    assert no_source.narrowing("Observation", "by-focus") is None  # no parameter is Observation.note.author
    parenthesised = _with(registry, "pat2", "Observation", "(Observation.subject.where(resolve() is Patient))")
    narrowed = parenthesised.narrowing("Observation", "pat2")
    assert narrowed is not None and (narrowed[0].code, narrowed[1]) == ("subject", "Patient")


loaded, client = backend_fixtures(RESOURCES, "narrowed")


def test_no_narrowed_reference_rows_are_stored(loaded: Any) -> None:
    store = loaded.extensions["bigmed"].store
    rows = store.query("SELECT res_type, COUNT(*) FROM idx_reference WHERE param = ? GROUP BY res_type", ("patient",))
    assert dict(rows) == {"AllergyIntolerance": 1}  # its own element, not a narrowing
    assert store.query("SELECT COUNT(*) FROM idx_reference WHERE param = ?", ("practitioner",))[0][0] == 0
    # identifiers keep their own token rows (:identifier)
    tokens = store.query("SELECT code FROM idx_token WHERE param = ? AND res_type = ?", ("patient", "Observation"))
    assert [r[0] for r in tokens] == ["42"]
    typed = store.query("SELECT target_type FROM idx_reference WHERE param = ? AND url = ?", ("subject", URN))
    assert [r[0] for r in typed] == ["Patient"]


@pytest.mark.parametrize(
    ("query", "expected"),
    [
        ("patient=p1", ["o-patient"]),
        ("patient=Patient/p1", ["o-patient"]),
        ("patient:Patient=p1", ["o-patient"]),
        ("patient=p2", ["o-absolute"]),
        (f"patient={ABSOLUTE}", ["o-absolute"]),
        (f"patient={URN}", ["o-urn"]),
        ("patient=g1", []),  # a Group is no patient
        ("subject=g1", ["o-group"]),
        ("patient=p1,g1,p2", ["o-absolute", "o-patient"]),
        ("patient:identifier=urn:mrn|42", ["o-ident"]),
        ("patient:identifier=urn:mrn|43", []),  # no type: resolve() is not Patient
        ("subject:identifier=urn:mrn|43", ["o-untyped"]),
        ("patient:missing=false", ["o-absolute", "o-ident", "o-patient", "o-urn"]),
        ("patient:missing=true", ["o-group", "o-none", "o-untyped"]),
        ("patient.name=alpha", ["o-patient"]),
        ("patient:Patient.name=beta", ["o-absolute"]),  # an absolute url's Type/id, as for subject
        ("subject:Group.type=person", ["o-group"]),
        ("patient.name=beta,alpha", ["o-absolute", "o-patient"]),
        ("patient=p1&code=2345-7", ["o-patient"]),
        ("patient=p1&code=718-7", []),
    ],
)
def test_narrowed_search(client: Any, query: str, expected: list[str]) -> None:
    assert sorted(ids(bundle(client, f"Observation?{query}"))) == expected


def test_has_include_and_revinclude_through_a_narrowed_parameter(client: Any) -> None:
    assert ids(bundle(client, "Patient?_has:Observation:patient:code=2345-7")) == ["p1"]
    assert ids(bundle(client, "Group?_has:Observation:patient:code=718-7")) == []
    assert ids(bundle(client, "Group?_has:Observation:subject:code=718-7")) == ["g1"]

    included = bundle(client, "Observation?_id=o-patient,o-group&_include=Observation:patient")
    assert entries(included, "include") == ["Patient/p1"]
    everything = bundle(client, "Observation?_id=o-patient,o-group&_include=Observation:subject")
    assert sorted(entries(everything, "include")) == ["Group/g1", "Patient/p1"]
    wrong_target = bundle(client, "Observation?_id=o-group&_include=Observation:patient:Group")
    assert entries(wrong_target, "include") == [] and warnings(wrong_target)

    assert entries(bundle(client, "Patient?_id=p1&_revinclude=Observation:patient"), "include") == [
        "Observation/o-patient"
    ]
    assert entries(bundle(client, "Group?_id=g1&_revinclude=Observation:patient"), "include") == []
    assert entries(bundle(client, "Group?_id=g1&_revinclude=Observation:subject"), "include") == ["Observation/o-group"]


def test_sort_by_a_narrowed_parameter_reads_its_sources_patient_rows(client: Any) -> None:
    # the reference as written, byte order: "Patient/p1" < "http://…" < "urn:…"; the Group is not sorted in
    order = ids(bundle(client, "Observation?_sort=patient&patient:missing=false&_id:not=o-ident"))
    assert order == ["o-patient", "o-absolute", "o-urn"]
    assert ids(bundle(client, "Observation?_sort=-patient&patient:missing=false&_id:not=o-ident")) == [
        "o-urn",
        "o-absolute",
        "o-patient",
    ]


def test_compartments_link_through_the_narrowed_parameters_source(client: Any) -> None:
    # the Patient compartment lists Condition's patient (narrowed subject) and asserter
    assert ids(bundle(client, "Patient/p1/Condition")) == ["c1"]
    assert ids(bundle(client, "Patient/p1/Observation")) == ["o-patient"]
    assert ids(bundle(client, "Practitioner/dr1/Condition")) == ["c1"]
    assert sorted(ids(bundle(client, "Patient/p1/Appointment"))) == ["ap1"]
    assert ids(bundle(client, "Appointment?patient=p1&practitioner=dr1")) == ["ap1"]
    assert ids(bundle(client, "Appointment?practitioner=p1")) == []
    everything = bundle(client, "Patient/p1/$everything")
    found = set(entries(everything))
    assert {"Condition/c1", "Observation/o-patient", "AllergyIntolerance/a1", "Appointment/ap1"} <= found
    assert "Condition/c-group" not in found and "Observation/o-group" not in found


def test_a_search_over_types_narrowed_on_one_and_plain_on_another(client: Any) -> None:
    found = bundle(client, "/fhir?_type=Observation,AllergyIntolerance,Condition&patient=p1")
    assert sorted(entries(found)) == ["AllergyIntolerance/a1", "Condition/c1", "Observation/o-patient"]
    missing = bundle(client, "/fhir?_type=AllergyIntolerance,Condition&patient:missing=true")
    assert entries(missing) == ["Condition/c-group"]
    # a chain and a sort over both: each type reads its own rows
    chained = bundle(client, "/fhir?_type=Observation,AllergyIntolerance,Condition&patient.name=alpha")
    assert sorted(entries(chained)) == ["AllergyIntolerance/a1", "Condition/c1", "Observation/o-patient"]
    ordered = entries(
        bundle(client, "/fhir?_type=Observation,AllergyIntolerance&patient:missing=false&_sort=patient&_id:not=o-ident")
    )
    # "Patient/p1" (both, its own patient row and a subject row) < "http://…" < "urn:…"; nothing without a value
    assert sorted(ordered[:2]) == ["AllergyIntolerance/a1", "Observation/o-patient"]
    assert ordered[2:] == ["Observation/o-absolute", "Observation/o-urn"]
