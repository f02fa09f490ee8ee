"""Store.bulk_session: value indexes deferred for bulk writes into an empty store, never lost."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

from server.store import open_store
from server.store.base import Store, StoredResource
from server.store.sql import DEFERRABLE_INDEXES, deferrable_indexes
from server.store.sqlite import SqliteStore

_TABLES = ("token", "string", "reference", "date", "number", "quantity", "uri")


def _indexes(store: Store) -> set[str]:
    if store.dialect == "sqlite":
        rows = store.query("SELECT name FROM sqlite_master WHERE type = 'index'")
    else:
        rows = store.query("SELECT indexname FROM pg_indexes WHERE schemaname = current_schema()")
    return {str(r[0]) for r in rows}


def _patient(n: int) -> tuple[StoredResource, str, Any]:
    body = b'{"resourceType":"Patient","id":"p%d","gender":"%s"}' % (n, b"female" if n % 2 else b"male")
    index = SimpleNamespace(**{t: [] for t in _TABLES})
    index.token = [("gender", "http://hl7.org/fhir/administrative-gender", "female" if n % 2 else "male", None)]
    return StoredResource("Patient", f"p{n}", 1, 1.0 + n, False, body), "PUT", index


def _females(store: Store) -> set[str]:
    rows = store.query(
        "SELECT r.res_id FROM resources r WHERE r.rid IN "
        "(SELECT rid FROM idx_token WHERE param = ? AND res_type = ? AND code = ?)",
        ("gender", "Patient", "female"),
    )
    return {str(r[0]) for r in rows}


def test_every_deferrable_index_is_in_the_schema(store: Store) -> None:
    assert set(deferrable_indexes(store.dialect)) == set(DEFERRABLE_INDEXES)
    assert set(DEFERRABLE_INDEXES) <= _indexes(store)
    assert not any(name.endswith("_rid") for name in DEFERRABLE_INDEXES)  # deletes by rid stay indexed


def test_an_empty_sqlite_store_builds_the_value_indexes_at_the_end(store: Store) -> None:
    with store.bulk_session() as deferred:
        assert deferred is (store.dialect == "sqlite")
        missing = set(DEFERRABLE_INDEXES) - _indexes(store)
        assert missing == (set(DEFERRABLE_INDEXES) if deferred else set())
        for start in (0, 10):  # several transactions, as a load makes
            with store.transaction() as tx:
                tx.put_many([_patient(n) for n in range(start, start + 10)])
        assert _females(store) == {f"p{n}" for n in range(1, 20, 2)}  # searches still answer, unindexed
        with store.transaction() as tx:  # a resource written again in the session: its rows are replaced
            cur = tx.current("Patient", "p1")
            assert cur is not None
            res, method, index = _patient(2)
            tx.put_many([(StoredResource("Patient", "p1", 2, 50.0, False, res.content, cur.rid), method, index)])
    assert set(DEFERRABLE_INDEXES) <= _indexes(store)
    assert _females(store) == {f"p{n}" for n in range(3, 20, 2)}


def test_a_store_holding_resources_defers_nothing(store: Store) -> None:
    with store.transaction() as tx:
        tx.put_many([_patient(0)])
    with store.bulk_session() as deferred:
        assert deferred is False
        assert set(DEFERRABLE_INDEXES) <= _indexes(store)


def test_the_indexes_come_back_when_the_session_fails(store: Store) -> None:
    with pytest.raises(RuntimeError, match="boom"), store.bulk_session():
        with store.transaction() as tx:
            tx.put_many([_patient(1)])
        raise RuntimeError("boom")
    assert set(DEFERRABLE_INDEXES) <= _indexes(store)
    assert _females(store) == {"p1"}


def test_a_killed_session_leaves_a_store_whose_next_open_restores_the_indexes(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path}/killed.sqlite"
    first = SqliteStore(url)
    assert first._drop_value_indexes() is True  # what the session's start does; the process then "dies"
    with first.transaction() as tx:
        tx.put_many([_patient(n) for n in range(5)])
    assert not set(DEFERRABLE_INDEXES) & _indexes(first)
    first.close()
    again = open_store(url)
    try:
        assert set(DEFERRABLE_INDEXES) <= _indexes(again)
        assert _females(again) == {"p1", "p3"}
        plan = " ".join(
            str(r[-1])
            for r in again.query(
                "EXPLAIN QUERY PLAN SELECT rid FROM idx_token WHERE param = ? AND res_type = ? AND code = ?",
                ("gender", "Patient", "female"),
            )
        )
        assert "idx_token_value" in plan
    finally:
        again.close()
