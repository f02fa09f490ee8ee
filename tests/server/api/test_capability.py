"""The CapabilityStatement is generated from the registries the server runs on."""

from __future__ import annotations

from typing import Any

from server.fhir.validation import resource_types
from server.search.registry import default_registry


def test_metadata(client: Any) -> None:
    resp = client.get("/fhir/metadata")
    assert resp.status_code == 200
    cs = resp.get_json()
    assert cs["resourceType"] == "CapabilityStatement" and cs["fhirVersion"] == "4.0.1"
    assert cs["kind"] == "instance" and "application/fhir+json" in cs["format"]
    (rest,) = cs["rest"]
    by_type = {r["type"]: r for r in rest["resource"]}
    assert set(by_type) == set(resource_types()) and len(by_type) == 146
    patient = by_type["Patient"]
    assert {i["code"] for i in patient["interaction"]} >= {"read", "vread", "update", "patch", "delete", "create"}
    assert patient["conditionalCreate"] is True and patient["conditionalDelete"] == "single"
    params = {p["name"]: p["type"] for p in patient["searchParam"]}
    assert params["name"] == "string" and params["identifier"] == "token" and params["_lastUpdated"] == "date"
    # every listed parameter is one the registry defines for the type, of a type the engine searches
    registry = default_registry().params_for("Observation")
    for p in by_type["Observation"]["searchParam"]:
        assert registry[p["name"]].type == p["type"] != "special"
    obs_params = {p["name"]: p["type"] for p in by_type["Observation"]["searchParam"]}
    assert obs_params["code-value-quantity"] == "composite" and "_text" not in obs_params
    assert "Observation:subject" in by_type["Observation"]["searchInclude"]
    assert "Observation:subject" in patient["searchRevInclude"] and "*" in patient["searchRevInclude"]
    location = by_type["Location"]
    assert "near" not in {p["name"] for p in location["searchParam"]} and "near" in location["documentation"]
    assert "near" in rest["documentation"]
    assert {p["name"] for p in rest["searchParam"]} >= {"_id", "_lastUpdated", "_tag", "_profile", "_security"}
    assert "http://hl7.org/fhir/CompartmentDefinition/patient" in rest["compartment"]
    assert {"code": "search-system"} in rest["interaction"]
    assert "R4 StructureDefinition" in by_type["MedicinalProduct"]["documentation"]
    assert "R4B" in patient["documentation"]
    assert {"code": "history-system"} in rest["interaction"]


def test_health(client: Any) -> None:
    body = client.get("/healthz").get_json()
    assert body["status"] == "ok" and body["store"]["status"] == "ok"
