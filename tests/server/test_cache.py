"""The query cache on its own: backends, keys that follow the store's generations, failure modes.

Redis tests talk to a real server (``BIGMED_TEST_REDIS_URL``); a private redis-server is
started and stopped here to test an outage mid-run.
"""

from __future__ import annotations

import shutil
import socket
import subprocess
import time
from collections.abc import Iterator
from typing import Any

import pytest

from server.cache import CachedAnswer, LocalBackend, QueryCache, RedisBackend
from server.store import open_store


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
    cache = QueryCache(RedisBackend(private_redis["url"], timeout=0.05), store, warn_interval=0.0)  # type: ignore[arg-type]
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
