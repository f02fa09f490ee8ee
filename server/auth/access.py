"""The authorization context of one request, and the checks every interaction makes against it.

SMART App Launch 2 scopes (https://hl7.org/fhir/smart-app-launch/scopes-and-launch-context.html)
granted by a SMART Backend Services token (https://hl7.org/fhir/smart-app-launch/backend-services.html).

* :class:`Access` — who asks (``client_id``), what the token grants (:class:`~server.auth.scopes.Grant`;
  ``None`` means everything: ``BIGMED_AUTH=open`` and the command line), and for a patient-level
  client the one ``patient`` whose compartment it may see.
* :func:`current_access` — the Access of the running request. It lives in a ``ContextVar`` set by
  the API layer's ``before_request`` hook (``server/api/auth.py``) and reset at teardown, so domain
  code (``server/fhir/…``) can ask for it without importing Flask. Outside a request (CLI, a
  background job started by an authorised request) it is :data:`SYSTEM`.
* :func:`require` — 403 (``Forbidden`` → OperationOutcome) when the grant lacks a permission letter
  (``c r u d s``) on a type; :func:`require_authenticated` — 401 with ``WWW-Authenticate: Bearer``.
* :func:`in_patient_compartment` / :func:`visible` / :func:`check_visible` — patient-level clients:
  a resource of a type in the R4 Patient CompartmentDefinition is visible only when it belongs to
  the client's patient's compartment (by the compartment's reference parameters, extracted from
  the resource itself); otherwise the interaction answers 404, never 403, so existence never
  leaks. Types outside the Patient compartment (Medication, Organization, Practitioner …) hold no
  patient's data and are governed by the scopes alone.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from contextvars import ContextVar, Token
from dataclasses import dataclass
from typing import Any

from server.auth.scopes import Grant
from server.errors import Forbidden, NotFound, Unauthorized
from server.search.compartments import SELF, compartments
from server.search.extract import extract

__all__ = [
    "ANONYMOUS",
    "SYSTEM",
    "Access",
    "check_visible",
    "compartment_patients",
    "current_access",
    "in_patient_compartment",
    "patient_compartment_types",
    "require",
    "require_authenticated",
    "reset_access",
    "set_access",
    "visible",
]

_LETTERS = {"c": "create", "r": "read", "u": "update", "d": "delete", "s": "search"}


@dataclass(frozen=True)
class Access:
    """Who is asking and what they may do. ``grant`` None: unrestricted."""

    client_id: str
    grant: Grant | None = None
    patient: str | None = None
    token_id: str | None = None
    authenticated: bool = True
    address: str | None = None  # the request's source address (audit)
    #: the client's registered purpose: only "treatment" (direct care) sees, in population answers, the
    #: patients who denied research use; "research" and "unspecified" (the anonymous sandbox) do not
    purpose: str = "treatment"

    @property
    def unrestricted(self) -> bool:
        return self.grant is None and self.patient is None

    def allows(self, resource_type: str, permission: str) -> bool:
        """True when every letter of ``permission`` (e.g. ``"r"``, ``"cu"``) is granted on the type."""
        if self.grant is None:
            return True
        return all(self.grant.allows(resource_type, p) for p in permission)

    def allowed_types(self, permission: str, types: Iterable[str]) -> list[str]:
        return [t for t in types if self.allows(t, permission)]

    @property
    def cache_scope(self) -> str:
        """What a cached answer depends on besides the request: client, grant and patient."""
        if self.unrestricted:
            return "unrestricted"
        return f"{self.client_id}|{self.grant}|{self.patient or ''}"


#: BIGMED_AUTH=open: no token, everything allowed, audited as "anonymous". Nobody registered a purpose
#: for it, so research-use denials are honoured (the conservative reading of a Consent).
ANONYMOUS = Access("anonymous", None, None, authenticated=False, purpose="unspecified")
#: the command line and background work started by an authorised request.
SYSTEM = Access("system", None, None)

_current: ContextVar[Access | None] = ContextVar("bigmed_access", default=None)


def set_access(access: Access) -> Token[Access | None]:
    return _current.set(access)


def reset_access(token: Token[Access | None]) -> None:
    _current.reset(token)


def current_access() -> Access:
    """The Access of the running request (:data:`SYSTEM` outside a request)."""
    found = _current.get()
    return SYSTEM if found is None else found


def require_authenticated(message: str = "This endpoint needs a bearer access token") -> None:
    raise Unauthorized(message, headers={"WWW-Authenticate": 'Bearer realm="bigmed", error="invalid_token"'})


def require(resource_type: str, permission: str, access: Access | None = None) -> Access:
    """The current Access, or 403 when it lacks ``permission`` letters on ``resource_type``."""
    acc = access or current_access()
    if not acc.allows(resource_type, permission):
        missing = next(p for p in permission if not acc.allows(resource_type, p))
        raise Forbidden(
            f"The access token does not allow {_LETTERS.get(missing, missing)} on {resource_type} "
            f"(needs a scope like system/{resource_type}.{missing} or system/*.{missing})"
        )
    return acc


def patient_compartment_types() -> Mapping[str, tuple[str, ...]]:
    """Resource type -> the parameters linking it to the Patient compartment."""
    return compartments()["Patient"].members


def in_patient_compartment(resource: Mapping[str, Any], patient_id: str) -> bool | None:
    """True/False: is ``resource`` in Patient/``patient_id``'s compartment; None: its type has no compartment link."""
    rtype = str(resource.get("resourceType", ""))
    params = compartments()["Patient"].params_for(rtype)
    if not params:
        return None
    if SELF in params and resource.get("id") == patient_id:
        return True
    refs = {p for p in params if p != SELF}
    if not refs:
        return False
    rows = extract(resource).reference
    return any(row[0] in refs and row[1] == "Patient" and row[2] == patient_id for row in rows)


def compartment_patients(resource: Mapping[str, Any]) -> list[str]:
    """Ids of the patients whose compartment ``resource`` is in (the Patient itself included)."""
    rtype = str(resource.get("resourceType", ""))
    params = compartments()["Patient"].params_for(rtype)
    found = [str(resource["id"])] if SELF in params and resource.get("id") else []
    refs = {p for p in params if p != SELF}
    if refs:
        found += [row[2] for row in extract(resource).reference if row[0] in refs and row[1] == "Patient"]
    return list(dict.fromkeys(found))


def visible(resource: Mapping[str, Any], permission: str = "r", access: Access | None = None) -> bool:
    """May the current client see ``resource`` (scopes, and the compartment for patient-level clients)?"""
    acc = access or current_access()
    if not acc.allows(str(resource.get("resourceType", "")), permission):
        return False
    if acc.patient is None:
        return True
    return in_patient_compartment(resource, acc.patient) is not False


def check_visible(resource: Mapping[str, Any], access: Access | None = None) -> None:
    """404 when a patient-level client asks for a resource outside its patient's compartment."""
    acc = access or current_access()
    if acc.patient is not None and in_patient_compartment(resource, acc.patient) is False:
        raise NotFound(f"{resource.get('resourceType')}/{resource.get('id')} is not known")
