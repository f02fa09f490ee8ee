"""The genomic range index: UCSC binning against brute force, on both backends; bulk-loaded variants get rows."""

from __future__ import annotations

import json
import random
from pathlib import Path
from typing import Any

from mappers.vcf import map_vcf
from server.fhir import crud
from server.fhir.load import load
from server.fhir.operations.variant_ranges import COLUMNS, TABLE, bin_of, bins_overlapping, overlap_sql

DATA = Path(__file__).resolve().parents[2] / "data" / "vcf"


def test_bins_nest() -> None:
    assert bin_of(0, 1) == 585  # the first 128 kb bin
    assert bin_of((1 << 17) - 1, 1 << 17) == 585
    assert bin_of((1 << 17) - 1, (1 << 17) + 1) == 73  # crosses a 128 kb boundary: the 1 Mb bin
    assert bin_of(0, 1 << 29) == 0  # the whole 512 Mb
    assert bin_of(5, 5) == bin_of(5, 6)  # an empty interval is filed as one base
    for start, end in ((0, 1), (123_456, 7_654_321), (200_000_000, 200_000_100)):
        levels = bins_overlapping(start, end)
        assert len(levels) == 5
        assert any(first <= bin_of(start, end) <= last for first, last in levels)


def test_overlap_query_equals_brute_force(app: Any) -> None:
    """Random intervals (points to 5 Mb) and random queries: the binned SQL finds exactly the overlaps."""
    ctx = app.extensions["bigmed"]
    rng = random.Random(3)
    rows = []
    for rid in range(1, 3001):
        start = rng.randrange(0, 250_000_000)
        length = rng.choice((1, 1, 2, 50, 1_000, 150_000, 2_000_000, 5_000_000))
        subject = rng.choice(("Patient/a", "Patient/b"))
        ref_seq = rng.choice(("NC_000001.11", "NC_000002.12"))
        structural = 1 if length > 1_000 else 0
        rows.append(
            (
                rid,
                subject,
                ref_seq,
                start,
                start + length,
                bin_of(start, start + length),
                None,
                None,
                structural,
                "germline",
                0,
            )
        )
    with ctx.store.transaction() as tx:
        marks = ", ".join("?" for _ in range(len(COLUMNS) + 1))
        tx.cur.executemany(ctx.store._sql(f"INSERT INTO {TABLE} (rid, {', '.join(COLUMNS)}) VALUES ({marks})"), rows)
    for _ in range(300):
        qs = rng.randrange(0, 250_000_000)
        qe = qs + rng.choice((1, 10, 1_000, 100_000, 3_000_000))
        ref_seq = rng.choice(("NC_000001.11", "NC_000002.12"))
        structural = rng.choice((None, True, False))
        expected = {
            r[0]
            for r in rows
            if r[1] == "Patient/a"
            and r[2] == ref_seq
            and r[3] < qe
            and r[4] > qs
            and (structural is None or r[8] == int(structural))
        }
        sql, params = overlap_sql(ref_seq, qs, qe, subject="Patient/a", structural=structural)
        got = {int(r[0]) for r in ctx.store.query(sql, params)}
        assert got == expected, (ref_seq, qs, qe, structural)
    # the boundary: a query ending at a variant's start, or starting at its end, does not match it
    for r in rows[:50]:
        for a, b in ((r[3] - 10, r[3]), (r[4], r[4] + 10), (r[3], r[3] + 1)):
            if a < 0:
                continue
            sql, params = overlap_sql(r[2], a, b, subject=r[1])
            assert (r[0] in {int(x[0]) for x in ctx.store.query(sql, params)}) == (a == r[3])


def test_bulk_loaded_variants_get_range_rows(app: Any, tmp_path: Path) -> None:
    """The bulk loader knows nothing of genomics: the store computes the rows from the stored JSON."""
    ctx = app.extensions["bigmed"]
    crud.update(ctx, "Patient", "p1", {"resourceType": "Patient", "id": "p1"})
    resources = [
        r for r in map_vcf(DATA / "vep_clinvar_grch37.vcf", "p1").resources() if r["resourceType"] != "DiagnosticReport"
    ]
    ndjson = tmp_path / "variants.ndjson"
    ndjson.write_text("\n".join(json.dumps(r) for r in resources) + "\n")
    report = load(ctx, [str(ndjson)], progress=False, workers=0)
    assert not report.failures, report.failures
    got = ctx.store.query(f"SELECT ref_seq, start_pos, end_pos, ref_allele, alt_allele FROM {TABLE} ORDER BY start_pos")
    assert [tuple(r) for r in got] == [
        ("NC_000013.10", 32914437, 32914439, "CT", "C"),
        ("NC_000013.10", 32915004, 32915005, "G", "C"),
        ("NC_000013.10", 32915999, 32916000, "A", "G"),
        ("NC_000013.10", 32916999, 32917000, "A", "G"),
        ("NC_000010.10", 96541615, 96541616, "G", "A"),
    ]
