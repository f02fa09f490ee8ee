"""Reference index rows that the range index implies instead of ``idx_reference`` holding them.

The VCF ingestion (:mod:`server.fhir.operations.ingest_vcf`) writes each sequence variant as an
Observation and a MolecularSequence of the same id, the Observation ``derivedFrom`` that sequence.
Its ``derived-from`` reference row would be one of the few rows each variant costs (replayed
statements of a whole exome: about 7 of 52 µs per variant, ``docs/bulk-storage.md``), and it says
nothing the Observation's own id does not: the ingestion leaves it out and marks the variant's
``variant_range`` row ``implied = 1``. Every other write (REST, transactions, the bulk loader,
``reindex``) writes its rows as the extractor makes them and its range row with ``implied = 0``;
an update of an ingested variant replaces both.

Every reading site of reference rows that can concern ``derived-from`` of an Observation (the
search clauses of :mod:`server.search.query`: the parameter's match, its ``:missing``, ``_sort``,
chains through it, ``_has`` through it, ``_include`` and ``_revinclude`` of it or of ``*``) reads
:data:`ROWS` beside ``idx_reference``, in an arm of its own (``UNION ALL`` of row sets, ``OR`` of
``EXISTS`` probes): :data:`ROWS` has the columns of ``idx_reference``, so each arm is the same
SQL over another source, and a simple subquery, which both backends flatten so that the arm's
conditions reach the indexes (``o.res_id = ?`` the resources key, ``v.rid = ?`` the range index's
``rid`` index). One view with both (``UNION ALL`` inside) would not do: SQLite scans or
materialises it under a correlated ``EXISTS`` or a join (measured in session 8). A resource that
has both an implied and a written row (an ingested variant reindexed) is found once: every site
reads rows as a set (``IN``, ``EXISTS``, ``DISTINCT``, ``MIN``/``MAX``). A page driven by such a
range (:func:`server.search.query._driven_page_sql`) walks each arm in ``rid`` order up to the page's
size and merges them (:attr:`server.search.query.Clause.arms`): a compound inside its join would be
read whole first.

Compartments (``$everything``, export, consent) never read ``derived-from`` (no R4 compartment
is defined through it), nor do the range operations, which read ``variant_range`` itself.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

__all__ = [
    "PARAM",
    "ROWS",
    "ROWS_BY_RID",
    "SOURCE",
    "SRC",
    "TARGET",
    "any_exists",
    "each_source",
    "reference_sources",
    "union_all",
]

#: where an arm given to :func:`union_all` / :func:`any_exists` names its source
SRC = "{src}"

#: the implied row: ``SOURCE``'s ``PARAM`` referring to the ``TARGET`` of the same id
SOURCE, PARAM, TARGET = "Observation", "derived-from", "MolecularSequence"

_COLUMNS = (
    "'derived-from' AS param, 'MolecularSequence' AS target_type, o.res_id AS target_id, "
    "'MolecularSequence/' || o.res_id AS url, CAST(NULL AS INTEGER) AS grp"
)
#: the implied rows, with the columns of ``idx_reference``, for a reader that finds them by target
#: (``target_id = ?``: the ``resources`` key of the Observation, whose id it is)
ROWS = (
    f"(SELECT o.rid AS rid, o.res_type AS res_type, {_COLUMNS} FROM resources o JOIN variant_range v "
    "ON v.rid = o.rid WHERE o.res_type = 'Observation' AND v.implied = 1)"
)
#: the same rows for a reader that finds them by ``rid`` (``variant_range``'s ``rid`` index), the
#: type a constant (the range index holds Observations only): a condition on ``o.res_type`` would
#: have SQLite, which has no statistics, read the resources key by type instead
ROWS_BY_RID = (
    f"(SELECT v.rid AS rid, 'Observation' AS res_type, {_COLUMNS} FROM variant_range v "
    "JOIN resources o ON o.rid = v.rid WHERE v.implied = 1)"
)


def reference_sources(
    types: Iterable[str] | None, code: str | None, target_type: str | None = None, *, by_rid: bool = False
) -> tuple[str, ...]:
    """The sources holding the reference rows of ``code`` (None: every parameter) of resources of
    ``types`` (None: any) referring to ``target_type`` (None: any): ``idx_reference``, and
    :data:`ROWS` (:data:`ROWS_BY_RID` for a reader that has the ``rid``) when some of those rows
    can be implied ones."""
    if (
        (code is None or code == PARAM)
        and (target_type is None or target_type == TARGET)
        and (types is None or SOURCE in types)
    ):
        return ("idx_reference", ROWS_BY_RID if by_rid else ROWS)
    return ("idx_reference",)


def each_source(sources: Sequence[str], arm: str, params: Sequence[Any]) -> list[tuple[str, list[Any]]]:
    """``arm`` (SQL reading ``{src}``) over each source, with its params."""
    return [(arm.replace(SRC, s), list(params)) for s in sources]


def union_all(arms: Sequence[tuple[str, list[Any]]]) -> tuple[str, list[Any]]:
    """The arms (:func:`each_source`) as one ``UNION ALL`` compound, with their params."""
    return " UNION ALL ".join(sql for sql, _ in arms), [x for _, ps in arms for x in ps]


def any_exists(sources: Sequence[str], arm: str, params: Sequence[Any]) -> tuple[str, list[Any]]:
    """``EXISTS (arm)`` (SQL reading ``{src}``) over each source, OR-ed; its params once per arm."""
    sql = " OR ".join(f"EXISTS ({arm.replace(SRC, s)})" for s in sources)
    return (f"({sql})" if len(sources) > 1 else sql), list(params) * len(sources)
