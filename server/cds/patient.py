"""The patient facts the CDS services decide on, read from FHIR JSON (prefetch values).

- PGx results: HL7 Genomics Reporting TherapeuticImplication Observations
  (``tbd-codes-cs#therapeutic-implication``: phenotype text, activity score, gene studied) and the
  Genotype (LOINC 84413-4) they derive from (the diplotype); ``status`` preliminary = uncertain;
- variants: variant Observations (69548-6: gene, source class, c./p. HGVS) and their
  DiagnosticImplication (``tbd-codes-cs#diagnostic-implication``, clinical significance 53037-8);
- the clopidogrel indication from Conditions / Procedures (ACS, PCI, neurovascular) by SNOMED CT,
  ICD-10 code prefix or words of the text.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from decimal import Decimal
from typing import Any

from mappers import genomics_codes as gc

__all__ = ["Indication", "PgxResult", "Variant", "indication", "pgx_results", "resources", "variants"]

_PGX_SCORE = "activity-score"
_PATHOGENIC = {
    gc.CLINICAL_SIGNIFICANCES["pathogenic"][0]: "Pathogenic",
    gc.CLINICAL_SIGNIFICANCES["likely pathogenic"][0]: "Likely pathogenic",
}
_SOMATIC = gc.SOURCE_CLASSES["somatic"][0]


def resources(value: Any, type_: str | None = None) -> Iterator[dict[str, Any]]:
    """The resources of a prefetch value (a Bundle's entries, or the resource itself)."""
    if not isinstance(value, Mapping):
        return
    if value.get("resourceType") == "Bundle":
        for entry in value.get("entry") or ():
            res = entry.get("resource") if isinstance(entry, Mapping) else None
            if isinstance(res, Mapping) and (type_ is None or res.get("resourceType") == type_):
                yield dict(res)
    elif type_ is None or value.get("resourceType") == type_:
        yield dict(value)


def _codes(concept: Any) -> list[tuple[str, str]]:
    if not isinstance(concept, Mapping):
        return []
    return [
        (str(c.get("system") or ""), str(c.get("code") or ""))
        for c in concept.get("coding") or ()
        if isinstance(c, Mapping)
    ]


def _component(resource: Mapping[str, Any], code: str) -> Mapping[str, Any] | None:
    for comp in resource.get("component") or ():
        if any(c == code for _, c in _codes(comp.get("code"))):
            return comp
    return None


def _gene(resource: Mapping[str, Any]) -> str | None:
    comp = _component(resource, gc.GENE_STUDIED)
    if comp is None:
        return None
    concept = comp.get("valueCodeableConcept") or {}
    display = next((c.get("display") for c in concept.get("coding") or () if c.get("display")), None)
    return str(display or concept.get("text") or "") or None


@dataclass(frozen=True)
class PgxResult:
    gene: str
    phenotype: str  # CPIC term ("Poor Metabolizer", "Decreased Function", "Indeterminate" …)
    activity_score: str | None  # "1.5" for DPYD / CYP2C9
    diplotype: str | None  # "CYP2C19 *2/*2"
    preliminary: bool
    observation: str  # Observation/<id> of the TherapeuticImplication

    @property
    def key(self) -> str:
        """The CPIC lookup key: activity score where defined, else the phenotype."""
        return self.activity_score if self.activity_score is not None else self.phenotype


def pgx_results(*values: Any) -> dict[str, PgxResult]:
    """Gene -> its PGx result; a final result wins over a preliminary one, then the latest."""
    all_resources = [r for v in values for r in resources(v, "Observation")]
    genotypes = {
        f"Observation/{r.get('id')}": r for r in all_resources if any(c == "84413-4" for _, c in _codes(r.get("code")))
    }
    out: dict[str, tuple[tuple[int, str], PgxResult]] = {}
    for r in all_resources:
        if not any(c == "therapeutic-implication" for _, c in _codes(r.get("code"))):
            continue
        if r.get("status") in ("entered-in-error", "cancelled"):
            continue
        gene = _gene(r)
        comp = _component(r, "therapeutic-implication")
        if not gene or comp is None:
            continue
        phenotype = str((comp.get("valueCodeableConcept") or {}).get("text") or "") or next(
            (
                str(c.get("display"))
                for c in (comp.get("valueCodeableConcept") or {}).get("coding") or ()
                if c.get("display")
            ),
            "Indeterminate",
        )
        score_comp = _component(r, _PGX_SCORE)
        score = None
        value = (score_comp or {}).get("valueQuantity", {}).get("value") if score_comp is not None else None
        if isinstance(value, int | float | Decimal) and not isinstance(value, bool):  # jsonio reads decimals exactly
            score = repr(float(value))
        diplotype = None
        for ref in r.get("derivedFrom") or ():
            genotype = genotypes.get(str(ref.get("reference")))
            if genotype is not None:
                diplotype = (genotype.get("valueCodeableConcept") or {}).get("text")
        preliminary = r.get("status") == "preliminary"
        result = PgxResult(gene, phenotype, score, diplotype, preliminary, f"Observation/{r.get('id')}")
        rank = (0 if preliminary else 1, str((r.get("meta") or {}).get("lastUpdated") or ""))
        if gene not in out or rank > out[gene][0]:
            out[gene] = (rank, result)
    return {gene: result for gene, (_, result) in out.items()}


@dataclass(frozen=True)
class Variant:
    id: str
    gene: str | None
    somatic: bool
    significance: str | None  # "Pathogenic" / "Likely pathogenic" / None (no implication known)
    protein_change: str | None  # p.HGVS
    label: str  # e.g. "KRAS p.Gly12Asp" or "chr12:25245350 C>T"


def _variant_label(resource: Mapping[str, Any], gene: str | None) -> str:
    for code in ("48005-3", "48004-6"):
        comp = _component(resource, code)
        if comp is not None:
            concept = comp.get("valueCodeableConcept") or {}
            text = next((c.get("code") for c in concept.get("coding") or ()), None) or concept.get("text")
            if text:
                return f"{gene or ''} {text}".strip()
    ref = (_component(resource, gc.REF_ALLELE) or {}).get("valueString")
    alt = (_component(resource, gc.ALT_ALLELE) or {}).get("valueString")
    seq = _component(resource, gc.GENOMIC_REF_SEQ)
    accession = next((c for _, c in _codes((seq or {}).get("valueCodeableConcept"))), "")
    start = (((_component(resource, gc.EXACT_START_END) or {}).get("valueRange") or {}).get("low") or {}).get("value")
    where = f"{accession}:{int(start) + 1}" if start is not None else accession
    return f"{gene or ''} {where} {ref or ''}>{alt or ''}".strip()


def _protein(resource: Mapping[str, Any]) -> str | None:
    comp = _component(resource, "48005-3")
    if comp is None:
        return None
    concept = comp.get("valueCodeableConcept") or {}
    return next((str(c.get("code")) for c in concept.get("coding") or () if c.get("code")), None) or concept.get("text")


def variants(*values: Any) -> list[Variant]:
    """Variant Observations of the values, each with the strongest clinical significance found for it."""
    all_resources = [r for v in values for r in resources(v, "Observation")]
    significance: dict[str, str] = {}
    for r in all_resources:
        if not any(c == "diagnostic-implication" for _, c in _codes(r.get("code"))):
            continue
        comp = _component(r, gc.CLINICAL_SIGNIFICANCE)
        codes = [c for _, c in _codes((comp or {}).get("valueCodeableConcept"))]
        label = next((_PATHOGENIC[c] for c in codes if c in _PATHOGENIC), None)
        if label is None:
            text = str(((comp or {}).get("valueCodeableConcept") or {}).get("text") or "").lower()
            label = (
                "Likely pathogenic"
                if "likely pathogenic" in text
                else "Pathogenic"
                if text.startswith("pathogenic")
                else None
            )
        if label is None:
            continue
        for ref in [*(r.get("derivedFrom") or ()), *(r.get("focus") or ())]:
            target = str(ref.get("reference") or "")
            if significance.get(target) != "Pathogenic":
                significance[target] = label
    out = []
    seen: set[str] = set()
    for r in all_resources:
        if not any(c == gc.VARIANT_ASSESSMENT for _, c in _codes(r.get("code"))):
            continue
        ref = f"Observation/{r.get('id')}"
        if ref in seen:
            continue
        seen.add(ref)
        gene = _gene(r)
        source = _component(r, gc.GENOMIC_SOURCE_CLASS)
        somatic = any(c == _SOMATIC for _, c in _codes((source or {}).get("valueCodeableConcept")))
        out.append(Variant(ref, gene, somatic, significance.get(ref), _protein(r), _variant_label(r, gene)))
    return out


# -- clopidogrel indication ---------------------------------------------------------------------

_ACS_SNOMED = {
    "394659003",  # Acute coronary syndrome
    "22298006",  # Myocardial infarction
    "57054005",  # Acute myocardial infarction
    "401303003",  # Acute ST segment elevation myocardial infarction
    "401314000",  # Acute non-ST segment elevation myocardial infarction
    "4557003",  # Preinfarction syndrome (unstable angina)
    "25106000",  # Impending infarction (unstable angina)
}
_PCI_SNOMED = {
    "415070008",  # Percutaneous coronary intervention
    "36969009",  # Placement of stent in coronary artery
    "11101003",  # Percutaneous transluminal coronary angioplasty
    "397193006",  # Coronary angioplasty with stent (history of)
}
_NVI_SNOMED = {"230690007", "422504002", "266257000", "432504007"}  # stroke, ischemic stroke, TIA, cerebral infarction
_ACS_ICD10 = ("I21", "I22", "I24", "I20.0", "I200")
_PCI_ICD10 = ("Z95.5", "Z955")
_NVI_ICD10 = ("I63", "G45")
_ACS_WORDS = re.compile(r"acute coronary|myocardial infarction|\bSTEMI\b|\bNSTEMI\b|unstable angina|\bACS\b", re.I)
_PCI_WORDS = re.compile(r"percutaneous coronary|coronary (artery )?stent|angioplasty|\bPCI\b", re.I)
_NVI_WORDS = re.compile(r"stroke|transient ischemic|\bTIA\b|cerebral infarction", re.I)


@dataclass(frozen=True)
class Indication:
    population: (
        str  # the CPIC population of the clopidogrel recommendations: "CVI ACS PCI", "NVI", "CVI non-ACS non-PCI"
    )
    evidence: str  # what it was taken from, or what was assumed


def _classify(resource: Mapping[str, Any]) -> tuple[str | None, str]:
    concept = resource.get("code") or {}
    text = " ".join(
        [str(concept.get("text") or "")] + [str(c.get("display") or "") for c in concept.get("coding") or ()]
    )
    name = (
        concept.get("text") or next((c.get("display") for c in concept.get("coding") or () if c.get("display")), None)
    ) or "?"
    for system, code in _codes(concept):
        icd = "icd-10" in system.lower()
        if code in _ACS_SNOMED or (icd and code.startswith(_ACS_ICD10)):
            return "ACS", name
        if code in _PCI_SNOMED or (icd and code.startswith(_PCI_ICD10)):
            return "PCI", name
        if code in _NVI_SNOMED or (icd and code.startswith(_NVI_ICD10)):
            return "NVI", name
    if _ACS_WORDS.search(text):
        return "ACS", name
    if _PCI_WORDS.search(text):
        return "PCI", name
    if _NVI_WORDS.search(text):
        return "NVI", name
    return None, name


def _active(resource: Mapping[str, Any]) -> bool:
    if resource.get("resourceType") == "Procedure":
        return resource.get("status") not in ("entered-in-error", "not-done")
    return not (
        resource.get("verificationStatus")
        and any(c in ("refuted", "entered-in-error") for _, c in _codes(resource.get("verificationStatus")))
    )


def indication(values: Iterable[Any]) -> Indication:
    """The clopidogrel indication (CPIC population) from Conditions and Procedures."""
    found: dict[str, str] = {}
    for value in values:
        for resource in resources(value):
            if resource.get("resourceType") not in ("Condition", "Procedure") or not _active(resource):
                continue
            kind, name = _classify(resource)
            if kind and kind not in found:
                found[kind] = f"{resource['resourceType']} '{name}'"
    if "ACS" in found or "PCI" in found:
        return Indication(
            "CVI ACS PCI", "ACS/PCI indication taken from " + ", ".join(found[k] for k in ("ACS", "PCI") if k in found)
        )
    if "NVI" in found:
        return Indication("NVI", f"neurovascular indication taken from {found['NVI']}")
    return Indication(
        "CVI non-ACS non-PCI",
        "no ACS, PCI or stroke/TIA among the patient's Conditions and Procedures: "
        "assumed a cardiovascular indication without ACS or PCI",
    )
