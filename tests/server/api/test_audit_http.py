"""The audit trail over HTTP when it cannot be written: fail closed, then recover (both audit modes)."""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Any

import pytest

from server.store.base import Store
from tests.conftest import make_app

FHIR = "application/fhir+json"


def _break(store: Store, broken: bool) -> None:
    names = ("audit_event", "audit_event_away") if broken else ("audit_event_away", "audit_event")
    with store.transaction() as tx:
        tx.cur.execute(f"ALTER TABLE {names[0]} RENAME TO {names[1]}")  # type: ignore[attr-defined]


def _wait(predicate: Any, seconds: float = 10.0) -> None:
    deadline = time.monotonic() + seconds
    while not predicate():
        assert time.monotonic() < deadline, "condition not reached in time"
        time.sleep(0.01)


@pytest.fixture(params=["async", "sync"])
def app(request: pytest.FixtureRequest, database_url: str) -> Iterator[Any]:
    application = make_app(database_url, audit_mode=request.param)
    c = application.test_client()
    assert c.put("/fhir/Patient/a1", json={"resourceType": "Patient", "id": "a1"}).status_code == 201
    yield application
    writer = application.extensions.get("bigmed_audit_writer")
    if writer is not None:
        writer.close(5)
    application.extensions["bigmed"].store.close()


def _trail(c: Any, **params: str) -> list[dict[str, Any]]:
    resp = c.get("/fhir/AuditEvent", query_string=params)
    assert resp.status_code == 200, resp.get_json()
    return [e["resource"] for e in resp.get_json().get("entry", [])]


def test_no_data_leaves_while_the_trail_cannot_be_written(app: Any) -> None:
    c = app.test_client()
    store = app.extensions["bigmed"].store
    writer = app.extensions.get("bigmed_audit_writer")
    if writer is not None:
        assert writer.flush(10)  # the seed's records are in
    _break(store, True)
    try:
        first = c.get("/fhir/Patient/a1")
        if writer is None:  # sync: the insert before the response fails, the data is withheld
            assert first.status_code == 503
        else:  # async: the record was accepted (kept and retried), the writer then learns of the failure
            assert first.status_code == 200
            _wait(lambda: writer.error is not None)
        for _ in range(2):
            refused = c.get("/fhir/Patient/a1")
            assert refused.status_code == 503
            body = refused.get_json()
            assert body["resourceType"] == "OperationOutcome" and "audit trail" in body["issue"][0]["diagnostics"]
            assert b'"Patient"' not in refused.get_data()
            assert refused.headers["Retry-After"]
        assert c.get("/fhir/Patient?_id=a1").status_code == 503
        if writer is not None:  # refused before any work: no change is made either
            created = c.put("/fhir/Patient/a2", json={"resourceType": "Patient", "id": "a2"})
            assert created.status_code == 503
    finally:
        _break(store, False)
    if writer is not None:
        assert writer.flush(10) and writer.healthy  # the kept record was committed by a retry
    assert c.get("/fhir/Patient/a1").status_code == 200
    assert c.get("/fhir/Patient/a2").status_code == 404
    reads = [e for e in _trail(c, patient="a1", action="R") if e["outcome"] == "0"]
    # async: the read accepted while the table was away, and the one after; sync: only the latter
    assert len(reads) == (2 if writer is not None else 1)


def test_a_created_resource_is_an_entity_of_the_request_event(app: Any) -> None:
    c = app.test_client()
    resp = c.post(
        "/fhir/Observation",
        json={
            "resourceType": "Observation",
            "status": "final",
            "code": {"text": "x"},
            "subject": {"reference": "Patient/a1"},
        },
    )
    assert resp.status_code == 201
    oid = resp.get_json()["id"]
    events = [e for e in _trail(c, patient="a1") if e["subtype"][0]["code"] == "create"]
    whats = {x.get("what", {}).get("reference") for e in events for x in e.get("entity", [])}
    assert f"Observation/{oid}/_history/1" in whats
