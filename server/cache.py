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
  answers, a warning is logged once per interval and ``/healthz`` reports the cache degraded;
  after a failure Redis is left alone for ``retry_after`` seconds, so an outage costs one
  timeout per interval, not one per request.

Two tiers, one key. Because a key names exactly one answer (it can never come to mean another
one), every worker also keeps the answers it served recently in an **in-process LRU** (bounded
in bytes, ``BIGMED_CACHE_LOCAL_BYTES``) in front of Redis: a hot answer costs the generation
query and a dictionary lookup, no Redis round trip and no decoding. Redis is asked on a local
miss and shares answers between workers and machines. Values are written to Redis **behind the
response** by one thread per process (pipelined in batches; dropped, and counted, when the
queue is full): a miss does not wait for Redis either. Without ``REDIS_URL`` only the in-process
tier runs (each worker has its own values; keys are still validated against the shared
database, so it is never stale either).

The price of correctness without an invalidation protocol is the generation query per cached
request; the figures are in bench/cache.py and the README ("Query cache").
"""

from __future__ import annotations

import hashlib
import logging
import os
import threading
import time
from collections import OrderedDict, deque
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any, Generic, Protocol, TypeVar

import orjson
import redis
from prometheus_client import Counter, Histogram

from server.store.base import STORE_ID_KEY, Store

__all__ = [
    "CacheBackend",
    "CachedAnswer",
    "LocalBackend",
    "Lru",
    "QueryCache",
    "RedisBackend",
    "open_cache",
    "request_key",
]

log = logging.getLogger(__name__)

CACHE_EVENTS = Counter("bigmed_cache_events_total", "Query cache lookups by outcome", ["backend", "outcome"])
CACHE_LATENCY = Histogram(
    "bigmed_cache_seconds",
    "Query cache operation latency",
    ["backend", "operation"],
    buckets=(0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1),
)

V = TypeVar("V")


class CacheBackend(Protocol):
    name: str

    def get(self, key: str) -> bytes | None: ...

    def set(self, key: str, value: bytes, ttl: int) -> None: ...

    def set_many(self, items: Sequence[tuple[str, bytes]], ttl: int) -> None: ...

    def ping(self) -> None: ...


class Lru(Generic[V]):
    """A thread-safe LRU with a TTL per entry, bounded by entry count and by total size."""

    def __init__(self, max_entries: int = 10_000, max_bytes: int = 64 * 1024 * 1024) -> None:
        self.max_entries = max_entries
        self.max_bytes = max_bytes
        self.bytes = 0
        self._data: OrderedDict[str, tuple[float, int, V]] = OrderedDict()
        self._lock = threading.Lock()

    def __len__(self) -> int:
        return len(self._data)

    def get(self, key: str) -> V | None:
        with self._lock:
            item = self._data.get(key)
            if item is None:
                return None
            expires, size, value = item
            if expires < time.monotonic():
                del self._data[key]
                self.bytes -= size
                return None
            self._data.move_to_end(key)
            return value

    def put(self, key: str, value: V, size: int, ttl: float) -> None:
        if size > self.max_bytes or self.max_entries < 1:
            return
        with self._lock:
            old = self._data.pop(key, None)
            if old is not None:
                self.bytes -= old[1]
            self._data[key] = (time.monotonic() + ttl, size, value)
            self.bytes += size
            while len(self._data) > self.max_entries or self.bytes > self.max_bytes:
                _, (_, dropped, _) = self._data.popitem(last=False)
                self.bytes -= dropped


class LocalBackend:
    """An in-process LRU with TTL (thread-safe): a shared tier without Redis (tests, one process)."""

    name = "in-process"

    def __init__(self, max_entries: int = 10_000, max_bytes: int = 64 * 1024 * 1024) -> None:
        self._lru: Lru[bytes] = Lru(max_entries, max_bytes)

    def get(self, key: str) -> bytes | None:
        return self._lru.get(key)

    def set(self, key: str, value: bytes, ttl: int) -> None:
        self._lru.put(key, value, len(value), ttl)

    def set_many(self, items: Sequence[tuple[str, bytes]], ttl: int) -> None:
        for key, value in items:
            self.set(key, value, ttl)

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

    def set_many(self, items: Sequence[tuple[str, bytes]], ttl: int) -> None:
        """One round trip for the batch (a pipeline without MULTI: each SET stands alone)."""
        pipe = self.client.pipeline(transaction=False)
        for key, value in items:
            pipe.set(key, value, ex=ttl)
        pipe.execute()

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

    @property
    def size(self) -> int:
        """About the length of :meth:`encode` (what the size limit and the in-process budget count)."""
        return len(self.body) + len(self.etag) + len(self.last_modified or "") + 24


class _WriteBehind:
    """One thread per process writing values to the shared backend, pipelined in batches.

    Started lazily in the process that first submits (gunicorn workers fork before serving), so
    a forked child never inherits a thread that does not run in it.
    """

    def __init__(self, cache: QueryCache, backend: CacheBackend, max_pending: int = 512, batch: int = 64) -> None:
        self.cache, self.backend = cache, backend
        self.max_pending, self.batch = max_pending, batch
        self._pending: deque[tuple[str, bytes]] = deque()
        self._writing = 0
        self._cond = threading.Condition()
        self._pid: int | None = None

    def submit(self, key: str, raw: bytes) -> bool:
        """Queue one value; False (dropped) when the queue is full."""
        with self._cond:
            if self._pid != os.getpid():
                self._pid = os.getpid()
                self._pending.clear()
                self._writing = 0
                threading.Thread(target=self._run, name="bigmed-cache-writer", daemon=True).start()
            if len(self._pending) >= self.max_pending:
                return False
            self._pending.append((key, raw))
            self._cond.notify_all()
            return True

    def _run(self) -> None:
        while True:
            with self._cond:
                while not self._pending:
                    self._cond.wait()
                batch = [self._pending.popleft() for _ in range(min(self.batch, len(self._pending)))]
                self._writing = len(batch)
            start = time.perf_counter()
            try:
                if not self.cache.resting():
                    self.backend.set_many(batch, self.cache.ttl)
            except redis.RedisError as exc:
                self.cache._failed("set", exc)
            except Exception:  # the writer must outlive any surprise; the cache is optional
                log.exception("cache writer: unexpected failure (values dropped)")
            finally:
                self.cache._set_latency.observe(time.perf_counter() - start)
                with self._cond:
                    self._writing = 0
                    self._cond.notify_all()

    def flush(self, timeout: float) -> bool:
        """Wait until every queued value was handed to the backend (True) or ``timeout`` passed."""
        deadline = time.monotonic() + timeout
        with self._cond:
            while self._pending or self._writing:
                left = deadline - time.monotonic()
                if left <= 0:
                    return False
                self._cond.wait(left)
        return True


class QueryCache:
    """Lookups and stores keyed by request and the store's type generations.

    ``backend`` is the shared tier (Redis; None: in-process only). ``local_bytes`` bounds the
    in-process tier in front of it (0: none — every lookup goes to ``backend``). With
    ``write_behind`` values reach ``backend`` from a background thread (see the module doc).
    """

    def __init__(
        self,
        backend: CacheBackend | None,
        store: Store,
        ttl: int = 300,
        max_value_bytes: int = 1_048_576,
        warn_interval: float = 30.0,
        local_bytes: int = 32 * 1024 * 1024,
        retry_after: float = 1.0,
        write_behind: bool = False,
    ) -> None:
        self.backend = backend
        self.store = store
        self.ttl = ttl
        self.max_value_bytes = max_value_bytes
        self.warn_interval = warn_interval
        self.retry_after = retry_after
        self.local: Lru[CachedAnswer] | None = Lru(max_bytes=local_bytes) if local_bytes > 0 else None
        if backend is None and self.local is None:
            raise ValueError("a query cache needs a backend or an in-process tier")
        self._writer = _WriteBehind(self, backend) if write_behind and backend is not None else None
        self._last_warning = 0.0
        self._last_error = 0.0
        # metric children bound once (labels() takes a lock and a dict lookup per call)
        shared = backend.name if backend is not None else LocalBackend.name
        self._local_hit = CACHE_EVENTS.labels(LocalBackend.name, "hit")
        self._hit = CACHE_EVENTS.labels(shared, "hit")
        self._miss = CACHE_EVENTS.labels(shared, "miss")
        self._error = CACHE_EVENTS.labels(shared, "error")
        self._skipped = CACHE_EVENTS.labels(shared, "skipped")
        self._dropped = CACHE_EVENTS.labels(shared, "dropped")
        self._too_large = CACHE_EVENTS.labels(shared, "too_large")
        self._get_latency = CACHE_LATENCY.labels(shared, "get")
        self._set_latency = CACHE_LATENCY.labels(shared, "set")

    @property
    def backend_name(self) -> str:
        return self.backend.name if self.backend is not None else LocalBackend.name

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
    def resting(self) -> bool:
        """True for ``retry_after`` seconds after a backend failure: lookups and stores skip it."""
        return bool(self._last_error) and time.monotonic() - self._last_error < self.retry_after

    def get(self, key: str) -> CachedAnswer | None:
        if self.local is not None:
            answer = self.local.get(key)
            if answer is not None:
                self._local_hit.inc()
                return answer
        if self.backend is None:
            self._miss.inc()
            return None
        if self.resting():
            self._skipped.inc()
            return None
        start = time.perf_counter()
        try:
            raw = self.backend.get(key)
        except redis.RedisError as exc:
            self._failed("get", exc)
            return None
        finally:
            self._get_latency.observe(time.perf_counter() - start)
        if raw is None:
            self._miss.inc()
            return None
        try:
            answer = CachedAnswer.decode(raw)
        except (ValueError, KeyError, TypeError):  # not a value of ours: a miss, and overwritten later
            self._miss.inc()
            return None
        self._hit.inc()
        if self.local is not None:
            self.local.put(key, answer, answer.size, self.ttl)
        return answer

    def put(self, key: str, answer: CachedAnswer) -> None:
        if answer.size > self.max_value_bytes:
            self._too_large.inc()
            return
        if self.local is not None:
            self.local.put(key, answer, answer.size, self.ttl)
        if self.backend is None:
            return
        if self.resting():
            self._skipped.inc()
            return
        raw = answer.encode()
        if self._writer is not None:
            if not self._writer.submit(key, raw):
                self._dropped.inc()
            return
        start = time.perf_counter()
        try:
            self.backend.set(key, raw, self.ttl)
        except redis.RedisError as exc:
            self._failed("set", exc)
        finally:
            self._set_latency.observe(time.perf_counter() - start)

    def flush(self, timeout: float = 5.0) -> bool:
        """Wait for values queued for the shared tier (tests, shutdown); True when all were sent."""
        return self._writer.flush(timeout) if self._writer is not None else True

    def _failed(self, operation: str, exc: Exception) -> None:
        self._error.inc()
        now = time.monotonic()
        self._last_error = now
        if now - self._last_warning >= self.warn_interval:
            self._last_warning = now
            log.warning("cache %s failed (%s: %s); serving from the database", operation, type(exc).__name__, exc)

    def health(self) -> dict[str, Any]:
        """``ok`` or ``degraded`` (Redis unreachable now, or failing within the last interval)."""
        status = "ok"
        if self.backend is not None:
            try:
                self.backend.ping()
            except redis.RedisError as exc:
                self._failed("ping", exc)
                status = "degraded"
        if time.monotonic() - self._last_error < self.warn_interval and self._last_error:
            status = "degraded"
        return {"backend": self.backend_name, "status": status}


def open_cache(
    redis_url: str | None,
    store: Store,
    ttl: int,
    max_value_bytes: int,
    timeout: float,
    local_bytes: int = 32 * 1024 * 1024,
) -> QueryCache:
    """Redis behind an in-process tier of ``local_bytes``, or the in-process tier alone."""
    if redis_url:
        backend = RedisBackend(redis_url, timeout)
        return QueryCache(backend, store, ttl, max_value_bytes, local_bytes=local_bytes, write_behind=True)
    return QueryCache(None, store, ttl, max_value_bytes, local_bytes=max(local_bytes, 1024 * 1024))


def request_key(parts: Sequence[Any]) -> str:
    """A canonical text for the parts that decide an answer (path, sorted params, format …)."""
    return orjson.dumps(list(parts)).decode()
