"""Rare-disease prioritisation on simulated cases: figures for the README (not a test).

    python bench/rare.py [--cases 200] [--seed 1] [--background 5000] [--decoys 20] [--store 0]

The field's standard evaluation (Exomiser, LIRICAL, Phen2Gene all report it): for each case

1. pick a disease with a known gene and a known mode of inheritance from the HPO annotations
   (OMIM, at least 3 phenotype terms), and a sex (male for X-linked recessive);
2. build a background of ``--background`` annotated variant calls: 75 % in genes no HPO disease
   names (``NONDISEASE…``), 25 % in random disease genes; consequences, population allele
   frequencies, zygosity and ClinVar classes drawn from exome-like proportions (mostly common
   synonymous/missense/intronic calls, ~2 % loss of function, common ones often ClinVar benign);
3. add ``--decoys`` ClinVar pathogenic/likely pathogenic rare heterozygous calls in unrelated
   disease genes (carriers, incidental findings) and one rare homozygous loss-of-function call
   in an unrelated gene;
4. add the causal variant(s) with the zygosity the inheritance needs: autosomal recessive half
   homozygous, half compound heterozygous; dominant heterozygous; X-linked recessive
   hemizygous; consequence loss of function (50 %), missense (40 %) or in-frame/splice (10 %);
   ClinVar pathogenic/likely pathogenic for half of them, none for the rest; rare or absent AF;
5. give the patient 3-8 of the disease's phenotype terms (drawn by annotated frequency), a
   third of them replaced by a broader ancestor (parent or grandparent), plus 1-2 unrelated terms
   (annotations of random other diseases);
6. run the prioritisation (:func:`server.rare.scoring.prioritize`, the domain function the
   ``$prioritize-variants`` operation calls) and record the causal gene's rank and the time.

``--store N`` also runs the first N cases through the server: the calls become Genomics
Reporting variant/consequence/implication Observations and the phenotypes Observations, written
to a fresh SQLite store, then ``Patient/{id}/$prioritize-variants`` (the domain function of the
operation) answers; reports its time (first call, which reads and parses the Observations) and
that it ranks like the in-process run. Each case is also stored a second time (``caseN-cds``)
for the CDS ``genomic-findings`` patient-view call (``fhirServer`` = this server, the hook's
domain function without HTTP/JWT): the first call's latency and card (genes, or "being ranked"
when the ranking exceeds ``BIGMED_CDS_RARE_BUDGET_MS``), and the next call's once the ranking is
done. The ontology is already loaded by then (a fresh process adds 2-3 s unless preloaded).

Prints top-1/top-5/top-10 shares, the time per case (p50/p95/max), and where it fails.
The tuning constants of :mod:`server.rare.scoring` were set on ``--seed 7``; report other seeds.
"""

from __future__ import annotations

import argparse
import random
import statistics
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Sequence
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from server.rare.hpo import Disease, Ontology, ontology  # noqa: E402
from server.rare.scoring import Call, Profile, prioritize  # noqa: E402

CHROMOSOMES = [str(n) for n in range(1, 23)]
BACKGROUND_CONSEQUENCES = [
    ("synonymous_variant", 30),
    ("missense_variant", 30),
    ("intron_variant", 15),
    ("3_prime_UTR_variant", 6),
    ("5_prime_UTR_variant", 3),
    ("splice_region_variant", 4),
    ("inframe_deletion", 1),
    ("inframe_insertion", 1),
    ("upstream_gene_variant", 4),
    ("downstream_gene_variant", 4),
    ("stop_gained", 0.8),
    ("frameshift_variant", 0.8),
    ("splice_donor_variant", 0.2),
    ("splice_acceptor_variant", 0.2),
]
CAUSAL_CONSEQUENCES = [
    ("stop_gained", 20),
    ("frameshift_variant", 20),
    ("splice_donor_variant", 5),
    ("splice_acceptor_variant", 5),
    ("missense_variant", 40),
    ("inframe_deletion", 5),
    ("splice_region_variant", 5),
]


def _weighted(rng: random.Random, table: Sequence[tuple[str, float]]) -> str:
    return rng.choices([t for t, _ in table], weights=[w for _, w in table])[0]


class Simulator:
    def __init__(self, onto: Ontology, seed: int, background: int, decoys: int) -> None:
        self.onto = onto
        self.rng = random.Random(seed)
        self.background = background
        self.decoys = decoys
        self.disease_genes = sorted(onto.gene_diseases)
        self.gene_chromosome = {g: self.rng.choice(CHROMOSOMES) for g in self.disease_genes}
        for gene in self.disease_genes:
            if any(d.inheritance & {"XR", "XD", "XL"} and not d.inherited_modes for d in onto.gene_diseases[gene]):
                self.gene_chromosome[gene] = "X"
        self.candidates = [
            d
            for d in onto.diseases.values()
            if d.id.startswith("OMIM:")
            and len(d.genes) == 1
            and not d.inherited_modes
            and len(d.terms) >= 3
            and len(d.inheritance & {"AD", "AR", "XR", "XD"}) == 1
        ]
        self.candidates.sort(key=lambda d: d.id)
        self.annotated = sorted({t for d in onto.diseases.values() for t in d.terms})
        self.counter = 0

    def _call(self, gene: str, chromosome: str, **kw: Any) -> Call:
        self.counter += 1
        return Call(
            id=f"v{self.counter}",
            gene=gene,
            chromosome=chromosome,
            start=self.rng.randrange(1, 200_000_000),
            ref="A",
            alt="G",
            **kw,
        )

    def _background(self) -> list[Call]:
        rng, calls = self.rng, []
        for _ in range(self.background):
            if rng.random() < 0.25:
                gene = rng.choice(self.disease_genes)
                chromosome = self.gene_chromosome[gene]
            else:
                gene = f"NONDISEASE{rng.randrange(15000)}"
                chromosome = rng.choice(CHROMOSOMES)
            consequence = _weighted(rng, BACKGROUND_CONSEQUENCES)
            roll = rng.random()
            af: float | None
            if roll < 0.85:
                af = 10 ** rng.uniform(-2, -0.3)
            elif roll < 0.95:
                af = 10 ** rng.uniform(-4, -2)
            else:
                af = None if rng.random() < 0.5 else 10 ** rng.uniform(-5.5, -4)
            common = af is not None and af > 0.01
            zygosity = "homozygous" if common and rng.random() < 0.35 else "heterozygous"
            clinvar = None
            if common and rng.random() < 0.1:
                clinvar = rng.choice(["benign", "likely benign"])
            elif not common and rng.random() < 0.05:
                clinvar = "uncertain significance"
            calls.append(
                self._call(gene, chromosome, zygosity=zygosity, consequences=(consequence,), population_af=af,
                           clinvar=clinvar)
            )  # fmt: skip
        return calls

    def _decoys(self, causal_gene: str) -> list[Call]:
        rng, calls = self.rng, []
        for _ in range(self.decoys):
            gene = rng.choice(self.disease_genes)
            if gene == causal_gene:
                continue
            consequence = rng.choice(["stop_gained", "frameshift_variant", "missense_variant"])
            calls.append(
                self._call(gene, self.gene_chromosome[gene], zygosity="heterozygous", consequences=(consequence,),
                           clinvar=rng.choice(["pathogenic", "likely pathogenic"]),
                           population_af=10 ** rng.uniform(-5, -3))
            )  # fmt: skip
        gene = f"NONDISEASE{rng.randrange(15000)}"
        calls.append(self._call(gene, "1", zygosity="homozygous", consequences=("stop_gained",), population_af=None))
        return calls

    def _causal(self, gene: str, mode: str, chromosome: str) -> list[Call]:
        rng = self.rng

        def one(zygosity: str) -> Call:
            clinvar = rng.choice(["pathogenic", "likely pathogenic"]) if rng.random() < 0.5 else None
            af = None if rng.random() < 0.6 else 10 ** rng.uniform(-5.5, -4)
            consequence = _weighted(rng, CAUSAL_CONSEQUENCES)
            return self._call(gene, chromosome, zygosity=zygosity, consequences=(consequence,), clinvar=clinvar,
                              population_af=af)  # fmt: skip

        if mode == "AR":
            return [one("homozygous")] if rng.random() < 0.5 else [one("heterozygous"), one("heterozygous")]
        if mode == "XR":
            return [one("hemizygous")]
        return [one("heterozygous")]

    def _phenotypes(self, disease: Disease) -> list[int]:
        rng, onto = self.rng, self.onto
        pool = [(t, w) for t, w in zip(disease.terms, disease.weights, strict=True) if w > 0]
        n = min(len(pool), rng.randint(3, 8))
        chosen: list[int] = []
        while len(chosen) < n and pool:
            term = rng.choices([t for t, _ in pool], weights=[w for _, w in pool])[0]
            pool = [(t, w) for t, w in pool if t != term]
            chosen.append(term)
        terms = []
        for chosen_term in chosen:
            term = chosen_term
            if rng.random() < 1 / 3 and onto.parents[term]:
                term = rng.choice(onto.parents[term])
                if rng.random() < 0.5 and onto.parents[term]:
                    term = rng.choice(onto.parents[term])
            terms.append(term)
        for _ in range(rng.randint(1, 2)):
            terms.append(rng.choice(self.annotated))
        rng.shuffle(terms)
        return [t for t in dict.fromkeys(terms) if t in onto.phenotype_terms]

    def case(self) -> dict[str, Any]:
        rng = self.rng
        disease = rng.choice(self.candidates)
        gene = disease.genes[0]
        mode = next(iter(disease.inheritance & {"AD", "AR", "XR", "XD"}))
        chromosome = "X" if mode in ("XR", "XD") else self.gene_chromosome.get(gene, "1")
        sex = "male" if mode == "XR" else rng.choice(["male", "female"])
        calls = self._background() + self._decoys(gene) + self._causal(gene, mode, chromosome)
        rng.shuffle(calls)
        return {"disease": disease, "gene": gene, "mode": mode, "sex": sex, "calls": calls,
                "terms": self._phenotypes(disease)}  # fmt: skip


def _rank(results: list[Any], gene: str) -> int | None:
    for i, result in enumerate(results, 1):
        if result.gene == gene:
            return i
    return None


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--cases", type=int, default=200)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--background", type=int, default=5000)
    parser.add_argument("--decoys", type=int, default=20)
    parser.add_argument("--store", type=int, default=0, help="also run the first N cases through the server")
    parser.add_argument("--verbose", action="store_true", help="print every case that misses the top 10")
    args = parser.parse_args()

    started = time.perf_counter()
    onto = ontology()
    print(f"HPO {onto.release} (annotations {onto.annotation_release}) loaded in {time.perf_counter() - started:.1f} s")
    sim = Simulator(onto, args.seed, args.background, args.decoys)
    ranks: list[int | None] = []
    times: list[float] = []
    by_mode: dict[str, list[int | None]] = {}
    misses: list[str] = []
    cases = []
    for _ in range(args.cases):
        case = sim.case()
        cases.append(case)
        t0 = time.perf_counter()
        results = prioritize(onto, Profile(present=case["terms"]), case["calls"], case["sex"], count=50)
        times.append(time.perf_counter() - t0)
        rank = _rank(results, case["gene"])
        ranks.append(rank)
        by_mode.setdefault(case["mode"], []).append(rank)
        if rank is None or rank > 10:
            top = results[0] if results else None
            misses.append(
                f"  {case['disease'].id} {case['gene']} ({case['mode']}, {len(case['terms'])} terms): rank {rank}; "
                f"top {top.gene if top else '-'} {top.score if top else 0:.3f}"
            )

    def share(limit: int, values: list[int | None]) -> str:
        hits = sum(1 for r in values if r is not None and r <= limit)
        return f"{100 * hits / max(len(values), 1):.1f} %"

    n = len(ranks)
    print(f"{n} cases, {args.background} background calls + {args.decoys} decoys each, seed {args.seed}")
    print(f"top-1 {share(1, ranks)}   top-5 {share(5, ranks)}   top-10 {share(10, ranks)}")
    times.sort()
    print(
        f"time per case: p50 {1000 * statistics.median(times):.0f} ms, "
        f"p95 {1000 * times[int(0.95 * (n - 1))]:.0f} ms, max {1000 * times[-1]:.0f} ms"
    )
    for mode, values in sorted(by_mode.items()):
        print(f"  {mode}: {len(values)} cases, top-1 {share(1, values)}, top-10 {share(10, values)}")
    reasons = Counter("not ranked" if r is None else ("11-50" if r > 10 else "ok") for r in ranks)
    print(f"outside the top 10: {n - reasons['ok']} ({reasons['not ranked']} not in the top 50)")
    if args.verbose:
        print("\n".join(misses))
    if args.store:
        _through_store(cases[: args.store], onto)


_LOINC = "http://loinc.org"
_TBD = "http://hl7.org/fhir/uv/genomics-reporting/CodeSystem/tbd-codes-cs"
_ZYGOSITY = {"heterozygous": "LA6706-1", "homozygous": "LA6705-3", "hemizygous": "LA6707-9"}
_CLINVAR = {"pathogenic": "LA6668-3", "likely pathogenic": "LA26332-9", "uncertain significance": "LA26333-7",
            "likely benign": "LA26334-5", "benign": "LA6675-8"}  # fmt: skip
_CHROMOSOME_ACCESSION = {str(n): f"NC_0000{n:02d}.11" for n in range(1, 23)} | {"X": "NC_000023.11"}


def _loinc(code: str) -> dict[str, Any]:
    return {"coding": [{"system": _LOINC, "code": code}]}


def case_resources(patient: str, sex: str, terms: list[str], calls: list[Call]) -> list[dict[str, Any]]:
    """A simulated case as the FHIR resources the server holds after $ingest-vcf and phenotyping."""
    subject = {"reference": f"Patient/{patient}"}
    out: list[dict[str, Any]] = [{"resourceType": "Patient", "id": patient, "gender": sex}]
    for i, term in enumerate(terms):
        out.append({"resourceType": "Observation", "id": f"{patient}-hpo{i}", "status": "final",
                    "code": {"coding": [{"system": "http://human-phenotype-ontology.org", "code": term}]},
                    "subject": subject, "valueCodeableConcept": _loinc("LA9633-4")})  # fmt: skip
    for call in calls:
        vid = f"{patient}-{call.id}"
        components = [
            {"code": _loinc("48018-6"), "valueCodeableConcept": {"text": call.gene}},
            {"code": _loinc("48013-7"), "valueCodeableConcept": {"coding": [
                {"system": "http://www.ncbi.nlm.nih.gov/refseq", "code": _CHROMOSOME_ACCESSION[call.chromosome]}]}},
            {"code": _loinc("81254-5"),
             "valueRange": {"low": {"value": call.start}, "high": {"value": call.start + 1}}},
            {"code": _loinc("69547-8"), "valueString": call.ref},
            {"code": _loinc("69551-0"), "valueString": call.alt},
            {"code": _loinc("53034-5"), "valueCodeableConcept": _loinc(_ZYGOSITY[call.zygosity])},
        ]  # fmt: skip
        if call.population_af is not None:
            components.append({"code": _loinc("92821-8"), "valueQuantity": {"value": round(call.population_af, 8)}})
        out.append(
            {
                "resourceType": "Observation",
                "id": vid,
                "status": "final",
                "code": _loinc("69548-6"),
                "subject": subject,
                "valueCodeableConcept": _loinc("LA9633-4"),
                "component": components,
            }
        )
        out.append(
            {
                "resourceType": "Observation",
                "id": f"{vid}-mc",
                "status": "final",
                "code": {"coding": [{"system": _TBD, "code": "molecular-consequence"}]},
                "subject": subject,
                "focus": [{"reference": f"Observation/{vid}"}],
                "component": [
                    {
                        "code": {"coding": [{"system": _TBD, "code": "feature-consequence"}]},
                        "valueCodeableConcept": {"text": c},
                    }
                    for c in call.consequences
                ],
            }
        )
        if call.clinvar:
            out.append({"resourceType": "Observation", "id": f"{vid}-di", "status": "final",
                        "code": {"coding": [{"system": _TBD, "code": "diagnostic-implication"}]}, "subject": subject,
                        "derivedFrom": [{"reference": f"Observation/{vid}"}],
                        "component": [{"code": _loinc("53037-8"),
                                       "valueCodeableConcept": _loinc(_CLINVAR[call.clinvar])}]})  # fmt: skip
    return out


def _through_store(cases: list[dict[str, Any]], onto: Ontology) -> None:
    import json

    from server import create_app
    from server.config import Config
    from server.fhir.load import load
    from server.fhir.operations import rare

    with tempfile.TemporaryDirectory() as tmp:
        app = create_app(Config(database_url=f"sqlite:///{tmp}/rare.sqlite"))
        ctx = app.extensions["bigmed"]
        agree, times, warm = 0, [], []
        cds_first: list[tuple[float, str]] = []
        cds_next: list[float] = []
        for i, case in enumerate(cases):
            patient = f"case{i}"
            for pid in (patient, f"{patient}-cds"):
                path = Path(tmp) / f"{pid}.ndjson"
                resources = case_resources(pid, case["sex"], [onto.ids[t] for t in case["terms"]], case["calls"])
                path.write_text("\n".join(json.dumps(r) for r in resources) + "\n")
                load(ctx, [path], progress=False, workers=0)
            cds_first.append(_cds_call(ctx, f"{patient}-cds"))
            for _ in range(600):  # the ranking goes on in the background: wait for it, then the next view
                elapsed, summary = _cds_call(ctx, f"{patient}-cds")
                if not summary.startswith("Rare-disease candidate genes are being ranked"):
                    break
                time.sleep(0.05)
            cds_next.append(elapsed)
            t0 = time.perf_counter()
            answer = rare.prioritize_variants(ctx, patient, [("count", "10")])
            times.append(time.perf_counter() - t0)
            t0 = time.perf_counter()
            rare.prioritize_variants(ctx, patient, [("count", "10")])
            warm.append(time.perf_counter() - t0)
            genes = [p["valueString"] for g in answer["parameter"] if g["name"] == "gene"
                     for p in g["part"] if p["name"] == "symbol"]  # fmt: skip
            in_process = prioritize(onto, Profile(present=case["terms"]), case["calls"], case["sex"], count=10)
            agree += genes == [r.gene for r in in_process]
        print(
            f"through the store (SQLite, {len(resources)} resources per case): {len(cases)} cases, same ranking as "
            f"in-process in {agree}; $prioritize-variants first call p50 {1000 * statistics.median(times):.0f} ms "
            f"(max {1000 * max(times):.0f}), cached p50 {1000 * statistics.median(warm):.0f} ms"
        )
        firsts = ", ".join(f"{1000 * t:.0f} ms ({card[:60]})" for t, card in cds_first)
        print(f"CDS genomic-findings (budget {ctx.config.cds_rare_budget_ms} ms), first view: {firsts}")
        print(f"CDS genomic-findings, next view once ranked: p50 {1000 * statistics.median(cds_next):.0f} ms")


def _cds_call(ctx: Any, patient: str) -> tuple[float, str]:
    """One genomic-findings patient-view call on this server's record: (seconds, candidate card summary)."""
    from server.cds.hooks import call_service
    from server.cds.services.rare_candidates import SOURCE

    base = "http://bench.local/fhir"
    body = {"hook": "patient-view", "hookInstance": f"bench-{time.monotonic()}", "fhirServer": base,
            "context": {"patientId": patient, "userId": "Practitioner/bench"}}  # fmt: skip
    t0 = time.perf_counter()
    answer = call_service(ctx, "genomic-findings", body, own_bases={base}, ui_base="http://bench.local")
    elapsed = time.perf_counter() - t0
    card = next((c["summary"] for c in answer["cards"] if c["source"] == SOURCE), "no candidate card")
    return elapsed, card


if __name__ == "__main__":
    main()
