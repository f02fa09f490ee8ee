"""The bulk loader (``python -m server load``) on both backends: ids kept, reference data first,
failures isolated, reruns idempotent, NDJSON/gzip/folders, and the shared Synthea sample."""

from __future__ import annotations

import gzip
import json
import os
import shutil
import signal
import sqlite3
import subprocess
import sys
import tarfile
import time
from pathlib import Path
from typing import Any

import pytest

from server.fhir import crud
from server.fhir import load as load_module
from server.fhir.load import LoadReport, load
from tests.conftest import SHARED

DATA = Path(__file__).resolve().parents[2] / "data" / "synthea"
SAMPLE = SHARED / "synthea" / "smart-sample-100.tgz"
KARI = "3f1e2d4c-5b6a-4978-8a9b-0c1d2e3f4a5b"
OLA = "6e5d4c3b-2a19-4807-b6a5-948372615f4e"
NORDRE = "8f2a3d5e-6c1b-3f4a-9e8d-1a2b3c4d5e6f"
DR_JENSEN = "b7a6c5d4-e3f2-4a1b-9c8d-7e6f5a4b3c2d"


def _ctx(app: Any) -> Any:
    return app.extensions["bigmed"]


def _read(ctx: Any, type_: str, id_: str) -> dict[str, Any]:
    res = crud.read(ctx, type_, id_)
    assert res.content is not None
    return json.loads(res.content)


def _counts(ctx: Any) -> dict[str, int]:
    out: dict[str, int] = {}
    for res in ctx.store.iter_current():
        out[res.type] = out.get(res.type, 0) + 1
    return out


def _matches(ctx: Any, type_: str, criteria: str) -> list[str]:
    return crud.find_matches(ctx, None, type_, criteria, limit=100_000)


def _load(ctx: Any, *paths: Any, **kwargs: Any) -> LoadReport:
    return load(ctx, [str(p) for p in paths], progress=False, **{"workers": 0, **kwargs})


def test_synthea_style_export(app: Any) -> None:
    ctx = _ctx(app)
    report = _load(ctx, DATA)
    # patient files sort before hospitalInformation*: reference data went first all the same
    assert (report.files, report.created, report.updated, report.matched) == (5, 17, 0, 0)
    assert report.by_type == {
        "Organization": 2,
        "Location": 1,
        "Practitioner": 2,
        "Patient": 2,
        "Encounter": 3,
        "Observation": 5,
        "Condition": 2,
    }
    (failure,) = report.failures
    assert failure.source.endswith("Ingrid_Berg_0a1b2c3d-4e5f-4a6b-8c7d-9e0f1a2b3c4d.json")
    assert failure.where == "Bundle"
    assert failure.reason.startswith("Bundle.entry[1] (fullUrl urn:uuid:f0e1d2c3-0001-4b4a-8596-a7b8c9d0e1f2): ")
    assert (
        "'Practitioner?identifier=http://hl7.org/fhir/sid/us-npi|0000000000' matches no Practitioner" in failure.reason
    )
    assert "resource.participant[0].individual.reference" in failure.reason
    assert _matches(ctx, "Patient", "family=Berg") == []  # the failed transaction wrote nothing

    # ids are the source's, urn:uuid references became Type/id, conditional ones were resolved
    patient = _read(ctx, "Patient", KARI)
    assert patient["managingOrganization"] == {"reference": f"Organization/{NORDRE}"}
    assert patient["extension"][1]["valueReference"] == {"reference": "Encounter/a1b2c3d4-0001-4a5b-8c9d-0e1f2a3b4c5d"}
    encounter = _read(ctx, "Encounter", "a1b2c3d4-0001-4a5b-8c9d-0e1f2a3b4c5d")
    assert encounter["subject"]["reference"] == f"Patient/{KARI}"
    assert encounter["participant"][0]["individual"] == {"reference": f"Practitioner/{DR_JENSEN}"}
    assert encounter["serviceProvider"] == {"reference": f"Organization/{NORDRE}"}
    location = _read(ctx, "Location", "5d4c3b2a-1f0e-3d9c-8b7a-6f5e4d3c2b1a")
    assert location["managingOrganization"]["reference"] == f"Organization/{NORDRE}"
    assert patient["meta"]["versionId"] == "1" and patient["meta"]["tag"][0]["code"] == "synthea-test"
    raw = crud.read(ctx, "Observation", "e5d4c3b2-0002-4a9b-8c7d-6e5f4a3b2c1d").content
    assert raw is not None and b"82.50" in raw  # decimals keep their digits
    # and the index follows
    assert len(_matches(ctx, "Observation", f"subject=Patient/{KARI}")) == 3
    assert len(_matches(ctx, "Encounter", f"practitioner=Practitioner/{DR_JENSEN}")) == 2
    assert len(_matches(ctx, "Patient", "identifier=http://hospital.smarthealthit.org|MRN-0002")) == 1


def test_rerun_is_idempotent_and_updates_what_changed(app: Any, tmp_path: Path) -> None:
    ctx = _ctx(app)
    data = tmp_path / "export"
    shutil.copytree(DATA, data)
    first = _load(ctx, data)
    before = _counts(ctx)
    again = _load(ctx, data)
    assert (again.created, again.updated) == (0, 0)
    assert again.unchanged == 12 and again.matched == 5  # the reference data's ifNoneExist match now
    assert _counts(ctx) == before and sum(before.values()) == first.created == 17
    assert _read(ctx, "Patient", KARI)["meta"]["versionId"] == "1"  # no new versions

    kari = next(data.glob("Kari_*.json"))
    bundle = json.loads(kari.read_text())
    bundle["entry"][0]["resource"]["birthDate"] = "1971-05-04"
    kari.write_text(json.dumps(bundle))
    changed = _load(ctx, data)
    assert (changed.created, changed.updated, changed.unchanged) == (0, 1, 11)
    patient = _read(ctx, "Patient", KARI)
    assert patient["birthDate"] == "1971-05-04" and patient["meta"]["versionId"] == "2"
    assert len(_matches(ctx, "Patient", "birthdate=1971-05-04")) == 1
    assert _counts(ctx) == before


def test_interrupted_load_can_be_rerun_to_completion(app: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    ctx = _ctx(app)
    files = sorted(DATA.glob("*.json"))
    # 1. a load of half the files, then of all of them
    half = _load(ctx, *files[: len(files) // 2])
    assert half.files == 2
    full = _load(ctx, DATA)
    assert sum(_counts(ctx).values()) == 17 and full.updated == 0

    # 2. a load killed in the middle (Ctrl-C after the first committed store transaction), then rerun
    ctx.store.reset()
    real = load_module._write_group
    calls = {"n": 0}

    def dies_after_one(*args: Any) -> Any:
        calls["n"] += 1
        if calls["n"] > 1:
            raise KeyboardInterrupt
        return real(*args)

    monkeypatch.setattr(load_module, "_write_group", dies_after_one)
    partial = LoadReport()
    with pytest.raises(KeyboardInterrupt):
        load(ctx, [str(DATA)], report=partial, progress=False, workers=0, batch_size=4)
    committed = sum(_counts(ctx).values())
    assert 0 < partial.created == committed < 17
    monkeypatch.setattr(load_module, "_write_group", real)
    rest = _load(ctx, DATA, batch_size=4)
    assert sum(_counts(ctx).values()) == 17
    assert rest.created == 17 - committed and rest.updated == 0
    assert len(_matches(ctx, "Practitioner", "identifier=http://hl7.org/fhir/sid/us-npi|9999991001")) == 1


def _patient(pid: str, **extra: Any) -> dict[str, Any]:
    return {"resourceType": "Patient", "id": pid, "name": [{"family": f"F{pid}"}], **extra}


def test_ndjson_gzip_folders_single_resources_and_collections(app: Any, tmp_path: Path) -> None:
    ctx = _ctx(app)
    folder = tmp_path / "bulk"
    (folder / "sub").mkdir(parents=True)
    lines = [
        json.dumps(_patient("n1")),
        "",
        json.dumps(_patient("n2", birthDate="19-01-01")),
        "{not json",
        json.dumps(_patient("n3", gender="female")),
    ]
    (folder / "Patient.ndjson").write_text("\n".join(lines) + "\n")
    observations = [
        {
            "resourceType": "Observation",
            "id": f"o{i}",
            "status": "final",
            "code": {"text": "x"},
            "subject": {"reference": "Patient/n1"},
            "valueQuantity": {"value": 1.10},
        }
        for i in range(3)
    ]
    with gzip.open(folder / "sub" / "Observation.ndjson.gz", "wt") as fh:
        fh.write("\n".join(json.dumps(o).replace('"value": 1.1}', '"value": 1.10}') for o in observations))
    (folder / "sub" / "practitioner.json").write_text(json.dumps({"resourceType": "Practitioner", "id": "pr1"}))
    (folder / "notes.txt").write_text("not loaded")
    collection = {
        "resourceType": "Bundle",
        "type": "collection",
        "entry": [
            {
                "fullUrl": "http://other.example/fhir/Patient/c1",
                "resource": {"resourceType": "Patient", "generalPractitioner": [{"reference": "Practitioner/pr1"}]},
            },
            {"fullUrl": "urn:uuid:c2", "resource": {"resourceType": "Patient", "active": "yes"}},
            {
                "fullUrl": "urn:uuid:c3",
                "resource": {
                    "resourceType": "Observation",
                    "status": "final",
                    "code": {"text": "y"},
                    "subject": {"reference": "http://other.example/fhir/Patient/c1"},
                },
            },
        ],
    }
    (folder / "collection.json.gz").write_bytes(gzip.compress(json.dumps(collection).encode()))
    report = _load(ctx, folder)
    assert report.files == 4
    assert report.by_type == {"Patient": 3, "Observation": 4, "Practitioner": 1}
    where = sorted((Path(f.source).name, f.where) for f in report.failures)
    assert where == [
        ("Patient.ndjson", "line 3"),
        ("Patient.ndjson", "line 4"),
        ("collection.json.gz", "Bundle.entry[1] (fullUrl urn:uuid:c2)"),
    ]
    reasons = {f.where: f.reason for f in report.failures}
    assert "Patient.birthDate" in reasons["line 3"] and reasons["line 4"].startswith("not JSON")
    assert "Patient.active" in reasons["Bundle.entry[1] (fullUrl urn:uuid:c2)"]
    # ids from the absolute fullUrl and from urn:uuid; references to the absolute fullUrl rewritten
    assert _read(ctx, "Observation", "c3")["subject"] == {"reference": "Patient/c1"}
    assert b"1.10" in (crud.read(ctx, "Observation", "o2").content or b"")
    assert len(_matches(ctx, "Observation", "subject=Patient/n1")) == 3


def test_transaction_bundles_fail_whole_other_bundles_per_entry(app: Any, tmp_path: Path) -> None:
    ctx = _ctx(app)
    good = {"fullUrl": "urn:uuid:t1", "resource": _patient("t1"), "request": {"method": "POST", "url": "Patient"}}
    bad = {"resource": _patient("t2", birthDate="x"), "request": {"method": "PUT", "url": "Patient/t2"}}
    patch = {"request": {"method": "PATCH", "url": "Patient/t1"}}
    read = {"request": {"method": "GET", "url": "Patient/t1"}}
    (tmp_path / "tx.json").write_text(
        json.dumps({"resourceType": "Bundle", "type": "transaction", "entry": [good, bad]})
    )
    (tmp_path / "tx2.json").write_text(
        json.dumps({"resourceType": "Bundle", "type": "transaction", "entry": [good, patch]})
    )
    batch = {"resourceType": "Bundle", "type": "batch", "entry": [good, bad, read]}
    (tmp_path / "batch.json").write_text(json.dumps(batch))
    report = _load(ctx, tmp_path)
    failures = sorted((Path(f.source).name, f.where, f.reason) for f in report.failures)
    assert [(name, where) for name, where, _ in failures] == [
        ("batch.json", "Bundle.entry[1]"),
        ("tx.json", "Bundle"),
        ("tx2.json", "Bundle"),
    ]
    assert "Bundle.entry[1]: " in failures[1][2] and "the transaction is not loaded" in failures[1][2]
    assert "PATCH Patient/t1 is not loaded" in failures[2][2]
    assert report.skipped == 1  # the GET entry
    assert _counts(ctx) == {"Patient": 1}  # t1, from the batch

    (tmp_path / "delete.json").write_text(
        json.dumps(
            {
                "resourceType": "Bundle",
                "type": "batch",
                "entry": [{"request": {"method": "DELETE", "url": "Patient/t1"}}],
            }
        )
    )
    deleted = _load(ctx, tmp_path / "delete.json")
    assert deleted.deleted == 1 and _counts(ctx) == {}


def test_worker_processes_load_the_same(app: Any) -> None:
    ctx = _ctx(app)
    report = _load(ctx, DATA, workers=1)
    assert (report.created, len(report.failures)) == (17, 1)
    assert _read(ctx, "Encounter", "d4c3b2a1-0001-4e5f-9a8b-7c6d5e4f3a2b")["participant"][0]["individual"] == {
        "reference": "Practitioner/c8b7d6e5-f4a3-4b2c-8d9e-8f7a6b5c4d3e"
    }
    assert len(_matches(ctx, "Observation", f"subject=Patient/{OLA}")) == 2


def test_full_validation_uses_the_models_too(app: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    seen: list[bool] = []
    real = load_module.validate_resource

    def spy(resource: Any, *, lenient: bool = False, models: bool = True) -> Any:
        seen.append(models)
        return real(resource, lenient=lenient, models=models)

    monkeypatch.setattr(load_module, "validate_resource", spy)
    (tmp_path / "p.ndjson").write_text(json.dumps(_patient("v1")))
    _load(_ctx(app), tmp_path)
    _load(_ctx(app), tmp_path, full_validation=True)
    assert seen == [False, True]


def test_cli(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    from server.cli import main

    monkeypatch.setenv("DATABASE_URL", f"sqlite:///{tmp_path}/cli.sqlite")
    assert main(["load", "--quiet", "--workers", "0", str(DATA)]) == 1  # one bundle failed
    out = capsys.readouterr().out
    assert "17 created" in out and "Failed: 1" in out and "Ingrid_Berg" in out
    good = [str(p) for p in DATA.glob("*.json") if "Ingrid" not in p.name]
    assert main(["load", "--quiet", *good]) == 0
    assert "Failed: none" in capsys.readouterr().out
    assert main(["load", "--quiet", str(tmp_path / "missing")]) == 2


@pytest.mark.slow
def test_shared_synthea_sample(app: Any, tmp_path: Path) -> None:
    if not SAMPLE.exists():
        pytest.skip(f"the shared Synthea sample is absent ({SAMPLE})")
    with tarfile.open(SAMPLE) as tar:
        tar.extractall(tmp_path, filter="data")
    ctx = _ctx(app)
    report = _load(ctx, tmp_path, workers=None)
    assert report.failures == [] and report.files == 100
    assert report.processed == 11659 and report.created == 11521  # 138 repeated, identical Organizations etc.
    assert sum(_counts(ctx).values()) == 11521
    # every Observation's subject is a loaded Patient
    subjects = ctx.store.query(
        "SELECT COUNT(*) FROM idx_reference x WHERE x.res_type = 'Observation' AND x.param = 'subject' "
        "AND NOT EXISTS (SELECT 1 FROM resources r WHERE r.res_type = 'Patient' AND r.res_id = x.target_id)"
    )
    assert subjects[0][0] == 0
    assert len(_matches(ctx, "Observation", "subject:missing=false")) == 5819
    again = _load(ctx, tmp_path, workers=None)
    assert again.unchanged == 11659 and again.written == 0


@pytest.mark.slow
def _processes_with(marker: bytes) -> list[int]:
    """Live processes whose command line contains ``marker`` (Linux /proc)."""
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                cmdline = (entry / "cmdline").read_bytes()
                state = (entry / "stat").read_text().split(") ", 1)[1][0]
            except OSError:
                continue
            if marker in cmdline and state != "Z":
                found.append(int(entry.name))
    return found


def test_a_killed_load_process_is_rerun_to_completion(tmp_path: Path) -> None:
    """SIGKILL ``python -m server load`` in the middle of the sample, then run it again: no duplicates."""
    if not SAMPLE.exists():
        pytest.skip(f"the shared Synthea sample is absent ({SAMPLE})")
    with tarfile.open(SAMPLE) as tar:
        tar.extractall(tmp_path / "data", filter="data")
    db = tmp_path / "killed.sqlite"
    env = {**os.environ, "DATABASE_URL": f"sqlite:///{db}"}
    root = Path(__file__).resolve().parents[3]
    cmd = [sys.executable, "-m", "server", "load", "--quiet", "--batch-size", "500", str(tmp_path / "data")]
    proc = subprocess.Popen(cmd, cwd=root, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    committed = 0
    try:
        deadline = time.monotonic() + 120
        while committed < 1000 and proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.2)
            try:
                with sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=30) as conn:
                    committed = conn.execute("SELECT COUNT(*) FROM resources").fetchone()[0]
            except sqlite3.OperationalError:  # not created yet
                continue
        assert proc.poll() is None, "the load finished before it could be killed; the test proves nothing"
        os.kill(proc.pid, signal.SIGKILL)
    finally:
        proc.wait(30)
    with sqlite3.connect(db) as conn:
        killed_at = conn.execute("SELECT COUNT(*) FROM resources").fetchone()[0]
    assert 1000 <= killed_at < 11521
    marker = str(tmp_path / "data").encode()
    deadline = time.monotonic() + 10  # the loader's worker processes must not outlive it
    while (orphans := _processes_with(marker)) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert orphans == [], f"worker processes of the killed load are still running: {orphans}"
    from server import create_app
    from server.config import Config

    ctx = _ctx(create_app(Config(database_url=f"sqlite:///{db}")))  # no reset: resume what is there
    try:
        report = _load(ctx, tmp_path / "data")
        assert report.failures == []
        assert report.created == 11521 - killed_at
        assert report.updated == 0  # what the killed run committed is found unchanged
        with sqlite3.connect(db) as conn:
            count, top = conn.execute("SELECT COUNT(*), MAX(version) FROM resources").fetchone()
        assert (count, top) == (11521, 1)
    finally:
        ctx.store.close()
