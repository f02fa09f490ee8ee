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

__all__ = ["INDEX_TABLES", "ConflictRetry", "HistoryEntry", "Store", "StoredResource", "WriteTx"]

#: index table name -> value columns, in the order of the tuples of ``IndexRows`` (search/extract.py).
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


@runtime_checkable
class Store(Protocol):
    """A resource store. Reads are safe from any thread; writes go through :meth:`transaction`."""

    dialect: str  # "sqlite" | "postgresql"

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

    def iter_current(self, type_: str | None = None, batch: int = 1000) -> Iterator[StoredResource]:
        """Every current, non-deleted resource (reindex, export)."""

    def reset(self) -> None:
        """Drop all data (tests and the sandbox seeder only)."""

    def close(self) -> None: ...
