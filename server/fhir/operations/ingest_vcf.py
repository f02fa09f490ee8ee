"""``$ingest-vcf``: one sample of a VCF file stored as HL7 Genomics Reporting resources.

Entry points: ``python -m server ingest-vcf FILE --patient ID …`` (:mod:`server.cli`) and
``POST /fhir/Patient/{id}/$ingest-vcf`` (:mod:`server.api.fhir`; a server-defined operation, in
the manner of http://hl7.org/fhir/R4/operations.html). :mod:`mappers.vcf` maps the file
(variant Observations, their MolecularSequences, molecular consequences, diagnostic
implications, phase relationships and the genomic DiagnosticReport, in that order, streaming);
this module stores the result. It is the bulk path for genomic data:

- **All or nothing.** Everything is written in one store transaction: a :class:`mappers.vcf.VcfError`
  (bad header, bad record at line N, truncated file) raised half-way rolls it back and nothing is
  stored. On SQLite the transaction holds the write lock for the whole ingestion (other writers
  wait, readers do not: WAL).
- **Idempotent.** The mapper's ids are deterministic (``<ingestion>-<line>-<key>``: hashes of
  patient, sample and file sha256, the line, and the alleles; :class:`mappers.vcf._Ids`):
  ingesting the same file for the same patient and sample again finds every resource in place.
  A resource whose content is unchanged is not written (no new version); a changed one (other
  ``--source-class``, other regions) gets a new version; a resource the previous ingestion of
  this file wrote and this one does not (a region dropped) is deleted, its variant's
  MolecularSequence with it. Another file, even of the same sample, is another ingestion.
- **No model validation on the hot path.** The mapper's output is validated by its own tests
  (R4 StructureDefinitions and the R4B models); here only the Patient's existence is checked.
- **Batches of table rows.** Resources are prepared in batches of :data:`BATCH` (the first ones
  smaller, an eighth of it doubling up to it, so that the writer starts early) as the rows the
  tables get (:class:`server.store.base.FreshBatch`: index and range rows numbered by resource,
  the JSON encoded as the history table keeps it). A batch whose resources are all new (a first
  ingestion; seen in one index range per type, :func:`_any_stored`, as the ids ascend) goes in
  through :meth:`server.store.base.WriteTx.insert_fresh`: one ``executemany``
  (SQLite, each row's ``rid`` computed from its number in SQL) or ``COPY`` per table, nothing
  looked at per row in the writer. Otherwise (the same file again, other options) the batch is
  compared with what is stored and written through ``put_many``, the bulk loader's path
  (:mod:`server.fhir.load`); a test checks that both leave the same tables. With ``workers=1``
  (the CLI's default on 2+ cores) a forked process maps, indexes, serialises and encodes the
  next batch while this one writes (threads would not overlap: both halves hold the GIL); the
  index and range rows of a batch's sequence variants, made of their facts alone, are made by
  the writer when it has written every batch before (it would wait for the mapping process,
  as SQLite's writer does about half of the time), else by the mapping process (exome on
  SQLite 7.4 -> 6.4 s, HG00403A 0.89 -> 0.81 s; PostgreSQL's writer is the busy one). The
  genomic report, which lists every Observation, comes last; its ``result`` rows travel ahead in
  the batches of those Observations (:class:`_Batch`), so that the writer does not wait for them.
- **Only what is searched is indexed** (:data:`INDEXED`): ingested Observations get the rows of
  ``subject``, ``patient``, ``code``, ``gene``, ``chromosome``, ``derived-from`` and ``focus``;
  MolecularSequences those of ``patient`` and ``referenceseqid``; the DiagnosticReport every
  parameter. The generic per-component parameters alone (``component-*``, ``combo-*``) would
  write about 60 rows per variant, 5x what the ingestion writes in all. Variants are found by
  patient, gene, chromosome, and by position through the genomics operations
  (:mod:`server.fhir.operations.genomics`), which read the range index. Other parameters
  (``category``, ``status`` …) do not find ingested resources until ``python -m server reindex
  --type Observation`` (or an update through the API) indexes them fully. The rows are computed
  by :class:`Indexer`, a fast path checked against the search registry's extractor: for a
  sequence variant straight from the values the mapper put into it (:class:`mappers.vcf.VariantFacts`,
  which took about a third off the mapping process), for other resources by walking them.
- **The range index** (:mod:`server.fhir.operations.variant_ranges`) gets one row per variant,
  computed here (from the facts, checked against :func:`ranges_of`) and handed to the store with
  the index rows. It also stands for the variant Observation's ``derived-from`` row (the
  MolecularSequence of the same id), which is left out and marked in the range row's ``implied``
  bits (:mod:`server.search.implied`: every reader of that parameter reads the implied rows too):
  one reference row fewer per variant (exome, SQLite 4.74 -> 4.45 s, PostgreSQL 8.0 -> 7.4 s).
  The first variant of an ingestion, checked against the extractor, keeps its written row.
- **PGx calls in the same transaction**: a germline GRCh38 file is also star-allele called
  (:func:`server.fhir.operations.call_pgx.call_in_ingest`): Genotype + TherapeuticImplication
  Observations derivedFrom the variants just written, replacing the Patient's earlier calls of
  the genes called. Other builds and somatic files are not called (said in the summary). With a
  mapping process, a third process (:class:`server.workers.Forked`) reads the calls from the file
  while the variants are mapped and written, so that only storing them is left after the last batch.
- **Background jobs** for large HTTP uploads (:func:`start_job`, :func:`job_status`): a thread of
  the receiving process (:func:`server.fhir.jobs.run_in_background`), its state in a Task
  resource that any worker can read.
"""

from __future__ import annotations

import contextlib
import ctypes
import gzip
import logging
import multiprocessing
import os
import re
import shutil
import tempfile
import time
import weakref
from collections import Counter
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from multiprocessing.connection import Connection
from pathlib import Path
from typing import IO, Any

from werkzeug.exceptions import RequestEntityTooLarge

from mappers import genomics_codes as gc
from mappers.vcf import VariantFacts, VcfError, VcfMapping, VcfReport, map_vcf
from server import jsonio
from server.errors import BadRequest, Issue, NotFound, PayloadTooLarge
from server.fhir import crud
from server.fhir.context import FhirContext
from server.fhir.guard import job_owner, owns_job
from server.fhir.jobs import run_in_background
from server.fhir.operations.call_pgx import FileCalls, PgxResult, call_in_ingest, calls_from_file
from server.fhir.operations.variant_ranges import TABLE as RANGE_TABLE
from server.fhir.operations.variant_ranges import RangeRow, bin_of, ranges_of
from server.fhir.report import WriteCounts
from server.fhir.resource import check_id, instant
from server.search.extract import (
    IndexRows,
    Row,
    extractor_for,
    normalize_string,
    parse_reference,
    reference_target,
    reference_type,
)
from server.search.implied import DERIVED_FROM, SOURCE, TARGET
from server.search.registry import Registry
from server.store import content as stored_content
from server.store.base import INDEX_TABLES, FreshBatch, StoredResource, WriteTx
from server.store.sql import index_params
from server.workers import Child, Forked, paused_gc

__all__ = [
    "DEFINITION",
    "INDEXED",
    "OPERATION",
    "TASK_CODE",
    "Indexer",
    "IngestResult",
    "JobStatus",
    "Upload",
    "capabilities",
    "check_patient",
    "check_size",
    "count_records",
    "default_workers",
    "ingest_registry",
    "ingest_vcf",
    "job_status",
    "receive",
    "start_job",
]

#: What ingested resources are indexed for (module docstring): search parameter codes by type.
#: Other types (the DiagnosticReport) get every parameter of the server's registry.
INDEXED: dict[str, frozenset[str]] = {
    "Observation": frozenset({"subject", "patient", "code", "gene", "chromosome", "derived-from", "focus"}),
    "MolecularSequence": frozenset({"patient", "referenceseqid"}),
}
#: resources per store batch (one put_many). 2,000 rather than 4,000 since the writer stopped waiting
#: for checkpoints: the two processes hand over more often, and the last batch, written after the
#: mapping has ended, is shorter (HG00403A, medians of 9 ingestions, four alternate rounds: 0.517 /
#: 0.517 / 0.544 / 0.525 -> 0.484 / 0.479 / 0.521 / 0.495 s; the exome unchanged or faster)
BATCH = 2000

log = logging.getLogger(__name__)

_registries: weakref.WeakKeyDictionary[Registry, Registry] = weakref.WeakKeyDictionary()


def ingest_registry(registry: Registry) -> Registry:
    """The parameters of ``registry`` that ingested Observations and MolecularSequences are indexed for."""
    found = _registries.get(registry)
    if found is None:
        kept = [p for p in registry.all() if any(t in p.base and p.code in c for t, c in INDEXED.items())]
        found = _registries[registry] = Registry(kept, registry.types)
    return found


class _Index:
    """Index rows of one resource as the store reads them, with the range rows precomputed."""

    __slots__ = (*INDEX_TABLES, "derived")

    def __init__(self, rows: Sequence[list[tuple[Any, ...]]], derived: dict[str, list[tuple[Any, ...]]] | None) -> None:
        for table, table_rows in zip(INDEX_TABLES, rows, strict=True):
            setattr(self, table, table_rows)
        self.derived = derived


# -- the index rows of the mapper's resources, fast ------------------------------------------
# The generic extractor (server.search.extract) evaluates each parameter's FHIRPath expression;
# its ``component.where(code.coding.code = '…')`` filters cost ~0.3 ms per variant, more than
# mapping it. The functions below compute the same rows for the INDEXED parameters directly.
# They are a cache of the spec-driven rows, not a second definition: every ingestion compares
# them with the generic extractor on the first resource of each kind and falls back to it (with
# a warning) when they differ, e.g. after a SearchParameter in profiles/ changed; the tests
# compare them on every resource the test VCFs give.


def _str(value: Any) -> str | None:
    return value if value.__class__ is str and value else None


def _concept_rows(out: list[tuple[Any, ...]], code: str, concept: Any) -> None:
    if concept.__class__ is not dict:
        return
    for coding in concept.get("coding") or ():
        if coding.__class__ is dict:
            system, value, display = _str(coding.get("system")), _str(coding.get("code")), _str(coding.get("display"))
            if system or value or display:
                out.append((code, system, value, normalize_string(display) if display else None))
    text = _str(concept.get("text"))
    if text:
        out.append((code, None, None, normalize_string(text)))


_TARGETS: dict[str, tuple[str | None, str | None]] = {}


def _reference_rows(rows: IndexRows, code: str, value: Any) -> None:
    if value.__class__ is not dict:
        return
    ref = _str(value.get("reference"))
    if ref and ref[0] != "#":
        target = _TARGETS.get(ref)
        if target is None:
            target = reference_target(ref)
            if len(_TARGETS) < 4096:  # the subjects of an ingestion recur; derived-from targets do not
                _TARGETS[ref] = target
        target_type, target_id = target
        if target_type is None:  # a urn: reference: the declared type, as resolve() sees it
            target_type = reference_type(value)
        rows.reference.append((code, target_type, target_id, ref))
    _identifier_rows(rows, code, value)


def _identifier_rows(rows: IndexRows, code: str, value: Any) -> None:
    identifier = value.get("identifier")
    if identifier.__class__ is dict:
        system, ident = _str(identifier.get("system")), _str(identifier.get("value"))
        if system or ident:
            rows.token.append((code, system, ident, None))


def _references(rows: IndexRows, code: str, value: Any) -> None:
    for item in value if value.__class__ is list else (value,):
        _reference_rows(rows, code, item)


#: component code concept -> its code, by identity: the mapper shares these (read-only) dicts
#: between resources; the concept is kept so that its id cannot be reused while cached.
_CODES: dict[int, tuple[Any, str | None]] = {}


def _component_code(component: Any) -> str | None:
    """``component.code.coding.code`` when it is exactly one value (FHIRPath ``=`` with a literal)."""
    code = component.get("code") if component.__class__ is dict else None
    hit = _CODES.get(id(code))
    if hit is not None and hit[0] is code:
        return hit[1]
    codings = code.get("coding") if code.__class__ is dict else None
    value = None
    if codings.__class__ is list:
        values = [c.get("code") for c in codings if c.__class__ is dict and c.get("code") is not None]
        value = values[0] if len(values) == 1 else None
    if len(_CODES) >= 4096:
        _CODES.clear()
    _CODES[id(code)] = (code, value)
    return value


def _observation_rows(resource: dict[str, Any]) -> IndexRows:
    rows = IndexRows()
    token = rows.token
    _concept_rows(token, "code", resource.get("code"))
    subject = resource.get("subject")
    if subject is not None:
        _references(rows, "subject", subject)
        for item in subject if subject.__class__ is list else (subject,):
            if item.__class__ is dict and reference_type(item) == "Patient":
                # patient is subject narrowed to Patient: only its identifier rows are its own
                _identifier_rows(rows, "patient", item)
    for key, code in (("derivedFrom", "derived-from"), ("focus", "focus")):
        value = resource.get(key)
        if value is not None:
            _references(rows, code, value)
    for component in resource.get("component") or ():
        which = _component_code(component)
        if which == gc.GENE_STUDIED:
            _gene_rows(token, "gene", component.get("valueCodeableConcept"))
        elif which == gc.GENOMIC_REF_SEQ:
            _concept_rows(token, "chromosome", component.get("valueCodeableConcept"))
    rows.dedupe()
    return rows


def _result_row(ref: str) -> Row:
    """The ``result`` row of a report's result ``{"reference": ref}`` (``ref`` not empty, not ``#…``):
    what :func:`_reference_rows` makes of it, without its memo tables (every reference is another)."""
    return ("result", *parse_reference(ref), ref)


def _plain_reference(item: Any) -> Any:
    """The ``reference`` of a Reference that holds nothing else (``{"reference": …}``), else None."""
    return item.get("reference") if item.__class__ is dict and len(item) == 1 else None


def _result_rows(rows: IndexRows, results: list[Any]) -> None:
    """:func:`_references` of a genomic report's ``result`` list: a result that is only a literal
    reference (``{"reference": "Observation/…"}``, all the mapper makes) in one step."""
    out = rows.reference
    for item in results:
        ref = _plain_reference(item)
        if ref.__class__ is str and ref and ref[0] != "#":
            out.append(_result_row(ref))
        else:
            _reference_rows(rows, "result", item)


def _plain_reference_rows(out: list[tuple[Any, ...]], code: str, reference: str) -> None:
    """The reference rows of ``{"reference": reference}`` (a facts' subject)."""
    rows = IndexRows()
    _reference_rows(rows, code, {"reference": reference})
    out += rows.reference


def _gene_rows(out: list[tuple[Any, ...]], code: str, concept: Any) -> None:
    """``gene``: the concept, and its displays and text as codes (the symbol searched as a code)."""
    _concept_rows(out, code, concept)
    if concept.__class__ is dict:
        for coding in concept.get("coding") or ():
            display = _str(coding.get("display")) if coding.__class__ is dict else None
            if display:
                out.append((code, None, display, None))
        text = _str(concept.get("text"))
        if text:
            out.append((code, None, text, None))


def _sequence_rows(resource: dict[str, Any]) -> IndexRows:
    rows = IndexRows()
    patient = resource.get("patient")
    if patient is not None:
        _references(rows, "patient", patient)
    reference_seq = resource.get("referenceSeq")
    if reference_seq.__class__ is dict:
        _concept_rows(rows.token, "referenceseqid", reference_seq.get("referenceSeqId"))
    rows.dedupe()
    return rows


_FAST: dict[str, Callable[[dict[str, Any]], IndexRows]] = {
    "Observation": _observation_rows,
    "MolecularSequence": _sequence_rows,
}


#: results of a genomic report indexed by the search registry's extractor, as the check of the rest
_CHECKED_RESULTS = 3


def _same_rows(a: Any, b: Any) -> bool:
    return all(sorted(map(repr, getattr(a, t))) == sorted(map(repr, getattr(b, t))) for t in INDEX_TABLES)


class Indexer:
    """The index and range rows of an ingested resource: fast paths, each checked once per kind.

    Three ways, fastest first: from the mapper's :class:`VariantFacts` (a sequence variant's
    Observation and MolecularSequence: the values are known, nothing is walked; the shared
    concepts' rows are made once per concept), by walking the resource (:data:`_FAST`, every
    other ingested Observation), and the search registry's extractor (the definition). The first
    resource of each kind is also given to the next way down; when the rows differ, the
    ingestion goes on with that way (:attr:`facts`/:attr:`fast` turn False, with a warning).
    """

    def __init__(self, registry: Registry) -> None:
        self.full = registry
        self.lean = ingest_registry(registry)
        self.fast = True
        self.facts = True
        self._checked: set[tuple[str, str | None]] = set()
        self._shared: dict[tuple[str, int], tuple[Any, list[tuple[Any, ...]]]] = {}

    def generic(self, resource: dict[str, Any]) -> IndexRows:
        type_ = resource["resourceType"]
        return extractor_for(type_, self.lean if type_ in INDEXED else self.full)(resource)

    def __call__(self, resource: dict[str, Any], facts: VariantFacts | None = None) -> IndexRows:
        type_ = resource["resourceType"]
        if facts is not None and self.facts:
            rows = self._from_facts(type_, resource, facts)
            if ("facts", type_) in self._checked:  # not a kind _walked checks: (type, code)
                return rows
            expected = self._walked(type_, resource)
            if _same_rows(rows, expected):
                self._checked.add(("facts", type_))
                return rows
            self._differ("the index rows made of the VCF mapper's facts", type_)
            return expected
        return self._walked(type_, resource)

    def _walked(self, type_: str, resource: dict[str, Any]) -> IndexRows:
        if type_ == "DiagnosticReport" and self.fast:
            return self._report_rows(resource)
        fast = _FAST.get(type_)
        if fast is None or not self.fast:
            return self.generic(resource)
        rows = fast(resource)
        code = resource.get("code")
        codings = code.get("coding") if code.__class__ is dict else None
        first = codings[0] if codings.__class__ is list and codings else None
        kind = (type_, first.get("code") if first.__class__ is dict else None)
        if kind not in self._checked:
            expected = self.generic(resource)
            if not _same_rows(rows, expected):
                log.warning(
                    "the fast index rows of %s differ from the search registry's (a SearchParameter changed?): "
                    "this ingestion uses the generic extractor; update server/fhir/operations/ingest_vcf.py",
                    kind,
                )
                self.fast = False
                return expected
            self._checked.add(kind)
        return rows

    def _report_rows(self, report: dict[str, Any]) -> IndexRows:
        """The genomic report's rows: the registry's extractor on the report without its results,
        and a ``result`` reference row per result (one per variant: the extractor took ~2.7 µs
        for each, a quarter of a second for an exome's report, while the writer waited)."""
        results = report.get("result")
        rows = self._without_results(report) if isinstance(results, list) else None
        if rows is None:
            return self.generic(report)
        _result_rows(rows, report["result"])
        rows.dedupe()
        return rows

    def _without_results(self, report: dict[str, Any]) -> IndexRows | None:
        """The extractor's rows of a report without its results, when a ``result`` reference row per
        result is what it makes of them. Checked on every report: its rows of the report with the
        first few results must be those without them plus those results' rows; when they are not,
        None (and :attr:`fast` off, with a warning). None also for a report of few results."""
        results = report["result"]
        if len(results) <= _CHECKED_RESULTS:
            return None
        rows = self.generic({**report, "result": []})
        few = results[:_CHECKED_RESULTS]
        expected = self.generic({**report, "result": few})
        both = IndexRows(**{t: list(getattr(rows, t)) for t in INDEX_TABLES})
        _references(both, "result", few)
        if _same_rows(both, expected):
            return rows
        log.warning(
            "the rows of a DiagnosticReport's results differ from the search registry's (a SearchParameter "
            "changed?): this ingestion uses the generic extractor; update server/fhir/operations/ingest_vcf.py"
        )
        self.fast = False
        return None

    def report_without_results(self, report: dict[str, Any], sent: list[str]) -> list[tuple[str, list[Row]]] | None:
        """:meth:`tables` of a genomic report whose ``result`` rows were sent ahead (:class:`_Batch`):
        its rows without them, when its results are exactly the references ``sent`` (in order,
        each a plain literal reference) and checked as :meth:`_without_results` does; else None
        (its rows are then made whole, results included)."""
        results = report.get("result")
        if not self.fast or results.__class__ is not list or len(results) != len(sent):
            return None
        if [_plain_reference(r) for r in results] != sent:
            return None
        rows = self._without_results(report)
        return None if rows is None else [(t, found) for t in INDEX_TABLES if (found := getattr(rows, t))]

    def ranges(self, resource: dict[str, Any], facts: VariantFacts | None = None) -> list[RangeRow]:
        """The resource's ``variant_range`` rows (:func:`ranges_of`, from the facts when given)."""
        if facts is None or not self.facts:
            return ranges_of(resource)
        rows = [self._fact_range(facts, 0)]
        if ("facts", "range") not in self._checked:
            expected = ranges_of(resource)
            if rows != expected:
                self._differ("the range rows made of the VCF mapper's facts", "Observation")
                return expected
            self._checked.add(("facts", "range"))
        return rows

    def _differ(self, what: str, type_: str) -> None:
        log.warning(
            "%s of %s differ from those read from the resource: this ingestion reads them from the resources; "
            "update server/fhir/operations/ingest_vcf.py",
            what,
            type_,
        )
        self.facts = False

    def tables(self, resource: dict[str, Any], facts: VariantFacts | None = None) -> list[tuple[str, list[Row]]]:
        """:meth:`__call__`'s rows as (index table, rows) pairs, the empty tables left out: what a
        batch takes."""
        rows = self(resource, facts)
        return [(table, found) for table in INDEX_TABLES if (found := getattr(rows, table))]

    def checked(self, type_: str) -> bool:
        """True when the rows of a ``type_`` resource with facts are made of the facts alone
        (:meth:`fact_tables`): the fact rows of its kind, and an Observation's range row, were
        checked on an earlier resource."""
        return (
            self.facts
            and ("facts", type_) in self._checked
            and (type_ != SOURCE or ("facts", "range") in self._checked)
        )

    def fact_tables(
        self, type_: str, id_: str, code: Any, facts: VariantFacts
    ) -> tuple[tuple[tuple[str, list[Row]], ...], RangeRow | None]:
        """A :meth:`checked` sequence variant's rows made of its facts, its id and (an
        Observation's) ``code``, nothing else read: its (index table, rows) pairs and an
        Observation's range row, whose ``implied`` bits say which rows it stands for and are left
        out (:mod:`server.search.implied`: the ``derived-from`` row to the MolecularSequence of
        its own id, as the mapper makes them)."""
        source = type_ == SOURCE
        implied = DERIVED_FROM if source and facts.sequence == f"{TARGET}/{id_}" else 0
        token, reference = self._fact_rows(type_, code, facts, implied)
        return (("token", token), ("reference", reference)), self._fact_range(facts, implied) if source else None

    @staticmethod
    def _fact_range(facts: VariantFacts, implied: int) -> RangeRow:
        start, end = facts.start, facts.end
        return (
            facts.subject,
            facts.ref_seq,
            start,
            end,
            bin_of(start, end),
            facts.ref,
            facts.alt,
            0,
            facts.source_class,
            implied,
        )

    def _from_facts(self, type_: str, resource: dict[str, Any], facts: VariantFacts) -> IndexRows:
        token, reference = self._fact_rows(type_, resource.get("code"), facts)
        return IndexRows(token=list(token), reference=list(reference))  # the shared lists stay as made

    def _fact_rows(self, type_: str, code: Any, facts: VariantFacts, implied: int = 0) -> tuple[list[Row], list[Row]]:
        """(token rows, reference rows) of a sequence variant's MolecularSequence or Observation
        (its ``code``; without the rows whose :mod:`server.search.implied` bits are ``implied``)."""
        if type_ == "MolecularSequence":
            return (
                self._of_shared("referenceseqid", facts.accession, _concept_rows),
                self._of_shared("patient", facts.subject, _plain_reference_rows),
            )
        token = self._of_shared("code", code, _concept_rows) + self._of_shared(
            "chromosome", facts.chromosome, _concept_rows
        )
        if facts.gene is not None:
            token += self._of_shared("gene", facts.gene, _gene_rows)
        reference = self._of_shared("subject", facts.subject, _plain_reference_rows)
        if not implied & DERIVED_FROM:
            sequence = facts.sequence
            reference = [*reference, ("derived-from", TARGET, sequence[len(TARGET) + 1 :], sequence)]
        return token, reference

    def _of_shared(
        self, code: str, value: Any, make: Callable[[list[tuple[Any, ...]], str, Any], None]
    ) -> list[tuple[Any, ...]]:
        """The rows of ``code`` for a value the mapper shares between resources (a concept, the
        subject string), made once."""
        key = (code, id(value))
        hit = self._shared.get(key)
        if hit is not None and hit[0] is value:  # the value is kept: its id is not reused
            return hit[1]
        out: list[tuple[Any, ...]] = []
        make(out, code, value)
        if len(self._shared) >= 4096:
            self._shared.clear()
        rows = list(dict.fromkeys(out))
        self._shared[key] = (value, rows)
        return rows


@dataclass
class IngestResult:
    """What an ingestion stored (counts are of resources; the report is the mapper's)."""

    report: VcfReport
    patient: str
    diagnostic_report: StoredResource
    report_created: bool = False  #: the DiagnosticReport is new (not an update or unchanged)
    created: int = 0
    updated: int = 0
    unchanged: int = 0
    deleted: int = 0
    by_type: Counter[str] = field(default_factory=Counter)
    seconds: float = 0.0
    pgx: PgxResult | None = None  #: the PGx calls made in the same transaction (server.fhir.operations.call_pgx)

    @property
    def records_per_second(self) -> float:
        return self.report.records / self.seconds if self.seconds else 0.0

    @property
    def variants_per_second(self) -> float:
        return self.report.variants / self.seconds if self.seconds else 0.0

    def summary(self) -> str:
        r = self.report
        skipped = ", ".join(f"{k} {v:,}" for k, v in sorted(r.skipped.items())) or "none"
        return (
            f"Ingested {r.file} (sample {r.sample}, {r.build}) for {self.patient} in "
            f"{self.seconds:.2f} s: {r.records:,} records ({self.records_per_second:,.0f}/s), "
            f"{r.variants:,} variants ({self.variants_per_second:,.0f}/s); resources: {self.created:,} created, "
            f"{self.updated:,} updated, {self.unchanged:,} unchanged, {self.deleted:,} deleted "
            f"({', '.join(f'{t} {n:,}' for t, n in self.by_type.most_common()) or 'none written'}); "
            f"skipped records: {skipped}. "
            f"Report: DiagnosticReport/{self.diagnostic_report.id}"
            + (f"\n{self.pgx.summary()}" if self.pgx is not None else "")
        )


def count_records(path: str | os.PathLike[str]) -> int:
    """Data lines of a VCF (plain or gzip/BGZF), for a progress bar's total."""
    with Path(path).open("rb") as raw:
        gz = raw.read(2) == b"\x1f\x8b"
        raw.seek(0)
        with gzip.GzipFile(fileobj=raw) if gz else contextlib.nullcontext(raw) as fh:
            return sum(1 for line in fh if line[:1] != b"#" and line.strip())


# -- preparation: map, index, stamp as version 1, serialise ------------------------------------
# In a worker process when ``workers`` is 1 (the CLI's default on a multi-core machine): the
# mapping and the store's writes then run on two cores (threads would share one: both are Python).
# The worker is forked, so it starts with the parsed header, the registry and the indexer's state;
# it sends each batch as the rows the tables get (a FreshBatch: plain tuples, cheap to pickle, the
# JSON already encoded as the history table keeps it, and only so: a tenth of the bytes, about 7 %
# faster on the exome, the writer being the slower half) and never touches the store, so that
# the writer, when the batch's resources are new, only hands the rows to the database
# (WriteTx.insert_fresh).

_DONE = "done"
_ERROR = "error"
_BATCH = "batch"


@dataclass(slots=True)
class _Batch(FreshBatch):
    """A prepared batch, and the genomic report's ``result`` rows of its Observations sent ahead.

    The report lists every Observation and comes last, alone in its batch: its ``result`` rows
    (one per Observation, 94,929 for the exome) made at the end kept the writer waiting about
    0.2 s (made, pickled, sent). So each batch carries in :attr:`ahead` the rows of its
    Observations, ``(0, "DiagnosticReport", "result", target type, target id, reference)``,
    numbered as the report's own batch numbers it; the writer keeps them until the report's
    batch comes, whose :attr:`uses_ahead` says whether its own rows leave them out (the report's
    results were exactly those Observations, :meth:`Indexer.report_without_results`) or not
    (the rows sent ahead are then dropped).

    The index and range rows of its :meth:`Indexer.checked` sequence variants (all but the first
    few of an ingestion) are not in :attr:`index` and :attr:`derived` yet: :attr:`facts` holds
    ``(k, type, id, code, facts)`` for each, and :func:`_with_fact_rows` makes their rows before
    the batch is written: in the writer when it would wait for the mapping process, else in that
    process (:func:`_worker`). SQLite's writer waited about half of the time (HG00403A; a quarter
    on the exome), the rows are a tenth of the mapping process's work, and the facts are smaller
    to send than the rows.
    """

    ahead: list[tuple[Any, ...]] = field(default_factory=list)
    uses_ahead: bool = False
    facts: list[tuple[int, str, str, Any, VariantFacts]] = field(default_factory=list)


def _fresh(ts: float) -> _Batch:
    return _Batch(ts, "PUT", [], [], [], {table: [] for table in INDEX_TABLES}, {RANGE_TABLE: []})


def _prepare_all(mapping: VcfMapping, indexer: Indexer, ts: float) -> Iterator[_Batch]:
    """The mapper's resources stamped as version 1 at ``ts``, in batches of table rows (FreshBatch),
    with the report's rows of each batch's Observations sent ahead (:class:`_Batch`); the rows of
    its checked sequence variants are left to :func:`_with_fact_rows` (:attr:`_Batch.facts`)."""
    batch = _fresh(ts)
    size = max(BATCH // 8, 1)  # the writer waits for the first batch: small ones first, then BATCH
    last_updated = instant(ts)
    sent: list[str] = []  # the references whose report rows went ahead
    for resource, facts in mapping.items():
        type_ = resource["resourceType"]
        if type_ == "DiagnosticReport" and batch.keys:
            # the last resource, listing every result, in a batch of its own: the writer writes the
            # variants before it while this process indexes it
            yield _sealed(batch)
            batch = _fresh(ts)
        k = len(batch.keys)
        if facts is not None and indexer.checked(type_):  # the writer makes its rows (_Batch.facts)
            batch.facts.append((k, type_, resource["id"], resource.get("code"), facts))
        else:
            pairs: Sequence[tuple[str, list[Row]]] | None = None
            if type_ == "DiagnosticReport":  # k is 0: it starts a batch
                pairs = indexer.report_without_results(resource, sent)
                batch.uses_ahead = pairs is not None
            _add_rows(batch, k, type_, indexer.tables(resource, facts) if pairs is None else pairs)
            if type_ == "Observation":
                batch.derived[RANGE_TABLE] += [(k, *r) for r in indexer.ranges(resource, facts)]
        if type_ == "Observation":
            ref = "Observation/" + resource["id"]
            batch.ahead.append((0, "DiagnosticReport", *_result_row(ref)))
            sent.append(ref)
        # resource.stamp() for version 1 at ts, without formatting ts again for every resource
        meta = resource.get("meta")
        meta = dict(meta) if meta.__class__ is dict else {}
        meta["versionId"] = "1"
        meta["lastUpdated"] = last_updated
        resource["meta"] = meta
        batch.keys.append((type_, resource["id"]))
        batch.json.append(jsonio.dumps(resource))
        if len(batch.keys) >= size:
            yield _sealed(batch)
            batch = _fresh(ts)
            size = min(size * 2, BATCH)
    yield _sealed(batch)


def _add_rows(batch: _Batch, k: int, type_: str, pairs: Iterable[tuple[str, Sequence[Row]]]) -> None:
    """Resource ``k``'s (index table, rows) pairs into the batch, as the store's own rows:
    ``(k, type, param, *values[, grp])``, ``k`` where the rid goes."""
    index = batch.index
    for table, found in pairs:
        index[table].extend(index_params(k, type_, table, found))


def _with_fact_rows(batch: _Batch, indexer: Indexer) -> _Batch:
    """``batch`` with the index and range rows of its :attr:`_Batch.facts`, which it then no longer holds."""
    ranges = batch.derived[RANGE_TABLE]
    for k, type_, id_, code, facts in batch.facts:
        pairs, range_row = indexer.fact_tables(type_, id_, code, facts)
        _add_rows(batch, k, type_, pairs)
        if range_row is not None:
            ranges.append((k, *range_row))
    batch.facts = []
    return batch


def _sealed(batch: _Batch) -> _Batch:
    """``batch`` with the stored contents of its JSON, compressed all at once (``content.compress_many``:
    about half the cost of compressing each resource as it is made)."""
    batch.content = stored_content.compress_many(batch.json)
    return batch


def _worker(conn: Connection, mapping: VcfMapping, indexer: Indexer, ts: float, written: ctypes.c_int64) -> None:
    """Worker process: send every batch with the records read so far, then the mapper's report.

    A batch's rows of its sequence variants (:attr:`_Batch.facts`) are made here while the writer
    has not written every batch sent before it (``written``: it is busy, PostgreSQL's writer most
    of the time), by the writer otherwise (it would wait: SQLite's writer often does).
    """
    try:
        for sent, batch in enumerate(_prepare_all(mapping, indexer, ts)):
            if written.value < sent:
                _with_fact_rows(batch, indexer)
            batch.json = []  # sent without: the writer decompresses the little it reads (FreshBatch.served)
            conn.send((_BATCH, batch, mapping.report.records))
        conn.send((_DONE, mapping.report, (indexer.fast, indexer.facts)))
    except VcfError as exc:
        conn.send((_ERROR, ("vcf", exc.file, exc.line, exc.message)))
    except BaseException as exc:  # noqa: BLE001  # reported to the parent, which raises it
        conn.send((_ERROR, ("other", type(exc).__name__, str(exc), None)))
    finally:
        conn.close()


def _batches(mapping: VcfMapping, indexer: Indexer, ts: float, workers: int) -> Iterator[tuple[_Batch, int]]:
    """The prepared batches with the records read so far; mapper errors are raised here."""
    if workers <= 0:
        for batch in _prepare_all(mapping, indexer, ts):
            yield _with_fact_rows(batch, indexer), mapping.report.records
        return
    # batches written, shared with the mapping process, which reads it without a lock: a stale
    # count only changes which process makes a batch's rows of facts (_worker)
    written = multiprocessing.get_context("fork").RawValue(ctypes.c_int64, 0)
    with Child(_worker, (mapping, indexer, ts, written), "vcf-map") as child:
        while True:
            message = child.recv("the VCF mapping process")
            if message[0] == _BATCH:
                yield _with_fact_rows(message[1], indexer), message[2]
                written.value += 1
            elif message[0] == _DONE:
                mapping.report = message[1]
                indexer.fast, indexer.facts = message[2]
                return
            else:
                kind, a, b, c = message[1]
                if kind == "vcf":
                    raise VcfError(a, b, c)
                raise RuntimeError(f"the VCF mapping process failed: {a}: {b}")


# -- writing (one transaction, in the caller's thread) ----------------------------------------


class _Meta:
    """Rewrites the ``versionId``/``lastUpdated`` a prepared content was stamped with (version 1 at ``ts``)."""

    def __init__(self, ts: float) -> None:
        self.first = self._stamp(1, ts)

    @staticmethod
    def _stamp(version: int, ts: float) -> bytes:
        return b'"versionId":"' + str(version).encode() + b'","lastUpdated":"' + instant(ts).encode() + b'"'

    def restamp(self, content: bytes, version: int, ts: float) -> bytes:
        return content.replace(self.first, self._stamp(version, ts), 1)

    def same(self, content: bytes, current: StoredResource) -> bool:
        """True when ``current`` holds ``content`` (its own versionId/lastUpdated aside)."""
        if current.content is None:
            return False
        ours = self.restamp(content, current.version, current.ts)
        if ours == current.content:  # SQLite keeps the bytes it was given
            return True
        return bool(jsonio.loads(ours) == jsonio.loads(current.content))  # PostgreSQL's JSONB text differs


def _write_batch(tx: WriteTx, batch: FreshBatch, meta: _Meta, counts: WriteCounts) -> StoredResource | None:
    """Write a prepared batch; the last resource written (None when nothing changed)."""
    if not batch.keys:
        return None
    current = tx.current_many(batch.keys) if _any_stored(tx, batch.keys) else {}
    ts = batch.ts
    if not current:  # a first ingestion: every resource is new, the rows go in as prepared
        rids = tx.insert_fresh(batch)
        counts.created += len(batch.keys)
        counts.by_type.update(type_ for type_, _ in batch.keys)
        type_, id_ = batch.keys[-1]
        return StoredResource(type_, id_, 1, ts, False, batch.served(-1), rids[-1])
    writes: list[tuple[StoredResource, str, Any]] = []
    for type_, id_, content, index in _resources(batch):
        cur = current.get((type_, id_))
        if cur is None:
            writes.append((StoredResource(type_, id_, 1, ts, False, content), "PUT", index))
            counts.created += 1
        elif not cur.deleted and meta.same(content, cur):
            counts.unchanged += 1
            continue
        else:
            version = cur.version + 1
            stored = StoredResource(type_, id_, version, ts, False, meta.restamp(content, version, ts), cur.rid)
            writes.append((stored, "PUT", index))
            if cur.deleted:
                counts.created += 1
            else:
                counts.updated += 1
        counts.by_type[type_] += 1
    written = tx.put_many(writes)
    return written[-1] if written else None


def _any_stored(tx: WriteTx, keys: Sequence[tuple[str, str]]) -> bool:
    """False when none of ``keys`` is stored (not even as a tombstone): no resource of their types has
    an id within the range of theirs. One index range per type (:meth:`WriteTx.any_between`) where
    ``current_many`` would look up every id (0.5 s of an exome's 11 s on PostgreSQL, 0.14 s of 5.9 on
    SQLite); a batch's ids ascend (:class:`mappers.vcf._Ids`), so a first ingestion's ranges are
    empty, and anything found in them (a re-ingestion) is looked up id by id as before."""
    by_type: dict[str, list[str]] = {}
    for type_, id_ in keys:
        by_type.setdefault(type_, []).append(id_)
    return any(tx.any_between(type_, min(ids), max(ids)) for type_, ids in by_type.items())


def _resources(batch: FreshBatch) -> Iterator[tuple[str, str, bytes, _Index]]:
    """(type, id, JSON, index rows as put_many takes them) of each resource of a prepared batch."""
    tables: dict[str, list[list[tuple[Any, ...]]]] = {t: [[] for _ in batch.keys] for t in INDEX_TABLES}
    for table, rows in batch.index.items():
        for row in rows:
            tables[table][row[0]].append(row[2:])  # (param, *values[, grp])
    ranges: list[list[tuple[Any, ...]]] = [[] for _ in batch.keys]
    for row in batch.derived.get(RANGE_TABLE, ()):
        ranges[row[0]].append(row[1:])
    for k, (type_, id_) in enumerate(batch.keys):
        derived = {RANGE_TABLE: ranges[k]} if type_ == "Observation" else None
        yield type_, id_, batch.served(k), _Index([tables[t][k] for t in INDEX_TABLES], derived)


def _delete_orphans(tx: WriteTx, report_id: str, report: bytes, ts: float, counts: WriteCounts) -> None:
    """Delete what the previous ingestion of this file (same report id) wrote and this one did not."""
    previous = tx.current("DiagnosticReport", report_id)
    if previous is None or previous.deleted or previous.content is None:
        return
    old = {r.get("reference") for r in jsonio.loads(previous.content).get("result") or ()}
    new = {r.get("reference") for r in jsonio.loads(report).get("result") or ()}
    gone = sorted(ref for ref in old - new if isinstance(ref, str) and ref.startswith("Observation/"))
    keys = [k for ref in gone for k in (("Observation", ref[12:]), ("MolecularSequence", ref[12:]))]
    if not keys:
        return
    current = tx.current_many(keys)
    tombstones = [
        (StoredResource(c.type, c.id, c.version + 1, ts, True, None, c.rid), "DELETE", None)
        for c in current.values()
        if not c.deleted
    ]
    if tombstones:
        tx.put_many(tombstones)
        counts.deleted += len(tombstones)


def default_workers() -> int:
    """Mapping processes beside the writer: one when there is a second core, else none."""
    return 1 if (os.cpu_count() or 1) > 1 else 0


def ingest_vcf(
    ctx: FhirContext,
    path: str | os.PathLike[str],
    patient_id: str,
    *,
    sample: str | None = None,
    build: str | None = None,
    source_class: str = "germline",
    regions: str | os.PathLike[str] | None = None,
    name: str | None = None,
    progress: Callable[[int], Any] | None = None,
    workers: int = 0,
) -> IngestResult:
    """Map and store one sample of the VCF at ``path`` for ``Patient/patient_id`` (module docstring).

    ``name`` is how errors name the file (an upload's name rather than its temporary path).
    ``progress`` is called with the number of records read so far after each batch. ``workers``
    1 maps in a forked process beside the writing thread (the CLI; :func:`default_workers`), 0 in
    this thread (the server: no fork in a threaded worker). Raises NotFound/Gone for an unknown/
    deleted Patient and BadRequest for bad input (the VCF's file and line in the message);
    nothing is written then.
    """
    started = time.perf_counter()
    check_patient(ctx, patient_id)
    shown = name or str(path)
    try:
        mapping = map_vcf(path, patient_id, sample=sample, build=build, source_class=source_class, regions=regions)
        result = _store(ctx, mapping, patient_id, progress, workers, path=path, source_class=source_class)
    except VcfError as exc:
        file = shown if Path(exc.file) == Path(path) else exc.file
        where = f"{file}: line {exc.line}" if exc.line is not None else file
        raise BadRequest(f"{where}: {exc.message}; nothing was stored") from exc
    except ValueError as exc:  # map_vcf's argument checks (source class, patient id)
        raise BadRequest(str(exc)) from exc
    result.seconds = time.perf_counter() - started
    return result


#: resources written by one ingestion past which the PGx search after them needs fresh statistics
_FRESH_STATS_AFTER = 5000


def _store(
    ctx: FhirContext,
    mapping: VcfMapping,
    patient_id: str,
    progress: Callable[[int], Any] | None,
    workers: int,
    *,
    path: str | os.PathLike[str] | None = None,
    source_class: str = "germline",
) -> IngestResult:
    indexer = Indexer(ctx.registry)
    counts = WriteCounts()
    ts = time.time()
    meta = _Meta(ts)
    pgx_args = {"sample": mapping.sample, "build": mapping.build, "source_class": source_class}
    # PGx calls from the same file (issue 7): read beside the mapping process when there is one
    reading = Forked(calls_from_file, path, **pgx_args) if path is not None and workers > 0 else None
    # the PGx process first: it forks before the transaction begins
    with reading or contextlib.nullcontext(), paused_gc(), ctx.store.transaction() as tx:
        report_id: str | None = None
        last: StoredResource | None = None
        report_created = False
        ahead: list[tuple[Any, ...]] = []  # the report's rows sent ahead of it (_Batch)
        for batch, records in _batches(mapping, indexer, ts, workers):
            ahead += batch.ahead
            if batch.keys and batch.keys[-1][0] == "DiagnosticReport":  # the mapper's last resource
                if batch.uses_ahead:
                    batch.index["reference"] += ahead
                ahead = []
                report_id = batch.keys[-1][1]
                _delete_orphans(tx, report_id, batch.served(-1), ts, counts)
            written = _write_batch(tx, batch, meta, counts)
            if written is not None and written.type == "DiagnosticReport":
                last = written
                report_created = last.version == 1
            if progress is not None:
                progress(records)
        assert report_id is not None  # the mapper always ends with the report
        pgx_result = None
        if path is not None:  # stored in the same transaction
            found: FileCalls = reading.result() if reading is not None else calls_from_file(path, **pgx_args)
            stale = counts.created + counts.updated > _FRESH_STATS_AFTER
            pgx_result = call_in_ingest(ctx, tx, patient_id, found, stale_statistics=stale)
        if last is None:  # unchanged: the stored report is the current one
            last = tx.current("DiagnosticReport", report_id)
            assert last is not None
    return IngestResult(
        report=mapping.report,
        patient=f"Patient/{patient_id}",
        diagnostic_report=last,
        report_created=report_created,
        created=counts.created,
        updated=counts.updated,
        unchanged=counts.unchanged,
        deleted=counts.deleted,
        by_type=counts.by_type,
        pgx=pgx_result,
    )


# -- uploads and background ingestion (the HTTP operation) -------------------------------------
# A large upload is ingested in a background thread of the process that received it; its state is
# a Task resource (http://hl7.org/fhir/R4/task.html), so that a poll reaching any worker process
# can answer (the async pattern of http://hl7.org/fhir/R4/async.html: 202 + Content-Location).
# What survives a restart: a Task left ``in-progress`` by a process that died stays so.

#: the operation's name and canonical (a server-defined operation on Patient)
OPERATION = "ingest-vcf"
DEFINITION = "http://bigmed.example/fhir/OperationDefinition/ingest-vcf"


def capabilities() -> list[tuple[str, str, str]]:
    """(resource type, operation name, OperationDefinition canonical) for the CapabilityStatement."""
    return [("Patient", OPERATION, DEFINITION)]


#: Task.code of an ingestion job
TASK_CODE = {"system": "http://bigmed.example/fhir/CodeSystem/operation", "code": "ingest-vcf"}
_SAFE_NAME = re.compile(r"[^A-Za-z0-9._-]+")
_CHUNK = 1 << 20
_progress: dict[str, tuple[int, int | None]] = {}  # Task id -> (records read, total) in this process


@dataclass
class Upload:
    """A request body spooled to a private temporary folder (removed by :meth:`discard`)."""

    folder: Path
    path: Path
    size: int

    def discard(self) -> None:
        shutil.rmtree(self.folder, ignore_errors=True)


def _too_large(limit: int) -> PayloadTooLarge:
    return PayloadTooLarge(f"The VCF upload is larger than this server accepts ({limit:,} bytes, BIGMED_MAX_VCF_BYTES)")


def check_size(length: int | None, limit: int) -> None:
    """PayloadTooLarge when a declared Content-Length is over ``limit`` (before reading anything)."""
    if length is not None and length > limit:
        raise _too_large(limit)


def receive(stream: IO[bytes], limit: int, filename: str | None = None) -> Upload:
    """Spool an uploaded VCF (plain or gzip) to disk; PayloadTooLarge past ``limit`` bytes."""
    folder = Path(tempfile.mkdtemp(prefix="bigmed-vcf-"))
    try:
        head = stream.read(_CHUNK)
        gz = head[:2] == b"\x1f\x8b"
        name = _SAFE_NAME.sub("_", Path(filename).name).strip("._") if filename else ""
        if not name:
            name = "upload.vcf.gz" if gz else "upload.vcf"
        path = folder / name
        size = 0
        with path.open("wb") as out:
            chunk = head
            while chunk:
                size += len(chunk)
                if size > limit:
                    raise _too_large(limit)
                out.write(chunk)
                chunk = stream.read(_CHUNK)
        if size == 0:
            raise BadRequest(
                "The request body is empty: send the VCF file (text/plain, text/x-vcf or application/gzip)"
            )
        return Upload(folder, path, size)
    except RequestEntityTooLarge as exc:
        shutil.rmtree(folder, ignore_errors=True)
        raise _too_large(limit) from exc
    except BaseException:
        shutil.rmtree(folder, ignore_errors=True)
        raise


def check_patient(ctx: FhirContext, patient_id: str) -> None:
    """NotFound/Gone unless ``Patient/patient_id`` exists (before an upload is read)."""
    check_id(patient_id)
    crud.existing(ctx, "Patient", patient_id, ": create the Patient before ingesting its VCF")


def start_job(
    ctx: FhirContext,
    upload: Upload,
    patient_id: str,
    *,
    sample: str | None = None,
    build: str | None = None,
    source_class: str = "germline",
) -> str:
    """Ingest ``upload`` in a background thread (which discards it); returns the id of its Task."""
    now = instant(time.time())
    inputs = [{"type": {"text": "file"}, "valueString": upload.path.name}]
    inputs += [
        {"type": {"text": key}, "valueString": value}
        for key, value in (("sample", sample), ("build", build), ("source-class", source_class))
        if value
    ]
    task: dict[str, Any] = {
        "resourceType": "Task",
        "status": "in-progress",
        "intent": "order",
        "code": {"coding": [TASK_CODE], "text": "$ingest-vcf"},
        "for": {"reference": f"Patient/{patient_id}"},
        "authoredOn": now,
        "executionPeriod": {"start": now},
        "input": inputs,
        "requester": job_owner(),  # only this client may poll the job (issue 9)
    }
    task_id = crud.create(ctx, "Task", task).resource.id
    _progress[task_id] = (0, None)

    def finish() -> None:
        task["executionPeriod"]["end"] = instant(time.time())
        task["id"] = task_id
        task.pop("meta", None)
        crud.update(ctx, "Task", task_id, task)

    def work() -> None:
        try:
            total = count_records(upload.path)
            _progress[task_id] = (0, total)
            result = ingest_vcf(
                ctx,
                upload.path,
                patient_id,
                sample=sample,
                build=build,
                source_class=source_class,
                name=upload.path.name,
                progress=lambda n: _progress.__setitem__(task_id, (n, total)),
            )
        finally:
            upload.discard()
            _progress.pop(task_id, None)
        task["status"] = "completed"
        task["output"] = [
            {
                "type": {"text": "report"},
                "valueReference": {"reference": f"DiagnosticReport/{result.diagnostic_report.id}"},
            },
            {"type": {"text": "summary"}, "valueString": result.summary()},
        ]
        try:
            finish()
        except Exception:  # nothing to report to (the ingestion is stored): the Task stays in-progress
            log.exception("could not record the end of ingest-vcf job %s", task_id)

    def failed(status: int, message: str) -> None:  # run_in_background logged an unexpected error
        task["status"] = "failed"
        task["statusReason"] = {"text": message}
        task["output"] = [{"type": {"text": "http-status"}, "valueInteger": status}]
        finish()

    run_in_background(f"ingest-vcf-{task_id}", work, failed)
    return task_id


@dataclass(frozen=True)
class JobStatus:
    """What a poll of an ingestion job answers: status, body (a resource or None) and headers."""

    status: int
    body: Any
    headers: dict[str, str]


def job_status(ctx: FhirContext, task_id: str) -> JobStatus:
    """The state of ingestion job ``task_id``: 202 running, 200 + the DiagnosticReport, or the failure."""
    task = crud.read(ctx, "Task", task_id)
    assert task.content is not None
    doc = jsonio.loads(task.content)
    codings = (doc.get("code") or {}).get("coding") or []
    if not any(c.get("system") == TASK_CODE["system"] and c.get("code") == TASK_CODE["code"] for c in codings):
        raise NotFound(f"Task/{task_id} is not a $ingest-vcf job")
    if not owns_job(doc):
        raise NotFound(f"Task/{task_id} is not a $ingest-vcf job of this client")
    outputs = {(o.get("type") or {}).get("text"): o for o in doc.get("output") or []}
    if doc.get("status") == "completed":
        ref = outputs["report"]["valueReference"]["reference"]
        report = crud.read(ctx, "DiagnosticReport", ref.split("/", 1)[1])
        return JobStatus(200, report, {"Location": ref})
    if doc.get("status") == "failed":
        status = int(outputs.get("http-status", {}).get("valueInteger", 500))
        message = (doc.get("statusReason") or {}).get("text") or "the ingestion failed"
        return JobStatus(status, Issue(message), {})
    headers = {"Retry-After": "2"}
    read, total = _progress.get(task_id, (0, None))
    if task_id in _progress:
        headers["X-Progress"] = f"{read:,} of {total:,} records" if total else f"{read:,} records"
    else:
        headers["X-Progress"] = "in progress"
    return JobStatus(202, None, headers)
