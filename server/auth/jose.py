"""JWT verification primitives on PyJWT, shared by the token endpoint and CDS Hooks.

Implements the checks that SMART Backend Services
(https://hl7.org/fhir/smart-app-launch/backend-services.html#authenticate-with-a-signed-jwt,
client assertions per RFC 7523) and CDS Hooks
(https://cds-hooks.hl7.org/2.0/#trusting-cds-clients) ask of a signed JWT:

* the signature, with a key chosen by the header's ``kid`` from a JWKS (a static one, or one
  fetched from a URL by :class:`JwksCache`: timeout, size cap, TTL, refetch on an unknown
  ``kid`` at most once a minute);
* the algorithm must be in an allow-list of asymmetric algorithms (default RS384, ES384):
  ``none`` and every HMAC algorithm are refused before any key is touched, so "HS256 with
  the public key as the secret" cannot work; the key type must fit the algorithm;
* required header fields (``alg``, ``kid``, ``typ`` by default) and an expected ``typ``;
* ``exp`` required and in the future, ``nbf``/``iat`` not in the future, ``exp`` at most
  ``max_future_s`` ahead (5 minutes for client assertions), a small clock ``leeway``;
* ``aud`` (a string or an array) must contain the expected audience; ``iss``/``sub`` must match
  (a string or a collection of accepted values);
* ``jti`` never seen before (:class:`ReplayGuard`: Redis ``SET NX EX`` when a Redis URL is
  given, else an in-process dict with expiry; a Redis failure fails closed).

Every failure raises :class:`JwtError` whose message says what failed and never contains the
token or a key. Policy on top (which clients exist, ``jku`` and ``iss`` allow-lists) belongs to
the callers: ``server/auth/token.py`` and ``server/cds/``.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable, Collection, Iterable, Mapping, Sequence
from typing import Any, Protocol, runtime_checkable

import jwt
import redis
import requests
from jwt import PyJWK

__all__ = [
    "ASYMMETRIC_ALGORITHMS",
    "JwksCache",
    "JwksSource",
    "JwtError",
    "ReplayGuard",
    "StaticJwks",
    "UrlJwks",
    "check_jwks",
    "public_jwk",
    "sign_jwt",
    "unverified_claims",
    "unverified_header",
    "verify_jwt",
]

#: the algorithms this module can ever accept (callers narrow it); never "none" nor HS*.
ASYMMETRIC_ALGORITHMS = frozenset({"RS256", "RS384", "RS512", "ES256", "ES384", "ES512", "PS256", "PS384", "PS512"})
_KTY_FOR_ALG = {"RS": "RSA", "PS": "RSA", "ES": "EC"}
_CURVE_FOR_ALG = {"ES256": "P-256", "ES384": "P-384", "ES512": "P-521"}


class JwtError(Exception):
    """A JWT that is not acceptable; the message says why (never echoes the token)."""


class ReplayUnavailable(JwtError):
    """The replay store cannot be reached: the token is refused (fail closed)."""


# -- keys --------------------------------------------------------------------------------


@runtime_checkable
class JwksSource(Protocol):
    """Where verification keys come from: the candidate JWKs for a JWT header."""

    def keys_for(self, header: Mapping[str, Any]) -> list[dict[str, Any]]: ...


def check_jwks(jwks: Any, where: str = "JWKS") -> dict[str, Any]:
    """Validate the shape of a JWK Set (``{"keys": [...]}``) and return it; no private keys allowed."""
    if not isinstance(jwks, dict) or not isinstance(jwks.get("keys"), list):
        raise JwtError(f"{where} is not a JWK Set (an object with a 'keys' array)")
    for i, key in enumerate(jwks["keys"]):
        if not isinstance(key, dict) or not isinstance(key.get("kty"), str):
            raise JwtError(f"{where}: keys[{i}] is not a JWK (no 'kty')")
        if "d" in key or key["kty"] == "oct":
            raise JwtError(f"{where}: keys[{i}] is a private or symmetric key; register public keys only")
    return jwks


def _select(keys: Iterable[dict[str, Any]], header: Mapping[str, Any]) -> list[dict[str, Any]]:
    kid = header.get("kid")
    return [k for k in keys if kid is None or k.get("kid") == kid]


class StaticJwks:
    """A fixed JWK Set (e.g. registered with a client)."""

    def __init__(self, jwks: Mapping[str, Any]) -> None:
        self.jwks = check_jwks(dict(jwks))

    def keys_for(self, header: Mapping[str, Any]) -> list[dict[str, Any]]:
        return _select(self.jwks["keys"], header)


class JwksCache:
    """Fetches JWK Sets from URLs with ``requests``: timeout, size cap, TTL cache (thread-safe).

    ``allow_http`` permits plain-http URLs (tests, localhost); production JWKS URLs are https.
    An unknown ``kid`` triggers one refetch, at most every ``refetch_interval`` seconds per URL,
    so a stream of bogus kids cannot make us hammer the key server.
    """

    def __init__(
        self,
        *,
        ttl: float = 300.0,
        timeout: float = 5.0,
        max_bytes: int = 256 * 1024,
        refetch_interval: float = 60.0,
        allow_http: bool = False,
        session: requests.Session | None = None,
    ) -> None:
        self.ttl = ttl
        self.timeout = timeout
        self.max_bytes = max_bytes
        self.refetch_interval = refetch_interval
        self.allow_http = allow_http
        self.session = session or requests.Session()
        self._lock = threading.Lock()
        self._entries: dict[str, tuple[float, float, dict[str, Any]]] = {}  # url -> (expires, fetched, jwks)

    def _fetch(self, url: str) -> dict[str, Any]:
        if not (url.startswith("https://") or (self.allow_http and url.startswith("http://"))):
            raise JwtError("JWKS URL must use https")
        try:
            with self.session.get(
                url, timeout=self.timeout, stream=True, headers={"Accept": "application/json"}
            ) as resp:
                if resp.status_code != 200:
                    raise JwtError(f"JWKS URL {url} answered HTTP {resp.status_code}")
                body = bytearray()
                for chunk in resp.iter_content(16384):
                    body.extend(chunk)
                    if len(body) > self.max_bytes:
                        raise JwtError(f"JWKS at {url} is larger than {self.max_bytes} bytes")
        except requests.RequestException as exc:
            raise JwtError(f"could not fetch the JWKS at {url}: {type(exc).__name__}") from None
        try:
            data = json.loads(bytes(body))
        except ValueError:
            raise JwtError(f"JWKS at {url} is not JSON") from None
        return check_jwks(data, f"JWKS at {url}")

    def get(self, url: str, *, refresh: bool = False) -> dict[str, Any]:
        """The JWK Set at ``url``, from the cache while fresh (``refresh``: refetch if allowed)."""
        now = time.monotonic()
        with self._lock:
            entry = self._entries.get(url)
        if entry is not None:
            expires, fetched, jwks = entry
            if now < expires and not (refresh and now - fetched >= self.refetch_interval):
                return jwks
        jwks = self._fetch(url)
        with self._lock:
            self._entries[url] = (now + self.ttl, now, jwks)
        return jwks

    def source(self, url: str) -> UrlJwks:
        return UrlJwks(self, url)


class UrlJwks:
    """The keys published at one URL, through a :class:`JwksCache`."""

    def __init__(self, cache: JwksCache, url: str) -> None:
        self.cache = cache
        self.url = url

    def keys_for(self, header: Mapping[str, Any]) -> list[dict[str, Any]]:
        found = _select(self.cache.get(self.url)["keys"], header)
        if not found and header.get("kid") is not None:
            found = _select(self.cache.get(self.url, refresh=True)["keys"], header)
        return found


KeySource = JwksSource | Callable[[dict[str, Any]], Iterable[Mapping[str, Any] | PyJWK]]


# -- replay ------------------------------------------------------------------------------


class ReplayGuard:
    """Remembers ``jti`` values until their token expires: a second use is refused.

    With ``redis_url``: ``SET key 1 NX EX ttl`` in Redis, shared by every worker and machine;
    a Redis error raises :class:`ReplayUnavailable` (fail closed). Without: an in-process dict
    (one worker's memory; run Redis when several workers verify the same kind of token).
    ``namespace`` keeps token endpoint and CDS Hooks ``jti`` spaces apart.
    """

    def __init__(self, redis_url: str | None = None, *, namespace: str = "jti", timeout: float = 0.5) -> None:
        self.namespace = namespace
        self._redis = (
            redis.Redis.from_url(redis_url, socket_timeout=timeout, socket_connect_timeout=timeout)
            if redis_url
            else None
        )
        self._seen: dict[str, float] = {}
        self._lock = threading.Lock()
        self._last_sweep = time.time()

    def check_and_remember(self, jti: str, exp: float) -> bool:
        """True (and remembered) when ``jti`` is new; False when it was seen before its ``exp``."""
        now = time.time()
        ttl = max(1, int(exp - now) + 1)
        key = f"bigmed:{self.namespace}:{jti}"
        if self._redis is not None:
            try:
                return bool(self._redis.set(key, b"1", nx=True, ex=ttl))
            except redis.RedisError as exc:
                raise ReplayUnavailable(f"the replay check is unavailable ({type(exc).__name__})") from None
        with self._lock:
            if now - self._last_sweep > 60:
                self._seen = {k: v for k, v in self._seen.items() if v > now}
                self._last_sweep = now
            if self._seen.get(key, 0) > now:
                return False
            self._seen[key] = now + ttl
            return True


# -- verification ------------------------------------------------------------------------


def unverified_header(token: str) -> dict[str, Any]:
    """The JOSE header of ``token`` without verifying anything (to read ``kid``/``jku`` first)."""
    if not isinstance(token, str) or token.count(".") != 2:
        raise JwtError("not a compact JWS (three dot-separated parts)")
    try:
        header = jwt.get_unverified_header(token)
    except jwt.PyJWTError:
        raise JwtError("the JWT header is not valid base64url JSON") from None
    if not isinstance(header, dict):
        raise JwtError("the JWT header is not a JSON object")
    return header


def unverified_claims(token: str) -> dict[str, Any]:
    """The claims of ``token`` without verifying anything (to find whose keys verify it)."""
    unverified_header(token)
    try:
        claims = jwt.decode(token, options={"verify_signature": False})
    except jwt.PyJWTError:
        raise JwtError("the JWT payload is not valid base64url JSON") from None
    if not isinstance(claims, dict):
        raise JwtError("the JWT payload is not a JSON object")
    return claims


def _candidate_keys(keys: KeySource, header: dict[str, Any]) -> list[Mapping[str, Any] | PyJWK]:
    if isinstance(keys, JwksSource):
        return list(keys.keys_for(header))
    return list(keys(header))


def _as_pyjwk(key: Mapping[str, Any] | PyJWK, alg: str) -> PyJWK | None:
    """The key as a PyJWK for ``alg``, or None when its type, curve or own ``alg`` do not fit."""
    if isinstance(key, PyJWK):
        return key if key.algorithm_name == alg else None
    if key.get("alg") not in (None, alg) or key.get("use") not in (None, "sig"):
        return None
    if key.get("kty") != _KTY_FOR_ALG.get(alg[:2]):
        return None
    if alg in _CURVE_FOR_ALG and key.get("crv") != _CURVE_FOR_ALG[alg]:
        return None
    try:
        return PyJWK(dict(key), algorithm=alg)
    except jwt.PyJWTError:
        return None


def _matches(value: Any, accepted: str | Collection[str]) -> bool:
    if isinstance(accepted, str):
        return bool(value == accepted)
    return isinstance(value, str) and value in accepted


def verify_jwt(
    token: str,
    *,
    keys: KeySource,
    algorithms: Sequence[str] = ("RS384", "ES384"),
    audience: str | Collection[str] | None,
    issuer: str | Collection[str] | None = None,
    subject: str | None = None,
    require_header: Sequence[str] = ("alg", "kid", "typ"),
    typ: str | None = None,
    require_claims: Sequence[str] = ("exp",),
    max_future_s: int | None = None,
    leeway: int = 30,
    replay: ReplayGuard | None = None,
) -> dict[str, Any]:
    """Verify ``token`` and return its claims, or raise :class:`JwtError` saying what failed.

    ``audience`` None skips the ``aud`` check (only for tokens that carry none by design);
    ``typ`` compares case-insensitively (``JWT``, ``at+jwt``); with ``replay`` a ``jti`` is
    required and accepted once (namespaced by issuer).
    """
    allowed = [a for a in algorithms if a in ASYMMETRIC_ALGORITHMS]
    header = unverified_header(token)
    for name in require_header:
        if not header.get(name):
            raise JwtError(f"the JWT header has no '{name}'")
    alg = header.get("alg")
    if not isinstance(alg, str) or alg.lower() == "none":
        raise JwtError("unsigned JWTs (alg 'none') are not accepted")
    if alg not in allowed:
        raise JwtError(f"algorithm '{alg}' is not accepted (use one of {', '.join(allowed)})")
    if typ is not None and str(header.get("typ", "")).lower() != typ.lower():
        raise JwtError(f"the JWT header typ must be '{typ}'")
    if "crit" in header:
        raise JwtError("JWT header 'crit' extensions are not supported")
    candidates = [k for k in (_as_pyjwk(c, alg) for c in _candidate_keys(keys, header)) if k is not None]
    if not candidates:
        kid = header.get("kid")
        raise JwtError(f"no registered key fits (kid '{kid}', alg {alg})" if kid else f"no registered {alg} key")
    options: dict[str, Any] = {
        "require": list(require_claims),
        "verify_aud": audience is not None,
        "verify_iss": False,
        "verify_sub": False,
        "verify_jti": False,
    }
    claims: dict[str, Any] | None = None
    for key in candidates:
        try:
            claims = jwt.decode(
                token,
                key=key,
                algorithms=[alg],
                audience=audience,
                options=options,  # type: ignore[arg-type]  # PyJWT's Options TypedDict
                leeway=leeway,
            )
            break
        except jwt.InvalidSignatureError:
            continue
        except jwt.ExpiredSignatureError:
            raise JwtError("the JWT has expired (exp)") from None
        except jwt.ImmatureSignatureError:
            raise JwtError("the JWT is not valid yet (nbf or iat in the future)") from None
        except jwt.InvalidAudienceError:
            raise JwtError("the JWT audience (aud) is not this endpoint") from None
        except jwt.InvalidIssuedAtError:
            raise JwtError("the JWT iat is not a time in the past") from None
        except jwt.MissingRequiredClaimError as exc:
            raise JwtError(f"the JWT has no '{exc.claim}' claim") from None
        except jwt.PyJWTError as exc:
            raise JwtError(f"the JWT is malformed ({type(exc).__name__})") from None
    if claims is None:
        raise JwtError("the JWT signature does not verify with the registered key") from None
    now = time.time()
    exp = claims.get("exp")
    if not isinstance(exp, int | float):
        if "exp" in require_claims:
            raise JwtError("the JWT exp is not a number")
    elif max_future_s is not None and exp > now + max_future_s + leeway:
        raise JwtError(f"the JWT exp is more than {max_future_s} seconds ahead")
    iat = claims.get("iat")
    if isinstance(iat, int | float) and iat > now + leeway:
        raise JwtError("the JWT iat is in the future")
    if issuer is not None and not _matches(claims.get("iss"), issuer):
        raise JwtError("the JWT issuer (iss) is not accepted")
    if subject is not None and claims.get("sub") != subject:
        raise JwtError("the JWT subject (sub) does not match")
    if replay is not None:
        jti = claims.get("jti")
        if not isinstance(jti, str) or not jti:
            raise JwtError("the JWT has no 'jti' claim")
        expiry = float(exp) if isinstance(exp, int | float) else now + 300
        if not replay.check_and_remember(f"{claims.get('iss')}|{jti}", expiry):
            raise JwtError("the JWT jti was already used (replay)")
    return claims


# -- signing (the server's own tokens; tests' client assertions) ---------------------------


def sign_jwt(
    claims: Mapping[str, Any], private_key: Any, *, alg: str, kid: str, typ: str = "JWT", **header: Any
) -> str:
    """A compact JWS of ``claims`` signed with ``private_key`` (a cryptography key or PEM bytes)."""
    if alg not in ASYMMETRIC_ALGORITHMS:
        raise JwtError(f"algorithm '{alg}' is not an asymmetric signature algorithm")
    return jwt.encode(dict(claims), private_key, algorithm=alg, headers={"kid": kid, "typ": typ, **header})


def public_jwk(private_or_public_key: Any, *, kid: str, alg: str) -> dict[str, Any]:
    """The public JWK of a cryptography RSA or EC key, with ``kid``, ``alg`` and ``use: sig``."""
    key = private_or_public_key
    public = key.public_key() if hasattr(key, "private_numbers") else key
    algo = jwt.get_algorithm_by_name(alg)
    jwk = json.loads(algo.to_jwk(public))
    jwk.update({"kid": kid, "alg": alg, "use": "sig"})
    return dict(jwk)
