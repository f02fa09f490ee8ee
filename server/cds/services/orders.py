"""The orders a order-select / order-sign call is about (https://cds-hooks.hl7.org/hooks/order-select/,
https://cds-hooks.hl7.org/hooks/order-sign/): order-select acts on the draft orders named in
``context.selections`` (``MedicationRequest/123``), order-sign on every entry of ``draftOrders``.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from typing import Any

from server.cds.model import HookCall
from server.cds.patient import resources

__all__ = ["medication_concept", "medication_requests", "order_reference"]


def order_reference(resource: Mapping[str, Any]) -> str:
    return f"{resource.get('resourceType')}/{resource.get('id')}"


def medication_concept(request: Mapping[str, Any], contained: bool = True) -> Any:
    """``medicationCodeableConcept``, or the code of a contained Medication the reference names."""
    concept = request.get("medicationCodeableConcept")
    if concept is not None:
        return concept
    ref = str((request.get("medicationReference") or {}).get("reference") or "")
    if contained and ref.startswith("#"):
        for res in request.get("contained") or ():
            if res.get("resourceType") == "Medication" and res.get("id") == ref[1:]:
                return res.get("code")
    display = (request.get("medicationReference") or {}).get("display")
    return {"text": display} if display else None


def medication_requests(call: HookCall) -> Iterator[dict[str, Any]]:
    """The MedicationRequests the call is about (selections for order-select, all for order-sign)."""
    orders = list(resources(call.context.get("draftOrders"), "MedicationRequest"))
    if call.hook == "order-select":
        selected = {str(s) for s in call.context.get("selections") or ()}
        orders = [o for o in orders if order_reference(o) in selected]
    yield from orders
