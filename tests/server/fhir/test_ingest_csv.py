"""CSV extract ingestion (server/fhir/operations/ingest_csv.py) on both backends, and the two CLIs."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from server import jsonio
from server.cli import main
from server.fhir.operations.ingest_csv import ingest_csv
from server.fhir.search import search
from tests.conftest import make_app

CSV = Path(__file__).resolve().parents[2] / "data" / "csv"
HL7 = Path(__file__).resolve().parents[2] / "data" / "hl7v2"


@pytest.fixture
def ctx(database_url: str) -> Iterator[Any]:
    app = make_app(database_url)
    context = app.extensions["bigmed"]
    yield context
    context.store.close()


def _all(ctx: Any, type_: str, query: list[tuple[str, str]] | None = None) -> list[dict[str, Any]]:
    bundle = jsonio.loads(
        jsonio.dumps(search(ctx, "http://testserver/fhir", type_, [*(query or []), ("_count", "500")]))
    )
    return [e["resource"] for e in bundle.get("entry", []) if e.get("search", {}).get("mode") != "outcome"]


def _versions(ctx: Any) -> int:
    return int(ctx.store.query("SELECT COUNT(*) FROM history")[0][0])


def test_extracts_are_stored_row_by_row_and_bad_rows_quarantined(ctx: Any) -> None:
    patients = ingest_csv(ctx, [CSV / "patients.csv"], "patients")
    assert patients.stored >= 2
    labs = ingest_csv(ctx, [CSV / "lab_results.csv"], "labs")
    assert labs.stored == 4 and len(labs.quarantined) == 3
    assert {q["location"] for q in labs.quarantined} >= {"loinc_code", "effective"}
    x = ingest_csv(ctx, [CSV / "lab_results_hospital_x.csv"], "lab_results", mapping=CSV / "hospital-x-config.json")
    assert x.stored >= 2
    (kari,) = _all(ctx, "Patient", [("identifier", "urn:oid:2.16.578.1.12.4.1.4.1|15838512329")])
    results = _all(ctx, "Observation", [("subject", f"Patient/{kari['id']}"), ("code", "http://loinc.org|2345-7")])
    assert len(results) == 2  # the default layout's L-1 and hospital X's X-1
    for kind in ("encounters", "diagnoses", "medications", "phenotypes"):
        report = ingest_csv(ctx, [CSV / f"{kind}.csv"], kind)
        assert report.stored >= 1, report.summary()
    assert _all(ctx, "Condition", [("code", "http://hl7.org/fhir/sid/icd-10|E11.9")])
    rows = ctx.store.query(
        "SELECT kind, source, record, location, reason FROM ehr_quarantine WHERE source = ?", ["lab_results.csv"]
    )
    assert len(rows) == 3 and all(r[0] == "csv" for r in rows)
    # a second run of the same files changes nothing
    versions = _versions(ctx)
    again = ingest_csv(ctx, [CSV / "lab_results.csv"], "labs")
    assert again.stored == 4 and again.counts.created == again.counts.updated == 0
    assert _versions(ctx) == versions


def test_rows_of_an_unknown_patient_are_quarantined_not_dropped(ctx: Any) -> None:
    report = ingest_csv(ctx, [CSV / "medications.csv"], "medications")
    assert report.stored == 0 and len(report.quarantined) == report.rows
    assert any("matches no Patient" in q["reason"] for q in report.quarantined)
    assert int(ctx.store.query("SELECT COUNT(*) FROM ehr_quarantine")[0][0]) == report.rows


def test_cli_ingest_hl7_and_csv(
    sqlite_url: str, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    make_app(sqlite_url).extensions["bigmed"].store.close()
    monkeypatch.setenv("DATABASE_URL", sqlite_url)
    assert main(["ingest-hl7", "--quiet", "--workers", "0", str(HL7 / "epic_oru_mllp.hl7")]) == 0
    out = capsys.readouterr().out
    assert "2 stored" in out and "Quarantine: none" in out
    assert main(["ingest-hl7", "--quiet", str(HL7 / "malformed_crlf.hl7")]) == 1
    out = capsys.readouterr().out
    assert "10 quarantined" in out and "BAD-FLAG  OBX-8[1]: abnormal flag 'ZZ'" in out
    assert main(["ingest-csv", "--quiet", "--kind", "labs", str(CSV / "lab_results.csv")]) == 1
    assert "4 stored, 3 quarantined" in capsys.readouterr().out
    assert main(["ingest-csv", "--quiet", "--kind", "nonsense", str(CSV / "lab_results.csv")]) == 2
    assert main(["ingest-hl7", "--quiet", "/no/such/file.hl7"]) == 2
