"""Composites on the resource itself, searched through their components' own parameters.

``code-value-quantity`` has the Observation as its one item, and its components select exactly
``code``'s and ``value-quantity``'s values (``extract.root_composites``), so it has no rows of
its own: ``A$B`` is ``code=A`` and ``value-quantity=B``. These tests pin which R4 composites
qualify (and which do not), prove on every R4 Observation example that the component values are
the source parameters' values, and search each qualifying composite with prefixes, units,
several values, ``:missing`` and bad values on both backends.
"""

from __future__ import annotations

import re
import tarfile
from collections.abc import Iterator
from dataclasses import replace
from typing import Any

import pytest

from server import jsonio
from server.search.extract import composite_sources, extractor_for, root_composites
from server.search.registry import Registry, default_registry
from tests.server.search.searchutil import backend_fixtures, bundle, ids
from tests.server.search.test_extract import EXAMPLES, fhirpathpy_rows

LOINC = "http://loinc.org"
UCUM = "http://unitsofmeasure.org"


def _coded(code: str, system: str = LOINC) -> dict[str, Any]:
    return {"coding": [{"system": system, "code": code}]}


def _observation(id_: str, code: str, **value: Any) -> dict[str, Any]:
    return {"resourceType": "Observation", "id": id_, "status": "final", "code": _coded(code), **value}


RESOURCES: list[dict[str, Any]] = [
    _observation("hb", "718-7", valueQuantity={"value": 13.5, "unit": "g/dL", "system": UCUM, "code": "g/dL"}),
    _observation("hb-low", "718-7", valueQuantity={"value": 9, "unit": "g/dL", "system": UCUM, "code": "g/dL"}),
    _observation("k", "2823-3", valueQuantity={"value": 13.5, "unit": "mmol/L", "system": UCUM, "code": "mmol/L"}),
    _observation("pos", "94500-6", valueCodeableConcept=_coded("260373001", "http://snomed.info/sct")),
    _observation("onset", "11368-8", valueDateTime="2024-03-05"),
    _observation("period", "11368-8", valuePeriod={"start": "2023-01-01", "end": "2023-06-30"}),
    _observation("text", "8302-2", valueString="tall"),
    # a component with a quantity is not the resource's value: code-value-quantity ignores it
    _observation(
        "bp",
        "85354-9",
        component=[{"code": _coded("8480-6"), "valueQuantity": {"value": 150, "system": UCUM, "code": "mm[Hg]"}}],
    ),
]
ALL = sorted(r["id"] for r in RESOURCES)


def test_r4s_root_composites_are_observations_code_value_parameters() -> None:
    registry = default_registry()
    found = {
        (t, code): [p.code for p in sources]
        for t in sorted(registry.resource_types())
        for code, sources in root_composites(registry, t).items()
    }
    assert found == {
        ("Observation", "code-value-concept"): ["code", "value-concept"],
        ("Observation", "code-value-date"): ["code", "value-date"],
        ("Observation", "code-value-quantity"): ["code", "value-quantity"],
    }
    # code-value-string's value is value.as(string); value-string also indexes CodeableConcept.text
    assert composite_sources(registry, registry.get("Observation", "code-value-string")) == ()
    # composites over items (components, useContext) keep their rows
    assert composite_sources(registry, registry.get("Observation", "component-code-value-quantity")) == ()


def test_a_composite_is_searched_through_parameters_only_when_each_component_has_one() -> None:
    registry = default_registry()
    # with a value-date of dateTimes only, code-value-date's second component (dateTime and
    # Period) is no parameter's values: it keeps its rows
    only_datetimes = "(Observation.value as dateTime)"
    kept = [
        replace(p, expression=only_datetimes, expressions=(("Observation", only_datetimes),))
        if p.code == "value-date" and p.base == ("Observation",)
        else p
        for p in registry.all()
    ]
    narrower = Registry(kept, registry.types)
    assert "code-value-date" not in root_composites(narrower, "Observation")
    assert "code-value-quantity" in root_composites(narrower, "Observation")
    observation = _observation("d", "x", valueDateTime="2024-01-01")
    assert extractor_for("Observation", narrower)(observation).only("code-value-date").date
    assert not extractor_for("Observation", registry)(observation).only("code-value-date").date


def _observation_examples() -> Iterator[tuple[str, dict[str, Any]]]:
    with tarfile.open(EXAMPLES) as tar:
        for member in tar:
            fh = tar.extractfile(member) if member.isfile() and member.name.endswith(".json") else None
            resource = jsonio.loads(fh.read()) if fh is not None else None
            if isinstance(resource, dict) and resource.get("resourceType") == "Observation":
                yield member.name, resource


def test_component_values_are_the_source_parameters_rows_on_every_r4_observation_example() -> None:
    """What each component would index on the resource (fhirpathpy, the reference evaluator) is
    what its source parameter indexes, on every official Observation example."""
    if not EXAMPLES.exists():
        pytest.skip(f"official R4 examples not found at {EXAMPLES} (../shared missing)")
    registry = default_registry()
    composites = root_composites(registry, "Observation")
    extractor = extractor_for("Observation", registry)
    compared = valued = 0
    mismatches: list[str] = []
    for name, resource in _observation_examples():
        ours = extractor(resource)
        for code, sources in composites.items():
            assert not ours.only(code), f"{name}: {code} has rows"
            param = registry.get("Observation", code)
            assert param is not None
            for (definition, expression), source in zip(param.components, sources, strict=True):
                component = registry.by_url(definition)
                assert component is not None
                # R4 writes as(DateTime) for FHIR's dateTime: read it so, as the compiler does
                fhir_types = re.sub(r"as\((\w+)\)", lambda m: f"as({registry.types.canonical_name(m[1])})", expression)
                theirs = fhirpathpy_rows(resource, source.code, component.type, f"Observation.{fhir_types}", registry)
                mine = ours.only(source.code)
                table = component.type
                compared += 1
                valued += bool(getattr(theirs, table))
                if set(getattr(mine, table)) != set(getattr(theirs, table)):
                    mismatches.append(f"{name} {code} {expression}: {getattr(mine, table)} != {getattr(theirs, table)}")
    assert compared > 300 and valued > 200, (compared, valued)  # 64 examples, 6 components each
    assert not mismatches, "\n".join(mismatches[:20])


loaded, client = backend_fixtures(RESOURCES, "roots")


def test_no_root_composite_rows_are_stored(loaded: Any) -> None:
    store = loaded.extensions["bigmed"].store
    for table in ("token", "quantity", "date"):
        for code in ("code-value-quantity", "code-value-concept", "code-value-date"):
            rows = store.query(f"SELECT COUNT(*) FROM idx_{table} WHERE param IN (?, ?)", (f"{code}:0", f"{code}:1"))
            assert rows[0][0] == 0, (table, code)
    # code-value-string keeps its own rows
    assert store.query("SELECT COUNT(*) FROM idx_string WHERE param = ?", ("code-value-string:1",))[0][0] == 1


@pytest.mark.parametrize(
    ("query", "expected"),
    [
        ("code-value-quantity=718-7$13.5", ["hb"]),
        ("code-value-quantity=http://loinc.org|718-7$gt10", ["hb"]),
        ("code-value-quantity=718-7$lt20", ["hb", "hb-low"]),
        ("code-value-quantity=718-7$13.5|http://unitsofmeasure.org|g/dL", ["hb"]),
        ("code-value-quantity=718-7$13.5|http://unitsofmeasure.org|mmol/L", []),
        ("code-value-quantity=2823-3$13.5", ["k"]),
        ("code-value-quantity=718-7$9,2823-3$gt13", ["hb-low", "k"]),
        ("code-value-quantity=2823-3$9", []),  # code of one resource, value of another
        ("code-value-quantity=8480-6$150", []),  # a component's code and value are not the resource's
        ("code-value-quantity=85354-9$150", []),
        ("code-value-quantity:missing=false", ["hb", "hb-low", "k"]),
        ("code-value-quantity:missing=true", ["bp", "onset", "period", "pos", "text"]),
        ("code-value-concept=94500-6$http://snomed.info/sct|260373001", ["pos"]),
        ("code-value-concept=94500-6$260373001", ["pos"]),
        ("code-value-concept=94500-6$other", []),
        ("code-value-date=11368-8$2024-03-05", ["onset"]),
        ("code-value-date=11368-8$ge2024", ["onset"]),
        ("code-value-date=11368-8$eb2024", ["period"]),
        ("code-value-date=11368-8$2023-03", []),  # eq: the search range must hold the whole period
        ("code-value-date=11368-8$lt2023-02", ["period"]),
        ("code-value-string=8302-2$tall", ["text"]),
        ("code-value-quantity=718-7$gt10&code-value-quantity=718-7$lt20", ["hb"]),
        ("combo-code-value-quantity=718-7$lt10", ["hb-low"]),  # a union whose source is one of them
        ("combo-code-value-quantity=8480-6$150", ["bp"]),
    ],
)
def test_root_composite_search(client: Any, query: str, expected: list[str]) -> None:
    assert sorted(ids(bundle(client, f"Observation?{query}"))) == expected


@pytest.mark.parametrize(
    "query",
    [
        "code-value-quantity=718-7",  # one component
        "code-value-quantity=718-7$1$2",  # three
        "code-value-quantity=718-7$",  # an empty component
        "code-value-quantity=718-7$abc",  # not a quantity
        "code-value-date=11368-8$yesterday",
        "code-value-quantity:missing=maybe",
        "code-value-quantity:not=718-7$1",
    ],
)
def test_bad_root_composite_values_are_rejected(client: Any, query: str) -> None:
    body = bundle(client, f"Observation?{query}", status=400)
    assert body["resourceType"] == "OperationOutcome"
    assert "'code-value-" in body["issue"][0]["diagnostics"] or "missing" in body["issue"][0]["diagnostics"]
