"""Rebuild the search index tables from the stored current resources (``python -m server reindex``).

Index rows are written with each resource (http://hl7.org/fhir/R4/search.html: values are
extracted from each SearchParameter's expression at write time); when the extraction rules or
the registry change (a new SearchParameter in ``profiles/``, a fix in ``extract.py``), this
recomputes them: it reads every current resource (optionally of one type) in ``rid`` order,
extracts its rows and replaces them batch by batch through :meth:`Store.reindex`, one write
transaction per batch. A resource written meanwhile keeps the rows of its new version (the store
skips entries whose version is no longer current), so a reindex can run beside a live server.
At the end the planner statistics are refreshed (:meth:`Store.analyze`).

With ``workers`` > 1, parsing and extraction (most of the CPU) run in that many worker processes
(``spawn``: they import the server afresh and build the default registry from ``profiles/``)
while this process reads and writes; at most two batches per worker are in flight.
"""

from __future__ import annotations

import multiprocessing
import os
from collections import deque
from collections.abc import Callable, Iterator, Sequence
from multiprocessing.pool import AsyncResult
from typing import Any, NamedTuple

from server import jsonio
from server.search.extract import extract
from server.search.registry import Registry, default_registry
from server.store.base import Store, StoredResource
from server.workers import bulk_worker, paused_gc

__all__ = ["count_current", "reindex"]

Entry = tuple[int, int, str, Any]  # rid, version, type, index rows


class _Rows(NamedTuple):
    """Index rows by table, as :meth:`Store.reindex` reads them (cheap to pickle)."""

    token: list[Any]
    string: list[Any]
    reference: list[Any]
    date: list[Any]
    number: list[Any]
    quantity: list[Any]
    uri: list[Any]


def count_current(store: Store, type_: str | None = None) -> int:
    """How many current resources a reindex of ``type_`` (None: all) will read."""
    sql = "SELECT COUNT(*) FROM resources WHERE deleted = 0" + (" AND res_type = ?" if type_ else "")
    return int(store.query(sql, (type_,) if type_ else ())[0][0])


def _entry(rid: int, version: int, type_: str, content: bytes, registry: Registry) -> Entry:
    x = extract(jsonio.loads(content), registry)
    return rid, version, type_, _Rows(x.token, x.string, x.reference, x.date, x.number, x.quantity, x.uri)


def _extract_batch(items: Sequence[tuple[int, int, str, bytes]]) -> list[Entry]:
    """Worker process: index rows of a batch of stored resources, with the default registry."""
    registry = default_registry()
    return [_entry(rid, version, type_, content, registry) for rid, version, type_, content in items]


def _batches(store: Store, type_: str | None, batch: int) -> Iterator[list[StoredResource]]:
    chunk: list[StoredResource] = []
    for res in store.iter_current(type_, batch=batch):
        if res.content is not None:
            chunk.append(res)
            if len(chunk) >= batch:
                yield chunk
                chunk = []
    if chunk:
        yield chunk


def reindex(
    store: Store,
    registry: Registry,
    type_: str | None = None,
    batch: int = 500,
    progress: Callable[[int], Any] | None = None,
    workers: int = 0,
) -> int:
    """Recompute the index rows of every current resource (of ``type_``); returns how many were replaced.

    ``progress`` is called with the number of resources written after each batch. ``workers``
    > 1 extracts in worker processes (only with the default registry, which they rebuild).
    """
    done = 0

    def write(entries: Sequence[Entry]) -> None:
        nonlocal done
        done += store.reindex(entries)
        if progress is not None:
            progress(len(entries))

    if workers > 1 and registry is default_registry():
        with paused_gc(), multiprocessing.get_context("spawn").Pool(workers, bulk_worker, (os.getpid(),)) as pool:
            pending: deque[AsyncResult[list[Entry]]] = deque()
            for chunk in _batches(store, type_, batch):
                items = [(r.rid, r.version, r.type, r.content) for r in chunk if r.content is not None]
                pending.append(pool.apply_async(_extract_batch, (items,)))
                if len(pending) >= 2 * workers:
                    write(pending.popleft().get())
            while pending:
                write(pending.popleft().get())
    else:
        with paused_gc():
            for chunk in _batches(store, type_, batch):
                write([_entry(r.rid, r.version, r.type, r.content, registry) for r in chunk if r.content is not None])
    store.analyze()  # the rows just written change what the planner should expect
    return done
