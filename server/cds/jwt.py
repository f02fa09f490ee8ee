"""Trusting CDS clients: the JWT of every CDS Hooks call (https://cds-hooks.hl7.org/2.0/#trusting-cds-clients).

Every request to ``/cds-services`` (discovery included) carries ``Authorization: Bearer <JWT>``
signed by the CDS client. On top of :func:`server.auth.jose.verify_jwt` (signature, algorithm
allow-list, header fields, ``exp``/``iat``, ``aud``, ``jti`` replay through
:class:`~server.auth.jose.ReplayGuard`: Redis when ``REDIS_URL`` is set, else in-process) this
module applies the CDS policy:

- header ``alg`` (ES384 or RS384), ``kid`` and ``typ`` (``JWT``) are required;
- ``iss`` must be in ``BIGMED_CDS_ISSUERS``; ``aud`` (string or array) must name the URL called
  (``BIGMED_BASE_URL`` + path, or the request's own URL); ``exp``, ``iat`` and ``jti`` are required;
- keys: a ``jku`` header must be in ``BIGMED_CDS_JKU_ALLOW`` and its JWKS is fetched (https,
  cached, :class:`~server.auth.jose.JwksCache`); without ``jku`` the static JWK Set of
  ``BIGMED_CDS_JWKS_FILE`` is used;
- the public CDS Hooks sandbox's key (``data/sandbox-jwks.json``, a copy of its published public
  JWKS; its private half is public too) is trusted **only with** ``BIGMED_AUTH=open``, whatever the
  ``iss``: in the sandbox such requests must verify, in production they never do;
- ``BIGMED_CDS_JWT=off`` (allowed only with ``BIGMED_AUTH=open``) skips the check for local trials.

Failures raise :class:`server.errors.Unauthorized` (401 OperationOutcome with ``WWW-Authenticate``).
"""

from __future__ import annotations

import functools
import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from server.auth.jose import JwksCache, JwtError, ReplayGuard, StaticJwks, check_jwks, unverified_header, verify_jwt
from server.config import Config
from server.errors import Unauthorized

__all__ = ["ALGORITHMS", "SANDBOX_JWKS", "CdsClientVerifier", "sandbox_jwks"]

ALGORITHMS = ("ES384", "RS384")
SANDBOX_JWKS = Path(__file__).resolve().parent / "data" / "sandbox-jwks.json"


@functools.cache
def sandbox_jwks() -> dict[str, Any]:
    data = json.loads(SANDBOX_JWKS.read_text(encoding="utf-8"))
    return check_jwks({"keys": data["keys"]}, "the vendored sandbox JWKS")


class CdsClientVerifier:
    """Verifies CDS client JWTs for one app (its config, JWKS cache and replay guard)."""

    def __init__(
        self, config: Config, *, jwks_cache: JwksCache | None = None, replay: ReplayGuard | None = None
    ) -> None:
        self.config = config
        self.cache = jwks_cache or JwksCache()
        self.replay = replay or ReplayGuard(config.redis_url, namespace="cds-jti")
        self.static: dict[str, Any] = {"keys": []}
        if config.cds_jwks_file:
            self.static = check_jwks(
                json.loads(Path(config.cds_jwks_file).read_text(encoding="utf-8")), config.cds_jwks_file
            )

    def _keys(self, header: Mapping[str, Any]) -> tuple[list[dict[str, Any]], bool]:
        """Candidate keys for ``header`` and whether they are the sandbox's."""
        jku = header.get("jku")
        kid = header.get("kid")
        if self.config.auth == "open":
            sandbox = [k for k in sandbox_jwks()["keys"] if k.get("kid") == kid]
            if sandbox:
                return sandbox, True
        if jku is not None:
            if not isinstance(jku, str) or jku not in self.config.cds_jku_allow:
                raise JwtError("the JWT's jku is not an allowed JWKS URL (BIGMED_CDS_JKU_ALLOW)")
            return self.cache.source(jku).keys_for(header), False
        return StaticJwks(self.static).keys_for(header), False

    def verify(self, authorization: str | None, audiences: list[str]) -> dict[str, Any] | None:
        """The claims of the request's JWT; raises Unauthorized. None when the check is off."""
        if self.config.cds_jwt == "off":
            return None
        scheme, _, token = (authorization or "").partition(" ")
        if scheme.lower() != "bearer" or not token.strip():
            raise _unauthorized("CDS Hooks calls need Authorization: Bearer <JWT signed by the CDS client>")
        token = token.strip()
        try:
            header = unverified_header(token)
            keys, sandbox = self._keys(header)
            issuers = None if sandbox else self.config.cds_issuers
            if not sandbox and not issuers:
                raise JwtError("no CDS client issuer is trusted (BIGMED_CDS_ISSUERS is empty)")
            return verify_jwt(
                token,
                keys=lambda _header: keys,
                algorithms=ALGORITHMS,
                audience=audiences,
                issuer=issuers,
                require_header=("alg", "kid", "typ"),
                typ="JWT",
                require_claims=("iss", "aud", "exp", "iat", "jti"),
                replay=self.replay,
            )
        except JwtError as exc:
            raise _unauthorized(f"The CDS client JWT is not valid: {exc}") from None


def _unauthorized(message: str) -> Unauthorized:
    return Unauthorized(message, headers={"WWW-Authenticate": 'Bearer realm="bigmed-cds"'})
