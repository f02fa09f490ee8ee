"""The server's access-token signing key (RS384), and its public JWK Set.

SMART Backend Services leaves the access token format to the server
(https://hl7.org/fhir/smart-app-launch/backend-services.html#issue-access-token); ours are JWTs
signed RS384 (RSA verification is the cheapest of the allowed algorithms, and every /fhir request
verifies one). The key is the PEM file ``BIGMED_TOKEN_KEY_FILE`` when set; otherwise a 3072-bit
key generated on first use and kept in the database (``auth_key``), so every worker and
machine sharing the database signs and verifies with the same key and tokens survive restarts.
Keep database backups as secret as that key, or set ``BIGMED_TOKEN_KEY_FILE``.
"""

from __future__ import annotations

import hashlib
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

from server.auth.jose import public_jwk
from server.store.base import Store

__all__ = ["ALG", "SigningKey", "load_signing_key"]

ALG = "RS384"


@dataclass(frozen=True)
class SigningKey:
    kid: str
    private: Any  # cryptography RSAPrivateKey

    @property
    def jwk(self) -> dict[str, Any]:
        return public_jwk(self.private, kid=self.kid, alg=ALG)

    @property
    def jwks(self) -> dict[str, Any]:
        return {"keys": [self.jwk]}


def _kid(private: Any) -> str:
    der = private.public_key().public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
    return hashlib.sha256(der).hexdigest()[:16]


def _from_pem(pem: bytes) -> Any:
    key = serialization.load_pem_private_key(pem, password=None)
    if not isinstance(key, rsa.RSAPrivateKey) or key.key_size < 2048:
        raise ValueError("the token signing key must be an RSA private key of at least 2048 bits")
    return key


def load_signing_key(store: Store, key_file: str | None = None) -> SigningKey:
    """The signing key: from ``key_file``, else the database's (generated once, under a lock)."""
    if key_file:
        private = _from_pem(Path(key_file).read_bytes())
        return SigningKey(_kid(private), private)
    rows = store.query("SELECT private_pem FROM auth_key WHERE alg = ? ORDER BY created DESC", (ALG,))
    if not rows:
        with store.transaction() as tx:
            tx.lock("auth_key")
            rows = tx.query("SELECT private_pem FROM auth_key WHERE alg = ? ORDER BY created DESC", (ALG,))
            if not rows:
                private = rsa.generate_private_key(public_exponent=65537, key_size=3072)
                pem = private.private_bytes(
                    serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
                ).decode()
                tx.execute_many(
                    "INSERT INTO auth_key (kid, alg, private_pem, created) VALUES (?, ?, ?, ?)",
                    [(_kid(private), ALG, pem, time.time())],
                )
                return SigningKey(_kid(private), private)
    private = _from_pem(str(rows[0][0]).encode())
    return SigningKey(_kid(private), private)
