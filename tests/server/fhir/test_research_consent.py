"""Consent for secondary use by the client's registered purpose: Group $export and Patient/$similar.

Research clients never see patients who denied research use (active Consent, scope research,
provision deny); treatment clients (direct care) are not affected. BIGMED_AUTH=smart, real tokens.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from server.auth.clients import add_client
from tests.conftest import make_app
from tests.server.auth.authutil import bearer, rsa_key
from tests.server.fhir.test_rare_operations import phenotype

BASE = "http://testserver"
ASYNC = {"Prefer": "respond-async", "Accept": "application/fhir+json"}
MARFAN = ["HP:0001166", "HP:0001083"]


def _consent(patient: str) -> dict[str, Any]:
    return {
        "resourceType": "Consent",
        "id": f"{patient}-research",
        "status": "active",
        "scope": {"coding": [{"system": "http://terminology.hl7.org/CodeSystem/consentscope", "code": "research"}]},
        "category": [{"coding": [{"system": "http://loinc.org", "code": "57016-8"}]}],
        "patient": {"reference": f"Patient/{patient}"},
        "policyRule": {"coding": [{"system": "http://terminology.hl7.org/CodeSystem/v3-ActCode", "code": "OPTOUT"}]},
        "provision": {"type": "deny"},
    }


def _data() -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = [{"resourceType": "Patient", "id": p} for p in ("p1", "p2", "p3")]
    for p in ("p1", "p2", "p3"):  # p2 and p3 share p1's phenotypes; p3 denied research use
        out += [phenotype(f"{p}-h{i}", p, code) for i, code in enumerate(MARFAN)]
    out.append(_consent("p3"))
    out.append({"resourceType": "Organization", "id": "org1", "name": "Haukeland"})  # outside any compartment
    out.append(
        {
            "resourceType": "Group",
            "id": "g1",
            "type": "person",
            "actual": True,
            "member": [{"entity": {"reference": f"Patient/{p}"}} for p in ("p1", "p2", "p3")],
        }
    )
    return out


@pytest.fixture
def app(database_url: str, tmp_path: Path) -> Iterator[Any]:
    application = make_app(database_url, auth="smart", rate_limit=0, export_dir=str(tmp_path / "exports"))
    store = application.extensions["bigmed"].store
    for cid, purpose in (("loader", "treatment"), ("care", "treatment"), ("study", "research")):
        add_client(store, cid, scopes="system/*.cruds", jwks=rsa_key().jwks, purpose=purpose)
    c = application.test_client()
    h = _bearer(c, "loader", "system/*.cruds")
    for res in _data():
        resp = c.put(f"/fhir/{res['resourceType']}/{res['id']}", json=res, headers=h)
        assert resp.status_code == 201, resp.get_json()
    yield application
    application.extensions["bigmed_audit_writer"].close(5)
    store.close()


def _bearer(c: Any, client_id: str, scope: str = "system/*.rs") -> dict[str, str]:
    return bearer(c, client_id, scope, base=BASE)


def _export(c: Any, h: dict[str, str], url: str) -> dict[str, list[str]]:
    """Run an export to the end; ``Type -> ids`` of what its files hold."""
    kick = c.get(url, headers={**ASYNC, **h})
    assert kick.status_code == 202, kick.get_json()
    status = kick.headers["Content-Location"].removeprefix(BASE)
    deadline = time.monotonic() + 30
    while (poll := c.get(status, headers=h)).status_code == 202:
        assert time.monotonic() < deadline
        time.sleep(0.05)
    assert poll.status_code == 200, poll.get_data(as_text=True)
    found: dict[str, list[str]] = {}
    for out in poll.get_json()["output"]:
        body = c.get(out["url"].removeprefix(BASE), headers=h).get_data(as_text=True)
        found.setdefault(out["type"], []).extend(json.loads(line)["id"] for line in body.splitlines())
    return {k: sorted(v) for k, v in found.items()}


def test_group_export_leaves_out_research_denials_for_research_clients_only(app: Any) -> None:
    c = app.test_client()
    research = _export(c, _bearer(c, "study"), "/fhir/Group/g1/$export")
    assert research["Patient"] == ["p1", "p2"]
    assert research["Observation"] == ["p1-h0", "p1-h1", "p2-h0", "p2-h1"]
    assert "Consent" not in research  # p3's Consent is in p3's compartment too
    care = _export(c, _bearer(c, "care"), "/fhir/Group/g1/$export")
    assert care["Patient"] == ["p1", "p2", "p3"]
    assert "p3-h0" in care["Observation"] and care["Consent"] == ["p3-research"]


def test_system_export_for_research_keeps_resources_outside_the_compartment(app: Any) -> None:
    c = app.test_client()
    research = _export(c, _bearer(c, "study"), "/fhir/$export?_type=Patient,Observation,Organization,Group")
    assert research["Patient"] == ["p1", "p2"] and research["Organization"] == ["org1"]
    assert not any(i.startswith("p3") for i in research["Observation"])


def _similar(c: Any, h: dict[str, str]) -> list[str]:
    resp = c.get("/fhir/Patient/p1/$similar?minScore=0", headers=h)
    assert resp.status_code == 200, resp.get_json()
    return [
        part["valueReference"]["reference"]
        for p in resp.get_json()["parameter"]
        if p["name"] == "match"
        for part in p["part"]
        if part["name"] == "patient"
    ]


def test_similar_honours_the_purpose(app: Any) -> None:
    c = app.test_client()
    assert _similar(c, _bearer(c, "study")) == ["Patient/p2"]
    assert sorted(_similar(c, _bearer(c, "care"))) == ["Patient/p2", "Patient/p3"]
