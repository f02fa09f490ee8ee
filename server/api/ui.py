"""The sandbox web UI at ``/``: a page for developers trying the API (DESIGN.md, fixed interfaces).

Static files only (``server/api/ui/``: one HTML page, one script, one stylesheet; no build step).
The page talks to the same public endpoints any client uses — ``/fhir`` (search, read,
``$everything``), ``/healthz`` — so it shows nothing a client could not fetch itself:

* ``#/`` — patients (search by name or identifier), the server's health and links to the
  CapabilityStatement and the CDS Hooks discovery document;
* ``#/patient/{id}`` — one patient: demographics, conditions, medications, labs, genomic results
  (variant, genotype and therapeutic-implication Observations, genomic reports), with the raw JSON
  of any resource one click away (CDS cards link here);
* ``#/console`` — a request console: any method, path and body against ``/fhir``, with the status,
  headers and body of the answer.

With ``BIGMED_AUTH=smart`` the page asks for a bearer token (kept in the browser's session
storage only) and sends it with every request.
"""

from __future__ import annotations

from pathlib import Path

from flask import Blueprint, Response, send_from_directory

__all__ = ["bp"]

_STATIC = Path(__file__).resolve().parent / "ui"

_PAGE_POLICY = "default-src 'none'; script-src 'self'; style-src 'self'; connect-src 'self'; frame-ancestors 'none'"

bp = Blueprint("ui", __name__, static_folder=str(_STATIC), static_url_path="/ui")


@bp.get("/")
def index() -> Response:
    response = send_from_directory(_STATIC, "index.html", mimetype="text/html")
    response.headers["Cache-Control"] = "no-cache"
    # the API's policy is default-src 'none'; the page needs its own script, style and fetch()
    response.headers["Content-Security-Policy"] = _PAGE_POLICY
    return response
