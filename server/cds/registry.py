"""The CDS services this server offers and the discovery document (https://cds-hooks.hl7.org/2.0/#discovery)."""

from __future__ import annotations

from typing import Any

from server.cds.model import Service
from server.cds.services import genomic_findings, pgx, qt_risk
from server.errors import NotFound

__all__ = ["SERVICES", "discovery", "service"]

SERVICES: dict[str, Service] = {s.id: s for s in (*pgx.SERVICES, *genomic_findings.SERVICES, *qt_risk.SERVICES)}


def discovery() -> dict[str, Any]:
    return {"services": [s.discovery() for s in SERVICES.values()]}


def service(service_id: str) -> Service:
    found = SERVICES.get(service_id)
    if found is None:
        raise NotFound(f"No CDS service '{service_id}' (GET /cds-services lists them: {', '.join(SERVICES)})")
    return found
