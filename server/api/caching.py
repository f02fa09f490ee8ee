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
from collections.abc import Callable, Sequence
from email.utils import parsedate_to_datetime

from flask import Response, request

from server.api.http import FHIR_JSON, ctx, fhir_base, negotiate
from server.auth.access import current_access
from server.cache import CachedAnswer, request_key

__all__ = ["ALL_TYPES", "cached"]

#: depend on every type (answers that read several types: chains, _has, includes, compartments)
ALL_TYPES = ("*",)


def _not_modified(etag: str | None, last_modified: str | None) -> bool:
    env = request.environ  # headers read from the environ: werkzeug's Headers raise for each missing one
    inm = env.get("HTTP_IF_NONE_MATCH")
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
    if _not_modified(etag, last_modified):
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
    handling = env.get("HTTP_PREFER", "").replace(" ", "").lower()  # handling=strict: another answer
    # the authorization context is part of the key: one client never gets an answer cached for another
    scope = current_access().cache_scope
    key = cache.key(types, request_key([req.path, params, media, fhir_base(), handling, scope]))
    control = f"{env.get('HTTP_CACHE_CONTROL', '')},{env.get('HTTP_PRAGMA', '')}".lower()
    if "no-cache" not in control and "no-store" not in control:
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
        if "no-store" not in control:
            cache.put(key, CachedAnswer(body, etag, resp.headers.get("Last-Modified")))
    return _finish(resp, resp.headers.get("ETag"), resp.headers.get("Last-Modified"))
