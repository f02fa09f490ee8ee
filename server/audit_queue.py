"""The audit trail's group-commit writer: one bounded queue and one writer thread per process.

Owns how the AuditEvent rows of requests (:mod:`server.audit`, http://hl7.org/fhir/R4/auditevent.html)
reach the database with ``BIGMED_AUDIT_MODE=async`` (the default). Issue 9 asks that every read be
recorded "durably before or with the response (a bounded async queue is fine only if a failure to
persist fails closed)". The request path only appends the access's record to an in-memory queue; a
background thread turns the records into rows (``convert``: building and serialising the AuditEvent
is off the request path) and commits what has accumulated in one transaction (group commit: one
``BEGIN … COMMIT`` for up to :attr:`AuditWriter.batch` records instead of one per request). The
thread lingers :attr:`AuditWriter.linger` seconds (default :data:`LINGER`) after the first record
of a batch for others to join it, unless the batch is full or someone flushes: under load a commit
carries many requests' records, and the requests do not compete for the interpreter with one
commit each (measured: the writer waking for every request made a cached read cost several times
its own work).

The fail-closed contract, exactly:

* :meth:`AuditWriter.submit` accepts rows only while the writer is **healthy** (its last commit
  succeeded) and the queue has room (at most ``BIGMED_AUDIT_QUEUE`` rows waiting); otherwise it
  raises :class:`AuditUnavailable` and the caller answers 503 without the data
  (``server/api/audit.py``). While the writer is unhealthy every audited request is refused up
  front (503 before any work is done), so no access happens that could not be recorded.
* A row once accepted is never dropped: when a commit fails (database down, disk full …) the
  batch stays at the head of the queue and is retried with back-off (:data:`RETRY_MIN` doubling to
  :data:`RETRY_MAX` seconds) while the writer is unhealthy; the first retry that commits makes it
  healthy again and requests are served again.
* :meth:`AuditWriter.flush` waits until everything accepted so far is committed: the trail's own
  reader calls it first (read-your-writes inside one process), and so does shutdown — an
  ``atexit`` hook (and gunicorn's ``worker_exit``, :func:`shutdown_all`), and closing the store
  (``Store.before_close``), flush every writer of the
  process for up to :data:`SHUTDOWN_WAIT` seconds; what still could not be written is logged at
  CRITICAL with its count.
* What can be lost: the records accepted but not yet committed when the process is killed without a
  chance to flush (SIGKILL, power loss): at most ``BIGMED_AUDIT_QUEUE`` records, normally only those
  of the last :data:`LINGER` seconds and the commit running. ``BIGMED_AUDIT_MODE=sync`` (one insert
  in its own transaction before each response, :func:`server.audit.record`) closes that window at the price of one write
  transaction per request.

The thread starts on the first submit and ends after :data:`IDLE_EXIT` seconds without work (a
process that stops serving keeps no thread). A writer used in a forked child starts over with an
empty queue: the parent's rows are the parent's to write.
"""

from __future__ import annotations

import atexit
import logging
import os
import threading
import time
import weakref
from collections import deque
from collections.abc import Callable, Sequence
from typing import Any

from server.store.base import Store

__all__ = ["AuditUnavailable", "AuditWriter", "shutdown_all"]

log = logging.getLogger(__name__)

#: first and longest wait between two attempts to commit a failed batch (seconds)
RETRY_MIN = 0.05
RETRY_MAX = 2.0
#: the writer thread ends after this many seconds without rows (a new submit starts another)
IDLE_EXIT = 10.0
#: how long shutdown waits for the queue to reach the database (seconds)
SHUTDOWN_WAIT = 10.0
#: how long the writer waits after a batch's first record for more to join it (seconds)
LINGER = 0.01

Row = tuple[Any, ...]


class AuditUnavailable(Exception):
    """The audit trail cannot take this access's record now (writer failing or queue full)."""


class AuditWriter:
    """A bounded queue of audit records and the thread committing them in batches (module docstring).

    ``convert`` turns a batch of submitted records into the rows of ``insert_sql`` (in the writer
    thread); without it the records are the rows. Capacity, batch and counts are in records.
    """

    def __init__(
        self,
        store: Store,
        insert_sql: str,
        *,
        capacity: int = 10_000,
        batch: int = 500,
        linger: float = LINGER,
        convert: Callable[[list[Any]], Sequence[Row]] | None = None,
    ) -> None:
        if capacity < 1 or batch < 1 or linger < 0:
            raise ValueError("the audit queue's capacity and batch must be positive, its linger not negative")
        self.store = store
        self.insert_sql = insert_sql
        self.capacity = capacity
        self.batch = batch
        self.linger = linger
        self.convert = convert
        self._reset()
        _WRITERS.add(self)
        hook = getattr(store, "before_close", None)
        if hook is not None:  # closing the store first writes what is queued (it could not afterwards)
            hook(self._store_closing)

    def _reset(self) -> None:
        self._pid = os.getpid()
        self._cond = threading.Condition(threading.Lock())
        self._queue: deque[Any] = deque()
        self._inflight = 0  # records taken by the thread, not yet committed
        self._lingering = False  # the thread waits for a batch to fill: no need to wake it per record
        self._flushing = 0  # flush() callers waiting: the thread must not linger
        self._thread: threading.Thread | None = None
        self._error: str | None = None  # the last commit's failure; None: healthy
        self._closed = False
        self.committed = 0  # rows committed (figures for tests and /metrics)
        self.commits = 0  # transactions committed

    def _check_fork(self) -> None:
        if self._pid != os.getpid():  # forked after use: the copied lock/thread state is not ours
            self._reset()

    # -- the request side ----------------------------------------------------------------------

    @property
    def healthy(self) -> bool:
        self._check_fork()
        return self._error is None and not self._closed

    @property
    def error(self) -> str | None:
        return self._error

    @property
    def pending(self) -> int:
        """Rows accepted and not yet committed."""
        return len(self._queue) + self._inflight

    def check(self) -> None:
        """:class:`AuditUnavailable` while the writer is failing (refuse work before doing it)."""
        if not self.healthy:
            raise AuditUnavailable(self._error or "the audit writer is shut down")

    def submit(self, rows: Sequence[Any]) -> None:
        """Queue ``rows`` (records) for the next commit, or raise :class:`AuditUnavailable` (fail closed)."""
        self._check_fork()
        with self._cond:
            if self._closed:
                raise AuditUnavailable("the audit writer is shut down")
            if self._error is not None:
                raise AuditUnavailable(self._error)
            if self.pending + len(rows) > self.capacity:
                raise AuditUnavailable(f"the audit queue is full ({self.capacity} records waiting)")
            self._queue.extend(rows)
            if self._thread is None:
                self._thread = threading.Thread(target=self._run, name="bigmed-audit-writer", daemon=True)
                self._thread.start()
            if not self._lingering or len(self._queue) >= self.batch:
                self._cond.notify_all()

    def flush(self, timeout: float = 5.0) -> bool:
        """Wait until every row accepted so far is committed; False when that took longer than ``timeout``."""
        self._check_fork()
        deadline = time.monotonic() + timeout
        with self._cond:
            self._flushing += 1
            self._cond.notify_all()  # a lingering writer commits now
            try:
                while self.pending:
                    left = deadline - time.monotonic()
                    if left <= 0:
                        return False
                    self._cond.wait(left)
            finally:
                self._flushing -= 1
        return True

    def _store_closing(self) -> None:
        if self._pid == os.getpid() and not self._closed:
            self.close(SHUTDOWN_WAIT if self._error is None else min(SHUTDOWN_WAIT, 0.2))

    def close(self, timeout: float = SHUTDOWN_WAIT) -> bool:
        """Flush, then stop the thread; True when nothing was left unwritten."""
        self._check_fork()
        flushed = self.flush(timeout)
        with self._cond:
            self._closed = True
            self._cond.notify_all()
            left = self.pending
            thread = self._thread
        if thread is not None:
            thread.join(min(timeout, 1.0))
        if left:
            log.critical("%d audit records could not be written before shutdown: %s", left, self._error or "timeout")
        return flushed and not left

    # -- the writer thread ----------------------------------------------------------------------

    def _take(self) -> list[Row] | None:
        """The next batch (waiting for rows); None when the thread should end."""
        with self._cond:
            idle_since = time.monotonic()
            while not self._queue:
                if self._closed or time.monotonic() - idle_since >= IDLE_EXIT:
                    self._thread = None
                    return None
                self._cond.wait(IDLE_EXIT)
            if self.linger and len(self._queue) < self.batch and not self._flushing and not self._closed:
                until = time.monotonic() + self.linger
                self._lingering = True
                try:
                    while len(self._queue) < self.batch and not self._flushing and not self._closed:
                        left = until - time.monotonic()
                        if left <= 0:
                            break
                        self._cond.wait(left)
                finally:
                    self._lingering = False
            n = min(self.batch, len(self._queue))
            rows = [self._queue.popleft() for _ in range(n)]
            self._inflight = n
            return rows

    def _commit(self, records: list[Any]) -> None:
        rows = records if self.convert is None else self.convert(records)
        with self.store.transaction() as tx:
            tx.execute_many(self.insert_sql, rows)

    def _run(self) -> None:
        pause = RETRY_MIN
        while True:
            rows = self._take()
            if rows is None:
                return
            while True:
                try:
                    self._commit(rows)
                except Exception as exc:  # any storage failure: keep the rows, refuse new work, retry
                    with self._cond:
                        first = self._error is None
                        self._error = f"the audit trail cannot be written ({type(exc).__name__})"
                        closing = self._closed
                    if first:
                        log.error("audit writer: commit of %d records failed; refusing audited requests", len(rows))
                        log.debug("audit writer failure", exc_info=True)
                    if closing:  # shutdown gives up after its own deadline; put the rows back to count them
                        with self._cond:
                            self._queue.extendleft(reversed(rows))
                            self._inflight = 0
                            self._thread = None
                            self._cond.notify_all()
                        return
                    time.sleep(pause)
                    pause = min(pause * 2, RETRY_MAX)
                    continue
                with self._cond:
                    if self._error is not None:
                        log.warning("audit writer: the trail is writable again; serving audited requests")
                    self._error = None
                    self._inflight = 0
                    self.committed += len(rows)
                    self.commits += 1
                    self._cond.notify_all()
                pause = RETRY_MIN
                break


_WRITERS: weakref.WeakSet[AuditWriter] = weakref.WeakSet()


def shutdown_all(timeout: float = SHUTDOWN_WAIT) -> None:
    """Flush and stop every writer of this process (atexit; gunicorn ``worker_exit``), within ``timeout``
    seconds in all; a writer that is failing gets a last 0.2 s (its rows are then logged as lost)."""
    deadline = time.monotonic() + timeout
    for writer in list(_WRITERS):
        if writer._pid == os.getpid() and not writer._closed:
            left = max(0.0, deadline - time.monotonic())
            writer.close(left if writer.error is None else min(left, 0.2))


atexit.register(shutdown_all)
