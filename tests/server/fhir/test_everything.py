"""``Patient/$everything`` (server/fhir/operations/everything.py) over HTTP on both backends.

The compartment of one patient and not of another, referenced Practitioner/Organization/
Location/Medication as ``include`` entries, ``start``/``end`` on care dates (undated resources
stay), ``_since``, ``_type``, ``_count`` paging by following the ``next`` links, POST with
Parameters, the type level, and the errors.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from typing import Any
from urllib.parse import urlsplit

import pytest

from server import jsonio
from server.fhir import crud
from tests.conftest import make_app

P1 = "/fhir/Patient/p1/$everything"


def _resources() -> list[dict[str, Any]]:
    subj = {"reference": "Patient/p1"}
    return [
        {"resourceType": "Patient", "id": "p1", "name": [{"family": "One"}]},
        {"resourceType": "Patient", "id": "p2", "name": [{"family": "Two"}]},
        {"resourceType": "Practitioner", "id": "dr1"},
        {"resourceType": "Practitioner", "id": "dr2"},
        {"resourceType": "Organization", "id": "org1", "name": "Clinic"},
        {"resourceType": "Organization", "id": "org2", "name": "Other"},
        {"resourceType": "Location", "id": "loc1", "managingOrganization": {"reference": "Organization/org1"}},
        {"resourceType": "Medication", "id": "med1", "code": {"text": "clopidogrel"}},
        {
            "resourceType": "Encounter",
            "id": "e1",
            "status": "finished",
            "class": {"code": "AMB"},
            "subject": subj,
            "period": {"start": "2020-01-10T08:00:00Z", "end": "2020-01-10T09:00:00Z"},
            "participant": [{"individual": {"reference": "Practitioner/dr1"}}],
            "location": [{"location": {"reference": "Location/loc1"}}],
        },
        _obs("o1", "p1", "2020-01-10", performer="dr1"),
        _obs("o2", "p1", "2022-05-01"),
        _obs("o3", "p2", "2020-01-10", performer="dr2"),
        {
            "resourceType": "Condition",
            "id": "c1",
            "subject": subj,
            "onsetDateTime": "2019-03-01",
            "code": {"text": "long QT"},
        },
        {
            "resourceType": "MedicationRequest",
            "id": "mr1",
            "status": "active",
            "intent": "order",
            "subject": subj,
            "authoredOn": "2021-06-01",
            "medicationReference": {"reference": "Medication/med1"},
        },
        {"resourceType": "AllergyIntolerance", "id": "a1", "patient": subj},
    ]


def _obs(id_: str, patient: str, date: str, performer: str | None = None) -> dict[str, Any]:
    obs: dict[str, Any] = {
        "resourceType": "Observation",
        "id": id_,
        "status": "final",
        "code": {"coding": [{"system": "http://loinc.org", "code": "2160-0"}]},
        "subject": {"reference": f"Patient/{patient}"},
        "effectiveDateTime": date,
    }
    if performer:
        obs["performer"] = [{"reference": f"Practitioner/{performer}"}]
    return obs


@pytest.fixture
def client(database_url: str) -> Iterator[Any]:
    app = make_app(database_url)
    ctx = app.extensions["bigmed"]
    for res in _resources():
        crud.update(ctx, res["resourceType"], res["id"], res)
    yield app.test_client()
    ctx.store.close()


def _entries(bundle: dict[str, Any], mode: str = "match") -> set[str]:
    return {
        f"{e['resource']['resourceType']}/{e['resource']['id']}"
        for e in bundle.get("entry", [])
        if e.get("search", {}).get("mode") == mode
    }


def _get(client: Any, url: str) -> dict[str, Any]:
    resp = client.get(url)
    assert resp.status_code == 200, resp.get_json()
    body: dict[str, Any] = resp.get_json()
    assert body["resourceType"] == "Bundle" and body["type"] == "searchset"
    return body


P1_ALL = {
    "Patient/p1",
    "Encounter/e1",
    "Observation/o1",
    "Observation/o2",
    "Condition/c1",
    "MedicationRequest/mr1",
    "AllergyIntolerance/a1",
}


def test_instance_returns_the_compartment_and_referenced_resources(client: Any) -> None:
    body = _get(client, P1)
    assert _entries(body) == P1_ALL
    assert _entries(body, "include") == {"Practitioner/dr1", "Organization/org1", "Location/loc1", "Medication/med1"}
    assert body["total"] == len(P1_ALL)


def test_start_end_filter_care_dates_and_keep_undated(client: Any) -> None:
    body = _get(client, f"{P1}?start=2020-01-01&end=2020-12-31")
    assert _entries(body) == {"Patient/p1", "Encounter/e1", "Observation/o1", "AllergyIntolerance/a1"}
    only_end = _get(client, f"{P1}?end=2019-12-31")
    assert _entries(only_end) == {"Patient/p1", "Condition/c1", "AllergyIntolerance/a1"}
    only_start = _get(client, f"{P1}?start=2021")
    assert _entries(only_start) == {"Patient/p1", "Observation/o2", "MedicationRequest/mr1", "AllergyIntolerance/a1"}


def test_since_and_type(client: Any) -> None:
    time.sleep(0.05)
    since = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(time.time())) + f".{int(time.time() % 1 * 1000):03d}Z"
    time.sleep(0.05)
    resp = client.put("/fhir/Observation/o2", json={**_obs("o2", "p1", "2022-05-02")})
    assert resp.status_code == 200
    body = _get(client, f"{P1}?_since={since.replace('+', '%2B')}")
    assert _entries(body) == {"Observation/o2"}
    typed = _get(client, f"{P1}?_type=Observation,Condition")
    assert _entries(typed) == {"Observation/o1", "Observation/o2", "Condition/c1"}
    assert _entries(typed, "include") == {"Practitioner/dr1"}


def test_count_pages_follow_next_links(client: Any) -> None:
    url: str | None = f"{P1}?_count=2&start=2000"
    seen: list[str] = []
    pages = 0
    while url:
        body = _get(client, url)
        matches = [
            f"{e['resource']['resourceType']}/{e['resource']['id']}"
            for e in body["entry"]
            if e["search"]["mode"] == "match"
        ]
        assert len(matches) <= 2
        seen += matches
        pages += 1
        nxt = [link["url"] for link in body["link"] if link["relation"] == "next"]
        if nxt:
            assert "start=2000" in nxt[0] and "_count=2" in nxt[0] and "/Patient/p1/$everything" in nxt[0]
            parts = urlsplit(nxt[0])
            url = f"{parts.path}?{parts.query}"
        else:
            url = None
    assert pages == 4
    assert len(seen) == len(set(seen)) and set(seen) == P1_ALL


def test_post_parameters_and_type_level(client: Any) -> None:
    params = {"resourceType": "Parameters", "parameter": [{"name": "_type", "valueCode": "Observation"}]}
    resp = client.post(P1, json=params, headers={"Content-Type": "application/fhir+json"})
    assert resp.status_code == 200
    assert _entries(resp.get_json()) == {"Observation/o1", "Observation/o2"}
    every = _get(client, "/fhir/Patient/$everything?_type=Patient,Observation")
    assert _entries(every) == {"Patient/p1", "Patient/p2", "Observation/o1", "Observation/o2", "Observation/o3"}
    assert _entries(every, "include") == {"Practitioner/dr1", "Practitioner/dr2"}


def test_errors_are_operation_outcomes(client: Any) -> None:
    for url, status in (
        ("/fhir/Patient/nobody/$everything", 404),
        (f"{P1}?bogus=1", 400),
        (f"{P1}?_type=Practitioner", 400),
        (f"{P1}?start=notadate", 400),
    ):
        resp = client.get(url)
        assert resp.status_code == status, url
        assert resp.get_json()["resourceType"] == "OperationOutcome"
    assert client.delete("/fhir/Patient/p2").status_code in (200, 204)
    assert client.get("/fhir/Patient/p2/$everything").status_code == 410


def test_a_patient_level_token_sees_its_own_patient_only(client: Any) -> None:
    from server.auth.access import Access, reset_access, set_access
    from server.fhir.operations.everything import everything

    ctx = client.application.extensions["bigmed"]
    token = set_access(Access("app", None, patient="p2"))
    try:
        with pytest.raises(Exception) as caught:
            everything(ctx, "http://testserver/fhir", "p1", [])
        assert getattr(caught.value, "status", None) == 404
        own = everything(ctx, "http://testserver/fhir", None, [])  # type level: the token's patient
        assert _entries(json.loads(jsonio.dumps(own))) == {"Patient/p2", "Observation/o3"}
    finally:
        reset_access(token)


def test_capability_statement_lists_everything_and_export(client: Any) -> None:
    cap = client.get("/fhir/metadata").get_json()
    patient = next(r for r in cap["rest"][0]["resource"] if r["type"] == "Patient")
    names = {o["name"] for o in patient.get("operation", [])}
    assert {"everything", "export"} <= names
    assert [o["name"] for o in cap["rest"][0]["operation"]] == ["export"]
