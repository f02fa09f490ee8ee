"""Transactions and batches through ``POST /fhir`` on both backends (http://hl7.org/fhir/R4/http.html#transaction)."""

from __future__ import annotations

import base64
import copy
import json
import tarfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import SHARED, make_app

FHIR = "application/fhir+json"
DATA = Path(__file__).resolve().parents[2] / "data" / "synthea"
SAMPLE = SHARED / "synthea" / "smart-sample-100.tgz"
P1 = "urn:uuid:8a7d2c1e-0000-4000-8000-000000000001"
O1 = "urn:uuid:8a7d2c1e-0000-4000-8000-000000000002"
O2 = "urn:uuid:8a7d2c1e-0000-4000-8000-000000000003"


def _post(client: Any, bundle: Any, **headers: str) -> Any:
    return client.post("/fhir", data=json.dumps(bundle), headers={"Content-Type": FHIR, **headers})


def _bundle(kind: str, *entries: dict[str, Any]) -> dict[str, Any]:
    return {"resourceType": "Bundle", "type": kind, "entry": list(entries)}


def _entry(method: str, url: str, resource: Any = None, full_url: str | None = None, **request: Any) -> dict[str, Any]:
    entry: dict[str, Any] = {"request": {"method": method, "url": url, **request}}
    if resource is not None:
        entry["resource"] = resource
    if full_url:
        entry["fullUrl"] = full_url
    return entry


def _patient(value: str = "1", **extra: Any) -> dict[str, Any]:
    return {
        "resourceType": "Patient",
        "identifier": [{"system": "http://hospital.example/mrn", "value": value}],
        "name": [{"family": "Nordmann", "given": ["Kari"]}],
        "birthDate": "1970-01-01",
        **extra,
    }


def _obs(subject: str, **extra: Any) -> dict[str, Any]:
    return {
        "resourceType": "Observation",
        "status": "final",
        "code": {"coding": [{"system": "http://loinc.org", "code": "8867-4"}]},
        "subject": {"reference": subject},
        **extra,
    }


def _count(client: Any, query: str) -> int:
    body = client.get(f"/fhir/{query}{'&' if '?' in query else '?'}_total=accurate").get_json()
    return int(body["total"])


def _target(entry: dict[str, Any]) -> str:
    """``Type/id`` of a response entry's location (``Type/id/_history/n``)."""
    return "/".join(entry["response"]["location"].split("/")[:2])


# -- transactions ---------------------------------------------------------------------------


def test_transaction_rewrites_every_reference_to_fullurls(client: Any) -> None:
    patient = _patient(
        extension=[{"url": "http://example.org/registered-with", "valueReference": {"reference": O1}}],
        contained=[{**_obs(P1), "id": "c1"}],
    )
    obs = _obs(
        P1,
        derivedFrom=[{"reference": O2}],
        extension=[{"url": "http://example.org/source", "valueUri": P1}],
        focus=[{"reference": "#c1"}],
        contained=[{**_obs(P1), "id": "c1"}],
    )
    bundle = _bundle(
        "transaction",
        _entry("POST", "Patient", patient, P1),
        _entry("POST", "Observation", obs, O1),
        _entry("POST", "Observation", _obs(P1), O2),
    )
    resp = _post(client, bundle)
    assert resp.status_code == 200, resp.get_json()
    out = resp.get_json()
    assert out["resourceType"] == "Bundle" and out["type"] == "transaction-response"
    entries = out["entry"]
    assert [e["response"]["status"] for e in entries] == ["201 Created"] * 3
    for e in entries:
        assert e["response"]["etag"] == 'W/"1"' and e["response"]["lastModified"].endswith("Z")
        assert e["response"]["location"].endswith("/_history/1") and "resource" not in e  # minimal by default
    pat, o1, o2 = (_target(e) for e in entries)
    assert pat.startswith("Patient/") and P1.removeprefix("urn:uuid:") not in pat  # a server id (POST)
    stored = client.get(f"/fhir/{o1}").get_json()
    assert stored["subject"] == {"reference": pat}
    assert stored["derivedFrom"] == [{"reference": o2}]
    assert stored["extension"][0]["valueUri"] == pat  # a uri equal to the fullUrl is rewritten too
    assert stored["contained"][0]["subject"] == {"reference": pat}  # inside contained resources
    assert stored["focus"] == [{"reference": "#c1"}]  # local references stay
    stored_patient = client.get(f"/fhir/{pat}").get_json()
    assert stored_patient["extension"][0]["valueReference"] == {"reference": o1}  # inside extensions
    assert stored_patient["contained"][0]["subject"] == {"reference": pat}
    # the index follows the rewritten references
    assert _count(client, f"Observation?subject={pat}") == 2


def test_transaction_with_one_invalid_entry_writes_nothing(client: Any) -> None:
    bundle = _bundle(
        "transaction",
        _entry("POST", "Patient", _patient(), P1),
        _entry("POST", "Observation", _obs(P1), O1),
        _entry("PUT", "Patient/keep", {**_patient("2"), "id": "keep"}),
        _entry("POST", "Patient", _patient("3", birthDate="1970-13-45"), O2),
    )
    resp = _post(client, bundle)
    assert resp.status_code == 422
    outcome = resp.get_json()
    assert outcome["resourceType"] == "OperationOutcome"
    (issue,) = outcome["issue"]
    assert issue["expression"] == ["Bundle.entry[3].resource.birthDate"]
    assert issue["diagnostics"].startswith(f"Bundle.entry[3] (fullUrl {O2}): ")
    assert "1970-13-45" in issue["diagnostics"]
    assert _count(client, "Patient") == 0 and _count(client, "Observation") == 0
    assert client.get("/fhir/Patient/keep").status_code == 404


def test_failure_inside_the_store_transaction_rolls_everything_back(client: Any) -> None:
    client.put("/fhir/Patient/p1", json={**_patient(), "id": "p1"}, headers={"Content-Type": FHIR})
    bundle = _bundle(
        "transaction",
        _entry("POST", "Patient", _patient("9"), P1),
        _entry("DELETE", "Patient/p1"),
        _entry("PUT", "Patient/p2", {**_patient("2"), "id": "p2"}, ifMatch='W/"4"'),  # p2 has no version 4
    )
    resp = _post(client, bundle)
    assert resp.status_code == 412
    assert "Bundle.entry[2]" in resp.get_json()["issue"][0]["diagnostics"]
    assert client.get("/fhir/Patient/p1").status_code == 200  # the delete was rolled back
    assert _count(client, "Patient") == 1


def test_processing_order_delete_post_put_then_get(client: Any) -> None:
    for pid in ("old", "upd"):
        client.put(f"/fhir/Patient/{pid}", json={**_patient(pid), "id": pid}, headers={"Content-Type": FHIR})
    bundle = _bundle(
        "transaction",
        _entry("GET", "Patient?identifier=http://hospital.example/mrn|new"),  # answered after the writes
        _entry("PUT", "Patient/upd", {**_patient("upd"), "id": "upd", "gender": "female"}),
        _entry("POST", "Patient", _patient("new"), P1),
        _entry("DELETE", "Patient/old"),
        _entry("GET", "Patient/upd"),
    )
    out = _post(client, bundle).get_json()
    statuses = [e["response"]["status"] for e in out["entry"]]
    assert statuses == ["200 OK", "200 OK", "201 Created", "204 No Content", "200 OK"]
    search = out["entry"][0]["resource"]
    assert search["type"] == "searchset" and search["total"] == 1
    assert search["entry"][0]["fullUrl"].endswith(_target(out["entry"][2]))
    assert out["entry"][4]["resource"]["gender"] == "female" and out["entry"][4]["resource"]["meta"]["versionId"] == "2"
    assert client.get("/fhir/Patient/old").status_code == 410


def test_if_none_exist_matches_before_the_transaction_and_dedupes_in_it(client: Any) -> None:
    first = client.post("/fhir/Patient", json=_patient("42"), headers={"Content-Type": FHIR}).get_json()["id"]
    criteria = "identifier=http://hospital.example/mrn|42"
    bundle = _bundle(
        "transaction",
        _entry("POST", "Patient", _patient("42"), P1, ifNoneExist=f"Patient?{criteria}"),  # also as Type?query
        _entry("POST", "Observation", _obs(P1), O1),
        _entry("POST", "Patient", _patient("43"), O2, ifNoneExist="identifier=http://hospital.example/mrn|43"),
        _entry(
            "POST", "Patient", _patient("43"), "urn:uuid:dup", ifNoneExist="identifier=http://hospital.example/mrn|43"
        ),
    )
    out = _post(client, bundle).get_json()
    statuses = [e["response"]["status"] for e in out["entry"]]
    assert statuses == ["200 OK", "201 Created", "201 Created", "200 OK"]
    assert _target(out["entry"][0]) == f"Patient/{first}"
    obs = client.get(f"/fhir/{_target(out['entry'][1])}").get_json()
    assert obs["subject"] == {"reference": f"Patient/{first}"}  # refers to the matched resource
    assert _target(out["entry"][2]) == _target(out["entry"][3])  # the same criteria twice: one resource
    assert _count(client, "Patient?identifier=http://hospital.example/mrn|43") == 1
    assert _count(client, "Patient") == 2


def test_conditional_references_are_resolved_by_search(client: Any) -> None:
    pid = client.post("/fhir/Patient", json=_patient("7"), headers={"Content-Type": FHIR}).get_json()["id"]
    ref = "Patient?identifier=http://hospital.example/mrn|7"
    resp = _post(client, _bundle("transaction", _entry("POST", "Observation", _obs(ref), O1)))
    assert resp.status_code == 200
    obs = client.get(f"/fhir/{_target(resp.get_json()['entry'][0])}").get_json()
    assert obs["subject"] == {"reference": f"Patient/{pid}"}

    missing = _post(client, _bundle("transaction", _entry("POST", "Observation", _obs(ref + "x"), O1)))
    assert missing.status_code == 412
    (issue,) = missing.get_json()["issue"]
    assert "matches no Patient" in issue["diagnostics"] and f"fullUrl {O1}" in issue["diagnostics"]
    assert issue["expression"] == ["Bundle.entry[0].resource.subject.reference"]

    client.post("/fhir/Patient", json=_patient("7"), headers={"Content-Type": FHIR})
    several = _post(client, _bundle("transaction", _entry("POST", "Observation", _obs(ref), O1)))
    assert several.status_code == 412 and "more than one" in several.get_json()["issue"][0]["diagnostics"]
    bad = _post(client, _bundle("transaction", _entry("POST", "Observation", _obs("Patient?nosuchparam=1"), O1)))
    assert bad.status_code == 400 and "Bundle.entry[0]" in bad.get_json()["issue"][0]["diagnostics"]
    assert _count(client, "Observation") == 1


def test_conditional_reference_may_match_a_resource_created_in_the_same_transaction(client: Any) -> None:
    bundle = _bundle(
        "transaction",
        _entry("POST", "Observation", _obs("Patient?identifier=http://hospital.example/mrn|55"), O1),
        _entry("POST", "Patient", _patient("55"), P1),
    )
    out = _post(client, bundle).get_json()
    obs = client.get(f"/fhir/{_target(out['entry'][0])}").get_json()
    assert obs["subject"] == {"reference": _target(out["entry"][1])}


def test_unknown_urn_reference_fails(client: Any) -> None:
    resp = _post(client, _bundle("transaction", _entry("POST", "Observation", _obs("urn:uuid:nowhere"), O1)))
    assert resp.status_code == 400
    (issue,) = resp.get_json()["issue"]
    assert "urn:uuid:nowhere" in issue["diagnostics"] and issue["expression"] == [
        "Bundle.entry[0].resource.subject.reference"
    ]


def test_put_patch_conditional_update_and_if_match(client: Any) -> None:
    client.put("/fhir/Patient/p1", json={**_patient(), "id": "p1"}, headers={"Content-Type": FHIR})
    ops = [{"op": "replace", "path": "/birthDate", "value": "1980-02-02"}]
    binary = {
        "resourceType": "Binary",
        "contentType": "application/json-patch+json",
        "data": base64.b64encode(json.dumps(ops).encode()).decode(),
    }
    bundle = _bundle(
        "transaction",
        _entry("PATCH", "Patient/p1", binary, ifMatch='W/"1"'),
        _entry("PUT", "Patient?identifier=http://hospital.example/mrn|77", _patient("77"), P1),
        _entry("POST", "Observation", _obs(P1), O1),
    )
    resp = _post(client, bundle, Prefer="return=representation")
    assert resp.status_code == 200, resp.get_json()
    patched, created, obs = resp.get_json()["entry"]
    assert patched["response"]["status"] == "200 OK" and patched["response"]["etag"] == 'W/"2"'
    assert patched["resource"]["birthDate"] == "1980-02-02"
    assert created["response"]["status"] == "201 Created"
    assert obs["resource"]["subject"] == {"reference": _target(created)}  # PUT targets are mapped too
    stale = _post(client, _bundle("transaction", _entry("PATCH", "Patient/p1", binary, ifMatch='W/"1"')))
    assert stale.status_code == 412 and "If-Match" in stale.get_json()["issue"][0]["diagnostics"]
    again = _post(
        client,
        _bundle("transaction", _entry("PUT", "Patient?identifier=http://hospital.example/mrn|77", _patient("77"))),
    )
    assert _target(again.get_json()["entry"][0]) == _target(created)  # one match: updated in place
    assert again.get_json()["entry"][0]["response"]["etag"] == 'W/"2"'


def test_two_entries_changing_one_resource_fail(client: Any) -> None:
    bundle = _bundle(
        "transaction",
        _entry("PUT", "Patient/p1", {**_patient(), "id": "p1"}),
        _entry("DELETE", "Patient/p1"),
    )
    resp = _post(client, bundle)
    assert resp.status_code == 400
    assert "only once" in resp.get_json()["issue"][0]["diagnostics"]
    assert client.get("/fhir/Patient/p1").status_code == 404


def test_read_preconditions_and_prefer(client: Any) -> None:
    client.put("/fhir/Patient/p1", json={**_patient(), "id": "p1"}, headers={"Content-Type": FHIR})
    bundle = _bundle(
        "batch",
        _entry("GET", "Patient/p1", ifNoneMatch='W/"1"'),
        _entry("GET", "Patient/p1", ifModifiedSince="2999-01-01T00:00:00Z"),
        _entry("GET", "Patient/p1", ifModifiedSince="2000-01-01T00:00:00Z"),
        _entry("GET", "Patient/p1/_history/1"),
        _entry("GET", "Patient/p1/_history"),
        _entry("GET", "Patient/nope"),
        _entry("POST", "Patient", _patient("5")),
    )
    out = _post(client, bundle, Prefer="return=OperationOutcome").get_json()
    assert out["type"] == "batch-response"
    statuses = [e["response"]["status"] for e in out["entry"]]
    assert statuses == [
        "304 Not Modified",
        "304 Not Modified",
        "200 OK",
        "200 OK",
        "200 OK",
        "404 Not Found",
        "201 Created",
    ]
    assert out["entry"][2]["resource"]["id"] == "p1" and out["entry"][3]["resource"]["meta"]["versionId"] == "1"
    assert out["entry"][4]["resource"]["type"] == "history"
    assert out["entry"][5]["response"]["outcome"]["resourceType"] == "OperationOutcome"
    created = out["entry"][6]
    assert "resource" not in created and "created" in created["response"]["outcome"]["issue"][0]["diagnostics"]


def test_batch_entries_are_independent(client: Any) -> None:
    bundle = _bundle(
        "batch",
        _entry("POST", "Patient", _patient("1"), P1),
        _entry("POST", "Patient", _patient("2", birthDate="nope"), O1),
        _entry("POST", "Observation", _obs(P1), O2),  # refers to another batch entry: not allowed
        _entry("PUT", "Patient/b1", {**_patient("3"), "id": "b1"}),
        _entry("DELETE", "Patient/absent"),
        _entry("POST", "NoSuchType", {"resourceType": "NoSuchType"}),
    )
    resp = _post(client, bundle, Prefer="return=representation")
    assert resp.status_code == 200
    out = resp.get_json()["entry"]
    statuses = [e["response"]["status"] for e in out]
    assert statuses == [
        "201 Created",
        "422 Unprocessable Entity",
        "400 Bad Request",
        "201 Created",
        "200 OK",
        "404 Not Found",
    ]
    assert out[0]["resource"]["resourceType"] == "Patient"
    assert out[1]["response"]["outcome"]["issue"][0]["expression"] == ["Bundle.entry[1].resource.birthDate"]
    assert "another entry of this batch" in out[2]["response"]["outcome"]["issue"][0]["diagnostics"]
    assert "Nothing to delete" in out[4]["response"]["outcome"]["issue"][0]["diagnostics"]
    assert _count(client, "Patient") == 2 and _count(client, "Observation") == 0


def test_bundle_checks(app: Any, client: Any) -> None:
    not_bundle = _post(client, _patient())
    assert not_bundle.status_code == 400
    collection = _post(client, _bundle("collection"))
    assert collection.status_code == 400 and "transaction or batch" in collection.get_json()["issue"][0]["diagnostics"]
    no_request = _post(client, {"resourceType": "Bundle", "type": "transaction", "entry": [{"resource": _patient()}]})
    assert no_request.status_code == 400 and "Bundle.entry[0]" in no_request.get_json()["issue"][0]["diagnostics"]
    typo = _post(client, _bundle("transaction", {"request": {"method": "POST", "url": "Patient", "ifNoneExists": "x"}}))
    assert typo.status_code == 400
    assert typo.get_json()["issue"][0]["expression"] == ["Bundle.entry[0].request.ifNoneExists"]
    duplicate = _post(
        client,
        _bundle("transaction", _entry("POST", "Patient", _patient(), P1), _entry("POST", "Patient", _patient(), P1)),
    )
    assert duplicate.status_code == 400 and "bdl-7" in duplicate.get_json()["issue"][0]["diagnostics"]
    elsewhere = _post(client, _bundle("transaction", _entry("GET", "http://other.example/fhir/Patient/1")))
    assert elsewhere.status_code == 400 and "not on this server" in elsewhere.get_json()["issue"][0]["diagnostics"]
    ours = _post(client, _bundle("transaction", _entry("POST", "http://testserver/fhir/Patient", _patient())))
    assert ours.status_code == 200
    slash = client.post("/fhir/", data=json.dumps(_bundle("batch", _entry("GET", "Patient"))), content_type=FHIR)
    assert slash.status_code == 200 and slash.get_json()["type"] == "batch-response"
    empty = _post(client, {"resourceType": "Bundle", "type": "batch"})
    assert empty.status_code == 200 and "entry" not in empty.get_json()
    assert _post(client, _bundle("batch")).status_code == 400  # "entry": [] is not FHIR JSON


@pytest.fixture
def small_app(database_url: str) -> Iterator[Any]:
    application = make_app(database_url, max_bundle_entries=2)
    yield application
    application.extensions["bigmed"].store.close()


def test_too_many_entries_is_413(small_app: Any) -> None:
    from server.config import Config

    assert Config.from_env({}).max_bundle_entries == 10_000
    assert Config.from_env({"BIGMED_MAX_BUNDLE_ENTRIES": "2"}).max_bundle_entries == 2
    client = small_app.test_client()
    entries = [_entry("POST", "Patient", _patient(str(i))) for i in range(3)]
    resp = _post(client, _bundle("transaction", *entries))
    assert resp.status_code == 413
    assert "BIGMED_MAX_BUNDLE_ENTRIES" in resp.get_json()["issue"][0]["diagnostics"]
    assert _post(client, _bundle("transaction", *entries[:2])).status_code == 200


def test_capability_statement_lists_transaction_and_batch(client: Any) -> None:
    rest = client.get("/fhir/metadata").get_json()["rest"][0]
    codes = {i["code"] for i in rest["interaction"]}
    assert {"transaction", "batch"} <= codes


# -- Synthea-style data -------------------------------------------------------------------


def _load_json(name: str) -> Any:
    return json.loads(next(DATA.glob(name)).read_text())


def test_synthea_style_reference_batches_then_patient_transactions(client: Any) -> None:
    hospitals = _post(client, _load_json("hospitalInformation*.json")).get_json()
    assert [e["response"]["status"] for e in hospitals["entry"]] == ["201 Created"] * 3
    location = client.get(f"/fhir/{_target(hospitals['entry'][2])}").get_json()
    assert location["managingOrganization"]["reference"] == _target(hospitals["entry"][0])  # conditional, resolved
    again = _post(client, _load_json("hospitalInformation*.json")).get_json()
    assert [e["response"]["status"] for e in again["entry"]] == ["200 OK"] * 3  # ifNoneExist matched
    _post(client, _load_json("practitionerInformation*.json"))

    resp = _post(client, _load_json("Kari_Nordmann_*.json"))
    assert resp.status_code == 200, resp.get_json()
    entries = resp.get_json()["entry"]
    patient = _target(entries[0])
    encounter = client.get(f"/fhir/{_target(entries[1])}").get_json()
    assert encounter["subject"]["reference"] == patient
    practitioner = encounter["participant"][0]["individual"]["reference"]
    assert practitioner.startswith("Practitioner/")
    assert client.get(f"/fhir/{practitioner}").get_json()["identifier"][0]["value"] == "9999991001"
    assert encounter["serviceProvider"]["reference"] == _target(hospitals["entry"][0])
    assert _count(client, f"Observation?subject={patient}") == 3

    failed = _post(client, _load_json("Ingrid_Berg_*.json"))
    assert failed.status_code == 412
    assert "matches no Practitioner" in failed.get_json()["issue"][0]["diagnostics"]
    assert _count(client, "Patient?family=Berg") == 0


def _sample_bundles(n: int) -> list[dict[str, Any]]:
    if not SAMPLE.exists():
        pytest.skip(f"the shared Synthea sample is absent ({SAMPLE})")
    out = []
    with tarfile.open(SAMPLE) as tar:
        for member in sorted((m for m in tar.getmembers() if m.name.endswith(".json")), key=lambda m: m.name)[:n]:
            fh = tar.extractfile(member)
            assert fh is not None
            out.append(json.loads(fh.read()))
    return out


def test_shared_synthea_sample_bundles_load_through_post(client: Any) -> None:
    for bundle in _sample_bundles(3):
        expected = copy.deepcopy(bundle)
        resp = _post(client, bundle)
        assert resp.status_code == 200, resp.get_json()
        entries = resp.get_json()["entry"]
        assert len(entries) == len(expected["entry"])
        assert all(e["response"]["status"] == "201 Created" for e in entries)
        ids = {req["fullUrl"]: _target(res) for req, res in zip(expected["entry"], entries, strict=True)}
        patient = next(t for t in ids.values() if t.startswith("Patient/"))
        observations = [
            (req, res)
            for req, res in zip(expected["entry"], entries, strict=True)
            if req["resource"]["resourceType"] == "Observation"
        ]
        for req, res in observations[:5]:
            stored = client.get(f"/fhir/{_target(res)}").get_json()
            assert stored["subject"]["reference"] == patient == ids[req["resource"]["subject"]["reference"]]
            assert stored["encounter"]["reference"] == ids[req["resource"]["encounter"]["reference"]]
        assert _count(client, f"Observation?subject={patient}") == len(observations)
