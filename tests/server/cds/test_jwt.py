"""CDS client JWTs (https://cds-hooks.hl7.org/2.0/#trusting-cds-clients) on every /cds-services call, and CORS."""

from __future__ import annotations

import json
import time
import uuid
from pathlib import Path
from typing import Any

import jwt
import pytest
from cryptography.hazmat.primitives.asymmetric import ec

from server.auth.jose import public_jwk
from server.config import Config
from tests.conftest import make_app
from tests.server.cds.cdsutil import auth, sandbox_key, token

DISCOVERY = "/cds-services"
AUD = "http://testserver/cds-services"


@pytest.fixture
def client(sqlite_url: str) -> Any:
    app = make_app(sqlite_url)
    yield app.test_client()
    app.extensions["bigmed"].store.close()


def _status(client: Any, headers: dict[str, str]) -> int:
    resp = client.get(DISCOVERY, headers=headers)
    if resp.status_code != 200:
        assert resp.json["resourceType"] == "OperationOutcome"
    return int(resp.status_code)


def test_the_sandbox_key_verifies_with_open_auth(client: Any) -> None:
    assert _status(client, auth(DISCOVERY)) == 200
    assert _status(client, {"Authorization": f"Bearer {token([AUD, 'https://other'])}"}) == 200  # aud as an array


def test_every_failure_is_a_401(client: Any) -> None:
    resp = client.get(DISCOVERY)
    assert resp.status_code == 401 and "Bearer" in resp.headers["WWW-Authenticate"]
    assert _status(client, {"Authorization": f"Bearer {token('http://testserver/cds-services/other')}"}) == 401  # aud
    assert _status(client, {"Authorization": f"Bearer {token(AUD, exp=int(time.time()) - 600)}"}) == 401  # expired
    used = {"Authorization": f"Bearer {token(AUD)}"}
    assert _status(client, used) == 200
    assert _status(client, used) == 401  # jti replay
    now = int(time.time())
    claims = {"iss": "x", "aud": AUD, "exp": now + 60, "iat": now, "jti": str(uuid.uuid4())}
    no_kid = jwt.encode(claims, sandbox_key(), algorithm="ES384", headers={"typ": "JWT"})
    assert _status(client, {"Authorization": f"Bearer {no_kid}"}) == 401
    no_jti = jwt.encode(
        {k: v for k, v in claims.items() if k != "jti"},
        sandbox_key(),
        algorithm="ES384",
        headers={"typ": "JWT", "kid": "44823f3d-0b01-4a6c-a80e-b9d3e8a7226f"},
    )
    assert _status(client, {"Authorization": f"Bearer {no_jti}"}) == 401
    p256 = ec.generate_private_key(ec.SECP256R1())
    es256 = jwt.encode(claims, p256, algorithm="ES256", headers={"typ": "JWT", "kid": "k"})
    assert _status(client, {"Authorization": f"Bearer {es256}"}) == 401
    hs = jwt.encode(claims, "s" * 64, algorithm="HS384", headers={"typ": "JWT", "kid": "k"})
    assert _status(client, {"Authorization": f"Bearer {hs}"}) == 401
    path = "/cds-services/pgx-order-sign"
    assert client.post(path, json={}).status_code == 401  # service calls too
    assert client.post(path + "/feedback", json={}).status_code == 401


def test_smart_mode_trusts_configured_issuers_and_keys_only(sqlite_url: str, tmp_path: Path) -> None:
    key = ec.generate_private_key(ec.SECP384R1())
    jwks = tmp_path / "jwks.json"
    jwks.write_text(json.dumps({"keys": [public_jwk(key, kid="ehr-1", alg="ES384")]}))
    app = make_app(
        sqlite_url,
        auth="smart",
        cds_issuers=("https://ehr.example",),
        cds_jwks_file=str(jwks),
        cds_jku_allow=("https://ehr.example/jwks",),
    )
    client = app.test_client()
    assert _status(client, auth(DISCOVERY)) == 401  # the sandbox key: never in smart mode
    good = token(AUD, iss="https://ehr.example", key=key, kid="ehr-1")
    assert _status(client, {"Authorization": f"Bearer {good}"}) == 200
    other_iss = token(AUD, iss="https://evil.example", key=key, kid="ehr-1")
    assert _status(client, {"Authorization": f"Bearer {other_iss}"}) == 401
    bad_jku = token(AUD, iss="https://ehr.example", key=key, kid="ehr-1", headers={"jku": "https://evil.example/jwks"})
    resp = client.get(DISCOVERY, headers={"Authorization": f"Bearer {bad_jku}"})
    assert resp.status_code == 401 and "jku" in resp.json["issue"][0]["diagnostics"]
    app.extensions["bigmed"].store.close()


def test_jwt_check_can_be_off_only_in_the_sandbox(sqlite_url: str) -> None:
    app = make_app(sqlite_url, cds_jwt="off")
    assert app.test_client().get(DISCOVERY).status_code == 200
    app.extensions["bigmed"].store.close()
    with pytest.raises(ValueError):
        Config.from_env({"BIGMED_AUTH": "smart", "BIGMED_CDS_JWT": "off"})


def test_cors_for_browser_clients(client: Any) -> None:
    origin = {"Origin": "https://sandbox.cds-hooks.org"}
    pre = client.options(DISCOVERY, headers={**origin, "Access-Control-Request-Method": "GET"})
    assert pre.status_code == 200  # preflights carry no token
    assert pre.headers["Access-Control-Allow-Origin"] == "https://sandbox.cds-hooks.org"
    assert "Authorization" in pre.headers["Access-Control-Allow-Headers"]
    resp = client.get(DISCOVERY, headers={**origin, **auth(DISCOVERY)})
    assert resp.headers["Access-Control-Allow-Origin"] == "https://sandbox.cds-hooks.org"
