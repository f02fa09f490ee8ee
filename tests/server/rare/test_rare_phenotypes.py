"""Phenotypic features read from HPO-coded Observations and Conditions (server/rare/phenotypes.py)."""

from __future__ import annotations

from typing import Any

import pytest

from server.rare.hpo import Ontology, ontology
from server.rare.phenotypes import PhenotypeError, read_phenotypes

HPO = "http://human-phenotype-ontology.org"
OWL = "http://purl.obolibrary.org/obo/hp.owl"
LOINC = "http://loinc.org"


@pytest.fixture(scope="module")
def onto() -> Ontology:
    return ontology()


def obs(id_: str, code: str, system: str = HPO, **extra: Any) -> dict[str, Any]:
    return {
        "resourceType": "Observation",
        "id": id_,
        "status": "final",
        "code": {"coding": [{"system": system, "code": code}]},
        **extra,
    }


def absent() -> dict[str, Any]:
    return {"coding": [{"system": LOINC, "code": "LA9634-2", "display": "Absent"}]}


def present() -> dict[str, Any]:
    return {"coding": [{"system": LOINC, "code": "LA9633-4", "display": "Present"}]}


def test_present_and_excluded_by_every_convention(onto: Ontology) -> None:
    resources = [
        obs("a", "HP:0001166", valueCodeableConcept=present()),  # Arachnodactyly, present
        obs("b", "HP:0001083", valueCodeableConcept=absent()),  # Ectopia lentis, Absent
        obs("c", "HP:0002616", OWL),  # no value: present; hp.owl system
        obs("d", "HP:0001250", valueBoolean=False),  # Seizure, excluded
        obs("e", "HP:0001263", interpretation=[{"coding": [{"code": "NEG"}]}]),  # excluded
        {
            "resourceType": "Condition",
            "id": "f",
            "code": {"coding": [{"system": HPO, "code": "HP:0000602"}]},
            "verificationStatus": {"coding": [{"code": "refuted"}]},
        },
        {"resourceType": "Condition", "id": "g", "code": {"coding": [{"system": HPO, "code": "HP:0002110"}]}},
        # Phenopackets variant: a generic code, the HPO term as value
        {
            "resourceType": "Observation",
            "id": "h",
            "status": "final",
            "code": {"text": "phenotypic feature"},
            "valueCodeableConcept": {"coding": [{"system": HPO, "code": "HP:0001738"}]},
        },
    ]
    found = read_phenotypes(onto, resources)
    ids = lambda terms: {onto.ids[t] for t in terms}  # noqa: E731
    assert ids(found.present) == {"HP:0001166", "HP:0002616", "HP:0002110", "HP:0001738"}
    assert ids(found.excluded) == {"HP:0001083", "HP:0001250", "HP:0001263", "HP:0000602"}
    assert found.sources[onto.index["HP:0000602"]] == ["Condition/f"]


def test_ignored_records_and_other_codes(onto: Ontology) -> None:
    resources = [
        obs("a", "HP:0001166", status="entered-in-error"),
        {
            "resourceType": "Condition",
            "id": "b",
            "code": {"coding": [{"system": HPO, "code": "HP:0001083"}]},
            "verificationStatus": {"coding": [{"code": "entered-in-error"}]},
        },
        obs("c", "1234-5", LOINC),  # not HPO: not a phenotype, not an error
        {"resourceType": "Patient", "id": "p"},
    ]
    found = read_phenotypes(onto, resources)
    assert found.present == [] and found.excluded == []


def test_obsolete_ids_are_replaced_and_reported(onto: Ontology) -> None:
    found = read_phenotypes(onto, [obs("a", "HP:0000057"), obs("b", "HP:0000624")])
    assert {onto.ids[t] for t in found.present} == {"HP:0008665", "HP:0000286"}
    assert ("Observation/a", "HP:0000057", "HP:0008665") in found.replaced
    assert ("Observation/b", "HP:0000624", "HP:0000286") in found.replaced


@pytest.mark.parametrize(
    ("code", "message"),
    [("HP:9999999", "not a term"), ("HP:0001726", "obsolete"), ("HP:12", "not an HPO id")],
)
def test_unknown_or_unreplaceable_ids_are_errors_naming_the_resource(onto: Ontology, code: str, message: str) -> None:
    with pytest.raises(PhenotypeError, match=message) as caught:
        read_phenotypes(onto, [obs("ok", "HP:0001166"), obs("bad", code)])
    assert caught.value.reference == "Observation/bad"


def test_a_term_both_present_and_excluded_counts_as_present(onto: Ontology) -> None:
    found = read_phenotypes(onto, [obs("a", "HP:0001166"), obs("b", "HP:0001166", valueCodeableConcept=absent())])
    assert [onto.ids[t] for t in found.present] == ["HP:0001166"] and found.excluded == []
    assert found.profile().excluded == []
