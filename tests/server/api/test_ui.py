"""The sandbox UI at ``/`` (server/api/ui.py): the page, its assets, and the API calls it makes."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest

FHIR = "application/fhir+json"
APP_JS = Path(__file__).resolve().parents[3] / "server" / "api" / "ui" / "app.js"


def test_index_page_links_its_assets(client: Any) -> None:
    resp = client.get("/")
    assert resp.status_code == 200 and resp.mimetype == "text/html"
    page = resp.get_data(as_text=True)
    assert "<title>BigMed FHIR sandbox</title>" in page
    policy = resp.headers["Content-Security-Policy"]  # the browser may run the page's own script and style only
    assert "script-src 'self'" in policy and "style-src 'self'" in policy and "connect-src 'self'" in policy
    assert "<script>" not in page and "style=" not in page  # nothing inline, which that policy would block
    for asset, mimetype in (("/ui/app.js", "text/javascript"), ("/ui/style.css", "text/css")):
        assert f'"{asset}"' in page
        got = client.get(asset)
        assert got.status_code == 200 and got.mimetype == mimetype and len(got.get_data()) > 500
    assert client.get("/ui/missing.js").status_code == 404


def test_the_page_escapes_what_it_shows() -> None:
    """Data from the server is only ever inserted as text (no innerHTML): a name cannot inject markup."""
    script = APP_JS.read_text()
    assert "innerHTML" not in script and "insertAdjacentHTML" not in script
    assert "document.createTextNode" in script


@pytest.fixture
def patient_with_data(client: Any) -> str:
    patient = {"resourceType": "Patient", "name": [{"family": "Test", "given": ["<b>Ada</b>"]}], "gender": "female"}
    pid = client.post("/fhir/Patient", json=patient, headers={"Content-Type": FHIR}).get_json()["id"]
    lab = {
        "resourceType": "Observation",
        "status": "final",
        "category": [
            {"coding": [{"system": "http://terminology.hl7.org/CodeSystem/observation-category", "code": "laboratory"}]}
        ],
        "code": {"coding": [{"system": "http://loinc.org", "code": "2160-0", "display": "Creatinine"}]},
        "subject": {"reference": f"Patient/{pid}"},
        "effectiveDateTime": "2026-01-02",
        "valueQuantity": {"value": 1.1, "unit": "mg/dL"},
    }
    assert client.post("/fhir/Observation", json=lab, headers={"Content-Type": FHIR}).status_code == 201
    return str(pid)


def test_every_search_the_patient_page_makes_answers(client: Any, patient_with_data: str) -> None:
    """The searches in app.js (read from the script itself) are valid on this server and find the lab."""
    script = APP_JS.read_text()
    templates = re.findall(
        r"`(/(?:Condition|MedicationRequest|Observation|DiagnosticReport)\?patient=\$\{pid\}[^`]*)`", script
    )
    assert len(templates) >= 6
    found_lab = False
    for template in templates:
        path = template.replace("${pid}", patient_with_data)
        for name, value in (
            ("LOINC", "http://loinc.org"),
            ("TBD", "http://hl7.org/fhir/uv/genomics-reporting/CodeSystem/tbd-codes-cs"),
        ):
            path = re.sub(
                r"\$\{encodeURIComponent\(" + name + r' \+ "\|([^"]+)"\)\}',
                lambda m, v=value: f"{v}|{m.group(1)}",
                path,
            )
        assert "${" not in path, path
        resp = client.get(f"/fhir{path}", headers={"Accept": FHIR})
        assert resp.status_code == 200, (path, resp.get_json())
        if "category=laboratory" in path:
            found_lab = [e["resource"]["code"]["coding"][0]["code"] for e in resp.get_json().get("entry", [])] == [
                "2160-0"
            ]
    assert found_lab
