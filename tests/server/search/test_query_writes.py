"""Search answers follow writes: updates, deletes and composite rows, on both backends
(http://hl7.org/fhir/R4/search.html; results never include deleted or superseded versions)."""

from __future__ import annotations

from typing import Any

import pytest

from tests.server.search.searchdata import RESOURCES, component
from tests.server.search.searchutil import bundle, ids, put_all


@pytest.fixture
def data(client: Any) -> Any:
    put_all(client, RESOURCES)
    return client


def test_deleted_resources_break_chains_and_has(data: Any) -> None:
    assert sorted(ids(bundle(data, "Observation?subject:Patient.name=kari"))) == ["hb2"]
    data.delete("/fhir/Patient/kari")
    assert ids(bundle(data, "Observation?subject:Patient.name=kari")) == []
    assert sorted(ids(bundle(data, "Patient?_has:Observation:patient:code=718-7"))) == ["ola"]
    data.delete("/fhir/Observation/hb1")
    assert ids(bundle(data, "Patient?_has:Observation:patient:code=718-7")) == []
    assert ids(bundle(data, "Observation?code-value-quantity=718-7$gt1")) == ["hb2"]


def test_composite_rows_follow_updates(data: Any) -> None:
    bp1 = next(r for r in RESOURCES if r["id"] == "bp1")
    changed = {**bp1, "component": [component("8480-6", 190), component("8462-4", 80)]}
    data.put("/fhir/Observation/bp1", json=changed, headers={"Content-Type": "application/fhir+json"})
    assert sorted(ids(bundle(data, "Observation?component-code-value-quantity=8480-6$gt140"))) == ["bp1", "bp2"]
    assert ids(bundle(data, "Observation?component-code-value-quantity=8480-6$120")) == []


def test_escaped_separators(client: Any) -> None:
    put_all(
        client,
        [
            {"resourceType": "Patient", "id": "p1", "identifier": [{"system": "urn:x", "value": "a,b|c"}]},
            {"resourceType": "Patient", "id": "p2", "identifier": [{"system": "urn:x", "value": "a"}]},
        ],
    )
    assert ids(bundle(client, r"Patient?identifier=urn:x|a\,b\|c")) == ["p1"]
    assert sorted(ids(bundle(client, "Patient?identifier=urn:x|a,urn:x|b"))) == ["p2"]
