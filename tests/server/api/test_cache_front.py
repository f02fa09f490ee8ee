"""Cache hits answered in front of Flask (server/api/cache_front.py): the same answer, headers,
audit record, metrics, authorization and rate limit as through the routes; what the front cannot
do goes to the routes."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
from prometheus_client import REGISTRY

from server.api.cache_front import CacheFront
from server.auth.clients import add_client, revoke_client
from tests.conftest import make_app
from tests.server.auth.authutil import bearer, rsa_key

FHIR = "application/fhir+json"
SECURITY = ("X-Content-Type-Options", "X-Frame-Options", "Referrer-Policy", "Content-Security-Policy", "Cache-Control")


class Routes:
    """Counts the requests that reach the routes behind the front."""

    def __init__(self, app: Any) -> None:
        self.front: CacheFront = app.wsgi_app.app
        assert isinstance(self.front, CacheFront)
        self.inner = self.front.wsgi_app
        self.front.wsgi_app = self
        self.paths: list[str] = []

    def __call__(self, environ: dict[str, Any], start_response: Any) -> Any:
        self.paths.append(environ["PATH_INFO"])
        return self.inner(environ, start_response)

    def count(self, client: Any, *args: Any, **kwargs: Any) -> tuple[Any, int]:
        before = len(self.paths)
        resp = client.get(*args, **kwargs)
        return resp, len(self.paths) - before


@pytest.fixture
def app(database_url: str) -> Iterator[Any]:
    application = make_app(database_url)
    c = application.test_client()
    assert c.put("/fhir/Patient/p1", json={"resourceType": "Patient", "id": "p1"}).status_code == 201
    obs = {"resourceType": "Observation", "id": "o1", "status": "final", "code": {"text": "x"}}
    assert c.put("/fhir/Observation/o1", json={**obs, "subject": {"reference": "Patient/p1"}}).status_code == 201
    yield application
    application.extensions["bigmed"].store.close()


def _events(app: Any, client: Any) -> list[dict[str, Any]]:
    assert app.extensions["bigmed_audit_writer"].flush(10)
    bundle = client.get("/fhir/AuditEvent", query_string={"patient": "p1", "_count": "100"}).get_json()
    events = [e["resource"] for e in bundle.get("entry", [])]
    for event in events:  # what differs between two accesses of the same request
        for key in ("id", "meta", "recorded", "period", "text"):
            event.pop(key, None)
    return events


def _served(name: str, status: str) -> float:
    return REGISTRY.get_sample_value("bigmed_requests_total", {"interaction": name, "status": status}) or 0.0


def test_a_hit_is_answered_before_the_routes_exactly_as_by_them(app: Any) -> None:
    c = app.test_client()
    routes = Routes(app)
    for url in ("/fhir/Patient/p1", "/fhir/Observation?subject=Patient/p1", "/fhir/Observation?_include=*"):
        routed, reached = routes.count(c, url)
        assert reached == 1 and routed.headers["X-Cache"] == "MISS"
        reads, searches = _served("fhir.read", "2xx"), _served("fhir.search_type", "2xx")
        hit, reached = routes.count(c, url)
        assert reached == 0, "a warm answer should not need the routes"
        assert hit.status_code == 200 and hit.headers["X-Cache"] == "HIT" and hit.data == routed.data
        for name in ("ETag", "Last-Modified", "Content-Type", *SECURITY):
            assert hit.headers.get(name) == routed.headers.get(name), name
        assert _served("fhir.read", "2xx") + _served("fhir.search_type", "2xx") == reads + searches + 1
        assert "Server-Timing" in hit.headers
        not_modified, reached = routes.count(c, url, headers={"If-None-Match": routed.headers["ETag"]})
        assert not_modified.status_code == 304 and reached == 0 and not not_modified.data
    events = _events(app, c)
    read_events = [e for e in events if e["subtype"][0]["code"] == "read"]
    assert len(read_events) == 3 and read_events[0] == read_events[1] == read_events[2]  # routed, hit, 304
    assert read_events[0]["entity"][0]["what"]["reference"] == "Patient/p1"
    searches = [e for e in events if e["subtype"][0]["code"] == "search-type"]
    assert len(searches) == 3 and searches[0] == searches[1] == searches[2]  # the _include one has no patient


def test_what_the_front_cannot_answer_goes_to_the_routes(app: Any) -> None:
    c = app.test_client()
    routes = Routes(app)
    c.get("/fhir/Patient/p1")
    for headers in ({"Cache-Control": "no-cache"}, {"Origin": "https://ehr.example"}, {"Accept": "application/json"}):
        resp, reached = routes.count(c, "/fhir/Patient/p1", headers=headers)
        assert reached == 1 and resp.status_code == 200, headers
    # the Accept header above was negotiated once by the routes: now the front knows it
    resp, reached = routes.count(c, "/fhir/Patient/p1", headers={"Accept": "application/json"})
    assert reached == 0 and resp.content_type.startswith("application/json")
    for url in ("/fhir/Patient/p1/_history/1", "/fhir/Patient/p1/_history", "/fhir/metadata", "/fhir/Patient/$x"):
        c.get(url)
        assert routes.count(c, url)[1] == 1, url
    # a write moves the generation: the front misses and the routes answer the new version
    c.put("/fhir/Patient/p1", json={"resourceType": "Patient", "id": "p1", "gender": "female"})
    resp, reached = routes.count(c, "/fhir/Patient/p1")
    assert reached == 1 and resp.get_json()["gender"] == "female"


def test_tokens_clients_and_limits_hold_for_front_hits(database_url: str) -> None:
    application = make_app(database_url, auth="smart", rate_limit=4)
    store = application.extensions["bigmed"].store
    try:
        add_client(store, "sys", scopes="system/*.cruds", jwks=rsa_key().jwks)
        add_client(store, "p1", scopes="system/*.rs", jwks=rsa_key().jwks, patient="p1")
        c = application.test_client()
        routes = Routes(application)
        hs, hp = bearer(c, "sys", "system/*.cruds"), bearer(c, "p1", "system/*.rs")
        assert c.put("/fhir/Patient/p2", json={"resourceType": "Patient", "id": "p2"}, headers=hs).status_code == 201
        assert routes.count(c, "/fhir/Patient?_id=p2", headers=hs)[1] == 1
        hit, reached = routes.count(c, "/fhir/Patient?_id=p2", headers=hs)
        assert reached == 0 and hit.headers["Cache-Control"] == "no-store"  # smart mode: never stored by caches
        other, reached = routes.count(c, "/fhir/Patient?_id=p2", headers=hp)  # another client: its own answer
        assert reached == 1 and other.get_json().get("total", 0) == 0
        assert routes.count(c, "/fhir/Patient?_id=p2")[0].status_code == 401  # no token
        bad = {"Authorization": hs["Authorization"][:-4] + "AAAA"}
        assert routes.count(c, "/fhir/Patient?_id=p2", headers=bad)[0].status_code == 401
        # the fourth request of the client in this minute (PUT, miss, hit, this one) is its last
        assert routes.count(c, "/fhir/Patient?_id=p2", headers=hs)[0].status_code == 200
        limited, reached = routes.count(c, "/fhir/Patient?_id=p2", headers=hs)
        assert limited.status_code == 429 and reached == 1
        assert revoke_client(store, "p1")
        assert routes.count(c, "/fhir/Patient?_id=p2", headers=hp)[0].status_code == 401
    finally:
        store.close()


def test_a_miss_checks_the_token_and_computes_the_key_once(sqlite_url: str) -> None:
    """The front hands what it computed for a miss to the routes: no second token check or key."""
    application = make_app(sqlite_url, auth="smart", rate_limit=0)
    store = application.extensions["bigmed"].store
    try:
        add_client(store, "sys", scopes="system/*.cruds", jwks=rsa_key().jwks)
        c = application.test_client()
        h = bearer(c, "sys", "system/*.cruds")
        c.get("/fhir/Patient", headers=h)  # the routes learn this Accept and Host: the front can act
        calls: dict[str, int] = {"authenticate": 0, "key": 0}
        service, cache = application.extensions["bigmed_auth"], application.extensions["bigmed"].cache

        def counting(obj: Any, name: str, counter: str) -> None:
            original = getattr(obj, name)

            def wrapper(*args: Any, **kwargs: Any) -> Any:
                calls[counter] += 1
                return original(*args, **kwargs)

            setattr(obj, name, wrapper)

        counting(service, "authenticate", "authenticate")
        counting(cache, "key", "key")
        miss = c.get("/fhir/Patient?_id=nobody", headers=h)
        assert miss.status_code == 200 and miss.headers["X-Cache"] == "MISS"
        assert calls == {"authenticate": 1, "key": 1}
        hit = c.get("/fhir/Patient?_id=nobody", headers=h)
        assert hit.headers["X-Cache"] == "HIT" and calls == {"authenticate": 2, "key": 2}
    finally:
        store.close()
