"""An older database is brought up to the current schema when the store opens (server/store/schema.py)."""

from __future__ import annotations

import json
from types import SimpleNamespace

from server.store import open_store
from server.store.base import Store, StoredResource
from server.store.schema import SCHEMA_VERSION, rebuilt_indexes
from tests.conftest import postgres_url


def _index_definition(store: Store, name: str) -> str:
    if store.dialect == "sqlite":
        rows = store.query("SELECT sql FROM sqlite_master WHERE type = 'index' AND name = ?", (name,))
    else:
        rows = store.query(
            "SELECT indexdef FROM pg_indexes WHERE schemaname = current_schema() AND indexname = ?", (name,)
        )
    return " ".join(str(r[0]) for r in rows)


def test_rebuilt_indexes_by_version() -> None:
    assert rebuilt_indexes(1) == ["idx_token_value", "idx_reference_target"]
    assert rebuilt_indexes(3) == ["idx_reference_target"]
    assert rebuilt_indexes(SCHEMA_VERSION) == []


def test_version_3_reference_target_index_is_dropped(database_url: str) -> None:
    """Schema 4 has no index of reference rows by target alone: a database from version 3 loses it
    when the store opens, its rows kept."""
    store = open_store(database_url)
    store.reset()
    assert _index_definition(store, "idx_reference_target") == ""
    index = SimpleNamespace(
        token=[],
        string=[],
        reference=[("subject", "Patient", "p1", "Patient/p1")],
        date=[],
        number=[],
        quantity=[],
        uri=[],
    )
    with store.transaction() as tx:
        tx.put(
            StoredResource("Observation", "o1", 1, 1.0, False, b'{"resourceType":"Observation","id":"o1"}'),
            "PUT",
            index,
        )
        cur = tx.cur  # type: ignore[attr-defined]  # the database as version 3 left it:
        cur.execute("CREATE INDEX idx_reference_target ON idx_reference (target_type, target_id)")
        cur.execute("UPDATE schema_meta SET version = 3")
    assert "target_type, target_id" in _index_definition(store, "idx_reference_target")
    store.close()

    again = open_store(database_url)
    try:
        assert _index_definition(again, "idx_reference_target") == ""
        assert again.query("SELECT version FROM schema_meta") == [(SCHEMA_VERSION,)]
        assert again.query("SELECT target_id FROM idx_reference WHERE param = 'subject'") == [("p1",)]
    finally:
        again.close()


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


def test_postgresql_jsonb_content_becomes_bytea_with_what_was_served() -> None:
    """Version 2 kept PostgreSQL content as JSONB (``raw`` holding the exact bytes where JSONB would
    print a number differently); opening the store makes it BYTEA, serving what it served."""
    store = open_store(postgres_url())
    store.reset()
    exact = b'{"resourceType":"Observation","id":"o1","valueQuantity":{"value":1.0E+245}}'
    with store.transaction() as tx:
        cur = tx.cur  # type: ignore[attr-defined]  # the database as version 2 left it:
        cur.execute("ALTER TABLE history ALTER COLUMN content TYPE JSONB USING convert_from(content, 'UTF8')::jsonb")
        cur.execute("UPDATE schema_meta SET version = 2")
        for rid, (type_, id_, body, raw) in enumerate(
            [
                ("Patient", "p1", '{"resourceType": "Patient", "id": "p1", "active": true}', None),
                ("Observation", "o1", exact.decode(), exact),
            ],
            start=1,
        ):
            cur.execute(
                "INSERT INTO resources (rid, res_type, res_id, version, ts, deleted) VALUES (%s, %s, %s, 1, 1.0, 0)",
                (rid, type_, id_),
            )
            cur.execute(
                "INSERT INTO history (rid, res_type, res_id, version, ts, deleted, method, content, raw) "
                "VALUES (%s, %s, %s, 1, 1.0, 0, 'PUT', %s::jsonb, %s)",
                (rid, type_, id_, body, raw),
            )
    store.close()

    again = open_store(postgres_url())
    try:
        column = (
            "SELECT data_type FROM information_schema.columns "
            "WHERE table_schema = current_schema() AND table_name = ? AND column_name = ?"
        )
        assert again.query(column, ("history", "content")) == [("bytea",)]
        assert again.query("SELECT version FROM schema_meta") == [(SCHEMA_VERSION,)]
        patient = again.read("Patient", "p1")
        assert patient is not None and json.loads(patient.content or b"") == {
            "resourceType": "Patient",
            "id": "p1",
            "active": True,
        }
        observation = again.read("Observation", "o1")
        assert observation is not None and observation.content == exact  # the raw bytes, not JSONB's 1.0e+245
        assert again.query("SELECT COUNT(*) FROM history WHERE raw IS NOT NULL") == [(0,)]
        # new versions are zstd frames beside the plain rows
        with again.transaction() as tx:
            tx.put(
                StoredResource("Patient", "p1", 2, 2.0, False, b'{"resourceType":"Patient","id":"p1"}', 1), "PUT", None
            )
        assert bytes(again.query("SELECT content FROM history WHERE version = 2")[0][0])[:4] == b"\x28\xb5\x2f\xfd"
        assert again.read("Patient", "p1").content == b'{"resourceType":"Patient","id":"p1"}'  # type: ignore[union-attr]
    finally:
        again.close()


def test_version_4_range_rows_get_implied_0(database_url: str) -> None:
    """Schema 5 adds ``variant_range.implied``: the range rows of a version 4 database, whose reference
    rows were all written, get 0 (they imply nothing, server/search/implied.py)."""
    store = open_store(database_url)
    store.reset()
    with store.transaction() as tx:
        cur = tx.cur  # type: ignore[attr-defined]  # the database as version 4 left it:
        cur.execute("DROP TABLE variant_range")
        cur.execute(
            "CREATE TABLE variant_range (rid BIGINT NOT NULL, subject TEXT NOT NULL, ref_seq TEXT NOT NULL, "
            "start_pos BIGINT NOT NULL, end_pos BIGINT NOT NULL, bin INTEGER NOT NULL, ref_allele TEXT, "
            "alt_allele TEXT, structural SMALLINT NOT NULL, source_class TEXT)"
        )
        cur.execute("INSERT INTO variant_range VALUES (7, 'Patient/p1', 'NC_000001.11', 10, 11, 585, 'A', 'G', 0, 'x')")
        cur.execute("UPDATE schema_meta SET version = 4")
    store.close()

    again = open_store(database_url)
    try:
        assert again.query("SELECT version FROM schema_meta") == [(SCHEMA_VERSION,)]
        assert again.query("SELECT rid, implied FROM variant_range") == [(7, 0)]
        assert "subject, ref_seq, bin, start_pos" in _index_definition(again, "variant_range_subject")
    finally:
        again.close()
