"""SQLite store: one writer connection, WAL, readers on their own per-thread connections.

Resource JSON is stored compressed (:mod:`server.store.content`: zstd with a shipped dictionary)
and given back as the exact bytes written.

``BEGIN IMMEDIATE`` takes SQLite's write lock at the start of every write transaction, so
writers are serialised across threads (a process lock) and across gunicorn worker processes
(SQLite's own lock, waited on with ``busy_timeout``); a conditional create's search and insert
therefore run under one lock and cannot race. Readers never block the writer (WAL).

The WAL of a file database is checkpointed by a background thread, not by the committing
connection (:mod:`server.store.wal`): a large transaction's ``COMMIT`` does not wait for its
pages to be copied into the database file.
"""

from __future__ import annotations

import itertools
import sqlite3
import threading
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from decimal import Decimal
from pathlib import Path

from server.store import wal
from server.store.sql import Cursor, SqlStoreBase, SqlWriteTx

__all__ = ["SqliteStore"]

_memory_ids = itertools.count(1)


def _path_from_url(url: str) -> tuple[str, bool]:
    """``sqlite:///relative.db``, ``sqlite:////abs.db``, ``sqlite:///:memory:`` -> (database, is_uri)."""
    path = url[len("sqlite://") :]
    if path.startswith("/"):
        path = path[1:]
    if path in ("", ":memory:"):
        return f"file:bigmed-mem-{next(_memory_ids)}?mode=memory&cache=shared", True
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    return path, False


class SqliteStore(SqlStoreBase):
    dialect = "sqlite"

    def __init__(self, url: str) -> None:
        sqlite3.register_adapter(Decimal, float)
        self.database, self._uri = _path_from_url(url)
        self._local = threading.local()
        self._write_lock = threading.Lock()
        self._writer = self._connect()
        mode = self._writer.execute("PRAGMA journal_mode=WAL").fetchone()[0]
        #: the WAL's checkpoints (None for an in-memory database: it has no WAL)
        self.checkpointer: wal.Checkpointer | None = None
        if str(mode).lower() == "wal":
            self._writer.execute("PRAGMA wal_autocheckpoint=0")  # the checkpointer's job
            self.checkpointer = wal.Checkpointer(self._connect)
        with self._write_lock:
            self._writer.execute("BEGIN IMMEDIATE")
            try:
                self._migrate(self._writer.cursor())
                self._writer.execute("COMMIT")
            except BaseException:
                self._writer.execute("ROLLBACK")
                raise

    def _connect(self) -> sqlite3.Connection:
        conn = sqlite3.connect(self.database, uri=self._uri, isolation_level=None, check_same_thread=False, timeout=60)
        conn.execute("PRAGMA synchronous=NORMAL")
        conn.execute("PRAGMA busy_timeout=60000")
        conn.execute("PRAGMA cache_size=-65536")
        conn.execute(f"PRAGMA journal_size_limit={int(wal.LOG_BYTES)}")  # the WAL file shrinks back
        return conn

    @contextmanager
    def _reader(self) -> Iterator[Cursor]:
        conn = getattr(self._local, "conn", None)
        if conn is None:
            conn = self._connect()
            self._local.conn = conn
        yield conn.cursor()

    def generations(self, types: Sequence[str]) -> dict[str, int]:
        """Per-type generations, re-read only when another connection committed since the last look.

        ``PRAGMA data_version`` on this thread's reader connection changes whenever any other
        connection — this process's writer, another worker process — commits to the database
        (https://sqlite.org/pragma.html#pragma_data_version), so the whole ``type_gen`` table is
        remembered per reader connection and read again only after a commit: a cached answer's
        key costs one pragma instead of a query. A shared-cache in-memory database is read every
        time (its connections share one pager, so the version does not move for them).
        """
        if self._uri or not types:
            return super().generations(types)
        with self._reader() as cur:
            version = cur.execute("PRAGMA data_version").fetchone()[0]
            memo: tuple[int, dict[str, int]] | None = getattr(self._local, "gens", None)
            if memo is None or memo[0] != version:
                rows = cur.execute("SELECT res_type, gen FROM type_gen").fetchall()
                memo = (version, {str(t): int(g) for t, g in rows})
                self._local.gens = memo
        table = memo[1]
        return {t: table[t] for t in types if t in table}

    @contextmanager
    def transaction(self) -> Iterator[SqlWriteTx]:
        with self._write_lock:
            cur = self._writer.cursor()
            cur.execute("BEGIN IMMEDIATE")
            try:
                tx = SqlWriteTx(self, cur)
                yield tx
                tx.bump_generations()
            except BaseException:
                cur.execute("ROLLBACK")
                raise
            cur.execute("COMMIT")
            if self.checkpointer is not None:
                self.checkpointer.committed(self._writer.total_changes)

    def reset(self) -> None:
        with self.transaction() as tx:
            kept = "('schema_meta', 'type_gen')"
            for (name,) in tx.query(f"SELECT name FROM sqlite_master WHERE type = 'table' AND name NOT IN {kept}"):
                tx.cur.execute(f'DELETE FROM "{name}"')

    def close(self) -> None:
        self._run_close_hooks()
        if self.checkpointer is not None:
            self.checkpointer.close()  # the writer, closing last, checkpoints what is left
        with self._write_lock:  # never under a running write (a background writer thread's): that crashes sqlite3
            self._writer.close()
        conn = getattr(self._local, "conn", None)
        if conn is not None:
            conn.close()
            self._local.conn = None
            self._local.gens = None
