"""The orders a order-select / order-sign call is about (https://cds-hooks.hl7.org/hooks/order-select/,
https://cds-hooks.hl7.org/hooks/order-sign/): order-select acts on the draft orders named in
``context.selections`` (``MedicationRequest/123``), order-sign on every entry of ``draftOrders``.
A service offered on both hooks is declared once with :func:`order_services`.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from typing import Any

from server.cds.model import Handler, HookCall, Service
from server.cds.patient import resources

__all__ = ["ORDER_HOOKS", "medication_concept", "medication_requests", "order_reference", "order_services"]

#: the order hooks, and what their orders are being (the ``{what}`` of a service description)
ORDER_HOOKS = {"order-select": "selected", "order-sign": "signed"}


def order_services(
    name: str,
    ids: Mapping[str, str],
    description: str,
    handler: Handler,
    prefetch: Mapping[str, str],
    required: Sequence[str] = (),
) -> tuple[Service, ...]:
    """One service per order hook in ``ids`` (hook -> service id, in discovery order), same handler.

    Titles read ``{name} (order select)``; ``description`` may say ``{what}`` (selected / signed).
    """
    return tuple(
        Service(
            id=service_id,
            hook=hook,
            title=f"{name} ({hook.replace('-', ' ')})",
            description=description.format(what=ORDER_HOOKS[hook]),
            prefetch=prefetch,
            handler=handler,
            required=tuple(required),
        )
        for hook, service_id in ids.items()
    )


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
