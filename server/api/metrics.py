"""``/metrics``: Prometheus text format (prometheus-client), and the server-side time of every request.

Request counts and latencies per interaction (the Flask endpoint name, e.g. ``fhir.read``,
``fhir.search_type``) and status class, plus the query cache's hit/miss/error counters and
latencies from :mod:`server.cache`.

Server-side time is taken by a WSGI wrapper around the whole Flask app (:class:`ServerTiming`):
from the moment the server hands the request to the app until the app starts the response —
routing, every ``before_request``/``after_request`` hook (authorization, the audit record, rate
limit, security headers), the view and serialisation; not the network or the client. The same
figure goes into the histogram ``bigmed_request_seconds`` and, per response, into a
``Server-Timing: app;dur=<ms>`` header (https://www.w3.org/TR/server-timing/), so a benchmark can
tell server time from HTTP overhead.

Several worker processes (``python -m server serve --workers N``) share one view through
prometheus-client's multiprocess mode (https://prometheus.github.io/client_python/multiprocess/):
the CLI points ``PROMETHEUS_MULTIPROC_DIR`` at a fresh directory before the workers fork
(:func:`enable_multiprocess`), every worker writes its figures to files there, and a scrape of
any worker sums all of them. Without it (the Flask dev server, tests) figures are the process's
own.
"""

from __future__ import annotations

import glob
import os
import time
from collections.abc import Callable, Iterable
from typing import Any

from flask import Blueprint, Flask, Response
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Histogram, generate_latest, multiprocess
from prometheus_client import values as prometheus_values

from server.api.http import ctx

__all__ = ["ServerTiming", "bp", "enable_multiprocess", "init_app", "worker_exited"]

bp = Blueprint("metrics", __name__)

REQUESTS = Counter("bigmed_requests_total", "HTTP requests by interaction and status", ["interaction", "status"])
LATENCY = Histogram(
    "bigmed_request_seconds",
    "Server-side request time by interaction (WSGI app entry to response start)",
    ["interaction"],
    # fine below 5 ms: the cache's goal (p50 <= 2 ms) is read off these buckets, and a hit takes ~0.1-0.3 ms
    buckets=(
        0.0001,
        0.0002,
        0.0003,
        0.0005,
        0.00075,
        0.001,
        0.0015,
        0.002,
        0.003,
        0.005,
        0.0075,
        0.01,
        0.025,
        0.05,
        0.1,
        0.25,
        0.5,
        1.0,
        2.5,
        10.0,
    ),
)

_DB_FILES = ("counter_*.db", "gauge_*.db", "histogram_*.db", "summary_*.db")


@bp.get("/metrics")
def metrics() -> Response:
    directory = ctx().config.metrics_dir
    if directory:  # every worker's files, summed
        registry = CollectorRegistry()
        multiprocess.MultiProcessCollector(registry, path=directory)
        return Response(generate_latest(registry), content_type=CONTENT_TYPE_LATEST)
    return Response(generate_latest(), content_type=CONTENT_TYPE_LATEST)


def enable_multiprocess(directory: str) -> None:
    """Make this process (and the workers it forks) keep metrics in files under ``directory``.

    Call before the workers fork and before any metric value exists (ours are all labelled, so
    their values are created at first use, in the workers). prometheus-client chooses its value
    class from ``PROMETHEUS_MULTIPROC_DIR`` when it is first imported, which happened with this
    module; the variable is set for the workers and the choice is made again here. Stale files
    of an earlier run are removed, as the library asks.
    """
    os.makedirs(directory, exist_ok=True)
    for pattern in _DB_FILES:
        for path in glob.glob(os.path.join(directory, pattern)):
            os.remove(path)
    os.environ["PROMETHEUS_MULTIPROC_DIR"] = directory
    prometheus_values.ValueClass = prometheus_values.get_value_class()


def worker_exited(pid: int, directory: str) -> None:
    """gunicorn ``child_exit``: the library's bookkeeping for a worker that is gone."""
    multiprocess.mark_process_dead(pid, directory)


StartResponse = Callable[..., Any]

#: environ key where a WSGI layer that answers without Flask (server/api/cache_front.py) names the
#: interaction it served: the metrics label it as Flask's endpoint would be
ENDPOINT_KEY = "bigmed.endpoint"


class ServerTiming:
    """WSGI wrapper: times each request up to the start of its response (histogram + header)."""

    def __init__(self, app: Callable[[dict[str, Any], StartResponse], Iterable[bytes]]) -> None:
        self.app = app
        self._series: dict[tuple[str, str], tuple[Any, Any]] = {}

    def __call__(self, environ: dict[str, Any], start_response: StartResponse) -> Iterable[bytes]:
        started = time.perf_counter()

        def timed_start(status: str, headers: list[tuple[str, str]], exc_info: Any = None) -> Any:
            elapsed = time.perf_counter() - started
            req = environ.get("werkzeug.request")
            interaction = getattr(req, "endpoint", None) or environ.get(ENDPOINT_KEY) or "unknown"
            if interaction != "metrics.metrics":
                series = self._series.get((interaction, status[:1]))
                if series is None:  # labels() locks and looks up: once per (interaction, status class)
                    series = (LATENCY.labels(interaction), REQUESTS.labels(interaction, f"{status[:1]}xx"))
                    self._series[(interaction, status[:1])] = series
                series[0].observe(elapsed)
                series[1].inc()
            headers.append(("Server-Timing", f"app;dur={elapsed * 1000:.3f}"))
            return start_response(status, headers, exc_info)

        return self.app(environ, timed_start)


def init_app(app: Flask) -> None:
    """Time every request (call last: the wrapper must enclose everything the app does)."""
    app.wsgi_app = ServerTiming(app.wsgi_app)  # type: ignore[method-assign]
