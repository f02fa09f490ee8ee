"""Tests of mappers.csv_ehr: the documented CSV layouts -> FHIR R4, config overrides, per-row quarantine.

Fixtures in tests/data/csv use the default layout (docs/ehr-mapping.md), each with good and bad
rows, and a hospital export with Norwegian headers, ';', cp1252, dd.mm.yyyy and decimal commas
read through tests/data/csv/hospital-x-config.json. Every resource is checked with
profiles.validate.validate_structure and the R4B models.
"""

from __future__ import annotations

import io
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
from fhir.resources.R4B import get_fhir_model_class

from mappers.csv_ehr import KINDS, Mapped, load_config, loinc_check_digit, map_csv
from mappers.ehr_common import Problem, Quarantined, fhir_id
from profiles.validate import validate_structure

DATA = Path(__file__).resolve().parents[1] / "data" / "csv"
FNR = "urn:oid:2.16.578.1.12.4.1.4.1"
SUBJECT = {"reference": f"Patient?identifier={FNR}|15838512329"}
SYNTHETIC = Problem("patient_id", "15838512329 is a synthetic test identity (Tenor, month + 80)", "warning")


def rows(kind: str, name: str | None = None, config: Any = None) -> list[Mapped | Quarantined]:
    return list(map_csv(DATA / (name or f"{kind}.csv"), kind, config))


def summary(out: list[Mapped | Quarantined]) -> list[tuple[Any, ...]]:
    return [(r.line, "mapped") if isinstance(r, Mapped) else (r.record, r.location, r.reason) for r in out]


def assert_valid(resource: dict[str, Any]) -> None:
    assert validate_structure(resource) == []
    get_fhir_model_class(resource["resourceType"]).model_validate(resource)


@pytest.mark.parametrize("kind", KINDS)
def test_every_mapped_row_is_valid_r4(kind: str) -> None:
    out = rows(kind)
    assert any(isinstance(r, Mapped) for r in out)
    for r in out:
        if isinstance(r, Mapped):
            bundle = r.bundle()
            assert bundle["type"] == "transaction"
            assert validate_structure(bundle) == []
            for resource in r.resources:
                assert_valid(resource)


def test_patients() -> None:
    out = rows("patients")
    assert summary(out) == [
        (2, "mapped"),
        (3, "mapped"),
        (4, "mapped"),
        (5, "patient_id", "invalid Norwegian person number: check digits do not match"),
        (6, "gender", "'X' is not a known gender (config values.gender)"),
        (7, "patient_id", "required value is empty"),
        (8, "birth_date", "'1960-02-30' is not a date in the configured formats ['%Y-%m-%d']"),
    ]
    kari = out[0]
    assert isinstance(kari, Mapped)
    assert kari.entries[0]["request"] == {"method": "PUT", "url": f"Patient?identifier={FNR}|15838512329"}
    assert kari.resources[0] == {
        "resourceType": "Patient",
        "identifier": [{"system": FNR, "value": "15838512329"}],
        "active": True,
        "name": [{"use": "official", "family": "Nordmann", "given": ["Kari", "Elisabeth"]}],
        "telecom": [
            {"system": "phone", "value": "+4755123456", "use": "home"},
            {"system": "email", "value": "kari@example.no"},
        ],
        "gender": "female",
        "birthDate": "1985-03-15",
        "address": [{"use": "home", "line": ["Storgata 1"], "city": "Bergen", "postalCode": "5003", "country": "NO"}],
    }
    assert kari.warnings == [SYNTHETIC]
    ase, nils = out[1], out[2]
    assert isinstance(ase, Mapped) and isinstance(nils, Mapped)
    assert ase.resources[0]["gender"] == "female"  # "kvinne" through the value map
    assert nils.resources[0]["identifier"] == [{"system": "urn:oid:2.16.578.1.12.4.1.4.3", "value": "13527248013"}]
    assert nils.resources[0]["deceasedDateTime"] == "2024-03-20T10:15:00+01:00"
    bad = out[3]
    assert isinstance(bad, Quarantined)
    assert (bad.source, bad.raw) == ("patients.csv", "15838512328,Feil,Sjekksum,1985-03-15,F,,,,,,,")


def test_encounters() -> None:
    out = rows("encounters")
    assert summary(out)[2:] == [
        (4, "class", "'teleport' is not a known encounter class (config values.encounter_class)"),
        (5, "end", "end 2024-03-15T09:00:00+01:00 is before start 2024-03-16T09:00:00+01:00"),
    ]
    first = out[0]
    assert isinstance(first, Mapped)
    practitioner, encounter = first.resources
    assert first.entries[0]["request"] == {
        "method": "POST",
        "url": "Practitioner",
        "ifNoneExist": "identifier=urn:oid:2.16.578.1.12.4.1.4.4|9144889",
    }
    assert practitioner == {
        "resourceType": "Practitioner",
        "identifier": [{"system": "urn:oid:2.16.578.1.12.4.1.4.4", "value": "9144889"}],
    }
    # the same id as the HL7 v2 mapper gives PV1-19 "V2024-000123^^^HOSPITAL"
    assert encounter["id"] == fhir_id("Encounter", "urn:bigmed:id:HOSPITAL", "V2024-000123")
    assert encounter["status"] == "finished"
    assert encounter["class"] == {
        "system": "http://terminology.hl7.org/CodeSystem/v3-ActCode",
        "code": "IMP",
        "display": "inpatient encounter",
    }
    assert encounter["period"] == {"start": "2024-03-15T08:25:00+01:00", "end": "2024-03-20T13:30:00+01:00"}
    assert encounter["participant"][0]["individual"] == {
        "reference": "Practitioner?identifier=urn:oid:2.16.578.1.12.4.1.4.4|9144889"
    }
    second = out[1]
    assert isinstance(second, Mapped)
    assert (second.resources[0]["status"], second.resources[0]["class"]["code"]) == ("in-progress", "AMB")


def test_diagnoses() -> None:
    out = rows("diagnoses")
    assert summary(out)[3] == (5, "icd10_code", "'11.9' is not an ICD-10 code (letter, two digits, optional .x)")
    d1, d2, d3 = (r for r in out[:3] if isinstance(r, Mapped))
    condition = d1.resources[0]
    assert condition == {
        "resourceType": "Condition",
        "id": fhir_id("diagnoses", "HOSPITAL", "D-1"),
        "clinicalStatus": {
            "coding": [{"system": "http://terminology.hl7.org/CodeSystem/condition-clinical", "code": "active"}]
        },
        "verificationStatus": {
            "coding": [{"system": "http://terminology.hl7.org/CodeSystem/condition-ver-status", "code": "confirmed"}]
        },
        "category": [
            {
                "coding": [
                    {
                        "system": "http://terminology.hl7.org/CodeSystem/condition-category",
                        "code": "encounter-diagnosis",
                    }
                ]
            }
        ],
        "code": {
            "coding": [
                {
                    "system": "http://hl7.org/fhir/sid/icd-10",
                    "code": "E11.9",
                    "display": "Diabetes mellitus type 2 uten komplikasjoner",
                }
            ]
        },
        "subject": {"reference": f"Patient?identifier={FNR}|31129956715"},
        "encounter": {"reference": "Encounter/" + fhir_id("Encounter", "urn:bigmed:id:HOSPITAL", "V2024-000123")},
        "onsetDateTime": "2019-05-01",
        "recordedDate": "2024-03-15",
    }
    assert d2.resources[0]["code"]["coding"][0]["code"] == "G40.309"  # the dot is restored
    assert d2.resources[0]["category"][0]["coding"][0]["code"] == "problem-list-item"
    assert d3.resources[0]["clinicalStatus"]["coding"][0]["code"] == "resolved"


def test_lab_results() -> None:
    out = rows("lab_results")
    assert summary(out)[4:] == [
        (6, "loinc_code", "'2345-8' fails the LOINC check digit"),
        (7, "effective", "required value is empty"),
        (8, "line 8", "8 fields, the header has 12"),
    ]
    glucose, hb, wbc, abo = (r.resources[0] for r in out[:4] if isinstance(r, Mapped))
    assert glucose == {
        "resourceType": "Observation",
        "id": fhir_id("lab_results", "HOSPITAL", "L-1"),
        "status": "final",
        "category": [
            {
                "coding": [
                    {
                        "system": "http://terminology.hl7.org/CodeSystem/observation-category",
                        "code": "laboratory",
                        "display": "Laboratory",
                    }
                ]
            }
        ],
        "code": {"coding": [{"system": "http://loinc.org", "code": "2345-7", "display": "Glukose"}]},
        "subject": SUBJECT,
        "effectiveDateTime": "2024-03-16T08:00:00+01:00",
        "encounter": {"reference": "Encounter/" + fhir_id("Encounter", "urn:bigmed:id:HOSPITAL", "V2024-000124")},
        "valueQuantity": {
            "value": Decimal("6.2"),
            "unit": "mmol/L",
            "system": "http://unitsofmeasure.org",
            "code": "mmol/L",
        },
        "interpretation": [
            {"coding": [{"system": "http://terminology.hl7.org/CodeSystem/v3-ObservationInterpretation", "code": "H"}]}
        ],
        "referenceRange": [
            {
                "low": {
                    "value": Decimal("3.9"),
                    "unit": "mmol/L",
                    "system": "http://unitsofmeasure.org",
                    "code": "mmol/L",
                },
                "high": {
                    "value": Decimal("6.1"),
                    "unit": "mmol/L",
                    "system": "http://unitsofmeasure.org",
                    "code": "mmol/L",
                },
            }
        ],
    }
    assert hb["valueQuantity"]["code"] == "g/dL"  # "g/dl" recognised as UCUM g/dL
    assert hb["effectiveDateTime"] == "2024-03-16T08:00:00+01:00"
    assert wbc["status"] == "preliminary"
    assert wbc["valueQuantity"] == {
        "value": Decimal("0.5"),
        "comparator": "<",
        "unit": "10^9/L",
        "system": "http://unitsofmeasure.org",
        "code": "10*9/L",
    }
    assert abo["valueString"] == "A Rh(D) positiv"


def test_loinc_check_digit() -> None:
    assert [loinc_check_digit(n) for n in ("2345", "718", "26464", "882", "2160")] == [7, 7, 8, 1, 0]


def test_medications_as_statement_and_as_request() -> None:
    out = rows("medications")
    assert summary(out)[3] == (5, "atc_code", "'METFORMIN' is not an ATC code (e.g. A10BA02)")
    metformin, levetiracetam, group = (r for r in out[:3] if isinstance(r, Mapped))
    assert metformin.resources[0] == {
        "resourceType": "MedicationStatement",
        "id": fhir_id("medications", "HOSPITAL", "M-1"),
        "status": "active",
        "medicationCodeableConcept": {
            "coding": [{"system": "http://www.whocc.no/atc", "code": "A10BA02", "display": "Metformin"}],
            "text": "Metformin",
        },
        "subject": {"reference": f"Patient?identifier={FNR}|31129956715"},
        "effectivePeriod": {"start": "2019-05-01"},
        "dosage": [{"text": "500 mg x 2"}],
    }
    assert levetiracetam.resources[0]["status"] == "stopped"  # "seponert" through the value map
    assert levetiracetam.resources[0]["effectivePeriod"] == {"start": "2010-01-01", "end": "2015-06-30"}
    assert group.warnings == [
        SYNTHETIC,
        Problem("atc_code", "A10 is an ATC group (level 2), not a substance", "warning"),
    ]
    requests = [
        r for r in rows("medications", config={"medication_resource": "MedicationRequest"}) if isinstance(r, Mapped)
    ]
    request = requests[0].resources[0]
    assert request == {
        "resourceType": "MedicationRequest",
        "id": fhir_id("medications", "HOSPITAL", "M-1"),
        "status": "active",
        "intent": "order",
        "medicationCodeableConcept": metformin.resources[0]["medicationCodeableConcept"],
        "subject": {"reference": f"Patient?identifier={FNR}|31129956715"},
        "authoredOn": "2019-05-01",
        "dosageInstruction": [{"text": "500 mg x 2"}],
        "dispenseRequest": {"validityPeriod": {"start": "2019-05-01"}},
    }
    for r in requests:
        assert_valid(r.resources[0])


def test_phenotypes_present_and_excluded() -> None:
    out = rows("phenotypes")
    assert summary(out)[3:] == [
        (5, "hpo_id", "'HP:12345' is not an HPO term id (HP:0000000)"),
        (6, "status", "'kanskje' is not a known phenotype status (config values.phenotype_status)"),
    ]
    present, excluded, normalised = (r.resources[0] for r in out[:3] if isinstance(r, Mapped))
    assert present == {
        "resourceType": "Observation",
        "id": fhir_id("phenotypes", "HOSPITAL", "P-1"),
        "status": "final",
        "category": [
            {
                "coding": [
                    {
                        "system": "http://terminology.hl7.org/CodeSystem/observation-category",
                        "code": "exam",
                        "display": "Exam",
                    }
                ]
            }
        ],
        "code": {
            "coding": [
                {"system": "http://human-phenotype-ontology.org", "code": "HP:0001166", "display": "Arachnodactyly"}
            ]
        },
        "subject": SUBJECT,
        "valueCodeableConcept": {"coding": [{"system": "http://loinc.org", "code": "LA9633-4", "display": "Present"}]},
        "effectiveDateTime": "1990-01-01",
    }
    assert excluded["valueCodeableConcept"] == {
        "coding": [{"system": "http://loinc.org", "code": "LA9634-2", "display": "Absent"}]
    }
    assert excluded["issued"] == "2024-03-16T10:00:00+01:00"
    assert normalised["code"]["coding"][0]["code"] == "HP:0001519"  # HP_0001519 written with an underscore


def test_hospital_config_renames_columns_and_formats() -> None:
    out = rows("lab_results", "lab_results_hospital_x.csv", DATA / "hospital-x-config.json")
    glucose, potassium, iso_date = out
    assert isinstance(glucose, Mapped) and isinstance(potassium, Mapped) and isinstance(iso_date, Mapped)
    obs = glucose.resources[0]
    assert obs["id"] == fhir_id("lab_results", "HOSPX", "X-1")
    assert obs["valueQuantity"] == {
        "value": Decimal("6.2"),
        "unit": "mmol/l",
        "system": "http://unitsofmeasure.org",
        "code": "mmol/L",
    }
    assert obs["effectiveDateTime"] == "2024-03-16T08:00:00+01:00"
    assert obs["interpretation"][0]["coding"][0]["code"] == "H"  # "høy", read from cp1252
    assert obs["code"]["coding"][0]["display"] == "Glukose"
    assert str(potassium.resources[0]["valueQuantity"]["value"]) == "4.10"
    assert potassium.resources[0]["status"] == "preliminary"  # "foreløpig"
    assert iso_date.resources[0]["effectiveDateTime"] == "2024-03-16"  # ISO dates are always accepted


def test_missing_required_column_quarantines_every_row() -> None:
    data = io.StringIO("patient_id,display\n15838512329,x\n15838512329,y\n")
    out = list(map_csv(data, "lab_results"))
    assert summary(out) == [
        (2, "loinc_code, effective", "the header lacks required column(s) loinc_code, effective"),
        (3, "loinc_code, effective", "the header lacks required column(s) loinc_code, effective"),
    ]


def test_streams_binary_and_text_and_blank_lines() -> None:
    text = "patient_id,family_name\n31129956715,Bjørnstad\n\n"
    for stream in (io.StringIO(text), io.BytesIO(text.encode("utf-8"))):
        (only,) = list(map_csv(stream, "patients"))
        assert isinstance(only, Mapped)
        assert only.resources[0]["name"] == [{"use": "official", "family": "Bjørnstad"}]


def test_same_file_twice_gives_the_same_resources() -> None:
    first = [r.bundle() for r in rows("lab_results") if isinstance(r, Mapped)]
    second = [r.bundle() for r in rows("lab_results") if isinstance(r, Mapped)]
    assert first == second


def test_patient_id_system_can_be_a_local_system() -> None:
    data = io.StringIO("patient_id,loinc_code,effective,value\nMRN-1,2345-7,2024-03-16T08:00:00,5\n")
    (only,) = list(map_csv(data, "lab_results", {"patient_id_system": "urn:bigmed:id:OUS"}))
    assert isinstance(only, Mapped)
    assert only.resources[0]["subject"] == {"reference": "Patient?identifier=urn:bigmed:id:OUS|MRN-1"}
    assert only.resources[0]["valueQuantity"] == {"value": Decimal("5")}


def test_config_merging_and_unknown_kind() -> None:
    cfg = load_config({"columns": {"patients": {"family_name": "etternavn"}}})
    assert cfg["columns"]["patients"]["family_name"] == "etternavn"
    assert cfg["columns"]["patients"]["given_names"] == "given_names"  # the rest kept from the default
    assert load_config()["delimiter"] == ","
    with pytest.raises(ValueError, match="unknown CSV kind"):
        list(map_csv(io.StringIO(""), "allergies"))
