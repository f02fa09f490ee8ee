"""``/healthz``: liveness, the state of the store and of the query cache (``degraded`` when Redis fails)."""

from __future__ import annotations

from flask import Blueprint, Response

from server import jsonio
from server.api.http import ctx

__all__ = ["bp"]

bp = Blueprint("health", __name__)


@bp.get("/healthz")
def healthz() -> Response:
    context = ctx()
    try:
        context.store.query("SELECT 1")
        store = "ok"
    except Exception as exc:  # noqa: BLE001  # any failure of the database means "down" here
        store = f"down: {type(exc).__name__}"
    cache = context.cache.health() if context.cache is not None else {"backend": "off", "status": "ok"}
    status = "ok" if store == "ok" and cache["status"] == "ok" else "degraded"
    body = {"status": status, "store": {"backend": context.store.dialect, "status": store}, "cache": cache}
    # a degraded cache still serves (from the database): only a store failure makes the server unhealthy
    code = 503 if store != "ok" else 200
    return Response(jsonio.dumps(body), status=code, content_type="application/json")
