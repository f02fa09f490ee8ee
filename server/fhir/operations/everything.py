"""``Patient/$everything`` and the Patient compartment as a set of rows (patient-operation-everything).

Implements http://hl7.org/fhir/R4/patient-operation-everything.html at instance level
(``GET|POST [base]/Patient/{id}/$everything``) and type level (``[base]/Patient/$everything``:
every patient). What is returned:

- every current resource in the Patient compartment of the patient(s), as the R4
  CompartmentDefinition defines it (:mod:`server.search.compartments`: the member types and the
  reference parameters that put them there; the Patient itself through ``{def}``);
- with mode ``include``, the Practitioners, PractitionerRoles, Organizations, Locations,
  Medications and Devices those resources reference (:data:`REFERENCED`), followed one level on
  (a PractitionerRole's Organization, a Location's managing Organization): the search layer's
  ``_include:iterate`` machinery, per page.

Parameters: ``start`` / ``end`` restrict to care dates: a resource whose *care date*
(:func:`care_date_param`: the R4 clinical ``date`` parameter of the type, or the type's own
date for Condition, MedicationRequest, … in :data:`CARE_DATE`) overlaps ``[start, end]`` is in,
one that has a care date outside is out, and one without any care date (the Patient,
AllergyIntolerance without dates, genomic variants …) is always in, as the operation's
definition leaves those to the server. ``_since`` keeps resources last updated at or after the
instant; ``_type`` the listed types; ``_count`` is the page size. The answer is a ``searchset``
Bundle paged like any search (keyset ``next`` links carrying every parameter,
:func:`server.fhir.search.run_parsed`). Unknown parameters are a 400 (an ignored filter would
return more than asked). Authorisation (:mod:`server.auth.access`): only the types the token may
read and search are returned (referenced ones: read); a patient-level token gets its own patient
(type level included) and a 404 for any other.

:class:`Patients` and :func:`membership_clause` (which patients' compartments, as SQL on the
search index) are shared with Bulk Data ``$export`` (:mod:`server.fhir.operations.export`).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from server.auth.access import current_access
from server.errors import BadRequest, Forbidden, NotFound
from server.fhir import crud
from server.fhir.context import FhirContext
from server.fhir.resource import check_id
from server.fhir.search import run_parsed
from server.search.compartments import Compartment, compartments
from server.search.query import Clause, IncludeSpec, ParsedSearch, compartments_clause, date_range

__all__ = [
    "CARE_DATE",
    "PARAMETERS",
    "REFERENCED",
    "Patients",
    "capabilities",
    "care_date_param",
    "everything",
    "member_types",
    "membership_clause",
    "patient_compartment",
]

#: resource types outside the compartment returned when a member references them
REFERENCED = ("Practitioner", "PractitionerRole", "Organization", "Location", "Medication", "Device")
#: the care date of types whose R4 ``date`` parameter is missing or means something else
CARE_DATE = {
    "Condition": "onset-date",
    "MedicationRequest": "authoredon",
    "MedicationAdministration": "effective-time",
    "MedicationDispense": "whenhandedover",
    "MedicationStatement": "effective",
    "Claim": "created",
    "ClaimResponse": "created",
    "ExplanationOfBenefit": "created",
    "ServiceRequest": "authored",
    "DeviceRequest": "authored-on",
    "Specimen": "collected",
    "ImagingStudy": "started",
    "Goal": "start-date",
    "Media": "created",
    "Account": "period",
    "Communication": "sent",
    "CommunicationRequest": "authored",
    "DocumentManifest": "created",
    "QuestionnaireResponse": "authored",
    "NutritionOrder": "datetime",
    "VisionPrescription": "datewritten",
    "Provenance": "recorded",
    "DetectedIssue": "identified",
    "RequestGroup": "authored",
    "ChargeItem": "occurrence",
    "Basic": "created",
}
#: the non-date types of the compartment never have a care date
_NO_CARE_DATE = frozenset({"Patient", "Person", "RelatedPerson"})
#: the operation's parameters (plus ``_cursor``, the server's paging token, and format switches)
PARAMETERS = ("start", "end", "_since", "_type", "_count")
_PASSED = ("_cursor", "_format", "_pretty")


def patient_compartment() -> Compartment:
    return compartments()["Patient"]


def member_types(ctx: FhirContext, wanted: Sequence[str] | None = None) -> list[str]:
    """The Patient compartment's member types this server knows, restricted to ``wanted`` (``_type``)."""
    comp = patient_compartment()
    members = sorted(t for t in ctx.registry.resource_types() if comp.params_for(t))
    if wanted is None:
        return members
    unknown = [t for t in wanted if t not in ctx.registry.resource_types()]
    if unknown:
        raise BadRequest(f"_type: unknown resource type{'s' if len(unknown) > 1 else ''} {', '.join(unknown)}")
    outside = [t for t in wanted if t not in members]
    if outside:
        raise BadRequest(f"_type: {', '.join(outside)} not in the Patient compartment")
    return [t for t in members if t in wanted]


@dataclass(frozen=True)
class Patients:
    """Whose compartments: ``sql`` selects patient ids (one id, a Group's members), None = every patient."""

    sql: str | None
    params: tuple[Any, ...] = ()

    @classmethod
    def one(cls, patient_id: str) -> Patients:
        return cls("?", (patient_id,))

    @classmethod
    def members_of(cls, group_rid: int) -> Patients:
        """The Patients a Group lists (``Group.member.entity``, indexed as its ``member`` parameter)."""
        return cls(
            "SELECT g.target_id FROM idx_reference g WHERE g.rid = ? AND g.param = ? AND g.target_type = ?",
            (group_rid, "member", "Patient"),
        )


def membership_clause(res_type: str, patients: Patients) -> Clause:
    """Resources of ``res_type`` (alias ``r``) in the Patient compartment of ``patients``."""
    owners = None if patients.sql is None else f"IN ({patients.sql})"
    return compartments_clause(patient_compartment(), res_type, owners, patients.params)


def care_date_param(ctx: FhirContext, res_type: str) -> str | None:
    """The date search parameter that gives a resource of ``res_type`` its care date (None: it has none)."""
    if res_type in _NO_CARE_DATE:
        return None
    code = CARE_DATE.get(res_type, "date")
    sp = ctx.registry.get(res_type, code)
    return code if sp is not None and sp.type == "date" else None


def _date_clause(ctx: FhirContext, res_type: str, low: float | None, high: float | None) -> Clause | None:
    code = care_date_param(ctx, res_type)
    if code is None or (low is None and high is None):
        return None
    cond = ["d.param = ?", "d.res_type = ?"]
    args: list[Any] = [code, res_type]
    if low is not None:
        cond.append("d.high > ?")
        args.append(low)
    if high is not None:
        cond.append("d.low < ?")
        args.append(high)
    sql = (
        f"(r.rid IN (SELECT d.rid FROM idx_date d WHERE {' AND '.join(cond)}) "
        "OR r.rid NOT IN (SELECT e.rid FROM idx_date e WHERE e.param = ? AND e.res_type = ?))"
    )
    return Clause(sql, [*args, code, res_type])


def _bound(name: str, value: str, upper: bool) -> float:
    try:
        low, high = date_range(value)
    except ValueError as exc:
        raise BadRequest(f"{name}: {exc}") from exc
    return high if upper else low


def everything(
    ctx: FhirContext, base: str, patient_id: str | None, params: Sequence[tuple[str, str]]
) -> dict[str, Any]:
    """``Patient/{patient_id}/$everything`` (None: type level, every patient) as a searchset Bundle page."""
    values: dict[str, list[str]] = {}
    for key, raw in params:
        if key not in PARAMETERS and key not in _PASSED:
            raise BadRequest(f"$everything: unknown parameter '{key}' (known: {', '.join(PARAMETERS)})")
        values.setdefault(key, []).append(raw)
    access = current_access()
    if access.patient is not None:  # a patient-level token sees its own patient's record only
        if patient_id not in (None, access.patient):
            raise NotFound(f"Patient/{patient_id} is not known")
        patient_id = access.patient
    if patient_id is not None:
        check_id(patient_id)
        crud.existing(ctx, "Patient", patient_id)
    wanted = [t.strip() for raw in values.get("_type", []) for t in raw.split(",") if t.strip()] or None
    types = access.allowed_types("rs", member_types(ctx, wanted))
    if not types:
        raise Forbidden("The access token allows reading no resource type of the Patient compartment")
    low = _bound("start", values["start"][-1], False) if values.get("start") else None
    high = _bound("end", values["end"][-1], True) if values.get("end") else None
    patients = Patients(None) if patient_id is None else Patients.one(patient_id)
    per_type: list[str] = []
    args: list[Any] = []
    for t in types:
        parts = [membership_clause(t, patients)]
        dated = _date_clause(ctx, t, low, high)
        if dated is not None:
            parts.append(dated)
        per_type.append("(r.res_type = ? AND " + " AND ".join(p.sql for p in parts) + ")")
        args += [t, *(a for p in parts for a in p.params)]
    clauses = [Clause("(" + " OR ".join(per_type) + ")", args)]
    if values.get("_since"):
        clauses.append(Clause("r.ts >= ?", [_bound("_since", values["_since"][-1], False)]))
    control: dict[str, list[str]] = {k: values[k] for k in ("_count", "_cursor") if k in values}
    referenced = access.allowed_types("r", [t for t in REFERENCED if t in ctx.registry.resource_types()])
    includes = [IncludeSpec(None, None, t, True, False) for t in referenced]
    parsed = ParsedSearch("", types=tuple(types), clauses=clauses, control=control, includes=includes)
    path = f"Patient/{patient_id}/$everything" if patient_id is not None else "Patient/$everything"
    return run_parsed(ctx, base, path, parsed, params)


def capabilities() -> list[tuple[str, str, str]]:
    """(resource type, operation name, OperationDefinition canonical) for the CapabilityStatement."""
    return [("Patient", "everything", "http://hl7.org/fhir/OperationDefinition/Patient-everything")]
