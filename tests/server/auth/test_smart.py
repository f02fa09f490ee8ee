"""BIGMED_AUTH=smart end to end: token endpoint, bearer checks, scopes, compartments, cache, audit, hardening."""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterator
from typing import Any

import pytest

from server.auth.clients import add_client, revoke_client
from tests.conftest import make_app
from tests.server.auth.authutil import KeyPair, assertion, ec_key, rsa_key

BASE = "http://testserver"
TOKEN_URL = f"{BASE}/auth/token"
FHIR = "application/fhir+json"


@pytest.fixture
def app(database_url: str) -> Iterator[Any]:
    application = make_app(database_url, auth="smart", rate_limit=0)
    store = application.extensions["bigmed"].store
    add_client(store, "sys", scopes="system/*.cruds system/AuditEvent.rs", jwks=rsa_key().jwks)
    add_client(store, "obs", scopes="system/Observation.rs system/Observation.c", jwks=ec_key().jwks)
    add_client(store, "v1", scopes="system/Observation.read system/Patient.read", jwks=rsa_key().jwks)
    add_client(store, "p1", scopes="system/*.cruds", jwks=rsa_key().jwks, patient="p1")
    add_client(store, "research", scopes="system/*.rs", jwks=rsa_key().jwks, purpose="research")
    yield application
    store.close()


def _token(client: Any, client_id: str, scope: str, key: KeyPair | None = None, **claims: Any) -> Any:
    aud = claims.pop("aud", TOKEN_URL)
    signed = assertion(key or (ec_key() if client_id == "obs" else rsa_key()), client_id, aud, **claims)
    return client.post(
        "/auth/token",
        data={
            "grant_type": "client_credentials",
            "scope": scope,
            "client_assertion_type": "urn:ietf:params:oauth:client-assertion-type:jwt-bearer",
            "client_assertion": signed,
        },
    )


def _bearer(client: Any, client_id: str, scope: str = "system/*.cruds system/AuditEvent.rs") -> dict[str, str]:
    resp = _token(client, client_id, scope)
    assert resp.status_code == 200, resp.get_json()
    return {"Authorization": f"Bearer {resp.get_json()['access_token']}"}


def _seed(client: Any, h: dict[str, str]) -> None:
    entries = [
        {"resourceType": "Patient", "id": "p1", "name": [{"family": "En"}]},
        {"resourceType": "Patient", "id": "p2", "name": [{"family": "To"}]},
        {
            "resourceType": "Encounter",
            "id": "e1",
            "status": "finished",
            "class": {"code": "AMB"},
            "subject": {"reference": "Patient/p1"},
        },
        {
            "resourceType": "Observation",
            "id": "o1",
            "status": "final",
            "code": {"text": "x"},
            "subject": {"reference": "Patient/p1"},
            "derivedFrom": [{"reference": "Observation/o2"}],
        },
        {
            "resourceType": "Observation",
            "id": "o2",
            "status": "final",
            "code": {"text": "x"},
            "subject": {"reference": "Patient/p2"},
            "encounter": {"reference": "Encounter/e1"},
        },
        {"resourceType": "Condition", "id": "c1", "subject": {"reference": "Patient/p1"}},
    ]
    bundle = {
        "resourceType": "Bundle",
        "type": "transaction",
        "entry": [
            {"resource": r, "request": {"method": "PUT", "url": f"{r['resourceType']}/{r['id']}"}} for r in entries
        ],
    }
    resp = client.post("/fhir", json=bundle, headers={**h, "Content-Type": FHIR})
    assert resp.status_code == 200, resp.get_json()


def _ids(bundle: dict[str, Any]) -> set[str]:
    return {
        f"{e['resource']['resourceType']}/{e['resource']['id']}"
        for e in bundle.get("entry", [])
        if "resource" in e and e["resource"]["resourceType"] != "OperationOutcome"
    }


# -- discovery and the token endpoint ----------------------------------------------------------------


def test_public_endpoints_need_no_token(app: Any) -> None:
    c = app.test_client()
    assert c.get("/fhir/metadata").status_code == 200
    conf = c.get("/fhir/.well-known/smart-configuration").get_json()
    assert conf["token_endpoint"] == TOKEN_URL
    assert "private_key_jwt" in conf["token_endpoint_auth_methods_supported"]
    security = c.get("/fhir/metadata").get_json()["rest"][0]["security"]
    uris = {e["url"]: e.get("valueUri") for e in security["extension"][0]["extension"]}
    assert uris["token"] == TOKEN_URL
    assert security["service"][0]["coding"][0]["code"] == "SMART-on-FHIR"


def test_requests_without_a_valid_token_get_401(app: Any) -> None:
    c = app.test_client()
    for headers in ({}, {"Authorization": "Bearer nonsense"}, {"Authorization": "Basic abc"}):
        resp = c.get("/fhir/Patient", headers=headers)
        assert resp.status_code == 401
        assert resp.headers["WWW-Authenticate"].startswith("Bearer")
        assert resp.get_json()["resourceType"] == "OperationOutcome"
    # a token signed by someone else, or for another server, is refused
    forged = rsa_key().sign(
        {
            "sub": "sys",
            "scope": "system/*.rs",
            "exp": int(time.time()) + 60,
            "iat": int(time.time()),
            "jti": "x",
            "aud": f"{BASE}/fhir",
        },
        typ="at+jwt",
    )
    assert c.get("/fhir/Patient", headers={"Authorization": f"Bearer {forged}"}).status_code == 401


def test_token_grants_requested_and_registered_scopes(app: Any) -> None:
    c = app.test_client()
    resp = _token(c, "obs", "system/Observation.rs system/Patient.rs system/Observation.cud")
    body = resp.get_json()
    assert resp.status_code == 200 and body["token_type"] == "bearer" and body["expires_in"] == 300
    assert body["scope"] == "system/Observation.crs"
    assert resp.headers["Cache-Control"] == "no-store"
    assert _token(c, "obs", "system/Condition.rs").get_json()["error"] == "invalid_scope"
    assert _token(c, "obs", "not-a-scope").get_json()["error"] == "invalid_scope"


def test_v2_scopes_with_a_query_are_refused_clearly_not_granted_empty(app: Any) -> None:
    c = app.test_client()
    resp = _token(c, "obs", "system/Observation.rs?category=laboratory system/Observation.c")
    body = resp.get_json()
    assert resp.status_code == 400 and body["error"] == "invalid_scope"
    assert "system/Observation.rs?category=laboratory" in body["error_description"]
    assert "not supported" in body["error_description"] and "system/Observation.rs without" in body["error_description"]
    assert "access_token" not in body


@pytest.mark.parametrize(
    "case",
    ["expired", "wrong_aud", "too_long", "unregistered_key", "unknown_client", "iss_sub_differ", "jku_not_allowed"],
)
def test_bad_assertions_are_invalid_client(app: Any, case: str) -> None:
    c = app.test_client()
    args: dict[str, Any] = {
        "expired": {"exp": int(time.time()) - 60},
        "wrong_aud": {"aud": "https://elsewhere/token"},
        "too_long": {"exp": int(time.time()) + 3600},
        "iss_sub_differ": {"sub": "other"},
    }.get(case, {})
    client_id = "unknown" if case == "unknown_client" else "sys"
    key = rsa_key("stranger") if case == "unregistered_key" else None
    if case == "jku_not_allowed":
        signed = rsa_key().sign(
            {"iss": "sys", "sub": "sys", "aud": TOKEN_URL, "exp": int(time.time()) + 60, "jti": uuid.uuid4().hex},
            jku="https://attacker.example/jwks",
        )
        resp = c.post(
            "/auth/token",
            data={
                "grant_type": "client_credentials",
                "scope": "system/*.rs",
                "client_assertion_type": "urn:ietf:params:oauth:client-assertion-type:jwt-bearer",
                "client_assertion": signed,
            },
        )
    else:
        resp = _token(c, client_id, "system/*.rs", key, **args)
    assert resp.status_code == 401, resp.get_json()
    assert resp.get_json()["error"] == "invalid_client"
    assert (
        "client_assertion" not in resp.get_json()["error_description"]
        or "eyJ" not in resp.get_json()["error_description"]
    )


def test_replayed_jti_and_alg_none_and_hs256(app: Any) -> None:
    import base64
    import hashlib
    import hmac
    import json

    from cryptography.hazmat.primitives import serialization

    c = app.test_client()
    form = {
        "grant_type": "client_credentials",
        "scope": "system/*.rs",
        "client_assertion_type": "urn:ietf:params:oauth:client-assertion-type:jwt-bearer",
    }
    signed = assertion(rsa_key(), "sys", TOKEN_URL)
    assert c.post("/auth/token", data={**form, "client_assertion": signed}).status_code == 200
    again = c.post("/auth/token", data={**form, "client_assertion": signed})
    assert again.status_code == 401 and "replay" in again.get_json()["error_description"]

    def b64(obj: Any) -> str:
        return base64.urlsafe_b64encode(json.dumps(obj).encode()).rstrip(b"=").decode()

    claims = {"iss": "sys", "sub": "sys", "aud": TOKEN_URL, "exp": int(time.time()) + 60, "jti": uuid.uuid4().hex}
    none = f"{b64({'alg': 'none', 'kid': 'rsa-1', 'typ': 'JWT'})}.{b64(claims)}."
    assert c.post("/auth/token", data={**form, "client_assertion": none}).status_code == 401
    pem = (
        rsa_key()
        .private.public_key()
        .public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
    )
    signing = f"{b64({'alg': 'HS256', 'kid': 'rsa-1', 'typ': 'JWT'})}.{b64(claims)}"
    sig = base64.urlsafe_b64encode(hmac.new(pem, signing.encode(), hashlib.sha256).digest()).rstrip(b"=").decode()
    resp = c.post("/auth/token", data={**form, "client_assertion": f"{signing}.{sig}"})
    assert resp.status_code == 401 and "HS256" in resp.get_json()["error_description"]


def test_oauth_request_errors(app: Any) -> None:
    c = app.test_client()
    assert c.post("/auth/token", data={"grant_type": "password"}).get_json()["error"] == "unsupported_grant_type"
    assert c.post("/auth/token", data={"grant_type": "client_credentials"}).get_json()["error"] == "invalid_request"
    assert c.post("/auth/token", json={}).get_json()["error"] == "invalid_request"


def test_revoked_client_loses_its_tokens_at_once(app: Any) -> None:
    c = app.test_client()
    h = _bearer(c, "obs", "system/Observation.rs")
    assert c.get("/fhir/Observation", headers=h).status_code == 200
    assert revoke_client(app.extensions["bigmed"].store, "obs")
    assert c.get("/fhir/Observation", headers=h).status_code == 401
    resp = _token(c, "obs", "system/Observation.rs")
    assert resp.status_code == 401 and "revoked" in resp.get_json()["error_description"]


# -- scopes on every interaction -----------------------------------------------------------------------


def test_scopes_are_enforced_per_interaction(app: Any) -> None:
    c = app.test_client()
    _seed(c, _bearer(c, "sys"))
    h = _bearer(c, "obs", "system/Observation.rs system/Observation.c")
    assert c.get("/fhir/Observation/o1", headers=h).status_code == 200
    assert c.get("/fhir/Observation/o1/_history/1", headers=h).status_code == 200
    assert c.get("/fhir/Observation?code:text=x", headers=h).status_code == 200
    denied = c.get("/fhir/Condition/c1", headers=h)
    assert denied.status_code == 403 and denied.get_json()["issue"][0]["code"] == "forbidden"
    assert c.get("/fhir/Condition", headers=h).status_code == 403
    obs = {"resourceType": "Observation", "status": "final", "code": {"text": "y"}}
    assert c.post("/fhir/Observation", json=obs, headers={**h, "Content-Type": FHIR}).status_code == 201
    assert (
        c.put("/fhir/Observation/o1", json={**obs, "id": "o1"}, headers={**h, "Content-Type": FHIR}).status_code == 403
    )
    assert c.delete("/fhir/Observation/o1", headers=h).status_code == 403
    patch = c.patch(
        "/fhir/Observation/o1",
        json=[{"op": "replace", "path": "/status", "value": "amended"}],
        headers={**h, "Content-Type": "application/json-patch+json"},
    )
    assert patch.status_code == 403
    cond = c.put("/fhir/Observation?code:text=x&subject=Patient/p1", json={**obs}, headers={**h, "Content-Type": FHIR})
    assert cond.status_code == 403
    # system level: only granted types are searched; an explicit other _type is refused
    everything = c.get("/fhir?_type=Observation", headers=h).get_json()
    assert _ids(everything) >= {"Observation/o1", "Observation/o2"}
    assert c.get("/fhir?_type=Condition", headers=h).status_code == 403
    assert all(i.startswith("Observation/") for i in _ids(c.get("/fhir", headers=h).get_json()))
    assert c.get("/fhir/_history", headers=h).status_code == 403


def test_v1_scopes(app: Any) -> None:
    c = app.test_client()
    _seed(c, _bearer(c, "sys"))
    h = _bearer(c, "v1", "system/Observation.read system/Patient.read")
    assert c.get("/fhir/Patient/p1", headers=h).status_code == 200
    obs = {"resourceType": "Observation", "status": "final", "code": {"text": "y"}}
    assert c.post("/fhir/Observation", json=obs, headers={**h, "Content-Type": FHIR}).status_code == 403


def test_scope_escalation_inside_a_transaction_is_refused_whole(app: Any) -> None:
    c = app.test_client()
    h = _bearer(c, "obs", "system/Observation.rs system/Observation.c")
    bundle = {
        "resourceType": "Bundle",
        "type": "transaction",
        "entry": [
            {
                "resource": {"resourceType": "Observation", "status": "final", "code": {"text": "ok"}},
                "request": {"method": "POST", "url": "Observation"},
            },
            {
                "resource": {"resourceType": "Condition", "subject": {"reference": "Patient/p1"}},
                "request": {"method": "POST", "url": "Condition"},
            },
        ],
    }
    resp = c.post("/fhir", json=bundle, headers={**h, "Content-Type": FHIR})
    assert resp.status_code == 403
    assert "Bundle.entry[1]" in resp.get_json()["issue"][0]["diagnostics"]
    hs = _bearer(c, "sys")
    assert c.get("/fhir/Observation?code:text=ok", headers=hs).get_json().get("total") == 0  # nothing written
    batch = {**bundle, "type": "batch"}
    answers = c.post("/fhir", json=batch, headers={**h, "Content-Type": FHIR}).get_json()["entry"]
    assert answers[0]["response"]["status"].startswith("201") and answers[1]["response"]["status"].startswith("403")


def test_include_only_returns_granted_types(app: Any) -> None:
    c = app.test_client()
    _seed(c, _bearer(c, "sys"))
    h = _bearer(c, "obs", "system/Observation.rs")
    bundle = c.get("/fhir/Observation?_include=Observation:subject", headers=h).get_json()
    assert _ids(bundle) == {"Observation/o1", "Observation/o2"}  # Patients not granted: left out


# -- patient-level clients -------------------------------------------------------------------------------


def test_patient_level_client_sees_only_its_compartment(app: Any) -> None:
    c = app.test_client()
    _seed(c, _bearer(c, "sys"))
    h = _bearer(c, "p1")
    assert c.get("/fhir/Patient/p1", headers=h).status_code == 200
    assert c.get("/fhir/Observation/o1", headers=h).status_code == 200
    for url in (
        "/fhir/Patient/p2",
        "/fhir/Observation/o2",
        "/fhir/Observation/o2/_history/1",
        "/fhir/Observation/o2/_history",
    ):
        resp = c.get(url, headers=h)
        assert resp.status_code == 404, url  # never 403: existence does not leak
    assert _ids(c.get("/fhir/Observation", headers=h).get_json()) == {"Observation/o1"}
    assert _ids(c.get("/fhir/Patient", headers=h).get_json()) == {"Patient/p1"}
    assert _ids(c.get("/fhir?_type=Patient,Observation", headers=h).get_json()) == {"Patient/p1", "Observation/o1"}
    assert _ids(c.get("/fhir/Patient/p2/Observation", headers=h).get_json()) == set()
    # _include and _revinclude across the compartment boundary
    inc = c.get("/fhir/Observation?_include=Observation:derived-from", headers=h).get_json()
    assert _ids(inc) == {"Observation/o1"}  # o2 (of p2) is derived-from target: left out
    rev = c.get("/fhir/Encounter?_revinclude=Observation:encounter", headers=h).get_json()
    assert _ids(rev) == {"Encounter/e1"}  # o2 refers to e1 but belongs to p2
    # writes stay in the compartment
    obs = {
        "resourceType": "Observation",
        "status": "final",
        "code": {"text": "z"},
        "subject": {"reference": "Patient/p2"},
    }
    assert c.post("/fhir/Observation", json=obs, headers={**h, "Content-Type": FHIR}).status_code == 403
    own = {**obs, "subject": {"reference": "Patient/p1"}}
    assert c.post("/fhir/Observation", json=own, headers={**h, "Content-Type": FHIR}).status_code == 201
    assert c.delete("/fhir/Observation/o2", headers=h).status_code == 404
    assert c.get("/fhir/_history", headers=h).status_code == 403


def test_cache_never_serves_one_client_the_answer_of_another(app: Any) -> None:
    c = app.test_client()
    _seed(c, _bearer(c, "sys"))
    hs, hp = _bearer(c, "sys"), _bearer(c, "p1")
    first = c.get("/fhir/Observation", headers=hs)
    assert first.headers["X-Cache"] == "MISS" and _ids(first.get_json()) == {"Observation/o1", "Observation/o2"}
    assert c.get("/fhir/Observation", headers=hs).headers["X-Cache"] == "HIT"
    other = c.get("/fhir/Observation", headers=hp)
    assert other.headers["X-Cache"] == "MISS" and _ids(other.get_json()) == {"Observation/o1"}
    assert c.get("/fhir/Observation/o2", headers=hs).status_code == 200
    assert c.get("/fhir/Observation/o2", headers=hp).status_code == 404


# -- audit --------------------------------------------------------------------------------------------


def test_every_access_is_audited_and_the_trail_is_append_only(app: Any) -> None:
    c = app.test_client()
    hs = _bearer(c, "sys")
    _seed(c, hs)
    hp = _bearer(c, "p1")
    c.get("/fhir/Observation/o1", headers=hp)
    c.get("/fhir/Observation/o2", headers=hp)  # a refused access is recorded too
    trail = c.get("/fhir/AuditEvent?agent=p1", headers=hs).get_json()
    events = [e["resource"] for e in trail["entry"]]
    assert len(events) == 2
    assert {e["outcome"] for e in events} == {"0", "4"}
    read = next(e for e in events if e["outcome"] == "0")
    assert read["action"] == "R" and read["agent"][0]["who"]["identifier"]["value"] == "p1"
    assert {"reference": "Patient/p1"} in [x.get("what") for x in read["entity"]]
    assert read["agent"][0]["network"]["address"] == "127.0.0.1"
    by_patient = c.get("/fhir/AuditEvent?patient=p1&date=ge2020-01-01", headers=hs).get_json()
    actions = {e["resource"]["action"] for e in by_patient["entry"]}
    assert {"R", "C"} <= actions  # the seed's writes (recorded in their transaction) and the read
    assert c.get("/fhir/AuditEvent", headers=hp).status_code == 403  # no audit scope for p1
    aid = events[0]["id"]
    assert c.get(f"/fhir/AuditEvent/{aid}", headers=hs).get_json()["id"] == aid
    for method in ("put", "delete", "patch"):
        assert getattr(c, method)(f"/fhir/AuditEvent/{aid}", headers=hs).status_code == 405
    assert (
        c.post(
            "/fhir/AuditEvent", json={"resourceType": "AuditEvent"}, headers={**hs, "Content-Type": FHIR}
        ).status_code
        == 405
    )
    tx = {
        "resourceType": "Bundle",
        "type": "transaction",
        "entry": [
            {"resource": {"resourceType": "AuditEvent", "id": "x"}, "request": {"method": "PUT", "url": "AuditEvent/x"}}
        ],
    }
    assert c.post("/fhir", json=tx, headers={**hs, "Content-Type": FHIR}).status_code in (400, 405, 422)


def test_a_rolled_back_write_leaves_no_audit_row_of_a_change(app: Any) -> None:
    c = app.test_client()
    hs = _bearer(c, "sys")
    bundle = {
        "resourceType": "Bundle",
        "type": "transaction",
        "entry": [
            {"resource": {"resourceType": "Patient", "id": "rb"}, "request": {"method": "PUT", "url": "Patient/rb"}},
            {
                "resource": {"resourceType": "Patient", "id": "rb2"},
                "request": {"method": "PUT", "url": "Patient/rb2", "ifMatch": 'W/"9"'},
            },
        ],
    }
    assert c.post("/fhir", json=bundle, headers={**hs, "Content-Type": FHIR}).status_code == 412
    events = [e["resource"] for e in c.get("/fhir/AuditEvent?patient=rb", headers=hs).get_json().get("entry", [])]
    assert events == []


# -- consent for secondary use ------------------------------------------------------------------------------


def test_research_clients_do_not_see_patients_who_denied_research(app: Any) -> None:
    from server.auth.access import Access, reset_access, set_access
    from server.fhir.guard import research_excluded_patients

    c = app.test_client()
    hs = _bearer(c, "sys")
    consent = {
        "resourceType": "Consent",
        "status": "active",
        "scope": {"coding": [{"system": "http://terminology.hl7.org/CodeSystem/consentscope", "code": "research"}]},
        "category": [{"coding": [{"system": "http://loinc.org", "code": "57016-8"}]}],
        "patient": {"reference": "Patient/p2"},
        "policyRule": {"coding": [{"system": "http://terminology.hl7.org/CodeSystem/v3-ActCode", "code": "OPTOUT"}]},
        "provision": {"type": "deny"},
    }
    assert c.post("/fhir/Consent", json=consent, headers={**hs, "Content-Type": FHIR}).status_code == 201
    ctx = app.extensions["bigmed"]
    for access, expected in ((Access("research", None, purpose="research"), {"p2"}), (Access("care", None), set())):
        token = set_access(access)
        try:
            assert research_excluded_patients(ctx) == expected
        finally:
            reset_access(token)


# -- hardening ------------------------------------------------------------------------------------------------


def test_rate_limit_cors_and_security_headers(database_url: str) -> None:
    application = make_app(database_url, auth="smart", rate_limit=3, cors_origins=("https://ehr.example",))
    try:
        add_client(application.extensions["bigmed"].store, "sys", scopes="system/*.rs", jwks=rsa_key().jwks)
        c = application.test_client()
        h = _bearer(c, "sys", "system/*.rs")
        statuses = [c.get("/fhir/Patient", headers={**h, "Origin": "https://ehr.example"}) for _ in range(4)]
        assert [r.status_code for r in statuses] == [200, 200, 200, 429]
        assert 1 <= int(statuses[3].headers["Retry-After"]) <= 60
        ok = statuses[0]
        assert ok.headers["Access-Control-Allow-Origin"] == "https://ehr.example"
        assert ok.headers["X-Content-Type-Options"] == "nosniff" and ok.headers["Cache-Control"] == "no-store"
        other = c.get("/fhir/metadata", headers={"Origin": "https://evil.example"})
        assert "Access-Control-Allow-Origin" not in other.headers
    finally:
        application.extensions["bigmed"].store.close()
