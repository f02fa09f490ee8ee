"""The rare-disease candidate-gene card of ``genomic-findings`` (patient-view; GitHub issues 7 and 10).

CDS Hooks 2.0 card (https://cds-hooks.hl7.org/2.0/#card-attributes) for a patient with HPO
phenotypes and variant calls but no diagnosis: an ``info`` card naming the top candidate genes of
:func:`server.fhir.operations.rare.top_candidates` (phenotype-driven prioritisation, the
``Patient/$prioritize-variants`` ranking, parents from the record included), with links to the
full result (that operation's URL) and to the patient's sandbox UI page (``{base}/#/patient/{id}``).

**When.** The ranking reads this server's own record, so the card comes only when ``fhirServer``
is this server (:attr:`HookCall.own_store`); with ``BIGMED_AUTH=smart`` only when the
``fhirAuthorization`` token may read the patient's Patient, Observations and Conditions (a
patient-level token only for its own patient, and then without the parents' records). The
patient needs HPO-coded phenotypes and variant Observations (:func:`rare.rare_inputs`: indexed
look-ups, no ontology) and **no diagnosis**, which here means both:

1. no *diagnosis Condition* in the ``conditions`` prefetch: a Condition coded in a Mendelian
   disease terminology — OMIM, Orphanet (ORDO), MONDO, DECIPHER (:data:`DIAGNOSIS_SYSTEMS`) —
   whose ``verificationStatus`` is ``confirmed`` or absent. Provisional, differential,
   unconfirmed, refuted and entered-in-error ones do not count; HPO-coded Conditions are
   phenotypes; SNOMED CT / ICD-10 problems are not counted (they name the clinical problem that
   brought the patient, not a genetic diagnosis one can tie to a gene);
2. the best-ranked gene does not rest on a variant already reported pathogenic / likely
   pathogenic (germline DiagnosticImplication in the ``implications`` prefetch): that finding
   has its own warning card, and the record then holds its likely explanation.

**Latency.** EHRs give a CDS service a few seconds. The ranking of a patient costs ~30 ms when
its variant calls are cached, ~2-3 s on the first call for an exome (reading every variant
Observation), plus 2-3 s once per process for the HPO ontology (preloaded at app start when the
database holds phenotypes, ``BIGMED_HPO_PRELOAD``). So the ranking runs in one background worker
thread per process and the service waits for it at most ``BIGMED_CDS_RARE_BUDGET_MS`` (1.5 s).
Not ready by then: an ``info`` card says the ranking is running and links to the full result;
the job goes on and its answer is kept (keyed by the store's identity and the write generations
of Observation, Condition, Patient, RelatedPerson and FamilyMemberHistory, so never stale), so
the next view of the patient shows the genes at once. A ranking that fails on the data (an HPO
code the ontology rejects) gives an ``info`` card with the reason; any other failure is logged
and gives no card — the optional card never breaks the hook call.
"""

from __future__ import annotations

import logging
import threading
from collections import OrderedDict
from collections.abc import Mapping, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from concurrent.futures import TimeoutError as FutureTimeout
from dataclasses import dataclass, field
from typing import Any

from server.auth.access import Access
from server.cds.model import HookCall, card, link
from server.cds.patient import Variant, resources
from server.errors import FhirError
from server.fhir.context import FhirContext
from server.fhir.operations import rare
from server.store.base import STORE_ID_KEY

__all__ = ["DIAGNOSIS_SYSTEMS", "PREFETCH", "TOP", "cards", "diagnosis"]

log = logging.getLogger(__name__)
TOP = 5  #: genes ranked for the card
_IN_SUMMARY = 3
PREFETCH = {"conditions": "Condition?patient={{context.patientId}}&_count=500"}
#: Mendelian disease terminologies whose codes make a Condition a diagnosis (lower case, no trailing /)
DIAGNOSIS_SYSTEMS = frozenset(
    {
        "https://omim.org",
        "http://omim.org",
        "https://www.omim.org",
        "http://www.omim.org",
        "urn:oid:2.16.840.1.113883.6.174",  # OMIM
        "http://www.orpha.net",
        "https://www.orpha.net",
        "http://www.orpha.net/ordo",
        "http://purl.obolibrary.org/obo/mondo.owl",
        "http://purl.obolibrary.org/obo/mondo",
        "https://www.deciphergenomics.org",
    }
)
_NOT_A_DIAGNOSIS = {"provisional", "differential", "unconfirmed", "refuted", "entered-in-error"}
_GENERATION_TYPES = ("Observation", "Condition", "Patient", "RelatedPerson", "FamilyMemberHistory")
_KEPT = 256
SOURCE = {
    "label": "BigMed phenotype-driven variant prioritisation (Human Phenotype Ontology)",
    "url": "https://hpo.jax.org/",
}


def _codes(concept: Any) -> list[tuple[str, str, str]]:
    if not isinstance(concept, Mapping):
        return []
    return [
        (str(c.get("system") or ""), str(c.get("code") or ""), str(c.get("display") or ""))
        for c in concept.get("coding") or ()
        if isinstance(c, Mapping)
    ]


def diagnosis(conditions: Any) -> str | None:
    """The first diagnosis Condition of a prefetch value (module docstring, rule 1): its label, or None."""
    for condition in resources(conditions, "Condition"):
        verification = {code for _, code, _ in _codes(condition.get("verificationStatus"))}
        if verification & _NOT_A_DIAGNOSIS:
            continue
        for system, code, display in _codes(condition.get("code")):
            if system.lower().rstrip("/") in DIAGNOSIS_SYSTEMS:
                return f"Condition/{condition.get('id')} {display or code}".strip()
    return None


# -- the ranking jobs ------------------------------------------------------------------------


@dataclass(frozen=True)
class _Outcome:
    state: str  #: 'done', 'pending' or 'failed'
    genes: list[dict[str, Any]] = field(default_factory=list)
    message: str = ""


class _Rankings:
    """One worker thread per process ranks; answers are kept per (store, patient, family, generations)."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.jobs: OrderedDict[tuple[Any, ...], Future[list[dict[str, Any]]]] = OrderedDict()
        self.executor: ThreadPoolExecutor | None = None

    def get(self, ctx: FhirContext, patient_id: str, family: bool, budget: float) -> _Outcome:
        gens = ctx.store.generations([*_GENERATION_TYPES, STORE_ID_KEY])
        key = (gens.get(STORE_ID_KEY, 0), patient_id, family, *(gens.get(t, 0) for t in _GENERATION_TYPES))
        with self.lock:
            future = self.jobs.get(key)
            if future is None:
                if self.executor is None:
                    self.executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="cds-rare")
                future = self.executor.submit(rare.top_candidates, ctx, patient_id, TOP, family=family)
                self.jobs[key] = future
                while len(self.jobs) > _KEPT:
                    self.jobs.popitem(last=False)
            else:
                self.jobs.move_to_end(key)
        try:
            return _Outcome("done", future.result(timeout=budget))
        except FutureTimeout:
            return _Outcome("pending")
        except FhirError as err:  # the data (kept: the same data fails the same way)
            return _Outcome("failed", message=err.message)
        except Exception:  # anything else: logged, forgotten (retried next time), no card
            log.exception("cds genomic-findings: ranking Patient/%s failed", patient_id)
            with self.lock:
                if self.jobs.get(key) is future:
                    del self.jobs[key]
            return _Outcome("failed")


_RANKINGS = _Rankings()


def _permitted(access: Access | None, patient_id: str) -> tuple[bool, bool]:
    """(may rank this patient, may use the parents' records) for the fhirAuthorization's client."""
    if access is None:
        return True, True
    if access.patient is not None and access.patient != patient_id:
        return False, False
    allowed = access.allows("Patient", "r") and access.allows("Observation", "s") and access.allows("Condition", "s")
    family = (
        access.patient is None and access.allows("RelatedPerson", "s") and access.allows("FamilyMemberHistory", "s")
    )
    return allowed, allowed and family


# -- the card --------------------------------------------------------------------------------


def _candidates_card(genes: Sequence[dict[str, Any]], links: list[dict[str, str]]) -> dict[str, Any]:
    names = [g["gene"] for g in genes]
    lines = []
    for rank, gene in enumerate(genes, 1):
        diseases = "; ".join(f"{d['name']} ({d['id']})" for d in gene["diseases"])
        lines.append(
            f"{rank}. **{gene['gene']}** (score {gene['score']:.3f}): {gene['explanation']}"
            + (f"  \n   Diseases: {diseases}" if diseases else "")
        )
    detail = (
        f"Genes ranked by how well their variants explain the patient's HPO phenotypes (HPO {genes[0]['hpoRelease']}; "
        "phenotype match x variant evidence x fit with the disease's inheritance). The record holds no genetic "
        "diagnosis (OMIM/Orphanet/MONDO Condition) and no reported pathogenic variant that explains the phenotypes."
        "\n\n" + "\n".join(lines) + "\n\nA ranking to guide review by clinical genetics, not a diagnosis. The full "
        "ranking, with a preliminary report on request, is the Patient/$prioritize-variants result."
    )
    summary = f"No diagnosis yet; candidate genes for the phenotypes: {', '.join(names[:_IN_SUMMARY])}"
    return card(summary, "info", SOURCE, detail=detail, override=False, links=links)


def _cards(call: HookCall, found: Sequence[Variant]) -> list[dict[str, Any]]:
    own = call.own_store
    patient_id = call.patient_id
    if own is None or not patient_id:
        return []  # the record is on another server: the ranking needs this server's data
    if diagnosis(call.prefetch.get("conditions")) is not None:
        return []
    allowed, family = _permitted(own.access, patient_id)
    if not allowed:
        return []
    ctx = own.ctx
    phenotypes, variants = rare.rare_inputs(ctx, patient_id)
    if not (phenotypes and variants):
        return []
    budget_ms = ctx.config.cds_rare_budget_ms
    outcome = _RANKINGS.get(ctx, patient_id, family, budget_ms / 1000)
    full = f"{own.fhir_base}/Patient/{patient_id}/$prioritize-variants"
    links = [link("Full ranking (Patient/$prioritize-variants)", full), call.patient_link()]
    if outcome.state == "pending":
        detail = (
            "The patient has HPO phenotypes and variant calls and no genetic diagnosis in the record. The ranking "
            f"of candidate genes was not ready within this service's {budget_ms} ms (the first ranking of a patient "
            "reads every variant call; the first after a server start also loads the HPO ontology). It goes on in "
            "the background: the next view of the patient lists the top genes. The full ranking is available now."
        )
        return [
            card(
                "Rare-disease candidate genes are being ranked: open the full result",
                "info",
                SOURCE,
                detail=detail,
                override=False,
                links=links,
            )
        ]
    if outcome.state == "failed":
        if not outcome.message:
            return []
        return [
            card(
                "Candidate genes could not be ranked: the phenotype record needs correcting",
                "info",
                SOURCE,
                detail=outcome.message,
                override=False,
                links=links,
            )
        ]
    genes = outcome.genes
    if not genes:
        return []
    reported = {v.id for v in found if v.significance and not v.somatic}
    if reported & set(genes[0]["variants"]):
        return []  # the best candidate rests on a reported pathogenic variant: its own card says it
    return [_candidates_card(genes, links)]


def cards(call: HookCall, found: Sequence[Variant]) -> list[dict[str, Any]]:
    """The candidate-gene card(s) of a genomic-findings call; ``found``: the variants of its prefetch."""
    try:
        return _cards(call, found)
    except Exception:  # an optional card must never fail the hook call
        log.exception("cds genomic-findings: candidate-gene card for Patient/%s failed", call.patient_id)
        return []
