"""PostgreSQL store: psycopg 3 with a connection pool, content as zstd frames (``BYTEA``).

Writers run in explicit transactions (READ COMMITTED). Work that must not race with itself —
every write of one (type, id), a conditional create's search-then-insert — takes a
transaction-scoped advisory lock (``pg_advisory_xact_lock``) on a 64-bit hash of its key, so two
workers creating with the same criteria are serialised and the second sees the first's row.
Schema creation at start-up is serialised the same way, so several workers may start at once.
"""

from __future__ import annotations

import hashlib
import logging
import struct
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from functools import lru_cache
from typing import Any

import psycopg
from psycopg_pool import ConnectionPool

from server.store.base import ConflictRetry
from server.store.sql import RESOURCE_COLUMNS, Cursor, SqlStoreBase, SqlWriteTx

__all__ = ["PostgresStore"]

log = logging.getLogger(__name__)

_MIGRATION_LOCK = 0x6269676D6564  # "bigmed"


def _lock_id(key: str) -> int:
    return int.from_bytes(hashlib.blake2b(key.encode(), digest_size=8).digest(), "big", signed=True)


@lru_cache(maxsize=4096)
def _pg_sql(sql: str) -> str:
    return sql.replace("%", "%%").replace("?", "%s")


_IDX = {"rid": "int8", "res_type": "text", "param": "text", "grp": "int4"}
_RESOURCES = {"rid": "int8", "res_type": "text", "res_id": "text", "version": "int4", "ts": "float8", "deleted": "int2"}
#: Column types of the tables copied in the binary format (``_PgWriteTx._insert_rows``), as in the
#: schema (a test compares them with the database's). ``idx_number``/``idx_quantity`` are left out:
#: their ``numeric`` value may come as a float, which the binary format does not take.
_BINARY_COPY: dict[str, dict[str, str]] = {
    "resources": _RESOURCES,
    "history": {**_RESOURCES, "method": "text", "content": "bytea"},
    "idx_token": {**_IDX, "system": "text", "code": "text", "text": "text"},
    "idx_string": {**_IDX, "value": "text", "exact": "text"},
    "idx_reference": {**_IDX, "target_type": "text", "target_id": "text", "url": "text"},
    "idx_date": {**_IDX, "low": "float8", "high": "float8"},
    "idx_uri": {**_IDX, "value": "text"},
    "variant_range": {
        "rid": "int8",
        "subject": "text",
        "ref_seq": "text",
        "start_pos": "int8",
        "end_pos": "int8",
        "bin": "int4",
        "ref_allele": "text",
        "alt_allele": "text",
        "structural": "int2",
        "source_class": "text",
        "implied": "int2",
    },
}


def _binary_types(table: str, columns: Sequence[str]) -> list[str] | None:
    """The types to copy ``columns`` of ``table`` in the binary format with; None: the text format."""
    known = _BINARY_COPY.get(table, {})
    types = [known.get(c) for c in columns]
    return [t for t in types if t is not None] if all(types) else None


_CURRENT_MANY = (
    f"SELECT x.* FROM unnest(%b::text[]) AS k(id) CROSS JOIN LATERAL (SELECT {RESOURCE_COLUMNS}, h.content "
    "FROM resources r LEFT JOIN history h ON h.rid = r.rid AND h.version = r.version "
    "WHERE r.res_type = %s AND r.res_id = k.id LIMIT 1) x"
)


class _PgWriteTx(SqlWriteTx):
    def lock(self, key: str) -> None:
        self.cur.execute("SELECT pg_advisory_xact_lock(%s)", (_lock_id(key),))

    def _insert_rows(self, table: str, columns: Sequence[str], rows: Sequence[Sequence[Any]]) -> None:
        """Bulk inserts go through COPY: several times faster than a pipelined ``executemany``.

        The tables of :data:`_BINARY_COPY` are copied in the binary format: no text to quote and
        parse, ``bytea`` not hex-escaped (an exome ingestion: 22.1 -> 17.5 s of server CPU with the
        lookups below, 5.7 -> 3.3 s in this process). A value the binary format cannot take (an int
        in a text column) makes that COPY start again in the text format, from a savepoint.
        """
        types = _binary_types(table, columns)
        if types is not None:
            try:
                with self.cur.connection.transaction():  # a savepoint: a refused row undoes this COPY only
                    self._copy(table, columns, rows, types)
                return
            except (TypeError, ValueError, OverflowError, struct.error) as exc:
                log.debug("COPY %s in the binary format refused a value (%s): the text format", table, exc)
        self._copy(table, columns, rows, None)

    def _copy(self, table: str, columns: Sequence[str], rows: Sequence[Sequence[Any]], types: list[str] | None) -> None:
        how = " (FORMAT BINARY)" if types is not None else ""
        with self.cur.copy(f"COPY {table} ({', '.join(columns)}) FROM STDIN{how}") as copy:
            if types is not None:
                copy.set_types(types)
            for row in rows:
                copy.write_row(row)

    def _current_rows(self, type_: str, ids: Sequence[str]) -> Iterator[Sequence[Any]]:
        """:meth:`SqlWriteTx.current_many`'s lookup as one probe per id (``LATERAL``), whatever the statistics say.

        Inside a bulk transaction the planner's statistics still describe the tables as they were
        before it (a few hundred Observations where this transaction has written 100,000): with
        ``res_id IN (…)`` it then scans every row of the type (``resources_type_ts``) for each chunk
        of ids, 0.2-0.3 s a batch at the end of an exome ingestion. A lateral subquery with equality
        on both columns of ``UNIQUE (res_type, res_id)`` is always planned as one probe of it (``LIMIT
        1`` keeps the planner from flattening it into a join). The ids go as one binary array (``%b``:
        the text format quotes each element in Python, 4 µs an id).
        """
        self.cur.execute(_CURRENT_MANY, (ids, type_))
        yield from self.cur.fetchall()

    def _reserve_rids(self, n: int) -> Sequence[int]:
        """``n`` values of the rid sequence (not necessarily consecutive: other writers draw too)."""
        self.cur.execute("SELECT nextval(pg_get_serial_sequence('resources', 'rid')) FROM generate_series(1, %s)", (n,))
        return [int(r[0]) for r in self.cur.fetchall()]

    def _insert_numbered(
        self, table: str, columns: Sequence[str], rows: Sequence[Sequence[Any]], rids: Sequence[int]
    ) -> None:
        self._insert_rows(table, columns, [(rids[row[0]], *row[1:]) for row in rows])  # drawn rids need not follow


def _configure(conn: psycopg.Connection[Any]) -> None:
    # psycopg prepares a statement after 5 runs, and PostgreSQL then switches to a generic plan
    # once it costs about the same as the custom ones. For search SQL a generic plan ignores how
    # selective the values are (a rare code or a common one) and can be 50x slower: always plan
    # with the actual values.
    conn.execute("SET plan_cache_mode = force_custom_plan")


class PostgresStore(SqlStoreBase):
    dialect = "postgresql"

    def __init__(self, url: str, pool_size: int = 8) -> None:
        if url.startswith("postgres://"):
            url = "postgresql://" + url[len("postgres://") :]
        self.pool = ConnectionPool(
            url,
            min_size=1,
            max_size=max(pool_size, 2),
            kwargs={"autocommit": True},
            configure=_configure,
            open=True,
            name="bigmed",
        )
        with self.pool.connection() as conn, conn.transaction(), conn.cursor() as cur:
            cur.execute("SELECT pg_advisory_xact_lock(%s)", (_MIGRATION_LOCK,))
            self._migrate(cur)

    def _sql(self, sql: str) -> str:
        return _pg_sql(sql)

    def _migrate(self, cur: Cursor) -> None:
        super()._migrate(cur)
        self._content_to_bytea(cur)

    def _content_to_bytea(self, cur: Cursor) -> None:
        """PostgreSQL databases before schema version 3 kept ``history.content`` as JSONB: make it
        ``BYTEA`` holding what was served (the exact ``raw`` bytes where there were some, else the
        JSONB's text), read as plain JSON beside the zstd frames written from now on."""
        cur.execute(
            "SELECT data_type FROM information_schema.columns WHERE table_schema = current_schema() "
            "AND table_name = 'history' AND column_name = 'content'"
        )
        row = cur.fetchone()
        if row is not None and row[0] == "jsonb":
            log.warning("history.content: JSONB -> BYTEA (schema version 3), once; a large database takes a while")
            cur.execute(
                "ALTER TABLE history ALTER COLUMN content TYPE BYTEA "
                "USING COALESCE(raw, convert_to(content::text, 'UTF8'))"
            )
            cur.execute("UPDATE history SET raw = NULL WHERE raw IS NOT NULL")

    @contextmanager
    def _reader(self) -> Iterator[Cursor]:
        with self.pool.connection() as conn, conn.cursor() as cur:
            yield cur

    @contextmanager
    def transaction(self) -> Iterator[SqlWriteTx]:
        try:
            with self.pool.connection() as conn, conn.transaction(), conn.cursor() as cur:
                tx = _PgWriteTx(self, cur)
                yield tx
                tx.bump_generations()
        except (
            psycopg.errors.UniqueViolation,
            psycopg.errors.SerializationFailure,
            psycopg.errors.DeadlockDetected,
        ) as exc:
            raise ConflictRetry(str(exc)) from exc

    def reset(self) -> None:
        with self.transaction() as tx:
            rows = tx.query(
                "SELECT tablename FROM pg_tables WHERE schemaname = current_schema() "
                "AND tablename NOT IN ('schema_meta', 'type_gen')"
            )
            names = ", ".join(f'"{r[0]}"' for r in rows)
            if names:
                tx.cur.execute(f"TRUNCATE {names} RESTART IDENTITY")

    def close(self) -> None:
        self._run_close_hooks()
        self.pool.close()
