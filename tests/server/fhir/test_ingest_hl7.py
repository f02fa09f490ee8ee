"""HL7 v2 ingestion into the store (server/fhir/operations/ingest_hl7.py, ehr_store.py), on both backends."""

from __future__ import annotations

import copy
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from server import jsonio
from server.fhir import crud
from server.fhir.operations.ingest_hl7 import ingest_hl7
from server.fhir.search import search
from tests.conftest import make_app

DATA = Path(__file__).resolve().parents[2] / "data" / "hl7v2"
FILES = ("cerner_batch_lf.hl7", "dips_adt_latin1_cr.hl7", "epic_oru_mllp.hl7", "malformed_crlf.hl7")
FNR = "urn:oid:2.16.578.1.12.4.1.4.1"


@pytest.fixture
def ctx(database_url: str) -> Iterator[Any]:
    app = make_app(database_url)
    context = app.extensions["bigmed"]
    yield context
    context.store.close()


def _files(*names: str) -> list[tuple[str, bytes]]:
    return [(n, (DATA / n).read_bytes()) for n in names or FILES]


def _msg(control: str, event: str, segments: list[str], version: str = "2.5") -> str:
    msh = f"MSH|^~\\&|LABSYS|OUS|BIGMED|BIGMED|20240401101500||{event}|{control}|P|{version}"
    return "\r".join([msh, *segments]) + "\r"


def _oru(control: str, fnr: str, order: str, values: list[str]) -> str:
    obx = [
        f"OBX|{i + 1}|NM|{code}^Test {i}^LN||{value}|mmol/L|1-10|N|||F"
        for i, (code, value) in enumerate(zip(["2345-7", "2823-3", "2951-2"], values, strict=False))
    ]
    return _msg(
        control,
        "ORU^R01",
        [
            f"PID|1||{fnr}^^^FNR^NNNOR||Hansen^Ola||19850315|M",
            f"OBR|1|{order}|{order}-F^LAB|24323-8^Panel^LN|||20240401080000|||||||||||||||||CH|F",
            *obx,
        ],
    )


def _read(ctx: Any, type_: str, id_: str) -> dict[str, Any]:
    return json.loads(crud.read(ctx, type_, id_).content)


def _all(ctx: Any, type_: str, query: list[tuple[str, str]] | None = None) -> list[dict[str, Any]]:
    bundle = jsonio.loads(
        jsonio.dumps(search(ctx, "http://testserver/fhir", type_, [*(query or []), ("_count", "500")]))
    )
    return [e["resource"] for e in bundle.get("entry", []) if e.get("search", {}).get("mode") != "outcome"]


def _versions(ctx: Any) -> int:
    return int(ctx.store.query("SELECT COUNT(*) FROM history")[0][0])


def test_feeds_are_stored_and_bad_messages_quarantined(ctx: Any) -> None:
    report = ingest_hl7(ctx, _files(), acks=True)
    assert report.messages == 21
    assert report.stored == 11 and report.duplicates == 0
    assert len(report.quarantined) == 10
    assert len(report.acks) == 21
    assert sum("MSA|AA|" in a for a in report.acks) == 11
    assert any("MSA|AR|UNSUPPORTED" in a for a in report.acks)
    assert any("MSA|AE|BAD-FLAG" in a and "ERR||OBX^1^8^1|103^" in a for a in report.acks)
    rows = ctx.store.query("SELECT source, record, control_id, location, reason, raw FROM ehr_quarantine")
    assert len(rows) == 10
    bad_flag = next(r for r in rows if r[2] == "BAD-FLAG")
    assert bad_flag[0] == "malformed_crlf.hl7" and bad_flag[3] == "OBX-8[1]" and "ZZ" in bad_flag[4]
    assert bad_flag[5].startswith("MSH|")
    # the Epic ORU: one patient (by fnr), two reports, 10 + 1 results, all pointing at the stored patient
    (patient,) = _all(ctx, "Patient", [("identifier", f"{FNR}|15838512329")])
    observations = _all(ctx, "Observation", [("subject", f"Patient/{patient['id']}")])
    assert len(observations) >= 10
    reports = _all(ctx, "DiagnosticReport", [("subject", f"Patient/{patient['id']}")])
    assert reports and all(r["subject"]["reference"] == f"Patient/{patient['id']}" for r in reports)
    glucose = _all(ctx, "Observation", [("code", "http://loinc.org|2345-7"), ("value-quantity", "gt6")])
    assert [str(o["valueQuantity"]["value"]) for o in glucose] == ["6.2"]


def test_the_same_messages_again_change_nothing(ctx: Any) -> None:
    first = ingest_hl7(ctx, _files())
    versions = _versions(ctx)
    again = ingest_hl7(ctx, _files(), acks=True)
    assert again.duplicates == first.stored and again.stored == 0
    assert _versions(ctx) == versions
    assert all("MSA|AA|" in a for a in again.acks if "MSA|AA|" in a)
    assert sum("duplicate of a message" in a for a in again.acks) == first.stored


def test_a_repeated_result_with_a_new_control_id_writes_no_new_version(ctx: Any) -> None:
    ingest_hl7(ctx, [("a", _oru("C1", "15838512329", "ORD1", ["5", "4"]))])
    versions = _versions(ctx)
    again = ingest_hl7(ctx, [("b", _oru("C2", "15838512329", "ORD1", ["5", "4"]))])
    assert again.stored == 1 and again.counts.created == 0 and again.counts.updated == 0
    assert _versions(ctx) == versions
    corrected = ingest_hl7(ctx, [("c", _oru("C3", "15838512329", "ORD1", ["5", "7"]))])
    assert corrected.counts.updated == 1  # only the changed Observation
    values = sorted(int(o["valueQuantity"]["value"]) for o in _all(ctx, "Observation"))
    assert values == [5, 7]


def test_adt_updates_discharges_and_merges(ctx: Any) -> None:
    report = ingest_hl7(ctx, _files("cerner_batch_lf.hl7", "dips_adt_latin1_cr.hl7"))
    assert report.stored == 7 and not report.quarantined
    # A04 then A08 then A03 then A40 for HNR 13527248013: one Patient, updated
    (nils,) = _all(ctx, "Patient", [("identifier", "urn:oid:2.16.578.1.12.4.1.4.3|13527248013")])
    assert nils["name"][0]["given"] == ["Nils", "Johan"]
    assert int(nils["meta"]["versionId"]) >= 2
    # A03 finished the visit opened by the A04
    (visit,) = _all(ctx, "Encounter", [("identifier", "urn:bigmed:id:HUS|HUS-ENC-7001")])
    assert visit["status"] == "finished" and visit["period"]["end"].startswith("2024-03-17T17:45")
    assert visit["subject"]["reference"] == f"Patient/{nils['id']}"
    # A40: the survivor replaces the retired record, which points back
    (retired,) = _all(ctx, "Patient", [("identifier", "urn:oid:2.16.578.1.12.4.1.4.3|80000000179")])
    assert nils["link"] == [{"other": {"reference": f"Patient/{retired['id']}"}, "type": "replaces"}]
    assert retired["active"] is False
    assert retired["link"] == [{"other": {"reference": f"Patient/{nils['id']}"}, "type": "replaced-by"}]
    # DIPS A01 + A03 (Latin-1): Encounter finished with the practitioners of PV1
    (ase,) = _all(ctx, "Patient", [("identifier", f"{FNR}|31129956715")])
    assert ase["name"][0]["family"] == "Bjørnstad"
    (stay,) = _all(ctx, "Encounter", [("subject", f"Patient/{ase['id']}")])
    assert stay["status"] == "finished"
    assert len(_all(ctx, "Practitioner")) == 2


def test_results_find_a_patient_created_through_the_api(ctx: Any) -> None:
    patient = {"resourceType": "Patient", "identifier": [{"system": FNR, "value": "15838512329"}]}
    created = crud.create(ctx, "Patient", patient).resource
    report = ingest_hl7(ctx, [("lab", _oru("C1", "15838512329", "ORD9", ["5", "6", "7"]))])
    assert report.stored == 1 and report.counts.matched == 1
    assert len(_all(ctx, "Patient")) == 1  # matched, not duplicated, not overwritten
    found = _all(ctx, "Observation", [("subject", f"Patient/{created.id}")])
    assert len(found) == 3 and all(o["subject"]["reference"] == f"Patient/{created.id}" for o in found)
    assert len(_all(ctx, "DiagnosticReport", [("patient", created.id)])) == 1


def test_results_before_the_admission_and_the_admission_after_share_one_patient(ctx: Any) -> None:
    ingest_hl7(ctx, [("lab", _oru("C1", "15838512329", "ORD1", ["5"]))])
    adt = _msg(
        "A1",
        "ADT^A01",
        ["PID|1||15838512329^^^FNR^NNNOR||Hansen^Ola^Per||19850315|M", "PV1|1|I|MED^1^1^OUS|||||||||||||||||V-1^^^OUS"],
    )
    ingest_hl7(ctx, [("adt", adt)])
    (patient,) = _all(ctx, "Patient")
    assert patient["name"][0]["given"] == ["Ola", "Per"]
    assert _all(ctx, "Observation")[0]["subject"]["reference"] == f"Patient/{patient['id']}"


def test_an_ambiguous_patient_fails_its_message_alone(ctx: Any) -> None:
    for _ in range(2):
        crud.create(
            ctx, "Patient", {"resourceType": "Patient", "identifier": [{"system": FNR, "value": "15838512329"}]}
        )
    feed = _oru("C1", "15838512329", "ORD1", ["5"]) + _oru("C2", "31129956715", "ORD2", ["6"])
    report = ingest_hl7(ctx, [("lab", feed)], acks=True)
    assert report.stored == 1 and len(report.quarantined) == 1
    assert "more than one Patient" in report.quarantined[0]["reason"]
    assert report.acks[0].split("\r")[1].startswith("MSA|AE|C1|")
    assert report.acks[1].split("\r")[1] == "MSA|AA|C2"
    (row,) = ctx.store.query("SELECT control_id, reason FROM ehr_quarantine")
    assert row[0] == "C1"
    assert len(_all(ctx, "Observation")) == 1  # nothing of C1 was written


def test_worker_processes_store_the_same(sqlite_url: str) -> None:
    app = make_app(sqlite_url)
    context = app.extensions["bigmed"]
    feed = "".join(_oru(f"C{i}", "15838512329" if i % 2 else "31129956715", f"ORD{i}", ["5", "6"]) for i in range(120))
    report = ingest_hl7(context, [("lab", feed)], workers=1, batch_size=100)
    assert report.stored == 120 and report.counts.created == 120 * 3 + 2
    assert len(_all(context, "Patient")) == 2
    assert len(_all(context, "Observation")) == 240
    context.store.close()


_U = "urn:uuid:11111111-1111-1111-1111-111111111111"
_V = "urn:uuid:22222222-2222-2222-2222-222222222222"


def _tricky_records() -> list[list[dict[str, Any]]]:
    patient = {"resourceType": "Patient", "identifier": [{"system": "http://x", "value": "1"}]}
    create = {"method": "POST", "url": "Patient", "ifNoneExist": "identifier=http://x|1"}
    shared = {"reference": _U}
    return [
        [  # a fullUrl used as a plain string, a conditional reference inside an extension
            {"fullUrl": _U, "resource": patient, "request": create},
            {
                "fullUrl": _V,
                "resource": {
                    "resourceType": "Observation",
                    "id": "o1",
                    "subject": {"reference": _U},
                    "extension": [{"url": "x", "valueReference": {"reference": "Patient?identifier=http://x|1"}}],
                    "note": [{"text": _U}],
                },
                "request": {"method": "PUT", "url": "Observation/o1"},
            },
        ],
        [  # the usual places, one element shared by two of them, meta kept
            {"fullUrl": _U, "resource": dict(patient, meta={"tag": [{"code": "t"}]}), "request": create},
            {
                "fullUrl": _V,
                "resource": {
                    "resourceType": "Encounter",
                    "id": "e1",
                    "subject": shared,
                    "participant": [{"individual": {"reference": "Practitioner?identifier=p|1", "display": "P"}}],
                    "account": [shared],
                },
                "request": {"method": "PUT", "url": "Encounter/e1"},
            },
        ],
        [  # a reference that is not a string, one inside an identifier
            {
                "fullUrl": _V,
                "resource": {
                    "resourceType": "Observation",
                    "id": "o2",
                    "subject": {"reference": 5},
                    "focus": [{"identifier": {"assigner": {"reference": _V}}}],
                },
                "request": {"method": "PUT", "url": "Observation/o2"},
            },
        ],
    ]


def _prepared(monkeypatch: pytest.MonkeyPatch, entries: list[dict[str, Any]], walk: bool) -> Any:
    from server.fhir.operations import ehr_store
    from server.search.registry import default_registry

    with monkeypatch.context() as m:
        if walk:  # the reference: every element walked by rewrite_references
            m.setattr(ehr_store, "_rewrite_and_stamp", lambda *args: None)
        try:
            items, guesses = ehr_store.prepare_unit(copy.deepcopy(entries), default_registry(), 1.7e9)
        except ehr_store.RecordError as exc:
            return str(exc)
    return [(i.where, i.id_, i.mode, i.key, i.content, i.index, i.keys) for i in items], guesses


@pytest.mark.parametrize("case", range(3))
def test_references_rewritten_without_the_walk_are_the_same(monkeypatch: pytest.MonkeyPatch, case: int) -> None:
    entries = _tricky_records()[case]
    fast = _prepared(monkeypatch, entries, walk=False)
    assert fast == _prepared(monkeypatch, entries, walk=True)
    if case == 0:
        content = jsonio.loads(fast[0][1][4])
        assert content["note"][0]["text"].startswith("Patient/") and content["subject"] == {
            "reference": content["note"][0]["text"]
        }
        assert content["extension"][0]["valueReference"]["reference"] == content["subject"]["reference"]


def test_a_reference_to_no_entry_fails_the_record_with_or_without_the_walk(monkeypatch: pytest.MonkeyPatch) -> None:
    deep = {"focus": [{"identifier": {"assigner": {"reference": "urn:uuid:nowhere-deep"}}}]}
    entries = [
        {
            "fullUrl": _U,
            "resource": {
                "resourceType": "Observation",
                "id": "o",
                "subject": {"reference": "urn:uuid:nowhere"},
                **deep,
            },
            "request": {"method": "PUT", "url": "Observation/o"},
        }
    ]
    fast = _prepared(monkeypatch, entries, walk=False)
    assert fast == _prepared(monkeypatch, entries, walk=True)
    assert "Bundle.entry[0]" in fast and "urn:uuid:nowhere'" in fast


def test_mapped_messages_take_the_short_path(monkeypatch: pytest.MonkeyPatch) -> None:
    from mappers.hl7v2 import MappedMessage, map_message, parse_messages
    from server.fhir.operations import ehr_store

    walked: list[str] = []
    walk = ehr_store.rewrite_references
    monkeypatch.setattr(
        ehr_store, "rewrite_references", lambda r, *a, **k: walked.append(r["resourceType"]) or walk(r, *a, **k)
    )
    for name, data in _files():
        for raw in parse_messages(data, name):
            mapped = map_message(raw)
            if isinstance(mapped, MappedMessage):
                entries = mapped.entries
                assert _prepared(monkeypatch, entries, walk=False) == _prepared(monkeypatch, entries, walk=True)
    assert walked.count("Observation") > 0  # the walk ran only where asked for (walk=True) ...
    walked.clear()
    for name, data in _files():
        for raw in parse_messages(data, name):
            mapped = map_message(raw)
            if isinstance(mapped, MappedMessage):
                _prepared(monkeypatch, mapped.entries, walk=False)
    assert walked == []  # ... never for what the mapper writes
