"""SQL shared by the SQLite and PostgreSQL stores.

The two backends differ in connection handling, placeholders and the JSON column type only;
everything else (what is read and written, and how index rows are replaced) lives here once.
SQL is written with ``?`` placeholders; the PostgreSQL store rewrites them to ``%s``.
"""

from __future__ import annotations

import functools
import secrets
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from contextlib import AbstractContextManager, contextmanager
from decimal import Decimal
from typing import Any

from server.store import content
from server.store.base import INDEX_TABLES, STORE_ID_KEY, DerivedIndex, FreshBatch, HistoryEntry, StoredResource
from server.store.schema import ADDED_COLUMNS, SCHEMA_VERSION, ddl, rebuilt_indexes

__all__ = [
    "DEFERRABLE_INDEXES",
    "INDEX_COLUMNS",
    "RESOURCE_COLUMNS",
    "Cursor",
    "SqlStoreBase",
    "SqlWriteTx",
    "deferrable_indexes",
    "derived_rows",
    "index_params",
]

Cursor = Any  # a DB-API cursor-like object with execute/executemany/fetchall/fetchone

RESOURCE_COLUMNS = "r.rid, r.res_type, r.res_id, r.version, r.ts, r.deleted"

#: Column order of the rows :func:`index_params` builds, per index table (an ordinary row stops
#: before ``grp``).
INDEX_COLUMNS = {table: ("rid", "res_type", "param", *cols, "grp") for table, cols in INDEX_TABLES.items()}
_REINDEX_CHUNK = 500
#: the history columns written (``raw`` stays NULL: see server/store/schema.py)
_HISTORY_COLUMNS = ("rid", "res_type", "res_id", "version", "ts", "deleted", "method", "content")


#: Secondary indexes a bulk session into an empty store builds at its end instead of row by row
#: (:meth:`SqlStoreBase.bulk_session`): the value indexes of the search index tables, whose keys
#: arrive in random order. The ``*_rid`` indexes stay (their keys arrive in order, and they serve
#: the deletes of a resource written twice), and so do those of every other table.
DEFERRABLE_INDEXES = (
    "idx_token_value",
    "idx_string_value",
    "idx_reference_value",
    "idx_date_value",
    "idx_date_high",
    "idx_number_value",
    "idx_quantity_value",
    "idx_uri_value",
)


def deferrable_indexes(dialect: str) -> dict[str, str]:
    """Name -> ``CREATE INDEX IF NOT EXISTS`` statement of each of :data:`DEFERRABLE_INDEXES`."""
    out = {}
    for stmt in ddl(dialect):
        words = stmt.split()
        if stmt.startswith("CREATE INDEX IF NOT EXISTS") and words[5] in DEFERRABLE_INDEXES:
            out[words[5]] = stmt
    return out


@functools.lru_cache(maxsize=256)
def _insert_sql(table: str, columns: tuple[str, ...]) -> str:
    """``INSERT INTO table (columns) VALUES (?, …)``."""
    return f"INSERT INTO {table} ({', '.join(columns)}) VALUES ({', '.join('?' for _ in columns)})"


def index_params(rid: int, type_: str, table: str, rows: Sequence[tuple[Any, ...]]) -> list[tuple[Any, ...]]:
    """The stored rows (:data:`INDEX_COLUMNS`) of one resource's index rows in ``table``.

    An ordinary row has no ``grp`` value: :func:`grouped` inserts it through a statement without
    the column (NULL), because Python's sqlite3 binds ``None`` through its adaptation protocol,
    about 0.5 µs a value, a tenth of what the row costs (``docs/bulk-storage.md``).
    """
    head = (rid, type_)
    return [head + row for row in rows]


def grouped(table: str, rows: Sequence[tuple[Any, ...]]) -> list[tuple[tuple[str, ...], Sequence[tuple[Any, ...]]]]:
    """(columns, rows) to insert :func:`index_params`' rows of ``table`` with: ordinary rows
    without ``grp``, a composite's component rows with it (none for no rows)."""
    columns = INDEX_COLUMNS[table]
    n = len(columns)
    if not any(len(row) == n for row in rows):
        return [(columns[:-1], rows)] if rows else []
    parts = [(columns[:-1], [row for row in rows if len(row) < n]), (columns, [row for row in rows if len(row) == n])]
    return [(cols, part) for cols, part in parts if part]


def _comparable_row(row: Sequence[Any], length: int) -> tuple[Any, ...]:
    """``row`` (an ordinary one without its ``grp``) as :func:`_comparable` gives a stored one, ``length`` long."""
    return _comparable(tuple(row) + (None,) * (length - len(row)))


def _comparable(row: Sequence[Any]) -> tuple[Any, ...]:
    """An index row as compared by :meth:`SqlWriteTx.replace_index`: numbers as floats (a column
    may give back a float or a Decimal for what was written as the other)."""
    return tuple(float(v) if isinstance(v, Decimal | int) and not isinstance(v, bool) else v for v in row)


def derived_rows(d: DerivedIndex, res: StoredResource, index: Any) -> list[tuple[Any, ...]]:
    """Rows of derived index ``d`` for a written version: precomputed in ``index.derived``, else from its JSON."""
    if res.deleted or res.content is None:
        return []
    given = getattr(index, "derived", None)
    if given is not None and d.table in given:
        return list(given[d.table])
    return d.rows(res.type, res.content)


def _to_resource(row: Sequence[Any], content: Any, decode: Callable[[Any], bytes | None]) -> StoredResource:
    return StoredResource(
        rid=row[0],
        type=row[1],
        id=row[2],
        version=row[3],
        ts=row[4],
        deleted=bool(row[5]),
        content=decode(content),
    )


class SqlStoreBase:
    """Read paths and schema management shared by both SQL stores."""

    dialect: str = ""
    derived: tuple[DerivedIndex, ...] = ()  # set by open_store; kept in step by put/put_many

    def before_close(self, hook: Callable[[], object]) -> None:
        """Run ``hook`` when the store is closed, before its connections go (e.g. a queue of
        writes flushing itself: :class:`server.audit_queue.AuditWriter`)."""
        self.__dict__.setdefault("_close_hooks", []).append(hook)

    def _run_close_hooks(self) -> None:
        for hook in self.__dict__.pop("_close_hooks", []):
            hook()

    # -- to be provided by the backend ------------------------------------------------------
    def _reader(self) -> AbstractContextManager[Cursor]:
        raise NotImplementedError

    def _sql(self, sql: str) -> str:
        return sql

    def _decode(self, stored: Any) -> bytes | None:
        """The JSON bytes of a content column value (a zstd frame, or plain JSON written before)."""
        if stored is None:
            return None
        return content.decompress(stored.encode("utf-8") if isinstance(stored, str) else bytes(stored))

    # -- schema ---------------------------------------------------------------------------
    def _columns(self, cur: Cursor, table: str) -> set[str]:
        if self.dialect == "sqlite":
            cur.execute(f"PRAGMA table_info({table})")
            return {str(r[1]) for r in cur.fetchall()}
        cur.execute(
            self._sql(
                "SELECT column_name FROM information_schema.columns WHERE table_schema = current_schema() "
                "AND table_name = ?"
            ),
            (table,),
        )
        return {str(r[0]) for r in cur.fetchall()}

    def _migrate(self, cur: Cursor) -> None:
        statements = ddl(self.dialect)
        tables = [s for s in statements if s.startswith("CREATE TABLE")]
        for stmt in tables:
            cur.execute(stmt)
        for table, column, sql_type in ADDED_COLUMNS:
            if column not in self._columns(cur, table):
                cur.execute(f"ALTER TABLE {table} ADD COLUMN {column} {sql_type}")
        cur.execute("SELECT version FROM schema_meta")
        row = cur.fetchone()
        if row is not None and row[0] > SCHEMA_VERSION:
            raise RuntimeError(
                f"database schema version {row[0]} is newer than this server's ({SCHEMA_VERSION}); upgrade the server"
            )
        for name in rebuilt_indexes(row[0]) if row is not None else ():
            cur.execute(f"DROP INDEX IF EXISTS {name}")  # built again, as now defined, just below
        for stmt in statements:
            if stmt not in tables:
                cur.execute(stmt)
        if row is None:
            cur.execute(self._sql("INSERT INTO schema_meta (version) VALUES (?)"), (SCHEMA_VERSION,))
        elif row[0] < SCHEMA_VERSION:
            cur.execute(self._sql("UPDATE schema_meta SET version = ?"), (SCHEMA_VERSION,))
        # the database's identity, drawn once: cache keys carry it (server/cache.py), so databases
        # sharing one Redis never answer for each other even when their generations coincide
        cur.execute(
            self._sql("INSERT INTO type_gen (res_type, gen) VALUES (?, ?) ON CONFLICT (res_type) DO NOTHING"),
            (STORE_ID_KEY, secrets.randbits(62)),
        )

    # -- reads ----------------------------------------------------------------------------
    def _select_current(self, where: str) -> str:
        return self._sql(
            f"SELECT {RESOURCE_COLUMNS}, h.content FROM resources r "
            f"LEFT JOIN history h ON h.rid = r.rid AND h.version = r.version WHERE {where}"
        )

    def read(self, type_: str, id_: str) -> StoredResource | None:
        with self._reader() as cur:
            cur.execute(self._select_current("r.res_type = ? AND r.res_id = ?"), (type_, id_))
            row = cur.fetchone()
        return None if row is None else _to_resource(row, row[6], self._decode)

    def read_many(self, rids: Sequence[int]) -> list[StoredResource]:
        if not rids:
            return []
        out: dict[int, StoredResource] = {}
        with self._reader() as cur:
            for start in range(0, len(rids), 500):
                chunk = list(rids[start : start + 500])
                marks = ", ".join("?" for _ in chunk)
                cur.execute(self._select_current(f"r.rid IN ({marks})"), chunk)
                for row in cur.fetchall():
                    out[row[0]] = _to_resource(row, row[6], self._decode)
        return [out[r] for r in rids if r in out]

    def vread(self, type_: str, id_: str, version: int) -> StoredResource | None:
        sql = self._sql(
            "SELECT h.rid, h.res_type, h.res_id, h.version, h.ts, h.deleted, "
            "h.content FROM resources r JOIN history h ON h.rid = r.rid AND h.version = ? "
            "WHERE r.res_type = ? AND r.res_id = ?"
        )
        with self._reader() as cur:
            cur.execute(sql, (version, type_, id_))
            row = cur.fetchone()
        return None if row is None else _to_resource(row, row[6], self._decode)

    @staticmethod
    def _history_where(
        type_: str | None, id_: str | None, since: float | None, before_seq: int | None
    ) -> tuple[str, list[Any]]:
        clauses: list[str] = []
        params: list[Any] = []
        if type_ is not None and id_ is not None:  # instance history: through the (rid, version) index
            clauses.append("h.rid = (SELECT rid FROM resources WHERE res_type = ? AND res_id = ?)")
            params.extend([type_, id_])
        elif type_ is not None:
            clauses.append("h.res_type = ?")
            params.append(type_)
        elif id_ is not None:
            clauses.append("h.res_id = ?")
            params.append(id_)
        if since is not None:
            clauses.append("h.ts >= ?")
            params.append(since)
        if before_seq is not None:
            clauses.append("h.seq < ?")
            params.append(before_seq)
        return (" AND ".join(clauses) or "1 = 1"), params

    def history(
        self,
        type_: str | None = None,
        id_: str | None = None,
        since: float | None = None,
        before_seq: int | None = None,
        limit: int = 50,
    ) -> list[HistoryEntry]:
        where, params = self._history_where(type_, id_, since, before_seq)
        sql = self._sql(
            "SELECT h.rid, h.res_type, h.res_id, h.version, h.ts, h.deleted, "
            f"h.content, h.seq, h.method FROM history h WHERE {where} ORDER BY h.seq DESC LIMIT ?"
        )
        with self._reader() as cur:
            cur.execute(sql, (*params, limit))
            rows = cur.fetchall()
        return [HistoryEntry(seq=r[7], method=r[8], resource=_to_resource(r, r[6], self._decode)) for r in rows]

    def count_history(self, type_: str | None = None, id_: str | None = None, since: float | None = None) -> int:
        where, params = self._history_where(type_, id_, since, None)
        with self._reader() as cur:
            cur.execute(self._sql(f"SELECT COUNT(*) FROM history h WHERE {where}"), params)
            row = cur.fetchone()
        return int(row[0])

    def query(self, sql: str, params: Sequence[Any] = ()) -> list[tuple[Any, ...]]:
        with self._reader() as cur:
            cur.execute(self._sql(sql), tuple(params))
            return [tuple(r) for r in cur.fetchall()]

    def transaction(self) -> AbstractContextManager[SqlWriteTx]:
        raise NotImplementedError

    def generations(self, types: Sequence[str]) -> dict[str, int]:
        """The current generation of each type (absent: never written), see ``bump_generations``."""
        if not types:
            return {}
        marks = ", ".join("?" for _ in types)
        with self._reader() as cur:
            cur.execute(self._sql(f"SELECT res_type, gen FROM type_gen WHERE res_type IN ({marks})"), tuple(types))
            return {str(r[0]): int(r[1]) for r in cur.fetchall()}

    def reindex(self, entries: Sequence[tuple[int, int, str, Any]]) -> int:
        """Replace the index rows of the given current resources in one write transaction."""
        with self.transaction() as tx:
            return tx.replace_index(entries)

    @contextmanager
    def bulk_session(self) -> Iterator[bool]:
        """Many bulk write transactions (a load, an EHR feed): index maintenance deferred when the store is empty.

        When the store holds no resource at all (no row in ``resources``, tombstones included),
        the value indexes of the search index tables (:data:`DEFERRABLE_INDEXES`) are dropped
        first and built when the session ends: one sort per index instead of a random B-tree
        insert per row (on SQLite about a third of what writing index rows costs). Otherwise
        nothing changes. Answers stay the same meanwhile: a search in the session (a conditional
        reference, an ``ifNoneExist``) reads the tables without those indexes, slower but right.
        The indexes are rebuilt also when the session ends with an error; a process killed in
        the session leaves them missing until the store is next opened, whose migration creates
        every missing index (``CREATE INDEX IF NOT EXISTS``). Yields whether indexes were deferred.
        SQLite only: on PostgreSQL (COPY) it measured no faster, so nothing is deferred there.
        """
        deferred = self._drop_value_indexes()
        try:
            yield deferred
        finally:
            if deferred:
                with self.transaction() as tx:
                    for stmt in deferrable_indexes(self.dialect).values():
                        tx.cur.execute(stmt)

    def _drop_value_indexes(self) -> bool:
        if self.dialect != "sqlite":  # measured on PostgreSQL (COPY): no gain worth its table locks
            return False
        with self.transaction() as tx:
            if tx.query("SELECT 1 FROM resources LIMIT 1"):
                return False
            for name in deferrable_indexes(self.dialect):
                tx.cur.execute(f"DROP INDEX IF EXISTS {name}")
        return True

    def analyze(self) -> None:
        tables = ["resources", *(f"idx_{t}" for t in INDEX_TABLES)]
        with self.transaction() as tx:
            if self.dialect == "sqlite":
                tx.cur.execute("ANALYZE")
            else:
                tx.cur.execute(f"ANALYZE {', '.join(tables)}")

    def iter_current(self, type_: str | None = None, batch: int = 1000) -> Iterator[StoredResource]:
        last = 0
        while True:
            where = "r.rid > ? AND r.deleted = 0" + (" AND r.res_type = ?" if type_ else "")
            params: tuple[Any, ...] = (last, type_) if type_ else (last,)
            with self._reader() as cur:
                cur.execute(self._select_current(where) + f" ORDER BY r.rid LIMIT {int(batch)}", params)
                rows = cur.fetchall()
            if not rows:
                return
            for row in rows:
                yield _to_resource(row, row[6], self._decode)
            last = rows[-1][0]


class SqlWriteTx:
    """A write transaction on one cursor; the backend opens and commits it."""

    def __init__(self, store: SqlStoreBase, cur: Cursor) -> None:
        self.store = store
        self.cur = cur
        self.touched: set[str] = set()  # resource types written: their generations move at commit

    def bump_generations(self) -> None:
        """Move the generation of every type written, as the last statement before COMMIT.

        The query cache keys answers by these generations (server/cache.py), so a commit makes
        every cached answer it could change unreachable, in every process, atomically with the
        write. ``*`` moves with every write (answers that depend on many types use it). Sorted,
        so concurrent writers lock the rows in one order.
        """
        for type_ in sorted({*self.touched, "*"} if self.touched else ()):
            self.cur.execute(
                self.store._sql(
                    "INSERT INTO type_gen (res_type, gen) VALUES (?, 1) "
                    "ON CONFLICT (res_type) DO UPDATE SET gen = type_gen.gen + 1"
                ),
                (type_,),
            )

    def lock(self, key: str) -> None:  # pragma: no cover - overridden where needed
        """SQLite's BEGIN IMMEDIATE already serialises writers; PostgreSQL overrides this."""

    def current(self, type_: str, id_: str) -> StoredResource | None:
        self.cur.execute(self.store._select_current("r.res_type = ? AND r.res_id = ?"), (type_, id_))
        row = self.cur.fetchone()
        return None if row is None else _to_resource(row, row[6], self.store._decode)

    def query(self, sql: str, params: Sequence[Any] = ()) -> list[tuple[Any, ...]]:
        self.cur.execute(self.store._sql(sql), tuple(params))
        return [tuple(r) for r in self.cur.fetchall()]

    def put(self, res: StoredResource, method: str, index: Any | None) -> StoredResource:
        self.touched.add(res.type)
        sql = self.store._sql
        cur = self.cur
        rid = res.rid
        if rid:
            cur.execute(
                sql("UPDATE resources SET version = ?, ts = ?, deleted = ? WHERE rid = ?"),
                (res.version, res.ts, int(res.deleted), rid),
            )
            for table in INDEX_TABLES:
                cur.execute(sql(f"DELETE FROM idx_{table} WHERE rid = ?"), (rid,))
        else:
            cur.execute(
                sql(
                    "INSERT INTO resources (res_type, res_id, version, ts, deleted) "
                    "VALUES (?, ?, ?, ?, ?) RETURNING rid"
                ),
                (res.type, res.id, res.version, res.ts, int(res.deleted)),
            )
            rid = cur.fetchone()[0]
        stored = None if res.content is None else content.compress(res.content)
        cur.execute(
            sql(
                "INSERT INTO history (rid, res_type, res_id, version, ts, deleted, method, content) "
                "VALUES (?, ?, ?, ?, ?, ?, ?, ?)"
            ),
            (rid, res.type, res.id, res.version, res.ts, int(res.deleted), method, stored),
        )
        if index is not None and not res.deleted:
            self._insert_index(rid, res.type, index)
        for d in self.store.derived:
            if res.type in d.types:
                if res.rid:
                    cur.execute(sql(f"DELETE FROM {d.table} WHERE rid = ?"), (rid,))
                rows = derived_rows(d, res, index)
                if rows:
                    cur.executemany(sql(_insert_sql(d.table, ("rid", *d.columns))), [(rid, *row) for row in rows])
        return StoredResource(
            rid=rid, type=res.type, id=res.id, version=res.version, ts=res.ts, deleted=res.deleted, content=res.content
        )

    def _insert_index(self, rid: int, type_: str, index: Any) -> None:
        for table in INDEX_TABLES:
            rows = getattr(index, table, None)
            if rows:
                for columns, part in grouped(table, index_params(rid, type_, table, rows)):
                    self.cur.executemany(self.store._sql(_insert_sql(f"idx_{table}", columns)), part)

    def replace_index(self, entries: Sequence[tuple[int, int, str, Any]]) -> int:
        """Replace the index rows of current resources, given as (rid, version, type, rows).

        An entry whose version is no longer current (written or deleted since it was read) is
        skipped, so a reindex running beside writers never puts back stale rows.
        """
        sql = self.store._sql
        self.touched.update(type_ for _, _, type_, _ in entries)
        done = 0
        for start in range(0, len(entries), _REINDEX_CHUNK):
            chunk = entries[start : start + _REINDEX_CHUNK]
            marks = ", ".join("?" for _ in chunk)
            self.cur.execute(
                sql(f"SELECT rid, version FROM resources WHERE deleted = 0 AND rid IN ({marks})"),
                [e[0] for e in chunk],
            )
            current = {int(r[0]): int(r[1]) for r in self.cur.fetchall()}
            kept = [e for e in chunk if current.get(e[0]) == e[1]]
            if not kept:
                continue
            rids = [e[0] for e in kept]
            marks = ", ".join("?" for _ in kept)
            for table, cols in INDEX_TABLES.items():
                # write only what changed: a resource's rows in this table are replaced when they
                # differ from the stored ones (index b-tree writes cost far more than reads)
                self.cur.execute(
                    sql(f"SELECT rid, param, {', '.join(cols)}, grp FROM idx_{table} WHERE rid IN ({marks})"), rids
                )
                n = len(INDEX_COLUMNS[table])
                stored: dict[int, Counter[tuple[Any, ...]]] = {}
                for row in self.cur.fetchall():
                    stored.setdefault(int(row[0]), Counter())[_comparable(row[1:])] += 1
                changed: list[int] = []
                params: list[tuple[Any, ...]] = []
                for rid, _, type_, index in kept:
                    new = index_params(rid, type_, table, getattr(index, table, None) or [])
                    if Counter(_comparable_row(p[2:], n - 2) for p in new) != stored.get(rid, Counter()):
                        changed.append(rid)
                        params.extend(new)
                if changed:
                    self.cur.executemany(sql(f"DELETE FROM idx_{table} WHERE rid = ?"), [(r,) for r in changed])
                for columns, part in grouped(table, params):
                    self._insert_rows(f"idx_{table}", columns, part)
            done += len(kept)
        return done

    def put_many(
        self, items: Sequence[tuple[StoredResource, str, Any]], compressed: Sequence[bytes | None] | None = None
    ) -> list[StoredResource]:
        """:meth:`put` for many resources at once (the bulk loader): one bulk insert per table.

        Each (type, id) appears at most once in ``items``; ``rid`` 0 means a new resource.
        """
        if not items:
            return []
        self.touched.update(res.type for res, _, _ in items)
        sql = self.store._sql
        cur = self.cur
        old = [res for res, _, _ in items if res.rid]
        if old:
            cur.executemany(
                sql("UPDATE resources SET version = ?, ts = ?, deleted = ? WHERE rid = ?"),
                [(r.version, r.ts, int(r.deleted), r.rid) for r in old],
            )
            rids = [(r.rid,) for r in old]
            for table in INDEX_TABLES:
                cur.executemany(sql(f"DELETE FROM idx_{table} WHERE rid = ?"), rids)
            for d in self.store.derived:
                mine = [(r.rid,) for r in old if r.type in d.types]
                if mine:
                    cur.executemany(sql(f"DELETE FROM {d.table} WHERE rid = ?"), mine)
        new = [res for res, _, _ in items if not res.rid]
        assigned: dict[tuple[str, str], int] = {}
        if new:  # rids drawn first and written with the rows (not looked up after the insert)
            drawn = self._reserve_rids(len(new))
            self._insert_rows(
                "resources",
                ("rid", "res_type", "res_id", "version", "ts", "deleted"),
                [(rid, r.type, r.id, r.version, r.ts, int(r.deleted)) for rid, r in zip(drawn, new, strict=True)],
            )
            assigned = {(r.type, r.id): rid for rid, r in zip(drawn, new, strict=True)}
        out: list[StoredResource] = []
        history: list[tuple[Any, ...]] = []
        batches: dict[str, list[tuple[Any, ...]]] = {table: [] for table in INDEX_TABLES}
        given: list[bytes | None] = list(compressed) if compressed is not None else [None] * len(items)
        missing = [k for k, (res, _, _) in enumerate(items) if given[k] is None and res.content is not None]
        packed = content.compress_many(items[k][0].content or b"" for k in missing)  # one loop: see compress_many
        for k, frame in zip(missing, packed, strict=True):
            given[k] = frame
        for k, (res, method, index) in enumerate(items):
            rid = res.rid or assigned[(res.type, res.id)]
            history.append((rid, res.type, res.id, res.version, res.ts, int(res.deleted), method, given[k]))
            if index is not None and not res.deleted:
                for table, params in batches.items():
                    rows = getattr(index, table, None)
                    if rows:
                        params.extend(index_params(rid, res.type, table, rows))
            out.append(
                StoredResource(
                    rid=rid,
                    type=res.type,
                    id=res.id,
                    version=res.version,
                    ts=res.ts,
                    deleted=res.deleted,
                    content=res.content,
                )
            )
        self._insert_rows("history", _HISTORY_COLUMNS, history)
        for table, params in batches.items():
            for columns, part in grouped(table, params):
                self._insert_rows(f"idx_{table}", columns, part)
        for d in self.store.derived:
            derived = [
                (stored.rid, *row)
                for (res, _, index), stored in zip(items, out, strict=True)
                if res.type in d.types
                for row in derived_rows(d, res, index)
            ]
            if derived:
                self._insert_rows(d.table, ("rid", *d.columns), derived)
        return out

    def insert_fresh(self, batch: FreshBatch) -> Sequence[int]:
        """:meth:`WriteTx.insert_fresh`: the batch's rows as given, numbers turned into rids."""
        n = len(batch.keys)
        if not n:
            return []
        self.touched.update(type_ for type_, _ in batch.keys)
        rids = self._reserve_rids(n)
        ts, method = batch.ts, batch.method
        self._insert_numbered(
            "resources",
            ("rid", "res_type", "res_id", "version", "ts", "deleted"),
            [(k, type_, id_, 1, ts, 0) for k, (type_, id_) in enumerate(batch.keys)],
            rids,
        )
        self._insert_numbered(
            "history",
            _HISTORY_COLUMNS,
            [
                (k, type_, id_, 1, ts, 0, method, stored)
                for k, ((type_, id_), stored) in enumerate(zip(batch.keys, batch.content, strict=True))
            ],
            rids,
        )
        for table, rows in batch.index.items():
            for columns, part in grouped(table, rows):
                self._insert_numbered(f"idx_{table}", columns, part, rids)
        for d in self.store.derived:
            derived = batch.derived.get(d.table)
            if derived is None:
                derived = [
                    (k, *row)
                    for k, (type_, _) in enumerate(batch.keys)
                    if type_ in d.types
                    for row in d.rows(type_, batch.served(k))
                ]
            if derived:
                self._insert_numbered(d.table, ("rid", *d.columns), derived, rids)
        return rids

    def _reserve_rids(self, n: int) -> Sequence[int]:
        """Internal ids for ``n`` new resources (SQLite: the next ``n``; this transaction holds the write lock)."""
        self.cur.execute("SELECT COALESCE(MAX(rid), 0) FROM resources")
        first = int(self.cur.fetchone()[0]) + 1
        return range(first, first + n)

    def _insert_numbered(
        self, table: str, columns: Sequence[str], rows: Sequence[Sequence[Any]], rids: Sequence[int]
    ) -> None:
        """Insert rows whose first value is a resource's number in its batch, stored as its rid."""
        if not isinstance(rids, range) or rids.step != 1:
            raise ValueError("SQLite numbers rows from consecutive rids (those _reserve_rids gives)")
        marks = ", ".join("?" for _ in columns[1:])
        sql = f"INSERT INTO {table} ({', '.join(columns)}) VALUES (? + {int(rids.start)}, {marks})"
        self.cur.executemany(self.store._sql(sql), rows)

    def refresh_statistics(self) -> None:
        if self.store.dialect == "postgresql":
            tables = ["resources", *(f"idx_{t}" for t in INDEX_TABLES), *(d.table for d in self.store.derived)]
            self.cur.execute(f"ANALYZE {', '.join(tables)}")

    def execute_many(self, sql: str, rows: Sequence[Sequence[Any]]) -> None:
        """One write statement per row (feature tables beside the resources, see ``WriteTx``)."""
        if rows:
            self.cur.executemany(self.store._sql(sql), [tuple(r) for r in rows])

    def _insert_rows(self, table: str, columns: Sequence[str], rows: Sequence[Sequence[Any]]) -> None:
        """Insert many rows into ``table`` (``executemany``; PostgreSQL uses COPY)."""
        self.cur.executemany(self.store._sql(_insert_sql(table, tuple(columns))), rows)

    def current_many(self, keys: Sequence[tuple[str, str]]) -> dict[tuple[str, str], StoredResource]:
        """The current versions (tombstones included) of many (type, id), as this transaction sees them."""
        by_type: dict[str, dict[str, None]] = {}
        for type_, id_ in keys:
            by_type.setdefault(type_, {})[id_] = None  # distinct ids, in order
        out: dict[tuple[str, str], StoredResource] = {}
        for type_, ids in by_type.items():
            for row in self._current_rows(type_, list(ids)):
                res = _to_resource(row, row[6], self.store._decode)
                out[(res.type, res.id)] = res
        return out

    def any_between(self, type_: str, first: str, last: str) -> bool:
        """:meth:`WriteTx.any_between` (``res_id`` compares in byte order on both backends: SQLite's
        ``BINARY``, PostgreSQL's ``COLLATE "C"``)."""
        sql = "SELECT 1 FROM resources WHERE res_type = ? AND res_id BETWEEN ? AND ? LIMIT 1"
        self.cur.execute(self.store._sql(sql), (type_, first, last))
        return self.cur.fetchone() is not None

    def _current_rows(self, type_: str, ids: Sequence[str]) -> Iterator[Sequence[Any]]:
        """The current rows (:meth:`SqlStoreBase._select_current`'s columns) of distinct ids of one type."""
        for start in range(0, len(ids), _REINDEX_CHUNK):
            chunk = ids[start : start + _REINDEX_CHUNK]
            marks = ", ".join("?" for _ in chunk)
            self.cur.execute(self.store._select_current(f"r.res_type = ? AND r.res_id IN ({marks})"), [type_, *chunk])
            yield from self.cur.fetchall()
