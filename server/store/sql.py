"""SQL shared by the SQLite and PostgreSQL stores.

The two backends differ in connection handling, placeholders and the JSON column type only;
everything else (what is read and written, and how index rows are replaced) lives here once.
SQL is written with ``?`` placeholders; the PostgreSQL store rewrites them to ``%s``.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from contextlib import AbstractContextManager
from typing import Any

from server.store.base import INDEX_TABLES, HistoryEntry, StoredResource
from server.store.schema import SCHEMA_VERSION, ddl

__all__ = ["Cursor", "SqlStoreBase", "SqlWriteTx"]

Cursor = Any  # a DB-API cursor-like object with execute/executemany/fetchall/fetchone

_COLS = "r.rid, r.res_type, r.res_id, r.version, r.ts, r.deleted"

_INSERT_INDEX = {
    table: f"INSERT INTO idx_{table} (rid, res_type, param, {', '.join(cols)}) "
    f"VALUES (?, ?, ?, {', '.join('?' for _ in cols)})"
    for table, cols in INDEX_TABLES.items()
}


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
    content_select: str = "h.content"  # how the JSON column is read as text/bytes
    content_param: str = "?"  # how it is written

    # -- to be provided by the backend ------------------------------------------------------
    def _reader(self) -> AbstractContextManager[Cursor]:
        raise NotImplementedError

    def _sql(self, sql: str) -> str:
        return sql

    def _decode(self, content: Any) -> bytes | None:
        if content is None:
            return None
        if isinstance(content, str):
            return content.encode("utf-8")
        return bytes(content)

    # -- schema ---------------------------------------------------------------------------
    def _migrate(self, cur: Cursor) -> None:
        for stmt in ddl(self.dialect):
            cur.execute(stmt)
        cur.execute("SELECT version FROM schema_meta")
        row = cur.fetchone()
        if row is None:
            cur.execute(self._sql("INSERT INTO schema_meta (version) VALUES (?)"), (SCHEMA_VERSION,))
        elif row[0] > SCHEMA_VERSION:
            raise RuntimeError(
                f"database schema version {row[0]} is newer than this server's ({SCHEMA_VERSION}); upgrade the server"
            )
        elif row[0] < SCHEMA_VERSION:
            cur.execute(self._sql("UPDATE schema_meta SET version = ?"), (SCHEMA_VERSION,))

    # -- reads ----------------------------------------------------------------------------
    def _select_current(self, where: str) -> str:
        return self._sql(
            f"SELECT {_COLS}, {self.content_select} FROM resources r "
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
            f"{self.content_select} FROM history h WHERE h.res_type = ? AND h.res_id = ? AND h.version = ?"
        )
        with self._reader() as cur:
            cur.execute(sql, (type_, id_, version))
            row = cur.fetchone()
        return None if row is None else _to_resource(row, row[6], self._decode)

    @staticmethod
    def _history_where(
        type_: str | None, id_: str | None, since: float | None, before_seq: int | None
    ) -> tuple[str, list[Any]]:
        clauses: list[str] = []
        params: list[Any] = []
        if type_ is not None:
            clauses.append("h.res_type = ?")
            params.append(type_)
        if id_ is not None:
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
            f"{self.content_select}, h.seq, h.method FROM history h WHERE {where} ORDER BY h.seq DESC LIMIT ?"
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
        content, raw = (None, None) if res.content is None else self._content_value(res.content)
        cur.execute(
            sql(
                "INSERT INTO history (rid, res_type, res_id, version, ts, deleted, method, content, raw) "
                f"VALUES (?, ?, ?, ?, ?, ?, ?, {self.store.content_param}, ?)"
            ),
            (rid, res.type, res.id, res.version, res.ts, int(res.deleted), method, content, raw),
        )
        if index is not None and not res.deleted:
            self._insert_index(rid, res.type, index)
        return StoredResource(
            rid=rid, type=res.type, id=res.id, version=res.version, ts=res.ts, deleted=res.deleted, content=res.content
        )

    def _content_value(self, content: bytes) -> tuple[Any, bytes | None]:
        """(value of the content column, value of the raw column)."""
        return content, None

    def _insert_index(self, rid: int, type_: str, index: Any) -> None:
        for table in INDEX_TABLES:
            rows = getattr(index, table, None)
            if rows:
                self.cur.executemany(self.store._sql(_INSERT_INDEX[table]), [(rid, type_, *row) for row in rows])
