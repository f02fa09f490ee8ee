"""Bulk Data Access IG v2 ``$export`` over HTTP (https://hl7.org/fhir/uv/bulkdata/export.html).

Routes only; the domain is :mod:`server.fhir.operations.export`.

- Kick-off: ``GET|POST /fhir/$export``, ``/fhir/Patient/$export``, ``/fhir/Group/{id}/$export``
  (POST takes a Parameters resource). Needs ``Prefer: respond-async`` (400 otherwise) and an
  ``Accept`` that allows ``application/fhir+json`` (406 otherwise; none means that). Answers 202
  with ``Content-Location: …/fhir/$export-status/{job}`` and an informational OperationOutcome.
- Status: ``GET /fhir/$export-status/{job}`` — 202 with ``X-Progress`` and ``Retry-After``
  while running; 200 with the manifest (``application/json``, ``Expires``) when done; the job's
  error as an OperationOutcome (4xx/5xx) when it failed; 404 once cancelled or expired.
  ``DELETE`` cancels a running export or deletes a finished one with its files: 202.
- Files: ``GET /fhir/$export-files/{job}/{file}`` streams one NDJSON file
  (``application/fhir+ndjson``).

Authorisation (:mod:`server.auth.access`): a patient-level token cannot export; the exported types
are those the token may read and search (a ``_type`` it may not is a 403); a job belongs to the
client that started it (others get 404 for its status and files).
"""

from __future__ import annotations

from flask import Blueprint, Response, request, send_file

from server.api.http import ctx, fhir_base, fhir_response, negotiate, prefer, read_json_body
from server.auth.access import current_access
from server.errors import BadRequest, Issue, operation_outcome
from server.fhir.operations import export
from server.fhir.operations.genomics import parameters_pairs

__all__ = ["bp"]

bp = Blueprint("bulk", __name__, url_prefix="/fhir")

NDJSON = "application/fhir+ndjson"
_PASSED = ("_format", "_pretty")


def _request_url() -> str:
    query = request.query_string.decode("utf-8", "replace")
    path = request.path.removeprefix("/fhir")
    return f"{fhir_base()}{path}" + (f"?{query}" if query else "")


def _kick_off(level: str, group_id: str | None = None) -> Response:
    media = negotiate()
    if prefer("respond-async") is None:
        raise BadRequest("$export runs asynchronously: send the header 'Prefer: respond-async'")
    pairs = [(k, v) for k, v in request.args.items(multi=True) if k not in _PASSED]
    if request.method == "POST":
        pairs += parameters_pairs(read_json_body())
    context = ctx()
    req = export.parse_request(context, level, pairs, _request_url(), group_id)
    job_id = export.kick_off(context, export.authorize(context, req, current_access()))
    status_url = f"{fhir_base()}/$export-status/{job_id}"
    note = f"Export started: poll {status_url}"
    return fhir_response(
        operation_outcome([Issue(note, "information", "informational")]), 202, {"Content-Location": status_url}, media
    )


@bp.route("/$export", methods=["GET", "POST"])
def export_system() -> Response:
    """System-level export: every resource (of ``_type``)."""
    return _kick_off("system")


@bp.route("/Patient/$export", methods=["GET", "POST"])
def export_patients() -> Response:
    """Patient-level export: the Patient compartment of every patient."""
    return _kick_off("patient")


@bp.route("/Group/<id_>/$export", methods=["GET", "POST"])
def export_group(id_: str) -> Response:
    """Group-level export: the Patient compartment of the Group's member Patients."""
    return _kick_off("group", id_)


@bp.get("/$export-status/<job_id>")
def export_status(job_id: str) -> Response:
    result = export.poll(ctx(), job_id, fhir_base(), current_access())
    if result.manifest is None:
        return Response(status=result.status, headers=result.headers)
    return fhir_response(result.manifest, 200, result.headers, "application/json")


@bp.delete("/$export-status/<job_id>")
def export_cancel(job_id: str) -> Response:
    export.cancel(ctx(), job_id, current_access())
    note = f"Export {job_id} cancelled; its files are deleted"
    return fhir_response(operation_outcome([Issue(note, "information", "informational")]), 202)


@bp.get("/$export-files/<job_id>/<name>")
def export_file(job_id: str, name: str) -> Response:
    path = export.export_file(ctx(), job_id, name, current_access())
    return send_file(path, mimetype=NDJSON, conditional=True, max_age=0)
