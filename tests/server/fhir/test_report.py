"""server/fhir/report.py: the counts and summary lines shared by load, ingest-hl7 and ingest-csv."""

from __future__ import annotations

from collections import Counter

from server.fhir.load import Failure, LoadReport
from server.fhir.operations.ingest_csv import CsvReport
from server.fhir.operations.ingest_hl7 import Hl7Report
from server.fhir.report import WriteCounts, listing


def test_counts_add_up_and_keep_the_types() -> None:
    total = WriteCounts(created=1, by_type=Counter({"Patient": 1}))
    total.add(WriteCounts(created=2, updated=1, unchanged=4, deleted=1, matched=3, by_type=Counter({"Patient": 2})))
    assert (total.created, total.updated, total.unchanged, total.deleted, total.matched) == (3, 1, 4, 1, 3)
    assert total.by_type == Counter({"Patient": 3})
    assert total.written == 5 and total.processed == 12


def test_listing_caps_the_rows_and_says_how_many_more() -> None:
    assert listing("Bad:", [], str, "Bad: none") == ["Bad: none"]
    assert listing("Bad:", [1, 2, 3], lambda n: f"row {n}", "Bad: none", max_rows=2) == [
        "Bad:",
        "  row 1",
        "  row 2",
        "  … and 1 more",
    ]


def test_load_report_summary() -> None:
    report = LoadReport(files=2, seconds=2.0)
    report.add(WriteCounts(created=3, unchanged=1, by_type=Counter({"Observation": 2, "Patient": 1})))
    report.failures.append(Failure("b.json", "entry[2]", "no resourceType"))
    lines = report.summary().splitlines()
    assert lines[0].startswith("Loaded 4 resources from 2 file(s) in 2.0 s (2 resources/s): 3 created, 0 updated")
    assert lines[1] == "  Observation 2, Patient 1"
    assert lines[2:] == ["Failed: 1 (file, entry/line, reason)", "  b.json  entry[2]  no resourceType"]
    assert LoadReport().summary().splitlines()[-1] == "Failed: none"


def test_ehr_reports_share_the_resource_line_and_quarantine_list() -> None:
    row = {"source": "a.csv", "record": 7, "location": "birthDate", "reason": "not a date"}
    csv = CsvReport(files=1, rows=8, stored=7, warnings=2, quarantined=[row], counts=WriteCounts(created=9, matched=1))
    assert csv.summary().splitlines()[1:] == [
        "  resources: 9 created, 0 updated, 0 unchanged, 1 matched by ifNoneExist; 2 warning(s) in stored rows",
        "Quarantine (file, line, column: reason); kept in GET /fhir/$quarantine",
        "  a.csv  line 7  birthDate: not a date",
    ]
    hl7 = Hl7Report(messages=1, quarantined=[{**row, "source": "feed", "location": "", "control_id": "C1"}])
    assert hl7.summary().splitlines()[1:] == [
        "  resources: 0 created, 0 updated, 0 unchanged, 0 matched by ifNoneExist; 0 warning(s) in stored messages",
        "Quarantine (source, message, control id, location: reason); kept in GET /fhir/$quarantine",
        "  feed  message 7  C1  not a date",
    ]
    assert Hl7Report().summary().splitlines()[-1] == "Quarantine: none"
