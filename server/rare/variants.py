"""A patient's variant calls from Genomics Reporting Observations (STU3), for the prioritisation.

Reads the resources :mod:`mappers.vcf` writes (http://hl7.org/fhir/uv/genomics-reporting/):

* **variant** Observations (LOINC 69548-6): gene studied 48018-6 (symbol = the coding's display,
  else the HGNC id looked up, else the text), genomic ref seq 48013-7 (``NC_0000nn`` -> chromosome
  nn, 23 = X, 24 = Y, ``NC_012920`` = MT), exact start-end 81254-5, ref/alt allele 69547-8/69551-0,
  allelic state 53034-5, sample allelic frequency 81258-6, allelic read depth 82121-5, population
  allele frequency 92821-8 (when an annotator filled it, e.g. gnomAD AF), c./p. HGVS 48004-6/48005-3,
  and a ``note`` naming VCF FILTERs (a filtered call);
* **molecular consequence** Observations (``tbd-codes-cs#molecular-consequence``, ``focus`` or
  ``derivedFrom`` the variant): Sequence Ontology terms of ``feature-consequence`` components
  (display or text), c./p. HGVS;
* **diagnostic implication** Observations (``#diagnostic-implication``, ``derivedFrom`` the
  variant): clinical significance 53037-8 (LOINC answers LA6668-3 … LA6675-8, or text);
* **sequence phase relationship** Observations (82120-7, Cis/Trans, ``derivedFrom`` two variants).

Calls whose Observation names no gene are kept (they can still match a parent's call) but are
never ranked. Pure: takes resource dicts, returns :class:`server.rare.scoring.Call` values.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any

from mappers import genomics_codes as gc
from server.rare.scoring import Call

__all__ = ["POPULATION_ALLELE_FREQUENCY", "VariantSet", "read_variants"]

POPULATION_ALLELE_FREQUENCY = "92821-8"
_ZYGOSITY = {code: name for name, (code, _) in gc.ALLELIC_STATES.items()}
_SIGNIFICANCE = {code: name for name, (code, _) in gc.CLINICAL_SIGNIFICANCES.items()}
_REFSEQ = re.compile(r"^NC_0000(\d\d)\.\d+$")


@dataclass
class VariantSet:
    """The calls of one patient and the phase relationships between them."""

    calls: list[Call] = field(default_factory=list)
    phases: dict[frozenset[str], str] = field(default_factory=dict)  #: {id, id} -> 'cis' | 'trans'

    @property
    def keys(self) -> set[tuple[str, int, str | None, str | None]]:
        return {c.key for c in self.calls}


def _codes(concept: Any) -> list[tuple[str, str, str]]:
    if not isinstance(concept, Mapping):
        return []
    return [
        (str(c.get("system") or ""), str(c.get("code") or ""), str(c.get("display") or ""))
        for c in concept.get("coding") or []
        if isinstance(c, Mapping)
    ]


def _has_code(resource: Mapping[str, Any], code: str) -> bool:
    return any(c == code for _, c, _ in _codes(resource.get("code")))


def _number(component: Mapping[str, Any]) -> float | None:
    for key in ("valueQuantity", "valueDecimal", "valueInteger"):
        value = component.get(key)
        if isinstance(value, Mapping):
            value = value.get("value")
        if isinstance(value, int | float | Decimal) and not isinstance(value, bool):
            return float(value)  # jsonio parses JSON decimals as Decimal
    return None


def _refs(resource: Mapping[str, Any], *keys: str) -> list[str]:
    out = []
    for key in keys:
        for ref in resource.get(key) or []:
            if isinstance(ref, Mapping) and isinstance(ref.get("reference"), str):
                out.append(ref["reference"].rpartition("Observation/")[2])
    return out


def _chromosome(accession: str) -> str:
    if accession.startswith("NC_012920"):
        return "MT"
    match = _REFSEQ.match(accession)
    if not match:
        return ""
    number = int(match.group(1))
    return {23: "X", 24: "Y"}.get(number, str(number))


def _gene(concept: Any) -> str:
    for system, code, display in _codes(concept):
        if display:
            return display
        if system == gc.HGNC and code:
            for symbol, hgnc in gc.hgnc_ids().items():
                if hgnc == code:
                    return symbol
    text = concept.get("text") if isinstance(concept, Mapping) else None
    return str(text) if text else ""


def _variant(resource: Mapping[str, Any]) -> dict[str, Any]:
    fields: dict[str, Any] = {"id": str(resource.get("id")), "gene": "", "chromosome": ""}
    for component in resource.get("component") or []:
        if not isinstance(component, Mapping):
            continue
        codes = {c for _, c, _ in _codes(component.get("code"))}
        value = component.get("valueCodeableConcept")
        if gc.GENE_STUDIED in codes:
            fields["gene"] = _gene(value)
        elif gc.GENOMIC_REF_SEQ in codes:
            accession = next((c for _, c, _ in _codes(value) if c), "")
            fields["chromosome"] = _chromosome(accession)
        elif gc.EXACT_START_END in codes:
            low = (component.get("valueRange") or {}).get("low") or {}
            if isinstance(low.get("value"), int | float | Decimal):
                fields["start"] = int(low["value"])
        elif gc.REF_ALLELE in codes:
            fields["ref"] = component.get("valueString")
        elif gc.ALT_ALLELE in codes:
            fields["alt"] = component.get("valueString")
        elif gc.ALLELIC_STATE in codes:
            fields["zygosity"] = next((_ZYGOSITY[c] for _, c, _ in _codes(value) if c in _ZYGOSITY), "")
        elif gc.SAMPLE_ALLELIC_FREQUENCY in codes:
            fields["allele_fraction"] = _number(component)
        elif gc.ALLELIC_READ_DEPTH in codes:
            depth = _number(component)
            fields["depth"] = int(depth) if depth is not None else None
        elif POPULATION_ALLELE_FREQUENCY in codes:
            fields["population_af"] = _number(component)
        elif gc.CODING_HGVS in codes:
            fields["hgvs_c"] = next((c for _, c, _ in _codes(value) if c), None) or component.get("valueString")
        elif gc.PROTEIN_HGVS in codes:
            fields["hgvs_p"] = next((c for _, c, _ in _codes(value) if c), None) or component.get("valueString")
    notes = " ".join(str(n.get("text", "")) for n in resource.get("note") or [] if isinstance(n, Mapping))
    fields["filtered"] = "VCF FILTER" in notes or "FORMAT/FT" in notes
    return fields


def read_variants(resources: Iterable[Mapping[str, Any]]) -> VariantSet:
    """The calls (with consequences and ClinVar classes joined in) and phases of a patient's Observations."""
    variants: dict[str, dict[str, Any]] = {}
    consequences: dict[str, list[str]] = {}
    hgvs: dict[str, dict[str, str]] = {}
    significance: dict[str, str] = {}
    phases: dict[frozenset[str], str] = {}
    for resource in resources:
        if resource.get("resourceType") != "Observation":
            continue
        if _has_code(resource, gc.VARIANT_ASSESSMENT):
            variants[str(resource.get("id"))] = _variant(resource)
        elif _has_code(resource, "molecular-consequence"):
            terms: list[str] = []
            extra: dict[str, str] = {}
            for component in resource.get("component") or []:
                codes = {c for _, c, _ in _codes(component.get("code"))}
                value = component.get("valueCodeableConcept")
                if "feature-consequence" in codes:
                    names = [d or c for _, c, d in _codes(value)] or [str((value or {}).get("text") or "")]
                    terms.extend(n for n in names if n)
                elif gc.CODING_HGVS in codes:
                    extra["hgvs_c"] = next((c for _, c, _ in _codes(value) if c), "")
                elif gc.PROTEIN_HGVS in codes:
                    extra["hgvs_p"] = next((c for _, c, _ in _codes(value) if c), "")
            for target in dict.fromkeys(_refs(resource, "focus", "derivedFrom")):
                consequences.setdefault(target, []).extend(terms)
                hgvs.setdefault(target, {}).update({k: v for k, v in extra.items() if v})
        elif _has_code(resource, "diagnostic-implication"):
            for component in resource.get("component") or []:
                if gc.CLINICAL_SIGNIFICANCE not in {c for _, c, _ in _codes(component.get("code"))}:
                    continue
                value = component.get("valueCodeableConcept") or {}
                label = next((_SIGNIFICANCE[c] for _, c, _ in _codes(value) if c in _SIGNIFICANCE), None)
                label = label or str(value.get("text") or "").lower().replace("_", " ") or None
                if label:
                    for target in _refs(resource, "derivedFrom"):
                        significance[target] = _worst(significance.get(target), label)
        elif _has_code(resource, gc.ALLELIC_PHASE):
            pair = _refs(resource, "derivedFrom")
            value = {c.lower() for _, c, _ in _codes(resource.get("valueCodeableConcept"))}
            if len(pair) == 2 and value & {"cis", "trans"}:
                phases[frozenset(pair)] = "cis" if "cis" in value else "trans"
    out = VariantSet(phases=phases)
    for vid, fields in variants.items():
        for key, value in hgvs.get(vid, {}).items():
            if not fields.get(key):
                fields[key] = value
        out.calls.append(
            Call(
                **fields,
                consequences=tuple(dict.fromkeys(consequences.get(vid, []))),
                clinvar=significance.get(vid),
            )
        )
    return out


_ORDER = ["pathogenic", "likely pathogenic", "uncertain significance", "likely benign", "benign"]


def _worst(old: str | None, new: str) -> str:
    """Of two ClinVar classes for one variant, the more pathogenic (known classes before free text)."""
    if old is None:
        return new
    rank = {name: i for i, name in enumerate(_ORDER)}
    return old if rank.get(old, 99) <= rank.get(new, 99) else new
