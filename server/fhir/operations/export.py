"""Bulk Data ``$export`` (HL7 FHIR Bulk Data Access IG v2, https://hl7.org/fhir/uv/bulkdata/export.html).

Owns the domain of the three kick-offs — system (``[base]/$export``), all patients
(``[base]/Patient/$export``) and a group (``[base]/Group/{id}/$export``) — and of the jobs they
start; the HTTP side is :mod:`server.api.bulk`.

**Parameters** (export.html#query-parameters): ``_outputFormat`` (``application/fhir+ndjson``,
``application/ndjson``, ``ndjson``; the default is the first), ``_type`` (comma-separated or
repeated; at patient/group level only Patient-compartment types), ``_since`` (resources last
updated at or after the instant, and ``deleted``). The IG's optional ``_elements``,
``_typeFilter``, ``patient``, ``includeAssociatedData`` and anything unknown are a 400, as
ignoring a filter would export more than asked.

**What is exported.** System level: every current resource of every type (of ``_type``).
Patient level: the Patient compartment (R4 CompartmentDefinition) of every patient; group level:
of the Patients the Group lists (``Group.member.entity``, read through its ``member`` index rows),
with :func:`server.fhir.operations.everything.membership_clause`. The export is a snapshot at
``transactionTime`` (the kick-off): a resource changed or deleted while the export runs is
exported as it was then (its version at that instant, from the history table), one created
later is not. With ``_since``, the resources deleted between ``_since`` and ``transactionTime``
(the history tombstones) are listed in ``deleted`` files: one NDJSON line per deleted resource,
a ``transaction`` Bundle with one entry ``{"request": {"method": "DELETE", "url": "Type/id"}}``
(export.html#bulk-data-output-file-request). At patient/group level a deleted resource is
listed when its last version was in the compartment of one of the patients. Resources that
cannot be written (stored JSON no longer parseable) are reported as OperationOutcome lines in
the ``error`` files instead; they never stop the export.

**Consent for secondary use** (http://hl7.org/fhir/R4/consent.html; issue 9). A job started by a
client registered with ``--purpose research`` (or by the anonymous sandbox) leaves out, at every
level, the Patient-compartment resources of each patient with an active research denial
(:func:`server.fhir.guard.excluded_for_purpose`, evaluated when the export starts), and their
``deleted`` entries; resources outside the compartment are unaffected. Treatment clients (direct
care) export everything they may read.

**Constant memory.** Each type is read in pages of :data:`BATCH` rows ordered by ``rid``
(keyset: ``rid > last``), written to ``{Type}-{n}.ndjson`` as it goes; a file holds at most
``BIGMED_EXPORT_MAX_LINES`` lines, then the next ``n`` starts.

**Jobs.** A kick-off creates ``BIGMED_EXPORT_DIR/{job}/`` with ``job.json`` (the state: request,
transactionTime, status, progress, heartbeat, the manifest parts) and runs the export in a
daemon thread of the receiving process (:func:`server.fhir.jobs.run_in_background`). The state
is on disk beside the files, so every gunicorn worker that can serve the files can answer a
poll; the thread rewrites ``job.json`` (atomically) at least every :data:`HEARTBEAT` seconds,
and a job whose heartbeat is older than :data:`STALE` (its process died) is reported failed.
``DELETE`` of the status URL moves the folder aside and removes it; the thread notices and
stops. Finished jobs (and their files) are removed ``BIGMED_EXPORT_TTL`` seconds after they
ended, by the cleanup every kick-off and poll runs. At most ``BIGMED_EXPORT_MAX_JOBS`` exports
run at once; another kick-off gets 429 with ``Retry-After``.
"""

from __future__ import annotations

import logging
import os
import re
import shutil
import socket
import time
import uuid
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import IO, Any

from server import jsonio
from server.auth.access import Access, require
from server.errors import (
    BadRequest,
    Forbidden,
    Issue,
    NotFound,
    TooManyRequests,
    error_for_status,
    operation_outcome,
)
from server.fhir import crud
from server.fhir.context import FhirContext
from server.fhir.guard import excluded_for_purpose
from server.fhir.jobs import new_job_id, read_json, run_in_background, write_json_atomically
from server.fhir.operations.everything import Patients, member_types, membership_clause, patient_compartment
from server.fhir.resource import check_id, instant
from server.search.compartments import SELF
from server.search.extract import extract
from server.search.query import date_range
from server.store.base import StoredResource

__all__ = [
    "BATCH",
    "BULK_DATA",
    "HEARTBEAT",
    "OUTPUT_FORMATS",
    "STALE",
    "ExportRequest",
    "Poll",
    "authorize",
    "cancel",
    "capabilities",
    "cleanup",
    "export_file",
    "kick_off",
    "parse_request",
    "poll",
    "run_export",
    "system_capabilities",
]

log = logging.getLogger(__name__)

#: accepted ``_outputFormat`` values (all mean NDJSON of FHIR resources)
OUTPUT_FORMATS = ("application/fhir+ndjson", "application/ndjson", "ndjson")
#: rows read per query while exporting a type
BATCH = 1000
#: seconds between two writes of ``job.json`` by a running export (its heartbeat)
HEARTBEAT = 2.0
#: a running job whose heartbeat is older than this is reported failed (its process is gone)
STALE = 600.0
_KNOWN = ("_outputFormat", "_type", "_since")
_UNSUPPORTED = ("_elements", "_typeFilter", "patient", "includeAssociatedData", "organizeOutputBy")
_FILE = re.compile(r"[A-Za-z]+-(?:deleted-|error-)?[0-9]+\.ndjson")
_JOB = re.compile(r"[0-9a-f]{32}")
_STATE = "job.json"


@dataclass(frozen=True)
class ExportRequest:
    """A validated kick-off: level (``system``/``patient``/``group``), filters and the request URL."""

    level: str
    request_url: str
    types: tuple[str, ...] | None = None
    since: float | None = None
    group_id: str | None = None
    output_format: str = OUTPUT_FORMATS[0]
    client: str | None = None  # who started it: only they may poll, download or cancel
    purpose: str = "treatment"  # the client's registered purpose; "research" leaves out research denials


def parse_request(
    ctx: FhirContext, level: str, params: Sequence[tuple[str, str]], request_url: str, group_id: str | None = None
) -> ExportRequest:
    """Check the kick-off's parameters (400 on anything not supported) and the Group (404/410)."""
    values: dict[str, list[str]] = {}
    for key, raw in params:
        if key in _UNSUPPORTED:
            raise BadRequest(f"$export: the parameter '{key}' is not supported by this server")
        if key not in _KNOWN:
            raise BadRequest(f"$export: unknown parameter '{key}' (supported: {', '.join(_KNOWN)})")
        values.setdefault(key, []).append(raw)
    fmt = (values.get("_outputFormat") or [OUTPUT_FORMATS[0]])[-1]
    if fmt not in OUTPUT_FORMATS:
        raise BadRequest(f"_outputFormat '{fmt}' is not supported (supported: {', '.join(OUTPUT_FORMATS)})")
    types: tuple[str, ...] | None = None
    wanted = [t.strip() for raw in values.get("_type", []) for t in raw.split(",") if t.strip()]
    if wanted:
        if level == "system":
            unknown = [t for t in wanted if t not in ctx.registry.resource_types()]
            if unknown:
                raise BadRequest(f"_type: unknown resource type{'s' if len(unknown) > 1 else ''} {', '.join(unknown)}")
            types = tuple(sorted(set(wanted)))
        else:
            types = tuple(member_types(ctx, wanted))
    since: float | None = None
    if values.get("_since"):
        raw = values["_since"][-1]
        try:
            since = date_range(raw)[0]
        except ValueError as exc:
            raise BadRequest(f"_since: {exc}") from exc
    if level == "group":
        assert group_id is not None
        check_id(group_id)
        crud.existing(ctx, "Group", group_id)
    return ExportRequest(level, request_url, types, since, group_id, fmt)


def authorize(ctx: FhirContext, req: ExportRequest, access: Access) -> ExportRequest:
    """``req`` limited to what ``access`` may read and search (403 for a ``_type`` it may not)."""
    if access.patient is not None:
        raise Forbidden(f"Bulk export needs a system-level token; this one is limited to Patient/{access.patient}")
    if access.grant is None:
        return replace(req, client=access.client_id, purpose=access.purpose)
    if req.types is not None:
        for type_ in req.types:
            require(type_, "rs", access)
        return replace(req, client=access.client_id, purpose=access.purpose)
    universe = sorted(ctx.registry.resource_types()) if req.level == "system" else member_types(ctx)
    allowed = access.allowed_types("rs", universe)
    if not allowed:
        raise Forbidden("The access token allows reading and searching no resource type: nothing to export")
    return replace(req, types=tuple(allowed), client=access.client_id, purpose=access.purpose)


# -- job state on disk -------------------------------------------------------------------------


def _root(ctx: FhirContext) -> Path:
    return Path(ctx.config.export_dir)


def _job_dir(ctx: FhirContext, job_id: str) -> Path:
    if not _JOB.fullmatch(job_id):
        raise NotFound(f"No export job '{job_id}'")
    return _root(ctx) / job_id


def _read_state(ctx: FhirContext, job_id: str, access: Access | None = None) -> dict[str, Any]:
    state = read_json(_job_dir(ctx, job_id) / _STATE)
    if not isinstance(state, dict) or (
        access is not None and not access.unrestricted and state.get("client") != access.client_id
    ):
        raise NotFound(f"No export job '{job_id}': it never existed, was cancelled, or expired and was removed")
    return state


def _stale(state: dict[str, Any], now: float) -> bool:
    return state.get("status") == "in-progress" and now - float(state.get("heartbeat", 0)) > STALE


def _remove(folder: Path) -> None:
    """Move ``folder`` aside in one step (a running export then finds it gone), then delete it."""
    trash = folder.with_name(f".removed-{folder.name}-{uuid.uuid4().hex[:8]}")
    try:
        os.replace(folder, trash)
    except FileNotFoundError:
        return
    shutil.rmtree(trash, ignore_errors=True)


def cleanup(ctx: FhirContext, now: float | None = None) -> int:
    """Remove jobs that ended (or stopped beating) more than ``BIGMED_EXPORT_TTL`` seconds ago."""
    root = _root(ctx)
    if not root.is_dir():
        return 0
    now = time.time() if now is None else now
    removed = 0
    for folder in root.iterdir():
        if folder.name.startswith(".removed-"):
            shutil.rmtree(folder, ignore_errors=True)  # left by a process that died while removing
            continue
        if not _JOB.fullmatch(folder.name):
            continue
        try:
            state = read_json(folder / _STATE)
        except ValueError:
            state = None
        if not isinstance(state, dict):
            ended = folder.stat().st_mtime if folder.exists() else now
        elif state.get("status") == "in-progress":
            ended = float(state.get("heartbeat", 0)) + STALE
        else:
            ended = float(state.get("ended", 0))
        if now - ended > ctx.config.export_ttl:
            _remove(folder)
            removed += 1
    return removed


def _running(ctx: FhirContext, now: float) -> int:
    root = _root(ctx)
    if not root.is_dir():
        return 0
    count = 0
    for folder in root.iterdir():
        if _JOB.fullmatch(folder.name):
            state = read_json(folder / _STATE)
            if isinstance(state, dict) and state.get("status") == "in-progress" and not _stale(state, now):
                count += 1
    return count


# -- kick-off, poll, cancel, files ---------------------------------------------------------------


def kick_off(ctx: FhirContext, req: ExportRequest, background: bool = True) -> str:
    """Start an export job; returns its id (429 when ``BIGMED_EXPORT_MAX_JOBS`` are running)."""
    now = time.time()
    cleanup(ctx, now)
    if _running(ctx, now) >= ctx.config.export_max_jobs:
        raise TooManyRequests(
            f"{ctx.config.export_max_jobs} exports are running (BIGMED_EXPORT_MAX_JOBS): try again later",
            headers={"Retry-After": "30"},
        )
    job_id = new_job_id()
    folder = _job_dir(ctx, job_id)
    folder.mkdir(parents=True)
    state: dict[str, Any] = {
        "id": job_id,
        "status": "in-progress",
        "request": req.request_url,
        "level": req.level,
        "types": list(req.types) if req.types is not None else None,
        "since": req.since,
        "group": req.group_id,
        "client": req.client,
        "purpose": req.purpose,
        "transactionTime": now,
        "started": now,
        "heartbeat": now,
        "process": f"{socket.gethostname()}:{os.getpid()}",
        "progress": {"resources": 0, "type": None, "typesDone": 0, "typesTotal": None},
    }
    write_json_atomically(folder / _STATE, state)
    if not background:
        run_export(ctx, job_id, req)
        return job_id

    def failed(status: int, message: str) -> None:
        current = read_json(folder / _STATE)
        if isinstance(current, dict) and current.get("status") == "in-progress":
            current.update(status="failed", httpStatus=status, message=message, ended=time.time())
            write_json_atomically(folder / _STATE, current)

    run_in_background(f"export-{job_id}", lambda: run_export(ctx, job_id, req), failed)
    return job_id


@dataclass(frozen=True)
class Poll:
    """What the status URL answers: 202 (running, ``headers``) or 200 (``manifest``)."""

    status: int
    manifest: dict[str, Any] | None
    headers: dict[str, str]


def poll(ctx: FhirContext, job_id: str, base: str, access: Access | None = None) -> Poll:
    """The state of export ``job_id``: 202 + X-Progress, 200 + manifest, or the job's error raised."""
    now = time.time()
    state = _read_state(ctx, job_id, access)
    cleanup(ctx, now)
    if _stale(state, now):
        raise error_for_status(500, f"Export {job_id} stopped: the server process running it ended; start it again")
    status = state.get("status")
    if status == "failed":
        raise error_for_status(int(state.get("httpStatus", 500)), str(state.get("message") or "The export failed"))
    if status != "completed":
        progress = state.get("progress") or {}
        done, total, kind = progress.get("typesDone", 0), progress.get("typesTotal"), progress.get("type")
        text = f"{int(progress.get('resources', 0)):,} resources exported"
        if total is not None:
            text += f", {done} of {total} types done" + (f", exporting {kind}" if kind else "")
        return Poll(202, None, {"X-Progress": text, "Retry-After": "2"})
    files = f"{base}/$export-files/{job_id}"

    def listed(key: str) -> list[dict[str, Any]]:
        return [{"type": o["type"], "url": f"{files}/{o['file']}", "count": o["count"]} for o in state.get(key, [])]

    manifest: dict[str, Any] = {
        "transactionTime": instant(float(state["transactionTime"])),
        "request": state["request"],
        "requiresAccessToken": ctx.config.auth == "smart",
        "output": listed("output"),
        "error": listed("error"),
    }
    if state.get("since") is not None:
        manifest["deleted"] = listed("deleted")
    expires = float(state.get("ended", now)) + ctx.config.export_ttl
    return Poll(200, manifest, {"Expires": time.strftime("%a, %d %b %Y %H:%M:%S GMT", time.gmtime(expires))})


def cancel(ctx: FhirContext, job_id: str, access: Access | None = None) -> None:
    """Cancel a running export or delete a finished one, with its files (NotFound when unknown)."""
    _read_state(ctx, job_id, access)
    _remove(_job_dir(ctx, job_id))


def export_file(ctx: FhirContext, job_id: str, name: str, access: Access | None = None) -> Path:
    """The path of one output file of a completed export (NotFound otherwise)."""
    state = _read_state(ctx, job_id, access)
    if state.get("status") != "completed" or not _FILE.fullmatch(name):
        raise NotFound(f"No file '{name}' in export {job_id}")
    listed = {o["file"] for key in ("output", "error", "deleted") for o in state.get(key, [])}
    path = _job_dir(ctx, job_id) / name
    if name not in listed or not path.is_file():
        raise NotFound(f"No file '{name}' in export {job_id}")
    return path


# -- the export itself ------------------------------------------------------------------------------


class _Cancelled(Exception):
    """The job's folder is gone: it was cancelled (DELETE) or removed."""


@dataclass
class _Part:
    type: str
    file: str
    count: int = 0


class _Files:
    """NDJSON files of one job: one or more per type, at most ``max_lines`` lines each."""

    def __init__(self, folder: Path, max_lines: int) -> None:
        self.folder = folder
        self.max_lines = max_lines
        self.parts: dict[str, list[_Part]] = {"output": [], "error": [], "deleted": []}
        self._open: dict[tuple[str, str], tuple[_Part, IO[bytes]]] = {}

    def write(self, kind: str, type_: str, line: bytes) -> None:
        key = (kind, type_)
        current = self._open.get(key)
        if current is not None and current[0].count >= self.max_lines:
            current[1].close()
            current = None
        if current is None:
            n = sum(1 for p in self.parts[kind] if p.type == type_) + 1
            infix = "" if kind == "output" else f"{kind}-"
            part = _Part(type_, f"{type_}-{infix}{n}.ndjson")
            if not self.folder.is_dir():
                raise _Cancelled
            try:
                fh = (self.folder / part.file).open("wb", buffering=1 << 20)
            except FileNotFoundError as exc:
                raise _Cancelled from exc
            self.parts[kind].append(part)
            current = self._open[key] = (part, fh)
        current[1].write(line)
        current[1].write(b"\n")
        current[0].count += 1

    def close(self, kind: str | None = None, type_: str | None = None) -> None:
        for key in [k for k in self._open if (kind is None or k[0] == kind) and (type_ is None or k[1] == type_)]:
            self._open.pop(key)[1].close()

    def listing(self, kind: str) -> list[dict[str, Any]]:
        return [{"type": p.type, "file": p.file, "count": p.count} for p in self.parts[kind]]


@dataclass
class _Progress:
    folder: Path
    state: dict[str, Any]
    resources: int = 0
    last_beat: float = field(default_factory=time.monotonic)

    def save(self, force: bool = False) -> None:
        if not force and time.monotonic() - self.last_beat < HEARTBEAT:
            return
        if not (self.folder / _STATE).exists():
            raise _Cancelled
        self.state["heartbeat"] = time.time()
        self.state["progress"]["resources"] = self.resources
        try:
            write_json_atomically(self.folder / _STATE, self.state)
        except FileNotFoundError as exc:
            raise _Cancelled from exc
        self.last_beat = time.monotonic()


def _line(res: StoredResource) -> bytes:
    """The stored JSON as one NDJSON line (re-serialised only if it holds a line break)."""
    assert res.content is not None
    content = res.content
    if b"\n" in content or b"\r" in content:
        content = jsonio.dumps(jsonio.loads(content))
    return content


def _as_of(ctx: FhirContext, res: StoredResource, at: float, since: float | None) -> StoredResource | None:
    """The version of ``res`` current at instant ``at`` (None: absent or deleted then, or before ``since``)."""
    if res.ts <= at:
        found: StoredResource | None = res
    else:
        rows = ctx.store.query(
            "SELECT version FROM history WHERE rid = ? AND ts <= ? ORDER BY version DESC LIMIT 1", (res.rid, at)
        )
        found = ctx.store.vread(res.type, res.id, int(rows[0][0])) if rows else None
    if found is None or found.deleted or found.content is None:
        return None
    if since is not None and found.ts < since:
        return None
    return found


def _patients(ctx: FhirContext, req: ExportRequest) -> Patients | None:
    if req.level == "system":
        return None
    if req.level == "patient":
        return Patients(None)
    assert req.group_id is not None
    group = ctx.store.read("Group", req.group_id)
    if group is None or group.deleted:
        raise NotFound(f"Group/{req.group_id} is not known")
    return Patients.members_of(group.rid)


def _types(ctx: FhirContext, req: ExportRequest, at: float) -> list[str]:
    if req.level != "system":
        return list(req.types) if req.types is not None else member_types(ctx)
    rows = ctx.store.query("SELECT DISTINCT res_type FROM resources WHERE deleted = 0 OR ts > ?", (at,))
    present = sorted(str(r[0]) for r in rows)
    return [t for t in present if req.types is None or t in req.types]


def _excluding(type_: str, excluded: set[str]) -> tuple[str, list[Any]] | None:
    """SQL (alias ``r``) leaving out resources of ``type_`` in the compartment of an ``excluded`` patient."""
    params = patient_compartment().params_for(type_)
    if not excluded or not params:
        return None
    ids = sorted(excluded)
    marks = ", ".join("?" for _ in ids)
    parts: list[str] = []
    args: list[Any] = []
    refs = [p for p in params if p != SELF]
    if refs:
        parts.append(
            "r.rid NOT IN (SELECT x.rid FROM idx_reference x WHERE x.target_type = ? AND x.res_type = ? "
            f"AND x.param IN ({', '.join('?' for _ in refs)}) AND x.target_id IN ({marks}))"
        )
        args += ["Patient", type_, *refs, *ids]
    if SELF in params:
        parts.append(f"r.res_id NOT IN ({marks})")
        args += ids
    return " AND ".join(parts), args


def _rows(
    ctx: FhirContext,
    type_: str,
    patients: Patients | None,
    since: float | None,
    at: float,
    excluded: set[str] | None = None,
) -> Iterator[list[int]]:
    """Pages of rids of ``type_`` to consider (current, or changed after ``at``), in rid order."""
    where = ["r.res_type = ?", "r.rid > ?", "(r.deleted = 0 OR r.ts > ?)"]
    fixed: list[Any] = []
    if since is not None:
        where.append("r.ts >= ?")
        fixed.append(since)
    if patients is not None:
        clause = membership_clause(type_, patients)
        where.append(clause.sql)
        fixed += clause.params
    leave_out = _excluding(type_, excluded or set())
    if leave_out is not None:
        where.append(leave_out[0])
        fixed += leave_out[1]
    sql = f"SELECT r.rid FROM resources r WHERE {' AND '.join(where)} ORDER BY r.rid LIMIT {BATCH}"
    last = 0
    while True:
        rids = [int(r[0]) for r in ctx.store.query(sql, (type_, last, at, *fixed))]
        if not rids:
            return
        yield rids
        last = rids[-1]


def _error_line(what: str, message: str) -> bytes:
    return jsonio.dumps(operation_outcome([Issue(f"{what} was not exported: {message}", "error", "exception")]))


def _member_ids(ctx: FhirContext, patients: Patients) -> set[str] | None:
    """The ids ``patients`` selects (None: every patient)."""
    if patients.sql is None:
        return None
    if patients.sql == "?":
        return {str(p) for p in patients.params}
    return {str(r[0]) for r in ctx.store.query(patients.sql, patients.params)}


def _was_member(ctx: FhirContext, type_: str, id_: str, version: int, members: set[str] | None) -> bool:
    """Whether the last live version of a deleted resource was in the compartment of ``members``."""
    params = patient_compartment().params_for(type_)
    if SELF in params and (members is None or id_ in members):
        return True
    refs = {p for p in params if p != SELF}
    if not refs or version < 2:
        return False
    before = ctx.store.vread(type_, id_, version - 1)
    if before is None or before.content is None:
        return False
    try:
        rows = extract(jsonio.loads(before.content), ctx.registry).reference
    except (ValueError, TypeError, KeyError):  # an old version we cannot read: not listed
        return False
    return any(r[0] in refs and r[1] == "Patient" and (members is None or r[2] in members) for r in rows)


def _deleted(
    ctx: FhirContext,
    files: _Files,
    progress: _Progress,
    req: ExportRequest,
    types: Sequence[str] | None,
    at: float,
    excluded: set[str] | None = None,
) -> None:
    assert req.since is not None
    patients = _patients(ctx, req)
    members = _member_ids(ctx, patients) if patients is not None else None
    allowed = set(types) if types is not None else None
    last = 0
    sql = (
        "SELECT r.rid, r.res_type, r.res_id, r.version FROM resources r "
        f"WHERE r.deleted = 1 AND r.ts >= ? AND r.ts <= ? AND r.rid > ? ORDER BY r.rid LIMIT {BATCH}"
    )
    while True:
        rows = ctx.store.query(sql, (req.since, at, last))
        if not rows:
            return
        for rid, raw_type, raw_id, version in rows:
            last = int(rid)
            type_, id_ = str(raw_type), str(raw_id)
            if allowed is not None and type_ not in allowed:
                continue
            if patients is not None and not _was_member(ctx, type_, id_, int(version), members):
                continue
            if excluded and _was_member(ctx, type_, id_, int(version), excluded):
                continue  # a research client is not told about the records of a patient who denied research
            bundle = {
                "resourceType": "Bundle",
                "type": "transaction",
                "entry": [{"request": {"method": "DELETE", "url": f"{type_}/{id_}"}}],
            }
            files.write("deleted", "Bundle", jsonio.dumps(bundle))
        progress.save()


def run_export(ctx: FhirContext, job_id: str, req: ExportRequest) -> None:
    """Write the NDJSON files of job ``job_id`` and mark it completed (stops quietly when cancelled)."""
    folder = _job_dir(ctx, job_id)
    state = read_json(folder / _STATE)
    if not isinstance(state, dict):
        return
    at = float(state["transactionTime"])
    files = _Files(folder, ctx.config.export_max_lines)
    progress = _Progress(folder, state)
    try:
        patients = _patients(ctx, req)
        excluded = excluded_for_purpose(ctx, req.purpose)
        types = _types(ctx, req, at)
        state["progress"]["typesTotal"] = len(types)
        for done, type_ in enumerate(types):
            state["progress"]["type"] = type_
            progress.save(force=True)
            for rids in _rows(ctx, type_, patients, req.since, at, excluded):
                for res in ctx.store.read_many(rids):
                    try:
                        version = _as_of(ctx, res, at, req.since)
                        if version is not None:
                            files.write("output", type_, _line(version))
                            progress.resources += 1
                    except ValueError as exc:  # stored JSON that no longer parses: report, go on
                        files.write("error", "OperationOutcome", _error_line(f"{res.type}/{res.id}", str(exc)))
                progress.save()
            files.close("output", type_)
            state["progress"]["typesDone"] = done + 1
        if req.since is not None:
            state["progress"]["type"] = "deleted"
            _deleted(ctx, files, progress, req, req.types if req.level == "system" else types, at, excluded)
        files.close()
        state.update(
            status="completed",
            ended=time.time(),
            output=files.listing("output"),
            error=files.listing("error"),
            deleted=files.listing("deleted"),
        )
        state["progress"]["type"] = None
        progress.save(force=True)
        log.info("export %s: %s resources in %s files", job_id, f"{progress.resources:,}", len(files.parts["output"]))
    except _Cancelled:
        log.info("export %s cancelled", job_id)
    finally:
        files.close()


#: the Bulk Data IG v2 canonicals
BULK_DATA = "http://hl7.org/fhir/uv/bulkdata"


def capabilities() -> list[tuple[str, str, str]]:
    """(resource type, operation name, OperationDefinition canonical) of the type-level kick-offs."""
    return [
        ("Patient", "export", f"{BULK_DATA}/OperationDefinition/patient-export"),
        ("Group", "export", f"{BULK_DATA}/OperationDefinition/group-export"),
    ]


def system_capabilities() -> list[dict[str, str]]:
    """The system-level ``$export`` for ``CapabilityStatement.rest.operation``."""
    return [{"name": "export", "definition": f"{BULK_DATA}/OperationDefinition/export"}]
