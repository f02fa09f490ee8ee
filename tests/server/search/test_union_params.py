"""Union parameters (``combo-*``): no index rows of their own, searched through their sources.

``combo-code`` is ``Observation.code | Observation.component.code``, that is ``code`` with
``component-code`` (``Registry.unions``). These tests search every union parameter of R4 with
its modifiers, prefixes and composite values on both backends, and check that no union rows are
stored. A composite union must match its components on one item of one source: ``mix`` has
code 2339-0 with value 5 and a component 8480-6 with value 200, so ``2339-0$200`` matches
nothing (the rows of the two sources have overlapping item numbers).
"""

from __future__ import annotations

from typing import Any

import pytest

from server.search.registry import Registry, default_registry
from tests.server.search.searchutil import backend_fixtures, bundle, ids

LOINC = "http://loinc.org"
UCUM = "http://unitsofmeasure.org"


def _quantity(value: float, code: str) -> dict[str, Any]:
    return {"value": value, "unit": code, "system": UCUM, "code": code}


def _coded(code: str, system: str = LOINC) -> dict[str, Any]:
    return {"coding": [{"system": system, "code": code}]}


RESOURCES: list[dict[str, Any]] = [{"resourceType": "Patient", "id": f"p{n}"} for n in range(1, 4)] + [
    {
        "resourceType": "Observation",
        "id": "lab",
        "status": "final",
        "code": _coded("718-7"),
        "subject": {"reference": "Patient/p3"},
        "valueQuantity": _quantity(13.5, "g/dL"),
    },
    {
        "resourceType": "Observation",
        "id": "bp",
        "status": "final",
        "code": _coded("85354-9"),
        "subject": {"reference": "Patient/p1"},
        "component": [
            {"code": _coded("8480-6"), "valueQuantity": _quantity(150, "mm[Hg]")},
            {"code": _coded("8462-4"), "valueQuantity": _quantity(70, "mm[Hg]")},
        ],
    },
    {
        "resourceType": "Observation",
        "id": "mix",
        "status": "final",
        "code": _coded("2339-0"),
        "subject": {"reference": "Patient/p2"},
        "valueQuantity": _quantity(5, "mg/dL"),
        "component": [{"code": _coded("8480-6"), "valueQuantity": _quantity(200, "mm[Hg]")}],
    },
    {
        "resourceType": "Observation",
        "id": "concept",
        "status": "final",
        "code": _coded("x", "urn:c"),
        "valueCodeableConcept": _coded("pos", "urn:s"),
    },
    {
        "resourceType": "Observation",
        "id": "absent",
        "status": "final",
        "code": _coded("y", "urn:c"),
        "dataAbsentReason": _coded("asked-unknown", "http://terminology.hl7.org/CodeSystem/data-absent-reason"),
    },
    {"resourceType": "Observation", "id": "none", "status": "final", "code": {"text": "Free text only"}},
]
OBSERVATIONS = sorted(r["id"] for r in RESOURCES if r["resourceType"] == "Observation")


def test_r4s_union_parameters_are_observations_combo_parameters() -> None:
    registry = default_registry()
    found = {
        (t, code): [p.code for p in sources]
        for t in sorted(registry.resource_types())
        for code, sources in registry.unions(t).items()
    }
    assert found == {
        ("Observation", "combo-code"): ["code", "component-code"],
        ("Observation", "combo-code-value-concept"): ["code-value-concept", "component-code-value-concept"],
        ("Observation", "combo-code-value-quantity"): ["code-value-quantity", "component-code-value-quantity"],
        ("Observation", "combo-data-absent-reason"): ["component-data-absent-reason", "data-absent-reason"],
        ("Observation", "combo-value-concept"): ["component-value-concept", "value-concept"],
        ("Observation", "combo-value-quantity"): ["component-value-quantity", "value-quantity"],
    }


def test_a_parameter_is_a_union_only_when_its_sources_cover_it() -> None:
    registry = default_registry()
    # without component-code, combo-code is no union: its second branch has no parameter of its own
    kept = [p for p in registry.all() if not (p.code == "component-code" and "Observation" in p.base)]
    narrower = Registry(kept, registry.types)
    assert "combo-code" not in narrower.unions("Observation")
    assert "combo-value-quantity" in narrower.unions("Observation")


loaded, client = backend_fixtures(RESOURCES, "unions")


def test_no_union_rows_are_stored(loaded: Any) -> None:
    store = loaded.extensions["bigmed"].store
    for table in ("token", "quantity"):
        rows = store.query(f"SELECT COUNT(*) FROM idx_{table} WHERE param LIKE ?", ("combo-%",))
        assert rows[0][0] == 0, table
    # while their sources have theirs
    sources = store.query("SELECT COUNT(*) FROM idx_token WHERE param IN (?, ?)", ("code", "component-code"))
    assert sources[0][0] >= 9


@pytest.mark.parametrize(
    ("query", "expected"),
    [
        ("combo-code=718-7", ["lab"]),
        ("combo-code=8480-6", ["bp", "mix"]),  # component codes
        ("combo-code=http://loinc.org|85354-9", ["bp"]),
        ("combo-code=urn:c|", ["absent", "concept"]),
        ("combo-code=718-7,8462-4", ["bp", "lab"]),
        ("combo-code:text=free", ["none"]),
        ("combo-code:not=8480-6", ["absent", "concept", "lab", "none"]),
        ("combo-code:not=8480-6,718-7", ["absent", "concept", "none"]),
        ("combo-code:missing=false", OBSERVATIONS),
        ("combo-value-quantity=gt100", ["bp", "mix"]),
        ("combo-value-quantity=5|http://unitsofmeasure.org|mg/dL", ["mix"]),
        ("combo-value-quantity=13.5", ["lab"]),
        ("combo-value-quantity=lt10", ["mix"]),
        ("combo-value-quantity:missing=true", ["absent", "concept", "none"]),
        ("combo-value-quantity:missing=false", ["bp", "lab", "mix"]),
        ("combo-value-concept=urn:s|pos", ["concept"]),
        ("combo-data-absent-reason=asked-unknown", ["absent"]),
        ("combo-data-absent-reason:missing=true", ["bp", "concept", "lab", "mix", "none"]),
        ("combo-code-value-quantity=8480-6$gt140", ["bp", "mix"]),
        ("combo-code-value-quantity=8480-6$200", ["mix"]),
        ("combo-code-value-quantity=2339-0$5", ["mix"]),
        ("combo-code-value-quantity=2339-0$200", []),  # code of one item, value of another
        ("combo-code-value-quantity=85354-9$150", []),
        ("combo-code-value-quantity=8462-4$lt100,718-7$gt10", ["bp", "lab"]),
        ("combo-code-value-quantity:missing=true", ["absent", "concept", "none"]),
        ("combo-code-value-concept=x$urn:s|pos", ["concept"]),
        ("combo-code-value-concept=y$urn:s|pos", []),
        ("combo-code=8480-6&combo-value-quantity=lt10", ["mix"]),  # on any item each: AND of two parameters
        ("combo-code=8480-6&status=final&subject=Patient/p1", ["bp"]),
    ],
)
def test_union_search(client: Any, query: str, expected: list[str]) -> None:
    assert sorted(ids(bundle(client, f"Observation?{query}"))) == expected


def test_union_parameters_chain_and_reverse_chain(client: Any) -> None:
    assert sorted(ids(bundle(client, "Patient?_has:Observation:subject:combo-code=8480-6"))) == ["p1", "p2"]
    assert sorted(ids(bundle(client, "Patient?_has:Observation:subject:combo-value-quantity=gt10"))) == [
        "p1",
        "p2",
        "p3",
    ]


def test_sort_by_a_union_parameter_reads_every_source(client: Any) -> None:
    # each resource's lowest code among code and component codes
    order = ids(bundle(client, "Observation?_sort=combo-code&combo-code:missing=false"))
    lowest = {"mix": "2339-0", "lab": "718-7", "bp": "8462-4", "concept": "x", "absent": "y"}
    assert [i for i in order if i in lowest] == sorted(lowest, key=lowest.__getitem__)
    descending = ids(bundle(client, "Observation?_sort=-combo-value-quantity&combo-value-quantity:missing=false"))
    assert descending == ["mix", "bp", "lab"]  # highest values 200, 150, 13.5
