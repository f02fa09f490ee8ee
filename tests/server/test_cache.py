"""The query cache on its own: backends, keys that follow the store's generations, failure modes.

Redis tests talk to a real server (``BIGMED_TEST_REDIS_URL``); a private redis-server is
started and stopped here to test an outage mid-run.
"""

from __future__ import annotations

import random
import shutil
import socket
import subprocess
import threading
import time
from collections.abc import Iterator
from typing import Any

import pytest
import redis
from prometheus_client import REGISTRY

from server.cache import CachedAnswer, LocalBackend, Lru, QueryCache, RedisBackend
from server.store import open_store
from server.store.base import StoredResource
from tests.conftest import redis_url


class FakeStore:
    """Just the generations part of the Store protocol."""

    def __init__(self) -> None:
        self.gens: dict[str, int] = {}

    def generations(self, types: list[str]) -> dict[str, int]:
        return {t: self.gens[t] for t in types if t in self.gens}


def _answer(text: str) -> CachedAnswer:
    return CachedAnswer(body=text.encode(), etag=f'W/"{text}"', last_modified="Mon, 01 Jan 2024 00:00:00 GMT")


def test_answer_encoding_round_trips() -> None:
    a = _answer('{"x":1}\n{"y":2}')
    assert CachedAnswer.decode(a.encode()) == a


def test_local_backend_lru_and_ttl() -> None:
    b = LocalBackend(max_entries=2)
    b.set("a", b"1", 60)
    b.set("b", b"2", 60)
    assert b.get("a") == b"1"  # a is now the most recent
    b.set("c", b"3", 60)
    assert b.get("b") is None and b.get("a") == b"1" and b.get("c") == b"3"
    b.set("d", b"4", -1)
    assert b.get("d") is None


def test_key_changes_when_a_dependency_is_written() -> None:
    store = FakeStore()
    cache = QueryCache(LocalBackend(), store)  # type: ignore[arg-type]
    k1 = cache.key(["Patient", "Observation"], "GET /Patient?name=x")
    assert k1 == cache.key(["Observation", "Patient", "Patient"], "GET /Patient?name=x")
    cache.put(k1, _answer("old"))
    assert cache.get(k1) == _answer("old")
    store.gens["Observation"] = 1  # a write to a type the answer depends on
    k2 = cache.key(["Patient", "Observation"], "GET /Patient?name=x")
    assert k2 != k1 and cache.get(k2) is None
    store.gens["Encounter"] = 7  # a write to an unrelated type
    assert cache.key(["Patient", "Observation"], "GET /Patient?name=x") == k2
    assert cache.key(["Patient"], "GET /Patient?name=y") != cache.key(["Patient"], "GET /Patient?name=x")


def test_databases_sharing_a_backend_never_share_answers(tmp_path: Any) -> None:
    """Two real databases with equal generations still get different keys: the store id is in them."""
    stores = [open_store(f"sqlite:///{tmp_path / name}.sqlite") for name in ("a", "b")]
    try:
        backend = LocalBackend()  # one shared backend, as one Redis for several databases
        caches = [QueryCache(backend, s) for s in stores]
        assert stores[0].generations(["Patient"]) == stores[1].generations(["Patient"]) == {}
        keys = [c.key(["Patient"], "GET /Patient?name=x") for c in caches]
        assert keys[0] != keys[1]
        caches[0].put(keys[0], _answer("from a"))
        assert caches[1].get(keys[1]) is None
        reopened = open_store(f"sqlite:///{tmp_path / 'a'}.sqlite")  # the identity is durable
        try:
            assert QueryCache(backend, reopened).key(["Patient"], "GET /Patient?name=x") == keys[0]
        finally:
            reopened.close()
    finally:
        for s in stores:
            s.close()


def test_sqlite_generations_follow_commits_of_every_connection(tmp_path: Any) -> None:
    """The remembered generations (PRAGMA data_version) move with this store's commits, another
    process's (a second store on the file) and a commit made from another thread."""
    url = f"sqlite:///{tmp_path / 'gens'}.sqlite"
    first, second = open_store(url), open_store(url)
    try:

        def write(store: Any, id_: str) -> None:
            with store.transaction() as tx:
                tx.put(StoredResource("Patient", id_, 1, 1.0, False, b"{}"), "PUT", None)

        assert first.generations(["Patient"]) == second.generations(["Patient"]) == {}
        write(first, "a")
        assert first.generations(["Patient"]) == second.generations(["Patient"]) == {"Patient": 1}
        assert second.generations(["Patient", "Observation"]) == {"Patient": 1}  # unchanged: remembered
        write(second, "b")
        assert first.generations(["Patient"]) == {"Patient": 2}
        thread = threading.Thread(target=write, args=(second, "c"))
        thread.start()
        thread.join()
        assert first.generations(["Patient"]) == second.generations(["Patient"]) == {"Patient": 3}
    finally:
        first.close()
        second.close()


def test_values_over_the_size_limit_are_not_stored() -> None:
    cache = QueryCache(LocalBackend(), FakeStore(), max_value_bytes=100)  # type: ignore[arg-type]
    cache.put("k", _answer("x" * 200))
    assert cache.get("k") is None
    cache.put("k", _answer("small"))
    assert cache.get("k") == _answer("small")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture
def private_redis() -> Iterator[dict[str, Any]]:
    exe = shutil.which("redis-server")
    if exe is None:
        pytest.skip("redis-server is not installed; Redis outage test SKIPPED")
    port = _free_port()
    cmd = [exe, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"]
    state: dict[str, Any] = {"url": f"redis://127.0.0.1:{port}/0", "proc": None}

    def start() -> None:
        state["proc"] = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        for _ in range(100):
            try:
                socket.create_connection(("127.0.0.1", port), timeout=0.1).close()
                return
            except OSError:
                time.sleep(0.05)
        raise RuntimeError("private redis-server did not start")

    def stop() -> None:
        proc = state["proc"]
        if proc is not None:
            proc.terminate()
            proc.wait(timeout=10)
            state["proc"] = None

    state["start"], state["stop"] = start, stop
    start()
    yield state
    stop()


def test_redis_outage_degrades_and_recovers_without_staleness(private_redis: dict[str, Any]) -> None:
    store = FakeStore()
    redis_only = {"local_bytes": 0, "retry_after": 0.0}  # the Redis tier alone, asked on every lookup
    cache = QueryCache(RedisBackend(private_redis["url"], timeout=0.05), store, warn_interval=0.0, **redis_only)  # type: ignore[arg-type]
    key = cache.key(["Patient"], "GET /Patient/1")
    cache.put(key, _answer("v1"))
    assert cache.get(key) == _answer("v1") and cache.health()["status"] == "ok"

    private_redis["stop"]()
    started = time.perf_counter()
    assert cache.get(key) is None  # a miss, not an exception
    cache.put(key, _answer("ignored"))
    assert time.perf_counter() - started < 1.0
    assert cache.health()["status"] == "degraded"
    store.gens["Patient"] = 1  # a write while Redis is down: recorded by the store, not by Redis

    private_redis["start"]()  # Redis is back, empty or not, the old key is no longer asked for
    new_key = cache.key(["Patient"], "GET /Patient/1")
    assert new_key != key and cache.get(new_key) is None
    cache.put(new_key, _answer("v2"))
    assert cache.get(new_key) == _answer("v2")


# -- the in-process tier, write-behind and the back-off after failures -------------------------------


def test_lru_is_bounded_by_bytes() -> None:
    lru: Lru[bytes] = Lru(max_entries=100, max_bytes=10)
    lru.put("a", b"aaaa", 4, 60)
    lru.put("b", b"bbbb", 4, 60)
    assert lru.get("a") == b"aaaa"  # a is now the most recent: b goes first
    lru.put("c", b"cccc", 4, 60)
    assert lru.get("b") is None and lru.get("a") == b"aaaa" and lru.get("c") == b"cccc"
    assert lru.bytes == 8 and len(lru) == 2
    lru.put("big", b"x" * 11, 11, 60)  # larger than the whole budget: not kept, nothing evicted
    assert lru.get("big") is None and len(lru) == 2
    lru.put("a", b"A", 1, 60)  # replacing a value frees the old size
    assert lru.bytes == 5


def _events(backend: str, outcome: str) -> float:
    value = REGISTRY.get_sample_value("bigmed_cache_events_total", {"backend": backend, "outcome": outcome})
    return value or 0.0


def test_workers_share_answers_through_redis_and_keep_them_locally() -> None:
    url = redis_url()
    store = FakeStore()
    store.gens["@store"] = random.getrandbits(60)  # a private key space in the shared test Redis
    first = QueryCache(RedisBackend(url), store, write_behind=True)  # type: ignore[arg-type]
    second = QueryCache(RedisBackend(url), store, write_behind=True)  # type: ignore[arg-type]  # another worker
    key = first.key(["Patient"], "GET /Patient/w")
    first.put(key, _answer("shared"))
    assert first.flush(5.0)  # the write left the response path; it reached Redis in the background
    assert redis.Redis.from_url(url).exists(key)
    redis_hits, local_hits = _events("redis", "hit"), _events("in-process", "hit")
    assert second.get(key) == _answer("shared")  # from Redis (second has never seen it) …
    assert second.get(key) == _answer("shared")  # … then from its own memory
    assert _events("redis", "hit") == redis_hits + 1 and _events("in-process", "hit") == local_hits + 1
    store.gens["Patient"] = 1  # a write: neither tier is asked for the old key again
    assert second.get(second.key(["Patient"], "GET /Patient/w")) is None


class CountingDownBackend:
    """A shared tier that is down: every call fails like an unreachable Redis, and is counted."""

    name = "redis"

    def __init__(self) -> None:
        self.calls = 0

    def _fail(self) -> Any:
        self.calls += 1
        raise redis.ConnectionError("connection refused")

    def get(self, key: str) -> bytes | None:
        return self._fail()

    def set(self, key: str, value: bytes, ttl: int) -> None:
        self._fail()

    def set_many(self, items: Any, ttl: int) -> None:
        self._fail()

    def ping(self) -> None:
        self._fail()


def test_after_a_failure_redis_is_left_alone_for_a_while() -> None:
    backend = CountingDownBackend()
    cache = QueryCache(backend, FakeStore(), local_bytes=0, retry_after=0.2)  # type: ignore[arg-type]
    assert cache.get("k1") is None and backend.calls == 1
    for n in range(20):  # an outage costs one attempt per interval, not one per request
        assert cache.get(f"k{n}") is None
        cache.put(f"k{n}", _answer("x"))
    assert backend.calls == 1 and cache.resting()
    time.sleep(0.25)
    assert cache.get("k1") is None and backend.calls == 2
    assert cache.health()["status"] == "degraded"


def test_the_local_tier_answers_while_redis_is_down() -> None:
    """Keys still follow the database's generations, so what memory holds is never stale."""
    backend = CountingDownBackend()
    store = FakeStore()
    cache = QueryCache(backend, store, retry_after=0.0)  # type: ignore[arg-type]
    key = cache.key(["Patient"], "GET /Patient/1")
    cache.put(key, _answer("v1"))
    assert cache.get(key) == _answer("v1")
    store.gens["Patient"] = 4
    new_key = cache.key(["Patient"], "GET /Patient/1")
    assert cache.get(new_key) is None  # asked Redis (down) and missed; served from the database
