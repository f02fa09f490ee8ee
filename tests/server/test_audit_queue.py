"""The audit group-commit writer on its own: batching, fail closed, recovery, flush and shutdown.

Against a real store (SQLite and PostgreSQL via ``database_url``); failures are made by the store
itself refusing transactions (a wrapper) or by the ``audit_event`` table going away.
"""

from __future__ import annotations

import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import AbstractContextManager, contextmanager
from pathlib import Path
from typing import Any

import pytest

from server import audit
from server.audit_queue import AuditUnavailable, AuditWriter
from server.store import open_store
from server.store.base import Store

ROOT = Path(__file__).resolve().parents[2]


class GatedStore:
    """A real store whose write transactions can be held back (``gate``) or made to fail (``failing``)."""

    def __init__(self, store: Store) -> None:
        self.store = store
        self.gate = threading.Event()
        self.gate.set()
        self.failing = False
        self.attempts = 0

    def transaction(self) -> AbstractContextManager[Any]:
        self.attempts += 1
        self.gate.wait(10)
        if self.failing:
            raise OSError("disk full (simulated)")
        return self.store.transaction()

    def query(self, sql: str, params: Any = ()) -> list[tuple[Any, ...]]:
        return self.store.query(sql, params)


def _rows(n: int, agent: str = "t") -> list[audit.AuditRecord]:
    """``n`` access records (what the request path submits; the writer builds their rows)."""
    return [audit.AuditRecord(agent=agent, action="R", subtype="read", patients=[f"p{i}"]) for i in range(n)]


def _count(store: Store, agent: str = "t") -> int:
    return int(store.query("SELECT COUNT(*) FROM audit_event WHERE agent = ?", (agent,))[0][0])


def _wait(predicate: Any, seconds: float = 10.0) -> None:
    deadline = time.monotonic() + seconds
    while not predicate():
        assert time.monotonic() < deadline, "condition not reached in time"
        time.sleep(0.01)


def test_rows_submitted_while_a_commit_runs_share_the_next_transaction(store: Store) -> None:
    gated = GatedStore(store)
    writer = audit.writer(gated, capacity=1000, batch=100)  # type: ignore[arg-type]  # a Store stand-in
    gated.gate.clear()
    writer.submit(_rows(1))  # the writer takes it and waits at the gate
    _wait(lambda: gated.attempts == 1)
    for _ in range(250):
        writer.submit(_rows(1))
    assert writer.pending == 251
    gated.gate.set()
    assert writer.flush(10)
    assert _count(store) == 251
    assert writer.commits == 1 + 3  # the first row alone, then 250 rows in batches of at most 100
    writer.close()


def test_a_failing_store_refuses_new_records_keeps_accepted_ones_and_recovers(store: Store) -> None:
    gated = GatedStore(store)
    writer = audit.writer(gated, capacity=1000)  # type: ignore[arg-type]  # a Store stand-in
    writer.submit(_rows(2))
    assert writer.flush(10) and writer.healthy
    gated.failing = True
    writer.submit(_rows(3))  # accepted: the writer does not know yet
    _wait(lambda: writer.error is not None)
    assert not writer.healthy and writer.pending == 3
    with pytest.raises(AuditUnavailable):
        writer.submit(_rows(1))
    with pytest.raises(AuditUnavailable):
        writer.check()
    assert not writer.flush(0.2)
    gated.failing = False  # the next retry commits the kept rows
    assert writer.flush(10)
    assert writer.healthy and _count(store) == 5
    writer.submit(_rows(1))
    assert writer.flush(10) and _count(store) == 6
    writer.close()


def test_a_full_queue_refuses_records(store: Store) -> None:
    gated = GatedStore(store)
    writer = audit.writer(gated, capacity=5, batch=2)  # type: ignore[arg-type]  # a Store stand-in
    gated.gate.clear()
    writer.submit(_rows(4))
    with pytest.raises(AuditUnavailable, match="full"):
        writer.submit(_rows(2))
    writer.submit(_rows(1))  # exactly at capacity
    gated.gate.set()
    assert writer.flush(10) and _count(store) == 5
    writer.close()


def test_close_flushes_and_then_refuses(store: Store) -> None:
    writer = audit.writer(store, capacity=100)
    writer.submit(_rows(7))
    assert writer.close(10)
    assert _count(store) == 7
    with pytest.raises(AuditUnavailable):
        writer.submit(_rows(1))


def test_process_exit_flushes_the_queue(tmp_path: Path) -> None:
    """atexit: a process that answered requests and exits at once still writes every record."""
    url = f"sqlite:///{tmp_path}/exit.sqlite"
    script = f"""
import logging
from server import create_app
from server.config import Config
app = create_app(Config(database_url={url!r}, base_url="http://testserver", log_level="WARNING"))
writer = app.extensions["bigmed_audit_writer"]
gate = __import__("threading").Event()
original = writer._commit
def slow(rows):
    gate.wait(0.3)  # the commit is still running when the interpreter starts to exit
    original(rows)
writer._commit = slow
c = app.test_client()
for i in range(20):
    assert c.get(f"/fhir/Patient/nobody-{{i}}").status_code == 404
print("pending", writer.pending)
"""
    out = subprocess.run(
        [sys.executable, "-c", script], cwd=ROOT, capture_output=True, text=True, timeout=120, check=True
    )
    assert int(out.stdout.split()[-1]) > 0, out.stdout  # records were still queued at exit
    store = open_store(url)
    try:
        assert _count(store, "anonymous") == 20
    finally:
        store.close()


def test_a_forked_child_starts_with_an_empty_queue(store: Store) -> None:
    writer = audit.writer(store, capacity=100)
    writer._queue.extend(_rows(3))  # what a parent had queued when it forked
    writer._pid = -1  # as seen from the child
    assert writer.healthy and writer.pending == 0
    writer.submit(_rows(1))
    assert writer.close(10) and _count(store) == 1


@contextmanager
def _no_audit_table(store: Store) -> Iterator[None]:
    with store.transaction() as tx:
        tx.cur.execute("ALTER TABLE audit_event RENAME TO audit_event_away")  # type: ignore[attr-defined]
    try:
        yield
    finally:
        with store.transaction() as tx:
            tx.cur.execute("ALTER TABLE audit_event_away RENAME TO audit_event")  # type: ignore[attr-defined]


def test_a_real_database_error_is_retried_until_the_table_is_back(store: Store) -> None:
    writer = audit.writer(store, capacity=100)
    with _no_audit_table(store):
        writer.submit(_rows(2))
        _wait(lambda: writer.error is not None)
        with pytest.raises(AuditUnavailable):
            writer.submit(_rows(1))
    assert writer.flush(10) and writer.healthy
    assert _count(store) == 2
    writer.close()


def test_records_arriving_while_the_writer_lingers_share_one_commit(store: Store) -> None:
    writer = AuditWriter(store, audit._INSERT, capacity=100, batch=50, linger=30.0, convert=audit._rows_of)
    for _ in range(5):
        writer.submit(_rows(1))
    assert writer.commits == 0 and writer.pending == 5  # the writer waits for the batch to fill
    writer.submit(_rows(45))  # the batch is full: committed without waiting out the linger
    _wait(lambda: writer.commits == 1)
    assert _count(store) == 50
    writer.submit(_rows(2, agent="later"))
    assert writer.flush(10)  # a flush does not wait out the linger either
    assert writer.commits == 2 and _count(store, "later") == 2
    writer.close()


def test_rows_are_built_in_the_writer_thread_one_per_patient(store: Store) -> None:
    built: list[str] = []

    def convert(records: list[audit.AuditRecord]) -> list[tuple[Any, ...]]:
        built.append(threading.current_thread().name)
        return audit._rows_of(records)

    writer = AuditWriter(store, audit._INSERT, capacity=100, linger=0, convert=convert)
    writer.submit([audit.AuditRecord(agent="multi", action="R", subtype="search-type", patients=["a", "b", "c"])])
    assert writer.flush(10)
    assert built == ["bigmed-audit-writer"] and _count(store, "multi") == 3
    patients = store.query("SELECT patient FROM audit_event WHERE agent = ? ORDER BY patient", ("multi",))
    assert [r[0] for r in patients] == ["a", "b", "c"]
    writer.close()


def test_closing_the_store_first_writes_what_the_writer_holds(database_url: str) -> None:
    store = open_store(database_url)
    store.reset()
    writer = AuditWriter(store, audit._INSERT, capacity=100, linger=30.0, convert=audit._rows_of)
    writer.submit(_rows(3, agent="closing"))
    assert writer.pending == 3  # lingering: nothing committed yet
    store.close()  # the bench and tests close stores while records linger
    assert writer.pending == 0 and writer.committed == 3
    with pytest.raises(AuditUnavailable):
        writer.submit(_rows(1))
    again = open_store(database_url)
    try:
        assert _count(again, "closing") == 3
    finally:
        again.close()
