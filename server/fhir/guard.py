"""Authorization and audit at the interactions' single choke points (reads, writes, searches).

Scopes (https://hl7.org/fhir/smart-app-launch/scopes-and-launch-context.html) are enforced where
the data is touched, not per route, so every path to it — REST, transaction and batch entries,
conditional interactions, operations built on :mod:`server.fhir.crud` — is covered by the same
checks of the current :class:`~server.auth.access.Access`:

* :func:`readable` — a read, vread or history entry: ``r`` on the type, and for a patient-level
  client the resource must be in its patient's compartment, else 404 (existence never leaks);
* :func:`writable` — every write through :func:`server.fhir.crud.write_in_tx`: ``c`` when it
  creates (POST, or PUT of a new id), ``u`` when it updates or patches, ``d`` when it deletes;
  for a patient-level client the current version must be visible (else 404) and the new one
  must stay in the compartment (else 403); AuditEvents are never written through the API (405).
  It then records the write's AuditEvent in the same database transaction (:mod:`server.audit`);
* :func:`searchable` — ``s`` on the searched type;
* :func:`job_owner` / :func:`owns_job` — a background job (``$ingest-vcf`` Task) belongs to the
  client that started it: others get 404 when they poll it;
* :func:`research_excluded_patients` — consent for secondary use: research clients never see, in
  population answers, patients who denied research use (http://hl7.org/fhir/R4/consent.html).
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from server import audit, jsonio
from server.auth.access import (
    check_visible,
    compartment_patients,
    current_access,
    in_patient_compartment,
    require,
    visible,
)
from server.errors import Forbidden, MethodNotAllowed
from server.fhir.consent import research_denied
from server.fhir.context import FhirContext
from server.store.base import StoredResource, WriteTx

__all__ = [
    "excluded_for_purpose",
    "history_allowed",
    "job_owner",
    "owns_job",
    "readable",
    "research_excluded_patients",
    "searchable",
    "visible_resources",
    "writable",
    "written",
]

_APPEND_ONLY = frozenset({"AuditEvent"})


def readable(res: StoredResource) -> StoredResource:
    """``res`` when the current client may read it: 403 without ``r`` on its type, 404 outside its compartment."""
    access = require(res.type, "r")
    if access.patient is not None and res.content is not None:
        check_visible(jsonio.loads(res.content), access)
    return res


def searchable(type_: str) -> None:
    require(type_, "s")


def history_allowed(ctx: FhirContext, type_: str | None, id_: str | None) -> None:
    """History: ``r`` on the type (every type: a ``*`` scope for system history); for a patient-level
    client only the history of a resource of its compartment (type and system history would list
    other patients' changes: 403)."""
    access = require(type_ or "*", "r")
    if access.patient is None:
        return
    if type_ is None or id_ is None:
        raise Forbidden("A patient-level client may read the history of single resources only")
    res = ctx.store.read(type_, id_)
    if res is not None and res.content is not None:
        check_visible(jsonio.loads(res.content), access)


def visible_resources(resources: list[StoredResource], permission: str = "s") -> list[StoredResource]:
    """The resources the current client may see (``_include``d ones, system-level results)."""
    access = current_access()
    if access.unrestricted:
        return resources
    out = []
    for res in resources:
        if not access.allows(res.type, permission):
            continue
        if (
            access.patient is not None
            and res.content is not None
            and not visible(jsonio.loads(res.content), permission, access)
        ):
            continue
        out.append(res)
    return out


def writable(
    type_: str, id_: str, current: StoredResource | None, resource: dict[str, Any] | None, method: str
) -> None:
    """Refuse a write the current client may not make (see the module docstring)."""
    if type_ in _APPEND_ONLY:
        raise MethodNotAllowed(f"{type_} resources are append-only: the server writes them, clients cannot")
    live = current is not None and not current.deleted
    letter = "d" if resource is None else ("u" if live else "c")
    access = require(type_, letter)
    if access.patient is None:
        return
    if live and current is not None and current.content is not None:
        check_visible(jsonio.loads(current.content), access)
    if resource is not None and in_patient_compartment(resource, access.patient) is False:
        raise Forbidden(f"A client of Patient/{access.patient} can only write resources of that patient's compartment")


def research_excluded_patients(ctx: FhirContext, patient_ids: Iterable[str] | None = None) -> set[str]:
    """Patient ids (of ``patient_ids``, or all) a population-level answer must leave out for the current client.

    For a client registered with ``--purpose research`` (and the anonymous sandbox, whose purpose
    nobody registered): every patient with an active Consent of scope research whose provision
    denies it (:func:`server.fhir.consent.research_denied`). Direct care (``treatment`` clients,
    the command line, CDS) is not affected: the empty set.
    """
    return excluded_for_purpose(ctx, current_access().purpose, patient_ids)


def excluded_for_purpose(ctx: FhirContext, purpose: str, patient_ids: Iterable[str] | None = None) -> set[str]:
    """:func:`research_excluded_patients` for a purpose recorded earlier (a background job's client)."""
    if purpose == "treatment":
        return set()
    return research_denied(ctx, patient_ids)


#: identifier system of the client that started a background job (``Task.requester.identifier``)
CLIENT_SYSTEM = "urn:bigmed:client"


def job_owner() -> dict[str, Any]:
    """``Task.requester`` naming the current client: the job's owner."""
    client = current_access().client_id
    return {"identifier": {"system": CLIENT_SYSTEM, "value": client}, "display": client}


def owns_job(task: dict[str, Any]) -> bool:
    """May the current client follow the job of ``task``? Its owner may, and unrestricted access
    (the open sandbox, the command line); any other client gets 404, as for export jobs."""
    access = current_access()
    if access.unrestricted:
        return True
    owner = (task.get("requester") or {}).get("identifier") or {}
    return owner.get("system") == CLIENT_SYSTEM and owner.get("value") == access.client_id


def written(ctx: FhirContext, tx: WriteTx, res: StoredResource, method: str, resource: dict[str, Any] | None) -> None:
    """Record the AuditEvent of a write inside its transaction."""
    if not ctx.config.audit:
        return
    access = current_access()
    action = {"POST": "C", "DELETE": "D"}.get(method, "U")
    if action == "U" and res.version == 1:
        action = "C"
    audit.record_write(
        tx,
        audit.AuditRecord(
            agent=access.client_id,
            action=action,
            subtype={"C": "create", "D": "delete"}.get(action, "patch" if method == "PATCH" else "update"),
            patients=compartment_patients(resource) if resource is not None else [],
            entities=[f"{res.type}/{res.id}/_history/{res.version}"],
            address=access.address,
        ),
    )
