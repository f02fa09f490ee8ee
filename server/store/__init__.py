"""Persistence behind one Protocol (:class:`server.store.base.Store`), chosen by URL scheme."""

from __future__ import annotations

from collections.abc import Iterable

from server.store.base import DerivedIndex, Store
from server.store.postgres import PostgresStore
from server.store.sqlite import SqliteStore

__all__ = ["open_store"]


def open_store(url: str, pool_size: int = 8, derived: Iterable[DerivedIndex] = ()) -> Store:
    """Open (and migrate) the store named by ``DATABASE_URL``, keeping the ``derived`` indexes in step."""
    store: SqliteStore | PostgresStore
    if url.startswith("sqlite://"):
        store = SqliteStore(url)
    elif url.startswith(("postgresql://", "postgres://")):
        store = PostgresStore(url, pool_size=pool_size)
    else:
        raise ValueError(f"unsupported DATABASE_URL scheme: {url.split(':', 1)[0]!r} (use sqlite:// or postgresql://)")
    store.derived = tuple(derived)
    return store
