"""The sandbox seeder (``python -m server seed``, server/sandbox/seed.py) on both backends.

It stores the synthetic patients with their clinical data and genomic results (variants found by
gene, the PGx calls made on ingestion, HPO phenotypes), from files it generates itself, and a
second run writes nothing: same ids, no new versions, byte-identical files.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from server.cli import main
from server.fhir import crud
from server.sandbox import seed as sandbox
from tests.conftest import make_app


def _count(ctx: Any, sql: str) -> int:
    return int(ctx.store.query(sql)[0][0])


def _values(ctx: Any, patient: str, criteria: str) -> list[dict[str, Any]]:
    ids = crud.find_matches(ctx, None, "Observation", f"patient=Patient/{patient}&{criteria}", limit=1000)
    return [json.loads(crud.read(ctx, "Observation", i).content) for i in ids]


def test_seed_stores_the_sandbox_and_a_rerun_writes_nothing(
    database_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    app = make_app(database_url)
    ctx = app.extensions["bigmed"]
    monkeypatch.setenv("DATABASE_URL", database_url)
    folder = tmp_path / "sandbox"
    assert main(["seed", "--folder", str(folder), "--quiet"]) == 0
    first = capsys.readouterr().out
    assert "Sandbox: 5 patients" in first
    patients = {p.id for p in sandbox.PATIENTS}
    stored = {r.id for r in ctx.store.iter_current("Patient")}
    assert stored == patients
    # clinical data: conditions, medication orders, labs
    assert {r.id for r in ctx.store.iter_current("MedicationRequest")} == {
        f"{p.id}-medreq-1" for p in sandbox.PATIENTS if p.medications
    }
    assert _count(ctx, "SELECT COUNT(*) FROM resources WHERE res_type = 'Condition' AND deleted = 0") == 5
    labs = _values(ctx, "sandbox-kras-crc", "code=http://loinc.org|2039-6")
    assert sorted(o["valueQuantity"]["value"] for o in labs) == [6.2, 12.4]
    # genomic results: a somatic KRAS variant, a KCNH2 variant, PGx calls from the ingested VCFs
    kras = _values(ctx, "sandbox-kras-crc", "gene=KRAS")
    assert len(kras) == 1 and "LA6684-0" in json.dumps(kras[0])  # somatic
    assert len(_values(ctx, "sandbox-long-qt", "gene=KCNH2")) == 1
    genotypes = _values(ctx, "sandbox-cyp2c19-pm", "code=http://loinc.org|84413-4")
    texts = {o["valueCodeableConcept"]["text"] for o in genotypes}
    assert "CYP2C19 *2/*2" in texts
    dpyd = _values(ctx, "sandbox-dpyd-2a", "code=http://loinc.org|84413-4")
    assert any("*2A" in o["valueCodeableConcept"]["text"] for o in dpyd)
    phenotypes = _values(ctx, "sandbox-newborn", "code=http://purl.obolibrary.org/obo/hp.owl|HP:0001250")
    assert len(phenotypes) == 1 and phenotypes[0]["valueCodeableConcept"]["coding"][0]["code"] == "LA9633-4"
    # idempotent: a second run writes no resource and no version, and rewrites no file
    files = {p: p.read_bytes() for p in folder.rglob("*") if p.is_file()}
    mtimes = {p: p.stat().st_mtime_ns for p in files}
    current = _count(ctx, "SELECT COUNT(*) FROM resources")
    versions = _count(ctx, "SELECT COUNT(*) FROM history")
    assert main(["seed", "--folder", str(folder), "--quiet"]) == 0
    assert "0 resources written" in capsys.readouterr().out
    assert _count(ctx, "SELECT COUNT(*) FROM resources") == current
    assert _count(ctx, "SELECT COUNT(*) FROM history") == versions
    assert {p: p.read_bytes() for p in folder.rglob("*") if p.is_file()} == files
    assert {p: p.stat().st_mtime_ns for p in files} == mtimes
    ctx.store.close()


def test_vcfs_are_generated_from_the_vendored_tables(tmp_path: Path) -> None:
    pm = next(p for p in sandbox.PATIENTS if p.id == "sandbox-cyp2c19-pm")
    text = sandbox.write_vcf(tmp_path, pm).read_text()
    rows = [line.split("\t") for line in text.splitlines() if not line.startswith("#")]
    by_pos = {(r[0], int(r[1])): r for r in rows}
    # CYP2C19*2's defining change rs4244285 (GRCh38 chr10:94781859 G>A) is homozygous
    assert by_pos[("chr10", 94781859)][3:5] == ["G", "A"] and by_pos[("chr10", 94781859)][9].startswith("1/1")
    assert "##reference=GRCh38" in text and "SYNTHETIC" in text
    assert [(r[0], int(r[1])) for r in rows] == sorted(by_pos, key=lambda k: (list(sandbox._CONTIGS).index(k[0]), k[1]))
    with pytest.raises(ValueError, match="no allele named"):
        sandbox._pgx_records("CYP2C19", ("*1", "*999"))
