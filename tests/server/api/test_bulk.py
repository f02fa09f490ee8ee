"""Bulk Data ``$export`` over HTTP (server/api/bulk.py, server/fhir/operations/export.py), both backends.

Kick-off (Prefer/Accept/_outputFormat/_type/_since checks), polling (202 + X-Progress +
Retry-After, then the manifest), NDJSON files served and split at the line limit, system /
Patient / Group levels, ``deleted`` with ``_since``, cancel, the snapshot at transactionTime,
429, stale and expired jobs, and the round trip: export -> load into an empty server -> the same
resources.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from server.fhir import crud
from server.fhir.load import load
from server.fhir.operations import export
from tests.conftest import make_app

ASYNC = {"Prefer": "respond-async", "Accept": "application/fhir+json"}


def _obs(id_: str, patient: str, value: float) -> dict[str, Any]:
    return {
        "resourceType": "Observation",
        "id": id_,
        "status": "final",
        "code": {"coding": [{"system": "http://loinc.org", "code": "2160-0", "display": "Creatinine"}]},
        "subject": {"reference": f"Patient/{patient}"},
        "performer": [{"reference": "Practitioner/dr1"}],
        "effectiveDateTime": "2021-02-03T04:05:06Z",
        "valueQuantity": {"value": value, "unit": "mg/dL", "system": "http://unitsofmeasure.org", "code": "mg/dL"},
    }


def _data() -> list[dict[str, Any]]:
    return [
        {"resourceType": "Patient", "id": "p1", "name": [{"family": "Ødegård", "given": ["Åse"]}], "gender": "female"},
        {"resourceType": "Patient", "id": "p2", "birthDate": "1970-01-01"},
        {"resourceType": "Practitioner", "id": "dr1", "name": [{"family": "Lege"}]},
        {
            "resourceType": "Group",
            "id": "g1",
            "type": "person",
            "actual": True,
            "member": [{"entity": {"reference": "Patient/p1"}}],
        },
        *[_obs(f"o{i}", "p1" if i % 2 else "p2", 0.5 + i / 10) for i in range(1, 6)],
        {
            "resourceType": "Condition",
            "id": "c1",
            "subject": {"reference": "Patient/p2"},
            "code": {"text": "line1\nline2"},
        },
    ]


@pytest.fixture
def app(database_url: str, tmp_path: Path) -> Iterator[Any]:
    application = make_app(database_url, export_dir=str(tmp_path / "exports"), export_max_lines=2)
    ctx = application.extensions["bigmed"]
    for res in _data():
        crud.update(ctx, res["resourceType"], res["id"], res)
    yield application
    ctx.store.close()


def _local(url: str) -> str:
    return url.removeprefix("http://testserver")


def _kick_off(client: Any, url: str, **kwargs: Any) -> str:
    resp = client.get(url, headers=ASYNC, **kwargs)
    assert resp.status_code == 202, resp.get_json()
    assert resp.get_json()["resourceType"] == "OperationOutcome"
    return _local(resp.headers["Content-Location"])


def _wait(client: Any, status_url: str) -> dict[str, Any]:
    for _ in range(200):
        resp = client.get(status_url)
        if resp.status_code == 200:
            assert resp.mimetype == "application/json"
            assert "Expires" in resp.headers
            manifest: dict[str, Any] = resp.get_json()
            return manifest
        assert resp.status_code == 202, resp.get_json()
        assert resp.headers["Retry-After"] and "resources exported" in resp.headers["X-Progress"]
        time.sleep(0.05)
    raise AssertionError("the export did not finish")


def _download(client: Any, items: list[dict[str, Any]], folder: Path | None = None) -> dict[str, list[dict[str, Any]]]:
    out: dict[str, list[dict[str, Any]]] = {}
    for item in items:
        resp = client.get(_local(item["url"]))
        assert resp.status_code == 200 and resp.mimetype == "application/fhir+ndjson"
        lines = resp.data.decode().splitlines()
        assert len(lines) == item["count"]
        out.setdefault(item["type"], []).extend(json.loads(line) for line in lines)
        if folder is not None:
            folder.mkdir(exist_ok=True)
            (folder / item["url"].rsplit("/", 1)[1]).write_bytes(resp.data)
    return out


def _ids(resources: list[dict[str, Any]]) -> set[str]:
    return {r["id"] for r in resources}


def _strip_meta(res: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in res.items() if k != "meta"}


def test_system_export_manifest_files_and_round_trip_into_an_empty_server(app: Any, tmp_path: Path) -> None:
    client = app.test_client()
    ctx = app.extensions["bigmed"]
    status_url = _kick_off(client, "/fhir/$export?_outputFormat=application/fhir%2Bndjson")
    manifest = _wait(client, status_url)
    assert manifest["request"] == "http://testserver/fhir/$export?_outputFormat=application/fhir%2Bndjson"
    assert manifest["requiresAccessToken"] is False and manifest["error"] == []
    assert "deleted" not in manifest
    assert manifest["transactionTime"].endswith("Z")
    # five Observations at two lines per file: three files of 2, 2 and 1
    obs_files = [o for o in manifest["output"] if o["type"] == "Observation"]
    assert [o["count"] for o in obs_files] == [2, 2, 1]
    assert [o["url"].rsplit("/", 1)[1] for o in obs_files] == [f"Observation-{n}.ndjson" for n in (1, 2, 3)]
    folder = tmp_path / "downloaded"
    exported = _download(client, manifest["output"], folder)
    assert {t: len(v) for t, v in exported.items()} == {
        "Condition": 1,
        "Group": 1,
        "Observation": 5,
        "Patient": 2,
        "Practitioner": 1,
    }
    originals = {
        (r.type, r.id): json.loads(r.content or b"{}") for r in ctx.store.iter_current() if r.content is not None
    }
    assert exported["Condition"][0]["code"]["text"] == "line1\nline2"  # a line break inside a value stays one line
    # load into an empty server: the same resources
    ctx.store.reset()
    assert list(ctx.store.iter_current()) == []
    report = load(ctx, [folder], progress=False, workers=0)
    assert not report.failures and report.created == len(originals)
    loaded = {(r.type, r.id): json.loads(r.content or b"{}") for r in ctx.store.iter_current()}
    assert {k: _strip_meta(v) for k, v in loaded.items()} == {k: _strip_meta(v) for k, v in originals.items()}


def test_patient_and_group_level_export_the_compartment(app: Any) -> None:
    client = app.test_client()
    everyone = _download(client, _wait(client, _kick_off(client, "/fhir/Patient/$export"))["output"])
    # the R4 Patient compartment: Group is in it (by member), Practitioner is not
    assert set(everyone) == {"Patient", "Observation", "Condition", "Group"}
    assert _ids(everyone["Patient"]) == {"p1", "p2"} and len(everyone["Observation"]) == 5
    group = _download(client, _wait(client, _kick_off(client, "/fhir/Group/g1/$export"))["output"])
    assert _ids(group["Patient"]) == {"p1"}
    assert _ids(group["Observation"]) == {"o1", "o3", "o5"} and "Condition" not in group
    assert _ids(group["Group"]) == {"g1"}
    typed = _download(client, _wait(client, _kick_off(client, "/fhir/Group/g1/$export?_type=Observation"))["output"])
    assert set(typed) == {"Observation"}
    post = client.post(
        "/fhir/Patient/$export",
        headers=ASYNC,
        json={"resourceType": "Parameters", "parameter": [{"name": "_type", "valueString": "Patient"}]},
    )
    assert post.status_code == 202
    posted = _download(client, _wait(client, _local(post.headers["Content-Location"]))["output"])
    assert set(posted) == {"Patient"}


def test_since_exports_changes_and_deleted_and_load_applies_the_deletions(app: Any, tmp_path: Path) -> None:
    client = app.test_client()
    ctx = app.extensions["bigmed"]
    time.sleep(0.02)
    since = time.time()
    time.sleep(0.02)
    crud.update(ctx, "Observation", "o1", _obs("o1", "p1", 9.9))
    crud.delete(ctx, "Observation", "o2")
    crud.delete(ctx, "Practitioner", "dr1")
    stamp = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(since)) + f".{int(since % 1 * 1000):03d}Z"
    manifest = _wait(client, _kick_off(client, "/fhir/$export", query_string={"_since": stamp}))
    output = _download(client, manifest["output"])
    assert {t: _ids(v) for t, v in output.items()} == {"Observation": {"o1"}}
    assert [d["type"] for d in manifest["deleted"]] == ["Bundle"]
    folder = tmp_path / "deleted"
    deleted = _download(client, manifest["deleted"], folder)["Bundle"]
    assert sorted(b["entry"][0]["request"]["url"] for b in deleted) == ["Observation/o2", "Practitioner/dr1"]
    assert all(b["type"] == "transaction" and b["entry"][0]["request"]["method"] == "DELETE" for b in deleted)
    # patient level: only the deleted resource that was in a patient's compartment
    patient_level = _wait(client, _kick_off(client, "/fhir/Patient/$export", query_string={"_since": stamp}))
    urls = [b["entry"][0]["request"]["url"] for b in _download(client, patient_level["deleted"]).get("Bundle", [])]
    assert urls == ["Observation/o2"]
    # the deleted files load: the deletions are applied (to resources recreated meanwhile)
    crud.update(ctx, "Observation", "o2", _obs("o2", "p2", 1.0))
    report = load(ctx, [folder], progress=False, workers=0)
    assert not report.failures and report.deleted == 1
    assert ctx.store.read("Observation", "o2").deleted  # type: ignore[union-attr]


def test_kick_off_errors_are_operation_outcomes(app: Any) -> None:
    client = app.test_client()
    cases = [
        ("/fhir/$export", {"Accept": "application/fhir+json"}, 400),  # no Prefer: respond-async
        ("/fhir/$export", {"Prefer": "respond-async", "Accept": "application/xml"}, 406),
        ("/fhir/$export?_outputFormat=text/csv", ASYNC, 400),
        ("/fhir/$export?_type=Nonsense", ASYNC, 400),
        ("/fhir/$export?_typeFilter=Patient%3Factive%3Dtrue", ASYNC, 400),
        ("/fhir/$export?_since=yesterday", ASYNC, 400),
        ("/fhir/Patient/$export?_type=Practitioner", ASYNC, 400),
        ("/fhir/Group/nope/$export", ASYNC, 404),
        ("/fhir/$export-status/0123456789abcdef0123456789abcdef", {}, 404),
        ("/fhir/$export-status/not-a-job", {}, 404),
    ]
    for url, headers, status in cases:
        resp = client.get(url, headers=headers)
        assert resp.status_code == status, (url, resp.get_json())
        assert resp.get_json()["resourceType"] == "OperationOutcome"


def test_cancel_removes_the_job_and_its_files(app: Any, tmp_path: Path) -> None:
    client = app.test_client()
    status_url = _kick_off(client, "/fhir/$export")
    manifest = _wait(client, status_url)
    job = status_url.rsplit("/", 1)[1]
    assert (tmp_path / "exports" / job).is_dir()
    resp = client.delete(status_url)
    assert resp.status_code == 202 and resp.get_json()["resourceType"] == "OperationOutcome"
    assert not (tmp_path / "exports" / job).exists()
    assert client.get(status_url).status_code == 404
    assert client.get(_local(manifest["output"][0]["url"])).status_code == 404
    assert client.delete(status_url).status_code == 404
    # cancelling a running export: whenever the DELETE lands, nothing is left behind
    running = _kick_off(client, "/fhir/$export")
    assert client.delete(running).status_code == 202
    time.sleep(0.3)
    assert client.get(running).status_code == 404
    assert [p.name for p in (tmp_path / "exports").iterdir()] == []


def test_export_is_a_snapshot_at_transaction_time(app: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    ctx = app.extensions["bigmed"]
    started: list[tuple[str, Any]] = []
    monkeypatch.setattr(export, "run_export", lambda c, job, req: started.append((job, req)))
    req = export.parse_request(ctx, "system", [("_type", "Observation,Patient")], "http://testserver/fhir/$export")
    job = export.kick_off(ctx, req, background=False)
    time.sleep(0.02)
    crud.update(ctx, "Observation", "o1", _obs("o1", "p1", 42.0))  # changed after transactionTime
    crud.delete(ctx, "Observation", "o3")  # deleted after it
    crud.update(ctx, "Patient", "p3", {"resourceType": "Patient", "id": "p3"})  # created after it
    monkeypatch.undo()
    export.run_export(ctx, job, started[0][1])
    manifest = export.poll(ctx, job, "http://testserver/fhir").manifest
    assert manifest is not None
    client = app.test_client()
    output = _download(client, manifest["output"])
    assert _ids(output["Observation"]) == {"o1", "o2", "o3", "o4", "o5"}
    assert _ids(output["Patient"]) == {"p1", "p2"}
    o1 = next(o for o in output["Observation"] if o["id"] == "o1")
    assert o1["valueQuantity"]["value"] == 0.6 and o1["meta"]["versionId"] == "1"


def test_too_many_jobs_stale_and_expired_jobs(app: Any, monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    ctx = app.extensions["bigmed"]
    app.extensions["bigmed"].config = ctx.config.with_(export_max_jobs=1)
    monkeypatch.setattr(export, "run_export", lambda c, job, req: None)  # a job that never progresses
    client = app.test_client()
    status_url = _kick_off(client, "/fhir/$export")
    busy = client.get("/fhir/$export", headers=ASYNC)
    assert busy.status_code == 429 and busy.headers["Retry-After"]
    job = status_url.rsplit("/", 1)[1]
    assert client.get(status_url).status_code == 202
    state_path = tmp_path / "exports" / job / "job.json"
    state = json.loads(state_path.read_bytes())
    state["heartbeat"] = time.time() - export.STALE - 1  # its process died
    state_path.write_text(json.dumps(state))
    stale = client.get(status_url)
    assert stale.status_code == 500 and "stopped" in stale.get_json()["issue"][0]["diagnostics"]
    assert client.get("/fhir/$export", headers=ASYNC).status_code == 202  # a stale job does not count
    assert export.cleanup(ctx, now=time.time() + export.STALE + ctx.config.export_ttl + 10) == 2
    assert client.get(status_url).status_code == 404


def test_a_resource_that_cannot_be_written_goes_to_the_error_file(app: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    real = export._line

    def broken(res: Any) -> bytes:
        if res.id == "o4":
            raise ValueError("corrupt JSON")
        return real(res)

    monkeypatch.setattr(export, "_line", broken)
    client = app.test_client()
    manifest = _wait(client, _kick_off(client, "/fhir/$export?_type=Observation"))
    assert sum(o["count"] for o in manifest["output"]) == 4
    errors = _download(client, manifest["error"])["OperationOutcome"]
    assert len(errors) == 1 and "Observation/o4" in errors[0]["issue"][0]["diagnostics"]
