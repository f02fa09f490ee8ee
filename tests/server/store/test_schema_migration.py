"""An older database is brought up to the current schema when the store opens (server/store/schema.py)."""

from __future__ import annotations

from types import SimpleNamespace

from server.store import open_store
from server.store.base import Store, StoredResource
from server.store.schema import SCHEMA_VERSION, rebuilt_indexes


def _index_definition(store: Store, name: str) -> str:
    if store.dialect == "sqlite":
        rows = store.query("SELECT sql FROM sqlite_master WHERE type = 'index' AND name = ?", (name,))
    else:
        rows = store.query(
            "SELECT indexdef FROM pg_indexes WHERE schemaname = current_schema() AND indexname = ?", (name,)
        )
    return " ".join(str(r[0]) for r in rows)


def test_rebuilt_indexes_by_version() -> None:
    assert rebuilt_indexes(1) == ["idx_token_value"]
    assert rebuilt_indexes(SCHEMA_VERSION) == []


def test_version_1_token_index_is_built_again(database_url: str) -> None:
    store = open_store(database_url)
    store.reset()
    assert "code, rid, system, grp" in _index_definition(store, "idx_token_value")
    rows = [("gender", None, "female", None), ("gender", None, "female", "Female")]  # a repeated code
    index = SimpleNamespace(token=rows, string=[], reference=[], date=[], number=[], quantity=[], uri=[])
    with store.transaction() as tx:
        tx.put(StoredResource("Patient", "p1", 1, 1.0, False, b'{"resourceType":"Patient","id":"p1"}'), "PUT", index)
        cur = tx.cur  # type: ignore[attr-defined]  # the database as version 1 left it:
        cur.execute("DROP INDEX idx_token_value")
        cur.execute("CREATE INDEX idx_token_value ON idx_token (param, res_type, code, system, rid, grp)")
        cur.execute("UPDATE schema_meta SET version = 1")
    store.close()

    again = open_store(database_url)
    try:
        assert "code, rid, system, grp" in _index_definition(again, "idx_token_value")
        assert again.query("SELECT version FROM schema_meta") == [(SCHEMA_VERSION,)]
        sql = "SELECT rid FROM idx_token WHERE param = ? AND res_type = ? AND code = ?"
        assert len(again.query(sql, ("gender", "Patient", "female"))) == 2  # rows kept, index rebuilt
    finally:
        again.close()
