"""The query cache: reads and searches answered from Redis (or an in-process LRU), never stale.

How "never stale" is achieved, simply:

* The store keeps a **generation counter per resource type** (table ``type_gen``), bumped
  *inside* every write transaction that touches the type, just before it commits
  (``server/store/sql.py``). Every writer — REST, transactions, ``load``, VCF ingest, reindex —
  goes through ``Store.transaction()``, so none can forget it, and the bump is exactly as
  durable as the write itself.
* A cache key is a hash of the normalised request **and the current generations of every type
  the answer depends on**, read from the database at lookup time (one indexed query). A commit
  therefore makes every answer it could change unreachable for every worker on every machine
  the moment it commits, before the writer gets its response: read-your-writes holds across
  processes.
* The key also carries the **database's identity**, a random number drawn when its schema is
  created (``type_gen`` row ``@store``): databases sharing one Redis (tenants, test schemas, a
  database dropped and created again) never answer for each other, whatever their generations.
* Redis holds only values under such content-addressed keys, with a TTL; no invalidation
  message is ever sent, so a Redis outage or a lost message cannot leave a stale entry behind.
  When Redis is down or slow (connect/read timeouts of a few ms), lookups miss, the database
  answers, a warning is logged once per interval and ``/healthz`` reports the cache degraded.

This trades the extra generation query per cached request for correctness without a
distributed invalidation protocol; the numbers are in bench/cache.py. Without ``REDIS_URL`` the
same scheme runs over an in-process LRU (each worker has its own values; keys are still
validated against the shared database, so it is never stale either).
"""

from __future__ import annotations

import hashlib
import logging
import threading
import time
from collections import OrderedDict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import orjson
import redis
from prometheus_client import Counter, Histogram

from server.store.base import STORE_ID_KEY, Store

__all__ = ["CacheBackend", "CachedAnswer", "LocalBackend", "QueryCache", "RedisBackend", "open_cache"]

log = logging.getLogger(__name__)

CACHE_EVENTS = Counter("bigmed_cache_events_total", "Query cache lookups by outcome", ["backend", "outcome"])
CACHE_LATENCY = Histogram(
    "bigmed_cache_seconds",
    "Query cache operation latency",
    ["backend", "operation"],
    buckets=(0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1),
)


class CacheBackend(Protocol):
    name: str

    def get(self, key: str) -> bytes | None: ...

    def set(self, key: str, value: bytes, ttl: int) -> None: ...

    def ping(self) -> None: ...


class LocalBackend:
    """An in-process LRU with TTL (thread-safe)."""

    name = "in-process"

    def __init__(self, max_entries: int = 10_000) -> None:
        self.max_entries = max_entries
        self._data: OrderedDict[str, tuple[float, bytes]] = OrderedDict()
        self._lock = threading.Lock()

    def get(self, key: str) -> bytes | None:
        with self._lock:
            item = self._data.get(key)
            if item is None:
                return None
            expires, value = item
            if expires < time.monotonic():
                del self._data[key]
                return None
            self._data.move_to_end(key)
            return value

    def set(self, key: str, value: bytes, ttl: int) -> None:
        with self._lock:
            self._data[key] = (time.monotonic() + ttl, value)
            self._data.move_to_end(key)
            while len(self._data) > self.max_entries:
                self._data.popitem(last=False)

    def ping(self) -> None:
        return None


class RedisBackend:
    """Redis with short timeouts: a slow or absent Redis costs milliseconds, not requests."""

    name = "redis"

    def __init__(self, url: str, timeout: float = 0.05) -> None:
        self.client = redis.Redis.from_url(
            url, socket_timeout=timeout, socket_connect_timeout=timeout, retry_on_timeout=False
        )

    def get(self, key: str) -> bytes | None:
        value = self.client.get(key)
        return value if isinstance(value, bytes) else None

    def set(self, key: str, value: bytes, ttl: int) -> None:
        self.client.set(key, value, ex=ttl)

    def ping(self) -> None:
        self.client.ping()


@dataclass(frozen=True)
class CachedAnswer:
    """A response body with the validators a conditional request needs."""

    body: bytes
    etag: str
    last_modified: str | None = None

    def encode(self) -> bytes:
        head = orjson.dumps({"etag": self.etag, "lm": self.last_modified})
        return head + b"\n" + self.body

    @classmethod
    def decode(cls, raw: bytes) -> CachedAnswer:
        head, _, body = raw.partition(b"\n")
        meta = orjson.loads(head)
        return cls(body=body, etag=meta["etag"], last_modified=meta["lm"])


class QueryCache:
    """Lookups and stores keyed by request and the store's type generations."""

    def __init__(
        self,
        backend: CacheBackend,
        store: Store,
        ttl: int = 300,
        max_value_bytes: int = 1_048_576,
        warn_interval: float = 30.0,
    ) -> None:
        self.backend = backend
        self.store = store
        self.ttl = ttl
        self.max_value_bytes = max_value_bytes
        self.warn_interval = warn_interval
        self._last_warning = 0.0
        self._last_error = 0.0

    # -- keys ------------------------------------------------------------------------------
    def key(self, types: Iterable[str], request_key: str) -> str:
        """The key of ``request_key``'s answer given the current generations of ``types``.

        Compute the key BEFORE computing the answer: a write that commits in between moves the
        generations on, so the answer stored under this key is never served after that write.
        """
        wanted = sorted(set(types))
        gens = self.store.generations([*wanted, STORE_ID_KEY])
        material = f"{gens.get(STORE_ID_KEY, 0)}|{request_key}|" + ",".join(f"{t}:{gens.get(t, 0)}" for t in wanted)
        return "bigmed:q:" + hashlib.blake2b(material.encode(), digest_size=20).hexdigest()

    # -- values ----------------------------------------------------------------------------
    def get(self, key: str) -> CachedAnswer | None:
        start = time.perf_counter()
        try:
            raw = self.backend.get(key)
        except redis.RedisError as exc:
            self._failed("get", exc)
            return None
        finally:
            CACHE_LATENCY.labels(self.backend.name, "get").observe(time.perf_counter() - start)
        CACHE_EVENTS.labels(self.backend.name, "hit" if raw is not None else "miss").inc()
        return CachedAnswer.decode(raw) if raw is not None else None

    def put(self, key: str, answer: CachedAnswer) -> None:
        raw = answer.encode()
        if len(raw) > self.max_value_bytes:
            CACHE_EVENTS.labels(self.backend.name, "too_large").inc()
            return
        start = time.perf_counter()
        try:
            self.backend.set(key, raw, self.ttl)
        except redis.RedisError as exc:
            self._failed("set", exc)
        finally:
            CACHE_LATENCY.labels(self.backend.name, "set").observe(time.perf_counter() - start)

    def _failed(self, operation: str, exc: Exception) -> None:
        CACHE_EVENTS.labels(self.backend.name, "error").inc()
        now = time.monotonic()
        self._last_error = now
        if now - self._last_warning >= self.warn_interval:
            self._last_warning = now
            log.warning("cache %s failed (%s: %s); serving from the database", operation, type(exc).__name__, exc)

    def health(self) -> dict[str, Any]:
        """``ok`` or ``degraded`` (Redis unreachable now, or failing within the last interval)."""
        status = "ok"
        try:
            self.backend.ping()
        except redis.RedisError as exc:
            self._failed("ping", exc)
            status = "degraded"
        if time.monotonic() - self._last_error < self.warn_interval and self._last_error:
            status = "degraded"
        return {"backend": self.backend.name, "status": status}


def open_cache(redis_url: str | None, store: Store, ttl: int, max_value_bytes: int, timeout: float) -> QueryCache:
    backend: CacheBackend = RedisBackend(redis_url, timeout) if redis_url else LocalBackend()
    return QueryCache(backend, store, ttl=ttl, max_value_bytes=max_value_bytes)


def request_key(parts: Sequence[Any]) -> str:
    """A canonical text for the parts that decide an answer (path, sorted params, format …)."""
    return orjson.dumps(list(parts)).decode()
