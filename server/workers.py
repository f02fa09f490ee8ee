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
"""

from __future__ import annotations

import gc
import os
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager

__all__ = ["bulk_worker", "orphan_guard", "paused_gc"]


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
