"""Checkpoints of a SQLite store's write-ahead log, in a thread of their own.

A commit in WAL mode appends the pages it changed to the ``-wal`` file; a *checkpoint* copies
them back into the database file (https://sqlite.org/wal.html#checkpointing). By default the
committing connection runs one itself as soon as the log holds 1,000 pages ("automatic
checkpoint"), so a large transaction waits at its ``COMMIT`` until everything it wrote has been
copied a second time: a VCF ingestion of an exome writes ~300 MB, and its ``COMMIT`` spent
0.5-0.7 s of a ~4.8 s ingestion in that copy (measured, README "Performance"). The same page
names the alternative: "disable the automatic checkpoints and run them from a separate thread".

:class:`Checkpointer` is that thread. The store's writer connection runs with
``wal_autocheckpoint=0`` and, after each commit, calls :meth:`Checkpointer.committed` with its
``total_changes``; once :data:`ROWS` rows (or :data:`COMMITS` commits) have been committed since
the last checkpoint was asked for, the thread runs ``PRAGMA wal_checkpoint(PASSIVE)`` on a
connection of its own (passive: it neither waits for nor blocks readers and writers; sqlite3
releases the GIL while SQLite copies, so it runs on another core). What does not change:

- durability: with ``synchronous=NORMAL`` (the store's setting) a commit in WAL mode is synced
  by the checkpoint that follows it, whoever runs it; a crash before it loses no more than the
  automatic checkpoint would (the WAL is replayed when the database is next opened);
- answers: readers read committed pages from the WAL until they are copied;
- the end: closing the store stops the thread, and the last connection to close checkpoints what
  is left and removes the WAL (SQLite does this whatever ``wal_autocheckpoint`` says).

The log file keeps the size of the largest transaction it held (a genome's ingestion writes
gigabytes in one) unless told otherwise: the store's connections set ``journal_size_limit`` to
:data:`LOG_BYTES`, so that the writer truncates it when it starts the log over after a complete
checkpoint (https://sqlite.org/pragma.html#pragma_journal_size_limit).

The thread starts on the first checkpoint asked for in a process (a forked child does not inherit
it, so it starts its own should it write) and ends after :data:`IDLE_SECONDS` without work,
closing its connection; a store that is never closed therefore keeps no thread or file open.
"""

from __future__ import annotations

import logging
import os
import sqlite3
import threading
import time
from collections.abc import Callable

__all__ = ["COMMITS", "IDLE_SECONDS", "LOG_BYTES", "ROWS", "Checkpointer"]

#: rows committed since the last checkpoint that ask for the next (an API write changes ~10-30)
ROWS = 5000
#: commits since the last checkpoint that ask for the next, whatever they changed (DDL, indexes)
COMMITS = 200
#: seconds the thread waits for work before it ends (and closes its connection)
IDLE_SECONDS = 30.0
#: size the WAL file is truncated to when the writer starts it over (``journal_size_limit``)
LOG_BYTES = 64 << 20

log = logging.getLogger(__name__)


class Checkpointer:
    """Runs passive WAL checkpoints of one SQLite database in a background thread (module docstring).

    ``connect`` opens a connection to the database (called in the thread).
    """

    def __init__(self, connect: Callable[[], sqlite3.Connection]) -> None:
        self._connect = connect
        self._cond = threading.Condition()
        self._asked = 0  # checkpoints asked for
        self._done = 0  # checkpoints finished (or failed)
        self._thread: threading.Thread | None = None
        self._pid: int | None = None
        self._closed = False
        self._changes = 0  # the writer's total_changes when the last checkpoint was asked for
        self._commits = 0  # commits since then
        #: checkpoints run, and the seconds they took (for benchmarks and tests)
        self.runs = 0
        self.seconds = 0.0

    def committed(self, total_changes: int) -> None:
        """The writer committed; ``total_changes`` is its connection's count of changed rows."""
        self._commits += 1
        if total_changes - self._changes >= ROWS or self._commits >= COMMITS:
            self._changes, self._commits = total_changes, 0
            self.request()

    def request(self) -> None:
        """Ask for a checkpoint (several asked for before the thread gets to them make one)."""
        with self._cond:
            if self._closed:
                return
            self._asked += 1
            alive = self._thread is not None and self._thread.is_alive() and self._pid == os.getpid()
            if not alive:
                self._pid = os.getpid()
                self._thread = threading.Thread(target=self._run, name="bigmed-wal-checkpoint", daemon=True)
                self._thread.start()
            self._cond.notify_all()

    def _run(self) -> None:
        conn: sqlite3.Connection | None = None
        try:
            while True:
                with self._cond:
                    deadline = time.monotonic() + IDLE_SECONDS
                    while self._done >= self._asked and not self._closed:
                        left = deadline - time.monotonic()
                        if left <= 0:
                            self._thread = None  # the next request starts another
                            return
                        self._cond.wait(left)
                    if self._closed:
                        return
                    target = self._asked
                started = time.perf_counter()
                try:
                    if conn is None:
                        conn = self._connect()
                    conn.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchall()
                except sqlite3.Error:  # the next one copies what this one could not
                    log.exception("WAL checkpoint failed")
                with self._cond:
                    self.runs += 1
                    self.seconds += time.perf_counter() - started
                    self._done = target
                    self._cond.notify_all()
        finally:
            if conn is not None:
                conn.close()

    def wait(self, timeout: float | None = None) -> bool:
        """Wait until every checkpoint asked for has run (True) or ``timeout`` passed (False)."""
        deadline = None if timeout is None else time.monotonic() + timeout
        with self._cond:
            while self._done < self._asked and not self._closed:
                left = None if deadline is None else deadline - time.monotonic()
                if left is not None and left <= 0:
                    return False
                self._cond.wait(left)
        return True

    def close(self) -> None:
        """Stop the thread (a checkpoint under way finishes first); later requests are ignored."""
        with self._cond:
            self._closed = True
            thread = self._thread if self._pid == os.getpid() else None
            self._cond.notify_all()
        if thread is not None and thread is not threading.current_thread():
            thread.join()
