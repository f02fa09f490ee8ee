"""Worker processes that never outlive the command that started them.

The bulk paths (``load``, ``ingest-hl7``, ``reindex``) prepare work in pools of worker
processes. When the parent dies without a chance to shut its pool down (SIGKILL, OOM killer),
forked workers keep one another's ends of the task pipe open, so none of them ever sees
end-of-file: they would wait forever. :func:`orphan_guard` is the pools' initializer: a daemon
thread in each worker that exits it as soon as its parent process is gone.
"""

from __future__ import annotations

import os
import threading
import time

__all__ = ["orphan_guard"]

_POLL_SECONDS = 0.5


def orphan_guard(parent: int) -> None:
    """Pool initializer (``initargs=(os.getpid(),)``): exit this worker when ``parent`` is gone."""

    def watch() -> None:
        while os.getppid() == parent:
            time.sleep(_POLL_SECONDS)
        os._exit(1)  # no cleanup to run: the parent that wanted the results is dead

    threading.Thread(target=watch, name="orphan-guard", daemon=True).start()
