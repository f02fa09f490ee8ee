"""Keyset paging stays correct while data changes, with and without ``_sort``
(http://hl7.org/fhir/R4/search.html#count, http.html#paging), and search never returns deleted
or superseded versions, also among included resources."""

from __future__ import annotations

from typing import Any

from tests.server.search.searchutil import bundle, entries, ids, link, put_all


def _patient(id_: str, family: str) -> dict[str, Any]:
    return {"resourceType": "Patient", "id": id_, "name": [{"family": family}]}


def test_sorted_pages_while_data_changes(client: Any) -> None:
    put_all(client, [_patient("b", "Berg"), _patient("d", "Dahl"), _patient("f", "Fjell"), _patient("h", "Hagen")])
    first = bundle(client, "Patient?_sort=family&_count=2")
    assert ids(first) == ["b", "d"]
    # written after the first page: one sorts before the cursor, one after; one on page 2 goes away
    put_all(client, [_patient("a", "Aas"), _patient("g", "Gran")])
    client.delete("/fhir/Patient/f")
    second = bundle(client, link(first, "next") or "")
    assert ids(second) == ["g", "h"]
    assert link(second, "next") is None
    # previous from page 2: the two rows just before it, now including the new 'a' further back
    back = bundle(client, link(second, "previous") or "")
    assert ids(back) == ["b", "d"] and link(back, "previous") is not None
    assert ids(bundle(client, link(back, "previous") or "")) == ["a"]


def test_sorted_pages_follow_a_moved_resource(client: Any) -> None:
    put_all(client, [_patient("b", "Berg"), _patient("d", "Dahl"), _patient("f", "Fjell")])
    first = bundle(client, "Patient?_sort=-family&_count=1")
    assert ids(first) == ["f"]
    put_all(client, [_patient("f", "Aas")])  # f moves behind the cursor's remaining rows
    rest = []
    page = first
    while (nxt := link(page, "next")) is not None:
        page = bundle(client, nxt)
        rest += ids(page)
    assert rest == ["d", "b", "f"]  # f is seen again at its new place, nothing is skipped


def test_unsorted_pages_and_total(client: Any) -> None:
    put_all(client, [_patient(f"p{i}", "Same") for i in range(7)])
    seen: list[str] = []
    page = bundle(client, "Patient?family=same&_count=3&_total=accurate")
    assert page["total"] == 7
    while True:
        seen += ids(page)
        nxt = link(page, "next")
        if nxt is None:
            break
        put_all(client, [_patient(f"n{len(seen)}", "Same")])  # new rows land at the end
        page = bundle(client, nxt)
    assert seen[:7] == [f"p{i}" for i in range(7)] and len(seen) == len(set(seen)) == 9


def test_included_resources_are_current_versions(client: Any) -> None:
    put_all(
        client,
        [
            {"resourceType": "Organization", "id": "o1", "name": "Old name"},
            {"resourceType": "Organization", "id": "o2", "name": "Gone"},
            {**_patient("p1", "Berg"), "managingOrganization": {"reference": "Organization/o1"}},
            {**_patient("p2", "Dahl"), "managingOrganization": {"reference": "Organization/o2"}},
        ],
    )
    put_all(client, [{"resourceType": "Organization", "id": "o1", "name": "New name"}])
    client.delete("/fhir/Organization/o2")
    b = bundle(client, "Patient?_include=Patient:organization")
    assert entries(b) == ["Patient/p1", "Patient/p2"] and entries(b, "include") == ["Organization/o1"]
    included = next(e["resource"] for e in b["entry"] if e["search"]["mode"] == "include")
    assert included["name"] == "New name" and included["meta"]["versionId"] == "2"
    assert entries(bundle(client, "Organization?_revinclude=Patient:organization")) == ["Organization/o1"]
    assert entries(bundle(client, "Patient?organization.name=gone")) == []
    assert entries(bundle(client, "Patient?organization.name=old")) == []
    assert entries(bundle(client, "Patient?organization.name=new")) == ["Patient/p1"]


def _observation(id_: str, codes: int, year: int) -> dict[str, Any]:
    coding = [{"system": "http://loinc.org", "code": "8302-2", "display": f"Height {k}"} for k in range(codes)]
    return {
        "resourceType": "Observation",
        "id": id_,
        "status": "final",
        "code": {"coding": coding or [{"system": "http://loinc.org", "code": "29463-7"}]},
        "effectiveDateTime": f"{year}-01-01",
    }


def _walk(client: Any, query: str, relation: str = "next") -> list[list[str]]:
    pages = [bundle(client, query)]
    while (nxt := link(pages[-1], relation)) is not None:
        pages.append(bundle(client, nxt))
    return [ids(p) for p in pages]


def test_unsorted_pages_of_one_code_list_each_match_once(client: Any) -> None:
    # a page of one code (with or without its system, with a probe such as date=ge…) walks the
    # code's index entries in rid order: an Observation with the code twice has two entries
    put_all(client, [_observation(f"o{i}", i % 3, 2010 + i) for i in range(10)])
    matching = [f"o{i}" for i in range(10) if i % 3]
    for query in ("Observation?code=http://loinc.org|8302-2", "Observation?code=8302-2"):
        assert _walk(client, f"{query}&_count=2") == [matching[k : k + 2] for k in range(0, len(matching), 2)]
        assert _walk(client, f"{query}&_count=50") == [matching]
    assert _walk(client, "Observation?code=8302-2&date=ge2014&_count=2") == [["o4", "o5"], ["o7", "o8"]]
    # backward from the last page, while one resource on the way goes away and one is written
    last = bundle(client, link(bundle(client, "Observation?code=8302-2&_count=4"), "next") or "")
    assert ids(last) == ["o7", "o8"]
    client.delete("/fhir/Observation/o2")
    put_all(client, [_observation("o1", 0, 2011), _observation("o10", 2, 2020)])  # o1 loses the code
    back = bundle(client, link(last, "previous") or "")
    assert ids(back) == ["o4", "o5"] and link(back, "previous") is None
    assert _walk(client, "Observation?code=8302-2&_count=3") == [["o4", "o5", "o7"], ["o8", "o10"]]


def _observation_of(i: int) -> dict[str, Any]:
    # subject p0/p1 by parity; o3, o6, o9 also name p1 as performer (two compartment rows for
    # o3 and o9); the code 8302-2 (twice on o4 and o8) on all but multiples of 3
    obs = _observation(f"o{i}", 0 if i % 3 == 0 else 1 + (i % 4 == 0), 2010 + i)
    obs["subject"] = {"reference": f"Patient/p{i % 2}"}
    if i % 3 == 0 and i:
        obs["performer"] = [{"reference": "Patient/p1"}]
        obs["code"]["coding"].append({"system": "http://loinc.org", "code": "8302-2"})
    return obs


def test_unsorted_pages_of_several_clauses_and_of_a_compartment(client: Any) -> None:
    # several index ranges: one drives (the reference), the others are probed per match; a
    # compartment search is driven by the compartment's reference rows
    put_all(client, [_patient("p0", "Berg"), _patient("p1", "Dahl")])
    put_all(client, [_observation_of(i) for i in range(12)])
    mine = ["o1", "o3", "o5", "o7", "o9", "o11"]
    performed = ["o1", "o3", "o5", "o6", "o7", "o9", "o11"]
    cases = {
        "Observation?subject=Patient/p1&code=http://loinc.org|8302-2": mine,
        "Observation?code=8302-2&patient=p1": mine,
        "Observation?code=8302-2&subject=Patient/p1&date=ge2015": ["o5", "o7", "o9", "o11"],
        "Patient/p1/Observation?code=http://loinc.org|8302-2": performed,
        "Patient/p1/Observation?code=8302-2&date=lt2016-06": ["o1", "o3", "o5", "o6"],
    }
    for query, expected in cases.items():
        for count in (1, 2, 4, 50):
            assert _walk(client, f"{query}&_count={count}") == [
                expected[k : k + count] for k in range(0, len(expected), count)
            ], (query, count)
    # backward from the last page, while resources on the way change
    query = "Patient/p1/Observation?code=8302-2&_count=2"
    last = bundle(client, link(bundle(client, link(bundle(client, query), "next") or ""), "next") or "")
    assert ids(last) == ["o7", "o9"]
    client.delete("/fhir/Observation/o5")
    moved = _observation_of(3)
    moved["subject"] = {"reference": "Patient/p0"}  # o3 leaves the compartment
    del moved["performer"]
    put_all(client, [moved, _observation_of(13)])
    back = bundle(client, link(last, "previous") or "")
    assert ids(back) == ["o1", "o6"] and link(back, "previous") is None
    assert _walk(client, query) == [["o1", "o6"], ["o7", "o9"], ["o11", "o13"]]
