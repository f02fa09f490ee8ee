"""Index rows implied by the range index (server/search/implied.py), on both backends.

The VCF ingestion leaves out each variant Observation's ``derived-from`` row to the
MolecularSequence of its own id and marks its range row ``implied``. Every reader of those rows
must answer as if they were written: each search form below runs on a store
holding an ingested file (implied rows; its first variant, checked against the extractor,
written), a variant written through REST (written rows) and an Observation derived from an
ingested sequence; then the implied rows are written out as ordinary rows and the range rows
unmarked, and every answer must be the same.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from mappers.vcf import map_vcf
from server.fhir.operations import ingest_vcf as ingest
from server.search.implied import ROWS, index_sources
from server.search.query import page_sql, parse_search
from tests.conftest import SHARED, make_app, postgres_url
from tests.server.search.searchutil import bundle, entries, link, put_all

NB6 = SHARED / "vcf" / "vcf2fhir" / "NB6TK328_filtered.vcf"
PHASED = Path(__file__).resolve().parents[2] / "data" / "vcf" / "phased_grch38.vcf"


@pytest.fixture(params=["sqlite", "postgresql"])
def loaded(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Any]:
    if not NB6.exists():
        pytest.skip(f"shared test data not found: {NB6}")
    app = make_app(f"sqlite:///{tmp_path}/test.sqlite" if request.param == "sqlite" else postgres_url())
    try:
        client = app.test_client()
        put_all(client, [{"resourceType": "Patient", "id": "p1"}, {"resourceType": "Patient", "id": "p2"}])
        ingest.ingest_vcf(app.extensions["bigmed"], NB6, "p1", workers=0)
        # a variant of p2 written through REST: its rows are all written
        rest = [r for r, facts in map_vcf(PHASED, "p2").items() if facts is not None][:2]
        put_all(client, rest)
        # and an Observation of p1 derived from an ingested variant's sequence
        extra = {
            "resourceType": "Observation",
            "id": "o-extra",
            "status": "final",
            "code": {"text": "a finding"},
            "subject": {"reference": "Patient/p1"},
            "derivedFrom": [{"reference": f"MolecularSequence/{_variants(app)[0][0]}"}],
        }
        put_all(client, [extra])
        yield app
    finally:
        app.extensions["bigmed"].store.close()


def _variants(app: Any) -> tuple[list[str], list[str]]:
    """(ingested variant ids whose derived-from row is implied, the other variant Observations' ids)."""
    rows = app.extensions["bigmed"].store.query(
        "SELECT o.res_id, v.implied FROM variant_range v JOIN resources o ON o.rid = v.rid ORDER BY v.rid"
    )
    return [str(r[0]) for r in rows if r[1]], [str(r[0]) for r in rows if not r[1]]


def _ref_seq(app: Any) -> str:
    """The reference sequence of the most variants of the ingested file."""
    rows = app.extensions["bigmed"].store.query(
        "SELECT ref_seq, COUNT(*) FROM variant_range WHERE subject = 'Patient/p1' GROUP BY ref_seq ORDER BY 2 DESC, 1"
    )
    return str(rows[0][0])


def _queries(app: Any) -> list[str]:
    implied, written = _variants(app)
    x, first, rest = implied[0], written[0], written[-1]
    ref_seq = _ref_seq(app)
    seq = f"MolecularSequence/{x}"
    return [
        f"Observation?derived-from={seq}",
        f"Observation?derived-from={x}",
        f"Observation?derived-from:MolecularSequence={x}",
        f"Observation?derived-from=http://testserver/fhir/{seq}",
        f"Observation?derived-from={seq},MolecularSequence/{rest},MolecularSequence/{first}",
        f"Observation?derived-from=Observation/{x}",
        f"Observation?subject=Patient/p1&derived-from={seq}",
        f"Observation?code=http://loinc.org|69548-6&derived-from={seq}",
        f"Observation?code=http://loinc.org|69548-6&derived-from={seq}&_count=1",
        "Observation?derived-from:missing=true&_summary=count",
        "Observation?derived-from:missing=false&_summary=count",
        "Observation?subject=Patient/p1&derived-from:missing=false&_count=3",
        "Observation?subject=Patient/p1&derived-from:missing=true",
        f"Observation?derived-from:MolecularSequence.referenceseqid={ref_seq}",
        "Observation?derived-from.patient=Patient/p1&_summary=count",
        "MolecularSequence?_has:Observation:derived-from:subject=Patient/p1",
        f"MolecularSequence?_has:Observation:derived-from:_id={x}",
        "MolecularSequence?_has:Observation:derived-from:code=http://loinc.org|69548-6&_summary=count",
        "Observation?subject=Patient/p1&_include=Observation:derived-from&_count=100",
        "Observation?subject=Patient/p2&_include=Observation:derived-from:MolecularSequence",
        "Observation?code=http://loinc.org|69548-6&_include=*&_count=100",
        f"MolecularSequence?_id={x}&_revinclude=Observation:derived-from",
        "MolecularSequence?patient=Patient/p1&_revinclude=Observation:*&_count=100",
        "MolecularSequence?_revinclude=*&_count=100",
        "Observation?code=http://loinc.org|69548-6&_sort=derived-from&_count=100",
        "Observation?code=http://loinc.org|69548-6&_sort=-derived-from,_id&_count=100",
        f"Observation?_id={x},{rest}&_revinclude=Observation:derived-from",
        # token rows (written) beside them
        "Observation?code=69548-6&_summary=count",
        "Observation?code=http://loinc.org|69548-6&_count=100",
        "Observation?code=http://loinc.org|&_summary=count",
        "Observation?code=|69548-6&_summary=count",
        "Observation?code:text=genetic variant&_summary=count",
        "Observation?code:not=http://loinc.org|69548-6&_count=100",
        "Observation?code:missing=true&_count=100",
        "Observation?combo-code=69548-6&_summary=count",
        "Observation?code=69548-6&subject=Patient/p2",
        f"Observation?chromosome={ref_seq}",
        f"Observation?chromosome=http://www.ncbi.nlm.nih.gov/refseq|{ref_seq}&subject=Patient/p1",
        f"Observation?chromosome:not={ref_seq}&code=69548-6",
        "Observation?chromosome:missing=false&_summary=count",
        "Observation?chromosome:missing=true&_count=100",
        "Observation?code=69548-6&_sort=chromosome,_id&_count=100",
        "Observation?code=69548-6&_sort=-chromosome,_id&_count=100",
        "Observation?_sort=combo-code,_id&_count=100",
        f"Patient?_has:Observation:subject:chromosome={ref_seq}",
        "Patient?_has:Observation:subject:code=69548-6",
        f"MolecularSequence?_has:Observation:derived-from:chromosome={ref_seq}",
    ]


def _answers(app: Any, queries: list[str]) -> list[tuple[Any, ...]]:
    client = app.test_client()
    out = []
    for query in queries:
        b = bundle(client, query)
        out.append((query, b.get("total"), entries(b), sorted(entries(b, "include"))))
    return out


def _paged(app: Any, query: str) -> tuple[list[str], list[str]]:
    """Every match of ``query`` page by page following ``next``, then back from the last page."""
    client = app.test_client()
    forward: list[str] = []
    b = bundle(client, query)
    while True:
        forward += entries(b)
        after = link(b, "next")
        if after is None:
            break
        b = bundle(client, after)
    backward: list[str] = []
    while (before := link(b, "previous")) is not None:
        b = bundle(client, before)
        backward = entries(b) + backward
    return forward, backward


def _write_out(app: Any) -> None:
    """The implied rows written as ordinary rows, the range rows unmarked."""
    with app.extensions["bigmed"].store.transaction() as tx:
        for table in ("reference", "token"):
            for source in index_sources(table, None, None)[1:]:
                tx.cur.execute(f"INSERT INTO idx_{table} SELECT * FROM {source} x")
        tx.cur.execute("UPDATE variant_range SET implied = 0")
        tx.touched.update({"Observation", "MolecularSequence"})  # cached answers are stale


def test_every_reader_answers_as_with_the_rows_written(loaded: Any) -> None:
    implied, written = _variants(loaded)
    assert len(implied) >= 4 and len(written) == 2  # the file's first variant, and the one written through REST
    store = loaded.extensions["bigmed"].store
    sql = (  # the variant's own derived-from rows
        "SELECT COUNT(*) FROM idx_reference x JOIN resources o ON o.rid = x.rid "
        "WHERE x.param = 'derived-from' AND o.res_type = 'Observation' AND o.res_id = ?"
    )
    assert store.query(sql, (implied[0],)) == [(0,)]
    queries = _queries(loaded)
    before = _answers(loaded, queries)
    # a page driven by a range of two arms (written and implied rows), walked one page at a time
    several = ",".join(f"MolecularSequence/{i}" for i in [*implied, *written])
    paged = f"Observation?derived-from={several}&_count=2"
    parsed = parse_search(loaded.extensions["bigmed"].registry, "Observation", [("derived-from", several)])
    assert " UNION SELECT rid FROM (" in page_sql(parsed, None, 3)[0]
    pages = _paged(loaded, paged)
    assert len(pages[0]) == len(implied) + len(written) + 1  # and o-extra
    assert pages[1] == pages[0][: len(pages[1])] and len(pages[1]) == len(pages[0]) - 1  # all but the last page
    # pages driven by token rows, the same after the reference rows are written out
    driven = {
        query: _paged(loaded, query)
        for query in (
            "Observation?code=http://loinc.org|69548-6&_count=2",
            f"Observation?chromosome={_ref_seq(loaded)}&_count=1",
        )
    }
    assert all(len(found) >= 2 for found, _ in driven.values()), driven
    _write_out(loaded)
    assert store.query(sql, (implied[0],)) == [(1,)]
    assert _answers(loaded, queries) == before
    assert _paged(loaded, paged) == pages
    assert {query: _paged(loaded, query) for query in driven} == driven
    answers = {query: rest for query, *rest in before}
    # and the answers are the expected ones, not merely equal
    x = implied[0]
    assert answers[queries[0]][1:] == [[f"Observation/{x}", "Observation/o-extra"], []]
    assert answers[queries[2]] == answers[queries[3]] == answers[queries[0]]
    assert set(answers[queries[0]][1]) < set(answers[queries[1]][1])  # and those derived from Observation/x
    assert len(answers[queries[4]][1]) == 4  # three variants and o-extra
    # derived from the Observation x (its molecular consequence …), not x itself
    assert answers[queries[5]][1] and f"Observation/{x}" not in answers[queries[5]][1]
    assert answers["Observation?derived-from:missing=false&_summary=count"][0] >= len(implied) + 3
    assert answers[f"MolecularSequence?_has:Observation:derived-from:_id={x}"][1] == [f"MolecularSequence/{x}"]
    included = answers["Observation?subject=Patient/p1&_include=Observation:derived-from&_count=100"][2]
    assert {f"MolecularSequence/{i}" for i in implied} <= set(included)
    revincluded = answers[f"MolecularSequence?_id={x}&_revinclude=Observation:derived-from"][2]
    assert revincluded == sorted([f"Observation/{x}", "Observation/o-extra"])
    variants = len(implied) + len(written)
    for counted in (
        "Observation?code=69548-6&_summary=count",
        "Observation?code:text=genetic variant&_summary=count",
        "Observation?combo-code=69548-6&_summary=count",
        "Observation?chromosome:missing=false&_summary=count",
    ):
        assert answers[counted][0] == variants, counted
    assert answers["Observation?code=|69548-6&_summary=count"][0] == 0  # the rows have a system
    assert answers["Patient?_has:Observation:subject:code=69548-6"][1] == ["Patient/p1", "Patient/p2"]
    not_variants = answers["Observation?code:not=http://loinc.org|69548-6&_count=100"][1]
    assert "Observation/o-extra" in not_variants and not {f"Observation/{i}" for i in implied} & set(not_variants)
    ordered = answers["Observation?code=http://loinc.org|69548-6&_sort=derived-from&_count=100"][1]
    assert ordered == sorted(ordered, key=lambda ref: ref.split("/")[1]) and len(ordered) == len(implied) + 2


def test_an_update_through_rest_writes_the_rows(loaded: Any) -> None:
    """An ingested variant updated through REST gets its rows written and its range row unmarked; one
    whose derivedFrom is gone is no longer found through it."""
    implied, _ = _variants(loaded)
    client = loaded.test_client()
    kept, dropped = implied[0], implied[1]
    for id_, derived in ((kept, True), (dropped, False)):
        resource = client.get(f"/fhir/Observation/{id_}").get_json()
        resource.pop("meta")
        resource["status"] = "amended"
        if not derived:
            resource.pop("derivedFrom")
        put_all(client, [resource])
    now_implied, _ = _variants(loaded)
    assert kept not in now_implied and dropped not in now_implied and len(now_implied) == len(implied) - 2
    found = entries(bundle(client, f"Observation?derived-from=MolecularSequence/{kept}"))
    assert found == [f"Observation/{kept}", "Observation/o-extra"]
    assert entries(bundle(client, f"Observation?derived-from=MolecularSequence/{dropped}")) == []
    store = loaded.extensions["bigmed"].store
    assert store.query(f"SELECT COUNT(*) FROM {ROWS} x WHERE x.target_id IN (?, ?)", (kept, dropped)) == [(0,)]
