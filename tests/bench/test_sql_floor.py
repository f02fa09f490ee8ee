"""bench/sql_floor.py: the statements a bulk write ran on SQLite, recorded and replayed alone.

The benchmarks' "ceiling of the storage layout" is only as true as the replay is complete: a write
that went around the recorded connection would make the replay leave other rows behind.
"""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from typing import Any

from server.fhir import crud
from server.fhir.operations import ingest_vcf as ingest
from server.fhir.operations.ingest_hl7 import ingest_hl7
from tests.conftest import make_app

ROOT = Path(__file__).resolve().parents[2]
# bench/ is not a package, and putting it on sys.path would let its script names (cache, search …)
# shadow other modules for the whole test run: the one module is loaded from its file
_spec = importlib.util.spec_from_file_location("bench_sql_floor", ROOT / "bench" / "sql_floor.py")
assert _spec is not None and _spec.loader is not None
sql_floor = importlib.util.module_from_spec(_spec)
sys.modules[_spec.name] = sql_floor  # dataclasses look their module up there
_spec.loader.exec_module(sql_floor)

HL7 = ROOT / "tests" / "data" / "hl7v2"
VEP = ROOT / "tests" / "data" / "vcf" / "vep_clinvar_grch37.vcf"


def test_replay_leaves_the_rows_the_recorded_ingestions_left(sqlite_url: str, tmp_path: Path) -> None:
    app = make_app(sqlite_url)
    ctx: Any = app.extensions["bigmed"]
    try:
        crud.update(ctx, "Patient", "p1", {"resourceType": "Patient", "id": "p1"})
        before = sql_floor.table_rows(ctx.store)
        feeds = [(p.name, p.read_bytes()) for p in sorted(HL7.glob("*.hl7"))]
        with sql_floor.recording(ctx.store, tmp_path) as rec:
            report = ingest_hl7(ctx, feeds)  # a quarantined message and an update among them
            ingest.ingest_vcf(ctx, VEP, "p1", workers=0)
        assert report.stored and report.quarantined
        after = sql_floor.table_rows(ctx.store)
        real = ctx.store._writer
        crud.update(ctx, "Patient", "p2", {"resourceType": "Patient", "id": "p2"})  # after the block: not recorded
    finally:
        ctx.store.close()
    assert after["resources"] > before["resources"] and after["idx_token"] > before["idx_token"]
    assert not any("'p2'" in str(params) for _, _, params in rec.statements)
    assert type(real).__name__ == "Connection"  # the store's own connection is back

    floor = sql_floor.replay(rec)
    assert floor.rows == after
    kinds = {"COMMIT", "INSERT INTO resources", "INSERT INTO history", "INSERT INTO idx_token"}
    assert kinds <= floor.by_statement.keys()
    assert floor.wall > 0 and floor.cpu > 0
    assert not list(tmp_path.glob("*-replay.sqlite*"))  # the replayed copy is gone


def test_floor_of_returns_the_run_s_result_and_checks_the_replay(sqlite_url: str, tmp_path: Path) -> None:
    app = make_app(sqlite_url)
    ctx: Any = app.extensions["bigmed"]
    try:
        feeds = [(p.name, p.read_bytes()) for p in sorted(HL7.glob("*.hl7"))]
        report, floor = sql_floor.floor_of(ctx.store, tmp_path, lambda: ingest_hl7(ctx, feeds))
        assert report.stored
        assert floor.rows == sql_floor.table_rows(ctx.store) and floor.rows["resources"] > 0
    finally:
        ctx.store.close()
    assert not list(tmp_path.glob("floor-start-*"))  # the starting copy is gone too
