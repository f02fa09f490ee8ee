"""Cached GET answers and conditional requests (http://hl7.org/fhir/R4/http.html#cread, RFC 9110 §13).

Wraps a read or search route: the cache key is computed from the request, the authorization
context (client, grant, patient: :attr:`server.auth.access.Access.cache_scope`) and the current
generations of the types the answer depends on *before* the answer is produced (see
:mod:`server.cache` for why that is never stale); a hit is served as stored. ``Cache-Control:
no-cache`` (or ``Pragma: no-cache``) skips the lookup. ``If-None-Match`` and
``If-Modified-Since`` are answered with 304 from the ETag and Last-Modified of the answer,
cached or fresh. Search answers get a weak ETag hashed from their body.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Iterable, Mapping, Sequence
from email.utils import parsedate_to_datetime
from typing import Any

from flask import Response, request

from server.api.http import FHIR_JSON, ctx, fhir_base, negotiate
from server.auth.access import current_access
from server.cache import CachedAnswer, QueryCache, request_key

__all__ = ["ALL_TYPES", "KEY_ENVIRON", "answer_key", "bypassed", "cached", "not_modified", "search_depends_on"]

#: depend on every type (answers that read several types: chains, _has, includes, compartments)
ALL_TYPES = ("*",)
#: environ key where the cache front leaves the key it computed for a request it could not answer
#: (a miss): the route uses it instead of computing it again (same function, same inputs)
KEY_ENVIRON = "bigmed.cache_key"


def search_depends_on(type_: str, names: Iterable[str]) -> Sequence[str]:
    """The types a type-level search with parameters ``names`` reads: its own, or all when it
    chains, reverse-chains or includes."""
    for key in names:
        name = key.partition(":")[0]
        if "." in key or name in ("_has", "_include", "_revinclude") or key.startswith("_has:"):
            return ALL_TYPES
    return [type_]


def answer_key(
    cache: QueryCache,
    types: Sequence[str],
    path: str,
    params: list[tuple[str, str]],
    media: str,
    base: str,
    env: Mapping[str, Any],
    scope: str,
) -> str:
    """The cache key of a GET: path, sorted parameters, media type, base URL, ``Prefer`` handling and
    the authorization scope, at the current generations of ``types`` (see :meth:`QueryCache.key`).
    One function for the route (:func:`cached`) and the WSGI front (``server/api/cache_front.py``):
    both must name an answer alike."""
    handling = env.get("HTTP_PREFER", "").replace(" ", "").lower()  # handling=strict: another answer
    return cache.key(types, request_key([path, params, media, base, handling, scope]))


def _control(env: Mapping[str, Any]) -> str:
    return f"{env.get('HTTP_CACHE_CONTROL', '')},{env.get('HTTP_PRAGMA', '')}".lower()


def bypassed(env: Mapping[str, Any]) -> bool:
    """``Cache-Control``/``Pragma`` ``no-cache`` or ``no-store``: no lookup."""
    control = _control(env)
    return "no-cache" in control or "no-store" in control


def not_modified(env: Mapping[str, Any], etag: str | None, last_modified: str | None) -> bool:
    """``If-None-Match`` (else ``If-Modified-Since``) of the WSGI environ ``env`` matches the answer."""
    inm = env.get("HTTP_IF_NONE_MATCH")  # from the environ: werkzeug's Headers raise for each missing one
    if inm is not None:
        wanted = {t.strip() for t in inm.split(",")}
        return etag is not None and ("*" in wanted or etag in wanted or etag.removeprefix("W/") in wanted)
    ims = env.get("HTTP_IF_MODIFIED_SINCE")
    if ims and last_modified:
        try:
            return parsedate_to_datetime(last_modified) <= parsedate_to_datetime(ims)
        except (TypeError, ValueError):
            return False
    return False


def _finish(resp: Response, etag: str | None, last_modified: str | None) -> Response:
    if not_modified(request.environ, etag, last_modified):
        headers = {k: v for k, v in (("ETag", etag), ("Last-Modified", last_modified)) if v}
        return Response(status=304, headers=headers)
    return resp


def cached(types: Sequence[str], produce: Callable[[], Response], media: str | None = None) -> Response:
    """Answer a GET from the cache when possible, else ``produce()`` it and remember it.

    ``media``: the negotiated media type when the route has it already (saves negotiating twice).
    """
    cache = ctx().cache
    req = request._get_current_object()  # type: ignore[attr-defined]  # one proxy lookup, not ten
    if cache is None or req.method != "GET":
        resp = produce()
        return _finish(resp, resp.headers.get("ETag"), resp.headers.get("Last-Modified"))
    env = req.environ
    media = media or negotiate()
    params = sorted(req.args.items(multi=True))
    # the authorization context is part of the key: one client never gets an answer cached for another
    key = env.get(KEY_ENVIRON) or answer_key(
        cache, types, req.path, params, media, fhir_base(), env, current_access().cache_scope
    )
    if not bypassed(env):
        hit = cache.get(key)
        if hit is not None:
            headers = {"ETag": hit.etag, "X-Cache": "HIT"}
            if hit.last_modified:
                headers["Last-Modified"] = hit.last_modified
            resp = Response(hit.body, status=200, headers=headers, content_type=f"{media or FHIR_JSON}; charset=utf-8")
            return _finish(resp, hit.etag, hit.last_modified)
    resp = produce()
    if resp.status_code == 200 and not resp.is_streamed:
        body = resp.get_data()
        etag = resp.headers.get("ETag") or f'W/"{hashlib.blake2b(body, digest_size=12).hexdigest()}"'
        resp.headers["ETag"] = etag
        resp.headers["X-Cache"] = "MISS"
        if "no-store" not in _control(env):
            cache.put(key, CachedAnswer(body, etag, resp.headers.get("Last-Modified")))
    return _finish(resp, resp.headers.get("ETag"), resp.headers.get("Last-Modified"))
