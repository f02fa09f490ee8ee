"""The storage Protocol: the one small interface every backend implements.

Resources are versioned (http://hl7.org/fhir/R4/http.html#versioning): ``resources`` holds the
current version of each (type, id), ``history`` every version including deletions, which are
tombstones (``deleted`` true, no content) so that history, ``_since`` and Bulk Data ``deleted``
can be answered. Search index rows (one table per search-parameter type, see ``schema.py``)
belong to the current version only and are replaced on every write, inside the same database
transaction as the resource, so a search never sees a half-written resource.

Backends are chosen by URL scheme in :func:`server.store.open_store`. One contract test suite
(tests/server/store/test_contract.py) runs against every backend.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import AbstractContextManager
from dataclasses import dataclass
from typing import Any, Protocol, runtime_checkable

from server.store import content

__all__ = [
    "INDEX_TABLES",
    "STORE_ID_KEY",
    "ConflictRetry",
    "DerivedIndex",
    "FreshBatch",
    "HistoryEntry",
    "Store",
    "StoredResource",
    "WriteTx",
]

#: ``type_gen`` row holding the database's random identity (drawn at creation, never moved):
#: part of every query-cache key, so two databases sharing a Redis never share answers.
STORE_ID_KEY = "@store"

#: index table name -> value columns, in the order of the tuples of ``IndexRows`` (search/extract.py).
#: A row is ``(param, *values)``, or ``(param, *values, grp)`` for a composite's component row
#: (see ``schema.py``).
INDEX_TABLES: dict[str, tuple[str, ...]] = {
    "token": ("system", "code", "text"),
    "string": ("value", "exact"),
    "reference": ("target_type", "target_id", "url"),
    "date": ("low", "high"),
    "number": ("value",),
    "quantity": ("value", "system", "code", "unit"),
    "uri": ("value",),
}


@dataclass(frozen=True, slots=True)
class StoredResource:
    """One version of a resource as stored. ``content`` is the JSON text served to clients."""

    type: str
    id: str
    version: int
    ts: float  # lastUpdated as UTC epoch seconds
    deleted: bool
    content: bytes | None
    rid: int = 0  # internal surrogate key of the (type, id)


@dataclass(frozen=True, slots=True)
class HistoryEntry:
    """One row of the history table, with the method that produced it (POST, PUT, PATCH, DELETE)."""

    seq: int
    resource: StoredResource
    method: str


@dataclass(slots=True)
class FreshBatch:
    """New resources (version 1 at ``ts``), numbered 0..n-1, as rows ready for the tables.

    Built without the store, e.g. in a worker process (:mod:`server.fhir.operations.ingest_vcf`),
    so that the writer only hands rows to the database (:meth:`WriteTx.insert_fresh`). Every row
    starts with the resource's number ``k`` where the table has its ``rid``:

    - ``keys[k]`` (type, id) and ``json[k]`` the JSON served; ``content[k]`` what the history
      table's content column holds (:func:`server.store.content.compress`). ``json`` may be left
      empty (a batch sent between processes travels a tenth of the size without it): read the
      JSON through :meth:`served`, which then decompresses it;
    - ``index[table]``: ``(k, res_type, param, *values)`` (``INDEX_TABLES`` columns), with ``grp``
      after the values for a composite's component row (:func:`server.store.sql.index_params`);
    - ``derived[table]``: ``(k, *columns)`` of a :class:`DerivedIndex`, complete for the batch's
      resources of its types (a table left out is computed from the JSON).
    """

    ts: float
    method: str
    keys: list[tuple[str, str]]
    json: list[bytes]
    content: list[bytes]
    index: dict[str, list[tuple[Any, ...]]]
    derived: dict[str, list[tuple[Any, ...]]]

    def served(self, k: int) -> bytes:
        """The JSON of resource ``k`` (negative counts from the end): ``json[k]``, else decompressed."""
        return self.json[k] if self.json else content.decompress(self.content[k])


class ConflictRetry(Exception):
    """A concurrent writer won a race (unique violation, serialisation failure): retry the work."""


@runtime_checkable
class WriteTx(Protocol):
    """One open write transaction. Everything done through it commits or rolls back together."""

    def lock(self, key: str) -> None:
        """Serialise with every other transaction that locks the same key until this one ends."""

    def current(self, type_: str, id_: str) -> StoredResource | None:
        """The current version (possibly a tombstone) as this transaction sees it."""

    def put(
        self,
        res: StoredResource,
        method: str,
        index: Any | None,
    ) -> StoredResource:
        """Write a new current version (or tombstone when ``res.deleted``) with its index rows."""

    def query(self, sql: str, params: Sequence[Any] = ()) -> list[tuple[Any, ...]]:
        """Run a read query (``?`` placeholders) inside this transaction."""

    def current_many(self, keys: Sequence[tuple[str, str]]) -> dict[tuple[str, str], StoredResource]:
        """:meth:`current` of many (type, id) at once; absent ones are left out (bulk load)."""

    def any_between(self, type_: str, first: str, last: str) -> bool:
        """True when a resource of ``type_`` (a tombstone included) has an id from ``first`` to ``last``
        (both included, in byte order): one range of the ``(res_type, res_id)`` index, where
        :meth:`current_many` of the ids in it looks each up (a bulk writer's check that a batch of
        ascending ids is all new)."""

    def put_many(
        self, items: Sequence[tuple[StoredResource, str, Any]], compressed: Sequence[bytes | None] | None = None
    ) -> list[StoredResource]:
        """:meth:`put` for many (resource, method, index) at once, each (type, id) at most once (bulk load).

        ``compressed[k]``, when given and not None, is ``items[k]``'s content as the history table
        keeps it (:func:`server.store.content.compress`), made where there was a core to spare (the
        EHR ingestion's worker processes); otherwise the content is compressed here.
        """

    def insert_fresh(self, batch: FreshBatch) -> Sequence[int]:
        """Write a batch of resources that do not exist yet (the caller checked), with their rows.

        Returns the ``rid`` of each resource, by number. The bulk path of a big ingestion: no
        index row is looked at here (SQLite computes each row's ``rid`` from its number).
        """

    def replace_index(self, entries: Sequence[tuple[int, int, str, Any]]) -> int:
        """Replace the index rows of current resources, each given as (rid, version, type, rows).

        Entries whose version is no longer the current one are skipped; returns how many were
        replaced.
        """

    def refresh_statistics(self) -> None:
        """Let the planner see what this transaction wrote before it queries again (big writes).

        PostgreSQL plans from table statistics that only ANALYZE (or autovacuum, after commit)
        refreshes; a transaction that has just written a genome's worth of rows and then searches
        them (VCF ingest calling PGx) would otherwise be planned as if the tables were empty.
        ANALYZE inside the transaction counts its own rows. SQLite: nothing to do.
        """

    def execute_many(self, sql: str, rows: Sequence[Sequence[Any]]) -> None:
        """Run one write statement (``?`` placeholders) once per row, inside this transaction.

        For the tables features own beside the resources (e.g. the EHR message log and
        quarantine, :mod:`server.fhir.operations.ehr_store`); resources go through put/put_many.
        """


@runtime_checkable
class DerivedIndex(Protocol):
    """A table of rows computed from resources of some types, kept in step with their current versions.

    Beside the search index tables, a feature may need an index of its own shape (the genomic
    range index ``variant_range``, :mod:`server.fhir.operations.variant_ranges`). The app factory
    hands such indexes to the store (:func:`server.store.open_store`); on every write of a resource
    of one of ``types`` the store deletes the resource's rows and inserts those of the new version,
    in the same transaction: the rows the index object passed to :meth:`WriteTx.put` carries in its
    ``derived`` mapping (table -> rows, computed by a caller that has the resource at hand), else
    ``rows(type, content)``. A row holds the values of ``columns``; ``rid`` is prepended.
    """

    table: str
    columns: tuple[str, ...]
    types: frozenset[str]

    def rows(self, type_: str, content: bytes) -> list[tuple[Any, ...]]:
        """The rows of one resource version (its JSON)."""
        ...


@runtime_checkable
class Store(Protocol):
    """A resource store. Reads are safe from any thread; writes go through :meth:`transaction`."""

    dialect: str  # "sqlite" | "postgresql"
    derived: tuple[DerivedIndex, ...]  # kept in step with every write (see DerivedIndex)

    def read(self, type_: str, id_: str) -> StoredResource | None: ...

    def vread(self, type_: str, id_: str, version: int) -> StoredResource | None: ...

    def read_many(self, rids: Sequence[int]) -> list[StoredResource]: ...

    def history(
        self,
        type_: str | None = None,
        id_: str | None = None,
        since: float | None = None,
        before_seq: int | None = None,
        limit: int = 50,
    ) -> list[HistoryEntry]: ...

    def count_history(self, type_: str | None = None, id_: str | None = None, since: float | None = None) -> int: ...

    def query(self, sql: str, params: Sequence[Any] = ()) -> list[tuple[Any, ...]]:
        """Run a read query (``?`` placeholders) on a reader connection."""

    def transaction(self) -> AbstractContextManager[WriteTx]: ...

    def generations(self, types: Sequence[str]) -> dict[str, int]:
        """Per-type write generations, moved by every commit that writes the type (cache keys)."""

    def iter_current(self, type_: str | None = None, batch: int = 1000) -> Iterator[StoredResource]:
        """Every current, non-deleted resource (reindex, export)."""

    def reindex(self, entries: Sequence[tuple[int, int, str, Any]]) -> int:
        """:meth:`WriteTx.replace_index` in a transaction of its own (``python -m server reindex``)."""

    def bulk_session(self) -> AbstractContextManager[bool]:
        """Around a bulk write made of many transactions (a load, an EHR feed): into an empty store
        the search index tables' value indexes are built once at the end (yields True then)."""

    def analyze(self) -> None:
        """Refresh the query planner's statistics of the store's tables (after bulk writes).

        PostgreSQL's autovacuum does it within a minute or so of a bulk load, SQLite never on its
        own; until then search plans are chosen blind (``ANALYZE``).
        """

    def reset(self) -> None:
        """Drop all data (tests and the sandbox seeder only)."""

    def close(self) -> None: ...
