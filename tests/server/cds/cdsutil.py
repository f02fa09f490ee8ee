"""Helpers of the CDS Hooks tests: sandbox-signed JWTs, PGx / variant Observations, hook requests.

The JWT, hook request and TherapeuticImplication come from :mod:`server.cds.samples` (shared with
bench/cds.py); here they get the test defaults (the shared sandbox key, Patient/p1, HGNC ids).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from server.cds import samples
from server.cds.samples import SANDBOX_ISSUER, SANDBOX_KID, TBD, hook_request
from tests.conftest import SHARED

__all__ = [
    "TBD",
    "auth",
    "bundle",
    "dx_implication",
    "gene_component",
    "hook_request",
    "implication",
    "med_order",
    "sandbox_key",
    "token",
    "variant",
]

RXNORM = "http://www.nlm.nih.gov/research/umls/rxnorm"
HGNC = {
    "CYP2C19": "HGNC:2621",
    "DPYD": "HGNC:3012",
    "TPMT": "HGNC:12014",
    "SLCO1B1": "HGNC:10959",
    "CYP2C9": "HGNC:2623",
}


def sandbox_key() -> bytes:
    path = SHARED / "cds-hooks" / "sandbox-keys" / "ecprivkey.pem"
    if not path.exists():
        pytest.skip(f"shared test data not found: {path}")
    return Path(path).read_bytes()


def token(
    aud: str | list[str],
    *,
    iss: str = SANDBOX_ISSUER,
    key: Any = None,
    kid: str = SANDBOX_KID,
    headers: dict[str, Any] | None = None,
    **claims: Any,
) -> str:
    return samples.client_jwt(aud, key or sandbox_key(), iss=iss, kid=kid, headers=headers, **claims)


def auth(path: str, **kwargs: Any) -> dict[str, str]:
    return {"Authorization": f"Bearer {token('http://testserver' + path, **kwargs)}"}


def gene_component(gene: str) -> dict[str, Any]:
    return samples.gene_component(gene, HGNC.get(gene))


def implication(
    gene: str, phenotype: str, score: float | None = None, *, status: str = "final", patient: str = "p1"
) -> dict[str, Any]:
    return samples.therapeutic_implication(
        gene, phenotype, score, gene_code=HGNC.get(gene), status=status, patient=patient
    )


bundle = samples.searchset


def med_order(
    id_: str,
    code: str | None = None,
    display: str = "",
    *,
    system: str = RXNORM,
    text: str | None = None,
    dose: float | None = None,
) -> dict[str, Any]:
    concept: dict[str, Any] = {}
    if code:
        concept["coding"] = [{"system": system, "code": code, "display": display}]
    if text:
        concept["text"] = text
    order: dict[str, Any] = {
        "resourceType": "MedicationRequest",
        "id": id_,
        "status": "draft",
        "intent": "order",
        "medicationCodeableConcept": concept,
        "subject": {"reference": "Patient/p1"},
    }
    if dose is not None:
        order["dosageInstruction"] = [{"doseAndRate": [{"doseQuantity": {"value": dose, "unit": "mg"}}]}]
    return order


def variant(id_: str, gene: str, *, somatic: bool = False, protein: str | None = None) -> dict[str, Any]:
    components = [
        gene_component(gene),
        {
            "code": {"coding": [{"system": "http://loinc.org", "code": "48002-0"}]},
            "valueCodeableConcept": {
                "coding": [{"system": "http://loinc.org", "code": "LA6684-0" if somatic else "LA6683-2"}]
            },
        },
    ]
    if protein:
        components.append(
            {
                "code": {"coding": [{"system": "http://loinc.org", "code": "48005-3"}]},
                "valueCodeableConcept": {"coding": [{"system": "http://varnomen.hgvs.org", "code": protein}]},
            }
        )
    return {
        "resourceType": "Observation",
        "id": id_,
        "status": "final",
        "code": {"coding": [{"system": "http://loinc.org", "code": "69548-6"}]},
        "subject": {"reference": "Patient/p1"},
        "valueCodeableConcept": {"coding": [{"system": "http://loinc.org", "code": "LA9633-4"}]},
        "component": components,
    }


def dx_implication(id_: str, variant_id: str, code: str = "LA6668-3") -> dict[str, Any]:
    return {
        "resourceType": "Observation",
        "id": id_,
        "status": "final",
        "code": {"coding": [{"system": TBD, "code": "diagnostic-implication"}]},
        "subject": {"reference": "Patient/p1"},
        "derivedFrom": [{"reference": f"Observation/{variant_id}"}],
        "component": [
            {
                "code": {"coding": [{"system": "http://loinc.org", "code": "53037-8"}]},
                "valueCodeableConcept": {"coding": [{"system": "http://loinc.org", "code": code}]},
            }
        ],
    }
