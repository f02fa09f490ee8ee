"""The CapabilityStatement (http://hl7.org/fhir/R4/capabilitystatement.html, http.html#capabilities).

Generated from the same registries the server runs on: the resource types the validator serves,
the interactions implemented, and the search parameters of the search registry whose types the
query engine supports. Nothing here is hand-listed per resource type.
"""

from __future__ import annotations

import time
from typing import Any

from server.fhir.context import FhirContext
from server.fhir.resource import instant
from server.fhir.validation import resource_types, validated_by
from server.search.query import SUPPORTED_TYPES

__all__ = ["SOFTWARE_VERSION", "SYSTEM_INTERACTIONS", "TYPE_INTERACTIONS", "capability_statement"]

SOFTWARE_VERSION = "0.1.0"
TYPE_INTERACTIONS = (
    "read",
    "vread",
    "update",
    "patch",
    "delete",
    "history-instance",
    "history-type",
    "create",
    "search-type",
)
SYSTEM_INTERACTIONS = ("history-system",)
_STARTED = instant(time.time())
_CACHE: dict[tuple[int, str], dict[str, Any]] = {}


def _resource_entry(ctx: FhirContext, type_: str) -> dict[str, Any]:
    params = [
        {"name": code, "definition": sp.url, "type": sp.type}
        for code, sp in sorted(ctx.registry.params_for(type_).items())
        if sp.type in SUPPORTED_TYPES
    ]
    entry: dict[str, Any] = {
        "type": type_,
        "profile": f"http://hl7.org/fhir/StructureDefinition/{type_}",
        "documentation": f"Validated on write with {validated_by(type_)}.",
        "interaction": [{"code": code} for code in TYPE_INTERACTIONS],
        "versioning": "versioned-update",
        "readHistory": True,
        "updateCreate": True,
        "conditionalCreate": True,
        "conditionalRead": "not-supported",
        "conditionalUpdate": True,
        "conditionalDelete": "single",
        "searchParam": params,
    }
    return entry


def _build(ctx: FhirContext, base: str) -> dict[str, Any]:
    return {
        "resourceType": "CapabilityStatement",
        "status": "active",
        "date": _STARTED,
        "publisher": "BigMed FHIR",
        "kind": "instance",
        "software": {"name": "BigMed FHIR", "version": SOFTWARE_VERSION},
        "implementation": {"description": "BigMed FHIR R4 server", "url": base},
        "fhirVersion": "4.0.1",
        "format": ["application/fhir+json", "application/json"],
        "patchFormat": ["application/json-patch+json"],
        "rest": [
            {
                "mode": "server",
                "documentation": (
                    "Unknown search parameters are ignored and reported in a searchset OperationOutcome "
                    "entry; with 'Prefer: handling=strict' they are a 400."
                ),
                "resource": [_resource_entry(ctx, t) for t in sorted(resource_types())],
                "interaction": [{"code": code} for code in SYSTEM_INTERACTIONS],
            }
        ],
    }


def capability_statement(ctx: FhirContext, base: str) -> dict[str, Any]:
    """The server's CapabilityStatement for clients that reach it at ``base``."""
    key = (id(ctx), base)
    if key not in _CACHE:
        _CACHE[key] = _build(ctx, base)
    return _CACHE[key]
