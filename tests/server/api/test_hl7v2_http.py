"""POST /hl7v2 (ACK per message) and GET /fhir/$quarantine, on both backends."""

from __future__ import annotations

from pathlib import Path
from typing import Any

DATA = Path(__file__).resolve().parents[2] / "data" / "hl7v2"
ER7 = "x-application/hl7-v2+er7"


def _acks(body: bytes) -> list[list[str]]:
    """The ACK messages of a response, each as its segments (MLLP bytes removed)."""
    text = body.decode("utf-8").replace("\x0b", "").replace("\x1c", "")
    messages: list[list[str]] = []
    for segment in filter(None, text.split("\r")):
        if segment.startswith("MSH|"):
            messages.append([])
        messages[-1].append(segment)
    return messages


def test_post_mllp_framed_results_answers_framed_acks(client: Any) -> None:
    body = (DATA / "epic_oru_mllp.hl7").read_bytes()
    resp = client.post("/hl7v2", data=body, content_type="application/hl7-v2")
    assert resp.status_code == 200
    assert resp.content_type.startswith(ER7)
    assert resp.data.startswith(b"\x0b") and resp.data.endswith(b"\x1c\r")
    acks = _acks(resp.data)
    assert [a[1] for a in acks] == ["MSA|AA|EPIC-ORU-0001", "MSA|AA|EPIC-ORU-0002"]
    assert acks[0][0].split("|")[8] == "ACK^R01^ACK"
    found = client.get("/fhir/Observation?code=http://loinc.org|2345-7").get_json()
    assert len(found["entry"]) == 1
    again = client.post("/hl7v2", data=body, content_type="application/hl7-v2")
    assert all(a[1].startswith("MSA|AA|") and "duplicate" in a[1] for a in _acks(again.data))


def test_post_batch_with_bad_messages_acks_each(client: Any) -> None:
    body = (DATA / "malformed_crlf.hl7").read_bytes()
    resp = client.post("/hl7v2", data=body, content_type=f"{ER7}; charset=utf-8")
    assert resp.status_code == 200
    acks = _acks(resp.data)
    assert len(acks) == 12
    codes = {a[1].split("|")[2]: a[1].split("|")[1] for a in acks if len(a[1].split("|")) > 2}
    assert codes["GOOD-1"] == "AA" and codes["GOOD-2"] == "AA"
    assert codes["UNSUPPORTED"] == "AR" and codes["BAD-DATE"] == "AE"
    bad_date = next(a for a in acks if a[1].startswith("MSA|AE|BAD-DATE"))
    assert bad_date[2].startswith("ERR||PID^1^7^1|102^")
    assert client.get("/fhir/Patient?identifier=urn:oid:2.16.578.1.12.4.1.4.1|15838512329").get_json()["entry"]


def test_post_text_plain_with_lf_batches(client: Any) -> None:
    resp = client.post("/hl7v2", data=(DATA / "cerner_batch_lf.hl7").read_bytes(), content_type="text/plain")
    assert [a[1].split("|")[1] for a in _acks(resp.data)] == ["AA"] * 5


def test_post_refuses_other_media_types_and_empty_bodies(client: Any) -> None:
    resp = client.post("/hl7v2", data=b'{"a": 1}', content_type="application/json")
    assert resp.status_code == 415
    assert resp.get_json()["resourceType"] == "OperationOutcome"
    resp = client.post("/hl7v2", data=b"\r\n", content_type="application/hl7-v2")
    assert resp.status_code == 400
    assert "no HL7 v2 message" in resp.get_json()["issue"][0]["diagnostics"]


def test_quarantine_lists_what_did_not_become_fhir(client: Any) -> None:
    client.post("/hl7v2", data=(DATA / "malformed_crlf.hl7").read_bytes(), content_type="application/hl7-v2")
    bundle = client.get("/fhir/$quarantine").get_json()
    assert bundle["resourceType"] == "Bundle" and bundle["type"] == "collection"
    outcomes = [e["resource"] for e in bundle["entry"]]
    assert len(outcomes) == 10 and all(o["resourceType"] == "OperationOutcome" for o in outcomes)
    flag = next(o for o in outcomes if "abnormal flag" in o["issue"][0]["details"]["text"])
    assert flag["issue"][0]["location"] == ["OBX-8[1]"]
    assert flag["issue"][0]["details"]["coding"] == [
        {"system": "http://terminology.hl7.org/CodeSystem/v2-0357", "code": "103"}
    ]
    ext = {
        x["url"].rsplit("-", 1)[-1]: next(v for k, v in x.items() if k.startswith("value")) for x in flag["extension"]
    }
    assert ext["id"] == "BAD-FLAG" and ext["kind"] == "hl7v2" and ext["raw"].startswith("MSH|")
    source = ext["source"]
    assert source.startswith("POST /hl7v2 ")
    one = client.get("/fhir/$quarantine", query_string={"control-id": "BAD-DATE"}).get_json()
    assert [o["resource"]["issue"][0]["location"] for o in one["entry"]] == [["PID-7"]]
    assert len(client.get("/fhir/$quarantine", query_string={"source": source}).get_json()["entry"]) == 10
    assert "entry" not in client.get("/fhir/$quarantine", query_string={"since": "2999-01-01"}).get_json()
    assert "entry" not in client.get("/fhir/$quarantine", query_string={"kind": "csv"}).get_json()
    # paging: 10 rows, 4 per page, no repeats
    seen: list[str] = []
    url: str | None = "/fhir/$quarantine?_count=4"
    while url:
        page = client.get(url).get_json()
        seen += [e["resource"]["id"] for e in page.get("entry", [])]
        url = next(
            (lk["url"].replace("http://testserver", "") for lk in page["link"] if lk["relation"] == "next"), None
        )
    assert len(seen) == 10 == len(set(seen))


def test_quarantine_refuses_bad_parameters(client: Any) -> None:
    for query in ({"since": "yesterday"}, {"kind": "xml"}, {"bogus": "1"}, {"_count": "x"}):
        resp = client.get("/fhir/$quarantine", query_string=query)
        assert resp.status_code == 400
        assert resp.get_json()["resourceType"] == "OperationOutcome"
