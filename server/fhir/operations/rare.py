"""Rare-disease operations: ``Patient/{id}/$prioritize-variants`` and ``Patient/{id}/$similar``.

Both read what the server already holds for the Patient (http://hl7.org/fhir/R4/operations.html,
answers are ``Parameters`` resources; GET with query parameters or POST a Parameters body):

* the phenotypic features: HPO-coded Observations and Conditions (``subject`` = the Patient),
  present or excluded (:mod:`server.rare.phenotypes`);
* the variant calls: Genomics Reporting variant, molecular-consequence, diagnostic-implication and
  phase Observations (:mod:`server.rare.variants`), as ``$ingest-vcf`` stores them;
* the sex (``Patient.gender``) for X-linked inheritance.

``$prioritize-variants`` (``count`` default 20, at most 200; ``mother``/``father`` = Patients with
their own calls, ``Patient/id`` or id; ``family=false`` to ignore the parents the record names;
``report=true``) ranks genes with
:func:`server.rare.scoring.prioritize` and answers, per gene (``gene`` parameter, best first):
``rank``, ``symbol``, ``score``, ``phenotypeScore``, ``variantScore``, ``inheritance``,
``explanation`` (one line), one ``variant`` part per call used (Observation reference, label,
zygosity, variant score, origin when parents are given) and one ``disease`` part per best
matching disease (OMIM/ORPHA/DECIPHER coding, phenotype score). Also ``hpoRelease``, the
phenotypes used, obsolete terms that were replaced, and with ``report=true`` a *preliminary*
genomic DiagnosticReport (51969-4, category GE, ``result`` = the candidate variants; returned,
not stored: a person reviews it and POSTs it when accepted).

``$similar`` (``count`` default 10, ``minScore`` default 0.2) answers the most similar other
patients: score = 0.8 x phenotype similarity (symmetric Resnik BMA, :func:`patient_similarity`)
+ 0.2 when both have rare (population AF < 1 % or unknown) damaging (variant score ≥ 0.5) calls
in a common gene, with the shared terms and genes. Patients who denied research use are never
returned to a research client or the anonymous sandbox
(:func:`server.fhir.guard.research_excluded_patients`); a treatment client (direct care) sees
them; the patient's own record is used for the question only.

**Parents from the record** (:func:`record_parents`), used for de novo / inheritance unless the
``mother``/``father`` parameter names that parent, or ``family=false``:

* a **RelatedPerson** of the patient (``RelatedPerson.patient``, ``active`` not false) whose
  ``relationship`` has a v3-RoleCode ``NMTH``/``MTH`` (mother), ``NFTH``/``FTH`` (father) or
  ``NPRN``/``PRN`` (parent: mother or father by the parent's ``gender``), and
* a **FamilyMemberHistory** of the patient (``status`` not entered-in-error) with the same
  relationship codes (``PRN`` resolved by ``sex`` or the parent's gender),

are the parent whose variant calls are those of a **Patient** (the parent as a patient of this
server) found by, in this order: ``Patient.link.other`` referring to the RelatedPerson (FHIR's
way to say a Patient and a RelatedPerson are one person, link type ``seealso``); the
FamilyMemberHistory's ``familymemberhistory-patient-record`` extension (the standard extension
naming the relative's own record); an ``identifier`` (system and value) the Patient shares with
the RelatedPerson / FamilyMemberHistory. A parent found but without such a Patient, or whose
Patient has no variant calls, is not used (a ``note`` says so, the ranking goes on); two
different Patients for one role make that role ambiguous (note, not used). Step-, foster- and
adoptive-parent codes are not biological and are ignored. The parents used are listed in the
answer (``parent``: role, patient, source).

:func:`top_candidates` is the same ranking for other callers (the CDS genomic-findings service);
:func:`rare_inputs` says cheaply (index look-ups, no ontology) whether a patient has what it needs.
:func:`warm_up` loads the ontology in a background thread at app start (``BIGMED_HPO_PRELOAD``:
``on``; ``auto`` = only when the database holds HPO-coded phenotypes; ``off``).

Variant reading is cached per process and patient, keyed by the Observation write generation
(:meth:`Store.generations`): any write of an Observation anywhere invalidates it, so a cached
answer is never stale. The ontology is loaded once per process (:func:`server.rare.hpo.ontology`).
"""

from __future__ import annotations

import logging
import threading
import time
from collections import OrderedDict
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from server import jsonio
from server.errors import BadRequest, Invalid, NotFound
from server.fhir import guard
from server.fhir.context import FhirContext
from server.fhir.resource import instant
from server.rare.hpo import Ontology, data_release, loaded, ontology
from server.rare.phenotypes import HPO_SYSTEMS, PhenotypeError, Phenotypes, read_phenotypes
from server.rare.scoring import (
    Family,
    GeneResult,
    patient_similarity,
    prioritize,
    variant_score,
)
from server.rare.variants import VariantSet, read_variants
from server.search.query import build_sql, parse_search

__all__ = [
    "DEFINITION_BASE",
    "OPERATIONS",
    "Parent",
    "capabilities",
    "hpo_release",
    "prioritize_variants",
    "rare_inputs",
    "record_parents",
    "similar",
    "top_candidates",
    "warm_up",
]

log = logging.getLogger(__name__)
DEFINITION_BASE = "http://bigmed.example/fhir/OperationDefinition/"
OPERATIONS = ("prioritize-variants", "similar")
MAX_COUNT = 200
_DISEASE_SYSTEMS = {
    "OMIM": "https://omim.org",
    "ORPHA": "http://www.orpha.net",
    "DECIPHER": "https://www.deciphergenomics.org",
}
_HPO = HPO_SYSTEMS[0]
_LOINC = "http://loinc.org"
_CACHE_SIZE = 64
_RARE_AF = 0.01
_DAMAGING = 0.5
_ROLE_CODE = "http://terminology.hl7.org/CodeSystem/v3-RoleCode"
#: biological parent relationships (v3-RoleCode) -> role; None: a parent, role by sex
_PARENT_CODES: dict[str, str | None] = {
    "NMTH": "mother",
    "MTH": "mother",
    "NFTH": "father",
    "FTH": "father",
    "NPRN": None,
    "PRN": None,
}
_PATIENT_RECORD = "http://hl7.org/fhir/StructureDefinition/familymemberhistory-patient-record"


# -- reading the record ----------------------------------------------------------------------


def _patient(ctx: FhirContext, value: str, what: str = "Patient") -> tuple[str, dict[str, Any]]:
    id_ = value.strip().rpartition("Patient/")[2] if "/" in value else value.strip()
    if not id_:
        raise BadRequest(f"{what} must name a Patient (Patient/id or id)")
    found = ctx.store.read("Patient", id_)
    if found is None or found.deleted or found.content is None:
        raise NotFound(f"{what} Patient/{id_} is not known")
    return id_, jsonio.loads(found.content)


def _search(
    ctx: FhirContext, type_: str, pairs: list[tuple[str, str]], limit: int | None = None
) -> list[dict[str, Any]]:
    parsed = parse_search(ctx.registry, type_, pairs, strict=True)
    sql, params = build_sql(parsed, limit=limit)
    rids = [int(row[0]) for row in ctx.store.query(sql, params)]
    return [jsonio.loads(r.content) for r in ctx.store.read_many(rids) if r.content is not None]


def _subject_resources(ctx: FhirContext, type_: str, patient_id: str) -> list[dict[str, Any]]:
    return _search(ctx, type_, [("subject", f"Patient/{patient_id}")])


class _VariantCache:
    """Per-process LRU of parsed variant sets, valid while no Observation was written."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.items: OrderedDict[tuple[int, str], tuple[int, VariantSet, list[dict[str, Any]]]] = OrderedDict()

    def get(self, ctx: FhirContext, patient_id: str) -> tuple[VariantSet, list[dict[str, Any]]]:
        """The patient's variant set and their other Observations (phenotypes among them)."""
        generation = ctx.store.generations(["Observation"]).get("Observation", 0)
        key = (id(ctx.store), patient_id)
        with self.lock:
            hit = self.items.get(key)
            if hit is not None and hit[0] == generation:
                self.items.move_to_end(key)
                return hit[1], hit[2]
        observations = _subject_resources(ctx, "Observation", patient_id)
        variants = read_variants(observations)
        others = [o for o in observations if _is_phenotype(o)]
        with self.lock:
            self.items[key] = (generation, variants, others)
            self.items.move_to_end(key)
            while len(self.items) > _CACHE_SIZE:
                self.items.popitem(last=False)
        return variants, others


_CACHE = _VariantCache()


def _is_phenotype(resource: Mapping[str, Any]) -> bool:
    for key in ("code", "valueCodeableConcept"):
        concept = resource.get(key)
        if isinstance(concept, Mapping) and any(
            isinstance(c, Mapping) and c.get("system") in HPO_SYSTEMS for c in concept.get("coding") or []
        ):
            return True
    return False


def _phenotypes(onto: Ontology, resources: Iterable[Mapping[str, Any]]) -> Phenotypes:
    try:
        return read_phenotypes(onto, resources)
    except PhenotypeError as exc:
        raise Invalid(
            f"Phenotype {exc}. Correct or delete that resource (HPO release {onto.release}) and ask again."
        ) from exc


def _record(ctx: FhirContext, onto: Ontology, patient_id: str) -> tuple[VariantSet, Phenotypes]:
    variants, observations = _CACHE.get(ctx, patient_id)
    conditions = [c for c in _subject_resources(ctx, "Condition", patient_id) if _is_phenotype(c)]
    return variants, _phenotypes(onto, [*observations, *conditions])


# -- parameters ------------------------------------------------------------------------------


def _options(operation: str, pairs: Sequence[tuple[str, str]], allowed: Sequence[str]) -> dict[str, str]:
    out: dict[str, str] = {}
    for name, value in pairs:
        if name in ("_format", "_pretty"):
            continue
        if name not in allowed:
            raise BadRequest(f"${operation}: unknown parameter '{name}' (known: {', '.join(allowed)})")
        if name in out:
            raise BadRequest(f"${operation}: parameter '{name}' given twice")
        out[name] = value
    return out


def _int(operation: str, options: Mapping[str, str], name: str, default: int) -> int:
    raw = options.get(name)
    if raw is None or raw == "":
        return default
    if not raw.isdigit() or int(raw) < 1:
        raise BadRequest(f"${operation}: {name} must be a positive integer, not '{raw}'")
    return min(int(raw), MAX_COUNT)


def _float(operation: str, options: Mapping[str, str], name: str, default: float) -> float:
    raw = options.get(name)
    if raw is None or raw == "":
        return default
    try:
        value = float(raw)
    except ValueError:
        value = -1.0
    if not 0.0 <= value <= 1.0:
        raise BadRequest(f"${operation}: {name} must be a number from 0 to 1, not '{raw}'")
    return value


def _flag(operation: str, options: Mapping[str, str], name: str) -> bool:
    raw = (options.get(name) or "false").lower()
    if raw not in ("true", "false"):
        raise BadRequest(f"${operation}: {name} must be true or false, not '{raw}'")
    return raw == "true"


# -- answers ---------------------------------------------------------------------------------


def _decimal(value: float) -> float:
    return round(float(value), 4)


def _disease_coding(disease_id: str, name: str) -> dict[str, Any]:
    prefix, _, code = disease_id.partition(":")
    return {"system": _DISEASE_SYSTEMS.get(prefix, prefix), "code": code, "display": name}


def _term_coding(onto: Ontology, term: int) -> dict[str, Any]:
    return {"system": _HPO, "code": onto.ids[term], "display": onto.names[term]}


def _gene_parameter(rank: int, result: GeneResult) -> dict[str, Any]:
    parts: list[dict[str, Any]] = [
        {"name": "rank", "valueInteger": rank},
        {"name": "symbol", "valueString": result.gene},
        {"name": "score", "valueDecimal": _decimal(result.score)},
        {"name": "phenotypeScore", "valueDecimal": _decimal(result.phenotype_score)},
        {"name": "variantScore", "valueDecimal": _decimal(result.variant_score)},
    ]
    if result.mode:
        parts.append({"name": "inheritance", "valueCode": result.mode})
    parts.append({"name": "explanation", "valueString": result.explanation})
    for call, score, origin in result.calls:
        variant: list[dict[str, Any]] = [
            {"name": "observation", "valueReference": {"reference": f"Observation/{call.id}"}},
            {"name": "label", "valueString": call.label()},
            {"name": "variantScore", "valueDecimal": _decimal(score)},
        ]
        if call.zygosity:
            variant.append({"name": "zygosity", "valueCode": call.zygosity})
        if call.consequences:
            variant.append({"name": "consequence", "valueString": call.consequences[0]})
        if call.clinvar:
            variant.append({"name": "clinicalSignificance", "valueString": call.clinvar})
        if origin:
            variant.append({"name": "origin", "valueCode": origin.replace(" ", "-")})
        parts.append({"name": "variant", "part": variant})
    for disease, pheno in result.diseases:
        parts.append(
            {
                "name": "disease",
                "part": [
                    {"name": "code", "valueCoding": _disease_coding(disease.id, disease.name)},
                    {"name": "phenotypeScore", "valueDecimal": _decimal(pheno)},
                ],
            }
        )
    return {"name": "gene", "part": parts}


def _report(patient_id: str, onto: Ontology, results: Sequence[GeneResult], count: int) -> dict[str, Any]:
    lines = [f"{i}. {r.explanation} (score {r.score:.3f})" for i, r in enumerate(results[:count], 1)]
    conclusion = (
        f"Preliminary, not reviewed: candidate genes ranked by phenotype match (HPO {onto.release}) and "
        "variant evidence. " + (" ".join(lines) if lines else "No candidate gene.")
    )
    references = dict.fromkeys(f"Observation/{c.id}" for r in results[:count] for c, _, _ in r.calls)
    return {
        "resourceType": "DiagnosticReport",
        "status": "preliminary",
        "category": [
            {
                "coding": [
                    {"system": "http://terminology.hl7.org/CodeSystem/v2-0074", "code": "GE", "display": "Genetics"}
                ]
            }
        ],
        "code": {"coding": [{"system": _LOINC, "code": "51969-4", "display": "Genetic analysis report"}]},
        "subject": {"reference": f"Patient/{patient_id}"},
        "issued": instant(time.time()),
        "result": [{"reference": ref} for ref in references],
        "conclusion": conclusion,
    }


# -- parents ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class Parent:
    """A parent of the patient with their own record: role, Patient id, and where it was found."""

    role: str  #: 'mother' | 'father'
    patient_id: str
    source: str  #: 'RelatedPerson/x', 'FamilyMemberHistory/y' or 'parameter'


def _escape(value: str) -> str:
    """A token search value with FHIR's search escapes (``\\``, ``,``, ``|``, ``$``)."""
    return value.replace("\\", "\\\\").replace(",", "\\,").replace("|", "\\|").replace("$", "\\$")


def _parent_codes(concepts: Any) -> list[str | None]:
    if isinstance(concepts, Mapping):
        concepts = [concepts]
    found: list[str | None] = []
    for concept in concepts or []:
        if not isinstance(concept, Mapping):
            continue
        for coding in concept.get("coding") or []:
            if (
                isinstance(coding, Mapping)
                and coding.get("system") in (_ROLE_CODE, None)
                and coding.get("code") in _PARENT_CODES
            ):
                found.append(_PARENT_CODES[str(coding["code"])])
    return found


def _by_identifier(ctx: FhirContext, resource: Mapping[str, Any]) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []
    for ident in resource.get("identifier") or []:
        if isinstance(ident, Mapping) and ident.get("system") and ident.get("value"):
            value = f"{_escape(str(ident['system']))}|{_escape(str(ident['value']))}"
            out += _search(ctx, "Patient", [("identifier", value)], limit=5)
    return out


def record_parents(ctx: FhirContext, patient_id: str) -> tuple[list[Parent], list[str]]:
    """The patient's parents the record names, with their own Patient (module docstring), and notes."""
    found: dict[str, dict[str, str]] = {"mother": {}, "father": {}}  # role -> parent Patient id -> source
    notes: list[str] = []
    sources: list[tuple[str, dict[str, Any], list[dict[str, Any]], str | None]] = []
    for related in _search(ctx, "RelatedPerson", [("patient", f"Patient/{patient_id}")]):
        roles = _parent_codes(related.get("relationship"))
        if not roles or related.get("active") is False:
            continue
        reference = f"RelatedPerson/{related.get('id')}"
        linked = _search(ctx, "Patient", [("link", reference)], limit=5) + _by_identifier(ctx, related)
        sources.append((reference, related, linked, roles[0] or related.get("gender")))
    for history in _search(ctx, "FamilyMemberHistory", [("patient", f"Patient/{patient_id}")]):
        roles = _parent_codes(history.get("relationship"))
        if not roles or history.get("status") == "entered-in-error":
            continue
        reference = f"FamilyMemberHistory/{history.get('id')}"
        linked = []
        for ext in history.get("extension") or []:
            ref = ((ext or {}).get("valueReference") or {}).get("reference") if isinstance(ext, Mapping) else None
            if ext.get("url") == _PATIENT_RECORD and isinstance(ref, str) and "Patient/" in ref:
                record = ctx.store.read("Patient", ref.rpartition("Patient/")[2])
                if record is not None and not record.deleted and record.content is not None:
                    linked.append(jsonio.loads(record.content))
        linked += _by_identifier(ctx, history)
        sex = next((c for c in _codes_of(history.get("sex")) if c in ("male", "female")), None)
        sources.append((reference, history, linked, roles[0] or sex))
    for reference, _resource, linked, hint in sources:
        patients = {str(p.get("id")): p for p in linked if p.get("id") and str(p.get("id")) != patient_id}
        if not patients:
            notes.append(f"{reference} names a parent without a Patient record here: not used")
            continue
        for parent_id, parent in patients.items():
            role = hint if hint in ("mother", "father") else None
            if role is None:
                role = {"female": "mother", "male": "father"}.get(str(parent.get("gender") or hint or ""))
            if role is None:
                notes.append(f"{reference}: parent Patient/{parent_id} of unknown sex: not used")
                continue
            found[role].setdefault(parent_id, reference)
    out: list[Parent] = []
    for role, named in found.items():
        if len(named) > 1:
            listed = ", ".join(f"Patient/{p} ({src})" for p, src in sorted(named.items()))
            notes.append(f"the record names more than one {role}: {listed}; none used")
        elif named:
            ((only, source),) = named.items()
            out.append(Parent(role, only, source))
    return out, notes


def _codes_of(concept: Any) -> list[str]:
    if not isinstance(concept, Mapping):
        return []
    return [str(c.get("code")) for c in concept.get("coding") or [] if isinstance(c, Mapping) and c.get("code")]


def _family(
    ctx: FhirContext, patient_id: str, options: Mapping[str, str], from_record: bool
) -> tuple[Family | None, list[Parent], list[str]]:
    """The parents' calls: ``mother``/``father`` parameters first, then the record's parents."""
    parents: dict[str, Parent] = {}
    notes: list[str] = []
    for role in ("mother", "father"):
        value = options.get(role)
        if value:
            parent_id, _ = _patient(ctx, value, role)
            parents[role] = Parent(role, parent_id, "parameter")
    if from_record and len(parents) < 2:
        found, notes = record_parents(ctx, patient_id)
        for parent in found:
            parents.setdefault(parent.role, parent)
    if not parents:
        return None, [], notes
    family = Family()
    used: list[Parent] = []
    for role, parent in parents.items():
        calls, _ = _CACHE.get(ctx, parent.patient_id)
        if not calls.calls:
            if parent.source == "parameter":
                raise BadRequest(
                    f"$prioritize-variants: {role} Patient/{parent.patient_id} has no variant calls to compare with"
                )
            notes.append(f"{role} Patient/{parent.patient_id} ({parent.source}) has no variant calls: not used")
            continue
        setattr(family, role, calls.keys)
        used.append(parent)
    return (family if used else None), used, notes


def _rank(ctx: FhirContext, patient_id: str, count: int, family: Family | None) -> dict[str, Any]:
    onto = ontology()
    _, patient = _patient(ctx, patient_id)
    variants, phenotypes = _record(ctx, onto, patient_id)
    sex = str(patient.get("gender") or "unknown")
    results = prioritize(onto, phenotypes.profile(), variants.calls, sex, variants.phases, family, count=count)
    return {"onto": onto, "variants": variants, "phenotypes": phenotypes, "results": results, "sex": sex}


def prioritize_variants(ctx: FhirContext, patient_id: str, pairs: Sequence[tuple[str, str]]) -> dict[str, Any]:
    """``Patient/{id}/$prioritize-variants``: a Parameters resource with the ranked genes."""
    options = _options("prioritize-variants", pairs, ("count", "mother", "father", "family", "report"))
    count = _int("prioritize-variants", options, "count", 20)
    want_report = _flag("prioritize-variants", options, "report")
    from_record = _flag("prioritize-variants", {"family": options.get("family") or "true"}, "family")
    _patient(ctx, patient_id)
    family, parents, family_notes = _family(ctx, patient_id, options, from_record)
    ranked = _rank(ctx, patient_id, count, family)
    onto: Ontology = ranked["onto"]
    phenotypes: Phenotypes = ranked["phenotypes"]
    variants: VariantSet = ranked["variants"]
    results: list[GeneResult] = ranked["results"]
    out: list[dict[str, Any]] = [
        {"name": "hpoRelease", "valueString": onto.release},
        {"name": "patient", "valueReference": {"reference": f"Patient/{patient_id}"}},
        {"name": "variantCount", "valueInteger": len(variants.calls)},
    ]
    out.extend({"name": "phenotype", "valueCoding": _term_coding(onto, t)} for t in phenotypes.present)
    out.extend({"name": "excludedPhenotype", "valueCoding": _term_coding(onto, t)} for t in phenotypes.excluded)
    for reference, old, new in phenotypes.replaced:
        out.append(
            {
                "name": "replacedTerm",
                "part": [
                    {"name": "source", "valueReference": {"reference": reference}},
                    {"name": "obsolete", "valueCode": old},
                    {"name": "replacement", "valueCoding": _term_coding(onto, onto.index[new])},
                ],
            }
        )
    for parent in parents:
        source = (
            {"valueString": "parameter"}
            if parent.source == "parameter"
            else {"valueReference": {"reference": parent.source}}
        )
        out.append(
            {
                "name": "parent",
                "part": [
                    {"name": "role", "valueCode": parent.role},
                    {"name": "patient", "valueReference": {"reference": f"Patient/{parent.patient_id}"}},
                    {"name": "source", **source},
                ],
            }
        )
    notes = list(family_notes)
    if not phenotypes.present:
        notes.append("The patient has no HPO phenotype: genes are ranked by variant evidence only.")
    if not variants.calls:
        notes.append("The patient has no variant calls (ingest a VCF with $ingest-vcf).")
    out.extend({"name": "note", "valueString": n} for n in notes)
    out.extend(_gene_parameter(i, r) for i, r in enumerate(results, 1))
    if want_report:
        out.append({"name": "report", "resource": _report(patient_id, onto, results, min(count, 10))})
    return {"resourceType": "Parameters", "parameter": out}


def top_candidates(ctx: FhirContext, patient_id: str, n: int = 5, *, family: bool = True) -> list[dict[str, Any]]:
    """The ``n`` best candidate genes of a patient as plain dicts (for the CDS genomic-findings service).

    Empty when the patient has no HPO phenotype or no variant call. ``family``: use the parents
    the record names (:func:`record_parents`). Raises the operation's typed errors (NotFound for
    an unknown patient, Invalid for an HPO code the ontology rejects).
    """
    known, _, _ = _family(ctx, patient_id, {}, family) if family else (None, [], [])
    ranked = _rank(ctx, patient_id, n, known)
    if not ranked["phenotypes"].present or not ranked["variants"].calls:
        return []
    return [
        {
            "gene": r.gene,
            "score": _decimal(r.score),
            "phenotypeScore": _decimal(r.phenotype_score),
            "variantScore": _decimal(r.variant_score),
            "inheritance": r.mode,
            "explanation": r.explanation,
            "diseases": [{"id": d.id, "name": d.name} for d, _ in r.diseases],
            "variants": [f"Observation/{c.id}" for c, _, _ in r.calls],
            "hpoRelease": ranked["onto"].release,
        }
        for r in ranked["results"]
        if r.score > 0
    ]


def _hpo_pairs(name: str, patient_id: str | None) -> list[tuple[str, str]]:
    pairs = [(name, ",".join(f"{system}|" for system in HPO_SYSTEMS))]
    return pairs + ([("subject", f"Patient/{patient_id}")] if patient_id else [])


def _exists(ctx: FhirContext, type_: str, pairs: list[tuple[str, str]]) -> bool:
    parsed = parse_search(ctx.registry, type_, pairs, strict=True)
    sql, params = build_sql(parsed, limit=1)
    return bool(list(ctx.store.query(sql, params)))


def _has_phenotypes(ctx: FhirContext, patient_id: str | None = None) -> bool:
    return (
        _exists(ctx, "Observation", _hpo_pairs("code", patient_id))
        or _exists(ctx, "Condition", _hpo_pairs("code", patient_id))
        or _exists(ctx, "Observation", _hpo_pairs("value-concept", patient_id))
    )


def rare_inputs(ctx: FhirContext, patient_id: str) -> tuple[bool, bool]:
    """(has HPO-coded phenotype records, has variant Observations): a few indexed look-ups."""
    variants = _exists(ctx, "Observation", [("subject", f"Patient/{patient_id}"), ("code", f"{_LOINC}|69548-6")])
    return _has_phenotypes(ctx, patient_id), variants


def warm_up(ctx: FhirContext) -> threading.Thread | None:
    """Load the ontology in a background thread as ``BIGMED_HPO_PRELOAD`` says (never fails the caller)."""
    mode = ctx.config.hpo_preload
    if mode == "off" or loaded():
        return None

    def run() -> None:
        try:
            if mode == "auto" and not _has_phenotypes(ctx):
                return
            started = time.monotonic()
            onto = ontology()
            log.info("HPO %s loaded in %.1f s (BIGMED_HPO_PRELOAD=%s)", onto.release, time.monotonic() - started, mode)
        except Exception as exc:  # noqa: BLE001  # a warm-up must never take the app down: the first request loads it
            log.warning("HPO preload skipped: %s", exc)

    thread = threading.Thread(target=run, name="hpo-preload", daemon=True)
    thread.start()
    return thread


# -- similar patients ------------------------------------------------------------------------


def _rare_damaging_genes(variants: VariantSet) -> set[str]:
    return {
        c.gene
        for c in variants.calls
        if c.gene and (c.population_af is None or c.population_af < _RARE_AF) and variant_score(c) >= _DAMAGING
    }


def _phenotype_subjects(ctx: FhirContext) -> dict[str, list[dict[str, Any]]]:
    """Every Observation/Condition coded with HPO, grouped by the Patient id of its subject."""
    grouped: dict[str, list[dict[str, Any]]] = {}
    for type_ in ("Observation", "Condition"):
        for system in HPO_SYSTEMS:
            parsed = parse_search(ctx.registry, type_, [("code", f"{system}|")], strict=True)
            sql, params = build_sql(parsed)
            rids = [int(row[0]) for row in ctx.store.query(sql, params)]
            for res in ctx.store.read_many(rids):
                if res.content is None:
                    continue
                doc = jsonio.loads(res.content)
                reference = (doc.get("subject") or {}).get("reference")
                if isinstance(reference, str) and reference.startswith("Patient/"):
                    grouped.setdefault(reference.partition("/")[2], []).append(doc)
    return grouped


def similar(ctx: FhirContext, patient_id: str, pairs: Sequence[tuple[str, str]]) -> dict[str, Any]:
    """``Patient/{id}/$similar``: the most similar other patients who did not deny research use."""
    options = _options("similar", pairs, ("count", "minScore"))
    count = _int("similar", options, "count", 10)
    min_score = _float("similar", options, "minScore", 0.2)
    onto = ontology()
    _patient(ctx, patient_id)
    variants, phenotypes = _record(ctx, onto, patient_id)
    if not phenotypes.present:
        raise BadRequest(f"$similar: Patient/{patient_id} has no HPO phenotype to compare")
    own_genes = _rare_damaging_genes(variants)
    candidates = _phenotype_subjects(ctx)
    candidates.pop(patient_id, None)
    denied = guard.research_excluded_patients(ctx, candidates)  # the client's purpose (issue 9)
    scored: list[tuple[float, float, str, list[int], list[str]]] = []
    for other, resources in candidates.items():
        if other in denied:
            continue
        try:
            their = read_phenotypes(onto, resources)
        except PhenotypeError:
            continue  # another patient's bad code must not break this patient's question
        if not their.present:
            continue
        pheno, shared_terms = patient_similarity(onto, phenotypes.present, their.present)
        shared_genes: list[str] = []
        if own_genes and pheno * 0.8 + 0.2 >= min_score:
            other_variants, _ = _CACHE.get(ctx, other)
            shared_genes = sorted(own_genes & _rare_damaging_genes(other_variants))
        score = 0.8 * pheno + (0.2 if shared_genes else 0.0)
        if score >= min_score:
            scored.append((score, pheno, other, shared_terms, shared_genes))
    scored.sort(key=lambda s: (-s[0], s[2]))
    out: list[dict[str, Any]] = [{"name": "hpoRelease", "valueString": onto.release}]
    for score, pheno, other, shared_terms, shared_genes in scored[:count]:
        terms = [onto.names[t] for t in shared_terms[:5]]
        explanation = f"phenotype similarity {pheno:.2f}"
        if terms:
            explanation += f"; shares {', '.join(terms)}"
        if shared_genes:
            explanation += f"; rare damaging variants in {', '.join(shared_genes)} in both"
        parts: list[dict[str, Any]] = [
            {"name": "patient", "valueReference": {"reference": f"Patient/{other}"}},
            {"name": "score", "valueDecimal": _decimal(score)},
            {"name": "phenotypeScore", "valueDecimal": _decimal(pheno)},
            *({"name": "sharedTerm", "valueCoding": _term_coding(onto, t)} for t in shared_terms),
            *({"name": "sharedGene", "valueString": g} for g in shared_genes),
            {"name": "explanation", "valueString": explanation},
        ]
        out.append({"name": "match", "part": parts})
    return {"resourceType": "Parameters", "parameter": out}


def run(ctx: FhirContext, name: str, patient_id: str, pairs: Sequence[tuple[str, str]]) -> dict[str, Any]:
    """Run ``$name`` on ``Patient/patient_id`` with (name, value) parameter pairs."""
    if name == "prioritize-variants":
        return prioritize_variants(ctx, patient_id, pairs)
    if name == "similar":
        return similar(ctx, patient_id, pairs)
    raise NotFound(f"No operation ${name} on Patient (known: {', '.join('$' + n for n in OPERATIONS)})")


def capabilities() -> list[tuple[str, str, str]]:
    """(resource type, operation name, OperationDefinition canonical) for the CapabilityStatement."""
    return [("Patient", name, DEFINITION_BASE + name) for name in OPERATIONS]


def hpo_release() -> str:
    """The HPO release the operations use (read from the data file's header; no full load)."""
    return data_release()
