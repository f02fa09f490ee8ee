"""Worker processes that never outlive the command that started them.

The bulk paths (``load``, ``ingest-hl7``, ``reindex``) prepare work in pools of worker
processes. When the parent dies without a chance to shut its pool down (SIGKILL, OOM killer),
forked workers keep one another's ends of the task pipe open, so none of them ever sees
end-of-file: they would wait forever. :func:`orphan_guard` is the pools' initializer: a daemon
thread in each worker that exits it as soon as its parent process is gone.

:func:`paused_gc` keeps CPython's cyclic garbage collector out of bulk work: a bulk write creates
hundreds of thousands of small acyclic containers (rows, tuples, unpickled batches), each batch
setting off collections that find nothing to free (measured on the VCF ingest: about a tenth of
its CPU time). Reference counting still frees them; the collector runs again afterwards.

:class:`Child` is a forked process that sends messages back over a pipe (the VCF ingestion's mapping
process); :class:`Forked` computes one function's result so while the caller goes on (the VCF
ingestion reads the file's PGx calls so, beside the process that maps it).
"""

from __future__ import annotations

import gc
import multiprocessing
import os
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from multiprocessing.connection import Connection
from typing import Any, Generic, TypeVar

__all__ = ["Child", "Forked", "bulk_worker", "orphan_guard", "paused_gc"]

T = TypeVar("T")


class _GcPauses:
    """Bulk jobs running in this process with the collector paused, and whether to resume it."""

    lock = threading.Lock()
    running = 0
    resume = False


_POLL_SECONDS = 0.5


def orphan_guard(parent: int) -> None:
    """Pool initializer (``initargs=(os.getpid(),)``): exit this worker when ``parent`` is gone."""

    def watch() -> None:
        while os.getppid() == parent:
            time.sleep(_POLL_SECONDS)
        os._exit(1)  # no cleanup to run: the parent that wanted the results is dead

    threading.Thread(target=watch, name="orphan-guard", daemon=True).start()


def bulk_worker(parent: int) -> None:
    """Initializer of a spawned bulk pool worker: :func:`orphan_guard`, and the collector off for good
    (the process does nothing but bulk work; see :func:`paused_gc`)."""
    orphan_guard(parent)
    gc.disable()


@contextmanager
def paused_gc() -> Iterator[None]:
    """The cyclic garbage collector off while the block runs (nested and concurrent uses count).

    The collector is turned back on, and run once, when the last such block of the process ends,
    if it was on when the first one started.
    """
    p = _GcPauses
    with p.lock:
        if p.running == 0:
            p.resume = gc.isenabled()
            gc.disable()
        p.running += 1
    try:
        yield
    finally:
        with p.lock:
            p.running -= 1
            resume = p.running == 0 and p.resume
            if resume:
                gc.enable()
        if resume:
            gc.collect(1)


def _run_forked(conn: Connection, fn: Callable[..., Any], args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
    try:
        try:
            conn.send((True, fn(*args, **kwargs)))
        except BaseException as exc:  # noqa: BLE001  # handed to the parent, which raises it
            try:
                conn.send((False, exc))
            except Exception:  # noqa: BLE001  # an exception pickle cannot take: its name and message
                conn.send((False, RuntimeError(f"{type(exc).__name__}: {exc}")))
    finally:
        conn.close()


class Child:
    """A forked daemon process, started at once, that sends this one messages over a pipe.

    ``target(conn, *args)`` runs in it with the sending end. :meth:`recv` turns its dying without a
    word into a ``RuntimeError`` with its exit code; :meth:`close` (also on leaving a ``with``)
    ends it if it still runs and reaps it.
    """

    def __init__(self, target: Callable[..., None], args: tuple[Any, ...], name: str) -> None:
        context = multiprocessing.get_context("fork")
        self._receive, send = context.Pipe(duplex=False)
        self.process = context.Process(target=target, args=(send, *args), name=name, daemon=True)
        self.process.start()
        send.close()

    def recv(self, what: str) -> Any:
        """The next message; ``what`` names the process in the error when it ended without sending one."""
        try:
            return self._receive.recv()
        except EOFError:
            self.process.join(timeout=5)  # reaped, so that its exit code is known
            raise RuntimeError(f"{what} ended unexpectedly (exit code {self.process.exitcode})") from None

    def close(self) -> None:
        self._receive.close()
        if self.process.is_alive():
            self.process.terminate()
        self.process.join()

    def __enter__(self) -> Child:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class Forked(Child, Generic[T]):
    """``fn(*args, **kwargs)`` computed in a forked process, started at once; :meth:`result` waits.

    For CPU-bound work beside other work (threads would share one core: both are Python). The
    process is a daemon: it dies with the caller. ``fn``'s exception is raised by :meth:`result`
    (a ``RuntimeError`` naming it when it cannot be pickled); :meth:`close` ends an unwanted one.
    """

    def __init__(self, fn: Callable[..., T], *args: Any, **kwargs: Any) -> None:
        super().__init__(_run_forked, (fn, args, kwargs), getattr(fn, "__name__", "forked"))

    def __enter__(self) -> Forked[T]:
        return self

    def result(self) -> T:
        try:
            ok, value = self.recv(f"the process {self.process.name}")
        finally:
            self.close()
        if ok:
            return value  # what fn returned, pickled
        raise value
