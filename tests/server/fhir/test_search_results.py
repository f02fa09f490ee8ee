"""Search result parameters and levels on hand-made data, on both backends
(http://hl7.org/fhir/R4/search.html #sort #include #revinclude #total, http.html#search system
level, compartmentdefinition.html): the data is loaded once per backend and only read here."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest

from tests.server.search.searchdata import RESOURCES
from tests.server.search.searchutil import bundle, entries, ids, link, loaded_app, warnings


@pytest.fixture(scope="module", params=["sqlite", "postgresql"])
def data(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    with loaded_app(request.param, tmp_path_factory.mktemp("results"), RESOURCES) as app:
        yield app.test_client()


def _all_pages(client: Any, query: str) -> tuple[list[str], list[dict[str, Any]]]:
    """Ids of every page, following next links; also the pages."""
    pages = [bundle(client, query)]
    while (nxt := link(pages[-1], "next")) is not None:
        pages.append(bundle(client, nxt))
        assert len(pages) < 50
    return [i for p in pages for i in ids(p)], pages


@pytest.mark.parametrize(
    ("query", "expected"),
    [
        ("Patient?_sort=birthdate", ["ola", "kari", "jose"]),
        ("Patient?_sort=-birthdate", ["jose", "kari", "ola"]),
        ("Patient?_sort=family,given", ["jose", "kari", "ola"]),
        ("Patient?_sort=-family,given", ["kari", "ola", "jose"]),
        ("Patient?_sort=_id", ["jose", "kari", "ola"]),
        ("Patient?_sort=-_id", ["ola", "kari", "jose"]),
        ("Patient?_sort=-_lastUpdated", ["jose", "kari", "ola"]),
        ("Observation?_sort=-date", ["hb2", "hb1", "bp2", "bp1", "byid"]),  # no value: last
        ("Observation?_sort=date", ["bp1", "bp2", "hb1", "hb2", "byid"]),
        ("Observation?_sort=code", ["hb1", "hb2", "bp1", "bp2", "byid"]),  # ties: insertion order
        ("Observation?_sort=value-quantity", ["hb2", "hb1", "bp1", "bp2", "byid"]),
        ("Observation?_sort=status,-date", ["hb1", "bp2", "bp1", "byid", "hb2"]),
        ("Observation?_sort=subject", ["bp2", "hb2", "hb1", "bp1", "byid"]),
        ("Observation?code=718-7,85354-9&_sort=-date", ["hb2", "hb1", "bp2", "bp1"]),
    ],
)
def test_sort_and_keyset_paging(data: Any, query: str, expected: list[str]) -> None:
    assert ids(bundle(data, query)) == expected
    for count in (1, 2, 3):
        paged, pages = _all_pages(data, f"{query}&_count={count}")
        assert paged == expected, count
        # and back again with the previous links, from the last page
        back = [ids(pages[-1])]
        current = pages[-1]
        while (prev := link(current, "previous")) is not None:
            current = bundle(data, prev)
            back.insert(0, ids(current))
        assert [i for page in back for i in page] == expected, count


def test_unknown_sort_parameter_is_reported(data: Any) -> None:
    b = bundle(data, "Patient?_sort=foo,birthdate")
    assert ids(b) == ["ola", "kari", "jose"] and any("foo" in w for w in warnings(b))
    strict = data.get("/fhir/Patient?_sort=foo", headers={"Prefer": "handling=strict"})
    assert strict.status_code == 400


def test_links(data: Any) -> None:
    first = bundle(data, "Observation?_sort=date&_count=2")
    assert link(first, "self") == "http://testserver/fhir/Observation?_sort=date&_count=2"
    assert link(first, "previous") is None and link(first, "first") is None
    second = bundle(data, link(first, "next") or "")
    assert link(second, "first") == link(first, "self") and link(second, "previous") is not None
    assert "_cursor=" in (link(second, "self") or "")


@pytest.mark.parametrize(
    ("query", "matches", "included"),
    [
        ("Observation?_id=hb1&_include=Observation:subject", ["Observation/hb1"], ["Patient/ola"]),
        ("Observation?_id=hb1&_include=Observation:subject:Practitioner", ["Observation/hb1"], []),
        (
            "Observation?_id=hb1&_include=*",
            ["Observation/hb1"],
            ["Encounter/enc1", "Patient/ola", "Practitioner/pr1"],
        ),
        (
            "Observation?_id=hb1&_include=Observation:subject&_include:iterate=Patient:organization",
            ["Observation/hb1"],
            ["Organization/org1", "Patient/ola"],
        ),
        # without :iterate, Patient:organization applies to the matches (Observations) only
        (
            "Observation?_id=hb1&_include=Observation:subject&_include=Patient:organization",
            ["Observation/hb1"],
            ["Patient/ola"],
        ),
        (
            "Observation?code=718-7&_include=Observation:subject,Observation:performer",
            ["Observation/hb1", "Observation/hb2"],
            ["Patient/kari", "Patient/ola", "Practitioner/pr1"],
        ),
        ("Patient?_id=ola&_revinclude=Observation:subject", ["Patient/ola"], ["Observation/bp1", "Observation/hb1"]),
        (
            "Patient?_id=ola&_revinclude=Observation:subject&_revinclude:iterate=DiagnosticReport:result",
            ["Patient/ola"],
            ["DiagnosticReport/dr1", "Observation/bp1", "Observation/hb1"],
        ),
        (
            "Patient?_id=ola&_revinclude=*",
            ["Patient/ola"],
            ["DiagnosticReport/dr1", "Encounter/enc1", "Observation/bp1", "Observation/hb1"],
        ),
        # every parameter of one source type (through each of its reference parameters' rows)
        ("Patient?_id=ola&_revinclude=Observation:*", ["Patient/ola"], ["Observation/bp1", "Observation/hb1"]),
        ("Patient?_id=ola&_revinclude=Encounter:*", ["Patient/ola"], ["Encounter/enc1"]),
        (
            "Organization?_id=org2&_revinclude=Patient:organization&_revinclude:iterate=Observation:subject",
            ["Organization/org2"],
            ["Observation/hb2", "Patient/kari"],
        ),
        (
            "DiagnosticReport?_include=DiagnosticReport:result&_include:iterate=Observation:performer",
            ["DiagnosticReport/dr1"],
            ["Observation/bp1", "Observation/hb1", "Practitioner/pr1"],
        ),
        # an included resource that is also a match is listed once, as a match
        (
            "Patient?_id=ola&_revinclude=Observation:subject&_include:iterate=Observation:subject",
            ["Patient/ola"],
            ["Observation/bp1", "Observation/hb1"],
        ),
    ],
)
def test_include_and_revinclude(data: Any, query: str, matches: list[str], included: list[str]) -> None:
    b = bundle(data, query)
    assert sorted(entries(b)) == matches
    assert sorted(entries(b, "include")) == included


def test_include_unknown_is_reported(data: Any) -> None:
    b = bundle(data, "Observation?_id=hb1&_include=Observation:foo")
    assert entries(b, "include") == [] and any("Observation:foo" in w for w in warnings(b))


def test_total_modes(data: Any) -> None:
    assert bundle(data, "Observation?_total=accurate&_count=1")["total"] == 5
    assert "total" not in bundle(data, "Observation?_count=1")  # estimate: not without counting
    assert bundle(data, "Observation?code=718-7")["total"] == 2  # the first page holds everything
    assert "total" not in bundle(data, "Observation?code=718-7&_total=none")
    counted = bundle(data, "Observation?_summary=count&code=718-7")
    assert counted["total"] == 2 and counted["entry"] == []
    assert bundle(data, "Observation?_count=0")["total"] == 5


def test_summary_and_elements_apply_to_includes(data: Any) -> None:
    b = bundle(data, "Observation?_id=hb1&_include=Observation:subject&_elements=id")
    patient = next(e["resource"] for e in b["entry"] if e["search"]["mode"] == "include")
    assert "name" not in patient and {"resourceType", "id", "meta"} <= set(patient)


@pytest.mark.parametrize(
    ("query", "expected"),
    [
        ("?_id=ola", ["Patient/ola"]),
        ("?_type=Patient,Organization&_id=ola,org1,hb1", ["Organization/org1", "Patient/ola"]),
        (
            "?_type=Observation,DiagnosticReport&subject=Patient/ola",
            ["DiagnosticReport/dr1", "Observation/bp1", "Observation/hb1"],
        ),
        ("?_tag=urn:tags|vip", ["Patient/ola"]),
        ("?_type=Patient&name=nord", ["Patient/kari", "Patient/ola"]),
        (
            "?_type=Organization,Practitioner&_lastUpdated=gt2000",
            ["Organization/org1", "Organization/org2", "Practitioner/pr1"],
        ),
        ("?_security=R&_type=Patient,Observation", ["Patient/ola"]),
    ],
)
def test_system_level(data: Any, query: str, expected: list[str]) -> None:
    assert sorted(entries(bundle(data, f"/fhir{query}"))) == expected


def test_system_level_paging_sort_post_and_errors(data: Any) -> None:
    query = "/fhir?_type=Patient,Organization&_sort=-_id&_count=2"
    paged, _ = _all_pages(data, query)
    assert paged == ["org2", "org1", "ola", "kari", "jose"]
    resp = data.post("/fhir/_search", data={"_id": "pr1"}, content_type="application/x-www-form-urlencoded")
    assert resp.status_code == 200 and entries(resp.get_json()) == ["Practitioner/pr1"]
    b = bundle(data, "/fhir?name=nord")  # 'name' is not a common parameter
    assert any("name" in w for w in warnings(b))
    assert data.get("/fhir?_type=Foo").status_code == 400
    total = bundle(data, "/fhir?_total=accurate&_count=1")["total"]
    assert total == len(RESOURCES)


@pytest.mark.parametrize(
    ("path", "expected"),
    [
        ("Patient/ola/Observation", ["Observation/bp1", "Observation/hb1"]),
        ("Patient/ola/Observation?code=718-7", ["Observation/hb1"]),
        ("Patient/kari/Observation", ["Observation/hb2"]),
        ("Patient/nobody/Observation", []),
        ("Practitioner/pr1/Observation", ["Observation/hb1"]),
        ("Encounter/enc1/Observation", ["Observation/hb1"]),
        ("Patient/ola/Patient", ["Patient/ola"]),
        (
            "Patient/ola/*",
            ["DiagnosticReport/dr1", "Encounter/enc1", "Observation/bp1", "Observation/hb1", "Patient/ola"],
        ),
        ("Patient/ola/*?_type=Observation", ["Observation/bp1", "Observation/hb1"]),
        ("Patient/ola/*?_lastUpdated=gt2000&_id=hb1,enc1,kari", ["Encounter/enc1", "Observation/hb1"]),
    ],
)
def test_compartments(data: Any, path: str, expected: list[str]) -> None:
    assert sorted(entries(bundle(data, path))) == expected


def test_compartment_errors_and_includes(data: Any) -> None:
    assert data.get("/fhir/Patient/ola/Organization").status_code == 400
    assert data.get("/fhir/Foo/1/Observation").status_code == 404
    assert data.get("/fhir/Patient/ola/Foo").status_code == 404
    b = bundle(data, "Patient/ola/Observation?_include=Observation:performer&_sort=-date")
    assert entries(b) == ["Observation/hb1", "Observation/bp1"] and entries(b, "include") == ["Practitioner/pr1"]
    assert (
        link(b, "self") == "http://testserver/fhir/Patient/ola/Observation?_include=Observation%3Aperformer&_sort=-date"
    )
