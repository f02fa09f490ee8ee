"""The SQL floor of a bulk write: the statements an ingestion ran on SQLite, replayed alone (not a benchmark).

:func:`recording` wraps a SQLite store's writer connection for the length of a block and keeps
every statement it runs there, with its parameters (the reads of the write path included), after
copying the database as the block found it. :func:`replay` runs them again, in the same order
and transactions, on a fresh copy opened as the server opens a database (same pragmas), with no
mapping, indexing, serialising or writer code in between. What that takes is what SQLite itself
needs for the write set on this machine: no Python front end, however fast, can store the same
rows faster on one writer, so ``units / wall seconds`` is the ceiling of the current storage
layout. Used by bench/vcf.py (per variant) and bench/ehr.py (per message). As in the server,
the WAL's checkpoints are left to the store's background thread (:mod:`server.store.wal`): a
``COMMIT`` here is the write of the log, not the copy into the database file that follows it.

The recording holds every row in memory (about 1 GB for a 100,000-row exome) and slows the
recorded run: it is a run of its own, never the timed one.
"""

from __future__ import annotations

import shutil
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

from server.store.sqlite import SqliteStore

T = TypeVar("T")

__all__ = ["Floor", "Recording", "floor_of", "recording", "replay", "table_rows"]


@dataclass
class Recording:
    """The database as the block found it (a copy) and what the writer connection ran in it."""

    start: Path
    #: (executemany?, sql, parameters) in the order run
    statements: list[tuple[bool, str, Any]] = field(default_factory=list)


@dataclass
class Floor:
    cpu: float  #: CPU seconds of the replay
    wall: float  #: its wall-clock seconds
    by_statement: dict[str, float]  #: wall seconds by statement kind (``INSERT INTO idx_token`` …)
    rows: dict[str, int]  #: rows per table after the replay (to check against the recorded run's database)

    def shares(self, units: int, top: int = 5) -> str:
        """The largest statement kinds, in µs per unit."""
        largest = sorted(self.by_statement.items(), key=lambda kv: -kv[1])[:top]
        return ", ".join(f"{kind} {seconds / units * 1e6:.0f} µs" for kind, seconds in largest)


class _Cursor:
    def __init__(self, cursor: Any, log: list[tuple[bool, str, Any]]) -> None:
        self._cursor, self._log = cursor, log

    def __getattr__(self, name: str) -> Any:
        return getattr(self._cursor, name)

    def __iter__(self) -> Iterator[Any]:
        return iter(self._cursor)

    def execute(self, sql: str, params: Any = ()) -> Any:
        self._log.append((False, sql, params if isinstance(params, dict) else tuple(params)))
        return self._cursor.execute(sql, params)

    def executemany(self, sql: str, rows: Any) -> Any:
        rows = [tuple(row) for row in rows]
        self._log.append((True, sql, rows))
        return self._cursor.executemany(sql, rows)


class _Connection(_Cursor):
    def cursor(self) -> _Cursor:
        return _Cursor(self._cursor.cursor(), self._log)


def _kind(sql: str) -> str:
    """``INSERT INTO idx_token``, ``DELETE FROM history``, ``CREATE INDEX …``, ``COMMIT``, ``SELECT`` …"""
    words = sql.split()
    verb = words[0].upper()
    if verb == "CREATE":
        return " ".join(words[:2])
    return " ".join(words[:3]) if verb in ("INSERT", "DELETE") else verb


@contextmanager
def recording(store: SqliteStore, folder: Path) -> Iterator[Recording]:
    """Record the statements ``store``'s writer connection runs in the block (a SQLite store)."""
    if store.checkpointer is not None:
        store.checkpointer.wait()
    with store._write_lock:  # no write transaction in flight
        busy, _, _ = store._writer.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchone()
        if busy:
            raise RuntimeError("a reader kept the WAL from being emptied: the copy would miss committed data")
        start = folder / f"floor-start-{time.monotonic_ns()}.sqlite"
        shutil.copyfile(store.database, start)
        rec = Recording(start)
        real = store._writer
        store._writer = _Connection(real, rec.statements)  # type: ignore[assignment]  # a recording proxy
    try:
        yield rec
    finally:
        with store._write_lock:
            store._writer = real


def replay(rec: Recording) -> Floor:
    """Run the recorded statements again on a fresh copy of the starting database (then deleted).

    The copy is opened as a :class:`SqliteStore` (the server's pragmas), whose migration creates
    any table or index of the schema the copy lacks: an experiment that drops an index from the
    starting copy to price it must replay with a plain ``sqlite3`` connection instead.
    """
    copy = rec.start.with_name(rec.start.stem + "-replay.sqlite")
    shutil.copyfile(rec.start, copy)
    store = SqliteStore(f"sqlite:///{copy}")
    by_statement: dict[str, float] = {}
    try:
        cur = store._writer.cursor()
        cpu, wall = time.process_time(), time.perf_counter()
        for many, sql, params in rec.statements:
            started = time.perf_counter()
            if many:
                cur.executemany(sql, params)
            else:
                cur.execute(sql, params)
            kind = _kind(sql)
            by_statement[kind] = by_statement.get(kind, 0.0) + time.perf_counter() - started
        cpu, wall = time.process_time() - cpu, time.perf_counter() - wall
        rows = table_rows(store)
    finally:
        store.close()
        for suffix in ("", "-wal", "-shm"):
            Path(f"{copy}{suffix}").unlink(missing_ok=True)
    return Floor(cpu, wall, by_statement, rows)


def floor_of(store: SqliteStore, folder: Path, run: Callable[[], T]) -> tuple[T, Floor]:
    """``run()``'s result, and the floor of what it wrote: recorded, replayed, and checked to leave
    the rows ``run`` left in every table (the copy of the starting database is deleted after)."""
    with recording(store, folder) as rec:
        result = run()
    try:
        stored = table_rows(store)
        floor = replay(rec)
    finally:
        rec.start.unlink()
    assert floor.rows == stored, f"the replay left {floor.rows} rows, the recorded run {stored}"
    return result, floor


def table_rows(store: SqliteStore) -> dict[str, int]:
    """Rows per table of a SQLite store's database."""
    names = [n for (n,) in store.query("SELECT name FROM sqlite_master WHERE type = 'table' ORDER BY name")]
    return {name: int(store.query(f'SELECT COUNT(*) FROM "{name}"')[0][0]) for name in names}
