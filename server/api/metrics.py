"""``/metrics``: Prometheus text format (prometheus-client).

Request counts and latencies per interaction (the Flask endpoint name, e.g. ``fhir.read``,
``fhir.search_type``) and status class, plus the query cache's hit/miss/error counters and
latencies from :mod:`server.cache`. Figures are per worker process; with several gunicorn
workers a scrape sees the worker that answered it (multiprocess aggregation is future work).
"""

from __future__ import annotations

import time
from typing import Any

from flask import Blueprint, Flask, Response, g, request
from prometheus_client import CONTENT_TYPE_LATEST, Counter, Histogram, generate_latest

__all__ = ["bp", "init_app"]

bp = Blueprint("metrics", __name__)

REQUESTS = Counter("bigmed_requests_total", "HTTP requests by interaction and status", ["interaction", "status"])
LATENCY = Histogram(
    "bigmed_request_seconds",
    "HTTP request latency by interaction",
    ["interaction"],
    buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 10.0),
)


@bp.get("/metrics")
def metrics() -> Response:
    return Response(generate_latest(), content_type=CONTENT_TYPE_LATEST)


def init_app(app: Flask) -> None:
    """Time every request and count it by interaction."""

    @app.before_request
    def _start() -> None:
        g.bigmed_started = time.perf_counter()

    @app.after_request
    def _count(resp: Response) -> Response:
        started: Any = g.get("bigmed_started")
        interaction = request.endpoint or "unknown"
        if started is not None and interaction != "metrics.metrics":
            LATENCY.labels(interaction).observe(time.perf_counter() - started)
            REQUESTS.labels(interaction, f"{resp.status_code // 100}xx").inc()
        return resp
