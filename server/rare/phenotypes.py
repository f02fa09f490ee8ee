"""A patient's phenotypic features from FHIR resources: HPO-coded Observations and Conditions.

Conventions (GA4GH Phenopackets on FHIR, http://hl7.org/fhir/uv/phenomics-exchange/, profile
PhenotypicFeature; the project's CSV/HL7 mappers write the same shape):

* an **Observation** whose ``code`` (or ``valueCodeableConcept``) carries an HPO coding, system
  ``http://human-phenotype-ontology.org`` or ``http://purl.obolibrary.org/obo/hp.owl``
  (``HP:0001250``; ``HP_0001250`` is accepted). It is *excluded* (explicitly absent) when the value
  is LOINC LA9634-2 Absent, SNOMED CT 272519000 / 410516002 (absence / known absent),
  ``valueBoolean`` false, or ``interpretation`` is v3 ``NEG``/``ABSENT`` (or LA9634-2); present
  otherwise (LA9633-4 Present, no value, …);
* a **Condition** coded with HPO: excluded when ``verificationStatus`` is ``refuted``; present
  otherwise;
* ``entered-in-error`` (and Observation ``cancelled``) resources are ignored.

Every term is checked against the ontology (:meth:`server.rare.hpo.Ontology.resolve`): an obsolete
or alternative id is replaced by its current term (reported in :attr:`Phenotypes.replaced`); an
unknown id, or an obsolete one without replacement, is an error naming the resource.
A term both present and excluded (two records disagree) counts as present.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from server.rare.hpo import Ontology, TermError
from server.rare.scoring import Profile

__all__ = ["HPO_SYSTEMS", "PhenotypeError", "Phenotypes", "hpo_codes", "read_phenotypes"]

HPO_SYSTEMS = ("http://human-phenotype-ontology.org", "http://purl.obolibrary.org/obo/hp.owl")
_ABSENT_VALUES = {
    ("http://loinc.org", "LA9634-2"),
    ("http://snomed.info/sct", "272519000"),
    ("http://snomed.info/sct", "410516002"),
    ("http://snomed.info/sct", "260385009"),
}
_NEGATIVE_INTERPRETATIONS = {"NEG", "ABSENT", "LA9634-2"}
_IGNORED_STATUS = {"entered-in-error", "cancelled"}


class PhenotypeError(ValueError):
    """An HPO code in the record the ontology does not accept (resource and reason)."""

    def __init__(self, reference: str, message: str) -> None:
        super().__init__(f"{reference}: {message}")
        self.reference = reference


@dataclass
class Phenotypes:
    """What the record says, validated: term indexes and where they came from."""

    present: list[int] = field(default_factory=list)
    excluded: list[int] = field(default_factory=list)
    sources: dict[int, list[str]] = field(default_factory=dict)  #: term -> resource references
    replaced: list[tuple[str, str, str]] = field(default_factory=list)  #: (reference, old id, new id)

    def profile(self) -> Profile:
        return Profile(present=list(self.present), excluded=[t for t in self.excluded if t not in self.present])


def hpo_codes(concept: Any) -> list[str]:
    """The HPO codes of a CodeableConcept."""
    if not isinstance(concept, Mapping):
        return []
    return [
        str(c.get("code"))
        for c in concept.get("coding") or []
        if isinstance(c, Mapping) and c.get("system") in HPO_SYSTEMS and c.get("code")
    ]


def _codings(concept: Any) -> set[tuple[str, str]]:
    if not isinstance(concept, Mapping):
        return set()
    return {
        (str(c.get("system")), str(c.get("code")))
        for c in concept.get("coding") or []
        if isinstance(c, Mapping) and c.get("code")
    }


def _excluded(resource: Mapping[str, Any]) -> bool:
    if resource.get("resourceType") == "Condition":
        return any(code == "refuted" for _, code in _codings(resource.get("verificationStatus")))
    if resource.get("valueBoolean") is False:
        return True
    if _codings(resource.get("valueCodeableConcept")) & _ABSENT_VALUES:
        return True
    for interpretation in resource.get("interpretation") or []:
        if any(code in _NEGATIVE_INTERPRETATIONS for _, code in _codings(interpretation)):
            return True
    return False


def read_phenotypes(onto: Ontology, resources: Iterable[Mapping[str, Any]]) -> Phenotypes:
    """Validated phenotypic features of Observations/Conditions (others are skipped)."""
    out = Phenotypes()
    present: dict[int, None] = {}
    excluded: dict[int, None] = {}
    for resource in resources:
        kind = resource.get("resourceType")
        if kind not in ("Observation", "Condition"):
            continue
        status = resource.get("status")
        verification = {code for _, code in _codings(resource.get("verificationStatus"))}
        if status in _IGNORED_STATUS or "entered-in-error" in verification:
            continue
        codes = hpo_codes(resource.get("code"))
        if kind == "Observation" and not codes:
            codes = hpo_codes(resource.get("valueCodeableConcept"))
        if not codes:
            continue
        reference = f"{kind}/{resource.get('id')}"
        negative = _excluded(resource)
        for code in codes:
            try:
                term, old = onto.resolve(code)
            except TermError as exc:
                raise PhenotypeError(reference, str(exc)) from exc
            if old is not None:
                out.replaced.append((reference, old, onto.ids[term]))
            (excluded if negative else present)[term] = None
            out.sources.setdefault(term, []).append(reference)
    out.present = list(present)
    out.excluded = [t for t in excluded if t not in present]
    return out
