"""``$call-pgx``: pharmacogenomic calls (star-allele diplotypes, CPIC phenotypes) stored for a Patient.

GitHub issue 7 (calling on ingest and on demand). The calling itself is :mod:`mappers.pgx`
(method: ``docs/pgx.md``); this module feeds it, and stores its HL7 Genomics Reporting output
(http://hl7.org/fhir/uv/genomics-reporting/STU3/): per called gene a Genotype Observation
(LOINC 84413-4) ``derivedFrom`` the variant Observations it used and a TherapeuticImplication
``derivedFrom`` the Genotype.

Two ways in:

- **On ingest** (:func:`calls_from_file`, then :func:`call_in_ingest` inside the ingestion's own
  transaction; :mod:`server.fhir.operations.ingest_vcf` may read the calls in a process of its own
  while the variants are written): the calls are read from the VCF itself, so reference calls
  (``0/0``) and no-calls at the definition positions are known. Somatic ingestions and builds
  other than GRCh38 are not called (the reason is reported, nothing is assumed).
- **On demand** (:func:`call_pgx`: ``POST /fhir/Patient/{id}/$call-pgx``, ``python -m server
  call-pgx --patient ID``): from the germline variant Observations already stored (read through
  the range index, :mod:`server.fhir.operations.variant_ranges`). The store keeps only
  non-reference calls, so by default a definition position without a stored variant is *missing*
  and the call says so (uncertain, candidates listed, never silently ``*1``); with
  ``assume_reference`` (for whole-gene / exome data) such positions are read as homozygous
  reference. Stored variants carry no phase: calls from the store are unphased.

**Replacing, not duplicating.** Resource ids are the mapper's uuid5 of patient, gene and observed
genotypes (same data, same ids). Per gene that got a call, the Patient's earlier Genotype and
TherapeuticImplication Observations written by this module (``method.text`` starting with
:data:`METHOD_MARK`; the implication found by its ``derivedFrom``) that the new call does not
reuse are deleted, and an unchanged resource is not written again (no new version). A gene
without data at any definition position keeps its earlier result. On demand, a Genotype called
from a VCF is kept when the stored variants are exactly those it was derived from and the
definitions are the same (the VCF also saw the reference calls the store lacks).
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from mappers import genomics_codes as gc
from mappers import pgx
from server import jsonio
from server.errors import BadRequest
from server.fhir import crud
from server.fhir.context import FhirContext
from server.fhir.operations.variant_ranges import overlap_sql
from server.fhir.resource import check_id
from server.knowledge.pgx import load_tables
from server.search.query import build_sql, parse_search
from server.store.base import StoredResource, WriteTx

__all__ = [
    "DEFINITION",
    "METHOD_MARK",
    "OPERATION",
    "FileCalls",
    "PgxResult",
    "call_in_ingest",
    "call_pgx",
    "calls_from_file",
    "calls_from_store",
    "capabilities",
]

log = logging.getLogger(__name__)

OPERATION = "call-pgx"
DEFINITION = "http://bigmed.example/fhir/OperationDefinition/call-pgx"
#: how the Genotype Observations this module writes are recognised (``method.text`` prefix)
METHOD_MARK = "BigMed PGx calling"
_FROM_VCF = "from the VCF"
_FROM_STORE = "from stored variant Observations"
_CODES = f"{gc.LOINC}|84413-4,{gc.TBD_CODES}|therapeutic-implication"
_ALLELIC = {
    gc.ALLELIC_STATES["heterozygous"][0]: (0, 1),
    gc.ALLELIC_STATES["homozygous"][0]: (1, 1),
    gc.ALLELIC_STATES["hemizygous"][0]: (1,),
}


def capabilities() -> list[tuple[str, str, str]]:
    """(resource type, operation name, OperationDefinition canonical) for the CapabilityStatement."""
    return [("Patient", OPERATION, DEFINITION)]


@dataclass
class PgxResult:
    """What a calling run did: per gene the outcome, and resource counts."""

    patient: str
    source: str
    genes: dict[str, str] = field(default_factory=dict)  # gene -> "final *1/*2 (Normal Metabolizer)" / skip reason
    created: int = 0
    updated: int = 0
    unchanged: int = 0
    deleted: int = 0
    skipped: str | None = None  # why nothing was called at all
    resources: list[StoredResource] = field(default_factory=list)

    def summary(self) -> str:
        if self.skipped:
            return f"PGx calling for {self.patient} skipped: {self.skipped}"
        genes = "; ".join(f"{g}: {v}" for g, v in sorted(self.genes.items()))
        return (
            f"PGx calls for {self.patient} ({self.source}): {self.created} created, {self.updated} updated, "
            f"{self.unchanged} unchanged, {self.deleted} deleted. {genes}"
        )

    def as_parameters(self) -> dict[str, Any]:
        """A ``Parameters`` resource: summary, per gene outcome, and the current Observations."""
        params: list[dict[str, Any]] = [{"name": "summary", "valueString": self.summary()}]
        params += [{"name": "gene", "valueString": f"{g}: {v}"} for g, v in sorted(self.genes.items())]
        params += [
            {"name": "observation", "resource": jsonio.loads(r.content)}
            for r in self.resources
            if r.content is not None
        ]
        return {"resourceType": "Parameters", "parameter": params}


# -- reading stored variants -------------------------------------------------------------------


def _accession(chromosome: str) -> str | None:
    row = gc.refseq_chromosomes().get("GRCh38", {}).get(chromosome)
    return row.accession if row else None


def _component_values(resource: Mapping[str, Any]) -> dict[str, Any]:
    values: dict[str, Any] = {}
    for comp in resource.get("component") or ():
        code = next((c.get("code") for c in (comp.get("code") or {}).get("coding") or ()), None)
        concept = comp.get("valueCodeableConcept") or {}
        coded = next((c.get("code") for c in concept.get("coding") or ()), None)
        if code == gc.GENOMIC_REF_SEQ:
            values["chrom"] = coded
        elif code == gc.EXACT_START_END:
            values["start"] = ((comp.get("valueRange") or {}).get("low") or {}).get("value")
        elif code == gc.REF_ALLELE:
            values["ref"] = comp.get("valueString")
        elif code == gc.ALT_ALLELE:
            values["alt"] = comp.get("valueString")
        elif code == gc.ALLELIC_STATE:
            values["state"] = coded
    return values


def _stored_variants(query: Any, read: Any, patient_id: str, tables: pgx.PgxTables) -> list[tuple[str, dict[str, Any]]]:
    """(id, resource) of the Patient's current germline simple variants in the genes' regions."""
    rids: set[int] = set()
    for chromosome, first, last in tables.regions():
        accession = _accession(gc.chromosome_name(chromosome) or chromosome)
        if accession is None:
            continue
        sql, params = overlap_sql(
            accession, first - 1, last, subject=f"Patient/{patient_id}", structural=False, source_class="germline"
        )
        rids.update(int(r[0]) for r in query(sql, params))
    out = []
    for res in read(sorted(rids)):
        if res.content is not None and not res.deleted:
            out.append((res.id, jsonio.loads(res.content)))
    return out


def calls_from_store(
    resources: Iterable[tuple[str, Mapping[str, Any]]], tables: pgx.PgxTables, *, assume_reference: bool = False
) -> list[pgx.VariantCall]:
    """:class:`mappers.pgx.VariantCall` objects from stored variant Observations (unphased).

    Allelic state heterozygous -> 0/1, homozygous -> 1/1, hemizygous -> 1, absent -> 1/. (one
    allele known). ``assume_reference`` adds a 0/0 call at every definition position without one.
    """
    calls: list[pgx.VariantCall] = []
    seen: set[tuple[str, int]] = set()
    for _, resource in resources:
        v = _component_values(resource)
        if not all(v.get(k) is not None for k in ("chrom", "start", "ref", "alt")):
            continue
        chromosome = gc.chromosome_name(str(v["chrom"])) or str(v["chrom"])
        pos = int(v["start"]) + 1
        genotype: tuple[int | None, ...] = _ALLELIC.get(v.get("state") or "", (1, None))
        calls.append(pgx.VariantCall(chromosome, pos, str(v["ref"]), (str(v["alt"]),), genotype))
        seen.add((chromosome, pos))
    if assume_reference:
        for definition in tables.definitions.values():
            chromosome = gc.chromosome_name(definition.chromosome) or definition.chromosome
            for site in definition.positions:
                if (chromosome, site.position) not in seen:
                    alts = site.alts or ("N",)
                    calls.append(pgx.VariantCall(chromosome, site.position, site.ref, alts, (0, 0)))
    return calls


# -- writing -----------------------------------------------------------------------------------


def _method(call: pgx.GeneCall, source: str) -> str:
    return (
        f"{METHOD_MARK} {source} (star-allele matching of mappers.pgx, PharmCAT-style), "
        f"CPIC/PharmVar allele definitions {call.version}"
    )


def _same(current: StoredResource, resource: Mapping[str, Any]) -> bool:
    if current.deleted or current.content is None:
        return False
    stored = jsonio.loads(current.content)
    stored.get("meta", {}).pop("versionId", None)
    stored.get("meta", {}).pop("lastUpdated", None)
    new = jsonio.loads(jsonio.dumps(resource))
    new.get("meta", {}).pop("versionId", None)
    new.get("meta", {}).pop("lastUpdated", None)
    return bool(stored == new)


def _gene_of(resource: Mapping[str, Any]) -> str | None:
    for comp in resource.get("component") or ():
        codes = [c.get("code") for c in (comp.get("code") or {}).get("coding") or ()]
        if gc.GENE_STUDIED in codes:
            concept = comp.get("valueCodeableConcept") or {}
            display = next((c.get("display") for c in concept.get("coding") or () if c.get("display")), None)
            return display or concept.get("text")
    return None


def _existing(ctx: FhirContext, tx: WriteTx, patient_id: str) -> dict[str, list[tuple[str, dict[str, Any]]]]:
    """gene -> [(id, resource)] of the Genotype/TherapeuticImplication Observations this module wrote."""
    parsed = parse_search(ctx.registry, "Observation", [("patient", patient_id), ("code", _CODES)], strict=True)
    sql, params = build_sql(parsed)
    ids = [str(r[1]) for r in tx.query(sql, params)]
    found = tx.current_many([("Observation", i) for i in ids])
    genotypes: dict[str, str] = {}
    resources: dict[str, dict[str, Any]] = {}
    for (_, id_), res in found.items():
        if res.deleted or res.content is None:
            continue
        resource = jsonio.loads(res.content)
        resources[id_] = resource
        if str((resource.get("method") or {}).get("text") or "").startswith(METHOD_MARK):
            gene = _gene_of(resource)
            if gene:
                genotypes[id_] = gene
    out: dict[str, list[tuple[str, dict[str, Any]]]] = {}
    for id_, resource in resources.items():
        if id_ in genotypes:
            out.setdefault(genotypes[id_], []).append((id_, resource))
            continue
        for ref in resource.get("derivedFrom") or ():
            target = str(ref.get("reference") or "").removeprefix("Observation/")
            if target in genotypes:
                out.setdefault(genotypes[target], []).append((id_, resource))
                break
    return out


def _derived_ids(resource: Mapping[str, Any]) -> set[str]:
    return {str(r.get("reference")) for r in resource.get("derivedFrom") or ()}


def _store_calls(
    ctx: FhirContext,
    tx: WriteTx,
    patient_id: str,
    calls: Sequence[pgx.GeneCall],
    variant_ids: Mapping[tuple[str, int, str, str], str],
    source: str,
    result: PgxResult,
    *,
    from_store: bool = False,
) -> None:
    existing = _existing(ctx, tx, patient_id)
    for call in calls:
        if not call.called:
            result.genes[call.gene] = "no call: " + "; ".join(call.reasons)
            continue
        genotype = pgx.genotype_observation(call, patient_id, variant_ids=variant_ids, method=_method(call, source))
        implication = pgx.therapeutic_implication(call, patient_id)
        old = existing.get(call.gene, [])
        if from_store:
            kept = _keep_vcf_call(old, genotype, call)
            if kept:
                result.genes[call.gene] = "kept the call made from the VCF (the stored variants add nothing)"
                for id_, _ in old:
                    res = tx.current("Observation", id_)
                    if res is not None:
                        result.resources.append(res)
                        result.unchanged += 1
                continue
        new_ids = {genotype["id"], implication["id"]}
        for id_, _ in old:
            if id_ not in new_ids:
                crud.write_in_tx(ctx, tx, "Observation", id_, None, "DELETE")
                result.deleted += 1
        for resource in (genotype, implication):
            current = tx.current("Observation", resource["id"])
            if current is not None and _same(current, resource):
                result.unchanged += 1
                result.resources.append(current)
                continue
            written = crud.write_in_tx(ctx, tx, "Observation", resource["id"], resource, "PUT")
            result.resources.append(written.resource)
            if written.created:
                result.created += 1
            else:
                result.updated += 1
        status = "preliminary" if call.uncertain else "final"
        phenotype = call.phenotype or "Indeterminate"
        score = f", activity score {call.activity_score}" if call.activity_score not in (None, "n/a") else ""
        result.genes[call.gene] = f"{status} {call.diplotype} ({phenotype}{score})"


def _keep_vcf_call(
    old: Sequence[tuple[str, dict[str, Any]]], new_genotype: Mapping[str, Any], call: pgx.GeneCall
) -> bool:
    """True when a stored Genotype called from a VCF used exactly the variants the store now has."""
    for _, resource in old:
        method = str((resource.get("method") or {}).get("text") or "")
        if resource.get("code", {}).get("coding", [{}])[0].get("code") != "84413-4":
            continue
        if _FROM_VCF in method and method.endswith(call.version):
            return _derived_ids(resource) == _derived_ids(new_genotype)
    return False


# -- entry points ------------------------------------------------------------------------------


@dataclass
class FileCalls:
    """The PGx calls read from a VCF by :func:`calls_from_file`, or why none were made (``skipped``)."""

    calls: list[pgx.GeneCall]
    skipped: str | None = None


def calls_from_file(path: str | os.PathLike[str], *, sample: str | None, build: str, source_class: str) -> FileCalls:
    """Call the PGx genes from one sample of a VCF (no store involved: it may run in another process).

    Never raises for the VCF's content: a file PGx calling cannot use is reported in ``skipped``.
    """
    if source_class != "germline":
        return FileCalls([], f"{source_class} data: star alleles are called from germline calls only")
    if gc.normalise_build(build) != "GRCh38":
        return FileCalls([], f"build {build}: star-allele calling needs GRCh38 (no liftover is done)")
    tables = load_tables()
    try:
        vcf_calls = pgx.calls_from_vcf(Path(path), sample, build="GRCh38", regions=tables.regions())
        return FileCalls(pgx.call_all(vcf_calls, tables))
    except pgx.PgxInputError as exc:
        return FileCalls([], str(exc))


def call_in_ingest(
    ctx: FhirContext, tx: WriteTx, patient_id: str, found: FileCalls, *, stale_statistics: bool = False
) -> PgxResult:
    """Store the calls :func:`calls_from_file` read from the VCF being ingested, in ``tx`` (module docstring).

    The VCF's variant Observations must already be written in ``tx`` (``derivedFrom`` finds them
    through the range index). ``stale_statistics``: ``tx`` wrote so much that the planner's
    statistics no longer describe the tables (PostgreSQL would plan the search below as if they
    were empty, once for over twenty minutes); they are refreshed first, when there is a search.
    """
    result = PgxResult(f"Patient/{patient_id}", _FROM_VCF)
    if found.skipped is not None:
        result.skipped = found.skipped
        return result
    if stale_statistics:
        tx.refresh_statistics()
    stored = _stored_variants(tx.query, _tx_reader(tx), patient_id, load_tables())
    variant_ids = pgx.variant_ids_from_observations(r for _, r in stored)
    _store_calls(ctx, tx, patient_id, found.calls, variant_ids, _FROM_VCF, result)
    return result


def _tx_reader(tx: WriteTx) -> Any:
    def read(rids: Sequence[int]) -> list[StoredResource]:
        if not rids:
            return []
        marks = ", ".join("?" for _ in rids)
        rows = tx.query(f"SELECT res_type, res_id FROM resources WHERE rid IN ({marks})", list(rids))
        return list(tx.current_many([(str(t), str(i)) for t, i in rows]).values())

    return read


def call_pgx(ctx: FhirContext, patient_id: str, *, assume_reference: bool = False) -> PgxResult:
    """Call the PGx genes from the Patient's stored germline variants and store the result (one transaction)."""
    check_id(patient_id)
    crud.read(ctx, "Patient", patient_id)  # NotFound / Gone
    tables = load_tables()
    started = time.perf_counter()
    with ctx.store.transaction() as tx:
        stored = _stored_variants(tx.query, _tx_reader(tx), patient_id, tables)
        source = _FROM_STORE + (" (positions without one read as reference)" if assume_reference else "")
        result = PgxResult(f"Patient/{patient_id}", source)
        if not stored and not assume_reference:
            result.skipped = (
                "no germline variant Observations in the PGx genes' regions are stored for this Patient "
                "(ingest a GRCh38 VCF, or call with assumeReference=true if the genes were sequenced and "
                "found to match the reference)"
            )
            return result
        try:
            calls = pgx.call_all(calls_from_store(stored, tables, assume_reference=assume_reference), tables)
        except pgx.PgxInputError as exc:
            raise BadRequest(str(exc)) from exc
        _store_calls(
            ctx,
            tx,
            patient_id,
            calls,
            pgx.variant_ids_from_observations(r for _, r in stored),
            source,
            result,
            from_store=True,
        )
    log.info("call-pgx %s in %.3f s", patient_id, time.perf_counter() - started)
    return result
