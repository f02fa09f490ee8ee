"""Shared fixtures: apps built with ``create_app(test_config)`` on SQLite and on a real PostgreSQL.

PostgreSQL tests use ``BIGMED_TEST_POSTGRES_URL`` (default ``postgresql://postgres@127.0.0.1:5432/test``)
in a schema private to the run (``bigmed_test_<pid>``, dropped at the end). When the server
cannot be reached they are skipped with a loud notice, unless ``BIGMED_REQUIRE_SERVICES=1``
(as in CI), where that is an error.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

SHARED = Path(__file__).resolve().parent.parent.parent / "shared" / "data"
PG_DEFAULT = "postgresql://postgres@127.0.0.1:5432/test"
PG_SCHEMA = f"bigmed_test_{os.getpid()}"  # private per test run: parallel runs never share tables
_skipped_services: set[str] = set()


def _require_services() -> bool:
    return os.environ.get("BIGMED_REQUIRE_SERVICES") == "1"


def postgres_url() -> str:
    """URL of the test PostgreSQL (private schema), or skip/fail when it cannot be reached."""
    base = os.environ.get("BIGMED_TEST_POSTGRES_URL", PG_DEFAULT)
    try:
        import psycopg

        with psycopg.connect(base, connect_timeout=3, autocommit=True) as conn:
            conn.execute(f"CREATE SCHEMA IF NOT EXISTS {PG_SCHEMA}")
        if not _pg_used:
            _pg_used.append(base)
    except Exception as exc:  # noqa: BLE001  # any connection failure means the server is unavailable
        if _require_services():
            pytest.fail(f"PostgreSQL is required (BIGMED_REQUIRE_SERVICES=1) but unreachable at {base}: {exc}")
        _skipped_services.add(f"PostgreSQL at {base}: {exc}")
        pytest.skip(f"PostgreSQL not reachable at {base}; PostgreSQL tests SKIPPED")
    sep = "&" if "?" in base else "?"
    return f"{base}{sep}options=-csearch_path%3D{PG_SCHEMA}"


_pg_used: list[str] = []


def pytest_sessionfinish(session: Any, exitstatus: int) -> None:
    """Drop this run's private PostgreSQL schema."""
    if not _pg_used:
        return
    import psycopg

    try:
        with psycopg.connect(_pg_used[0], connect_timeout=3, autocommit=True) as conn:
            conn.execute(f"DROP SCHEMA IF EXISTS {PG_SCHEMA} CASCADE")
    except Exception as exc:  # noqa: BLE001  # cleanup only: report, never fail the run for it
        print(f"could not drop schema {PG_SCHEMA}: {exc}")


def redis_url() -> str:
    """URL of the test Redis, or skip/fail when it cannot be reached (like PostgreSQL)."""
    url = os.environ.get("BIGMED_TEST_REDIS_URL", "redis://127.0.0.1:6379/15")
    try:
        import redis

        redis.Redis.from_url(url, socket_connect_timeout=2).ping()
    except Exception as exc:  # noqa: BLE001  # any connection failure means the server is unavailable
        if _require_services():
            pytest.fail(f"Redis is required (BIGMED_REQUIRE_SERVICES=1) but unreachable at {url}: {exc}")
        _skipped_services.add(f"Redis at {url}: {exc}")
        pytest.skip(f"Redis not reachable at {url}; Redis tests SKIPPED")
    return url


def pytest_terminal_summary(terminalreporter: Any) -> None:
    if _skipped_services:
        terminalreporter.write_sep("!", "SERVICE TESTS SKIPPED", red=True, bold=True)
        for line in sorted(_skipped_services):
            terminalreporter.write_line(f"  not tested against {line}", red=True)
        terminalreporter.write_line("  Start the servers (see README) or set BIGMED_TEST_POSTGRES_URL.", red=True)


@pytest.fixture(params=["sqlite", "postgresql"])
def database_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path}/test.sqlite"
    return postgres_url()


@pytest.fixture
def sqlite_url(tmp_path: Path) -> str:
    return f"sqlite:///{tmp_path}/test.sqlite"


def make_app(database_url: str, **overrides: Any) -> Any:
    from server import create_app
    from server.config import Config

    # no HPO warm-up thread unless a test asks: it reads the database while reset() truncates it
    overrides.setdefault("hpo_preload", "off")
    overrides.setdefault("base_url", "http://testserver")
    cfg = Config(database_url=database_url, **overrides)
    app = create_app(cfg)
    app.extensions["bigmed"].store.reset()  # closing the store flushes the audit writer (Store.before_close)
    return app


@pytest.fixture
def store(database_url: str) -> Iterator[Any]:
    """An empty store of the backend under test, closed afterwards."""
    from server.store import open_store

    s = open_store(database_url)
    s.reset()
    yield s
    s.close()


@pytest.fixture
def postgres_store() -> Iterator[Any]:
    """An empty PostgreSQL store (this run's private schema, dropped at the end), closed afterwards."""
    from server.store import open_store

    s = open_store(postgres_url())
    s.reset()
    yield s
    s.close()


@pytest.fixture
def app(database_url: str) -> Iterator[Any]:
    application = make_app(database_url)
    yield application
    application.extensions["bigmed"].store.close()


@pytest.fixture
def client(app: Any) -> Any:
    return app.test_client()
