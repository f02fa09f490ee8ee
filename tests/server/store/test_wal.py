"""The SQLite store's WAL is checkpointed by a background thread, not at the writer's COMMIT."""

from __future__ import annotations

import shutil
import sqlite3
from collections.abc import Iterator
from pathlib import Path

import pytest

from server.store import wal
from server.store.sqlite import SqliteStore


@pytest.fixture
def store(tmp_path: Path) -> Iterator[SqliteStore]:
    s = SqliteStore(f"sqlite:///{tmp_path}/wal.sqlite")
    with s.transaction() as tx:
        tx.cur.execute("CREATE TABLE t (n INTEGER)")
    s._writer.execute("PRAGMA wal_checkpoint(TRUNCATE)")  # the empty table in the file itself
    yield s
    s.close()


def _write(store: SqliteStore, rows: int) -> None:
    with store.transaction() as tx:
        tx.cur.executemany("INSERT INTO t (n) VALUES (?)", [(n,) for n in range(rows)])


def _rows_in_the_file_alone(store: SqliteStore, tmp_path: Path) -> int:
    """Rows of ``t`` in a copy of the database file without its WAL (what a checkpoint copied)."""
    copy = tmp_path / "file-alone.sqlite"
    shutil.copyfile(store.database, copy)
    conn = sqlite3.connect(copy)
    try:
        return int(conn.execute("SELECT COUNT(*) FROM t").fetchone()[0])
    finally:
        conn.close()
        copy.unlink()


def test_the_writer_leaves_checkpoints_to_the_thread(store: SqliteStore, tmp_path: Path) -> None:
    assert store._writer.execute("PRAGMA wal_autocheckpoint").fetchone()[0] == 0
    assert store.checkpointer is not None
    _write(store, 10)  # a small commit: no checkpoint asked for, the rows stay in the WAL
    assert store.checkpointer.wait(5)
    assert store.checkpointer.runs == 0
    assert _rows_in_the_file_alone(store, tmp_path) == 0
    assert store.query("SELECT COUNT(*) FROM t")[0][0] == 10  # readers see them all the same
    _write(store, wal.ROWS)  # enough rows since the last checkpoint: one is run
    assert store.checkpointer.wait(30)
    assert store.checkpointer.runs == 1
    assert store.checkpointer.seconds > 0
    assert _rows_in_the_file_alone(store, tmp_path) == wal.ROWS + 10


def test_many_small_commits_ask_for_a_checkpoint(store: SqliteStore, tmp_path: Path) -> None:
    assert store.checkpointer is not None
    for _ in range(wal.COMMITS - 2):  # the fixture's CREATE TABLE was one commit
        _write(store, 1)
    assert store.checkpointer.wait(5)
    assert store.checkpointer.runs == 0
    _write(store, 1)
    assert store.checkpointer.wait(30)
    assert store.checkpointer.runs == 1
    assert _rows_in_the_file_alone(store, tmp_path) == wal.COMMITS - 1


def test_the_thread_ends_when_idle_and_starts_again(
    store: SqliteStore, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(wal, "IDLE_SECONDS", 0.05)
    checkpointer = store.checkpointer
    assert checkpointer is not None
    _write(store, wal.ROWS)
    assert checkpointer.wait(30)
    first = checkpointer._thread
    if first is not None:
        first.join(10)
        assert not first.is_alive()
    assert checkpointer._thread is None
    _write(store, wal.ROWS)
    assert checkpointer.wait(30)
    assert checkpointer.runs == 2
    assert _rows_in_the_file_alone(store, tmp_path) == 2 * wal.ROWS


def test_closing_the_store_stops_the_thread_and_empties_the_wal(tmp_path: Path) -> None:
    store = SqliteStore(f"sqlite:///{tmp_path}/closed.sqlite")
    with store.transaction() as tx:
        tx.cur.execute("CREATE TABLE t (n INTEGER)")
    _write(store, wal.ROWS + 1)
    checkpointer = store.checkpointer
    assert checkpointer is not None
    thread = checkpointer._thread
    assert thread is not None
    store.close()
    assert not thread.is_alive()
    assert not Path(f"{store.database}-wal").exists()  # the last connection checkpointed and removed it
    conn = sqlite3.connect(store.database)
    try:
        assert conn.execute("SELECT COUNT(*) FROM t").fetchone()[0] == wal.ROWS + 1
    finally:
        conn.close()
    checkpointer.request()  # after close: ignored, no thread
    assert checkpointer._thread is thread
    assert not thread.is_alive()


def test_the_wal_file_shrinks_back_after_a_large_transaction(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(wal, "LOG_BYTES", 256 << 10)
    store = SqliteStore(f"sqlite:///{tmp_path}/large.sqlite")
    log = Path(f"{store.database}-wal")
    try:
        with store.transaction() as tx:
            tx.cur.execute("CREATE TABLE t (n INTEGER, pad BLOB)")
            tx.cur.executemany("INSERT INTO t VALUES (?, ?)", [(n, bytes(1000)) for n in range(wal.ROWS)])
        assert log.stat().st_size > 4 << 20  # the transaction's pages
        assert store.checkpointer is not None and store.checkpointer.wait(30)
        with store.transaction() as tx:  # the next write starts the log over, and truncates it
            tx.cur.execute("INSERT INTO t VALUES (-1, NULL)")
        assert log.stat().st_size <= 256 << 10
        assert store.query("SELECT COUNT(*) FROM t")[0][0] == wal.ROWS + 1
    finally:
        store.close()


def test_an_in_memory_store_has_no_wal_to_checkpoint() -> None:
    store = SqliteStore("sqlite:///:memory:")
    try:
        assert store.checkpointer is None
        with store.transaction() as tx:
            tx.cur.execute("CREATE TABLE t (n INTEGER)")
            tx.cur.executemany("INSERT INTO t (n) VALUES (?)", [(n,) for n in range(10)])
        assert store.query("SELECT COUNT(*) FROM t")[0][0] == 10
    finally:
        store.close()
