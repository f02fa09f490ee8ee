"""server.auth.jose: every refusal the SMART and CDS Hooks specs ask for, and the happy paths."""

from __future__ import annotations

import base64
import http.server
import json
import threading
import time
from collections.abc import Iterator
from typing import Any

import jwt
import pytest
from cryptography.hazmat.primitives import serialization

from server.auth.jose import (
    JwksCache,
    JwtError,
    ReplayGuard,
    StaticJwks,
    unverified_header,
    verify_jwt,
)
from tests.conftest import redis_url
from tests.server.auth.authutil import ec_key, rsa_key

AUD = "https://fhir.example/auth/token"


def _claims(**extra: Any) -> dict[str, Any]:
    now = int(time.time())
    out = {"iss": "c1", "sub": "c1", "aud": AUD, "exp": now + 120, "iat": now, "jti": f"j-{time.time_ns()}"}
    out.update(extra)
    return {k: v for k, v in out.items() if v is not None}


def _verify(token: str, **kw: Any) -> dict[str, Any]:
    keys = kw.pop("keys", StaticJwks({"keys": [rsa_key().jwk, ec_key().jwk]}))
    return verify_jwt(token, keys=keys, audience=kw.pop("audience", AUD), **kw)


@pytest.mark.parametrize("key", [rsa_key, ec_key], ids=["RS384", "ES384"])
def test_valid_tokens_verify(key: Any) -> None:
    claims = _verify(key().sign(_claims()), issuer="c1", subject="c1", max_future_s=300, replay=ReplayGuard())
    assert claims["iss"] == "c1" and claims["aud"] == AUD


def test_audience_may_be_an_array() -> None:
    assert _verify(rsa_key().sign(_claims(aud=["other", AUD])))["aud"] == ["other", AUD]
    with pytest.raises(JwtError, match="audience"):
        _verify(rsa_key().sign(_claims(aud=["other"])))


def test_wrong_audience() -> None:
    with pytest.raises(JwtError, match="audience"):
        _verify(rsa_key().sign(_claims(aud="https://elsewhere/token")))


def test_expired_and_missing_exp() -> None:
    with pytest.raises(JwtError, match="expired"):
        _verify(rsa_key().sign(_claims(exp=int(time.time()) - 120)))
    with pytest.raises(JwtError, match="'exp'"):
        _verify(rsa_key().sign(_claims(exp=None)))


def test_exp_too_far_ahead() -> None:
    token = rsa_key().sign(_claims(exp=int(time.time()) + 3600))
    assert _verify(token)["iss"] == "c1"  # no limit asked
    with pytest.raises(JwtError, match="300 seconds ahead"):
        _verify(token, max_future_s=300)


def test_iat_in_the_future() -> None:
    with pytest.raises(JwtError, match="iat"):
        _verify(rsa_key().sign(_claims(iat=int(time.time()) + 600)))


def test_replayed_jti_and_missing_jti() -> None:
    guard = ReplayGuard()
    token = rsa_key().sign(_claims(jti="once"))
    _verify(token, replay=guard)
    with pytest.raises(JwtError, match="replay"):
        _verify(token, replay=guard)
    with pytest.raises(JwtError, match="'jti'"):
        _verify(rsa_key().sign(_claims(jti=None)), replay=guard)
    # the same jti from another issuer is another token
    _verify(rsa_key().sign(_claims(jti="once", iss="c2", sub="c2")), replay=guard)


def test_replay_guard_on_redis() -> None:
    url = redis_url()
    a, b = ReplayGuard(url, namespace=f"test-{time.time_ns()}"), None
    b = ReplayGuard(url, namespace=a.namespace)  # another worker sharing the Redis
    exp = time.time() + 30
    assert a.check_and_remember("x", exp) is True
    assert b.check_and_remember("x", exp) is False


def test_replay_guard_fails_closed_without_redis() -> None:
    guard = ReplayGuard("redis://127.0.0.1:1/0", timeout=0.2)
    with pytest.raises(JwtError, match="unavailable"):
        guard.check_and_remember("x", time.time() + 30)


def _b64(obj: Any) -> str:
    return base64.urlsafe_b64encode(json.dumps(obj).encode()).rstrip(b"=").decode()


def test_alg_none_is_refused() -> None:
    token = f"{_b64({'alg': 'none', 'kid': 'rsa-1', 'typ': 'JWT'})}.{_b64(_claims())}."
    with pytest.raises(JwtError, match="none"):
        _verify(token)


def test_hs256_with_the_public_key_as_secret_is_refused() -> None:
    pem = (
        rsa_key()
        .private.public_key()
        .public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
    )
    header = {"alg": "HS256", "kid": "rsa-1", "typ": "JWT"}
    signing = f"{_b64(header)}.{_b64(_claims())}".encode()
    import hashlib
    import hmac

    sig = base64.urlsafe_b64encode(hmac.new(pem, signing, hashlib.sha256).digest()).rstrip(b"=").decode()
    with pytest.raises(JwtError, match="HS256"):
        _verify(f"{signing.decode()}.{sig}", algorithms=("RS384", "ES384", "HS256"))


def test_algorithm_outside_the_list_and_key_type_mismatch() -> None:
    with pytest.raises(JwtError, match="ES384"):
        _verify(ec_key().sign(_claims()), algorithms=("RS384",))
    # an EC key published under the RSA key's kid cannot verify an RS384 token
    ec_as_rsa = {**ec_key().jwk, "kid": "rsa-1"}
    with pytest.raises(JwtError, match="no registered key fits"):
        _verify(rsa_key().sign(_claims()), keys=StaticJwks({"keys": [ec_as_rsa]}))


def test_unregistered_key_and_unknown_kid() -> None:
    stranger = rsa_key("stranger")
    with pytest.raises(JwtError, match="no registered key fits"):
        _verify(stranger.sign(_claims()))
    # same kid as a registered key but another private key: the signature fails
    impostor = rsa_key("impostor")
    token = jwt.encode(_claims(), impostor.private, algorithm="RS384", headers={"kid": "rsa-1", "typ": "JWT"})
    with pytest.raises(JwtError, match="signature"):
        _verify(token)


def test_required_header_fields_and_typ() -> None:
    token = jwt.encode(_claims(), rsa_key().private, algorithm="RS384", headers={"kid": "rsa-1", "typ": None})
    with pytest.raises(JwtError, match="'typ'"):
        _verify(token)
    assert _verify(token, require_header=("alg", "kid"))["iss"] == "c1"
    with pytest.raises(JwtError, match="typ must be 'at\\+jwt'"):
        _verify(rsa_key().sign(_claims()), typ="at+jwt")


def test_issuer_and_subject() -> None:
    token = rsa_key().sign(_claims())
    assert _verify(token, issuer={"c1", "c9"})["iss"] == "c1"
    with pytest.raises(JwtError, match="iss"):
        _verify(token, issuer="c2")
    with pytest.raises(JwtError, match="sub"):
        _verify(token, subject="c2")


def test_garbage_and_errors_never_echo_the_token() -> None:
    for bad in ["", "abc", "a.b.c", "eyJhbGciOiJSUzM4NCJ9.e30"]:
        with pytest.raises(JwtError) as info:
            _verify(bad)
        assert bad not in str(info.value) or bad == ""
    token = rsa_key().sign(_claims(aud="x"))
    with pytest.raises(JwtError) as info:
        _verify(token)
    assert token not in str(info.value) and token.split(".")[2] not in str(info.value)


def test_private_keys_are_refused_in_a_jwks() -> None:
    private = json.loads(jwt.get_algorithm_by_name("RS384").to_jwk(rsa_key().private))
    with pytest.raises(JwtError, match="private"):
        StaticJwks({"keys": [private]})
    with pytest.raises(JwtError, match="JWK Set"):
        StaticJwks({"nokeys": []})


def test_unverified_header() -> None:
    assert unverified_header(rsa_key().sign(_claims(), jku="https://x/jwks"))["jku"] == "https://x/jwks"


@pytest.fixture
def jwks_server() -> Iterator[tuple[str, dict[str, Any]]]:
    state: dict[str, Any] = {"jwks": {"keys": [rsa_key().jwk]}, "hits": 0, "body": None}

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:  # BaseHTTPRequestHandler's name
            state["hits"] += 1
            body = state["body"] or json.dumps(state["jwks"]).encode()
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args: Any) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_port}/jwks.json", state
    server.shutdown()
    server.server_close()


def test_jwks_cache_fetches_caches_and_refetches_on_unknown_kid(jwks_server: tuple[str, dict[str, Any]]) -> None:
    url, state = jwks_server
    cache = JwksCache(allow_http=True, refetch_interval=0)
    source = cache.source(url)
    _verify(rsa_key().sign(_claims()), keys=source)
    _verify(rsa_key().sign(_claims()), keys=source)
    assert state["hits"] == 1  # cached
    state["jwks"] = {"keys": [rsa_key().jwk, ec_key().jwk]}  # key rotation: a new kid appears
    _verify(ec_key().sign(_claims()), keys=source)
    assert state["hits"] == 2
    slow = JwksCache(allow_http=True, refetch_interval=3600)
    slow.get(url)
    with pytest.raises(JwtError, match="no registered key fits"):
        _verify(rsa_key("nope").sign(_claims()), keys=slow.source(url))
    assert state["hits"] == 3  # no refetch within the interval


def test_jwks_cache_limits(jwks_server: tuple[str, dict[str, Any]]) -> None:
    url, state = jwks_server
    with pytest.raises(JwtError, match="https"):
        JwksCache().get(url)
    state["body"] = b"x" * 5000
    with pytest.raises(JwtError, match="larger than"):
        JwksCache(allow_http=True, max_bytes=1000).get(url)
    state["body"] = b"not json"
    with pytest.raises(JwtError, match="not JSON"):
        JwksCache(allow_http=True).get(url)
    with pytest.raises(JwtError, match="could not fetch"):
        JwksCache(allow_http=True, timeout=0.5).get("http://127.0.0.1:1/jwks.json")
