"""The search-parameter registry: official R4 definitions + profiles/ SearchParameters
(http://hl7.org/fhir/R4/searchparameter.html) and the R4 type model the compiler uses."""

from __future__ import annotations

import gzip
import importlib.util
import json
from collections import Counter
from pathlib import Path
from typing import Any

import pytest

from server.search.registry import (
    VENDORED_PATH,
    Registry,
    branch_root,
    default_registry,
    parse_search_parameter,
    split_union,
)

REPO = Path(__file__).resolve().parents[3]
R4_DATA = REPO.parent / "shared" / "data" / "fhir-r4"
COMMON = {"_id", "_lastUpdated", "_profile", "_security", "_source", "_tag", "_content", "_query"}

GENE_PARAM: dict[str, Any] = {
    "resourceType": "SearchParameter",
    "id": "observation-gene",
    "url": "http://bigmed.example/fhir/SearchParameter/observation-gene",
    "name": "gene",
    "status": "active",
    "description": "HGNC gene studied by a variant Observation",
    "code": "gene",
    "base": ["Observation"],
    "type": "token",
    "expression": "Observation.component.where(code.coding.code = '48018-6').value.as(CodeableConcept)",
}


@pytest.fixture(scope="module")
def registry() -> Registry:
    return Registry.load(extra_paths=[])


def test_official_parameters_all_loaded(registry: Registry) -> None:
    params = registry.all()
    assert len(params) == 1375
    assert len({p.url for p in params}) == 1375
    assert Counter(p.type for p in params) == {
        "token": 536,
        "reference": 472,
        "string": 133,
        "date": 109,
        "composite": 46,
        "uri": 45,
        "quantity": 27,
        "number": 6,
        "special": 1,
    }


def test_counts_per_type(registry: Registry) -> None:
    # Type-specific parameters + the 8 Resource ones (+ _text for DomainResource types).
    assert len(registry.params_for("Observation")) == 38 + 9
    assert len(registry.params_for("Patient")) == 23 + 9
    assert len(registry.params_for("MolecularSequence")) == 13 + 9
    assert len(registry.params_for("Bundle")) == 5 + 8  # Bundle is a Resource, not a DomainResource
    assert len(registry.params_for("Parameters")) == 8
    assert registry.params_for("NoSuchType") == {}


def test_vendored_table_matches_the_official_bundle(registry: Registry) -> None:
    source = R4_DATA / "search-parameters.json.gz"
    if not source.exists():
        pytest.skip(f"official R4 definitions not found at {R4_DATA} (../shared missing)")
    with gzip.open(source, "rt", encoding="utf-8") as fh:
        bundle = json.load(fh)
    official = {e["resource"]["url"]: e["resource"] for e in bundle["entry"]}
    assert set(official) == {p.url for p in registry.all()}
    for p in registry.all():
        sp = official[p.url]
        assert (p.code, p.type, list(p.base), p.expression) == (
            sp["code"],
            sp["type"],
            sp["base"],
            sp.get("expression"),
        )
        assert list(p.target) == sp.get("target", [])
    for rt in ("Observation", "Patient", "Condition", "DiagnosticReport", "MolecularSequence"):
        specific = {sp["code"] for sp in official.values() if rt in sp["base"]}
        assert {c for c in registry.params_for(rt) if not c.startswith("_")} == specific


def test_vendored_table_is_what_the_generator_writes(monkeypatch: pytest.MonkeyPatch) -> None:
    if not (R4_DATA / "search-parameters.json.gz").exists():
        pytest.skip(f"official R4 definitions not found at {R4_DATA} (../shared missing)")
    monkeypatch.syspath_prepend(str(REPO / "scripts"))  # as when run as a script: its helpers sit beside it
    script = REPO / "scripts" / "gen_search_params.py"
    spec = importlib.util.spec_from_file_location("gen_search_params", script)
    assert spec is not None and spec.loader is not None
    gen = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(gen)
    assert gen.dump(gen.build(R4_DATA)) == VENDORED_PATH.read_text(encoding="utf-8"), (
        "server/search/data/search-parameters-r4.json is stale: run scripts/gen_search_params.py"
    )


def test_header_names_source_version_and_licence() -> None:
    header = json.loads(VENDORED_PATH.read_text(encoding="utf-8"))["header"]
    assert header["fhirVersion"] == "4.0.1"
    assert header["license"] == "CC0-1.0"
    assert "search-parameters.json" in header["source"]


def test_observation_code_is_a_token(registry: Registry) -> None:
    code = registry.get("Observation", "code")
    assert code is not None
    assert code.type == "token"
    assert code.url == "http://hl7.org/fhir/SearchParameter/clinical-code"
    assert code.expression_for("Observation") == "Observation.code"
    assert code.expression_for("Condition") == "Condition.code"
    # the union branches of the other base types are not evaluated on an Observation
    assert "Condition" not in (code.expression_for("Observation") or "")


def test_patient_name_is_a_string(registry: Registry) -> None:
    name = registry.get("Patient", "name")
    assert name is not None
    assert (name.type, name.expression_for("Patient")) == ("string", "Patient.name")


def test_observation_subject_reference_targets(registry: Registry) -> None:
    subject = registry.get("Observation", "subject")
    assert subject is not None
    assert subject.type == "reference"
    assert set(subject.target) == {"Patient", "Group", "Device", "Location"}
    patient = registry.get("Observation", "patient")
    assert patient is not None
    assert patient.target == ("Patient", "Group")
    assert patient.expression_for("Observation") == "Observation.subject.where(resolve() is Patient)"
    assert patient.expression_for("AllergyIntolerance") == "AllergyIntolerance.patient"


def test_composite_components(registry: Registry) -> None:
    cvq = registry.get("Observation", "code-value-quantity")
    assert cvq is not None
    assert cvq.type == "composite"
    assert cvq.components == (
        ("http://hl7.org/fhir/SearchParameter/clinical-code", "code"),
        ("http://hl7.org/fhir/SearchParameter/Observation-value-quantity", "value.as(Quantity)"),
    )
    for definition, _ in cvq.components:
        assert registry.by_url(definition) is not None


def test_comparators_and_multiple_or(registry: Registry) -> None:
    date = registry.get("Observation", "date")
    assert date is not None
    assert date.comparators == ("eq", "ne", "gt", "ge", "lt", "le", "sa", "eb", "ap")
    cvq = registry.get("Observation", "code-value-quantity")
    assert cvq is not None and cvq.multiple_or is False


def test_common_parameters_apply_to_every_type(registry: Registry) -> None:
    types = registry.resource_types()
    assert len(types) == 146  # every concrete R4 resource type
    assert {"Resource", "DomainResource"}.isdisjoint(types)
    for rt in types:
        params = registry.params_for(rt)
        assert set(params) >= COMMON, rt
        assert params["_id"].expression_for(rt) == "Resource.id"
        assert params["_lastUpdated"].expression_for(rt) == "Resource.meta.lastUpdated"
    # _text is defined on DomainResource: not for Bundle/Binary/Parameters
    assert "_text" in registry.params_for("Observation")
    assert "_text" not in registry.params_for("Bundle")


def test_relative_expression_applies_to_its_base(registry: Registry) -> None:
    name = registry.get("InsurancePlan", "name")
    assert name is not None
    assert name.expression_for("InsurancePlan") == "name | alias"


def test_profile_search_parameter_is_loaded(tmp_path: Path) -> None:
    (tmp_path / "SearchParameter-observation-gene.json").write_text(json.dumps(GENE_PARAM))
    (tmp_path / "StructureDefinition-variant.json").write_text(
        json.dumps({"resourceType": "StructureDefinition", "id": "variant"})
    )
    (tmp_path / "notes.json").write_text("not json at all")
    registry = Registry.load(extra_paths=[tmp_path])
    assert len(registry.all()) == 1376
    gene = registry.get("Observation", "gene")
    assert gene is not None
    assert (gene.url, gene.type) == (GENE_PARAM["url"], "token")
    assert gene.expression_for("Observation") == GENE_PARAM["expression"]
    assert registry.get("Patient", "gene") is None
    assert registry.by_url(GENE_PARAM["url"]) is gene


def test_profile_parameter_overrides_official_one(tmp_path: Path) -> None:
    override = dict(GENE_PARAM, url="http://bigmed.example/fhir/SearchParameter/status", code="status")
    path = tmp_path / "SearchParameter-status.json"
    path.write_text(json.dumps(override))
    registry = Registry.load(extra_paths=[path])
    status = registry.get("Observation", "status")
    assert status is not None and status.url == override["url"]  # ours wins over the official one


def test_invalid_profile_search_parameter_names_the_file(tmp_path: Path) -> None:
    broken = {k: v for k, v in GENE_PARAM.items() if k != "base"}
    (tmp_path / "broken.json").write_text(json.dumps(broken))
    with pytest.raises(ValueError, match=r"broken\.json"):
        Registry.load(extra_paths=[tmp_path])


def test_default_registry_is_cached() -> None:
    assert default_registry() is default_registry()


def test_split_union_respects_nesting() -> None:
    expr = "(A.value as Quantity) | A.x.where(system='a|b') | (B.y | B.z).first()"
    assert split_union(expr) == ["(A.value as Quantity)", "A.x.where(system='a|b')", "(B.y | B.z).first()"]
    assert [branch_root(b) for b in split_union(expr)] == ["A", "A", "B"]
    assert branch_root("name") is None


def test_parse_requires_code_base_type() -> None:
    with pytest.raises(ValueError, match="lacks"):
        parse_search_parameter({"url": "http://x", "code": "a", "type": "token"})


def test_type_model_knows_choice_and_backbone_elements(registry: Registry) -> None:
    types = registry.types
    value = types.element("Observation", "value")
    assert value is not None and value.choice
    assert "Quantity" in value.types and "CodeableConcept" in value.types
    assert value.json_key("Quantity") == "valueQuantity"
    assert value.json_key("dateTime") == "valueDateTime"
    component = types.element("Observation", "component")
    assert component is not None and component.types == ("Observation.component",)
    nested = types.element("Observation.component", "referenceRange")
    assert nested is not None and nested.types == ("Observation.referenceRange",)  # contentReference
    meta = types.element("Observation", "meta")  # inherited from Resource
    assert meta is not None and meta.types == ("Meta",) and not meta.choice
    ext = types.element("Observation.component", "extension")  # inherited from Element
    assert ext is not None and ext.types == ("Extension",)
    assert types.element("Observation", "nope") is None
    assert types.is_a("Age", "Quantity") and not types.is_a("Quantity", "Age")
    assert types.is_a("code", "string") and types.is_a("dateTime", "DateTime")
    assert types.is_a("Observation", "DomainResource") and types.is_a("Bundle", "Resource")
