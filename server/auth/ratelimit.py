"""Per-client rate limiting: a fixed one-minute window of ``BIGMED_RATE_LIMIT`` requests.

RFC 6585 §4 (429 Too Many Requests) with ``Retry-After`` (RFC 9110 §10.2.3): the seconds until
the window ends. With ``REDIS_URL`` the counters live in Redis (``INCR`` + ``EXPIRE``), shared
by every worker and machine; otherwise in-process (per worker: the effective limit is then the
limit times the number of workers). A Redis failure lets the request through (rate limiting
protects availability; it never decides access) and is logged once a minute.
"""

from __future__ import annotations

import logging
import threading
import time

import redis

__all__ = ["RateLimiter"]

log = logging.getLogger(__name__)
WINDOW = 60


class RateLimiter:
    def __init__(self, limit: int, redis_url: str | None = None, timeout: float = 0.05) -> None:
        self.limit = limit
        self._redis = (
            redis.Redis.from_url(redis_url, socket_timeout=timeout, socket_connect_timeout=timeout)
            if redis_url and limit
            else None
        )
        self._counts: dict[tuple[str, int], int] = {}
        self._lock = threading.Lock()
        self._warned = 0.0

    def hit(self, who: str) -> int | None:
        """Count one request of ``who``; None when allowed, else the seconds to wait (Retry-After)."""
        if not self.limit:
            return None
        now = time.time()
        window = int(now // WINDOW)
        retry = max(1, int((window + 1) * WINDOW - now + 0.999))
        if self._redis is not None:
            key = f"bigmed:rate:{who}:{window}"
            try:
                pipe = self._redis.pipeline()
                pipe.incr(key)
                pipe.expire(key, WINDOW + 5)
                count = int(pipe.execute()[0])
            except redis.RedisError as exc:
                if now - self._warned > 60:
                    self._warned = now
                    log.warning("rate limiting skipped: Redis unavailable (%s)", type(exc).__name__)
                return None
        else:
            with self._lock:
                if len(self._counts) > 10_000:
                    self._counts = {k: v for k, v in self._counts.items() if k[1] == window}
                count = self._counts.get((who, window), 0) + 1
                self._counts[(who, window)] = count
        return retry if count > self.limit else None
