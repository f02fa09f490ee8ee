"""``/healthz``: liveness and the state of the store."""

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
    status = "ok" if store == "ok" else "degraded"
    body = {"status": status, "store": {"backend": context.store.dialect, "status": store}}
    return Response(jsonio.dumps(body), status=200 if status == "ok" else 503, content_type="application/json")
