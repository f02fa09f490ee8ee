"""The FHIR REST API under ``/fhir`` (http://hl7.org/fhir/R4/http.html).

Routes only: each parses the request, calls one interaction in :mod:`server.fhir` and
serialises the answer with the headers the spec asks for (ETag ``W/"version"``,
Last-Modified, Location, ``Prefer: return=…``). Errors are raised as typed errors and become
OperationOutcomes in :mod:`server.errors`.
"""

from __future__ import annotations

from typing import Any

from flask import Blueprint, Response, request

from server import jsonio
from server.api.caching import cached, search_depends_on
from server.api.http import (
    ctx,
    fhir_base,
    fhir_response,
    if_match,
    negotiate,
    prefer,
    query_pairs,
    read_json_body,
)
from server.errors import BadRequest, Issue, NotFound, UnsupportedMediaType, error_for_status, operation_outcome
from server.fhir import crud
from server.fhir.bundle import etag, http_date
from server.fhir.capability import capability_statement
from server.fhir.history import history
from server.fhir.operations import call_pgx as pgx_calling
from server.fhir.operations import genomics, rare
from server.fhir.operations import ingest_vcf as ingest
from server.fhir.operations.everything import everything
from server.fhir.search import search, search_compartment, search_system
from server.fhir.subset import subset
from server.fhir.transaction import process as process_bundle
from server.store.base import StoredResource

__all__ = ["bp"]

bp = Blueprint("fhir", __name__, url_prefix="/fhir")


def _headers(res: StoredResource, location: bool = False) -> dict[str, str]:
    headers = {"ETag": etag(res.version), "Last-Modified": http_date(res.ts)}
    if location:
        headers["Location"] = f"{fhir_base()}/{res.type}/{res.id}/_history/{res.version}"
    return headers


def _resource_response(res: StoredResource, status: int = 200, location: bool = False) -> Response:
    media = negotiate()
    headers = _headers(res, location)
    summary = request.args.get("_summary")
    elements = request.args.get("_elements")
    if summary or elements:
        assert res.content is not None
        wanted = [e.split(".")[-1] for e in elements.split(",")] if elements else None
        return fhir_response(subset(jsonio.loads(res.content), summary, wanted), status, headers, media)
    return fhir_response(res.content, status, headers, media)


def _write_response(result: crud.WriteResult) -> Response:
    """The answer to create/update/patch, honouring ``Prefer: return``."""
    res = result.resource
    status = 201 if result.created else 200
    headers = _headers(res, location=True)
    wanted = (prefer("return") or "representation").lower()
    if wanted == "minimal":
        return fhir_response(None, status, headers)
    if wanted == "operationoutcome":
        verb = "created" if result.created else ("updated" if result.changed else "matched (not changed)")
        outcome = operation_outcome(
            [Issue(f"{res.type}/{res.id} {verb}, version {res.version}", "information", "informational")]
        )
        return fhir_response(outcome, status, headers, negotiate())
    return fhir_response(res.content, status, headers, negotiate())


# -- system level ------------------------------------------------------------------------


@bp.get("/metadata")
def metadata() -> Response:
    return fhir_response(capability_statement(ctx(), fhir_base()), media=negotiate())


@bp.get("/_history")
def history_system() -> Response:
    return fhir_response(history(ctx(), fhir_base(), request.args.to_dict()), media=negotiate())


@bp.post("")
@bp.post("/")
def transaction() -> Response:
    """A transaction or batch Bundle (http.html#transaction); ``Prefer: return`` applies per entry."""
    media = negotiate()
    body = read_json_body()
    return fhir_response(process_bundle(ctx(), fhir_base(), body, prefer("return")), media=media)


def _strict() -> bool:
    return (prefer("handling") or "").lower() == "strict"


def _form_only() -> None:
    if request.method == "POST" and request.mimetype not in ("application/x-www-form-urlencoded", ""):
        raise BadRequest("POST _search takes its parameters as application/x-www-form-urlencoded")


@bp.get("")
@bp.post("/_search")
def search_all() -> Response:
    """System-level search (``_type`` and common parameters)."""
    media = negotiate()
    _form_only()
    return fhir_response(search_system(ctx(), fhir_base(), query_pairs(), strict=_strict()), media=media)


# -- type level --------------------------------------------------------------------------


@bp.get("/<type_>")
def search_type(type_: str) -> Response:
    media = negotiate()
    return cached(
        search_depends_on(type_, request.args),
        lambda: fhir_response(search(ctx(), fhir_base(), type_, query_pairs(), strict=_strict()), media=media),
        media,
    )


@bp.post("/<type_>/_search")
def search_type_post(type_: str) -> Response:
    media = negotiate()
    if request.mimetype not in ("application/x-www-form-urlencoded", ""):
        raise BadRequest("POST _search takes its parameters as application/x-www-form-urlencoded")
    return fhir_response(search(ctx(), fhir_base(), type_, query_pairs(), strict=_strict()), media=media)


@bp.post("/<type_>")
def create(type_: str) -> Response:
    negotiate()
    body = read_json_body()
    result = crud.create(ctx(), type_, body, request.headers.get("If-None-Exist"))
    return _write_response(result)


def _criteria() -> str:
    criteria = request.query_string.decode("utf-8", "replace")
    kept = "&".join(p for p in criteria.split("&") if p and not p.startswith(("_format=", "_pretty=")))
    if not kept:
        raise BadRequest("A conditional interaction needs search criteria in the URL")
    return kept


@bp.put("/<type_>")
def conditional_update(type_: str) -> Response:
    negotiate()
    body = read_json_body()
    return _write_response(crud.conditional_update(ctx(), type_, _criteria(), body, if_match()))


@bp.patch("/<type_>")
def conditional_patch(type_: str) -> Response:
    negotiate()
    ops = read_json_body(patch=True)
    return _write_response(crud.conditional_patch(ctx(), type_, _criteria(), ops, if_match()))


@bp.delete("/<type_>")
def conditional_delete(type_: str) -> Response:
    results = crud.conditional_delete(ctx(), type_, _criteria())
    return _delete_response([r.resource for r in results if r.changed], f"{type_}?{_criteria()}")


@bp.get("/<type_>/_history")
def history_type(type_: str) -> Response:
    return fhir_response(history(ctx(), fhir_base(), request.args.to_dict(), type_), media=negotiate())


# -- instance level ----------------------------------------------------------------------


@bp.get("/<type_>/<id_>")
def read(type_: str, id_: str) -> Response:
    return cached([type_], lambda: _resource_response(crud.read(ctx(), type_, id_)))


@bp.get("/<type_>/<id_>/_history/<vid>")
def vread(type_: str, id_: str, vid: str) -> Response:
    return _resource_response(crud.vread(ctx(), type_, id_, vid))


@bp.get("/<compartment>/<id_>/<type_>")
def search_in_compartment(compartment: str, id_: str, type_: str) -> Response:
    """Compartment search, e.g. ``/fhir/Patient/123/Observation?code=…`` (``*``: every member type)."""
    media = negotiate()
    result = search_compartment(ctx(), fhir_base(), compartment, id_, type_, query_pairs(), strict=_strict())
    return fhir_response(result, media=media)


@bp.get("/<type_>/<id_>/_history")
def history_instance(type_: str, id_: str) -> Response:
    return fhir_response(history(ctx(), fhir_base(), request.args.to_dict(), type_, id_), media=negotiate())


@bp.put("/<type_>/<id_>")
def update(type_: str, id_: str) -> Response:
    negotiate()
    body = read_json_body()
    return _write_response(crud.update(ctx(), type_, id_, body, if_match()))


@bp.patch("/<type_>/<id_>")
def patch(type_: str, id_: str) -> Response:
    negotiate()
    ops = read_json_body(patch=True)
    return _write_response(crud.patch(ctx(), type_, id_, ops, if_match()))


def _delete_response(deleted: list[StoredResource], what: str) -> Response:
    headers: dict[str, Any] = {}
    if len(deleted) == 1:
        headers["ETag"] = etag(deleted[0].version)
    if (prefer("return") or "").lower() == "operationoutcome" or not deleted:
        text = f"Deleted {what}" if deleted else f"Nothing to delete: no current resource matches {what}"
        return fhir_response(operation_outcome([Issue(text, "information", "informational")]), 200, headers)
    return Response(status=204, headers=headers)


@bp.delete("/<type_>/<id_>")
def delete(type_: str, id_: str) -> Response:
    result = crud.delete(ctx(), type_, id_, if_match())
    return _delete_response([result.resource] if result.changed else [], f"{type_}/{id_}")


# -- operations --------------------------------------------------------------------------

_VCF_TYPES = ("text/plain", "text/x-vcf", "text/vcf", "application/gzip", "application/x-gzip")
_VCF_ARGS = {"sample": "sample", "build": "build", "source-class": "source_class"}


@bp.post("/Patient/<id_>/$ingest-vcf")
def ingest_vcf(id_: str) -> Response:
    """Store an uploaded VCF for the Patient: 201/200 with the DiagnosticReport, or 202 + a status URL when large."""
    media = negotiate()
    context = ctx()
    if (request.mimetype or "").lower() not in _VCF_TYPES:
        got = request.content_type or "no Content-Type"
        raise UnsupportedMediaType(f"$ingest-vcf takes a VCF as text/plain, text/x-vcf or application/gzip, not {got}")
    options: dict[str, Any] = {}
    for name, value in request.args.items(multi=True):
        if name not in _VCF_ARGS and name not in ("_format", "_pretty"):
            raise BadRequest(f"$ingest-vcf: unknown parameter '{name}' (known: {', '.join(_VCF_ARGS)})")
        if name in _VCF_ARGS and value:
            options[_VCF_ARGS[name]] = value
    ingest.check_patient(context, id_)
    ingest.check_size(request.content_length, context.config.max_vcf_bytes)
    request.max_content_length = context.config.max_vcf_bytes
    disposition = request.headers.get("Content-Disposition", "")
    filename = disposition.partition("filename=")[2].strip().strip('"') or None
    upload = ingest.receive(request.stream, context.config.max_vcf_bytes, filename)
    if upload.size > context.config.vcf_async_bytes or prefer("respond-async") is not None:
        task_id = ingest.start_job(context, upload, id_, **options)
        status_url = f"{fhir_base()}/Task/{task_id}/$ingest-vcf-status"
        note = f"Ingesting {upload.path.name} ({upload.size:,} bytes) in the background: poll {status_url}"
        outcome = operation_outcome([Issue(note, "information", "informational")])
        return fhir_response(outcome, 202, {"Content-Location": status_url}, media)
    try:
        result = ingest.ingest_vcf(context, upload.path, id_, name=upload.path.name, **options)
    finally:
        upload.discard()
    report = result.diagnostic_report
    return fhir_response(report.content, 201 if result.report_created else 200, _headers(report, True), media)


@bp.post("/Patient/<id_>/$call-pgx")
def call_pgx(id_: str) -> Response:
    """Star-allele calls from the Patient's stored variants (``assumeReference``: query or Parameters)."""
    media = negotiate()
    values = request.args.getlist("assumeReference")
    if request.content_length:
        body = read_json_body()
        values += [
            str(p.get("valueBoolean", "")).lower()
            for p in body.get("parameter") or ()
            if p.get("name") == "assumeReference"
        ]
    if any(v.lower() not in ("true", "false") for v in values):
        raise BadRequest("$call-pgx: assumeReference must be true or false")
    result = pgx_calling.call_pgx(ctx(), id_, assume_reference="true" in (v.lower() for v in values))
    return fhir_response(result.as_parameters(), media=media)


@bp.get("/Task/<id_>/$ingest-vcf-status")
def ingest_vcf_status(id_: str) -> Response:
    """Poll a background ingestion: 202 while it runs, then the DiagnosticReport (200) or the error."""
    media = negotiate()
    job = ingest.job_status(ctx(), id_)
    if job.status == 202:
        return Response(status=202, headers=job.headers)
    if job.status == 200:
        res = job.body
        headers = {**_headers(res), "Location": f"{fhir_base()}/{job.headers['Location']}"}
        return fhir_response(res.content, 200, headers, media)
    raise error_for_status(job.status, job.body.diagnostics)


@bp.route("/Patient/$everything", methods=["GET", "POST"], defaults={"id_": None})
@bp.route("/Patient/<id_>/$everything", methods=["GET", "POST"])
def patient_everything(id_: str | None) -> Response:
    """Patient/$everything (patient-operation-everything.html): the compartment + referenced resources, paged."""
    media = negotiate()
    pairs = list(request.args.items(multi=True))
    if request.method == "POST":
        pairs += genomics.parameters_pairs(read_json_body())
    return fhir_response(everything(ctx(), fhir_base(), id_, pairs), media=media)


def _genomics_view(name: str) -> Any:
    def view() -> Response:
        media = negotiate()
        pairs = list(request.args.items(multi=True))
        if request.method == "POST":
            pairs += genomics.parameters_pairs(read_json_body())
        return fhir_response(genomics.run(ctx(), name, pairs), media=media)

    view.__doc__ = f"Genomics Reporting ${name} (GET with query parameters or POST with Parameters)."
    return view


for _name in genomics.OPERATIONS:
    bp.add_url_rule(f"/Observation/${_name}", f"genomics_{_name}", _genomics_view(_name), methods=["GET", "POST"])


def _rare_view(name: str) -> Any:
    def view(id_: str) -> Response:
        media = negotiate()
        pairs = list(request.args.items(multi=True))
        if request.method == "POST":
            pairs += genomics.parameters_pairs(read_json_body())
        return fhir_response(rare.run(ctx(), name, id_, pairs), media=media)

    view.__doc__ = f"Rare-disease Patient/{{id}}/${name} (GET with query parameters or POST with Parameters)."
    return view


for _name in rare.OPERATIONS:
    bp.add_url_rule(f"/Patient/<id_>/${_name}", f"rare_{_name}", _rare_view(_name), methods=["GET", "POST"])


@bp.route("/<path:rest>", methods=["GET", "POST", "PUT", "PATCH", "DELETE"])
def unknown(rest: str) -> Response:
    raise NotFound(f"No FHIR interaction at /fhir/{rest}")
