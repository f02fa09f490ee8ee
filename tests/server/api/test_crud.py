"""REST interactions through the HTTP API on both backends (http://hl7.org/fhir/R4/http.html)."""

from __future__ import annotations

import time
import uuid
from typing import Any

import pytest

from tests.conftest import make_app

FHIR = "application/fhir+json"


def _patient(**extra: Any) -> dict[str, Any]:
    return {
        "resourceType": "Patient",
        "identifier": [{"system": "http://hospital.example/mrn", "value": "123"}],
        "name": [{"family": "Nordmann", "given": ["Ola"]}],
        "birthDate": "1970-01-01",
        **extra,
    }


def _post(client: Any, type_: str, body: Any, **headers: str) -> Any:
    return client.post(f"/fhir/{type_}", json=body, headers={"Content-Type": FHIR, **headers})


def _put(client: Any, path: str, body: Any, **headers: str) -> Any:
    return client.put(f"/fhir/{path}", json=body, headers={"Content-Type": FHIR, **headers})


def test_create_read_headers(client: Any) -> None:
    resp = _post(client, "Patient", _patient())
    assert resp.status_code == 201
    assert resp.content_type.startswith(FHIR)
    body = resp.get_json()
    pid = body["id"]
    assert body["meta"]["versionId"] == "1" and body["meta"]["lastUpdated"].endswith("Z")
    assert resp.headers["ETag"] == 'W/"1"'
    assert resp.headers["Location"] == f"http://testserver/fhir/Patient/{pid}/_history/1"
    assert "GMT" in resp.headers["Last-Modified"]
    read = client.get(f"/fhir/Patient/{pid}")
    assert read.status_code == 200 and read.headers["ETag"] == 'W/"1"'
    assert read.get_json()["name"] == [{"family": "Nordmann", "given": ["Ola"]}]


def test_create_ignores_body_id(client: Any) -> None:
    resp = _post(client, "Patient", _patient(id="client-chosen"))
    assert resp.status_code == 201 and resp.get_json()["id"] != "client-chosen"


def test_server_assigned_ids_are_uuid7_ascending_by_time(client: Any) -> None:
    """Ids of created resources are UUID version 7 (RFC 9562): the creation time in ms first."""
    ids = []
    for _ in range(3):
        ids.append(_post(client, "Patient", _patient()).get_json()["id"])
        time.sleep(0.002)  # the next millisecond: within one, the order is random
    parsed = [uuid.UUID(i) for i in ids]
    assert all(u.version == 7 and u.variant == uuid.RFC_4122 for u in parsed)
    assert ids == sorted(ids) and len(set(ids)) == 3
    ms = int(ids[0].replace("-", "")[:12], 16)
    assert abs(ms / 1000 - time.time()) < 60


def test_update_as_create_update_vread_history(client: Any) -> None:
    first = _put(client, "Patient/p1", _patient(id="p1"))
    assert first.status_code == 201 and first.get_json()["meta"]["versionId"] == "1"
    second = _put(client, "Patient/p1", _patient(id="p1", gender="female"))
    assert second.status_code == 200 and second.headers["ETag"] == 'W/"2"'
    v1 = client.get("/fhir/Patient/p1/_history/1")
    assert v1.status_code == 200 and "gender" not in v1.get_json()
    assert client.get("/fhir/Patient/p1/_history/2").get_json()["gender"] == "female"
    assert client.get("/fhir/Patient/p1/_history/3").status_code == 404
    hist = client.get("/fhir/Patient/p1/_history").get_json()
    assert hist["type"] == "history" and hist["total"] == 2
    assert [e["resource"]["meta"]["versionId"] for e in hist["entry"]] == ["2", "1"]
    assert [e["request"]["method"] for e in hist["entry"]] == ["PUT", "PUT"]


def test_update_id_mismatch_and_missing_id(client: Any) -> None:
    resp = _put(client, "Patient/p1", _patient(id="other"))
    assert resp.status_code == 400 and "does not match" in resp.get_json()["issue"][0]["diagnostics"]
    resp = _put(client, "Patient/p1", _patient())
    assert resp.status_code == 400
    assert client.get("/fhir/Patient/p1").status_code == 404


def test_if_match_optimistic_locking(client: Any) -> None:
    _put(client, "Patient/p1", _patient(id="p1"))
    stale = _put(client, "Patient/p1", _patient(id="p1", gender="male"), **{"If-Match": 'W/"5"'})
    assert stale.status_code == 412
    ok = _put(client, "Patient/p1", _patient(id="p1", gender="male"), **{"If-Match": 'W/"1"'})
    assert ok.status_code == 200 and ok.headers["ETag"] == 'W/"2"'


def test_delete_then_gone_and_recreate(client: Any) -> None:
    _put(client, "Patient/p1", _patient(id="p1"))
    resp = client.delete("/fhir/Patient/p1")
    assert resp.status_code == 204 and resp.headers["ETag"] == 'W/"2"'
    gone = client.get("/fhir/Patient/p1")
    assert gone.status_code == 410 and gone.get_json()["resourceType"] == "OperationOutcome"
    assert client.get("/fhir/Patient/p1/_history/1").status_code == 200
    assert client.get("/fhir/Patient/p1/_history/2").status_code == 410
    again = client.delete("/fhir/Patient/p1")
    assert again.status_code == 200  # nothing left to delete: an informational outcome
    hist = client.get("/fhir/Patient/p1/_history").get_json()
    assert [e["request"]["method"] for e in hist["entry"]] == ["DELETE", "PUT"]
    assert "resource" not in hist["entry"][0]
    recreated = _put(client, "Patient/p1", _patient(id="p1"))
    assert recreated.status_code == 201 and recreated.get_json()["meta"]["versionId"] == "3"


def test_prefer_return(client: Any) -> None:
    minimal = _post(client, "Patient", _patient(), Prefer="return=minimal")
    assert minimal.status_code == 201 and minimal.data == b"" and "Location" in minimal.headers
    outcome = _post(client, "Patient", _patient(), Prefer="return=OperationOutcome")
    assert outcome.get_json()["resourceType"] == "OperationOutcome"
    assert "created" in outcome.get_json()["issue"][0]["diagnostics"]


def test_conditional_create(client: Any) -> None:
    crit = {"If-None-Exist": "identifier=http://hospital.example/mrn|123"}
    first = _post(client, "Patient", _patient(), **crit)
    assert first.status_code == 201
    second = _post(client, "Patient", _patient(), **crit)
    assert second.status_code == 200 and second.get_json()["id"] == first.get_json()["id"]
    _post(client, "Patient", _patient())  # a second Patient with the same identifier
    third = _post(client, "Patient", _patient(), **crit)
    assert third.status_code == 412
    unknown = _post(client, "Patient", _patient(), **{"If-None-Exist": "nonsense=1"})
    assert unknown.status_code == 400 and "nonsense" in unknown.get_json()["issue"][0]["diagnostics"]


def test_conditional_update_and_delete(client: Any) -> None:
    created = _put(
        client,
        "Patient?identifier=http://hospital.example/mrn|777",
        _patient(identifier=[{"system": "http://hospital.example/mrn", "value": "777"}]),
    )
    assert created.status_code == 201
    pid = created.get_json()["id"]
    updated = _put(
        client,
        "Patient?identifier=http://hospital.example/mrn|777",
        _patient(identifier=[{"system": "http://hospital.example/mrn", "value": "777"}], gender="other"),
    )
    assert updated.status_code == 200 and updated.get_json()["id"] == pid
    assert updated.get_json()["gender"] == "other"
    deleted = client.delete("/fhir/Patient?identifier=http://hospital.example/mrn|777")
    assert deleted.status_code == 204
    assert client.get(f"/fhir/Patient/{pid}").status_code == 410
    _post(client, "Patient", _patient())
    _post(client, "Patient", _patient())
    assert client.delete("/fhir/Patient?identifier=http://hospital.example/mrn|123").status_code == 412


def test_json_patch(client: Any) -> None:
    _put(client, "Patient/p1", _patient(id="p1"))
    ops = [
        {"op": "replace", "path": "/birthDate", "value": "1980-02-03"},
        {"op": "add", "path": "/gender", "value": "male"},
    ]
    resp = client.patch("/fhir/Patient/p1", json=ops, headers={"Content-Type": "application/json-patch+json"})
    assert resp.status_code == 200, resp.get_json()
    body = resp.get_json()
    assert body["birthDate"] == "1980-02-03" and body["gender"] == "male" and body["meta"]["versionId"] == "2"
    bad = client.patch(
        "/fhir/Patient/p1",
        json=[{"op": "replace", "path": "/birthDate", "value": "not-a-date"}],
        headers={"Content-Type": "application/json-patch+json"},
    )
    assert bad.status_code == 422
    assert client.get("/fhir/Patient/p1").get_json()["meta"]["versionId"] == "2"
    wrong_type = client.patch("/fhir/Patient/p1", json=ops, headers={"Content-Type": FHIR})
    assert wrong_type.status_code == 415
    stale = client.patch(
        "/fhir/Patient/p1", json=ops, headers={"Content-Type": "application/json-patch+json", "If-Match": 'W/"1"'}
    )
    assert stale.status_code == 412


def test_summary_and_elements(client: Any) -> None:
    _put(
        client,
        "Patient/p1",
        _patient(
            id="p1",
            text={"status": "generated", "div": '<div xmlns="http://www.w3.org/1999/xhtml">x</div>'},
            maritalStatus={"text": "M"},
        ),
    )
    summary = client.get("/fhir/Patient/p1?_summary=true").get_json()
    assert "name" in summary and "maritalStatus" not in summary and "text" not in summary
    assert {"system": "http://terminology.hl7.org/CodeSystem/v3-ObservationValue", "code": "SUBSETTED"} in summary[
        "meta"
    ]["tag"]
    data = client.get("/fhir/Patient/p1?_summary=data").get_json()
    assert "text" not in data and "maritalStatus" in data
    text = client.get("/fhir/Patient/p1?_summary=text").get_json()
    assert set(text) == {"resourceType", "id", "meta", "text"}
    elements = client.get("/fhir/Patient/p1?_elements=birthDate").get_json()
    assert set(elements) == {"resourceType", "id", "meta", "birthDate"}


def test_format_negotiation_and_pretty(client: Any) -> None:
    _put(client, "Patient/p1", _patient(id="p1"))
    assert client.get("/fhir/Patient/p1", headers={"Accept": "application/json"}).content_type.startswith(
        "application/json"
    )
    assert client.get("/fhir/Patient/p1?_format=json").status_code == 200
    assert client.get("/fhir/Patient/p1", headers={"Accept": "application/fhir+xml"}).status_code == 406
    assert client.get("/fhir/Patient/p1?_format=xml").status_code == 406
    pretty = client.get("/fhir/Patient/p1?_pretty=true")
    assert b"\n  " in pretty.data


def test_negotiation_and_base_are_per_request_though_remembered(sqlite_url: str) -> None:
    """The media type and the base URL are remembered per Accept/_format and per Host: each request
    still gets its own (no answer shaped for an earlier request's headers)."""
    app = make_app(sqlite_url, base_url="")  # no configured base: it comes from the Host header
    client = app.test_client()
    _put(client, "Patient/p1", _patient(id="p1"))
    for _ in range(2):  # the second round is answered from the memo
        for accept, status, media in [
            ("application/json", 200, "application/json"),
            ("application/fhir+xml", 406, None),
            ("application/fhir+json", 200, "application/fhir+json"),
            ("text/html", 200, "application/fhir+json"),
        ]:
            resp = client.get("/fhir/Patient?_id=p1", headers={"Accept": accept})
            assert resp.status_code == status
            if media:
                assert resp.content_type.startswith(media)
        for host in ("a.example:8080", "b.example"):
            bundle = client.get("/fhir/Patient?_id=p1", headers={"Host": host}).get_json()
            assert bundle["entry"][0]["fullUrl"] == f"http://{host}/fhir/Patient/p1"
            assert bundle["link"][0]["url"].startswith(f"http://{host}/fhir/Patient?")
    app.extensions["bigmed"].store.close()


def test_if_none_match_read(client: Any) -> None:
    _put(client, "Patient/p1", _patient(id="p1"))
    assert client.get("/fhir/Patient/p1", headers={"If-None-Match": 'W/"1"'}).status_code == 304
    assert client.get("/fhir/Patient/p1", headers={"If-None-Match": 'W/"0"'}).status_code == 200


def test_type_and_system_history_paging(client: Any) -> None:
    for i in range(5):
        _put(client, f"Patient/p{i}", _patient(id=f"p{i}"))
    _put(
        client, "Observation/o1", {"resourceType": "Observation", "id": "o1", "status": "final", "code": {"text": "x"}}
    )
    page = client.get("/fhir/Patient/_history?_count=2").get_json()
    assert page["total"] == 5 and len(page["entry"]) == 2
    seen = [e["resource"]["id"] for e in page["entry"]]
    while True:
        nxt = next((link["url"] for link in page["link"] if link["relation"] == "next"), None)
        if not nxt:
            break
        page = client.get(nxt.replace("http://testserver", "")).get_json()
        seen += [e["resource"]["id"] for e in page["entry"]]
    assert seen == ["p4", "p3", "p2", "p1", "p0"]
    system = client.get("/fhir/_history").get_json()
    assert system["total"] == 6 and system["entry"][0]["resource"]["resourceType"] == "Observation"
    assert client.get("/fhir/_history?_since=2999-01-01").get_json()["total"] == 0


@pytest.mark.parametrize("type_", ["MedicinalProduct", "Evidence"])
def test_r4_only_types_are_served(client: Any, type_: str) -> None:
    body: dict[str, Any] = (
        {"resourceType": type_, "id": "x1", "status": "active"}
        if type_ == "Evidence"
        else {"resourceType": type_, "id": "x1", "name": [{"productName": "Aspirin"}]}
    )
    if type_ == "Evidence":
        body["exposureBackground"] = {"reference": "EvidenceVariable/ev"}
    resp = _put(client, f"{type_}/x1", body)
    assert resp.status_code == 201, resp.get_json()
    bad = _put(client, f"{type_}/x2", {**body, "id": "x2", "bogus": 1})
    assert bad.status_code == 422
    assert any("bogus" in (i.get("expression") or [""])[0] for i in bad.get_json()["issue"])
