"""Test keys and client assertions, generated with ``cryptography`` (never the shared sandbox keys)."""

from __future__ import annotations

import time
import uuid
from dataclasses import dataclass
from functools import cache
from typing import Any

from cryptography.hazmat.primitives.asymmetric import ec, rsa

from server.auth.jose import public_jwk, sign_jwt


@dataclass(frozen=True)
class KeyPair:
    private: Any
    kid: str
    alg: str

    @property
    def jwk(self) -> dict[str, Any]:
        return public_jwk(self.private, kid=self.kid, alg=self.alg)

    @property
    def jwks(self) -> dict[str, Any]:
        return {"keys": [self.jwk]}

    def sign(self, claims: dict[str, Any], **header: Any) -> str:
        return sign_jwt(claims, self.private, alg=self.alg, kid=self.kid, **header)


@cache
def rsa_key(kid: str = "rsa-1") -> KeyPair:
    return KeyPair(rsa.generate_private_key(public_exponent=65537, key_size=2048), kid, "RS384")


@cache
def ec_key(kid: str = "ec-1") -> KeyPair:
    return KeyPair(ec.generate_private_key(ec.SECP384R1()), kid, "ES384")


def assertion(key: KeyPair, client_id: str, aud: str, *, lifetime: int = 240, **extra: Any) -> str:
    """A private_key_jwt client assertion (SMART Backend Services)."""
    now = int(time.time())
    claims = {"iss": client_id, "sub": client_id, "aud": aud, "exp": now + lifetime, "iat": now}
    claims["jti"] = uuid.uuid4().hex
    claims.update(extra)
    return key.sign({k: v for k, v in claims.items() if v is not None})


def bearer(
    client: Any, client_id: str, scope: str, *, base: str = "http://testserver", key: KeyPair | None = None
) -> dict[str, str]:
    """The Authorization header of a token got with a client assertion (``key``, default :func:`rsa_key`)."""
    resp = client.post(
        "/auth/token",
        data={
            "grant_type": "client_credentials",
            "scope": scope,
            "client_assertion_type": "urn:ietf:params:oauth:client-assertion-type:jwt-bearer",
            "client_assertion": assertion(key or rsa_key(), client_id, f"{base}/auth/token"),
        },
    )
    assert resp.status_code == 200, resp.get_json()
    return {"Authorization": f"Bearer {resp.get_json()['access_token']}"}
