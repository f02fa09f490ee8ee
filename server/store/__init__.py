"""Persistence behind one Protocol (:class:`server.store.base.Store`), chosen by URL scheme."""

from __future__ import annotations

from server.store.base import Store
from server.store.postgres import PostgresStore
from server.store.sqlite import SqliteStore

__all__ = ["open_store"]


def open_store(url: str, pool_size: int = 8) -> Store:
    """Open (and migrate) the store named by ``DATABASE_URL``."""
    if url.startswith("sqlite://"):
        return SqliteStore(url)
    if url.startswith(("postgresql://", "postgres://")):
        return PostgresStore(url, pool_size=pool_size)
    raise ValueError(f"unsupported DATABASE_URL scheme: {url.split(':', 1)[0]!r} (use sqlite:// or postgresql://)")
