"""The storage contract: one suite, run against SQLite and PostgreSQL (DESIGN style rule 6)."""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

import pytest

from server import jsonio
from server.store import content
from server.store.base import FreshBatch, Store, StoredResource, WriteTx


def _res(id_: str, version: int, ts: float, body: bytes | None = None, rid: int = 0) -> StoredResource:
    content = body if body is not None else b'{"resourceType":"Patient","id":"%s"}' % id_.encode()
    return StoredResource("Patient", id_, version, ts, False, content, rid=rid)


def _index(**tables: list[tuple[Any, ...]]) -> SimpleNamespace:
    empty: dict[str, list[tuple[Any, ...]]] = {
        t: [] for t in ("token", "string", "reference", "date", "number", "quantity", "uri")
    }
    return SimpleNamespace(**{**empty, **tables})


def _put(store: Store, res: StoredResource, method: str = "PUT", index: Any = None) -> StoredResource:
    with store.transaction() as tx:
        current = tx.current(res.type, res.id)
        rid = current.rid if current else 0
        return tx.put(
            StoredResource(res.type, res.id, res.version, res.ts, res.deleted, res.content, rid=rid), method, index
        )


def test_implements_protocol(store: Store) -> None:
    assert isinstance(store, Store)
    with store.transaction() as tx:
        assert isinstance(tx, WriteTx)


def test_write_then_read_current_and_versions(store: Store) -> None:
    _put(store, _res("a", 1, 100.0, b'{"resourceType":"Patient","id":"a","v":1}'), "POST")
    _put(store, _res("a", 2, 200.0, b'{"resourceType":"Patient","id":"a","v":2}'))
    cur = store.read("Patient", "a")
    assert cur is not None and cur.version == 2 and cur.ts == 200.0 and not cur.deleted
    assert b'"v":2' in (cur.content or b"").replace(b" ", b"")
    v1 = store.vread("Patient", "a", 1)
    assert v1 is not None and b'"v":1' in (v1.content or b"").replace(b" ", b"")
    assert store.vread("Patient", "a", 3) is None
    assert store.read("Patient", "zzz") is None
    assert store.read("Observation", "a") is None


def test_content_keeps_decimal_digits(store: Store) -> None:
    body = b'{"resourceType":"Observation","id":"d","valueQuantity":{"value":1.50}}'
    _put(store, StoredResource("Observation", "d", 1, 1.0, False, body))
    got = store.read("Observation", "d")
    assert got is not None and b"1.50" in (got.content or b"")


def test_delete_is_a_tombstone_in_history(store: Store) -> None:
    _put(store, _res("a", 1, 1.0))
    _put(store, StoredResource("Patient", "a", 2, 2.0, True, None))
    cur = store.read("Patient", "a")
    assert cur is not None and cur.deleted and cur.content is None and cur.version == 2
    hist = store.history("Patient", "a")
    assert [(h.resource.version, h.method, h.resource.deleted) for h in hist] == [(2, "PUT", True), (1, "PUT", False)]


def test_history_levels_order_since_and_paging(store: Store) -> None:
    _put(store, _res("a", 1, 10.0), "POST")
    _put(store, StoredResource("Observation", "o", 1, 20.0, False, b'{"resourceType":"Observation","id":"o"}'))
    _put(store, _res("a", 2, 30.0))
    system = store.history()
    assert [(h.resource.type, h.resource.version) for h in system] == [
        ("Patient", 2),
        ("Observation", 1),
        ("Patient", 1),
    ]
    assert [h.resource.version for h in store.history("Patient")] == [2, 1]
    assert [h.resource.type for h in store.history(since=15.0)] == ["Patient", "Observation"]
    assert store.count_history() == 3 and store.count_history("Patient") == 2 and store.count_history(since=25.0) == 1
    first = store.history(limit=2)
    rest = store.history(before_seq=first[-1].seq, limit=2)
    assert [h.seq for h in first + rest] == [h.seq for h in system]


def test_index_rows_replaced_on_update_and_removed_on_delete(store: Store) -> None:
    _put(store, _res("a", 1, 1.0), index=_index(token=[("identifier", "sys", "1", None)], string=[("name", "x", "X")]))
    q = "SELECT COUNT(*) FROM idx_token WHERE param = ? AND code = ?"
    assert store.query(q, ("identifier", "1"))[0][0] == 1
    _put(store, _res("a", 2, 2.0), index=_index(token=[("identifier", "sys", "2", None)]))
    assert store.query(q, ("identifier", "1"))[0][0] == 0
    assert store.query(q, ("identifier", "2"))[0][0] == 1
    assert store.query("SELECT COUNT(*) FROM idx_string")[0][0] == 0
    _put(store, StoredResource("Patient", "a", 3, 3.0, True, None))
    assert store.query("SELECT COUNT(*) FROM idx_token")[0][0] == 0


def test_failed_transaction_writes_nothing(store: Store) -> None:
    with pytest.raises(RuntimeError), store.transaction() as tx:
        tx.put(_res("a", 1, 1.0), "POST", _index(token=[("identifier", None, "1", None)]))
        tx.put(_res("b", 1, 1.0), "POST", None)
        raise RuntimeError("boom")
    assert store.read("Patient", "a") is None and store.read("Patient", "b") is None
    assert store.count_history() == 0
    assert store.query("SELECT COUNT(*) FROM idx_token")[0][0] == 0


def test_transaction_sees_its_own_writes(store: Store) -> None:
    with store.transaction() as tx:
        tx.put(_res("a", 1, 1.0), "POST", _index(token=[("identifier", None, "1", None)]))
        assert tx.current("Patient", "a") is not None
        assert tx.query("SELECT COUNT(*) FROM idx_token WHERE code = ?", ("1",))[0][0] == 1
        tx.lock("Patient/a")


def test_read_many_keeps_order_and_iter_current_skips_deleted(store: Store) -> None:
    rids = [_put(store, _res(i, 1, float(n))).rid for n, i in enumerate("abc")]
    _put(store, StoredResource("Patient", "b", 2, 9.0, True, None))
    got = store.read_many([rids[2], rids[0]])
    assert [r.id for r in got] == ["c", "a"]
    assert sorted(r.id for r in store.iter_current("Patient", batch=1)) == ["a", "c"]
    assert list(store.iter_current("Observation")) == []


def test_reset_empties_everything(store: Store) -> None:
    _put(store, _res("a", 1, 1.0), index=_index(uri=[("url", "http://x")]))
    store.reset()
    assert store.read("Patient", "a") is None and store.count_history() == 0
    assert store.query("SELECT COUNT(*) FROM idx_uri")[0][0] == 0


def test_composite_rows_keep_their_group(store: Store) -> None:
    rows = _index(
        token=[("identifier", None, "1", None), ("combo:0", "urn:s", "a", None, 1), ("combo:0", "urn:s", "b", None, 2)],
        quantity=[("combo:1", 5.5, None, None, "mg", 1), ("combo:1", 7.0, None, None, "mg", 2)],
    )
    _put(store, _res("a", 1, 1.0), index=rows)
    got = store.query("SELECT param, code, grp FROM idx_token ORDER BY param, code")
    assert got == [("combo:0", "a", 1), ("combo:0", "b", 2), ("identifier", "1", None)]
    joined = store.query(
        "SELECT t.code FROM idx_token t JOIN idx_quantity q ON q.rid = t.rid AND q.grp = t.grp "
        "WHERE t.param = ? AND q.param = ? AND q.value > ?",
        ("combo:0", "combo:1", 6),
    )
    assert joined == [("b",)]


def test_reindex_replaces_rows_of_current_versions_only(store: Store) -> None:
    a = _put(store, _res("a", 1, 1.0), index=_index(token=[("identifier", "sys", "a1", None)]))
    b = _put(store, _res("b", 1, 1.0), index=_index(token=[("identifier", "sys", "b1", None)]))
    _put(store, _res("b", 2, 2.0), index=_index(token=[("identifier", "sys", "b2", None)]))
    c = _put(store, _res("c", 1, 1.0), index=_index(token=[("identifier", "sys", "c1", None)]))
    _put(store, StoredResource("Patient", "c", 2, 3.0, True, None))
    done = store.reindex(
        [
            (a.rid, 1, "Patient", _index(token=[("identifier", "sys", "new", None)], uri=[("url", "http://x")])),
            (b.rid, 1, "Patient", _index(token=[("identifier", "sys", "stale", None)])),  # b is at version 2
            (c.rid, 1, "Patient", _index(token=[("identifier", "sys", "dead", None)])),  # c was deleted
        ]
    )
    assert done == 1
    assert sorted(r[0] for r in store.query("SELECT code FROM idx_token")) == ["b2", "new"]
    assert store.query("SELECT rid, value FROM idx_uri") == [(a.rid, "http://x")]
    assert store.reindex([]) == 0
    store.analyze()  # planner statistics: runs on both backends, changes no data
    assert sorted(r[0] for r in store.query("SELECT code FROM idx_token")) == ["b2", "new"]


def test_put_many_and_current_many(store: Store) -> None:
    """The bulk loader's writes: many resources in one statement per table, creates and updates mixed."""
    old = _put(store, _res("a", 1, 1.0), index=_index(token=[("identifier", "sys", "a1", None)]))
    with store.transaction() as tx:
        current = tx.current_many([("Patient", "a"), ("Patient", "b"), ("Observation", "a")])
        assert list(current) == [("Patient", "a")] and current[("Patient", "a")].rid == old.rid
        written = tx.put_many(
            [
                (_res("a", 2, 2.0, rid=old.rid), "PUT", _index(token=[("identifier", "sys", "a2", None)])),
                (_res("b", 1, 2.0), "PUT", _index(token=[("identifier", "sys", "b1", None)], uri=[("url", "u")])),
                (
                    StoredResource("Observation", "a", 1, 2.0, False, b'{"resourceType":"Observation","id":"a"}'),
                    "PUT",
                    None,
                ),
            ]
        )
        assert [(r.type, r.id, r.version) for r in written] == [
            ("Patient", "a", 2),
            ("Patient", "b", 1),
            ("Observation", "a", 1),
        ]
        assert written[0].rid == old.rid and len({r.rid for r in written}) == 3
        assert tx.current_many([("Patient", "b")])[("Patient", "b")].version == 1  # sees its own writes
        tx.put_many([(StoredResource("Patient", "b", 2, 3.0, True, None, rid=written[1].rid), "DELETE", None)])
    a = store.read("Patient", "a")
    assert a is not None and a.version == 2
    b = store.read("Patient", "b")
    assert b is not None and b.deleted and b.version == 2
    assert store.query("SELECT code FROM idx_token ORDER BY code") == [("a2",)]  # a1 replaced, b1 deleted
    assert store.query("SELECT COUNT(*) FROM idx_uri")[0][0] == 0
    assert [h.method for h in store.history("Patient", "b")] == ["DELETE", "PUT"]


def test_current_many_finds_each_key_once_among_many(store: Store) -> None:
    """Many keys (more than one SQL chunk), repeated and unknown ones, two types, a tombstone: each
    stored (type, id) comes back once with its current version and content."""
    ids = [f"p{n:04d}" for n in range(1200)]
    with store.transaction() as tx:
        written = tx.put_many([(_res(i, 1, 1.0), "PUT", None) for i in ids])
        tx.put_many([(StoredResource("Patient", "p0007", 2, 2.0, True, None, rid=written[7].rid), "DELETE", None)])
        keys = [("Patient", i) for i in ids] + [("Patient", "p0003"), ("Patient", "nope"), ("Observation", "p0001")]
        found = tx.current_many(keys)
    assert set(found) == {("Patient", i) for i in ids}
    assert found[("Patient", "p1199")].content == b'{"resourceType":"Patient","id":"p1199"}'
    assert found[("Patient", "p1199")].rid == written[1199].rid and found[("Patient", "p1199")].version == 1
    tombstone = found[("Patient", "p0007")]
    assert tombstone.deleted and tombstone.version == 2 and tombstone.content is None


def test_any_between_sees_ids_in_byte_order_tombstones_and_own_writes(store: Store) -> None:
    """any_between: a resource of the type with an id from first to last (both included, byte order:
    upper case before lower, "-" before digits), a tombstone counting, another type not."""
    _put(store, _res("m-000000010-b", 1, 1.0))
    _put(store, _res("Zed", 1, 1.0))
    with store.transaction() as tx:
        assert tx.any_between("Patient", "m-000000010-b", "m-000000010-b")  # both ends included
        assert tx.any_between("Patient", "m-000000001-a", "m-000000020-a")
        assert not tx.any_between("Patient", "m-000000011-a", "m-000000020-a")
        assert not tx.any_between("Patient", "m-000000001-a", "m-000000010-a")  # just before it
        assert not tx.any_between("Observation", "a", "z")
        assert tx.any_between("Patient", "A", "a") and not tx.any_between("Patient", "a", "l")  # "Zed" < "a"
        assert tx.any_between("Patient", "m", "m.")  # "-" (0x2d) sorts before "." (0x2e)
        tx.put_many([(_res("n-1", 1, 2.0), "PUT", None)])
        assert tx.any_between("Patient", "n", "n-2")  # its own writes
        victim = tx.current("Patient", "Zed")
        assert victim is not None
        tx.put_many([(StoredResource("Patient", "Zed", 2, 2.0, True, None, rid=victim.rid), "DELETE", None)])
        assert tx.any_between("Patient", "Z", "Zz")  # a tombstone counts


class _Lengths:
    """A derived index of the JSON length of Patients (stands in for the genomic range index)."""

    table = "variant_range"
    columns = ("subject", "ref_seq", "start_pos", "end_pos", "bin", "ref_allele", "alt_allele", "structural")
    types = frozenset({"Patient"})

    def rows(self, type_: str, content: bytes) -> list[tuple[Any, ...]]:
        return [(f"{type_}/x", "len", len(content), len(content) + 1, 0, None, None, 1)]


def test_insert_fresh_turns_numbers_into_rids(store: Store) -> None:
    """The bulk path: rows prepared away from the store, each starting with its resource's number."""
    store.derived = (_Lengths(),)
    _put(store, _res("before", 1, 1.0))  # rids are drawn after the existing ones
    bodies = [b'{"resourceType":"Patient","id":"n0","v":1.0E+245}', b'{"resourceType":"Observation","id":"n1"}']
    encoded = [content.compress(b) for b in bodies]
    batch = FreshBatch(
        ts=5.0,
        method="PUT",
        keys=[("Patient", "n0"), ("Observation", "n1")],
        json=bodies,
        content=encoded,
        index={
            "token": [
                (0, "Patient", "identifier", "sys", "n0", None, None),
                (1, "Observation", "code", "l", "c", None, None),
            ],
            "reference": [(1, "Observation", "subject", "Patient", "n0", "Patient/n0", None)],
        },
        derived={},  # left out: computed from the JSON
    )
    before = store.generations(["Patient", "Observation"])
    with store.transaction() as tx:
        assert tx.current_many(batch.keys) == {}
        rids = list(tx.insert_fresh(batch))
        assert len(set(rids)) == 2 and min(rids) > store.read("Patient", "before").rid  # type: ignore[union-attr]
    for k, (type_, id_) in enumerate(batch.keys):
        got = store.read(type_, id_)
        assert got is not None and (got.rid, got.version, got.ts) == (rids[k], 1, 5.0)
        assert jsonio.loads(got.content or b"") == jsonio.loads(bodies[k])
    assert store.read("Patient", "n0").content == bodies[0]  # type: ignore[union-attr]  # exponent kept as written
    assert [h.method for h in store.history("Patient", "n0")] == ["PUT"]
    assert store.query("SELECT rid, code FROM idx_token ORDER BY code") == [(rids[1], "c"), (rids[0], "n0")]
    assert store.query("SELECT rid, target_id FROM idx_reference") == [(rids[1], "n0")]
    lengths = store.query("SELECT rid, start_pos FROM variant_range WHERE ref_seq = 'len' ORDER BY rid")
    assert [r[0] for r in lengths][-1] == rids[0] and lengths[-1][1] == len(bodies[0])
    after = store.generations(["Patient", "Observation"])
    assert all(after[t] > before.get(t, 0) for t in ("Patient", "Observation"))
    again = FreshBatch(6.0, "PUT", [("Patient", "n0")], [bodies[0]], [encoded[0]], {}, {})
    with pytest.raises(Exception), store.transaction() as tx:  # noqa: B017  # it exists: a unique violation
        tx.insert_fresh(again)
    assert store.read("Patient", "n0").ts == 5.0  # type: ignore[union-attr]


def test_put_many_keeps_content_compressed_by_the_caller(store: Store) -> None:
    """put_many(items, compressed): a given frame is what the history table keeps (not made again);
    None, or no list, means compress here."""
    bodies = [b'{"resourceType":"Patient","id":"c%d"}' % k for k in range(3)]
    given = content.compress(b'{"resourceType":"Patient","id":"c0","note":"from the worker"}')
    with store.transaction() as tx:
        tx.put_many(
            [(StoredResource("Patient", f"c{k}", 1, 1.0, False, body), "PUT", None) for k, body in enumerate(bodies)],
            [given, None, None],
        )
    assert b"from the worker" in (store.read("Patient", "c0").content or b"")  # type: ignore[union-attr]
    assert [store.read("Patient", f"c{k}").content for k in (1, 2)] == bodies[1:]  # type: ignore[union-attr]
    with store.transaction() as tx:
        tx.put_many([(StoredResource("Patient", "c3", 1, 1.0, False, bodies[0]), "PUT", None)])
    assert store.read("Patient", "c3").content == bodies[0]  # type: ignore[union-attr]


class _Recording:
    """A cursor that records the statements run through it."""

    def __init__(self, cur: Any) -> None:
        self._cur = cur
        self.statements: list[str] = []

    def execute(self, sql: str, *args: Any) -> Any:
        self.statements.append(sql)
        return self._cur.execute(sql, *args)

    def executemany(self, sql: str, *args: Any) -> Any:
        self.statements.append(sql)
        return self._cur.executemany(sql, *args)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._cur, name)


def test_index_rows_ordinary_and_composite_and_unchanged_ones_not_rewritten(store: Store) -> None:
    """An ordinary row is stored with grp NULL, a composite component's with its grp; replacing a
    resource's rows by the same rows rewrites nothing, by other rows replaces them."""
    rows = _index(
        token=[("code", "http://loinc.org", "1-8", None), ("component-code-value-quantity:0", "s", "c", None, 0)],
        quantity=[("component-code-value-quantity:1", 5.0, "s", "mg", "mg", 0)],
    )
    stored = _put(store, _res("ix", 1, 1.0), "PUT", rows)
    assert sorted(store.query("SELECT param, code, grp FROM idx_token WHERE rid = ?", [stored.rid])) == [
        ("code", "1-8", None),
        ("component-code-value-quantity:0", "c", 0),
    ]
    assert store.query("SELECT value, grp FROM idx_quantity WHERE rid = ?", [stored.rid]) == [(5.0, 0)]
    with store.transaction() as tx:
        recording = _Recording(tx.cur)  # type: ignore[attr-defined]
        tx.cur = recording  # type: ignore[attr-defined]
        assert tx.replace_index([(stored.rid, 1, "Patient", rows)]) == 1
    assert not [s for s in recording.statements if s.startswith(("DELETE FROM idx_", "INSERT INTO idx_"))]
    changed = _index(token=[("code", "http://loinc.org", "2-6", None)])
    with store.transaction() as tx:
        assert tx.replace_index([(stored.rid, 1, "Patient", changed)]) == 1
    assert store.query("SELECT param, code, grp FROM idx_token WHERE rid = ?", [stored.rid]) == [("code", "2-6", None)]
    assert store.query("SELECT COUNT(*) FROM idx_quantity WHERE rid = ?", [stored.rid]) == [(0,)]


def test_generations_move_with_every_commit_that_writes_the_type(store: Store) -> None:
    before = store.generations(["Patient", "Observation"])
    _put(store, _res("g1", 1, 1.0))
    after = store.generations(["Patient", "Observation"])
    assert after.get("Patient", 0) == before.get("Patient", 0) + 1
    assert after.get("Observation", 0) == before.get("Observation", 0)
    with pytest.raises(RuntimeError), store.transaction() as tx:
        tx.put(_res("g2", 1, 2.0), "POST", None)
        raise RuntimeError("rolled back")
    assert store.generations(["Patient"]) == {"Patient": after["Patient"]}  # a rollback moves nothing
    store.reset()
    assert store.generations(["Patient"]) == {"Patient": after["Patient"]}  # never reset: cache keys stay unique
    assert store.generations([]) == {}


def test_refresh_statistics_counts_the_transactions_own_rows(store: Store) -> None:
    """After a big write, searches later in the same transaction are planned on what it wrote."""
    with store.transaction() as tx:
        tx.put_many(
            [(_res(f"s{i}", 1, 1.0), "PUT", _index(token=[("gender", None, "female", None)])) for i in range(300)]
        )
        tx.refresh_statistics()
        if store.dialect == "postgresql":  # ANALYZE inside the transaction sees its uncommitted rows
            (estimate,) = tx.query("SELECT reltuples FROM pg_class WHERE oid = 'idx_token'::regclass")[0]
            assert estimate >= 300
        assert tx.query("SELECT COUNT(*) FROM idx_token WHERE code = ?", ("female",)) == [(300,)]
