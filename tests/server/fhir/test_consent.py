"""Research-use denial read from Consent resources (server/fhir/consent.py)."""

from __future__ import annotations

from typing import Any

import pytest

from server.fhir.consent import denies_research, research_denied
from tests.conftest import make_app

SCOPE = "http://terminology.hl7.org/CodeSystem/consentscope"
NOW = 1_750_000_000.0  # 2025-06-15


def consent(patient: str = "p1", **changes: Any) -> dict[str, Any]:
    base: dict[str, Any] = {
        "resourceType": "Consent",
        "id": f"c-{patient}",
        "status": "active",
        "scope": {"coding": [{"system": SCOPE, "code": "research"}]},
        "category": [{"coding": [{"system": "http://loinc.org", "code": "57016-8"}]}],
        "patient": {"reference": f"Patient/{patient}"},
        "policyRule": {"coding": [{"system": "http://terminology.hl7.org/CodeSystem/v3-ActCode", "code": "OPTOUT"}]},
        "provision": {"type": "deny"},
    }
    base.update(changes)
    return base


@pytest.mark.parametrize(
    ("changes", "denied"),
    [
        ({}, True),
        ({"status": "inactive"}, False),
        ({"status": "proposed"}, False),
        ({"provision": {"type": "permit"}}, False),
        ({"scope": {"coding": [{"system": SCOPE, "code": "patient-privacy"}]}}, False),
        ({"provision": {"type": "deny", "period": {"end": "2024-01-01"}}}, False),  # expired
        ({"provision": {"type": "deny", "period": {"start": "2025-01-01"}}}, True),
        ({"provision": {"type": "permit", "provision": [{"type": "deny", "purpose": [{"code": "HRESCH"}]}]}}, True),
        ({"provision": {"type": "permit", "provision": [{"type": "deny", "purpose": [{"code": "HMARKT"}]}]}}, False),
    ],
)
def test_denies_research(changes: dict[str, Any], denied: bool) -> None:
    assert denies_research(consent(**changes), NOW) is denied


def test_research_denied_reads_the_store(database_url: str) -> None:
    app = make_app(database_url)
    client = app.test_client()
    try:
        for pid in ("p1", "p2", "p3"):
            assert client.put(f"/fhir/Patient/{pid}", json={"resourceType": "Patient", "id": pid}).status_code == 201
        assert client.put("/fhir/Consent/c-p1", json=consent("p1")).status_code == 201
        assert client.put("/fhir/Consent/c-p2", json=consent("p2", status="inactive")).status_code == 201
        ctx = app.extensions["bigmed"]
        assert research_denied(ctx) == {"p1"}
        assert research_denied(ctx, ["p2", "p3"]) == set()
    finally:
        app.extensions["bigmed"].store.close()
