"""Helpers of the CDS Hooks tests: sandbox-signed JWTs, PGx / variant Observations, hook requests."""

from __future__ import annotations

import time
import uuid
from pathlib import Path
from typing import Any

import pytest

from server.auth.jose import sign_jwt
from tests.conftest import SHARED

TBD = "http://hl7.org/fhir/uv/genomics-reporting/CodeSystem/tbd-codes-cs"
RXNORM = "http://www.nlm.nih.gov/research/umls/rxnorm"
SANDBOX_KID = "44823f3d-0b01-4a6c-a80e-b9d3e8a7226f"
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
    iss: str = "https://sandbox.cds-hooks.org",
    key: Any = None,
    kid: str = SANDBOX_KID,
    headers: dict[str, Any] | None = None,
    **claims: Any,
) -> str:
    now = int(time.time())
    body = {"iss": iss, "aud": aud, "exp": now + 300, "iat": now, "jti": str(uuid.uuid4()), **claims}
    return sign_jwt(body, key or sandbox_key(), alg="ES384", kid=kid, **(headers or {}))


def auth(path: str, **kwargs: Any) -> dict[str, str]:
    return {"Authorization": f"Bearer {token('http://testserver' + path, **kwargs)}"}


def gene_component(gene: str) -> dict[str, Any]:
    return {
        "code": {"coding": [{"system": "http://loinc.org", "code": "48018-6"}]},
        "valueCodeableConcept": {
            "coding": [{"system": "http://www.genenames.org/geneId", "code": HGNC.get(gene, gene), "display": gene}]
        },
    }


def implication(
    gene: str, phenotype: str, score: float | None = None, *, status: str = "final", patient: str = "p1"
) -> dict[str, Any]:
    components: list[dict[str, Any]] = [
        {
            "code": {"coding": [{"system": TBD, "code": "therapeutic-implication"}]},
            "valueCodeableConcept": {"text": phenotype},
        }
    ]
    if score is not None:
        components.append(
            {
                "code": {"coding": [{"system": "http://bigmed.example/fhir/CodeSystem/pgx", "code": "activity-score"}]},
                "valueQuantity": {"value": score},
            }
        )
    components.append(gene_component(gene))
    return {
        "resourceType": "Observation",
        "id": f"ti-{gene.lower()}",
        "status": status,
        "code": {"coding": [{"system": TBD, "code": "therapeutic-implication"}]},
        "subject": {"reference": f"Patient/{patient}"},
        "component": components,
    }


def bundle(*resources: dict[str, Any]) -> dict[str, Any]:
    return {"resourceType": "Bundle", "type": "searchset", "entry": [{"resource": r} for r in resources]}


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


def hook_request(
    hook: str, orders: list[dict[str, Any]] | None = None, prefetch: dict[str, Any] | None = None, **extra: Any
) -> dict[str, Any]:
    context: dict[str, Any] = {"userId": "Practitioner/example", "patientId": "p1"}
    if orders is not None:
        context["draftOrders"] = {
            "resourceType": "Bundle",
            "type": "collection",
            "entry": [{"resource": o} for o in orders],
        }
        if hook == "order-select":
            context["selections"] = [f"MedicationRequest/{orders[0]['id']}"]
    body: dict[str, Any] = {"hookInstance": str(uuid.uuid4()), "hook": hook, "context": context}
    if prefetch is not None:
        body["prefetch"] = prefetch
    body.update(extra)
    return body


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
