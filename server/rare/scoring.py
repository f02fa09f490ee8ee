"""Phenotype-driven ranking of a patient's genes, and phenotype similarity between patients.

Pure functions over :class:`server.rare.hpo.Ontology`, :class:`Profile` (the patient's present
and excluded HPO terms) and :class:`Call` (one called variant allele): no I/O, no FHIR.
The method follows the published tools (Exomiser's hiPHIVE/PhenIX phenotype score and variant
pathogenicity/frequency scores, LIRICAL's use of excluded terms, Phenomizer's Resnik BMA):

* **Phenotype score** of a disease D for the patient's terms P (:meth:`PhenotypeMatcher.disease`):
  Resnik similarity of two terms = IC of their most informative common ancestor. P→D is the
  mean over t in P of max_{d in D} Resnik(t, d), divided by its best possible value (each term
  matched by itself or its most informative annotated ancestor): 1.0 means every patient term
  is explained as precisely as HPO allows. D→P is the frequency-weighted mean over D's terms of
  max_{t in P} Resnik(d, t), divided by D's self-similarity. The score is the weighted
  best-match average ``(1 - w) * P→D + w * D→P`` (``w`` = ``DISEASE_SIDE_WEIGHT``: a patient
  shows only some of a disease's features, so the patient side counts more). An excluded term
  that the disease has (itself or a descendant) multiplies the score by ``1 - 0.7 * frequency``;
  a present term the disease is annotated ``NOT`` to by 0.5.
* **Variant score** (:func:`variant_score`) in [0, 1]: predicted consequence (loss of function
  1.0 > start/stop lost, in-frame, missense > splice region > synonymous, UTR, intron), raised to
  0.95/0.9 by ClinVar pathogenic/likely pathogenic, lowered by benign; times the population
  frequency factor (Exomiser's ``1.13533 - 0.13533 * exp(100 * AF)``, 0 above 2 %); times
  quality (a FILTERed call 0.5, a heterozygous call with allele fraction < 0.15 or fewer than 4
  reads of the allele, 0.7).
* **Genotype vs inheritance** (:func:`genotype_score`): autosomal dominant takes the best
  variant (an allele more frequent than 0.1 % counts 0.3 of it); autosomal recessive needs a
  homozygous call or two heterozygous ones not known to be in cis (phase Observations, or both
  inherited from one parent), else 0.25 of the best; X-linked recessive needs a hemizygous
  call in a male (any X call in a male counts as one), two hits in a female; X-linked dominant
  or unspecified one variant (unspecified: 0.6 for a heterozygous female); diseases of unknown
  mode take the better of dominant and recessive, times 0.9; so does a mode that was inferred
  from the gene's other diseases (``Disease.inherited_modes``, Orphanet entries).
* **Parents** (:class:`Family`): with both parents' calls, a variant neither has is de novo
  (x1.5 for dominant and unknown modes); a dominant variant inherited from a parent (assumed
  unaffected) counts 0.5.
* **Gene score** = max over the gene's diseases of phenotype score ^ ``PHENOTYPE_POWER`` x
  genotype score (the power sharpens the difference between a specific and a vague match).
  Without any phenotype the phenotype factor is 1 (variant-only ranking).

Patient similarity (:func:`patient_similarity`) is the symmetric Resnik BMA of two term sets
normalised by the self-similarities (in [0, 1]).
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field

from server.rare.hpo import Disease, Ontology

__all__ = [
    "DISEASE_SIDE_WEIGHT",
    "PHENOTYPE_POWER",
    "Call",
    "Family",
    "GeneResult",
    "PhenotypeMatcher",
    "Profile",
    "frequency_factor",
    "genotype_score",
    "patient_similarity",
    "prioritize",
    "variant_score",
]

DISEASE_SIDE_WEIGHT = 0.3
PHENOTYPE_POWER = 2.0
_LOF = {
    "transcript_ablation": 1.0,
    "exon_loss_variant": 1.0,
    "frameshift_variant": 1.0,
    "stop_gained": 1.0,
    "splice_acceptor_variant": 1.0,
    "splice_donor_variant": 1.0,
    "start_lost": 0.95,
    "feature_truncation": 0.9,
    "stop_lost": 0.85,
    "initiator_codon_variant": 0.9,
    "disruptive_inframe_deletion": 0.7,
    "disruptive_inframe_insertion": 0.7,
    "inframe_deletion": 0.65,
    "inframe_insertion": 0.65,
    "protein_altering_variant": 0.65,
    "missense_variant": 0.6,
    "splice_donor_5th_base_variant": 0.5,
    "splice_region_variant": 0.35,
    "splice_donor_region_variant": 0.35,
    "splice_polypyrimidine_tract_variant": 0.2,
    "coding_sequence_variant": 0.3,
    "5_prime_UTR_premature_start_codon_gain_variant": 0.3,
    "synonymous_variant": 0.1,
    "stop_retained_variant": 0.1,
    "start_retained_variant": 0.1,
    "5_prime_UTR_variant": 0.1,
    "3_prime_UTR_variant": 0.1,
    "non_coding_transcript_exon_variant": 0.1,
    "mature_miRNA_variant": 0.2,
    "intron_variant": 0.05,
    "non_coding_transcript_variant": 0.05,
    "NMD_transcript_variant": 0.05,
    "upstream_gene_variant": 0.03,
    "downstream_gene_variant": 0.03,
    "regulatory_region_variant": 0.03,
    "TF_binding_site_variant": 0.03,
    "intergenic_variant": 0.0,
}
_UNANNOTATED = 0.3  # a call with no consequence annotation: neither damaging nor harmless
_LOF_THRESHOLD = 0.9
_CLINVAR = {"pathogenic": 0.95, "likely pathogenic": 0.9}
_CLINVAR_BENIGN = {"benign": 0.05, "likely benign": 0.2}
_HOM = ("homozygous", "homoplasmic")
_HEMI = ("hemizygous",)
_DOMINANT = ("AD", "XD", "XL", "YL", "MT", "SP", "SM")


@dataclass(frozen=True, slots=True)
class Call:
    """One called ALT allele of the patient (read from a variant Observation)."""

    id: str  #: the variant Observation's id
    gene: str  #: HGNC symbol
    chromosome: str  #: '1'…'22', 'X', 'Y', 'MT' ('' when unknown)
    start: int = -1  #: 0-based
    ref: str | None = None
    alt: str | None = None
    zygosity: str = ""  #: heterozygous, homozygous, hemizygous, heteroplasmic, homoplasmic or ''
    consequences: tuple[str, ...] = ()  #: Sequence Ontology terms, most severe first
    clinvar: str | None = None  #: lower-case ClinVar class ('pathogenic', 'likely pathogenic', …)
    population_af: float | None = None
    filtered: bool = False
    allele_fraction: float | None = None
    depth: int | None = None  #: reads supporting the allele (LOINC 82121-5)
    hgvs_c: str | None = None
    hgvs_p: str | None = None

    @property
    def key(self) -> tuple[str, int, str | None, str | None]:
        """Where and what: the same allele in another person's calls has the same key."""
        return (self.chromosome, self.start, self.ref, self.alt)

    def label(self) -> str:
        where = f"{self.chromosome}:{self.start + 1}{self.ref or ''}>{self.alt or ''}" if self.start >= 0 else self.id
        return self.hgvs_p or self.hgvs_c or where


@dataclass
class Profile:
    """A patient's phenotype: HPO term indexes present and explicitly excluded."""

    present: list[int] = field(default_factory=list)
    excluded: list[int] = field(default_factory=list)


@dataclass
class Family:
    """The parents' calls (keys of :attr:`Call.key`), when known; ``None`` = not sequenced."""

    mother: set[tuple[str, int, str | None, str | None]] | None = None
    father: set[tuple[str, int, str | None, str | None]] | None = None

    def origin(self, call: Call) -> str | None:
        """'de novo', 'maternal', 'paternal', 'both' or None (parents unknown)."""
        if self.mother is None and self.father is None:
            return None
        in_mother = self.mother is not None and call.key in self.mother
        in_father = self.father is not None and call.key in self.father
        if in_mother and in_father:
            return "both"
        if in_mother:
            return "maternal"
        if in_father:
            return "paternal"
        if self.mother is not None and self.father is not None:
            return "de novo"
        return None


@dataclass
class GeneResult:
    """One ranked gene."""

    gene: str
    score: float
    phenotype_score: float
    variant_score: float
    mode: str  #: the inheritance mode the best disease was scored under ('' when unknown)
    diseases: list[tuple[Disease, float]]  #: the disease behind the score, then the best matching others
    calls: list[tuple[Call, float, str | None]]  #: the variants used: (call, variant score, origin)
    explanation: str = ""


# -- variants --------------------------------------------------------------------------------


def frequency_factor(af: float | None) -> float:
    """Exomiser's frequency score: 1 for absent/unknown, falling to 0 at 2 % (AF as a fraction)."""
    if af is None or af <= 0:
        return 1.0
    if af > 0.02:
        return 0.0
    return max(0.0, min(1.0, 1.13533 - 0.13533 * math.exp(af * 100)))


def variant_score(call: Call) -> float:
    """Pathogenicity x frequency x quality of one call, in [0, 1]."""
    if call.consequences:
        score = max((_LOF.get(term, 0.1) for term in call.consequences), default=_UNANNOTATED)
    else:
        score = _UNANNOTATED
    if call.clinvar in _CLINVAR:
        score = max(score, _CLINVAR[call.clinvar])
    elif call.clinvar in _CLINVAR_BENIGN:
        score = min(score, _CLINVAR_BENIGN[call.clinvar])
    score *= frequency_factor(call.population_af)
    if call.filtered:
        score *= 0.5
    low_fraction = call.allele_fraction is not None and call.allele_fraction < 0.15
    if call.zygosity == "heterozygous" and (low_fraction or (call.depth is not None and call.depth < 4)):
        score *= 0.7
    return score


def _trans(a: Call, b: Call, phases: Mapping[frozenset[str], str], family: Family | None) -> bool:
    """Whether two heterozygous calls may be on different copies (not known to be in cis)."""
    known = phases.get(frozenset((a.id, b.id)))
    if known is not None:
        return known == "trans"
    if family is not None:
        oa, ob = family.origin(a), family.origin(b)
        if oa in ("maternal", "paternal") and oa == ob:
            return False
    return True


def genotype_score(
    mode: str,
    scored: Sequence[tuple[Call, float]],
    sex: str,
    phases: Mapping[frozenset[str], str] | None = None,
    family: Family | None = None,
) -> tuple[float, list[Call]]:
    """How well the gene's calls (with their variant scores, best first) fit an inheritance mode.

    Returns the genotype score and the calls it rests on.
    """
    if not scored:
        return 0.0, []
    phases = phases or {}
    male = sex == "male"

    def origin_factor(call: Call, dominant: bool) -> float:
        origin = family.origin(call) if family is not None else None
        if origin == "de novo":
            return 1.5 if dominant else 1.0
        if dominant and origin in ("maternal", "paternal", "both"):
            return 0.5
        return 1.0

    def dominant() -> tuple[float, list[Call]]:
        best: tuple[float, list[Call]] = (0.0, [])
        for call, score in scored:
            value = score * origin_factor(call, True)
            if call.population_af is not None and call.population_af > 0.001:
                value *= 0.3
            if value > best[0]:
                best = (value, [call])
        return best

    def recessive(x_linked: bool) -> tuple[float, list[Call]]:
        best: tuple[float, list[Call]] = (0.0, [])
        hets: list[tuple[Call, float]] = []
        for call, score in scored:
            two_copies = call.zygosity in _HOM or call.zygosity in _HEMI or (x_linked and male)
            if two_copies:
                if score > best[0]:
                    best = (score, [call])
            else:
                hets.append((call, score))
        for i, (first, s1) in enumerate(hets):
            for second, s2 in hets[i + 1 :]:
                pair = (s1 + s2) / 2
                if pair > best[0] and _trans(first, second, phases, family):
                    best = (pair, [first, second])
                    break
        if not best[1] and hets:
            best = (hets[0][1] * 0.25, [hets[0][0]])
        return best

    if mode in ("AD", "XD", "YL", "SP", "SM"):
        return dominant()
    if mode == "MT":
        mito = [(c, s) for c, s in scored if c.chromosome == "MT"]
        return genotype_score("AD", mito or scored, sex, phases, family) if mito else (dominant()[0] * 0.5, [])
    if mode == "AR":
        return recessive(False)
    if mode == "XR":
        return recessive(True)
    if mode == "XL":
        score, calls = dominant()
        if not male and calls and calls[0].zygosity not in _HOM:
            two = recessive(True)
            return (two if two[0] > score * 0.6 else (score * 0.6, calls)) if two[1] else (score * 0.6, calls)
        return score, calls
    # unknown mode: whichever fits better, slightly discounted
    dom, rec = dominant(), recessive(False)
    best = dom if dom[0] >= rec[0] else rec
    return best[0] * 0.9, best[1]


# -- phenotypes ------------------------------------------------------------------------------


class PhenotypeMatcher:
    """Resnik best-match-average of one patient's profile against diseases (caches per profile)."""

    def __init__(self, onto: Ontology, profile: Profile) -> None:
        self.onto = onto
        self.present = list(dict.fromkeys(profile.present))
        self.excluded = list(dict.fromkeys(profile.excluded))
        closure: set[int] = set()
        for term in self.present:
            closure |= onto.ancestor_sets[term]
        self.closure = frozenset(closure)
        ic = onto.ic
        self.best = [self._best_possible(t) for t in self.present]
        self.best_total = sum(self.best) or 1.0
        self._term_cache: dict[int, float] = {}
        self._disease_cache: dict[str, float] = {}
        self._ic = ic

    def _best_possible(self, term: int) -> float:
        # the most informative ancestor some gene-linked disease is annotated with (or the term)
        for ancestor in self.onto.ancestors[term]:
            if self.onto.counts[ancestor]:
                return self.onto.ic[ancestor]
        return 0.0

    def _to_patient(self, term: int) -> float:
        found = self._term_cache.get(term)
        if found is None:
            found = 0.0
            closure = self.closure
            for ancestor in self.onto.ancestors[term]:
                if ancestor in closure:
                    found = self._ic[ancestor]
                    break
            self._term_cache[term] = found
        return found

    def disease(self, disease: Disease) -> float:
        """The phenotype score of one disease in [0, 1] (cached)."""
        found = self._disease_cache.get(disease.id)
        if found is not None:
            return found
        if not self.present or not disease.terms:
            self._disease_cache[disease.id] = 0.0
            return 0.0
        onto, ic = self.onto, self._ic
        closure = disease.closure or _closure(onto, disease.terms)
        forward = 0.0
        for term in self.present:
            for ancestor in onto.ancestors[term]:
                if ancestor in closure:
                    forward += ic[ancestor]
                    break
        forward /= self.best_total
        backward = 0.0
        norm = 0.0
        for term, weight in zip(disease.terms, disease.weights, strict=True):
            backward += weight * self._to_patient(term)
            norm += weight * ic[term]
        backward = backward / norm if norm else 0.0
        score = (1 - DISEASE_SIDE_WEIGHT) * min(forward, 1.0) + DISEASE_SIDE_WEIGHT * min(backward, 1.0)
        for term in self.excluded:
            if term in closure:
                frequency = max(
                    (w for d, w in zip(disease.terms, disease.weights, strict=True) if term in onto.ancestor_sets[d]),
                    default=1.0,
                )
                score *= 1 - 0.7 * frequency
        if disease.excluded:
            for term in self.present:
                if disease.excluded & onto.ancestor_sets[term]:
                    score *= 0.5
        self._disease_cache[disease.id] = score
        return score

    def shared_terms(self, disease: Disease, limit: int = 3) -> list[int]:
        """The patient terms the disease explains best (for the explanation)."""
        closure = disease.closure or _closure(self.onto, disease.terms)
        scored = []
        for term in self.present:
            for ancestor in self.onto.ancestors[term]:
                if ancestor in closure:
                    scored.append((self._ic[ancestor], term))
                    break
        return [t for _, t in sorted(scored, reverse=True)[:limit]]


def _closure(onto: Ontology, terms: Iterable[int]) -> frozenset[int]:
    acc: set[int] = set()
    for term in terms:
        acc |= onto.ancestor_sets[term]
    return frozenset(acc)


# -- genes -----------------------------------------------------------------------------------


def prioritize(
    onto: Ontology,
    profile: Profile,
    calls: Iterable[Call],
    sex: str = "unknown",
    phases: Mapping[frozenset[str], str] | None = None,
    family: Family | None = None,
    count: int = 20,
    min_variant_score: float = 0.05,
) -> list[GeneResult]:
    """The ``count`` best genes for the patient, best first."""
    by_gene: dict[str, list[tuple[Call, float]]] = {}
    for call in calls:
        if not call.gene:
            continue
        score = variant_score(call)
        if score >= min_variant_score:
            by_gene.setdefault(call.gene, []).append((call, score))
    matcher = PhenotypeMatcher(onto, profile) if profile.present else None
    results: list[GeneResult] = []
    for gene, scored in by_gene.items():
        scored.sort(key=lambda cs: -cs[1])
        diseases = onto.gene_diseases.get(gene, [])
        best: tuple[float, float, float, str, list[Call]] = (0.0, 0.0, 0.0, "", [])
        best_disease: Disease | None = None
        matched: list[tuple[Disease, float]] = []
        for disease in diseases:
            pheno = matcher.disease(disease) if matcher else 1.0
            modes = disease.inheritance & {"AD", "AR", "XR", "XD", "XL", "MT", "YL", "SP", "SM"} or {""}
            for mode in sorted(modes):
                geno, used = genotype_score(mode, scored, sex, phases, family)
                if disease.inherited_modes:
                    geno *= 0.9  # the mode is the gene's, not annotated on this disease
                total = (pheno**PHENOTYPE_POWER) * geno
                if total > best[0]:
                    best = (total, pheno, geno, mode, used)
                    best_disease = disease
            matched.append((disease, pheno))
        if not diseases:
            geno, used = genotype_score("", scored, sex, phases, family)
            best = (geno * (0.0 if matcher else 0.2), 0.0, geno, "", used)
        total, pheno, geno, mode, used = best
        # the disease that gave the score first, then the others by phenotype match
        matched.sort(key=lambda dp: (dp[0] is not best_disease, -dp[1]))
        used_scores = {c.id: s for c, s in scored}
        result = GeneResult(
            gene=gene,
            score=total,
            phenotype_score=pheno,
            variant_score=geno,
            mode=mode,
            diseases=matched[:3],
            calls=[(c, used_scores[c.id], family.origin(c) if family else None) for c in used],
        )
        results.append(result)
    results.sort(key=lambda r: (-r.score, -r.variant_score, r.gene))
    top = results[:count]
    for result in top:
        result.explanation = _explain(onto, result, matcher)
    return top


_MODE_NAMES = {
    "AD": "autosomal dominant",
    "AR": "autosomal recessive",
    "XR": "X-linked recessive",
    "XD": "X-linked dominant",
    "XL": "X-linked",
    "MT": "mitochondrial",
    "YL": "Y-linked",
    "SP": "sporadic",
    "SM": "somatic mosaic",
    "": "inheritance unknown",
}


def _explain(onto: Ontology, result: GeneResult, matcher: PhenotypeMatcher | None) -> str:
    parts: list[str] = []
    for call, _score, origin in result.calls:
        bits = [call.label()]
        if call.zygosity:
            bits.append(call.zygosity[:3] if call.zygosity in ("heterozygous", "homozygous") else call.zygosity)
        if call.consequences:
            bits.append(call.consequences[0].replace("_variant", "").replace("_", " "))
        if call.clinvar:
            bits.append(f"ClinVar {call.clinvar}")
        if origin:
            bits.append(origin)
        parts.append(" ".join(bits))
    variants = "; ".join(parts) or "no qualifying variant"
    if not result.diseases:
        return f"{result.gene}: {variants}; no HPO-annotated disease"
    disease, pheno = result.diseases[0]
    text = f"{result.gene}: {variants} fits {_MODE_NAMES.get(result.mode, result.mode)} {disease.name} ({disease.id})"
    if matcher is not None:
        shared = [onto.names[t] for t in matcher.shared_terms(disease)]
        text += f", phenotype match {pheno:.2f}" + (f" ({', '.join(shared)})" if shared else "")
    return text


# -- patients --------------------------------------------------------------------------------


def _one_way(onto: Ontology, source: Sequence[int], target_closure: frozenset[int]) -> float:
    total = 0.0
    for term in source:
        for ancestor in onto.ancestors[term]:
            if ancestor in target_closure:
                total += onto.ic[ancestor]
                break
    return total


def patient_similarity(onto: Ontology, a: Sequence[int], b: Sequence[int]) -> tuple[float, list[int]]:
    """Symmetric Resnik BMA of two term sets normalised to [0, 1], and a's terms shared with b's closure."""
    if not a or not b:
        return 0.0, []
    ca, cb = _closure(onto, a), _closure(onto, b)
    ab = _one_way(onto, a, cb) / max(_one_way(onto, a, ca), 1e-9)
    ba = _one_way(onto, b, ca) / max(_one_way(onto, b, cb), 1e-9)
    shared = [t for t in a if t in cb]
    return (ab + ba) / 2, shared
