"""``server.rare.variants`` reads what ``mappers.vcf`` writes, population allele frequency included."""

from __future__ import annotations

from pathlib import Path

from mappers.vcf import map_vcf
from server.rare.scoring import frequency_factor, variant_score
from server.rare.variants import read_variants

DATA = Path(__file__).resolve().parents[2] / "data" / "vcf"


def test_population_frequency_from_the_vcf_reaches_the_scoring() -> None:
    resources = list(map_vcf(DATA / "population_af_grch38.vcf", "p1").resources())
    calls = {(c.start, c.alt): c for c in read_variants(resources).calls}
    fbn1 = calls[(48500000, "T")]
    assert fbn1.gene == "FBN1" and fbn1.population_af == 0.0001
    assert calls[(117500000, "A")].population_af == 0.002  # CSQ MAX_AF
    assert calls[(117500100, "T")].population_af == 0.0
    assert calls[(117500200, "C")].population_af is None  # cohort INFO/AF only: unknown
    # the frequency lowers the variant score (Exomiser's factor), unknown leaves it alone
    assert variant_score(calls[(117500000, "A")]) == 0.6 * frequency_factor(0.002) < 0.6
    assert frequency_factor(None) == 1.0
