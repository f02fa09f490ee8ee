"""Search on the Synthea sample (100 patients, 11,659 resources) against answers computed here,
independently of the server, from the raw bundles (http://hl7.org/fhir/R4/search.html): tokens,
date ranges with the spec's prefix semantics, references, chains, ``_has``, ``_include``,
``_revinclude``, ``_sort``, paging, composites and compartments, on both backends. The data is
loaded once per backend (module-scoped fixture)."""

from __future__ import annotations

import unicodedata
from collections import Counter
from collections.abc import Iterator
from datetime import UTC, date, datetime, timedelta
from typing import Any

import pytest

from tests.conftest import make_app, postgres_url
from tests.server.search import synthea
from tests.server.search.searchutil import bundle, entries, ids, link

pytestmark = pytest.mark.slow

LOINC = "http://loinc.org"
SNOMED = "http://snomed.info/sct"


# -- the raw data and answers computed from it ----------------------------------------------------


@pytest.fixture(scope="module")
def raw() -> list[dict[str, Any]]:
    if not synthea.SYNTHEA.exists():
        pytest.skip(f"Synthea sample not found at {synthea.SYNTHEA} (../shared missing)")
    return synthea.read_resources()


@pytest.fixture(scope="module")
def db(raw: list[dict[str, Any]]) -> dict[str, dict[str, dict[str, Any]]]:
    """Current resources by type and id (a repeated id: the last one written wins)."""
    out: dict[str, dict[str, dict[str, Any]]] = {}
    for res in raw:
        out.setdefault(res["resourceType"], {})[res["id"]] = res
    return out


@pytest.fixture(scope="module", params=["sqlite", "postgresql"])
def client(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory, raw: list[dict[str, Any]]
) -> Iterator[Any]:
    url = f"sqlite:///{tmp_path_factory.mktemp('synthea')}/test.sqlite" if request.param == "sqlite" else postgres_url()
    app = make_app(url)
    synthea.load(app.extensions["bigmed"], raw)
    yield app.test_client()
    app.extensions["bigmed"].store.close()


def _codes(concept: dict[str, Any] | None) -> set[tuple[str | None, str | None]]:
    return {(c.get("system"), c.get("code")) for c in (concept or {}).get("coding", [])}


def _instant(text: str) -> datetime:
    return datetime.fromisoformat(text).astimezone(UTC)


def _utc(text: str) -> datetime:
    return datetime.fromisoformat(text).replace(tzinfo=UTC)


def _norm(text: str) -> str:
    decomposed = unicodedata.normalize("NFKD", text.casefold())
    return " ".join("".join(c for c in decomposed if not unicodedata.combining(c)).split())


def _ref(res: dict[str, Any], key: str) -> str | None:
    value = res.get(key)
    return value.get("reference") if isinstance(value, dict) else None


def _count(client: Any, query: str) -> int:
    b = bundle(client, f"{query}&_summary=count" if "?" in query else f"{query}?_summary=count")
    return int(b["total"])


def _all_ids(client: Any, query: str) -> list[str]:
    page = bundle(client, query)
    out = ids(page)
    while (nxt := link(page, "next")) is not None:
        page = bundle(client, nxt)
        out += ids(page)
    return out


def _frequent_codes(db: dict[str, dict[str, dict[str, Any]]], n: int) -> list[str]:
    counts = Counter(c for o in db["Observation"].values() for s, c in _codes(o["code"]) if s == LOINC)
    return [c for c, _ in counts.most_common(n)]


def _patients(db: dict[str, dict[str, dict[str, Any]]], n: int) -> list[str]:
    return sorted(db["Patient"])[:: max(1, len(db["Patient"]) // n)][:n]


# -- the tests ---------------------------------------------------------------------------------------


def test_everything_loaded(client: Any, db: dict[str, dict[str, dict[str, Any]]]) -> None:
    for type_, members in db.items():
        assert _count(client, type_) == len(members), type_
    assert _count(client, "Observation?_lastUpdated=gt2000") == len(db["Observation"])
    assert bundle(client, "/fhir?_type=Patient,Organization&_total=accurate&_count=1")["total"] == len(
        db["Patient"]
    ) + len(db["Organization"])


def test_tokens(client: Any, db: dict[str, dict[str, dict[str, Any]]]) -> None:
    for code in _frequent_codes(db, 6):
        expected = sum((LOINC, code) in _codes(o["code"]) for o in db["Observation"].values())
        assert _count(client, f"Observation?code={LOINC}|{code}") == expected, code
        assert _count(client, f"Observation?code={code}") == expected, code
    conditions = Counter(c for r in db["Condition"].values() for s, c in _codes(r["code"]) if s == SNOMED)
    for code, n in conditions.most_common(3):
        assert _count(client, f"Condition?code={SNOMED}|{code}") == n
    statuses = Counter(r["clinicalStatus"]["coding"][0]["code"] for r in db["Condition"].values())
    for status, n in statuses.items():
        assert _count(client, f"Condition?clinical-status={status}") == n
    # :text on the normalised display / text: the start of it or of one of its words
    expected = sum(
        any(
            _norm(t).startswith("body height") or " body height" in _norm(t)
            for t in [o["code"].get("text", "")] + [c.get("display", "") for c in o["code"]["coding"]]
        )
        for o in db["Observation"].values()
    )
    assert expected > 0 and _count(client, "Observation?code:text=Body Height") == expected


def test_date_ranges(client: Any, db: dict[str, dict[str, dict[str, Any]]]) -> None:
    # effectiveDateTime has second precision: its range is [t, t+1s). With the spec's prefixes,
    # ge2015-01-01 keeps t >= 2015-01-01 and lt2016-01-01 keeps t < 2016-01-01 (UTC: no zone = UTC)
    lo, hi = _utc("2015-01-01T00:00:00"), _utc("2016-01-01T00:00:00")
    expected = sum(lo <= _instant(o["effectiveDateTime"]) < hi for o in db["Observation"].values())
    assert expected > 0
    assert _count(client, "Observation?date=ge2015-01-01&date=lt2016-01-01") == expected
    # Encounter.period: eq2016 = the period lies within 2016; ge2016-06-01 = ends after that day
    # (the range above it overlaps) or lies within it
    y0, y1 = _utc("2016-01-01T00:00:00"), _utc("2017-01-01T00:00:00")
    d0, d1 = _utc("2016-06-01T00:00:00"), _utc("2016-06-02T00:00:00")
    second = timedelta(seconds=1)
    periods = [
        (_instant(e["period"]["start"]), _instant(e["period"]["end"]) + second) for e in db["Encounter"].values()
    ]
    assert _count(client, "Encounter?date=2016") == sum(y0 <= s and e <= y1 for s, e in periods)
    assert _count(client, "Encounter?date=ge2016-06-01") == sum(e > d1 or (s >= d0 and e <= d1) for s, e in periods)
    assert _count(client, "Encounter?date=sa2016-06-01") == sum(s >= d1 for s, e in periods)
    assert _count(client, "Encounter?date=eb2016-06-01") == sum(e <= d0 for s, e in periods)
    born = [date.fromisoformat(p["birthDate"]) for p in db["Patient"].values()]
    assert _count(client, "Patient?birthdate=lt1970") == sum(b.year < 1970 for b in born)
    assert _count(client, "Patient?birthdate=ge1970-01-01&birthdate=le1979-12-31") == sum(
        1970 <= b.year <= 1979 for b in born
    )


def test_references_and_compartments(client: Any, db: dict[str, dict[str, dict[str, Any]]]) -> None:
    for pid in _patients(db, 5):
        expected = sum(_ref(o, "subject") == f"Patient/{pid}" for o in db["Observation"].values())
        assert _count(client, f"Observation?patient=Patient/{pid}") == expected
        assert _count(client, f"Observation?subject={pid}") == expected
        assert _count(client, f"Patient/{pid}/Observation") == expected
        encounters = sum(_ref(e, "subject") == f"Patient/{pid}" for e in db["Encounter"].values())
        assert _count(client, f"Patient/{pid}/Encounter") == encounters


def test_chains(client: Any, db: dict[str, dict[str, dict[str, Any]]]) -> None:
    patients = db["Patient"]
    code = _frequent_codes(db, 1)[0]
    female = {f"Patient/{p['id']}" for p in patients.values() if p["gender"] == "female"}
    expected = sum(
        _ref(o, "subject") in female and (LOINC, code) in _codes(o["code"]) for o in db["Observation"].values()
    )
    assert _count(client, f"Observation?subject:Patient.gender=female&code={code}") == expected

    def name_parts(p: dict[str, Any]) -> list[str]:
        return [
            _norm(x)
            for n in p.get("name", [])
            for k in ("family", "given", "prefix", "suffix")
            for x in (n.get(k) if isinstance(n.get(k), list) else [n.get(k)] if n.get(k) else [])
        ]

    for p in list(patients.values())[:40:8]:
        prefix = p["name"][0]["family"][:4]
        owners = {
            f"Patient/{q['id']}" for q in patients.values() if any(x.startswith(_norm(prefix)) for x in name_parts(q))
        }
        expected = sum(_ref(o, "subject") in owners for o in db["Observation"].values())
        assert _count(client, f"Observation?subject:Patient.name={prefix}") == expected, prefix
        assert _count(client, f"Observation?subject.name={prefix}") == expected, prefix
    # two levels: Observation -> Encounter -> Organization (service provider)
    orgs = db["Organization"]
    name = sorted(o["name"] for o in orgs.values())[len(orgs) // 2]
    providers = {f"Organization/{o['id']}" for o in orgs.values() if _norm(o["name"]).startswith(_norm(name[:6]))}
    encounters = {f"Encounter/{e['id']}" for e in db["Encounter"].values() if _ref(e, "serviceProvider") in providers}
    expected = sum(_ref(o, "encounter") in encounters for o in db["Observation"].values())
    assert expected > 0
    assert _count(client, f"Observation?encounter.service-provider.name={name[:6]}") == expected


def test_has(client: Any, db: dict[str, dict[str, dict[str, Any]]]) -> None:
    conditions = Counter(c for r in db["Condition"].values() for s, c in _codes(r["code"]) if s == SNOMED)
    for code, _ in conditions.most_common(3):
        expected = {_ref(r, "subject") for r in db["Condition"].values() if (SNOMED, code) in _codes(r["code"])}
        assert _count(client, f"Patient?_has:Condition:patient:code={SNOMED}|{code}") == len(expected)
    # nested: patients with an encounter at which a body height was measured
    code = "8302-2"
    encounters = {_ref(o, "encounter") for o in db["Observation"].values() if (LOINC, code) in _codes(o["code"])}
    expected = {_ref(e, "subject") for e in db["Encounter"].values() if f"Encounter/{e['id']}" in encounters}
    assert _count(client, f"Patient?_has:Encounter:patient:_has:Observation:encounter:code={code}") == len(expected)


def test_include_and_revinclude(client: Any, db: dict[str, dict[str, dict[str, Any]]]) -> None:
    for pid in _patients(db, 3):
        mine = [e for e in db["Encounter"].values() if _ref(e, "subject") == f"Patient/{pid}"]
        b = bundle(client, f"Encounter?patient=Patient/{pid}&_include=Encounter:service-provider&_count=1000")
        assert sorted(ids(b)) == sorted(e["id"] for e in mine)
        assert sorted(entries(b, "include")) == sorted({_ref(e, "serviceProvider") for e in mine})
        b = bundle(client, f"Patient?_id={pid}&_revinclude=Encounter:patient&_revinclude=Observation:subject")
        observations = [o for o in db["Observation"].values() if _ref(o, "subject") == f"Patient/{pid}"]
        assert ids(b) == [pid]
        assert sorted(entries(b, "include")) == sorted(
            [f"Encounter/{e['id']}" for e in mine] + [f"Observation/{o['id']}" for o in observations]
        )


def test_sort_and_paging(client: Any, db: dict[str, dict[str, dict[str, Any]]]) -> None:
    pid = _patients(db, 1)[0]
    mine = {
        o["id"]: _instant(o["effectiveDateTime"])
        for o in db["Observation"].values()
        if _ref(o, "subject") == f"Patient/{pid}"
    }
    got = ids(bundle(client, f"Observation?patient={pid}&_sort=-date&_count=1000"))
    assert sorted(got) == sorted(mine) and [mine[i] for i in got] == sorted(mine.values(), reverse=True)
    code = "8302-2"
    heights = {
        o["id"]: _instant(o["effectiveDateTime"])
        for o in db["Observation"].values()
        if (LOINC, code) in _codes(o["code"])
    }
    paged = _all_ids(client, f"Observation?code={code}&_sort=date,_id&_count=97")
    assert len(paged) == len(set(paged)) == len(heights) and set(paged) == set(heights)
    assert [heights[i] for i in paged] == sorted(heights.values())
    unsorted = _all_ids(client, f"Observation?code={code}&_count=250")
    assert sorted(unsorted) == sorted(heights)
    births = sorted((p["birthDate"], p["id"]) for p in db["Patient"].values())
    got = ids(bundle(client, "Patient?_sort=birthdate,_id&_count=1000"))
    assert got == [i for _, i in births]


def test_composites(client: Any, db: dict[str, dict[str, dict[str, Any]]]) -> None:
    tall = sum(
        (LOINC, "8302-2") in _codes(o["code"]) and o["valueQuantity"]["value"] > 180 for o in db["Observation"].values()
    )
    assert tall > 0 and _count(client, f"Observation?code-value-quantity={LOINC}|8302-2$gt180") == tall
    high = sum(
        any(
            (LOINC, "8480-6") in _codes(c["code"]) and c["valueQuantity"]["value"] > 140 for c in o.get("component", [])
        )
        for o in db["Observation"].values()
    )
    assert high > 0 and _count(client, f"Observation?component-code-value-quantity={LOINC}|8480-6$gt140") == high
    # the diastolic value never exceeds 140: matching both on the same component finds nothing
    assert _count(client, f"Observation?component-code-value-quantity={LOINC}|8462-4$gt140") == sum(
        any(
            (LOINC, "8462-4") in _codes(c["code"]) and c["valueQuantity"]["value"] > 140 for c in o.get("component", [])
        )
        for o in db["Observation"].values()
    )
