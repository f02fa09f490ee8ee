"""Hand-made resources for the search tests (not tests): organisations, patients, encounters,
observations with components, a report, a sequence and a value set."""

from __future__ import annotations

from typing import Any

LOINC = "http://loinc.org"
UCUM = "http://unitsofmeasure.org"
V2_0203 = "http://terminology.hl7.org/CodeSystem/v2-0203"


def component(code: str, value: int) -> dict[str, Any]:
    return {
        "code": {"coding": [{"system": LOINC, "code": code}]},
        "valueQuantity": {"value": value, "unit": "mmHg", "system": UCUM, "code": "mm[Hg]"},
    }


RESOURCES: list[dict[str, Any]] = [
    {"resourceType": "Organization", "id": "org1", "name": "Acme Hospital"},
    {"resourceType": "Organization", "id": "org2", "name": "Beta Clinic_1"},
    {"resourceType": "Practitioner", "id": "pr1", "name": [{"family": "Who", "given": ["Doctor"]}]},
    {
        "resourceType": "Patient",
        "id": "ola",
        "meta": {
            "tag": [{"system": "urn:tags", "code": "vip"}],
            "profile": ["http://example.org/StructureDefinition/p"],
            "security": [{"system": "http://terminology.hl7.org/CodeSystem/v3-Confidentiality", "code": "R"}],
            "source": "http://source.example/ehr",
        },
        "identifier": [
            {
                "type": {"coding": [{"system": V2_0203, "code": "MR"}], "text": "Medical record number"},
                "system": "urn:mrn",
                "value": "123",
            }
        ],
        "name": [{"family": "Nordmann", "given": ["Ola"]}],
        "gender": "male",
        "birthDate": "1972-09-13",
        "managingOrganization": {"reference": "Organization/org1"},
        "generalPractitioner": [{"reference": "Practitioner/pr1"}],
    },
    {
        "resourceType": "Patient",
        "id": "kari",
        "name": [{"family": "Nordmann", "given": ["Kari"]}],
        "gender": "female",
        "birthDate": "1980",
        "managingOrganization": {"reference": "Organization/org2"},
    },
    {
        "resourceType": "Patient",
        "id": "jose",
        "name": [{"family": "Álvarez", "given": ["José"]}],
        "gender": "male",
        "birthDate": "2001-02-03",
        "managingOrganization": {"reference": "Organization/org1"},
    },
    {
        "resourceType": "Encounter",
        "id": "enc1",
        "status": "finished",
        "class": {"system": "http://terminology.hl7.org/CodeSystem/v3-ActCode", "code": "AMB"},
        "subject": {"reference": "Patient/ola"},
        "serviceProvider": {"reference": "Organization/org1"},
    },
    {
        "resourceType": "Observation",
        "id": "hb1",
        "status": "final",
        "code": {"coding": [{"system": LOINC, "code": "718-7", "display": "Hémoglobine [Mass/volume] in Blood"}]},
        "subject": {"reference": "Patient/ola"},
        "encounter": {"reference": "Encounter/enc1"},
        "performer": [{"reference": "Practitioner/pr1"}],
        "effectiveDateTime": "2024-05-01T10:00:00+02:00",
        "valueQuantity": {"value": 13.5, "unit": "g/dL", "system": UCUM, "code": "g/dL"},
    },
    {
        "resourceType": "Observation",
        "id": "hb2",
        "status": "preliminary",
        "code": {"coding": [{"system": LOINC, "code": "718-7"}]},
        "subject": {"reference": "Patient/kari"},
        "effectivePeriod": {"start": "2024-06-01", "end": "2024-06-03"},
        "valueQuantity": {"value": 9.8, "unit": "g/dL", "system": UCUM, "code": "g/dL"},
    },
    {
        "resourceType": "Observation",
        "id": "bp1",
        "status": "final",
        "code": {"coding": [{"system": LOINC, "code": "85354-9", "display": "Blood pressure panel"}]},
        "subject": {"reference": "Patient/ola"},
        "effectiveDateTime": "2023-01-01",
        "component": [component("8480-6", 120), component("8462-4", 80)],
    },
    {
        "resourceType": "Observation",
        "id": "bp2",
        "status": "final",
        "code": {"coding": [{"system": LOINC, "code": "85354-9"}]},
        "subject": {"reference": "Patient/jose"},
        "effectiveDateTime": "2023-02-01",
        "component": [component("8480-6", 150), component("8462-4", 70)],
    },
    {
        "resourceType": "Observation",
        "id": "byid",
        "status": "final",
        "code": {"text": "Clinical note"},
        "subject": {"identifier": {"system": "urn:mrn", "value": "42"}},
        "valueString": "fine",
    },
    {
        "resourceType": "DiagnosticReport",
        "id": "dr1",
        "status": "final",
        "code": {"coding": [{"system": LOINC, "code": "58410-2"}]},
        "subject": {"reference": "Patient/ola"},
        "result": [{"reference": "Observation/hb1"}, {"reference": "Observation/bp1"}],
    },
    {
        "resourceType": "MolecularSequence",
        "id": "seq1",
        "coordinateSystem": 0,
        "referenceSeq": {"chromosome": {"coding": [{"code": "1"}]}, "windowStart": 10, "windowEnd": 20},
        "variant": [{"start": 12, "end": 13}],
    },
    {
        "resourceType": "ValueSet",
        "id": "vs1",
        "url": "http://example.org/fhir/ValueSet/colours",
        "status": "active",
    },
]
