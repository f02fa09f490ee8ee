"""``_include`` reads the reference rows of the page's resources by ``rid``, whatever the store's size.

Without planner statistics (SQLite's, until ``ANALYZE``), ``x.rid IN (…) AND x.param = ? AND
x.res_type = ?`` looked cheaper through ``idx_reference_value`` (``param, res_type, …``: every row
of the parameter on the type) than through ``idx_reference_rid``: an ``_include`` of one page then
read every ``derived-from`` row of every Observation stored (a CDS prefetch's
``_include=Observation:derived-from``, 16 ms on a store holding one exome's rows).
"""

from __future__ import annotations

from types import SimpleNamespace

from server.search.query import IncludeSpec, include_sql
from server.store.base import StoredResource


def test_include_reads_the_pages_rows_by_rid(sqlite_url: str) -> None:
    from server.store import open_store

    store = open_store(sqlite_url)
    try:
        store.reset()
        with store.transaction() as tx:
            items = []
            for n in range(3000):
                ref = f"MolecularSequence/s{n}"
                index = SimpleNamespace(
                    token=[],
                    string=[],
                    date=[],
                    number=[],
                    quantity=[],
                    uri=[],
                    reference=[
                        ("derived-from", "MolecularSequence", f"s{n}", ref),
                        ("subject", "Patient", "p1", "Patient/p1"),
                    ],
                )
                content = b'{"resourceType":"Observation","id":"o%d"}' % n
                items.append((StoredResource("Observation", f"o{n}", 1, 1.0, False, content), "PUT", index))
            tx.put_many(items)
        rids = [r[0] for r in store.query("SELECT rid FROM resources ORDER BY rid LIMIT 20")]
        for spec in (
            IncludeSpec("Observation", "derived-from", None, False, False),
            IncludeSpec("Observation", "derived-from", "MolecularSequence", False, False),
            IncludeSpec(None, None, None, False, False),
        ):
            sql, params = include_sql(spec, rids)
            plan = " / ".join(str(r[-1]) for r in store.query("EXPLAIN QUERY PLAN " + sql, params))
            assert "idx_reference_rid" in plan and "idx_reference_value" not in plan, (spec, plan)
    finally:
        store.close()
