"""PostgreSQL bulk inserts: COPY in the binary format, and the text format when a value does not fit it."""

from __future__ import annotations

from typing import Any

import pytest

from server.store import postgres as pg
from server.store.base import FreshBatch


@pytest.fixture
def store(postgres_store: Any) -> Any:
    return postgres_store


def test_binary_copy_types_are_the_schema_s(store: Any) -> None:
    """The column types the binary COPY is given are those of the database (they must not drift)."""
    for table, columns in pg._BINARY_COPY.items():
        rows = store.query(
            "SELECT a.attname, t.typname FROM pg_attribute a JOIN pg_type t ON t.oid = a.atttypid "
            "WHERE a.attrelid = CAST(? AS regclass) AND a.attnum > 0 AND NOT a.attisdropped",
            (table,),
        )
        actual = {str(name): str(type_) for name, type_ in rows}
        assert {c: actual[c] for c in columns} == columns, table


def _batch(code: Any) -> FreshBatch:
    return FreshBatch(
        1.0,
        "PUT",
        [("Observation", "o1"), ("Observation", "o2")],
        [b"{}", b"{}"],
        [b"\x00\x01zstd", b"\x02"],
        {
            "token": [
                (0, "Observation", "code", "http://loinc.org", code, None),
                (1, "Observation", "code", None, "x", None),
            ],
            "reference": [(1, "Observation", "subject", "Patient", "p", "Patient/p")],
        },
        {},
    )


def test_rows_go_in_binary_and_a_refused_value_in_text(store: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    formats: list[tuple[str, bool]] = []
    real = pg._PgWriteTx._copy

    def spy(self: Any, table: str, columns: Any, rows: Any, types: Any) -> None:
        formats.append((table, types is not None))
        real(self, table, columns, rows, types)

    monkeypatch.setattr(pg._PgWriteTx, "_copy", spy)
    with store.transaction() as tx:
        rids = tx.insert_fresh(_batch("718-7"))
    assert formats and all(binary for _, binary in formats)  # every table of the batch: binary
    stored = store.query("SELECT rid, code FROM idx_token ORDER BY rid")
    assert stored == [(rids[0], "718-7"), (rids[1], "x")]
    history = store.query("SELECT content FROM history ORDER BY rid")
    assert [bytes(r[0]) for r in history] == [b"\x00\x01zstd", b"\x02"]  # bytea as given

    store.reset()
    formats.clear()
    with store.transaction() as tx:
        rids = tx.insert_fresh(_batch(42))  # an int where the column is text: binary refuses it
        assert tx.current_many([("Observation", "o2")])[("Observation", "o2")].rid == rids[1]  # tx goes on
    assert [f for f in formats if f[0] == "idx_token"] == [("idx_token", True), ("idx_token", False)]
    assert store.query("SELECT rid, code FROM idx_token ORDER BY rid") == [(rids[0], "42"), (rids[1], "x")]
    assert store.query("SELECT rid, target_id FROM idx_reference") == [(rids[1], "p")]
