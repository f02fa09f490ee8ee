"""Cache hits answered in front of the web framework (WSGI), exactly as the routes would answer them.

A warm read or search (http://hl7.org/fhir/R4/http.html#read, search.html) is mostly fixed cost:
request objects, routing, hooks, response objects — about two thirds of a hit's time when it ran
through Flask. :class:`CacheFront` sits inside the timing wrapper and answers ``GET /fhir/{type}``
and ``GET /fhir/{type}/{id}`` from the query cache itself when it can do all a route would:

* the **key** is computed by the same function as the route's (:func:`server.api.caching.answer_key`:
  path, sorted parameters, negotiated media type, base URL, ``Prefer`` handling, the caller's
  authorization scope, the current generations of the types the answer depends on). Only
  :func:`~server.api.caching.cached` stores answers, so a hit is always the answer the route
  computed for this very request at the current generations: never stale, never another
  client's, never another route's (other routes store nothing; their keys miss);
* **authorization** by the guard's own function (:func:`server.api.auth.authenticate`: bearer token,
  client still registered) and its rate limit; the scopes were checked when the answer was computed
  for this client, grant and patient (they are in the key);
* the **audit** record is built by the same function as for every request
  (:func:`server.api.audit.request_record`) and queued before anything is sent; when it cannot be
  (writer failing, queue full) the request goes to Flask, which refuses it (503, fail closed);
* ``If-None-Match``/``If-Modified-Since`` -> 304, security headers, ``X-Cache: HIT``.

On a miss the front leaves the Access it authenticated and the key it computed in the environ
(``auth.ACCESS_ENVIRON``, ``caching.KEY_ENVIRON``): the guard and the route use them instead of
checking the token and reading the generations a second time.

Anything else goes to Flask unchanged: a miss, ``Cache-Control: no-cache``, a cross-origin request
(CORS), a media type or host not negotiated before (the memo in :mod:`server.api.http` fills on the
first request), the synchronous audit mode, a token that does not authenticate (Flask answers the
401), any other method or path. The figures are in bench/cache.py and the README ("Query cache").
"""

from __future__ import annotations

import logging
import re
from collections.abc import Callable, Iterable, Sequence
from typing import Any
from urllib.parse import parse_qsl

from flask import Flask

from server.api import audit as audit_api
from server.api.auth import ACCESS_ENVIRON, authenticate, rate_limited, security_headers
from server.api.caching import KEY_ENVIRON, answer_key, bypassed, not_modified, search_depends_on
from server.api.http import FHIR_JSON, memo_base, memo_media
from server.api.metrics import ENDPOINT_KEY
from server.audit_queue import AuditUnavailable
from server.errors import FhirError
from server.fhir.context import FhirContext

__all__ = ["CacheFront", "init_app"]

log = logging.getLogger(__name__)

_TYPE = re.compile(r"[A-Z][A-Za-z]{1,63}\Z")
_ID = re.compile(r"[A-Za-z0-9\-.]{1,64}\Z")

StartResponse = Callable[..., Any]
WsgiApp = Callable[[dict[str, Any], StartResponse], Iterable[bytes]]


class CacheFront:
    """WSGI wrapper answering cache hits of reads and type searches before Flask (see the module doc)."""

    def __init__(self, wsgi_app: WsgiApp, app: Flask) -> None:
        self.wsgi_app = wsgi_app
        self.app = app
        self.context: FhirContext = app.extensions["bigmed"]

    def __call__(self, environ: dict[str, Any], start_response: StartResponse) -> Iterable[bytes]:
        if environ.get("REQUEST_METHOD") == "GET" and self.context.cache is not None:
            try:
                answer = self._hit(environ, start_response)
            except (FhirError, AuditUnavailable):
                answer = None  # Flask gives the proper answer (401, 503 …)
            except Exception:  # never fail a request here: Flask answers it (and logs what it meets)
                log.exception("cache front: unexpected failure; the request goes through the routes")
                answer = None
            if answer is not None:
                return answer
        return self.wsgi_app(environ, start_response)

    def _hit(self, environ: dict[str, Any], start_response: StartResponse) -> list[bytes] | None:
        parts = environ.get("PATH_INFO", "").encode("latin1").decode("utf-8", "replace").split("/")
        if not 3 <= len(parts) <= 4 or parts[0] or parts[1] != "fhir" or not _TYPE.match(parts[2]):
            return None
        if len(parts) == 4 and not _ID.match(parts[3]):
            return None  # _history, _search, $operations, a trailing slash: not a cached route
        if "HTTP_ORIGIN" in environ or bypassed(environ):
            return None
        cfg, cache = self.context.config, self.context.cache
        writer = self.app.extensions.get("bigmed_audit_writer")
        if cache is None or (cfg.audit and writer is None):
            return None  # synchronous audit: the route's path inserts the record itself
        query = environ.get("QUERY_STRING", "").encode("latin1").decode()
        args = parse_qsl(query, keep_blank_values=True, errors="werkzeug.url_quote")  # as werkzeug's request.args
        media = memo_media(next((v for k, v in args if k == "_format"), None), environ.get("HTTP_ACCEPT"))
        base = memo_base(cfg.base_url, environ)
        if media is None or base is None:
            return None
        path = "/" + "/".join(parts[1:])
        type_ = parts[2]
        types: Sequence[str]
        if len(parts) == 4:  # the routes fhir.read and fhir.search_type, as server/api/fhir.py keys them
            endpoint, view_args, types = "fhir.read", {"type_": type_, "id_": parts[3]}, [type_]
        else:
            endpoint, view_args = "fhir.search_type", {"type_": type_}
            types = search_depends_on(type_, (k for k, _ in args))
        address = environ.get("REMOTE_ADDR")
        access = authenticate(self.app, environ.get("HTTP_AUTHORIZATION"), base, address)
        key = answer_key(cache, types, path, sorted(args), media, base, environ, access.cache_scope)
        hit = cache.get(key)
        if hit is None:  # the routes answer; they need not check the token or compute the key again
            environ[ACCESS_ENVIRON], environ[KEY_ENVIRON] = access, key
            return None
        if rate_limited(self.app, access) is not None:
            return None
        status = 304 if not_modified(environ, hit.etag, hit.last_modified) else 200
        if cfg.audit and writer is not None:
            facts = audit_api.Facts("GET", path, f"{path}?{query}", endpoint, view_args, args, address)
            writer.submit([audit_api.request_record(access, facts, status, lambda: hit.body)])
        headers = [("ETag", hit.etag)]
        if hit.last_modified:
            headers.append(("Last-Modified", hit.last_modified))
        if status == 200:
            headers += [
                ("Content-Type", f"{media or FHIR_JSON}; charset=utf-8"),
                ("Content-Length", str(len(hit.body))),
                ("X-Cache", "HIT"),
            ]
        present = {name.lower() for name, _ in headers}
        headers += security_headers(present, path, cfg.auth)
        environ[ENDPOINT_KEY] = endpoint
        start_response("200 OK" if status == 200 else "304 NOT MODIFIED", headers)
        return [hit.body] if status == 200 else []


def init_app(app: Flask) -> None:
    """Put the front before the routes (call before ``metrics.init_app``: the timing encloses it)."""
    if app.extensions["bigmed"].cache is not None:
        app.wsgi_app = CacheFront(app.wsgi_app, app)  # type: ignore[method-assign]
