"""Ingestion under BIGMED_AUTH=smart: a background $ingest-vcf job is polled only by the client that
started it, and each ingest request's AuditEvent names the patient and what it created."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from server.api.hl7v2 import HL7_MESSAGE
from server.auth.clients import add_client
from tests.conftest import make_app
from tests.server.auth.authutil import bearer, rsa_key

BASE = "http://testserver"
VEP = Path(__file__).resolve().parents[2] / "data" / "vcf" / "vep_clinvar_grch37.vcf"
SCOPES = "system/*.cruds system/AuditEvent.rs"


@pytest.fixture
def app(database_url: str) -> Iterator[Any]:
    application = make_app(database_url, auth="smart", rate_limit=0)
    store = application.extensions["bigmed"].store
    for cid in ("lab1", "lab2"):
        add_client(store, cid, scopes=SCOPES, jwks=rsa_key().jwks)
    c = application.test_client()
    assert (
        c.put("/fhir/Patient/p1", json={"resourceType": "Patient", "id": "p1"}, headers=_bearer(c, "lab1")).status_code
        == 201
    )
    yield application
    application.extensions["bigmed_audit_writer"].close(5)
    store.close()


def _bearer(c: Any, client_id: str) -> dict[str, str]:
    return bearer(c, client_id, SCOPES, base=BASE)


def _events(c: Any, h: dict[str, str], **params: str) -> list[dict[str, Any]]:
    resp = c.get("/fhir/AuditEvent", query_string=params, headers=h)
    assert resp.status_code == 200
    return [e["resource"] for e in resp.get_json().get("entry", [])]


def _whats(event: dict[str, Any]) -> set[str]:
    return {x["what"]["reference"] for x in event.get("entity", []) if "reference" in x.get("what", {})}


def test_only_the_starting_client_polls_a_background_ingest(app: Any) -> None:
    c = app.test_client()
    h1, h2 = _bearer(c, "lab1"), _bearer(c, "lab2")
    kick = c.post(
        "/fhir/Patient/p1/$ingest-vcf",
        data=VEP.read_bytes(),
        content_type="text/plain",
        headers={**h1, "Prefer": "respond-async"},
    )
    assert kick.status_code == 202
    status = kick.headers["Content-Location"].removeprefix(BASE)
    task_id = status.split("/")[3]
    assert c.get(status, headers=h2).status_code == 404  # another client: the job does not exist for it
    deadline = time.monotonic() + 60
    while (poll := c.get(status, headers=h1)).status_code == 202:
        assert time.monotonic() < deadline
        time.sleep(0.05)
    assert poll.status_code == 200 and poll.get_json()["resourceType"] == "DiagnosticReport"
    report = f"DiagnosticReport/{poll.get_json()['id']}"
    assert c.get(status, headers=h2).status_code == 404  # also once finished
    task = c.get(f"/fhir/Task/{task_id}", headers=h1).get_json()
    assert task["requester"]["identifier"]["value"] == "lab1"

    events = _events(c, h1, agent="lab1", patient="p1")
    started = next(e for e in events if e["outcome"] == "0" and f"Task/{task_id}" in _whats(e))
    assert "Patient/p1" in _whats(started) and started["action"] == "E"
    collected = next(e for e in events if any(w.startswith(report) for w in _whats(e)))
    assert "Patient/p1" in _whats(collected)  # the poll that handed out the report names its patient
    refused = [e for e in _events(c, h1, agent="lab2") if e["outcome"] == "4"]
    assert refused, "the refused polls are in the trail too"


def test_a_synchronous_ingest_names_patient_and_report(app: Any) -> None:
    c = app.test_client()
    h1 = _bearer(c, "lab1")
    resp = c.post("/fhir/Patient/p1/$ingest-vcf", data=VEP.read_bytes(), content_type="text/plain", headers=h1)
    assert resp.status_code == 201
    report = f"DiagnosticReport/{resp.get_json()['id']}/_history/1"
    (event,) = [e for e in _events(c, h1, agent="lab1", patient="p1") if report in _whats(e)]
    assert "Patient/p1" in _whats(event) and event["outcome"] == "0"


def test_an_hl7_request_lists_the_stored_messages(app: Any) -> None:
    c = app.test_client()
    h1 = _bearer(c, "lab1")
    body = (Path(__file__).resolve().parents[2] / "data" / "hl7v2" / "epic_oru_mllp.hl7").read_bytes()
    patients_sql = "SELECT res_id FROM resources WHERE res_type = 'Patient'"
    before = set(app.extensions["bigmed"].store.query(patients_sql))
    assert c.post("/hl7v2", data=body, content_type="application/hl7-v2", headers=h1).status_code == 200
    events = [
        e
        for e in _events(c, h1, agent="lab1")
        if any(x.get("what", {}).get("identifier", {}).get("system") == HL7_MESSAGE for x in e.get("entity", []))
    ]
    assert events  # one AuditEvent per patient the request touched (so ?patient= finds each), all alike
    for event in events:
        ids = [x["what"]["identifier"]["value"] for x in event["entity"] if "identifier" in x.get("what", {})]
        assert ids == ["EPIC-ORU-0001", "EPIC-ORU-0002"] and event["outcome"] == "0"
    stored = set(app.extensions["bigmed"].store.query(patients_sql)) - before
    named = set().union(*(_whats(e) for e in events))
    assert stored and {f"Patient/{pid}" for (pid,) in stored} <= named  # whom the messages were about
