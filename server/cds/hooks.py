"""Answering a CDS Hooks call: ``POST /cds-services/{id}`` (https://cds-hooks.hl7.org/2.0/#calling-a-cds-service).

Validates the request (#http-request: ``hook`` equal to the service's, ``hookInstance``,
``context`` with the hook's required fields — ``patientId`` always, ``draftOrders`` (a Bundle) for
order-select/order-sign, ``selections`` for order-select; ``fhirServer`` an http(s) URL, and
``fhirAuthorization`` with ``access_token``, ``token_type`` Bearer, ``scope`` and ``subject`` when
present), resolves the prefetch (:mod:`server.cds.prefetch`: 412 when required data cannot be had),
runs the service and returns ``{"cards": [...]}`` (#cds-service-response). Bad requests are 400
OperationOutcomes (:mod:`server.errors`).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping
from typing import Any

from server.auth.access import Access
from server.cds import prefetch
from server.cds.model import HookCall
from server.cds.registry import service
from server.errors import BadRequest, FhirError
from server.fhir.context import FhirContext

__all__ = ["TokenCheck", "call_service"]

TokenCheck = Callable[[str], Access]

log = logging.getLogger(__name__)
_REQUIRED_CONTEXT = {
    "patient-view": ("patientId",),
    "order-select": ("patientId", "selections", "draftOrders"),
    "order-sign": ("patientId", "draftOrders"),
}


def _check(body: Any, hook: str) -> None:
    if not isinstance(body, Mapping):
        raise BadRequest("A CDS Hooks request is a JSON object")
    if body.get("hook") != hook:
        raise BadRequest(f"This service answers the '{hook}' hook, not '{body.get('hook')}'")
    if not isinstance(body.get("hookInstance"), str) or not body["hookInstance"]:
        raise BadRequest("hookInstance (a string) is required")
    context = body.get("context")
    if not isinstance(context, Mapping):
        raise BadRequest("context (an object) is required")
    missing = [k for k in _REQUIRED_CONTEXT.get(hook, ()) if context.get(k) in (None, "")]
    if missing:
        raise BadRequest(f"context of {hook} lacks {', '.join(missing)}")
    if "draftOrders" in context and (
        not isinstance(context["draftOrders"], Mapping) or context["draftOrders"].get("resourceType") != "Bundle"
    ):
        raise BadRequest("context.draftOrders must be a FHIR Bundle")
    if "selections" in context and not isinstance(context["selections"], list):
        raise BadRequest("context.selections must be an array of references")
    server = body.get("fhirServer")
    if server is not None and (not isinstance(server, str) or not server.startswith(("http://", "https://"))):
        raise BadRequest("fhirServer must be an http(s) URL")
    auth = body.get("fhirAuthorization")
    if auth is not None:
        if not isinstance(auth, Mapping):
            raise BadRequest("fhirAuthorization must be an object")
        absent = [k for k in ("access_token", "token_type", "scope", "subject") if not auth.get(k)]
        if absent:
            raise BadRequest(f"fhirAuthorization lacks {', '.join(absent)}")
        if str(auth["token_type"]).lower() != "bearer":
            raise BadRequest("fhirAuthorization.token_type must be Bearer")
        if server is None:
            raise BadRequest("fhirAuthorization without fhirServer")
    if body.get("prefetch") is not None and not isinstance(body["prefetch"], Mapping):
        raise BadRequest("prefetch must be an object")


def _fetcher(
    ctx: FhirContext, body: Mapping[str, Any], own_bases: set[str], authenticate: TokenCheck | None
) -> tuple[prefetch.Fetcher | None, str]:
    server = body.get("fhirServer")
    if not server:
        return None, "the request has no fhirServer to fetch it from"
    auth = body.get("fhirAuthorization")
    if server.rstrip("/") in own_bases:
        if ctx.config.auth == "smart":
            if not auth or authenticate is None:
                return None, "fhirServer is this server and BIGMED_AUTH=smart, but no fhirAuthorization was given"
            try:
                access = authenticate(str(auth["access_token"]))
            except FhirError as err:
                return None, f"the fhirAuthorization token is not valid here: {err.message}"
            return prefetch.OwnStoreFetcher(ctx, server.rstrip("/"), access), ""
        return prefetch.OwnStoreFetcher(ctx, server.rstrip("/")), ""
    token = str(auth.get("access_token")) if auth else None
    return prefetch.HttpFetcher(server, token, ctx.config.cds_fetch_timeout_ms / 1000), ""


def call_service(
    ctx: FhirContext,
    service_id: str,
    body: Any,
    *,
    own_bases: set[str],
    ui_base: str,
    authenticate: TokenCheck | None = None,
) -> dict[str, Any]:
    """The response to a hook call (``{"cards": [...]}``).

    ``own_bases``: the FHIR base URLs that are this server (``fhirServer`` equal to one: read the
    store in-process). ``authenticate``: turns a ``fhirAuthorization`` access token into the
    :class:`~server.auth.access.Access` of its client (raises a FhirError when invalid), for
    ``BIGMED_AUTH=smart``.
    """
    svc = service(service_id)
    _check(body, svc.hook)
    fetcher, why = _fetcher(ctx, body, own_bases, authenticate)
    resolved = prefetch.resolve(svc.prefetch, body.get("prefetch"), body["context"], fetcher, svc.required, why)
    call = HookCall(
        service_id=svc.id,
        hook=svc.hook,
        hook_instance=body["hookInstance"],
        context=body["context"],
        prefetch=resolved.values,
        ui_base=ui_base.rstrip("/"),
        notes=resolved.notes,
        own_store=fetcher if isinstance(fetcher, prefetch.OwnStoreFetcher) else None,
    )
    for note in resolved.notes:
        log.info("cds %s %s: %s", svc.id, call.hook_instance, note)
    return {"cards": svc.handler(call)}
