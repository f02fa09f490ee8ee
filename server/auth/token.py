"""The token endpoint and bearer-token checks of SMART Backend Services.

https://hl7.org/fhir/smart-app-launch/backend-services.html: a client posts
``grant_type=client_credentials``, ``scope`` and a ``client_assertion`` (RFC 7523
private_key_jwt, ``client_assertion_type=urn:ietf:params:oauth:client-assertion-type:jwt-bearer``)
to ``POST /auth/token``. The assertion must be RS384 or ES384, signed by a key of the client's
registration (its JWK Set, or the set at its JWKS URL; a ``jku`` header, when present, must be
exactly that URL), ``iss`` = ``sub`` = the client id, ``aud`` = the token endpoint URL, ``exp``
at most 5 minutes ahead, a ``jti`` never used before. The answer is a short-lived
(``BIGMED_TOKEN_TTL``) RS384 JWT (``typ: at+jwt``, RFC 9068 claims) carrying the granted
scope = requested ∩ registered, and for patient-level clients the patient. Failures are OAuth 2
JSON errors (RFC 6749 §5.2): ``invalid_request``, ``invalid_client`` (401), ``invalid_grant``,
``unauthorized_client``, ``unsupported_grant_type``, ``invalid_scope``.

:func:`authenticate` turns a bearer token into an :class:`~server.auth.access.Access`; the
registry is read on every call, so a revoked client or narrowed scopes apply at once (a token's
grant is re-intersected with the current registration).
"""

from __future__ import annotations

import threading
import time
import uuid
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from server.auth.access import Access
from server.auth.clients import Client, get_client
from server.auth.jose import (
    JwksCache,
    JwtError,
    ReplayGuard,
    StaticJwks,
    sign_jwt,
    unverified_claims,
    unverified_header,
    verify_jwt,
)
from server.auth.keys import ALG, SigningKey, load_signing_key
from server.auth.scopes import Grant, ScopeError, granular_refusal, parse_scopes
from server.config import Config
from server.store.base import Store

__all__ = ["ASSERTION_TYPE", "OAuthError", "TokenService"]

ASSERTION_TYPE = "urn:ietf:params:oauth:client-assertion-type:jwt-bearer"
ASSERTION_ALGORITHMS = ("RS384", "ES384")
MAX_ASSERTION_LIFETIME = 300


class OAuthError(Exception):
    """An OAuth 2 error response (RFC 6749 §5.2)."""

    def __init__(self, error: str, description: str, status: int = 400) -> None:
        super().__init__(description)
        self.error = error
        self.description = description
        self.status = status

    def body(self) -> dict[str, str]:
        return {"error": self.error, "error_description": self.description}


@dataclass
class TokenService:
    """Issues and checks access tokens for one app (created by ``server/api/auth.py``)."""

    store: Store
    config: Config
    replay: ReplayGuard
    jwks_cache: JwksCache = field(default_factory=JwksCache)
    _key: SigningKey | None = None
    _lock: threading.Lock = field(default_factory=threading.Lock)

    @classmethod
    def create(cls, store: Store, config: Config) -> TokenService:
        return cls(store, config, ReplayGuard(config.redis_url, namespace="client-assertion"))

    @property
    def key(self) -> SigningKey:
        if self._key is None:
            with self._lock:
                if self._key is None:
                    self._key = load_signing_key(self.store, self.config.token_key_file)
        return self._key

    # -- the token endpoint -------------------------------------------------------------

    def _client_keys(self, client: Client, header: Mapping[str, Any]) -> StaticJwks | Any:
        if client.jwks_url:
            jku = header.get("jku")
            if jku is not None and jku != client.jwks_url:
                raise OAuthError("invalid_client", "the assertion's jku is not the client's registered JWKS URL", 401)
            return self.jwks_cache.source(client.jwks_url)
        if header.get("jku") is not None:
            raise OAuthError("invalid_client", "jku is not accepted: this client registered its keys, not a URL", 401)
        return StaticJwks(client.jwks or {"keys": []})

    def issue(self, form: Mapping[str, str], token_url: str, audience: str) -> dict[str, Any]:
        """Answer a token request (form fields) or raise :class:`OAuthError`."""
        grant_type = form.get("grant_type")
        if grant_type is None:
            raise OAuthError("invalid_request", "grant_type is required (client_credentials)")
        if grant_type != "client_credentials":
            raise OAuthError("unsupported_grant_type", f"grant_type '{grant_type}' is not supported")
        if form.get("client_assertion_type") != ASSERTION_TYPE:
            raise OAuthError("invalid_request", f"client_assertion_type must be {ASSERTION_TYPE}")
        assertion = form.get("client_assertion")
        if not assertion:
            raise OAuthError("invalid_request", "client_assertion (a signed JWT) is required")
        if not form.get("scope"):
            raise OAuthError("invalid_scope", "scope is required, e.g. system/Observation.rs")
        try:
            requested = parse_scopes(form["scope"])
        except ScopeError as exc:
            raise OAuthError("invalid_scope", str(exc)) from None
        granular = [str(s) for s in requested if s.query is not None]
        if granular:
            raise OAuthError("invalid_scope", granular_refusal(granular))
        try:
            header = unverified_header(assertion)
            iss = unverified_claims(assertion).get("iss")
        except JwtError as exc:
            raise OAuthError("invalid_client", f"client_assertion: {exc}", 401) from None
        client_id = iss if isinstance(iss, str) else None
        client = get_client(self.store, client_id) if client_id else None
        if client is None:
            raise OAuthError("invalid_client", "the assertion's iss is not a registered client", 401)
        if not client.active:
            raise OAuthError("invalid_client", f"client '{client_id}' was revoked", 401)
        try:
            verify_jwt(
                assertion,
                keys=self._client_keys(client, header),
                algorithms=ASSERTION_ALGORITHMS,
                audience=token_url,
                issuer=client.client_id,
                subject=client.client_id,
                require_header=("alg", "kid", "typ"),
                typ="JWT",
                require_claims=("exp", "iss", "sub", "aud", "jti"),
                max_future_s=MAX_ASSERTION_LIFETIME,
                replay=self.replay,
            )
        except JwtError as exc:
            raise OAuthError("invalid_client", f"client_assertion: {exc}", 401) from None
        granted = client.grant.intersect(requested)
        if not granted.scopes:
            raise OAuthError("invalid_scope", f"none of the requested scopes is registered for '{client_id}'")
        now = int(time.time())
        ttl = self.config.token_ttl
        payload: dict[str, Any] = {
            "iss": audience.rsplit("/fhir", 1)[0] + "/auth",
            "sub": client.client_id,
            "client_id": client.client_id,
            "aud": audience,
            "iat": now,
            "exp": now + ttl,
            "jti": uuid.uuid4().hex,
            "scope": str(granted),
        }
        if client.patient:
            payload["patient"] = client.patient
        token = sign_jwt(payload, self.key.private, alg=ALG, kid=self.key.kid, typ="at+jwt")
        answer: dict[str, Any] = {
            "access_token": token,
            "token_type": "bearer",
            "expires_in": ttl,
            "scope": str(granted),
        }
        if client.patient:
            answer["patient"] = client.patient
        return answer

    # -- bearer tokens ------------------------------------------------------------------

    def authenticate(self, token: str, audience: str) -> Access:
        """The Access of a valid access token; :class:`JwtError` when it is not one (-> 401)."""
        claims = verify_jwt(
            token,
            keys=StaticJwks(self.key.jwks),
            algorithms=(ALG,),
            audience=audience,
            require_header=("alg", "kid", "typ"),
            typ="at+jwt",
            require_claims=("exp", "iat", "sub", "scope", "jti"),
            leeway=5,
        )
        client = get_client(self.store, str(claims["sub"]))
        if client is None or not client.active:
            raise JwtError("the client of this token is not registered or was revoked")
        try:
            grant = client.grant.intersect(Grant.of(str(claims["scope"])).scopes)
        except ScopeError:
            raise JwtError("the token's scope is malformed") from None
        return Access(client.client_id, grant, client.patient, token_id=str(claims["jti"]), purpose=client.purpose)
