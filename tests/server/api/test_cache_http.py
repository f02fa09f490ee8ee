"""Cached reads and searches through the HTTP API: hits, never stale after writes, conditional
requests, Cache-Control; with the in-process cache and with a real Redis, on both backends."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest

from tests.conftest import make_app, redis_url

FHIR = "application/fhir+json"


@pytest.fixture(params=["in-process", "redis"])
def cclient(request: pytest.FixtureRequest, database_url: str) -> Iterator[Any]:
    app = make_app(database_url, redis_url=redis_url() if request.param == "redis" else None)
    yield app.test_client()
    app.extensions["bigmed"].store.close()


def _put(client: Any, id_: str, family: str) -> Any:
    body = {"resourceType": "Patient", "id": id_, "name": [{"family": family}]}
    return client.put(f"/fhir/Patient/{id_}", json=body, headers={"Content-Type": FHIR})


def test_read_is_cached_and_never_stale(cclient: Any) -> None:
    _put(cclient, "c1", "Before")
    first = cclient.get("/fhir/Patient/c1")
    assert first.headers["X-Cache"] == "MISS"
    second = cclient.get("/fhir/Patient/c1")
    assert second.headers["X-Cache"] == "HIT" and second.data == first.data
    assert second.headers["ETag"] == 'W/"1"'
    _put(cclient, "c1", "After")
    third = cclient.get("/fhir/Patient/c1")
    assert third.headers["X-Cache"] == "MISS" and third.get_json()["name"][0]["family"] == "After"
    cclient.delete("/fhir/Patient/c1")
    assert cclient.get("/fhir/Patient/c1").status_code == 410


def test_search_is_cached_and_sees_new_matches(cclient: Any) -> None:
    _put(cclient, "s1", "Hansen")
    url = "/fhir/Patient?family=hansen"
    assert cclient.get(url).headers["X-Cache"] == "MISS"
    hit = cclient.get(url)
    assert hit.headers["X-Cache"] == "HIT" and len(hit.get_json()["entry"]) == 1
    _put(cclient, "s2", "Hansen")
    fresh = cclient.get(url)
    assert fresh.headers["X-Cache"] == "MISS" and len(fresh.get_json()["entry"]) == 2
    # parameter order does not split the cache; a different query does not hit it
    assert cclient.get("/fhir/Patient?_count=5&family=hansen").headers["X-Cache"] == "MISS"
    assert cclient.get("/fhir/Patient?family=hansen&_count=5").headers["X-Cache"] == "HIT"


def test_writes_to_other_types_keep_simple_searches_cached(cclient: Any) -> None:
    _put(cclient, "o1", "Berg")
    cclient.get("/fhir/Patient?family=berg")
    obs = {"resourceType": "Observation", "status": "final", "code": {"text": "x"}}
    cclient.post("/fhir/Observation", json=obs, headers={"Content-Type": FHIR})
    assert cclient.get("/fhir/Patient?family=berg").headers["X-Cache"] == "HIT"


def test_conditional_requests(cclient: Any) -> None:
    _put(cclient, "e1", "Etag")
    read = cclient.get("/fhir/Patient/e1")
    assert cclient.get("/fhir/Patient/e1", headers={"If-None-Match": read.headers["ETag"]}).status_code == 304
    assert cclient.get("/fhir/Patient/e1", headers={"If-None-Match": 'W/"9"'}).status_code == 200
    lm = read.headers["Last-Modified"]
    assert cclient.get("/fhir/Patient/e1", headers={"If-Modified-Since": lm}).status_code == 304
    old = "Mon, 01 Jan 2001 00:00:00 GMT"
    assert cclient.get("/fhir/Patient/e1", headers={"If-Modified-Since": old}).status_code == 200
    search = cclient.get("/fhir/Patient?family=etag")
    etag = search.headers["ETag"]
    assert etag.startswith('W/"')
    assert cclient.get("/fhir/Patient?family=etag", headers={"If-None-Match": etag}).status_code == 304
    _put(cclient, "e2", "Etag")
    assert cclient.get("/fhir/Patient?family=etag", headers={"If-None-Match": etag}).status_code == 200


def test_cache_control_no_cache_bypasses(cclient: Any) -> None:
    _put(cclient, "n1", "Nocache")
    cclient.get("/fhir/Patient/n1")
    resp = cclient.get("/fhir/Patient/n1", headers={"Cache-Control": "no-cache"})
    assert resp.headers["X-Cache"] == "MISS"
    assert cclient.get("/fhir/Patient/n1").headers["X-Cache"] == "HIT"


def test_metrics_and_health_report_the_cache(cclient: Any) -> None:
    _put(cclient, "m1", "Metric")
    cclient.get("/fhir/Patient/m1")
    cclient.get("/fhir/Patient/m1")
    text = cclient.get("/metrics").get_data(as_text=True)
    assert "bigmed_cache_events_total{backend=" in text and 'outcome="hit"' in text
    assert 'bigmed_requests_total{interaction="fhir.read",status="2xx"}' in text
    health = cclient.get("/healthz").get_json()
    assert health["cache"]["status"] == "ok"


def test_redis_down_serves_from_the_database(database_url: str) -> None:
    app = make_app(database_url, redis_url="redis://127.0.0.1:1/0", cache_timeout_ms=20)
    client = app.test_client()
    try:
        _put(client, "d1", "Down")
        first = client.get("/fhir/Patient/d1")
        assert first.status_code == 200 and first.headers["X-Cache"] == "MISS"
        _put(client, "d1", "Still")
        assert client.get("/fhir/Patient/d1").get_json()["name"][0]["family"] == "Still"
        health = client.get("/healthz")
        assert health.status_code == 200 and health.get_json()["cache"]["status"] == "degraded"
    finally:
        app.extensions["bigmed"].store.close()
