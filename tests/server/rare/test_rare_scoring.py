"""Properties of the prioritisation (server/rare/scoring.py) on real HPO diseases and genes.

FBN1: Marfan syndrome (autosomal dominant). CFTR: cystic fibrosis (autosomal recessive; CFTR
also has dominant pancreatitis, so the tests that need a recessive-only gene use others).
DMD: Duchenne muscular dystrophy (X-linked recessive).
"""

from __future__ import annotations

import itertools
from typing import Any

import pytest

from server.rare.hpo import Ontology, ontology
from server.rare.scoring import (
    Call,
    Family,
    PhenotypeMatcher,
    Profile,
    frequency_factor,
    genotype_score,
    patient_similarity,
    prioritize,
    variant_score,
)

MARFAN = ["HP:0001166", "HP:0001083", "HP:0002616"]  # arachnodactyly, ectopia lentis, aortic root aneurysm
CF = ["HP:0002110", "HP:0001738", "HP:0006528"]  # bronchiectasis, exocrine pancreatic insufficiency, chronic lung
DUCHENNE = ["HP:0003560", "HP:0003236"]  # muscular dystrophy, elevated CK
_ids = itertools.count()


@pytest.fixture(scope="module")
def onto() -> Ontology:
    return ontology()


def terms(onto: Ontology, ids: list[str]) -> list[int]:
    return [onto.index[t] for t in ids]


def call(gene: str, zygosity: str = "heterozygous", consequence: str = "stop_gained", **kw: Any) -> Call:
    n = next(_ids)
    kw.setdefault("chromosome", "X" if gene == "DMD" else "7")
    return Call(id=f"v{n}", gene=gene, start=1000 + n, ref="A", alt="T", zygosity=zygosity,
                consequences=(consequence,), **kw)  # fmt: skip


def rank_of(results: list[Any], gene: str) -> int:
    return next(i for i, r in enumerate(results, 1) if r.gene == gene)


def test_variant_score_orders_consequence_clinvar_frequency_and_quality() -> None:
    lof, missense, synonymous = (variant_score(call("G", consequence=c)) for c in
                                 ("frameshift_variant", "missense_variant", "synonymous_variant"))  # fmt: skip
    assert lof > missense > synonymous
    assert variant_score(call("G", consequence="synonymous_variant", clinvar="pathogenic")) > missense
    assert variant_score(call("G", consequence="missense_variant", clinvar="benign")) < missense
    assert variant_score(call("G", population_af=0.005)) < variant_score(call("G", population_af=0.00001))
    assert variant_score(call("G", population_af=0.05)) == 0.0
    assert variant_score(call("G", filtered=True)) < lof
    assert variant_score(call("G", allele_fraction=0.05)) < lof
    assert frequency_factor(None) == 1.0 and frequency_factor(0.02) < 0.2


def test_recessive_needs_two_hits_dominant_one() -> None:
    het = call("G")
    hom = call("G", "homozygous")
    second = call("G", consequence="missense_variant")
    one_het_ar, _ = genotype_score("AR", [(het, 1.0)], "female")
    assert genotype_score("AD", [(het, 1.0)], "female")[0] == 1.0
    assert one_het_ar < 0.5
    assert genotype_score("AR", [(hom, 1.0)], "female")[0] == 1.0
    compound, used = genotype_score("AR", [(het, 1.0), (second, 0.6)], "female")
    assert compound == pytest.approx(0.8) and {c.id for c in used} == {het.id, second.id}
    # known in cis (phase Observation, or both from the same parent): not a compound heterozygote
    in_cis, _ = genotype_score("AR", [(het, 1.0), (second, 0.6)], "female", {frozenset((het.id, second.id)): "cis"})
    assert in_cis < 0.5
    same_parent = Family(mother={het.key, second.key}, father=set())
    assert genotype_score("AR", [(het, 1.0), (second, 0.6)], "female", family=same_parent)[0] < 0.5
    both_parents = Family(mother={het.key}, father={second.key})
    assert genotype_score("AR", [(het, 1.0), (second, 0.6)], "female", family=both_parents)[0] == pytest.approx(0.8)


def test_x_linked_recessive_depends_on_sex() -> None:
    x = call("DMD")
    assert genotype_score("XR", [(x, 1.0)], "male")[0] == 1.0
    assert genotype_score("XR", [(x, 1.0)], "female")[0] < 0.5
    assert genotype_score("XR", [(call("DMD", "homozygous"), 1.0)], "female")[0] == 1.0


def test_the_matching_disease_gene_ranks_first_and_ar_needs_its_genotype(onto: Ontology) -> None:
    profile = Profile(present=terms(onto, CF))
    background = [call("FBN1"), call("DMD", consequence="missense_variant"), call("TTN", clinvar="pathogenic")]
    cftr_hom = call("CFTR", "homozygous", "frameshift_variant")
    results = prioritize(onto, profile, [*background, cftr_hom], "female")
    assert results[0].gene == "CFTR" and results[0].mode == "AR"
    assert "Cystic fibrosis" in results[0].explanation and "OMIM:219700" in results[0].explanation
    assert [c.id for c, _, _ in results[0].calls] == [cftr_hom.id]
    # the same variant heterozygous: cystic fibrosis no longer fits; CFTR's dominant disease
    # (bronchiectasis, OMIM:211400) explains the lung findings less well, so the score drops
    cftr_het = call("CFTR", "heterozygous", "frameshift_variant")
    het = next(r for r in prioritize(onto, profile, [*background, cftr_het], "female") if r.gene == "CFTR")
    assert het.score < results[0].score and het.mode == "AD"
    assert het.diseases[0][0].id != "OMIM:219700" and "autosomal dominant" in het.explanation


def test_dominant_gene_with_one_variant(onto: Ontology) -> None:
    profile = Profile(present=terms(onto, MARFAN))
    results = prioritize(onto, profile, [call("CFTR", "homozygous"), call("FBN1", consequence="missense_variant")])
    assert results[0].gene == "FBN1" and results[0].mode == "AD"
    assert "OMIM:154700" in {d.id for d, _ in results[0].diseases}  # Marfan syndrome among the best three


def test_excluded_phenotypes_count_against_a_disease(onto: Ontology) -> None:
    marfan = onto.diseases["OMIM:154700"]
    plain = PhenotypeMatcher(onto, Profile(present=terms(onto, MARFAN[:2]))).disease(marfan)
    excluding = PhenotypeMatcher(
        onto, Profile(present=terms(onto, MARFAN[:2]), excluded=terms(onto, ["HP:0002616"]))
    ).disease(marfan)
    unrelated_exclusion = PhenotypeMatcher(
        onto, Profile(present=terms(onto, MARFAN[:2]), excluded=terms(onto, ["HP:0001250"]))
    ).disease(marfan)
    assert excluding < plain
    assert unrelated_exclusion == pytest.approx(plain)  # Marfan has no seizures: excluding them costs nothing


def test_phenotype_score_prefers_the_right_disease_and_is_normalised(onto: Ontology) -> None:
    matcher = PhenotypeMatcher(onto, Profile(present=terms(onto, MARFAN)))
    marfan, cf = onto.diseases["OMIM:154700"], onto.diseases["OMIM:219700"]
    assert 0.0 <= matcher.disease(cf) < matcher.disease(marfan) <= 1.0


def test_de_novo_ranks_up(onto: Ontology) -> None:
    # two dominant genes, each with one variant and the same phenotype evidence (none): variant only
    fbn1, scn1a = call("FBN1"), call("SCN1A")
    inherited = Family(mother={fbn1.key}, father=set())
    results = prioritize(onto, Profile(), [fbn1, scn1a], "male", family=Family(mother=set(), father=set()))
    assert results[0].score == pytest.approx(results[1].score)  # both de novo: a tie
    results = prioritize(onto, Profile(), [fbn1, scn1a], "male", family=inherited)
    assert [r.gene for r in results[:2]] == ["SCN1A", "FBN1"]
    assert results[0].calls[0][2] == "de novo" and results[1].calls[0][2] == "maternal"
    # and with phenotypes pointing at FBN1, a de novo FBN1 variant scores higher than an inherited one
    profile = Profile(present=terms(onto, MARFAN))
    de_novo = prioritize(onto, profile, [fbn1], family=Family(mother=set(), father=set()))[0]
    from_mother = prioritize(onto, profile, [fbn1], family=inherited)[0]
    assert de_novo.score > from_mother.score


def test_without_phenotypes_variants_alone_rank(onto: Ontology) -> None:
    results = prioritize(onto, Profile(), [call("FBN1", consequence="synonymous_variant"), call("TTN")])
    assert results[0].gene == "TTN" and results[0].phenotype_score == 1.0


def test_patient_similarity(onto: Ontology) -> None:
    marfan = terms(onto, MARFAN)
    same, shared = patient_similarity(onto, marfan, marfan)
    assert same == pytest.approx(1.0) and shared == marfan
    close, _ = patient_similarity(onto, marfan, terms(onto, MARFAN[:2]))
    far, _ = patient_similarity(onto, marfan, terms(onto, CF))
    assert 1.0 >= close > far >= 0.0
    assert patient_similarity(onto, marfan, [])[0] == 0.0
