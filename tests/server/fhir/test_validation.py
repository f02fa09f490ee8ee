"""Tests of server.fhir.validation, the write path's validator (http://hl7.org/fhir/R4/validation.html).

The R4B models check the types R4B carries; the R4 StructureDefinitions the rest. Both must
accept every official R4 example (lenient mode: Questionnaire-qs1 lacks item.linkId) and report
hand-made problems with FHIRPath locations.
"""

from __future__ import annotations

import copy
import tarfile
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest

from server.fhir import validation
from server.fhir.validation import (
    R4_STRUCTURE_DEFINITION,
    R4B,
    R4B_INCOMPATIBLE,
    resource_types,
    validate_resource,
    validated_by,
)
from server.jsonio import loads

ROOT = Path(__file__).resolve().parents[3]
EXAMPLES = ROOT.parent / "shared" / "data" / "fhir-r4" / "examples.tgz"

#: R4 types fhir.resources R4B does not have
MISSING_FROM_R4B = {
    "EffectEvidenceSynthesis",
    "MedicinalProduct",
    "MedicinalProductAuthorization",
    "MedicinalProductContraindication",
    "MedicinalProductIndication",
    "MedicinalProductIngredient",
    "MedicinalProductInteraction",
    "MedicinalProductManufactured",
    "MedicinalProductPackaged",
    "MedicinalProductPharmaceutical",
    "MedicinalProductUndesirableEffect",
    "RiskEvidenceSynthesis",
    "SubstanceNucleicAcid",
    "SubstancePolymer",
    "SubstanceProtein",
    "SubstanceReferenceInformation",
    "SubstanceSourceMaterial",
    "SubstanceSpecification",
}


@pytest.fixture(scope="module")
def examples() -> dict[str, dict[str, Any]]:
    if not EXAMPLES.exists():
        pytest.skip(f"official R4 examples not found at {EXAMPLES} (../shared is missing)")
    out: dict[str, dict[str, Any]] = {}
    with tarfile.open(EXAMPLES) as archive:
        for member in archive.getmembers():
            fh = archive.extractfile(member)
            if fh is not None and member.name.endswith(".json"):
                out[Path(member.name).name] = loads(fh.read())
    return out


@pytest.fixture
def structure_calls(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Records the resource types validated with the R4 StructureDefinitions."""
    calls: list[str] = []
    real = validation.validate_structure

    def spy(resource: dict[str, Any]) -> list[validation.Issue]:
        calls.append(resource["resourceType"])
        return real(resource)

    monkeypatch.setattr(validation, "validate_structure", spy)
    return calls


def where(issues: list[validation.Issue]) -> list[tuple[str, ...]]:
    return [(i.severity, i.code, *i.expression) for i in issues]


# --- which validator -------------------------------------------------------------------------


def test_resource_types_and_validators() -> None:
    types = resource_types()
    assert len(types) == 146
    by_sd = {t for t in types if validated_by(t) == R4_STRUCTURE_DEFINITION}
    assert by_sd == MISSING_FROM_R4B | R4B_INCOMPATIBLE
    assert {"Evidence", "EvidenceVariable"} == R4B_INCOMPATIBLE
    assert validated_by("Patient") == validated_by("MolecularSequence") == R4B
    with pytest.raises(ValueError, match="Citation"):
        validated_by("Citation")  # R4B only, not R4


# --- the official examples -------------------------------------------------------------------


def test_all_official_examples_pass_in_lenient_mode(examples: dict[str, dict[str, Any]]) -> None:
    assert len(examples) == 713
    errors = {
        name: [i for i in validate_resource(resource, lenient=True) if i.severity == "error"]
        for name, resource in examples.items()
    }
    assert {name: issues for name, issues in errors.items() if issues} == {}
    warnings = validate_resource(examples["Questionnaire-qs1.json"], lenient=True)
    assert len(warnings) == 32
    assert {(i.severity, i.code) for i in warnings} == {("warning", "required")}


def test_only_questionnaire_qs1_fails_in_strict_mode(examples: dict[str, dict[str, Any]]) -> None:
    failing = {name: issues for name, resource in examples.items() if (issues := validate_resource(resource))}
    assert set(failing) == {"Questionnaire-qs1.json"}
    issues = failing["Questionnaire-qs1.json"]
    assert len(issues) == 32
    assert {(i.severity, i.code, i.diagnostics) for i in issues} == {
        ("error", "required", "Missing required element 'linkId'")
    }
    assert where(issues)[:2] == [
        ("error", "required", "Questionnaire.item[0].item[0].linkId"),
        ("error", "required", "Questionnaire.item[0].item[1].item[0].linkId"),
    ]


def test_r4_only_examples_use_the_structure_definitions(
    examples: dict[str, dict[str, Any]], structure_calls: list[str]
) -> None:
    assert validate_resource(examples["Evidence-example.json"]) == []
    assert validate_resource(examples["MedicinalProduct-example.json"]) == []
    assert validate_resource(examples["Patient-example.json"]) == []
    # the R4 definitions check every resource first; R4B models then check the types they carry
    assert structure_calls == ["Evidence", "MedicinalProduct", "Patient"]


def test_what_the_r4b_models_accept_is_still_rejected() -> None:
    for bad, where_ in (
        ({"resourceType": "Patient", "active": "yes"}, "Patient.active"),
        ({"resourceType": "Patient", "name": []}, "Patient.name"),
        (
            {
                "resourceType": "Observation",
                "status": "final",
                "code": {"text": "x"},
                "valueQuantity": {"value": "1.0"},
            },
            "Observation.valueQuantity.value",
        ),
    ):
        issues = validate_resource(bad)
        assert issues and all(i.severity == "error" for i in issues), bad
        assert where_ in {e for i in issues for e in i.expression}, issues


def test_broken_evidence_is_caught(examples: dict[str, dict[str, Any]]) -> None:
    evidence = copy.deepcopy(examples["Evidence-example.json"])
    evidence["exposureBackground"]["foo"] = True
    evidence["outcome"] = {"reference": "EvidenceVariable/example"}  # 0..* in R4
    issues = validate_resource(evidence)
    assert where(issues) == [
        ("error", "structure", "Evidence.exposureBackground.foo"),
        ("error", "structure", "Evidence.outcome"),
    ]
    assert issues[0].diagnostics == "Unknown element 'foo'"


def test_broken_medicinal_product_is_caught(examples: dict[str, dict[str, Any]]) -> None:
    product = copy.deepcopy(examples["MedicinalProduct-example.json"])
    product["name"][0]["productName"] = 42
    assert where(validate_resource(product)) == [("error", "value", "MedicinalProduct.name[0].productName")]


# --- hand-made invalid resources, R4B path ---------------------------------------------------

OBS: dict[str, Any] = {"resourceType": "Observation", "status": "final", "code": {"text": "x"}}

INVALID: list[tuple[str, dict[str, Any], list[tuple[str, str]]]] = [
    ("unknown element", {"resourceType": "Patient", "foo": 1}, [("structure", "Patient.foo")]),
    (
        "wrong primitive type",
        {"resourceType": "Patient", "name": [{"family": 7}]},
        [("value", "Patient.name[0].family")],
    ),
    ("bad date", {"resourceType": "Patient", "birthDate": "1990-13-45"}, [("value", "Patient.birthDate")]),
    ("too many: array for 0..1", {"resourceType": "Patient", "gender": ["male"]}, [("structure", "Patient.gender")]),
    ("single value for 0..*", {"resourceType": "Patient", "name": {"family": "A"}}, [("structure", "Patient.name")]),
    (
        "too few: missing 1..1",
        {"resourceType": "Patient", "link": [{"type": "seealso"}]},
        [("required", "Patient.link[0].other")],
    ),
    ("bad choice type", {"resourceType": "Patient", "deceasedString": "x"}, [("structure", "Patient.deceasedString")]),
    (
        "two types of one choice",
        {**OBS, "valueString": "a", "valueBoolean": True},
        [("structure", "Observation.valueBoolean")],
    ),
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
        "bad Bundle entry resource",
        {
            "resourceType": "Bundle",
            "type": "collection",
            "entry": [{"resource": {"resourceType": "Patient", "gender": 1}}],
        },
        [("value", "Bundle.entry[0].resource.gender")],
    ),
    ("bad id", {"resourceType": "Patient", "id": "a b"}, [("value", "Patient.id")]),
]


@pytest.mark.parametrize(("resource", "expected"), [(r, e) for _, r, e in INVALID], ids=[n for n, _, _ in INVALID])
def test_invalid_resources_r4b(
    resource: dict[str, Any], expected: list[tuple[str, str]], structure_calls: list[str]
) -> None:
    type_ = resource["resourceType"]
    issues = validation._validate_r4b(validation._model(type_), type_, resource)  # the R4B models alone
    assert [(i.code, *i.expression) for i in issues] == expected
    assert all(i.severity == "error" for i in issues)
    assert structure_calls == []
    # through the server's entry point the R4 definitions answer first, with the same result
    assert [(i.code, *i.expression) for i in validate_resource(resource)] == expected


def test_messages() -> None:
    (unknown,) = validate_resource({"resourceType": "Patient", "foo": 1})
    assert unknown.diagnostics == "Unknown element 'foo'"
    (missing,) = validate_resource({"resourceType": "Patient", "link": [{"type": "seealso"}]})
    assert missing.diagnostics == "Missing required element 'other'"
    (bad,) = validate_resource({"resourceType": "Patient", "birthDate": "1990-13-45"})
    assert bad.diagnostics == 'Invalid date value "1990-13-45"'
    (long_,) = validate_resource({"resourceType": "Patient", "birthDate": "9" * 1000})
    assert len(long_.diagnostics) < 200


def test_unknown_or_missing_resource_type() -> None:
    assert [(i.code, i.diagnostics) for i in validate_resource({"resourceType": "Foo"})] == [
        ("not-supported", "Unknown resource type 'Foo'")
    ]
    assert [(i.code, i.diagnostics) for i in validate_resource({"resourceType": "Citation"})] == [
        ("not-supported", "Unknown resource type 'Citation'")  # R4B has it, R4 does not
    ]
    assert [i.code for i in validate_resource({"id": "1"})] == ["required"]
    assert [i.code for i in validate_resource([])] == ["structure"]  # type: ignore[arg-type]


def test_nested_r4_only_resources_use_the_structure_definitions(structure_calls: list[str]) -> None:
    bundle = {
        "resourceType": "Bundle",
        "type": "collection",
        "entry": [
            {"resource": {"resourceType": "Patient", "active": True}},
            {"resource": {"resourceType": "MedicinalProduct", "name": [{"productName": "X", "foo": 1}]}},
        ],
    }
    assert where(validate_resource(bundle)) == [("error", "structure", "Bundle.entry[1].resource.name[0].foo")]
    assert structure_calls == ["Bundle"]
    contained = {"resourceType": "Patient", "contained": [{"resourceType": "Evidence", "status": "draft"}]}
    assert where(validate_resource(contained)) == [("error", "required", "Patient.contained[0].exposureBackground")]
    unknown = {"resourceType": "Patient", "contained": [{"resourceType": "Citation", "status": "draft"}]}
    assert where(validate_resource(unknown)) == [("error", "not-supported", "Patient.contained[0].resourceType")]


def test_model_crash_falls_back_to_the_structure_definitions(
    monkeypatch: pytest.MonkeyPatch, structure_calls: list[str]
) -> None:
    # fhir.resources 8.3.0 raises AttributeError on a number for a url
    endpoint = {
        "resourceType": "Endpoint",
        "status": "active",
        "connectionType": {"code": "direct-project"},
        "payloadType": [{"text": "any"}],
        "address": 12345,
    }
    assert where(validate_resource(endpoint)) == [("error", "value", "Endpoint.address")]

    class Broken:
        @staticmethod
        def model_validate(resource: dict[str, Any]) -> None:
            raise TypeError("can only concatenate str (not 'int') to str")

    monkeypatch.setitem(validation._MODELS, "Patient", Broken)
    structure_calls.clear()
    assert where(validate_resource({"resourceType": "Patient", "gender": 1})) == [("error", "value", "Patient.gender")]
    assert structure_calls == ["Patient"]


def test_deep_nesting_is_an_issue_not_a_crash() -> None:
    part: dict[str, Any] = {"name": "leaf", "valueString": "x"}
    for _ in range(5000):
        part = {"name": "p", "part": [part]}
    issues = validate_resource({"resourceType": "Parameters", "parameter": [part]})
    assert [(i.code, i.diagnostics) for i in issues] == [("structure", "The resource is nested too deeply to validate")]


def test_lenient_only_softens_missing_elements() -> None:
    resource = {"resourceType": "Patient", "foo": 1, "link": [{"type": "seealso"}]}
    assert sorted(where(validate_resource(resource, lenient=True))) == [
        ("error", "structure", "Patient.foo"),
        ("warning", "required", "Patient.link[0].other"),
    ]
    evidence = {"resourceType": "Evidence", "status": "draft"}
    assert where(validate_resource(evidence, lenient=True)) == [("warning", "required", "Evidence.exposureBackground")]
    assert where(validate_resource(evidence)) == [("error", "required", "Evidence.exposureBackground")]


def test_the_resource_is_not_modified(examples: dict[str, dict[str, Any]]) -> None:
    resource = examples["Observation-example-genetics-1.json"]
    before = copy.deepcopy(resource)
    assert validate_resource(resource) == []
    assert resource == before
