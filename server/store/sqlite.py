"""SQLite store: one writer connection, WAL, readers on their own per-thread connections.

``BEGIN IMMEDIATE`` takes SQLite's write lock at the start of every write transaction, so
writers are serialised across threads (a process lock) and across gunicorn worker processes
(SQLite's own lock, waited on with ``busy_timeout``); a conditional create's search and insert
therefore run under one lock and cannot race. Readers never block the writer (WAL).
"""

from __future__ import annotations

import itertools
import sqlite3
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from decimal import Decimal
from pathlib import Path

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
        self._writer.execute("PRAGMA journal_mode=WAL")
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
        return conn

    @contextmanager
    def _reader(self) -> Iterator[Cursor]:
        conn = getattr(self._local, "conn", None)
        if conn is None:
            conn = self._connect()
            self._local.conn = conn
        yield conn.cursor()

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

    def reset(self) -> None:
        with self.transaction() as tx:
            kept = "('schema_meta', 'type_gen')"
            for (name,) in tx.query(f"SELECT name FROM sqlite_master WHERE type = 'table' AND name NOT IN {kept}"):
                tx.cur.execute(f'DELETE FROM "{name}"')

    def close(self) -> None:
        self._run_close_hooks()
        with self._write_lock:  # never under a running write (a background writer thread's): that crashes sqlite3
            self._writer.close()
        conn = getattr(self._local, "conn", None)
        if conn is not None:
            conn.close()
            self._local.conn = None
