"""CDS Hooks 2.0 building blocks: a service, the call it answers, and cards.

Spec: https://cds-hooks.hl7.org/2.0/#discovery (service definition), #http-request (the call),
#cds-service-response and #card-attributes (cards: ``uuid``, ``summary`` < 140 characters,
``indicator`` info | warning | critical, ``source``, ``suggestions`` with ``actions``,
``selectionBehavior``, ``overrideReasons``, ``links``).
"""

from __future__ import annotations

import uuid
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # typing only: prefetch imports the FHIR interactions, the model need not
    from server.cds.prefetch import OwnStoreFetcher

__all__ = [
    "OVERRIDE_REASONS",
    "OVERRIDE_SYSTEM",
    "HookCall",
    "Service",
    "card",
    "link",
    "suggestion",
]

#: our override reasons (#overridereason)
OVERRIDE_SYSTEM = "http://bigmed.example/fhir/CodeSystem/cds-override-reason"
OVERRIDE_REASONS: tuple[dict[str, str], ...] = (
    {"system": OVERRIDE_SYSTEM, "code": "benefit-outweighs-risk", "display": "Benefit outweighs the risk"},
    {"system": OVERRIDE_SYSTEM, "code": "already-tolerated", "display": "Patient already tolerates this drug"},
    {"system": OVERRIDE_SYSTEM, "code": "alternative-contraindicated", "display": "Alternatives are contraindicated"},
    {"system": OVERRIDE_SYSTEM, "code": "result-disputed", "display": "Genetic result disputed or outdated"},
)
SUMMARY_LIMIT = 140


@dataclass
class HookCall:
    """What a service handler gets: the hook request, prefetch resolved, and where to link to."""

    service_id: str
    hook: str
    hook_instance: str
    context: Mapping[str, Any]
    prefetch: Mapping[str, Any]  # key -> resource / Bundle dict, or None (no data)
    ui_base: str  # the sandbox UI root, e.g. http://host (patient page: {ui_base}/#/patient/{id})
    notes: list[str] = field(default_factory=list)  # prefetch problems worth telling the user
    own_store: OwnStoreFetcher | None = None  # fhirServer is this server: its store, read as the token allows

    @property
    def patient_id(self) -> str:
        return str(self.context.get("patientId") or "")

    def patient_link(self) -> dict[str, str]:
        return link("Open the patient in the BigMed sandbox", f"{self.ui_base}/#/patient/{self.patient_id}")


Handler = Callable[[HookCall], list[dict[str, Any]]]


@dataclass(frozen=True)
class Service:
    """One CDS service (#response: discovery fields) and its handler."""

    id: str
    hook: str
    title: str
    description: str
    prefetch: Mapping[str, str]
    handler: Handler
    required: tuple[str, ...] = ()  # prefetch keys without which the service cannot answer (412)
    usage: str = ""

    def discovery(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "hook": self.hook,
            "title": self.title,
            "description": self.description,
            "id": self.id,
            "prefetch": dict(self.prefetch),
        }
        if self.usage:
            out["usageRequirements"] = self.usage
        return out


def link(label: str, url: str, type_: str = "absolute") -> dict[str, str]:
    return {"label": label, "url": url, "type": type_}


def suggestion(label: str, actions: Sequence[Mapping[str, Any]], *, recommended: bool = False) -> dict[str, Any]:
    out: dict[str, Any] = {"label": label, "uuid": str(uuid.uuid4()), "actions": [dict(a) for a in actions]}
    if recommended:
        out["isRecommended"] = True
    return out


def card(
    summary: str,
    indicator: str,
    source: Mapping[str, Any],
    *,
    detail: str | None = None,
    suggestions: Sequence[Mapping[str, Any]] = (),
    selection_behavior: str | None = None,
    override: bool = True,
    links: Sequence[Mapping[str, str]] = (),
) -> dict[str, Any]:
    """A card; ``summary`` is cut to fit under 140 characters (the spec's limit)."""
    if indicator not in ("info", "warning", "critical"):
        raise ValueError(f"indicator {indicator!r}")
    if len(summary) >= SUMMARY_LIMIT:
        summary = summary[: SUMMARY_LIMIT - 2].rstrip() + "…"
    out: dict[str, Any] = {"uuid": str(uuid.uuid4()), "summary": summary, "indicator": indicator}
    if detail:
        out["detail"] = detail
    out["source"] = dict(source)
    if suggestions:
        out["suggestions"] = [dict(s) for s in suggestions]
        out["selectionBehavior"] = selection_behavior or "at-most-one"
    if override:
        out["overrideReasons"] = [dict(r) for r in OVERRIDE_REASONS]
    if links:
        out["links"] = [dict(x) for x in links]
    return out
