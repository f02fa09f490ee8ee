"""Background jobs of the asynchronous request pattern (http://hl7.org/fhir/R4/async.html).

A long operation (Bulk Data ``$export``, a large ``$ingest-vcf``) answers its kick-off with 202
and a status URL (``Content-Location``), then runs in a daemon thread of the process that
received it. Whatever the poll needs lives outside that process (a Task resource, or a state
file on disk that every gunicorn worker can read), so any worker can answer it.

This module owns the parts every such job shares:

- :func:`run_in_background` — the thread, and what happens when the work raises: a typed
  :class:`server.errors.FhirError` is recorded with its status and message; anything else is
  logged with a reference and recorded as a 500 whose message names the reference (no stack
  trace ever reaches a client), so a job never dies silently and never takes the worker down;
- :func:`write_json_atomically` / :func:`read_json` — state files replaced atomically
  (``os.replace``), so a poll never reads half a file;
- :func:`new_job_id`.
"""

from __future__ import annotations

import logging
import os
import threading
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

from server import jsonio
from server.errors import FhirError

__all__ = ["new_job_id", "read_json", "run_in_background", "write_json_atomically"]

log = logging.getLogger(__name__)


def new_job_id() -> str:
    """A random job id, safe in a URL and a file name."""
    return uuid.uuid4().hex


def run_in_background(name: str, work: Callable[[], None], failed: Callable[[int, str], None]) -> threading.Thread:
    """Run ``work()`` in a daemon thread; when it raises, ``failed(http_status, message)`` records it."""

    def run() -> None:
        try:
            work()
        except FhirError as err:
            _record(name, failed, err.status, err.message)
        except Exception:  # a background job has no caller to raise to: log it, record the failure
            reference = uuid.uuid4().hex[:12]
            log.exception("background job %s failed (reference %s)", name, reference)
            message = f"Internal server error (reference {reference}); the details are in the server log"
            _record(name, failed, 500, message)

    thread = threading.Thread(target=run, name=name, daemon=True)
    thread.start()
    return thread


def _record(name: str, failed: Callable[[int, str], None], status: int, message: str) -> None:
    try:
        failed(status, message)
    except Exception:  # nothing left to report to
        log.exception("could not record the failure of background job %s", name)


def write_json_atomically(path: Path, doc: Any) -> None:
    """Replace ``path`` with ``doc`` as JSON in one step (readers see the old or the new file)."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{threading.get_ident()}.tmp")
    tmp.write_bytes(jsonio.dumps(doc))
    os.replace(tmp, path)


def read_json(path: Path) -> Any | None:
    """The JSON in ``path``; None when it does not exist (any more)."""
    try:
        return jsonio.loads(path.read_bytes())
    except FileNotFoundError:
        return None
