"""What a CDS Hooks client sends, for trying the services out: a signed client JWT and hook requests.

The client side of CDS Hooks 2.0: the JWT a client signs for each call
(https://cds-hooks.hl7.org/2.0/#trusting-cds-clients: ``iss``, ``aud`` = the service URL,
``exp``, ``iat``, unique ``jti``; header ``kid``), the request body (#http-request: ``hook``,
``hookInstance``, ``context`` with ``draftOrders``/``selections`` for the order hooks, optional
``prefetch`` and ``fhirServer``) and the minimal Genomics Reporting TherapeuticImplication a
``pgx`` prefetch carries. Signed by default as the public CDS Hooks sandbox signs (ES384, its
key id), whose public key the server trusts with ``BIGMED_AUTH=open`` (:mod:`server.cds.jwt`);
the private key is the caller's to give. Used by the benchmark (bench/cds.py) and the tests.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Sequence
from typing import Any

from server.auth.jose import sign_jwt

__all__ = [
    "SANDBOX_ISSUER",
    "SANDBOX_KID",
    "TBD",
    "client_jwt",
    "gene_component",
    "hook_request",
    "searchset",
    "therapeutic_implication",
]

SANDBOX_ISSUER = "https://sandbox.cds-hooks.org"
#: the ``kid`` of the public sandbox key (server/cds/data/sandbox-jwks.json)
SANDBOX_KID = "44823f3d-0b01-4a6c-a80e-b9d3e8a7226f"
TBD = "http://hl7.org/fhir/uv/genomics-reporting/CodeSystem/tbd-codes-cs"


def client_jwt(
    aud: str | list[str],
    key: Any,
    *,
    iss: str = SANDBOX_ISSUER,
    kid: str = SANDBOX_KID,
    ttl: int = 300,
    headers: dict[str, Any] | None = None,
    **claims: Any,
) -> str:
    """A client JWT for a call to ``aud`` signed (ES384) with ``key`` (PEM bytes or a cryptography key)."""
    now = int(time.time())
    body = {"iss": iss, "aud": aud, "exp": now + ttl, "iat": now, "jti": str(uuid.uuid4()), **claims}
    return sign_jwt(body, key, alg="ES384", kid=kid, **(headers or {}))


def searchset(*resources: dict[str, Any]) -> dict[str, Any]:
    return {"resourceType": "Bundle", "type": "searchset", "entry": [{"resource": r} for r in resources]}


def hook_request(
    hook: str,
    orders: Sequence[dict[str, Any]] | None = None,
    prefetch: dict[str, Any] | None = None,
    *,
    patient: str = "p1",
    **extra: Any,
) -> dict[str, Any]:
    """A hook request for ``patient``; ``orders`` become ``draftOrders`` (order-select selects the first)."""
    context: dict[str, Any] = {"userId": "Practitioner/example", "patientId": patient}
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


def gene_component(gene: str, code: str | None = None) -> dict[str, Any]:
    """The gene-studied component (LOINC 48018-6): ``code`` the HGNC id (default: the symbol)."""
    return {
        "code": {"coding": [{"system": "http://loinc.org", "code": "48018-6"}]},
        "valueCodeableConcept": {
            "coding": [{"system": "http://www.genenames.org/geneId", "code": code or gene, "display": gene}]
        },
    }


def therapeutic_implication(
    gene: str,
    phenotype: str,
    score: float | None = None,
    *,
    gene_code: str | None = None,
    status: str = "final",
    patient: str = "p1",
) -> dict[str, Any]:
    """A TherapeuticImplication Observation ``ti-{gene}``: the phenotype, an activity score, the gene."""
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
    components.append(gene_component(gene, gene_code))
    return {
        "resourceType": "Observation",
        "id": f"ti-{gene.lower()}",
        "status": status,
        "code": {"coding": [{"system": TBD, "code": "therapeutic-implication"}]},
        "subject": {"reference": f"Patient/{patient}"},
        "component": components,
    }
