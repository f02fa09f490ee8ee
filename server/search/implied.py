"""Index rows that the range index implies instead of the index tables holding them.

The VCF ingestion (:mod:`server.fhir.operations.ingest_vcf`) writes each sequence variant as an
Observation and a MolecularSequence of the same id, the Observation ``derivedFrom`` that sequence.
Its ``derived-from`` reference row would be one of the few rows each variant costs (replayed
statements of HG00403A, session 11: 52.6 µs per variant, 45.1 without it; ``docs/bulk-storage.md``),
and it says nothing the Observation's own id does not: the ingestion leaves it out and sets the
bit :data:`DERIVED_FROM` of the variant's ``variant_range.implied`` (a bit set, one bit per kind
of implied row). Every other write (REST, transactions, the bulk loader, ``reindex``) writes its
rows as the extractor makes them and its range row with ``implied = 0``; an update of an ingested
variant replaces both.

Every reading site of index rows that can concern ``derived-from`` of an Observation (the search
clauses of :mod:`server.search.query`: the parameter's match and its probe, ``:missing``,
``_sort``, chains and ``_has`` through it, ``_include``/``_revinclude`` of it or of ``*``) reads
the implied rows beside the index table, in an arm of its own (``UNION ALL`` of row sets, one
``EXISTS`` over the arms for probes; :func:`index_sources`): each source has the columns of its
index table, so each arm is the same SQL over another source, and a simple subquery, which both
backends flatten so that the arm's conditions reach the indexes (``o.res_id = ?`` the resources
key, ``v.rid = ?`` the range index's ``rid`` index). One view with both (``UNION ALL`` inside)
would not do: SQLite scans or materialises it under a correlated ``EXISTS`` or a join (measured in
session 8). A resource that has both an implied and a written row (an ingested variant reindexed)
is found once: every site reads rows as a set (``IN``, ``EXISTS``, ``DISTINCT``, ``MIN``/``MAX``).
A page driven by such a range (:func:`server.search.query._driven_page_sql`) walks each arm in
``rid`` order up to the page's size and merges them (:attr:`server.search.query.Clause.arms`): a
compound inside its join would be read whole first.

Compartments (``$everything``, export, consent) read reference rows of compartment parameters
only (``subject``, ``patient`` …), never ``derived-from``; the range operations read
``variant_range`` itself.

Other rows were tried (session 12) and left written. ``code`` (69548-6, the same row for every
variant) and ``chromosome`` (the range row's ``ref_seq``): with both implied the writer of an
exome took 4.04 → 3.41 CPU-s, but the ingestion is now bound by its mapping process (wall within
noise), and queries paid for them: on PostgreSQL, which cannot estimate the distinct rows of a
``UNION ALL``, every variant of a patient counted or sorted through ``code`` took 52 → 180 ms and
244 → 662 ms; a page driven by ``chromosome`` has to read every variant of the chromosome to walk
them in ``rid`` order (no index of the range table is in that order by ``ref_seq``), on SQLite
1.1 → 4.5 ms for one exome, growing with the store.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

__all__ = [
    "DERIVED_FROM",
    "ROWS",
    "ROWS_BY_RID",
    "SOURCE",
    "SRC",
    "TARGET",
    "any_exists",
    "compound",
    "each_source",
    "index_sources",
    "union_all",
]

#: where an arm given to :func:`each_source` / :func:`any_exists` names its source
SRC = "{src}"

#: the type whose rows are implied, and the target of its implied ``derived-from`` row
SOURCE, TARGET = "Observation", "MolecularSequence"
#: bits of ``variant_range.implied``: which of the variant's rows were left out
DERIVED_FROM = 1

_REFERENCE = (
    "'derived-from' AS param, 'MolecularSequence' AS target_type, o.res_id AS target_id, "
    "'MolecularSequence/' || o.res_id AS url, CAST(NULL AS INTEGER) AS grp"
)
#: the implied ``derived-from`` rows, with the columns of ``idx_reference``, for a reader that finds
#: them by target (``target_id = ?``: the ``resources`` key of the Observation, whose id it is)
ROWS = (
    f"(SELECT o.rid AS rid, o.res_type AS res_type, {_REFERENCE} FROM resources o JOIN variant_range v "
    f"ON v.rid = o.rid WHERE o.res_type = 'Observation' AND (v.implied & {DERIVED_FROM}) <> 0)"
)
#: the same rows for a reader that finds them by ``rid`` (``variant_range``'s ``rid`` index), the
#: type a constant (the range index holds Observations only): a condition on ``o.res_type`` would
#: have SQLite, which has no statistics, read the resources key by type instead
ROWS_BY_RID = (
    f"(SELECT v.rid AS rid, 'Observation' AS res_type, {_REFERENCE} FROM variant_range v "
    f"JOIN resources o ON o.rid = v.rid WHERE (v.implied & {DERIVED_FROM}) <> 0)"
)


def index_sources(
    table: str,
    types: Iterable[str] | None,
    codes: Iterable[str] | str | None,
    target_type: str | None = None,
    *,
    by_rid: bool = False,
) -> tuple[str, ...]:
    """The sources holding the rows of index ``table`` (``token``, ``reference`` …) of parameter
    ``codes`` (one or several; None: every parameter) of resources of ``types`` (None: any),
    referring to ``target_type`` (None: any): ``idx_<table>``, and the implied rows that can be
    among them (:data:`ROWS`, :data:`ROWS_BY_RID` for a reader that has the ``rid``)."""
    out = [f"idx_{table}"]
    if types is not None and SOURCE not in types:
        return tuple(out)
    wanted = None if codes is None else {codes} if isinstance(codes, str) else set(codes)
    if table == "reference" and (wanted is None or "derived-from" in wanted) and target_type in (None, TARGET):
        out.append(ROWS_BY_RID if by_rid else ROWS)
    return tuple(out)


def each_source(sources: Sequence[str], arm: str, params: Sequence[Any]) -> list[tuple[str, list[Any]]]:
    """``arm`` (SQL reading ``{src}``) over each source, with its params."""
    return [(arm.replace(SRC, s), list(params)) for s in sources]


def compound(arms: Sequence[tuple[str, list[Any]]]) -> tuple[str, list[Any]]:
    """The arms (:func:`each_source`) as one ``UNION ALL`` compound, with their params."""
    return " UNION ALL ".join(sql for sql, _ in arms), [x for _, ps in arms for x in ps]


def union_all(sources: Sequence[str], arm: str, params: Sequence[Any]) -> tuple[str, list[Any]]:
    """``arm`` (SQL reading ``{src}``) over each source as one ``UNION ALL`` compound, its params
    once per arm."""
    return compound(each_source(sources, arm, params))


def any_exists(sources: Sequence[str], arm: str, params: Sequence[Any]) -> tuple[str, list[Any]]:
    """``EXISTS`` of ``arm`` (SQL reading ``{src}``, correlated with the outer row) over any source:
    one ``EXISTS`` of the arms' ``UNION ALL``, its params once per arm. (PostgreSQL would turn each
    of ``EXISTS (…) OR EXISTS (…)`` into a hashed subplan reading every implied row first; with
    the correlation inside each arm of one subquery, it probes each arm's index per candidate.)"""
    sql, args = union_all(sources, arm, params)
    return f"EXISTS ({sql})", args
