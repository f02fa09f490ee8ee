"""Tests of profiles.validate: structural validation against the R4 StructureDefinitions.

http://hl7.org/fhir/R4/validation.html; the official R4 examples (hl7.fhir.r4.examples 4.0.1,
CC0-1.0) from ../shared/data/fhir-r4 must validate, and hand-made broken resources must report
each problem at its FHIRPath location.
"""

from __future__ import annotations

import copy
import gzip
import json
import tarfile
from collections.abc import Iterator
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest

from profiles.validate import (
    DEFINITIONS,
    R4_RESOURCE_TYPES,
    Issue,
    nested_resources,
    r4_resource_types,
    validate_structure,
)

ROOT = Path(__file__).resolve().parents[2]
FHIR_R4 = ROOT.parent / "shared" / "data" / "fhir-r4"
EXAMPLES = FHIR_R4 / "examples.tgz"
needs_shared = pytest.mark.skipif(
    not EXAMPLES.exists(), reason=f"official R4 examples not found at {EXAMPLES} (../shared is missing)"
)


def load_examples() -> Iterator[tuple[str, dict[str, Any]]]:
    with tarfile.open(EXAMPLES) as archive:
        for member in archive.getmembers():
            if member.isfile() and member.name.endswith(".json"):
                fh = archive.extractfile(member)
                assert fh is not None
                yield Path(member.name).name, json.loads(fh.read(), parse_float=Decimal)


@pytest.fixture(scope="module")
def examples() -> dict[str, dict[str, Any]]:
    if not EXAMPLES.exists():
        pytest.skip(f"official R4 examples not found at {EXAMPLES} (../shared is missing)")
    return dict(load_examples())


def found(issues: list[Issue]) -> list[tuple[str, str, tuple[str, ...]]]:
    return [(i.severity, i.code, i.expression) for i in issues]


# --- the definitions table ---------------------------------------------------------------------


def test_resource_types() -> None:
    types = r4_resource_types()
    assert len(types) == 146
    assert types == R4_RESOURCE_TYPES
    assert {"Patient", "MedicinalProduct", "SubstanceSpecification", "MolecularSequence"} <= types
    assert not {"Resource", "DomainResource", "Citation", "Element"} & types


def test_table_has_its_source_header() -> None:
    with gzip.open(DEFINITIONS, "rt", encoding="utf-8") as fh:
        table = json.load(fh)
    assert table["source"]["package"] == "hl7.fhir.r4.core"
    assert table["source"]["version"] == "4.0.1"
    assert table["source"]["license"] == "CC0-1.0"
    assert table["source"]["generatedBy"] == "scripts/gen_r4_definitions.py"
    assert table["types"]["Patient"]["deceased[x]"] == [0, "1", ["boolean", "dateTime"]]
    assert table["types"]["Questionnaire"]["item.item"] == [0, "*", "#Questionnaire.item"]
    assert table["primitives"]["positiveInt"] == {"json": "integer", "regex": "[1-9][0-9]*"}


@needs_shared
def test_table_is_up_to_date_with_the_generator() -> None:
    import importlib.util

    spec = importlib.util.spec_from_file_location("gen_r4_definitions", ROOT / "scripts" / "gen_r4_definitions.py")
    assert spec is not None and spec.loader is not None
    generator = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(generator)
    with gzip.open(DEFINITIONS, "rt", encoding="utf-8") as fh:
        assert json.load(fh) == generator.build(FHIR_R4)


# --- the official examples ---------------------------------------------------------------------


def test_all_official_examples_are_valid_but_questionnaire_qs1(examples: dict[str, dict[str, Any]]) -> None:
    assert len(examples) == 713
    failing = {name: issues for name, resource in examples.items() if (issues := validate_structure(resource))}
    assert set(failing) == {"Questionnaire-qs1.json"}
    issues = failing["Questionnaire-qs1.json"]
    assert len(issues) == 32
    assert {(i.code, i.diagnostics) for i in issues} == {("required", "Missing required element 'linkId'")}
    assert issues[0].expression == ("Questionnaire.item[0].item[0].linkId",)
    assert ("Questionnaire.item[0].item[1].item[0].linkId",) in [i.expression for i in issues]


def test_examples_of_types_missing_from_r4b(examples: dict[str, dict[str, Any]]) -> None:
    for name in ("Evidence-example.json", "MedicinalProduct-example.json", "SubstanceSpecification-example.json"):
        assert validate_structure(examples[name]) == []


def test_broken_examples_are_caught(examples: dict[str, dict[str, Any]]) -> None:
    product = copy.deepcopy(examples["MedicinalProduct-example.json"])
    product["name"][0]["productNmae"] = product["name"][0].pop("productName")
    assert found(validate_structure(product)) == [
        ("error", "structure", ("MedicinalProduct.name[0].productNmae",)),
        ("error", "required", ("MedicinalProduct.name[0].productName",)),
    ]
    evidence = copy.deepcopy(examples["Evidence-example.json"])
    evidence["exposureBackground"]["referenc"] = "EvidenceVariable/example"
    issues = validate_structure(evidence)
    assert found(issues) == [("error", "structure", ("Evidence.exposureBackground.referenc",))]
    assert issues[0].diagnostics == "Unknown element 'referenc'"


# --- hand-made invalid resources ---------------------------------------------------------------

OBS: dict[str, Any] = {"resourceType": "Observation", "status": "final", "code": {"text": "x"}}

INVALID: list[tuple[str, dict[str, Any], list[tuple[str, str]]]] = [
    ("unknown element", {"resourceType": "Patient", "foo": 1}, [("structure", "Patient.foo")]),
    (
        "unknown nested element",
        {"resourceType": "Patient", "name": [{"family": "A"}, {"famly": "B"}]},
        [("structure", "Patient.name[1].famly")],
    ),
    ("number for a date", {"resourceType": "Patient", "birthDate": 19900101}, [("value", "Patient.birthDate")]),
    ("string for a boolean", {"resourceType": "Patient", "active": "yes"}, [("value", "Patient.active")]),
    ("bad date", {"resourceType": "Patient", "birthDate": "1990-13-45"}, [("value", "Patient.birthDate")]),
    (
        "bad instant",
        {"resourceType": "Patient", "meta": {"lastUpdated": "2020-01-01"}},
        [("value", "Patient.meta.lastUpdated")],
    ),
    ("bad id", {"resourceType": "Patient", "id": "a b"}, [("value", "Patient.id")]),
    ("bad code", {"resourceType": "Patient", "gender": "x  y"}, [("value", "Patient.gender")]),
    ("empty string", {"resourceType": "Patient", "name": [{"family": ""}]}, [("value", "Patient.name[0].family")]),
    (
        "fractional integer",
        {"resourceType": "Patient", "multipleBirthInteger": Decimal("1.5")},
        [("value", "Patient.multipleBirthInteger")],
    ),
    (
        "positiveInt 0",
        {**OBS, "valueSampledData": {"origin": {"value": 0}, "period": 1, "dimensions": 0}},
        [("value", "Observation.valueSampledData.dimensions")],
    ),
    (
        "string for a decimal",
        {**OBS, "valueQuantity": {"value": "1.0"}},
        [("value", "Observation.valueQuantity.value")],
    ),
    ("bad base64", {"resourceType": "Patient", "photo": [{"data": "!!!!"}]}, [("value", "Patient.photo[0].data")]),
    ("too many: array for 0..1", {"resourceType": "Patient", "gender": ["male"]}, [("structure", "Patient.gender")]),
    ("single value for 0..*", {"resourceType": "Patient", "name": {"family": "A"}}, [("structure", "Patient.name")]),
    (
        "too few: missing 1..1",
        {"resourceType": "Patient", "link": [{"type": "seealso"}]},
        [("required", "Patient.link[0].other")],
    ),
    ("missing required choice", {**OBS, "component": [{"code": {"text": "c"}}]}, []),
    (
        "missing 1..1 choice",
        {
            "resourceType": "MedicationRequest",
            "status": "active",
            "intent": "order",
            "subject": {"reference": "Patient/1"},
        },
        [("required", "MedicationRequest.medication[x]")],
    ),
    ("bad choice type", {"resourceType": "Patient", "deceasedString": "x"}, [("structure", "Patient.deceasedString")]),
    (
        "two types of one choice",
        {**OBS, "valueString": "a", "valueBoolean": True},
        [("structure", "Observation.valueBoolean")],
    ),
    ("empty array", {"resourceType": "Patient", "name": []}, [("structure", "Patient.name")]),
    ("empty object", {"resourceType": "Patient", "name": [{}]}, [("invariant", "Patient.name[0]")]),
    ("null value", {"resourceType": "Patient", "gender": None}, [("structure", "Patient.gender")]),
    ("object expected", {"resourceType": "Patient", "maritalStatus": "M"}, [("structure", "Patient.maritalStatus")]),
    (
        "bad element in a primitive extension",
        {"resourceType": "Patient", "_birthDate": {"extension": [{"valueString": "a"}]}},
        [("required", "Patient.birthDate.extension[0].url")],
    ),
    (
        "bad nested element in a contained resource",
        {"resourceType": "Patient", "contained": [{**OBS, "valueQuantity": {"value": Decimal(1), "unitt": "mg"}}]},
        [("structure", "Patient.contained[0].valueQuantity.unitt")],
    ),
    (
        "unknown contained resource type",
        {"resourceType": "Patient", "contained": [{"resourceType": "Foo"}]},
        [("not-supported", "Patient.contained[0].resourceType")],
    ),
    (
        "bad Bundle entry resource",
        {
            "resourceType": "Bundle",
            "type": "collection",
            "entry": [{"resource": {"resourceType": "Patient", "active": 1}}],
        },
        [("value", "Bundle.entry[0].resource.active")],
    ),
    (
        "bad resource in a Parameters part",
        {
            "resourceType": "Parameters",
            "parameter": [{"name": "a", "part": [{"name": "b", "resource": {"resourceType": "Patient", "gender": 1}}]}],
        },
        [("value", "Parameters.parameter[0].part[0].resource.gender")],
    ),
    (
        "contentReference recursion",
        {
            "resourceType": "Questionnaire",
            "status": "draft",
            "item": [{"linkId": "1", "type": "group", "item": [{"linkId": "1.1", "type": "string", "text": 5}]}],
        },
        [("value", "Questionnaire.item[0].item[0].text")],
    ),
    ("unknown resource type", {"resourceType": "Citation"}, [("not-supported", "resourceType")]),
    ("no resource type", {"id": "x"}, [("required", "resourceType")]),
]


@pytest.mark.parametrize(("resource", "expected"), [(r, e) for _, r, e in INVALID], ids=[n for n, _, _ in INVALID])
def test_invalid_resources(resource: dict[str, Any], expected: list[tuple[str, str]]) -> None:
    assert [(i.code, *i.expression) for i in validate_structure(resource)] == expected
    assert all(i.severity == "error" for i in validate_structure(resource))


def test_every_problem_is_reported() -> None:
    resource = {
        "resourceType": "Patient",
        "foo": 1,
        "active": "yes",
        "name": [{"family": ["A"], "given": "B"}],
        "link": [{}],
    }
    assert [(i.code, *i.expression) for i in validate_structure(resource)] == [
        ("structure", "Patient.foo"),
        ("value", "Patient.active"),
        ("structure", "Patient.name[0].family"),
        ("structure", "Patient.name[0].given"),
        ("invariant", "Patient.link[0]"),
        ("required", "Patient.link[0].other"),
        ("required", "Patient.link[0].type"),
    ]


def test_messages_name_the_problem() -> None:
    messages = [i.diagnostics for i in validate_structure({"resourceType": "Patient", "birthDate": 19900101})]
    assert messages == ["Expected a JSON string for date, got number 19900101"]
    messages = [i.diagnostics for i in validate_structure({"resourceType": "Patient", "deceasedString": "x"})]
    assert messages == ["Unknown element 'deceasedString' (deceased[x] allows boolean, dateTime)"]
    long_value = "x" * 500
    (issue,) = validate_structure({"resourceType": "Patient", "birthDate": long_value})
    assert len(issue.diagnostics) < 100


# --- valid corner cases ------------------------------------------------------------------------

VALID: list[tuple[str, dict[str, Any]]] = [
    (
        "primitive extension only",
        {"resourceType": "Patient", "_birthDate": {"extension": [{"url": "u", "valueCode": "x"}]}},
    ),
    (
        "required primitive given by its extension",
        {"resourceType": "Patient", "link": [{"other": {"reference": "Patient/2"}, "_type": {"id": "t"}}]},
    ),
    (
        "aligned primitive arrays with nulls",
        {
            "resourceType": "Patient",
            "name": [{"given": ["A", None], "_given": [None, {"extension": [{"url": "u", "valueString": "B"}]}]}],
        },
    ),
    ("decimal with exponent", {**OBS, "valueQuantity": {"value": Decimal("1.50E+3")}}),
    ("integer types", {**OBS, "valueInteger": -3, "component": [{"code": {"text": "c"}, "valueInteger": 0}]}),
    ("base64 with whitespace", {"resourceType": "Patient", "photo": [{"data": "AAAA BBBB\nCCCC"}]}),
    ("dateTime with offset", {"resourceType": "Patient", "deceasedDateTime": "2015-02-07T13:28:17.239+02:00"}),
    ("non-ASCII text", {"resourceType": "Patient", "name": [{"family": "Ærø\u00a0Ås"}]}),
    (
        "Bundle with nested contained",
        {
            "resourceType": "Bundle",
            "type": "collection",
            "entry": [
                {"resource": {"resourceType": "Patient", "contained": [{"resourceType": "Organization", "id": "o"}]}}
            ],
        },
    ),
]


@pytest.mark.parametrize("resource", [r for _, r in VALID], ids=[n for n, _ in VALID])
def test_valid_resources(resource: dict[str, Any]) -> None:
    assert validate_structure(resource) == []


def test_misaligned_primitive_arrays() -> None:
    resource = {"resourceType": "Patient", "name": [{"given": ["A"], "_given": [None, {"id": "x"}]}]}
    assert [(i.code, *i.expression) for i in validate_structure(resource)] == [("structure", "Patient.name[0].given")]
    resource = {"resourceType": "Patient", "name": [{"given": ["A", None]}]}
    assert [(i.code, *i.expression) for i in validate_structure(resource)] == [
        ("structure", "Patient.name[0].given[1]")
    ]
    resource = {"resourceType": "Patient", "name": [{"given": ["A", None], "_given": [None, None]}]}
    assert [(i.code, *i.expression) for i in validate_structure(resource)] == [
        ("structure", "Patient.name[0].given[1]")
    ]
    resource = {"resourceType": "Patient", "name": [{"_given": [None]}]}
    assert [(i.code, *i.expression) for i in validate_structure(resource)] == [
        ("structure", "Patient.name[0].given[0]")
    ]


def test_not_an_object() -> None:
    assert found(validate_structure("Patient")) == [("error", "structure", ())]


def test_deep_nesting_is_refused_not_crashed() -> None:
    extension: dict[str, Any] = {"url": "u", "valueString": "x"}
    for _ in range(5000):
        extension = {"url": "u", "extension": [extension]}
    issues = validate_structure({"resourceType": "Patient", "extension": [extension]})
    assert [(i.code, i.diagnostics) for i in issues] == [("structure", "The resource is nested too deeply to validate")]


def test_nested_resources() -> None:
    bundle = {
        "resourceType": "Bundle",
        "type": "transaction-response",
        "entry": [
            {"resource": {"resourceType": "Patient", "contained": [{"resourceType": "Organization"}]}},
            {"response": {"status": "400", "outcome": {"resourceType": "OperationOutcome"}}},
        ],
    }
    assert [path for path, _ in nested_resources(bundle)] == [
        "Bundle.entry[0].resource",
        "Bundle.entry[0].resource.contained[0]",
        "Bundle.entry[1].response.outcome",
    ]
    parameters = {"resourceType": "Parameters", "parameter": [{"part": [{"resource": {"resourceType": "Patient"}}]}]}
    assert [path for path, _ in nested_resources(parameters)] == ["Parameters.parameter[0].part[0].resource"]
    assert list(nested_resources({"resourceType": "Patient", "name": [{"family": "A"}]})) == []
