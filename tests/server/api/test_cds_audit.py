"""Every CDS Hooks service call leaves an AuditEvent (agent = the CDS client, patient from the context)."""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Any

import pytest

from server.api.cds import CDS_HOOK_INSTANCE, CDS_SERVICE
from server.cds.samples import SANDBOX_ISSUER
from server.fhir import crud
from tests.conftest import make_app
from tests.server.cds.cdsutil import auth, hook_request, med_order

PATH = "/cds-services/pgx-order-sign"


@pytest.fixture
def app(database_url: str) -> Iterator[Any]:
    application = make_app(database_url)
    ctx = application.extensions["bigmed"]
    crud.update(ctx, "Patient", "p1", {"resourceType": "Patient", "id": "p1"})
    yield application
    application.extensions["bigmed_audit_writer"].close(5)
    ctx.store.close()


def _call(c: Any, body: dict[str, Any], **jwt: Any) -> Any:
    return c.post(PATH, json=body, headers=auth(PATH, **jwt))


def _events(c: Any, **params: str) -> list[dict[str, Any]]:
    resp = c.get("/fhir/AuditEvent", query_string=params)
    assert resp.status_code == 200
    return [e["resource"] for e in resp.get_json().get("entry", [])]


def _identifiers(event: dict[str, Any]) -> dict[str, str]:
    return {
        x["what"]["identifier"]["system"]: x["what"]["identifier"]["value"]
        for x in event.get("entity", [])
        if "identifier" in x.get("what", {})
    }


def test_a_service_call_is_audited_with_client_patient_and_service(app: Any) -> None:
    c = app.test_client()
    body = hook_request("order-sign", [med_order("mr1", text="Plavix 75 mg")], {"pgx": None, "conditions": None})
    resp = _call(c, body, sub="ehr-user-7")
    assert resp.status_code == 200 and "cards" in resp.get_json()
    (event,) = _events(c, agent=SANDBOX_ISSUER)
    assert event["action"] == "E" and event["outcome"] == "0"
    agent = event["agent"][0]
    assert agent["who"]["identifier"]["value"] == SANDBOX_ISSUER and agent["altId"] == "ehr-user-7"
    assert agent["network"]["address"] == "127.0.0.1"
    assert {"reference": "Patient/p1"} in [x.get("what") for x in event["entity"]]
    assert _identifiers(event) == {CDS_SERVICE: "pgx-order-sign", CDS_HOOK_INSTANCE: body["hookInstance"]}
    assert [e["id"] for e in _events(c, patient="p1", agent=SANDBOX_ISSUER)] == [event["id"]]


def test_refused_calls_are_audited_unverified_ones_are_not(app: Any) -> None:
    c = app.test_client()
    bad = hook_request("patient-view", patient="p1")  # the wrong hook for this service: 400
    assert _call(c, bad).status_code == 400
    assert c.post(PATH, json=bad).status_code == 401  # no JWT: nothing was done, nobody to record
    (event,) = _events(c, agent=SANDBOX_ISSUER)
    assert event["outcome"] == "4" and event["outcomeDesc"] == "HTTP 400"
    assert {"reference": "Patient/p1"} in [x.get("what") for x in event["entity"]]
    assert c.get("/cds-services", headers=auth("/cds-services")).status_code == 200  # discovery: no patient data
    assert len(_events(c, agent=SANDBOX_ISSUER)) == 1


def test_no_cards_while_the_trail_cannot_be_written(app: Any) -> None:
    c = app.test_client()
    writer = app.extensions["bigmed_audit_writer"]
    store = app.extensions["bigmed"].store
    assert writer.flush(10)
    with store.transaction() as tx:
        tx.cur.execute("ALTER TABLE audit_event RENAME TO audit_event_away")
    body = hook_request("order-sign", [med_order("mr1", text="Plavix 75 mg")], {"pgx": None, "conditions": None})
    try:
        _call(c, body)  # accepted: its record waits in the queue, the writer then fails
        deadline = time.monotonic() + 10
        while writer.error is None:
            assert time.monotonic() < deadline
            time.sleep(0.01)
        refused = _call(c, {**body, "hookInstance": "again"})
        assert refused.status_code == 503 and "cards" not in refused.get_json()
    finally:
        with store.transaction() as tx:
            tx.cur.execute("ALTER TABLE audit_event_away RENAME TO audit_event")
    assert writer.flush(10)
    # the accepted call's record was kept and written by a retry; the refused call did nothing (no record)
    (event,) = _events(c, agent=SANDBOX_ISSUER)
    assert _identifiers(event)[CDS_HOOK_INSTANCE] == body["hookInstance"]
