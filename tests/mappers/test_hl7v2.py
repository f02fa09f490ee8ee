"""Tests of mappers.hl7v2: reading v2 feeds, ADT/ORU -> FHIR R4 transaction Bundles, quarantine, ACKs.

Fixtures in tests/data/hl7v2 imitate three vendors' styles: a DIPS-like ADT feed (ISO 8859-1, CR,
Z-segment, repeating PID fields), an Epic-like ORU feed (UTF-8, MLLP frames, escapes, SPM, NTE)
and a Cerner-like v2.3 batch (FHS/BHS, LF, minimal fields, A04/A08/A03/A40/ORU), plus a stream of
malformed messages. Every produced resource is checked with profiles.validate.validate_structure
and the R4B models; python-hl7 serves as an independent reader to check segment/field splitting.
"""

from __future__ import annotations

import io
import json
import time
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
from fhir.resources.R4B import get_fhir_model_class

from mappers.ehr_common import Problem, Quarantined, fhir_id
from mappers.hl7v2 import (
    Encoding,
    MappedMessage,
    RawMessage,
    ack,
    escape,
    map_message,
    map_stream,
    parse_messages,
    unescape,
)
from profiles.validate import validate_structure

DATA = Path(__file__).resolve().parents[1] / "data" / "hl7v2"
FNR = "urn:oid:2.16.578.1.12.4.1.4.1"
HNR = "urn:oid:2.16.578.1.12.4.1.4.3"
HPR = "urn:oid:2.16.578.1.12.4.1.4.4"
V2_0203 = "http://terminology.hl7.org/CodeSystem/v2-0203"
LOINC = "http://loinc.org"
UCUM = "http://unitsofmeasure.org"
INTERP = "http://terminology.hl7.org/CodeSystem/v3-ObservationInterpretation"


def results(name: str) -> list[MappedMessage | Quarantined]:
    return list(map_stream((DATA / name).read_bytes(), name))


def mapped(name: str) -> list[MappedMessage]:
    out = results(name)
    assert all(isinstance(r, MappedMessage) for r in out), [r.problem for r in out if isinstance(r, Quarantined)]
    return [r for r in out if isinstance(r, MappedMessage)]


def assert_valid(bundle: dict[str, Any]) -> None:
    """Structure (R4 definitions) of the whole Bundle, and each resource through its R4B model."""
    assert validate_structure(bundle) == []
    for entry in bundle["entry"]:
        resource = entry["resource"]
        get_fhir_model_class(resource["resourceType"]).model_validate(resource)


def by_type(message: MappedMessage, rtype: str) -> list[dict[str, Any]]:
    return [r for r in message.resources if r["resourceType"] == rtype]


# ---------------------------------------------------------------------------------------------
# reading


def _msg(*segments: str) -> str:
    return "\r".join(segments) + "\r"


ADT = _msg(
    "MSH|^~\\&|EHR|OUS|BIGMED|BIGMED|20240101120000||ADT^A01|C1|P|2.5",
    "PID|1||15838512329^^^FNR^NNNOR||Nordmann^Kari||19850315|F",
    "PV1|1|I|||||||||||||||||V-1^^^OUS",
)


@pytest.mark.parametrize(
    "data",
    [
        ADT.encode(),
        ADT.replace("\r", "\r\n").encode(),
        ADT.replace("\r", "\n").encode(),
        b"\x0b" + ADT.encode() + b"\x1c\r",
        ADT,  # text input
        b"\xef\xbb\xbf" + ADT.replace("\r", "\r\n").encode(),  # BOM, CRLF
    ],
    ids=["CR", "CRLF", "LF", "MLLP", "str", "BOM"],
)
def test_line_endings_and_framing_read_the_same(data: bytes | str) -> None:
    (msg,) = list(parse_messages(data))
    assert msg.error is None
    assert [s.name for s in msg.segments] == ["MSH", "PID", "PV1"]
    (result,) = list(map_stream(data, "x"))
    (reference,) = list(map_stream(ADT.encode(), "x"))
    assert isinstance(result, MappedMessage)
    assert isinstance(reference, MappedMessage)
    assert result.bundle() == reference.bundle()


def test_many_mllp_frames_and_batches_split_into_messages() -> None:
    assert [m.control_id for m in parse_messages((DATA / "epic_oru_mllp.hl7").read_bytes())] == [
        "EPIC-ORU-0001",
        "EPIC-ORU-0002",
    ]
    cerner = list(parse_messages((DATA / "cerner_batch_lf.hl7").read_bytes()))
    assert [m.control_id for m in cerner] == ["CRN-1001", "CRN-1002", "CRN-1003", "CRN-1004", "CRN-2001"]
    assert all(m.error is None for m in cerner)


def test_batch_trailer_count_mismatch_is_reported() -> None:
    data = (DATA / "cerner_batch_lf.hl7").read_bytes().replace(b"BTS|5", b"BTS|6")
    out = list(map_stream(data, "cerner"))
    notes = [r for r in out if isinstance(r, Quarantined)]
    assert len(notes) == 1
    assert (notes[0].location, notes[0].reason) == ("BTS-1", "batch trailer counts 6 messages, 5 were read")
    assert sum(isinstance(r, MappedMessage) for r in out) == 5


def test_bare_lf_inside_a_cr_message_is_a_line_break_in_the_field() -> None:
    data = _msg(
        "MSH|^~\\&|LAB|OUS|BIGMED|BIGMED|20240101120000||ORU^R01|C2|P|2.5",
        "PID|1||15838512329^^^FNR",
        "OBR|1||F-1^LAB|X^Panel^L",
        "OBX|1|TX|T^Text^L||first line\nsecond line||||||F",
    )
    (result,) = list(map_stream(data.encode(), "x"))
    assert isinstance(result, MappedMessage)
    (obs,) = by_type(result, "Observation")
    assert obs["valueString"] == "first line\nsecond line"


def test_encoding_characters_come_from_msh2() -> None:
    data = _msg(
        "MSH#$%!*#EHR#OUS#BIGMED#BIGMED#20240101120000##ADT$A01#C3#P#2.5",
        "PID#1##15838512329$$$FNR%7712345$$$OUS$PI##Nordmann$Kari!S!Anne##19850315#F",
        "PV1#1#O#################V-3$$$OUS",
    )
    (msg,) = list(parse_messages(data))
    assert msg.enc == Encoding("#", "$", "%", "!", "*")
    (result,) = list(map_stream(data, "x"))
    assert isinstance(result, MappedMessage)
    patient = result.resources[0]
    assert [i["value"] for i in patient["identifier"]] == ["15838512329", "7712345"]
    assert patient["name"] == [{"family": "Nordmann", "given": ["Kari$Anne"]}]


@pytest.mark.parametrize(
    ("raw", "text"),
    [
        ("a\\F\\b\\S\\c\\T\\d\\R\\e\\E\\f", "a|b^c&d~e\\f"),
        ("line 1\\.br\\line 2", "line 1\nline 2"),
        ("\\H\\bold\\N\\ text", "bold text"),
        ("S\\XC3B8\\ster", "Søster"),  # UTF-8 bytes in hex
        ("S\\XC3\\\\XB8\\ster", "Søster"),  # split over two escapes
        ("two\\.sp2\\lines", "two\n\nlines"),
        ("unterminated \\F", "unterminated \\F"),
        ("unknown \\Q\\ kept", "unknown \\Q\\ kept"),
        ("no escapes", "no escapes"),
    ],
)
def test_unescape(raw: str, text: str) -> None:
    assert unescape(raw, Encoding()) == text


def test_hex_escapes_use_the_message_character_set() -> None:
    assert unescape("S\\XF8\\ster", Encoding(), "latin-1") == "Søster"


def test_escape_round_trip() -> None:
    text = "a|b^c&d~e\\f\nnext"
    assert escape(text, Encoding()) == "a\\F\\b\\S\\c\\T\\d\\R\\e\\E\\f\\.br\\next"
    assert unescape(escape(text, Encoding()), Encoding()) == text


def test_latin1_feed_declared_in_msh18() -> None:
    first = mapped("dips_adt_latin1_cr.hl7")[0]
    assert first.resources[0]["name"][0] == {"use": "official", "family": "Bjørnstad", "given": ["Åse", "Marie"]}


def test_undeclared_non_utf8_bytes_are_read_as_latin1_with_a_warning() -> None:
    data = ADT.replace("Nordmann", "Bjørnstad").encode("latin-1")
    (result,) = list(map_stream(data, "x"))
    assert isinstance(result, MappedMessage)
    assert result.resources[0]["name"][0]["family"] == "Bjørnstad"
    assert Problem("MSH-18", "bytes are not UTF-8; read as ISO 8859-1", "warning") in result.warnings


def test_text_streams_are_taken_as_decoded() -> None:
    text = ADT.replace("|2.5", "|2.5||||||8859/1").replace("Nordmann", "Bjørnstad")
    (result,) = list(map_stream(io.StringIO(text), "x"))
    assert isinstance(result, MappedMessage)
    assert result.resources[0]["name"][0]["family"] == "Bjørnstad"


def test_file_objects_are_read_in_chunks(tmp_path: Path) -> None:
    path = tmp_path / "feed.hl7"
    path.write_bytes((DATA / "epic_oru_mllp.hl7").read_bytes() * 3)
    with path.open("rb") as fh:
        assert sum(isinstance(r, MappedMessage) for r in map_stream(fh, "feed")) == 6


@pytest.mark.parametrize("name", sorted(p.name for p in DATA.glob("*.hl7")))
def test_segments_and_fields_agree_with_python_hl7(name: str) -> None:
    """python-hl7 (an independent reader) splits every readable message into the same fields."""
    hl7 = pytest.importorskip("hl7")
    for msg in parse_messages((DATA / name).read_bytes()):
        if msg.error is not None:
            continue
        other = hl7.parse(msg.text)
        assert len(other) == len(msg.segments)
        for theirs, ours in zip(other, msg.segments, strict=True):
            assert str(theirs[0]) == ours.name
            assert len(theirs) == len(ours.fields)
            for n in range(1, len(ours.fields)):
                assert str(theirs[n]) == ours.raw(n), f"{ours.name}-{n}"


# ---------------------------------------------------------------------------------------------
# ADT


def test_adt_a01_dips_maps_patient_practitioners_and_encounter() -> None:
    a01 = mapped("dips_adt_latin1_cr.hl7")[0]
    assert (a01.control_id, a01.message_type, a01.index) == ("DIPS000123", "ADT^A01", 0)
    assert [(e["request"]["method"], e["request"]["url"]) for e in a01.entries] == [
        ("PUT", f"Patient?identifier={FNR}|31129956715"),
        ("POST", "Practitioner"),
        ("POST", "Practitioner"),
        ("PUT", "Encounter/" + fhir_id("Encounter", "urn:bigmed:id:OUS", "V2024-000123")),
    ]
    patient = a01.resources[0]
    assert patient == {
        "resourceType": "Patient",
        "identifier": [
            {"type": {"text": "NNNOR"}, "system": FNR, "value": "31129956715"},
            {
                "type": {"coding": [{"system": V2_0203, "code": "PI"}]},
                "system": "urn:bigmed:id:OUS",
                "value": "7712345",
            },
        ],
        "active": True,
        "name": [
            {"use": "official", "family": "Bjørnstad", "given": ["Åse", "Marie"]},
            {"use": "nickname", "family": "Bjørnstad", "given": ["Åsa"]},
        ],
        "telecom": [
            {"system": "phone", "value": "22118800", "use": "home"},
            {"system": "email", "value": "ase.bjornstad@example.no", "use": "home"},
            {"system": "phone", "value": "99887766", "use": "mobile"},
            {"system": "phone", "value": "23074000", "use": "work"},
        ],
        "gender": "female",
        "birthDate": "1999-12-31",
        "deceasedBoolean": False,
        "address": [
            {
                "use": "home",
                "line": ["Kirkeveien 166", "Leil. H0203"],
                "city": "OSLO",
                "postalCode": "0450",
                "country": "NOR",
            },
            {"type": "postal", "line": ["Postboks 12"], "city": "OSLO", "postalCode": "0101", "country": "NOR"},
        ],
    }
    kari, ole = by_type(a01, "Practitioner")
    assert kari == {
        "resourceType": "Practitioner",
        "identifier": [{"system": HPR, "value": "9144889"}],
        "name": [{"family": "Lund", "given": ["Kari"], "prefix": ["Dr."]}],
    }
    assert a01.entries[1]["request"]["ifNoneExist"] == f"identifier={HPR}|9144889"
    assert ole["identifier"] == [{"system": HPR, "value": "1234567"}]
    (encounter,) = by_type(a01, "Encounter")
    atnd = {
        "system": "http://terminology.hl7.org/CodeSystem/v3-ParticipationType",
        "code": "ATND",
        "display": "attender",
    }
    assert encounter["identifier"] == [
        {
            "use": "official",
            "type": {"coding": [{"system": V2_0203, "code": "VN"}]},
            "system": "urn:bigmed:id:OUS",
            "value": "V2024-000123",
        }
    ]
    assert encounter["status"] == "in-progress"
    assert encounter["class"] == {
        "system": "http://terminology.hl7.org/CodeSystem/v3-ActCode",
        "code": "IMP",
        "display": "inpatient encounter",
    }
    assert encounter["subject"] == {"reference": f"Patient?identifier={FNR}|31129956715"}
    assert encounter["participant"][0] == {
        "type": [{"coding": [atnd]}],
        "individual": {"reference": f"Practitioner?identifier={HPR}|9144889", "display": "Dr. Kari Lund"},
    }
    assert [p["type"][0]["coding"][0]["code"] for p in encounter["participant"]] == ["ATND", "REF", "ADM"]
    assert encounter["period"] == {"start": "2024-03-15T08:25:00+01:00"}
    assert encounter["location"] == [{"location": {"display": "MED4, room 412, bed 2 (OUS)"}, "status": "active"}]
    assert a01.ignored == [
        Problem("ZPD", "Z-segment (local extension) ignored", "info"),
        Problem("NK1", "segment not mapped", "info"),
    ]
    assert a01.warnings == []


def test_adt_a03_discharge_updates_the_same_encounter() -> None:
    a01, a03 = mapped("dips_adt_latin1_cr.hl7")
    (admitted,) = by_type(a01, "Encounter")
    (discharged,) = by_type(a03, "Encounter")
    assert discharged["id"] == admitted["id"]
    assert a03.entries[-1]["request"] == {"method": "PUT", "url": f"Encounter/{admitted['id']}"}
    assert discharged["status"] == "finished"
    assert discharged["period"] == {"start": "2024-03-15T08:25:00+01:00", "end": "2024-03-20T13:30:00+01:00"}
    assert discharged["location"][0]["status"] == "completed"


def test_discharge_time_falls_back_to_evn_and_needs_the_visit_number() -> None:
    base = [
        "MSH|^~\\&|EHR|OUS|BIGMED|BIGMED|20240101120000||ADT^A03|D1|P|2.5",
        "EVN|A03|20240101115500",
        "PID|1||15838512329^^^FNR",
    ]
    (ok,) = list(map_stream(_msg(*base, "PV1|1|I|||||||||||||||||V-9^^^OUS"), "x"))
    assert isinstance(ok, MappedMessage)
    assert by_type(ok, "Encounter")[0]["period"] == {"end": "2024-01-01T11:55:00+01:00"}
    (bad,) = list(map_stream(_msg(*base, "PV1|1|I"), "x"))
    assert isinstance(bad, Quarantined)
    assert bad.location == "PV1-19"


def test_cerner_v23_batch_a04_a08_a03() -> None:
    a04, a08, a03, _a40, _oru = mapped("cerner_batch_lf.hl7")
    patient = a04.resources[0]
    assert patient["identifier"] == [
        {"system": HNR, "value": "13527248013"},
        {"system": "urn:bigmed:id:HUS", "value": "H77001"},
    ]
    assert a04.entries[0]["request"]["url"] == f"Patient?identifier={HNR}|13527248013"
    (encounter,) = by_type(a04, "Encounter")
    assert encounter["class"]["code"] == "EMER"
    assert encounter["participant"] == [
        {
            "type": [
                {
                    "coding": [
                        {
                            "system": "http://terminology.hl7.org/CodeSystem/v3-ParticipationType",
                            "code": "ATND",
                            "display": "attender",
                        }
                    ]
                }
            ],
            "individual": {"display": "Anne Vik"},
        }
    ]
    # A08 with PV1-2 "N" updates demographics only
    assert [r["resourceType"] for r in a08.resources] == ["Patient"]
    assert a08.resources[0]["name"] == [{"family": "Olsen", "given": ["Nils", "Johan"]}]
    assert a08.resources[0]["telecom"] == [{"system": "phone", "value": "(555)555-1234", "use": "home"}]
    (closed,) = by_type(a03, "Encounter")
    assert closed["id"] == encounter["id"]
    assert (closed["status"], closed["period"]["end"]) == ("finished", "2024-03-17T17:45:00+01:00")
    assert a03.resources[0].get("birthDate") is None  # missing optional fields are simply absent


def test_adt_a40_merge_links_both_patients() -> None:
    a40 = mapped("cerner_batch_lf.hl7")[3]
    survivor, retired = a40.resources
    assert [e["request"] for e in a40.entries] == [
        {"method": "PUT", "url": f"Patient?identifier={HNR}|13527248013"},
        {"method": "PUT", "url": f"Patient?identifier={HNR}|80000000179"},
    ]
    survivor_url, retired_url = (e["fullUrl"] for e in a40.entries)
    assert survivor["link"] == [{"other": {"reference": retired_url}, "type": "replaces"}]
    assert retired == {
        "resourceType": "Patient",
        "identifier": [{"system": HNR, "value": "80000000179"}],
        "active": False,
        "link": [{"other": {"reference": survivor_url}, "type": "replaced-by"}],
    }
    assert retired_url.startswith("urn:uuid:") and survivor_url.startswith("urn:uuid:")


def test_same_message_twice_gives_the_same_bundle() -> None:
    first = [r.bundle() for r in mapped("epic_oru_mllp.hl7") + mapped("dips_adt_latin1_cr.hl7")]
    second = [r.bundle() for r in mapped("epic_oru_mllp.hl7") + mapped("dips_adt_latin1_cr.hl7")]
    assert json.dumps(first, default=str) == json.dumps(second, default=str)
    ids = [e["fullUrl"] for b in first for e in b["entry"]]
    assert all(len(set(e["fullUrl"] for e in b["entry"])) == len(b["entry"]) for b in first)
    # across messages only the A01/A03 pair shares entries: its Patient, attending Practitioner and Encounter
    assert len(ids) == len(set(ids)) + 3


def test_synthetic_identity_is_tagged_and_reported() -> None:
    (result,) = list(map_stream(ADT, "x"))
    assert isinstance(result, MappedMessage)
    assert result.resources[0]["meta"] == {
        "tag": [
            {
                "system": "http://terminology.hl7.org/CodeSystem/v3-ActReason",
                "code": "HTEST",
                "display": "test health data",
            }
        ]
    }
    assert result.warnings == [
        Problem("PID-3[1]", "15838512329 is a synthetic test identity (Tenor, month + 80)", "warning")
    ]


def test_birth_date_differing_from_the_person_number_is_a_warning() -> None:
    (result,) = list(map_stream(ADT.replace("19850315", "19850316"), "x"))
    assert isinstance(result, MappedMessage)
    assert (
        Problem("PID-7", "birth date 1985-03-16 differs from the date in person number 15838512329", "warning")
        in result.warnings
    )


def test_authorities_can_be_configured() -> None:
    data = ADT.replace("15838512329^^^FNR^NNNOR", "A-77^^^OUS^MR")
    (result,) = list(map_stream(data, "x", authorities={"OUS": "urn:oid:2.16.578.1.12.4.1.2.101.1"}))
    assert isinstance(result, MappedMessage)
    assert result.resources[0]["identifier"] == [
        {
            "type": {"coding": [{"system": V2_0203, "code": "MR"}]},
            "system": "urn:oid:2.16.578.1.12.4.1.2.101.1",
            "value": "A-77",
            "assigner": {"display": "OUS"},
        }
    ]


# ---------------------------------------------------------------------------------------------
# ORU


def test_oru_epic_maps_report_observations_and_specimen() -> None:
    oru = mapped("epic_oru_mllp.hl7")[0]
    patient_ref = {"reference": f"Patient?identifier={FNR}|15838512329"}
    assert oru.entries[0]["request"] == {
        "method": "POST",
        "url": "Patient",
        "ifNoneExist": f"identifier={FNR}|15838512329",
    }
    (report,) = by_type(oru, "DiagnosticReport")
    observations = by_type(oru, "Observation")
    (specimen,) = by_type(oru, "Specimen")
    assert len(observations) == 10
    key = "FILL|urn:bigmed:id:LAB|FIL-5001"
    assert report["id"] == fhir_id("DiagnosticReport", key)
    assert report["identifier"] == [
        {"type": {"coding": [{"system": V2_0203, "code": "FILL"}]}, "system": "urn:bigmed:id:LAB", "value": "FIL-5001"},
        {
            "type": {"coding": [{"system": V2_0203, "code": "PLAC"}]},
            "system": "urn:bigmed:id:EPIC",
            "value": "PLC-1001",
        },
    ]
    assert report["status"] == "final"
    assert report["category"] == [
        {"coding": [{"system": "http://terminology.hl7.org/CodeSystem/v2-0074", "code": "CH"}]}
    ]
    assert report["code"] == {
        "coding": [{"system": LOINC, "code": "24323-8", "display": "Comprehensive metabolic panel"}]
    }
    assert report["subject"] == patient_ref
    assert report["encounter"] == {"identifier": {"system": "urn:bigmed:id:RH", "value": "E-VISIT-9"}}
    assert report["effectiveDateTime"] == "2024-03-16T08:00:00+01:00"
    assert report["issued"] == "2024-03-16T10:00:00+01:00"
    assert report["result"] == [{"reference": f"Observation/{o['id']}"} for o in observations]
    assert report["specimen"] == [{"reference": f"Specimen/{specimen['id']}"}]
    assert specimen == {
        "resourceType": "Specimen",
        "id": specimen["id"],
        "identifier": [{"system": "urn:bigmed:id:RIKSHOSPITALET:specimen", "value": "SP-778899"}],
        "type": {
            "coding": [
                {"system": "http://terminology.hl7.org/CodeSystem/v2-0487", "code": "BLD", "display": "Whole blood"}
            ]
        },
        "collection": {"collectedDateTime": "2024-03-16T08:00:00+01:00"},
        "receivedTime": "2024-03-16T08:15:00+01:00",
        "subject": patient_ref,
    }
    glucose = observations[0]
    assert glucose == {
        "resourceType": "Observation",
        "id": glucose["id"],
        "status": "final",
        "category": [
            {
                "coding": [
                    {
                        "system": "http://terminology.hl7.org/CodeSystem/observation-category",
                        "code": "laboratory",
                        "display": "Laboratory",
                    }
                ]
            }
        ],
        "code": {
            "coding": [{"system": LOINC, "code": "2345-7", "display": "Glucose [Moles/volume] in Serum or Plasma"}]
        },
        "subject": patient_ref,
        "encounter": {"identifier": {"system": "urn:bigmed:id:RH", "value": "E-VISIT-9"}},
        "effectiveDateTime": "2024-03-16T08:00:00+01:00",
        "issued": "2024-03-16T10:00:00+01:00",
        "valueQuantity": {"value": Decimal("6.2"), "unit": "mmol/L", "system": UCUM, "code": "mmol/L"},
        "interpretation": [{"coding": [{"system": INTERP, "code": "H"}]}],
        "specimen": {"reference": f"Specimen/{specimen['id']}"},
        "referenceRange": [
            {
                "low": {"value": Decimal("3.9"), "unit": "mmol/L", "system": UCUM, "code": "mmol/L"},
                "high": {"value": Decimal("6.1"), "unit": "mmol/L", "system": UCUM, "code": "mmol/L"},
            }
        ],
    }
    creatinine, potassium, sodium, alt, egfr, abo, color, hb, text = observations[1:]
    assert creatinine["valueQuantity"] == {"value": Decimal("88"), "unit": "umol/L", "system": UCUM, "code": "umol/L"}
    assert str(potassium["valueQuantity"]["value"]) == "4.10"  # decimal precision kept
    assert "interpretation" not in sodium
    assert alt["referenceRange"] == [
        {"high": {"value": Decimal("45"), "unit": "U/L", "system": UCUM, "code": "U/L"}, "text": "<45"}
    ]
    assert egfr["valueQuantity"] == {
        "value": Decimal("90"),
        "comparator": ">",
        "unit": "mL/min/{1.73_m2}",
        "system": UCUM,
        "code": "mL/min/{1.73_m2}",
    }
    assert abo["valueString"] == "A Rh(D) positiv"
    assert color["valueCodeableConcept"] == {
        "coding": [{"system": "http://snomed.info/sct", "code": "371244009", "display": "Yellow color"}]
    }
    assert hb["status"] == "corrected"
    assert text["valueString"] == (
        "Prøven er noe hemolysert\nTolk kalium med forsiktighet\nKontakt lab: tlf 22 11 88 00 | linje 5"
    )
    assert text["note"] == [{"text": "Merknad: prøve tatt etter faste \\ 8 timer ø"}]
    assert oru.ignored == []


def test_oru_units_statuses_and_local_codes() -> None:
    oru = mapped("epic_oru_mllp.hl7")[1]
    (report,) = by_type(oru, "DiagnosticReport")
    wbc, plt, last_date, last_time, local = by_type(oru, "Observation")
    assert report["status"] == "preliminary"
    assert report["category"][0]["coding"][0]["code"] == "LAB"  # OBR-24 absent
    assert wbc["status"] == "preliminary"
    assert wbc["valueQuantity"] == {
        "value": Decimal("0.5"),
        "comparator": "<",
        "unit": "10^9/L",
        "system": UCUM,
        "code": "10*9/L",
    }
    assert wbc["interpretation"] == [{"coding": [{"system": INTERP, "code": "LL"}]}]
    assert plt["valueQuantity"]["code"] == "10*9/L"
    assert last_date["valueDateTime"] == "2024-03-10"
    assert last_time["valueTime"] == "08:30:00"
    assert local["code"] == {
        "coding": [{"system": "urn:bigmed:codesystem:RIKSHOSPITALET:99RH", "code": "LAB-X", "display": "Lokal analyse"}]
    }
    assert local["valueQuantity"] == {"value": Decimal("3"), "unit": "celler"}
    assert oru.warnings == [Problem("OBX-6", "unit 'celler' is not a recognised UCUM code; kept as text", "warning")]
    assert oru.ignored == [Problem("ZPI", "Z-segment (local extension) ignored", "info")]
    assert oru.resources[0]["birthDate"] == "1960"  # partial dates stay partial


def test_oru_v23_obr15_specimen_sn_and_cancelled_results() -> None:
    oru = mapped("cerner_batch_lf.hl7")[4]
    (specimen,) = by_type(oru, "Specimen")
    assert specimen["type"] == {
        "coding": [{"system": "http://terminology.hl7.org/CodeSystem/v2-0070", "code": "SER", "display": "Serum"}]
    }
    titer, hbsag, cholesterol, crp = by_type(oru, "Observation")
    assert titer["valueRatio"] == {"numerator": {"value": Decimal("1")}, "denominator": {"value": Decimal("128")}}
    assert hbsag["valueCodeableConcept"] == {
        "coding": [{"system": "urn:bigmed:codesystem:HUS:L", "code": "NEG", "display": "Negativ"}]
    }
    assert cholesterol["status"] == "cancelled"
    assert not any(k.startswith("value") for k in cholesterol)
    assert crp["valueRange"] == {
        "low": {"value": Decimal("5"), "unit": "mg/L", "system": UCUM, "code": "mg/L"},
        "high": {"value": Decimal("10"), "unit": "mg/L", "system": UCUM, "code": "mg/L"},
    }
    (report,) = by_type(oru, "DiagnosticReport")
    assert report["identifier"] == [
        {"type": {"coding": [{"system": V2_0203, "code": "PLAC"}]}, "system": "urn:bigmed:id:HUS", "value": "ORD-1"}
    ]


def test_a_corrected_result_in_a_new_message_updates_the_same_observation() -> None:
    first = mapped("epic_oru_mllp.hl7")[0]
    text = (DATA / "epic_oru_mllp.hl7").read_bytes().split(b"\x1c\r")[0]
    corrected = text.replace(b"EPIC-ORU-0001", b"EPIC-ORU-0099").replace(b"|6.2|", b"|6.4|")
    (second,) = list(map_stream(corrected, "x"))
    assert isinstance(second, MappedMessage)
    assert [e["request"]["url"] for e in second.entries] == [e["request"]["url"] for e in first.entries]
    assert by_type(second, "Observation")[0]["valueQuantity"]["value"] == Decimal("6.4")


# ---------------------------------------------------------------------------------------------
# quarantine


def test_malformed_messages_are_quarantined_and_the_stream_goes_on() -> None:
    out = results("malformed_crlf.hl7")
    summary = [
        (r.index, r.control_id, "mapped")
        if isinstance(r, MappedMessage)
        else (r.record, r.control_id, r.location, r.reason, r.ack_code)
        for r in out
    ]
    assert summary == [
        (0, None, "line 1", "segments outside a message (no MSH before them)", "AE"),
        (1, None, "MSH-2", "MSH-2 encoding characters '^~' are not four distinct delimiters", "AE"),
        (2, "GOOD-1", "mapped"),
        (3, "BAD-DATE", "PID-7", "invalid date/time '19851345'", "AE"),
        (4, "BAD-SEX", "PID-8", "administrative sex 'X' is not in table 0001", "AE"),
        (5, "BAD-FNR", "PID-3[1]", "invalid Norwegian person number '15838512328': check digits do not match", "AE"),
        (6, "UNSUPPORTED", "MSH-9", "message type ORM is not supported", "AR"),
        (7, "NO-PID", "OBR", "OBR before any PID (results need a patient)", "AE"),
        (8, "BAD-FLAG", "OBX-8[1]", "abnormal flag 'ZZ' is not in table 0078", "AE"),
        (9, "BAD-SEGMENT", "segment 2", "not a segment: 'pid|1||15838512329^^^FNR'", "AE"),
        (10, "BAD-NUMBER", "OBX-5", "'1,5' is not a number (value type NM)", "AE"),
        (11, "GOOD-2", "mapped"),
    ]
    for r in out:
        assert r.source == "malformed_crlf.hl7"
        if isinstance(r, Quarantined):
            assert r.raw  # the message text is kept so it can be fixed and resent
            assert r.report()["reason"] == r.reason
    assert out[5].raw.startswith("MSH|^~\\&|DIPS|OUS")  # type: ignore[union-attr]
    assert "15838512328" in out[5].raw  # type: ignore[union-attr]


@pytest.mark.parametrize(
    ("change", "location", "reason", "ack_code"),
    [
        (("|2.5", "|3.0"), "MSH-12", "version '3.0' is not HL7 v2", "AR"),
        (("ADT^A01", "ADT^A02"), "MSH-9", "event ADT^A02 is not supported", "AR"),
        (("|C1|", "||"), "MSH-10", "message control id is empty", "AE"),
        (("PV1|1|I|", "PV1|1|Q|"), "PV1-2", "patient class 'Q' is not in table 0004", "AE"),
        (("PV1|1|I|", "PV1|1||"), "PV1-2", "patient class is empty (Encounter.class is required)", "AE"),
        (("15838512329^^^FNR^NNNOR", ""), "PID-3", "no patient identifier", "AE"),
        (("", ""), None, None, None),  # unchanged: maps
    ],
)
def test_quarantine_reasons(change: tuple[str, str], location: str | None, reason: str, ack_code: str) -> None:
    (result,) = list(map_stream(ADT.replace(*change), "x"))
    if location is None:
        assert isinstance(result, MappedMessage)
        return
    assert isinstance(result, Quarantined)
    assert (result.location, result.reason, result.ack_code) == (location, reason, ack_code)


def test_version_outside_the_supported_range_is_mapped_with_a_warning() -> None:
    (result,) = list(map_stream(ADT.replace("|2.5", "|2.7"), "x"))
    assert isinstance(result, MappedMessage)
    assert Problem("MSH-12", "version 2.7 is outside 2.3-2.5.1; mapped as 2.5.1", "warning") in result.warnings


@pytest.mark.parametrize(
    ("obx", "location", "reason"),
    [
        ("OBX|1|NM|A^B^L||1||||||Q", "OBX-11", "result status 'Q' is not in table 0085"),
        ("OBX|1|ED|A^B^L||^AP^PDF^Base64^AAAA||||||F", "OBX-2", "value type 'ED' is not supported"),
        ("OBX|1|TM|A^B^L||2599||||||F", "OBX-5", "invalid time '2599'"),
        ("OBX|1|NM|A^B^L||1||||||F|||202401011261", "OBX-14", "invalid date/time '202401011261'"),
        ("OBX|1|NM|||1||||||F", "OBX-3", "observation identifier is empty"),
    ],
)
def test_oru_value_problems(obx: str, location: str, reason: str) -> None:
    data = _msg(
        "MSH|^~\\&|LAB|OUS|BIGMED|BIGMED|20240101120000||ORU^R01|C9|P|2.5",
        "PID|1||15838512329^^^FNR",
        "OBR|1||F-9^LAB|X^Panel^L",
        obx,
    )
    (result,) = list(map_stream(data, "x"))
    assert isinstance(result, Quarantined)
    assert (result.location, result.reason) == (location, reason)


def test_extra_value_repetitions_are_reported() -> None:
    data = _msg(
        "MSH|^~\\&|LAB|OUS|BIGMED|BIGMED|20240101120000||ORU^R01|C10|P|2.5",
        "PID|1||15838512329^^^FNR",
        "OBR|1||F-10^LAB|X^Panel^L",
        "OBX|1|NM|A^B^L||1.5~2.5||||||F",
    )
    (result,) = list(map_stream(data, "x"))
    assert isinstance(result, MappedMessage)
    assert by_type(result, "Observation")[0]["valueQuantity"] == {"value": Decimal("1.5")}
    assert Problem("OBX-5", "1 repetition(s) after the first are not mapped (value type NM)", "warning") in (
        result.warnings
    )


# ---------------------------------------------------------------------------------------------
# acknowledgments

NOW = datetime(2024, 1, 1, 12, 0, 5, tzinfo=UTC)


def test_ack_aa_swaps_sender_and_receiver() -> None:
    (result,) = list(map_stream(ADT, "x"))
    assert ack(result, now=NOW) == (
        "MSH|^~\\&|BIGMED|BIGMED|EHR|OUS|20240101120005+0000||ACK^A01^ACK|AC1|P|2.5\rMSA|AA|C1\r"
    )


def test_ack_ae_has_err_with_the_location_and_table_0357_code() -> None:
    out = results("malformed_crlf.hl7")
    bad_sex = out[4]
    assert isinstance(bad_sex, Quarantined)
    text = ack(bad_sex, "AE", bad_sex.problem, now=NOW)
    assert text.split("\r")[1:] == [
        "MSA|AE|BAD-SEX|administrative sex 'X' is not in table 0001",
        "ERR||PID^1^8^1|103^administrative sex 'X' is not in table 0001^HL70357|E",
        "",
    ]
    unsupported = out[6]
    assert isinstance(unsupported, Quarantined)
    assert "ERR||MSH^1^9^1|200^message type ORM is not supported^HL70357|E" in ack(
        unsupported, "AR", unsupported.problem
    )


def test_ack_for_v23_uses_err1_and_escapes_text() -> None:
    oru = mapped("cerner_batch_lf.hl7")[4]
    text = ack(oru, "AE", Problem("OBX-5", "value a|b is wrong", code="102"), control_id="X1", now=NOW)
    assert text == (
        "MSH|^~\\&|BIGMED|BIGMED|CERNER|HUS^2.16.578.1.12.4.1.2.103^ISO|20240101120005+0000||ACK^R01^ACK|X1|P|2.3\r"
        "MSA|AE|CRN-2001|value a\\F\\b is wrong\r"
        "ERR|OBX^1^5^102&value a\\F\\b is wrong&HL70357\r"
    )


def test_ack_for_an_unreadable_message_and_bad_codes() -> None:
    first = results("malformed_crlf.hl7")[0]
    assert isinstance(first, Quarantined)
    text = ack(first, "AR", first.problem, now=NOW)
    assert text.startswith("MSH|^~\\&|||||20240101120005+0000||ACK|A|P|2.5.1\rMSA|AR||")
    with pytest.raises(ValueError):
        ack(first, "OK")


# ---------------------------------------------------------------------------------------------
# every resource is valid R4


@pytest.mark.parametrize("name", sorted(p.name for p in DATA.glob("*.hl7")))
def test_every_mapped_bundle_is_valid(name: str) -> None:
    count = 0
    for r in results(name):
        if isinstance(r, MappedMessage):
            bundle = r.bundle()
            assert bundle["type"] == "transaction"
            assert_valid(bundle)
            for entry in bundle["entry"]:
                assert entry["request"]["method"] in ("PUT", "POST")
            count += 1
    assert count


def test_raw_message_exposes_its_fields() -> None:
    (msg,) = list(parse_messages(ADT))
    assert isinstance(msg, RawMessage)
    assert (msg.control_id, msg.message_type, msg.version) == ("C1", "ADT^A01", "2.5")
    pid = msg.segments[1]
    assert (pid.get(3), pid.get(3, 4), pid.get(3, 5), pid.get(5, 2), pid.get(99)) == (
        "15838512329",
        "FNR",
        "NNNOR",
        "Kari",
        "",
    )
    assert msg.msh is not None and msg.msh.get(1) == "|" and msg.msh.get(2) == "^~\\&"


def test_times_without_offset_are_read_in_the_default_timezone() -> None:
    (msg,) = list(parse_messages(ADT.replace("V-1^^^OUS", "V-1^^^OUS" + "|" * 25 + "20240701120000")))
    result = map_message(msg, default_tz="UTC")
    assert isinstance(result, MappedMessage)
    assert by_type(result, "Encounter")[0]["period"] == {"start": "2024-07-01T12:00:00+00:00"}
    summer = map_message(msg)
    assert isinstance(summer, MappedMessage)
    assert by_type(summer, "Encounter")[0]["period"] == {"start": "2024-07-01T12:00:00+02:00"}  # Oslo summer time


# ---------------------------------------------------------------------------------------------
# speed


@pytest.mark.slow
def test_mapping_speed_oru_r01_with_10_obx() -> None:
    """Mapping only (no storage): ORU^R01 with 10 OBX; prints messages per second of CPU time."""
    one = (DATA / "epic_oru_mllp.hl7").read_bytes().split(b"\x1c\r")[0] + b"\x1c\r"
    (raw,) = list(parse_messages(one))
    n = 1000
    start = time.process_time()
    for _ in range(n):
        map_message(raw)
    map_only = n / (time.process_time() - start)
    start = time.process_time()
    count = sum(1 for _ in map_stream(one * n, "bench"))
    end_to_end = count / (time.process_time() - start)
    print(f"\nORU^R01 10 OBX: map_message {map_only:.0f} msg/s, parse+map {end_to_end:.0f} msg/s (CPU time)")
    assert count == n
    assert map_only > 300  # a loose floor against regressions, far below the measured figure
