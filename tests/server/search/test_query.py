"""Type-level search through the HTTP API on both backends: each parameter type and modifier
implemented so far (http://hl7.org/fhir/R4/search.html), on hand-made data."""

from __future__ import annotations

from typing import Any

import pytest

FHIR = "application/fhir+json"

PATIENTS = [
    {
        "resourceType": "Patient",
        "id": "ola",
        "identifier": [{"system": "urn:oid:2.16.578.1.12.4.1.4.1", "value": "13097248022"}],
        "name": [{"family": "Nordmann", "given": ["Ola"]}],
        "gender": "male",
        "birthDate": "1972-09-13",
        "active": True,
    },
    {
        "resourceType": "Patient",
        "id": "kari",
        "identifier": [{"system": "http://hospital.example/mrn", "value": "K1"}],
        "name": [{"family": "Nordmann", "given": ["Kari"]}],
        "gender": "female",
        "birthDate": "1980",
    },
    {
        "resourceType": "Patient",
        "id": "jose",
        "name": [{"family": "Álvarez", "given": ["José"]}],
        "gender": "male",
        "birthDate": "2001-02-03",
        "managingOrganization": {"reference": "Organization/org1"},
    },
]

OBSERVATIONS = [
    {
        "resourceType": "Observation",
        "id": "hb1",
        "status": "final",
        "code": {"coding": [{"system": "http://loinc.org", "code": "718-7", "display": "Hemoglobin"}]},
        "subject": {"reference": "Patient/ola"},
        "effectiveDateTime": "2024-05-01T10:00:00+02:00",
        "valueQuantity": {"value": 13.5, "unit": "g/dL", "system": "http://unitsofmeasure.org", "code": "g/dL"},
    },
    {
        "resourceType": "Observation",
        "id": "hb2",
        "status": "preliminary",
        "code": {"coding": [{"system": "http://loinc.org", "code": "718-7"}]},
        "subject": {"reference": "http://testserver/fhir/Patient/kari"},
        "effectivePeriod": {"start": "2024-06-01", "end": "2024-06-03"},
        "valueQuantity": {"value": 9.8, "unit": "g/dL", "system": "http://unitsofmeasure.org", "code": "g/dL"},
    },
    {
        "resourceType": "Observation",
        "id": "note",
        "status": "final",
        "code": {"text": "Clinical note"},
        "subject": {"reference": "Patient/jose"},
        "valueString": "fine",
    },
]


@pytest.fixture
def loaded(client: Any) -> Any:
    for res in PATIENTS + OBSERVATIONS:
        resp = client.put(f"/fhir/{res['resourceType']}/{res['id']}", json=res, headers={"Content-Type": FHIR})
        assert resp.status_code == 201, resp.get_json()
    return client


def _ids(client: Any, query: str, **headers: str) -> list[str]:
    resp = client.get(f"/fhir/{query}", headers=headers)
    assert resp.status_code == 200, resp.get_json()
    bundle = resp.get_json()
    assert bundle["type"] == "searchset"
    return sorted(e["resource"]["id"] for e in bundle["entry"] if e["search"]["mode"] == "match")


@pytest.mark.parametrize(
    ("query", "expected"),
    [
        ("Patient", ["jose", "kari", "ola"]),
        ("Patient?_id=ola,kari", ["kari", "ola"]),
        # string: starts-with, case- and accent-insensitive; :exact; :contains
        ("Patient?name=nord", ["kari", "ola"]),
        ("Patient?family=alvarez", ["jose"]),
        ("Patient?name=OLA", ["ola"]),
        ("Patient?name:exact=Nordmann", ["kari", "ola"]),
        ("Patient?name:exact=nordmann", []),
        ("Patient?name:contains=rdma", ["kari", "ola"]),
        ("Patient?name=kari,jos", ["jose", "kari"]),
        ("Patient?name=nord&gender=female", ["kari"]),
        # token
        ("Patient?gender=male", ["jose", "ola"]),
        ("Patient?identifier=urn:oid:2.16.578.1.12.4.1.4.1|13097248022", ["ola"]),
        ("Patient?identifier=13097248022", ["ola"]),
        ("Patient?identifier=http://hospital.example/mrn|", ["kari"]),
        ("Patient?identifier=|K1", []),
        ("Patient?gender:not=male", ["kari"]),
        ("Patient?active=true", ["ola"]),
        ("Observation?code=http://loinc.org|718-7", ["hb1", "hb2"]),
        ("Observation?code:text=hemo", ["hb1"]),
        ("Observation?code:text=clinical", ["note"]),
        # date: precision ranges and prefixes
        ("Patient?birthdate=1972", ["ola"]),
        ("Patient?birthdate=1980-05", []),
        ("Patient?birthdate=ge1980-01-01", ["jose", "kari"]),
        ("Patient?birthdate=lt1980", ["ola"]),
        ("Patient?birthdate=gt1980", ["jose"]),
        ("Patient?birthdate=sa1980-06-01", ["jose"]),
        ("Patient?birthdate=eb1980-01-01", ["ola"]),
        ("Patient?birthdate=ne1972-09-13", ["jose", "kari"]),
        ("Observation?date=2024-05-01", ["hb1"]),
        ("Observation?date=2024-05-01T08:00:00Z", ["hb1"]),
        ("Observation?date=2024-06-02", []),
        ("Observation?date=ge2024-06-02", ["hb2"]),
        ("Observation?date=2024-06", ["hb2"]),
        # reference
        ("Observation?subject=Patient/ola", ["hb1"]),
        ("Observation?subject=kari", ["hb2"]),
        ("Observation?patient=kari", ["hb2"]),
        ("Observation?subject:Patient=jose", ["note"]),
        ("Patient?organization=Organization/org1", ["jose"]),
        # quantity and number
        ("Observation?value-quantity=13.5", ["hb1"]),
        ("Observation?value-quantity=gt10", ["hb1"]),
        ("Observation?value-quantity=lt10|http://unitsofmeasure.org|g/dL", ["hb2"]),
        ("Observation?value-quantity=le13.5||g/dL", ["hb1", "hb2"]),
        ("Observation?value-quantity=14", ["hb1"]),
        ("Observation?value-quantity=13.6", []),
        # :missing
        ("Patient?organization:missing=true", ["kari", "ola"]),
        ("Patient?organization:missing=false", ["jose"]),
        ("Observation?value-quantity:missing=true", ["note"]),
        # _lastUpdated and _tag style common parameters
        ("Patient?_lastUpdated=gt2000-01-01", ["jose", "kari", "ola"]),
        ("Patient?_lastUpdated=lt2000-01-01", []),
    ],
)
def test_search(loaded: Any, query: str, expected: list[str]) -> None:
    assert _ids(loaded, query) == expected


def test_deleted_and_superseded_versions_never_match(loaded: Any) -> None:
    changed = {**PATIENTS[0], "name": [{"family": "Hansen"}]}
    loaded.put("/fhir/Patient/ola", json=changed, headers={"Content-Type": FHIR})
    assert _ids(loaded, "Patient?name=nordmann") == ["kari"]
    assert _ids(loaded, "Patient?name=hansen") == ["ola"]
    loaded.delete("/fhir/Patient/kari")
    assert _ids(loaded, "Patient?name=nordmann") == []
    assert _ids(loaded, "Patient") == ["jose", "ola"]


def test_unknown_parameter_reported_or_strict(loaded: Any) -> None:
    bundle = loaded.get("/fhir/Patient?foo=bar&gender=female").get_json()
    outcomes = [e for e in bundle["entry"] if e["search"]["mode"] == "outcome"]
    assert len(outcomes) == 1 and "foo" in outcomes[0]["resource"]["issue"][0]["diagnostics"]
    assert [e["resource"]["id"] for e in bundle["entry"] if e["search"]["mode"] == "match"] == ["kari"]
    strict = loaded.get("/fhir/Patient?foo=bar", headers={"Prefer": "handling=strict"})
    assert strict.status_code == 400 and "foo" in strict.get_json()["issue"][0]["diagnostics"]


def test_paging_is_stable_while_data_changes(loaded: Any) -> None:
    first = loaded.get("/fhir/Patient?_count=2").get_json()
    assert len(first["entry"]) == 2 and "total" not in first
    nxt = next(link["url"] for link in first["link"] if link["relation"] == "next")
    loaded.put("/fhir/Patient/zed", json={"resourceType": "Patient", "id": "zed"}, headers={"Content-Type": FHIR})
    second = loaded.get(nxt.replace("http://testserver", "")).get_json()
    ids = [e["resource"]["id"] for e in first["entry"] + second["entry"]]
    assert ids == ["ola", "kari", "jose", "zed"]


def test_total_count_and_summary(loaded: Any) -> None:
    assert loaded.get("/fhir/Patient?_total=accurate&_count=1").get_json()["total"] == 3
    counted = loaded.get("/fhir/Patient?_summary=count").get_json()
    assert counted["total"] == 3 and counted["entry"] == []
    summary = loaded.get("/fhir/Observation?_id=hb1&_summary=true").get_json()
    assert "valueQuantity" in summary["entry"][0]["resource"]
    elements = loaded.get("/fhir/Observation?_id=hb1&_elements=status").get_json()
    assert set(elements["entry"][0]["resource"]) == {"resourceType", "id", "meta", "status", "code"}


def test_post_search(loaded: Any) -> None:
    resp = loaded.post(
        "/fhir/Patient/_search",
        data={"name": "nord", "gender": "male"},
        content_type="application/x-www-form-urlencoded",
    )
    assert resp.status_code == 200
    assert [e["resource"]["id"] for e in resp.get_json()["entry"]] == ["ola"]


@pytest.mark.parametrize(
    ("query", "driver"),
    [
        ("code=http://loinc.org|8302-2", "token"),
        ("code=8302-2&date=ge2018", "token"),  # one range and a probe
        ("subject=Patient/p1", "reference"),
        # several ranges: one reference target before a system|code before a bare code
        ("code=8302-2&subject=Patient/p1", "reference"),
        ("code=http://loinc.org|8302-2&patient=p1&date=ge2018", "reference"),
        ("category=laboratory&code=http://loinc.org|8302-2", "token"),
        ("code=8302-2&subject=Patient/p1,Patient/p2", "token"),  # two targets do not drive
        ("code=8302-2,8310-5&subject=Patient/p1,Patient/p2", None),  # nothing ranked
        ("code=8302-2&date=2018", "token"),  # a two-sided date range is probed
        ("code=8302-2&_sort=date", None),
        ("subject:Patient.name=x", None),
        ("subject:Patient.name=x&code=8302-2", None),  # a chain has no probe form
        ("_id=o1&code=8302-2", None),
    ],
)
def test_unsorted_page_walks_one_index_range(query: str, driver: str | None) -> None:
    from urllib.parse import parse_qsl

    from server.search.query import Cursor, page_sql, parse_search
    from server.search.registry import Registry

    parsed = parse_search(Registry.load(extra_paths=[]), "Observation", parse_qsl(query))
    sql, params = page_sql(parsed, Cursor(tuple(None for _ in parsed.sort), 7, backward=True), 11)
    walked = "SELECT DISTINCT r.rid FROM (SELECT rid FROM idx_"
    assert (walked in sql) is (driver is not None)
    if driver is not None:  # the cursor seeks in the range itself, and the page comes back in reverse order
        assert f"{walked}{driver} " in sql
        assert "r.rid < ?" in sql and sql.endswith("ORDER BY q.rid DESC") and params[-1] == 7
        assert " IN (SELECT rid FROM idx_" not in sql.partition(") r JOIN")[2]  # the others are probes


@pytest.mark.parametrize(
    ("sizes", "driver"),
    [
        ({"reference": 1000, "token": 12}, "token"),  # a patient with 100,000 variants, a gene with twelve
        ({"reference": 40, "token": 1000}, "reference"),
        ({"reference": 1000, "token": 1000}, "reference"),  # both large: the rank decides
        ({"reference": 7, "token": 7}, "reference"),
    ],
)
def test_the_smallest_range_drives_when_the_store_can_size_them(sizes: dict[str, int], driver: str) -> None:
    from server.search.query import SIZE_LIMIT, page_sql, parse_search
    from server.search.registry import Registry

    asked: list[str] = []

    def count(sql: str, params: list[Any]) -> int:
        assert f"LIMIT {SIZE_LIMIT}" in sql  # bounded: never a walk of a whole range
        table = sql.partition("FROM idx_")[2].split()[0]
        asked.append(table)
        return min(sizes[table], SIZE_LIMIT)

    parsed = parse_search(Registry.load(extra_paths=[]), "Observation", [("subject", "Patient/p1"), ("code", "8302-2")])
    sql, _ = page_sql(parsed, None, 11, count)
    assert f"SELECT DISTINCT r.rid FROM (SELECT rid FROM idx_{driver} " in sql
    assert sorted(asked) == ["reference", "token"]
    single = parse_search(Registry.load(extra_paths=[]), "Observation", [("code", "8302-2")])
    asked.clear()
    page_sql(single, None, 11, count)
    assert asked == []  # one range: nothing to size
