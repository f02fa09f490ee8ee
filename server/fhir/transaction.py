"""Transactions and batches: ``POST [base]`` with a Bundle (http://hl7.org/fhir/R4/http.html#transaction,
http://hl7.org/fhir/R4/bundle.html#transaction, processing rules http://hl7.org/fhir/R4/http.html#trules).

A ``transaction`` is atomic: all its writes run in ONE store transaction (through the per-entry
functions of :mod:`server.fhir.crud`), so either every entry succeeds or nothing is written; the
OperationOutcome of a failure names the entry (``Bundle.entry[3]``, its fullUrl) and, for an
invalid resource, the element (``Bundle.entry[3].resource.birthDate``). A ``batch`` runs each
entry on its own (its own store transaction) and answers each with its status or an
OperationOutcome in ``response.outcome``. Both answer in the order of the request's entries.

Processing (http.html#trules), inside the one store transaction of a transaction:

1. every entry's target is resolved first, in the spec's order (DELETE, POST, PUT/PATCH):
   conditional delete/update/patch URLs and ``ifNoneExist`` are searched; plain POSTs get a new
   server id. All these searches therefore see the database as it was before the transaction,
   never resources of the same Bundle: the spec says the order of entries must not matter, so a
   conditional create cannot depend on a create next to it. Two POSTs with the same type and the
   same ``ifNoneExist`` criteria create one resource (the second answers ``200`` with it).
   Two entries that change the same resource fail the transaction (400), as the spec requires.
2. references are rewritten: every ``reference`` equal to an entry's fullUrl becomes that
   entry's ``Type/id``; for ``urn:uuid:``/``urn:oid:`` fullUrls every other string equal to it
   (uri, canonical, inside extensions and contained resources alike) too. A ``urn:`` reference
   that is no entry's fullUrl fails the transaction (it could never be resolved).
3. the writes run in the spec's order. Resources holding *conditional references*
   (``"reference": "Patient?identifier=http://x|1"``) are written last: their references are
   resolved by search after the other writes (spec step 5), so they may match a resource created
   by the same transaction. Exactly one match is required, else the transaction fails (412).
4. GET/HEAD entries (read, vread, search, history) are answered after the commit with the
   ordinary domain functions; an unparsable GET fails the transaction before anything is
   written, a read that finds nothing gets its 404/410 in its own response entry.

Entry headers: ``ifNoneExist`` (conditional create), ``ifMatch`` (version check on
PUT/PATCH/DELETE, 412), ``ifNoneMatch`` (``*`` or an ETag: 304 on reads, 412 on writes, as in
RFC 7232), ``ifModifiedSince`` (304 on reads; ignored on writes, RFC 7232 §3.3).
``Prefer: return=minimal`` (the default for bundles, as HAPI and Blaze do: a response entry
then holds status, location, etag and lastModified), ``representation`` (plus the resource)
or ``OperationOutcome`` (plus ``response.outcome``) applies to every write entry.
PATCH entries carry a ``Binary`` whose ``data`` is a JSON Patch (``application/json-patch+json``).
A Bundle with more than ``BIGMED_MAX_BUNDLE_ENTRIES`` entries is refused with 413.
"""

from __future__ import annotations

import base64
import binascii
import re
import uuid
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from http import HTTPStatus
from typing import Any
from urllib.parse import parse_qsl

from profiles.validate import validate_structure
from server import jsonio
from server.errors import (
    BadRequest,
    Conflict,
    FhirError,
    Issue,
    NotSupported,
    PayloadTooLarge,
    PreconditionFailed,
    operation_outcome,
)
from server.fhir import crud
from server.fhir.bundle import etag, fragment
from server.fhir.context import FhirContext
from server.fhir.history import history
from server.fhir.resource import check_id, check_resource, check_type, instant, new_id
from server.fhir.search import search
from server.store.base import ConflictRetry, StoredResource, WriteTx

__all__ = [
    "LOCAL_URN_PREFIXES",
    "conditional_reference",
    "criteria_of",
    "process",
    "reference_path",
    "rewrite_references",
]

#: fullUrls that name a resource only inside its Bundle: the server gives it an id (bundle.html#references)
LOCAL_URN_PREFIXES = ("urn:uuid:", "urn:oid:")
_ORDER = {"DELETE": 0, "POST": 1, "PUT": 2, "PATCH": 2, "GET": 3, "HEAD": 3}
_WRITES = ("DELETE", "POST", "PUT", "PATCH")
_CONDITIONAL_REF = re.compile(r"^([A-Z][A-Za-z]+)\?(.+)$")
_PATCH_TYPES = ("application/json-patch+json",)


def criteria_of(if_none_exist: str, type_: str) -> str:
    """The query of an ``ifNoneExist`` (``identifier=…``), also when sent as ``?…`` or ``Type?…``."""
    text = if_none_exist.strip()
    if text.startswith(f"{type_}?"):
        text = text[len(type_) :]
    return text.lstrip("?")


def conditional_reference(reference: str) -> tuple[str, str] | None:
    """(type, criteria) of a conditional reference ``Type?criteria`` (bundle.html#references), else None."""
    m = _CONDITIONAL_REF.match(reference)
    return (m.group(1), m.group(2)) if m else None


def rewrite_references(
    node: Any, urn_map: Mapping[str, str], on_reference: Callable[[str], str], copy: bool = True
) -> Any:
    """``node`` with references rewritten: a copy, or ``node`` itself changed in place (``copy=False``).

    Every ``reference`` string goes through ``on_reference``; every other string equal to a key
    of ``urn_map`` (a ``urn:uuid:``/``urn:oid:`` fullUrl used as uri, canonical …) is replaced
    by its value. Extensions, contained resources and nested elements are walked alike.
    """
    if isinstance(node, dict):
        out: dict[str, Any] = {} if copy else node
        for key, value in node.items():
            if isinstance(value, str):
                new = on_reference(value) if key == "reference" else urn_map.get(value, value)
                if copy or new is not value:
                    out[key] = new
            elif isinstance(value, dict | list):
                out[key] = rewrite_references(value, urn_map, on_reference, copy)
            elif copy:
                out[key] = value
        return out
    if isinstance(node, list):
        if copy:
            return [
                rewrite_references(v, urn_map, on_reference, copy)
                if isinstance(v, dict | list)
                else (urn_map.get(v, v) if isinstance(v, str) else v)
                for v in node
            ]
        for i, v in enumerate(node):
            if isinstance(v, dict | list):
                rewrite_references(v, urn_map, on_reference, copy)
            elif isinstance(v, str) and v in urn_map:
                node[i] = urn_map[v]
        return node
    return node


def reference_path(node: Any, wanted: str, path: str) -> str | None:
    """FHIRPath-like location of the first ``reference`` equal to ``wanted`` (for error messages)."""
    if isinstance(node, dict):
        for key, value in node.items():
            if key == "reference" and value == wanted:
                return f"{path}.reference"
            found = reference_path(value, wanted, f"{path}.{key}") if isinstance(value, dict | list) else None
            if found:
                return found
    elif isinstance(node, list):
        for i, value in enumerate(node):
            found = reference_path(value, wanted, f"{path}[{i}]")
            if found:
                return found
    return None


# -- parsing -------------------------------------------------------------------------------


@dataclass
class _Entry:
    """One Bundle entry as parsed: what to do, to what, with which preconditions."""

    index: int
    full_url: str | None
    method: str = ""
    type_: str | None = None
    id_: str | None = None
    criteria: str | None = None  # conditional PUT/PATCH/DELETE criteria, or a GET's query
    tail: tuple[str, ...] = ()  # GET: what follows Type/id (``_history``, a version)
    resource: Any = None
    ops: Any = None  # PATCH: the JSON Patch
    if_none_exist: str | None = None
    if_match: int | None = None
    if_none_match: str | None = None
    if_modified_since: float | None = None
    error: FhirError | None = None  # batch: the entry's own parse/validation error
    conditional_refs: bool = False
    target: str | None = None  # id written (None: nothing, e.g. a delete that matched nothing)
    matched: StoredResource | None = None  # POST whose ifNoneExist matched: no write
    same_as: int | None = None  # POST with the ifNoneExist of an earlier entry
    prepared: Any = None  # the resource (or patch) with its references rewritten
    result: crud.WriteResult | None = None

    @property
    def where(self) -> str:
        return f"Bundle.entry[{self.index}]"

    @property
    def label(self) -> str:
        return self.where + (f" (fullUrl {self.full_url})" if self.full_url else "")


def _at(entry: _Entry, err: FhirError) -> FhirError:
    """``err`` restated for one entry: its index and fullUrl in every message, paths under ``Bundle.entry[i]``."""
    resource_type = entry.resource.get("resourceType") if isinstance(entry.resource, dict) else None
    base = f"{entry.where}.resource"

    def rebase(expr: str) -> str:
        if expr.startswith(entry.where):
            return expr
        if isinstance(resource_type, str) and (
            expr == resource_type or expr.startswith((f"{resource_type}.", f"{resource_type}["))
        ):
            return base + expr[len(resource_type) :]
        return f"{base}.{expr}"

    issues = [
        Issue(
            f"{entry.label}: {i.diagnostics}",
            i.severity,
            i.code,
            tuple(rebase(e) for e in i.expression) or (entry.where,),
        )
        for i in err.issues
    ]
    return type(err)(f"{entry.label}: {err.message}", issues, err.headers)


def _strip_base(url: str, base: str) -> str:
    if url.startswith(base + "/") or url == base:
        return url[len(base) :].lstrip("/")
    if re.match(r"^[a-z][a-z0-9+.-]*:", url, re.IGNORECASE):
        raise BadRequest(f"request.url '{url}' is not on this server ({base})")
    return url.lstrip("/")


def _version_tag(raw: Any, name: str) -> int:
    value = str(raw).strip()
    if value.startswith("W/"):
        value = value[2:]
    value = value.strip('"')
    if not value.isdigit():
        raise BadRequest(f"request.{name} must be a version ETag like W/\"3\", not '{raw}'")
    return int(value)


def _instant(raw: Any, name: str) -> float:
    try:
        when = datetime.fromisoformat(str(raw).replace("Z", "+00:00"))
    except ValueError as exc:
        raise BadRequest(f"request.{name} must be an instant, not '{raw}'") from exc
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    return when.timestamp()


def _patch_ops(resource: Any) -> Any:
    """The JSON Patch carried by a PATCH entry: a Binary of ``application/json-patch+json``."""
    if not isinstance(resource, dict) or resource.get("resourceType") != "Binary":
        kind = resource.get("resourceType") if isinstance(resource, dict) else None
        if kind == "Parameters":
            raise NotSupported("FHIRPath Patch (a Parameters resource) is not supported; send a JSON Patch in a Binary")
        raise BadRequest("A PATCH entry's resource must be a Binary holding a JSON Patch (application/json-patch+json)")
    if resource.get("contentType") not in _PATCH_TYPES:
        raise BadRequest(
            f"The PATCH Binary's contentType must be application/json-patch+json, not '{resource.get('contentType')}'"
        )
    try:
        return jsonio.loads(base64.b64decode(str(resource.get("data", "")), validate=True))
    except (binascii.Error, ValueError, UnicodeDecodeError) as exc:
        raise BadRequest(f"The PATCH Binary's data is not base64 of a JSON Patch: {exc}") from exc


def _parse_entry(ctx: FhirContext, base: str, index: int, raw: Any) -> _Entry:
    full_url = raw.get("fullUrl") if isinstance(raw, dict) else None
    entry = _Entry(index, full_url if isinstance(full_url, str) else None)
    request = raw.get("request") if isinstance(raw, dict) else None
    entry.resource = raw.get("resource") if isinstance(raw, dict) else None
    if not isinstance(request, dict):
        raise BadRequest("request (method and url) is required in a transaction or batch entry")
    method = str(request.get("method", "")).upper()
    if method not in _ORDER:
        raise BadRequest(f"request.method must be GET, HEAD, POST, PUT, PATCH or DELETE, not '{request.get('method')}'")
    entry.method = method
    url = request.get("url")
    if not isinstance(url, str) or not url:
        raise BadRequest("request.url is required")
    path, _, query = _strip_base(url, base).partition("?")
    parts = [p for p in path.split("/") if p]
    if parts and parts[0] != "_history":
        check_type(parts[0])
        entry.type_ = parts[0]
    if method in ("GET", "HEAD"):
        _parse_read(entry, parts, query, url)
    elif method == "POST":
        if len(parts) != 1 or query:
            raise BadRequest(f"A POST entry's url is a resource type (e.g. 'Patient'), not '{url}'")
        if entry.resource is None:
            raise BadRequest("A POST entry needs a resource")
        check_resource(entry.resource, parts[0], None, lenient=ctx.lenient)
    else:
        if len(parts) == 2 and not query:
            check_id(parts[1])
            entry.id_ = parts[1]
        elif len(parts) == 1 and query:
            entry.criteria = query
        else:
            raise BadRequest(f"A {method} entry's url is 'Type/id' or 'Type?criteria', not '{url}'")
        if method == "PUT":
            if entry.resource is None:
                raise BadRequest("A PUT entry needs a resource")
            check_resource(entry.resource, parts[0], entry.id_, lenient=ctx.lenient, need_id=entry.id_ is not None)
        elif method == "PATCH":
            entry.ops = _patch_ops(entry.resource)
    if request.get("ifNoneExist") is not None:
        if method != "POST":
            raise BadRequest("request.ifNoneExist only applies to POST (conditional create)")
        entry.if_none_exist = criteria_of(str(request["ifNoneExist"]), entry.type_ or "")
    if request.get("ifMatch") is not None:
        entry.if_match = _version_tag(request["ifMatch"], "ifMatch")
    if request.get("ifNoneMatch") is not None:
        entry.if_none_match = str(request["ifNoneMatch"]).strip()
    if request.get("ifModifiedSince") is not None:
        entry.if_modified_since = _instant(request["ifModifiedSince"], "ifModifiedSince")
    return entry


def _parse_read(entry: _Entry, parts: list[str], query: str, url: str) -> None:
    entry.criteria = query
    if parts == ["_history"] or (len(parts) == 2 and parts[1] == "_history"):
        entry.tail = ("_history",)
        return
    if len(parts) == 1:
        return  # search
    if len(parts) >= 2:
        check_id(parts[1])
        entry.id_ = parts[1]
        rest = tuple(parts[2:])
        if rest in ((), ("_history",)) or (len(rest) == 2 and rest[0] == "_history"):
            entry.tail = rest
            return
    raise NotSupported(f"A GET entry reads, vreads, searches or reads history; '{url}' is none of those")


def _parse_bundle(ctx: FhirContext, base: str, bundle: Any) -> tuple[str, list[_Entry]]:
    if not isinstance(bundle, dict) or bundle.get("resourceType") != "Bundle":
        raise BadRequest("POST to the FHIR base takes a Bundle of type transaction or batch")
    kind = bundle.get("type")
    if kind not in ("transaction", "batch"):
        raise BadRequest(f"POST to the FHIR base takes a transaction or batch Bundle, not type '{kind}'")
    raw_entries = bundle.get("entry") or []
    if not isinstance(raw_entries, list):
        raise BadRequest("Bundle.entry must be an array")
    limit = ctx.config.max_bundle_entries
    if len(raw_entries) > limit:
        raise PayloadTooLarge(
            f"The Bundle has {len(raw_entries)} entries; this server takes at most {limit} (BIGMED_MAX_BUNDLE_ENTRIES)"
        )
    # The Bundle's own structure (entry.request …); each resource is validated on its own below.
    shell = dict(bundle)
    if raw_entries:
        shell["entry"] = [
            {k: v for k, v in e.items() if k != "resource"} if isinstance(e, dict) else e for e in raw_entries
        ]
    # an entry holding only its resource is empty in the shell: that is no ele-1 violation
    only_resource = {
        f"Bundle.entry[{n}]" for n, e in enumerate(raw_entries) if isinstance(e, dict) and list(e) == ["resource"]
    }
    problems = [
        i
        for i in validate_structure(shell)
        if i.severity == "error" and not (i.diagnostics.startswith("ele-1") and set(i.expression) <= only_resource)
    ]
    if problems:
        raise BadRequest(
            f"The Bundle is not valid: {len(problems)} problem(s)",
            [Issue(i.diagnostics, "error", i.code, tuple(i.expression)) for i in problems],
        )
    entries: list[_Entry] = []
    seen: dict[str, int] = {}
    for index, raw in enumerate(raw_entries):
        try:
            entry = _parse_entry(ctx, base, index, raw)
        except FhirError as err:
            failed = _Entry(index, raw.get("fullUrl") if isinstance(raw, dict) else None)
            failed.resource = raw.get("resource") if isinstance(raw, dict) else None
            wrapped = _at(failed, err)
            if kind == "transaction":
                raise wrapped from err
            failed.error = wrapped
            entry = failed
        if entry.full_url and entry.method in _WRITES:
            if entry.full_url in seen and kind == "transaction":
                message = f"{entry.label}: the fullUrl is also that of Bundle.entry[{seen[entry.full_url]}] (bdl-7)"
                raise BadRequest(message, [Issue(message, "error", "invalid", (f"{entry.where}.fullUrl",))])
            seen.setdefault(entry.full_url, index)
        entries.append(entry)
    return kind, entries


# -- writes --------------------------------------------------------------------------------


def _check_if_none_match(tx: WriteTx, entry: _Entry) -> None:
    if entry.if_none_match is None or entry.target is None or entry.type_ is None:
        return
    current = tx.current(entry.type_, entry.target)
    if current is None or current.deleted:
        return
    tag = entry.if_none_match
    if tag == "*" or tag in (etag(current.version), f'"{current.version}"'):
        raise PreconditionFailed(f"ifNoneMatch {tag}: {entry.type_}/{entry.target} exists (version {current.version})")


def _resolve_targets(ctx: FhirContext, tx: WriteTx, writes: list[_Entry]) -> None:
    """Step 1: the id each write entry changes (searches see the state before the transaction)."""
    claimed: dict[str, _Entry] = {}
    conditional_creates: dict[tuple[str, str], _Entry] = {}
    for entry in writes:
        type_ = entry.type_
        assert type_ is not None
        try:
            if entry.method == "DELETE":
                ids = [entry.id_] if entry.id_ else crud.delete_targets(ctx, tx, type_, entry.criteria or "")
                entry.target = ids[0] if ids else None
            elif entry.method == "POST":
                if entry.if_none_exist:
                    key = (type_, "&".join(sorted(entry.if_none_exist.split("&"))))
                    first = conditional_creates.get(key)
                    if first is not None:
                        entry.same_as, entry.target, entry.matched = first.index, first.target, first.matched
                        continue
                    conditional_creates[key] = entry
                    entry.matched = crud.create_match(ctx, tx, type_, entry.if_none_exist)
                entry.target = entry.matched.id if entry.matched else new_id()
            elif entry.method == "PUT":
                entry.target = entry.id_ or crud.update_target(
                    ctx, tx, type_, entry.criteria or "", entry.resource.get("id")
                )
            else:
                entry.target = entry.id_ or crud.patch_target(ctx, tx, type_, entry.criteria or "")
            _check_if_none_match(tx, entry)
        except FhirError as err:
            raise _at(entry, err) from err
        if entry.target is None or entry.matched is not None:
            continue
        identity = f"{type_}/{entry.target}"
        other = claimed.get(identity)
        if other is not None:
            raise _at(
                entry,
                BadRequest(
                    f"{other.label} changes {identity} too: "
                    "a transaction may change a resource only once (http.html#trules)"
                ),
            )
        claimed[identity] = entry


def _prepare(entries: list[_Entry], id_map: Mapping[str, str], bundle_urls: set[str], batch: bool) -> None:
    """Step 2: rewrite references to fullUrls in each resource (or patch) about to be written."""
    urn_map = {k: v for k, v in id_map.items() if k.startswith(LOCAL_URN_PREFIXES)}
    for entry in entries:
        if entry.method not in ("POST", "PUT", "PATCH") or entry.matched is not None or entry.same_as is not None:
            continue
        found_conditional = False

        def on_reference(ref: str, entry: _Entry = entry) -> str:
            nonlocal found_conditional
            mapped = id_map.get(ref)
            if mapped is not None:
                return mapped
            if ref.startswith(LOCAL_URN_PREFIXES):
                if batch and ref in bundle_urls:
                    why = "another entry of this batch: batch entries are independent (use a transaction)"
                else:
                    why = "which is not the fullUrl of any entry of this Bundle"
                path = reference_path(entry.resource, ref, f"{entry.where}.resource") or entry.where
                raise BadRequest(
                    f"{entry.label}: the reference '{ref}' refers to {why}",
                    [Issue(f"{entry.label}: the reference '{ref}' refers to {why}", "error", "invalid", (path,))],
                )
            if conditional_reference(ref):
                found_conditional = True
            return ref

        source = entry.ops if entry.method == "PATCH" else entry.resource
        entry.prepared = rewrite_references(source, urn_map, on_reference)
        entry.conditional_refs = found_conditional


def _resolve_conditional_refs(ctx: FhirContext, tx: WriteTx, entry: _Entry, cache: dict[str, str]) -> None:
    """Step 5: replace each ``Type?criteria`` reference by the one resource it matches."""

    def on_reference(ref: str) -> str:
        cond = conditional_reference(ref)
        if cond is None:
            return ref
        if ref in cache:
            return cache[ref]
        type_, criteria = cond
        path = reference_path(entry.prepared, ref, f"{entry.where}.resource") or entry.where
        if type_ not in ctx.registry.resource_types():
            raise BadRequest(
                f"the conditional reference '{ref}' names an unknown resource type",
                [Issue(f"Unknown resource type '{type_}' in '{ref}'", "error", "invalid", (path,))],
            )
        matches = crud.find_matches(ctx, tx, type_, criteria)
        if len(matches) != 1:
            how = "matches no" if not matches else "matches more than one"
            message = f"the conditional reference '{ref}' {how} {type_}; it must match exactly one"
            raise PreconditionFailed(
                message, [Issue(message, "error", "not-found" if not matches else "multiple-matches", (path,))]
            )
        cache[ref] = f"{type_}/{matches[0]}"
        return cache[ref]

    try:
        entry.prepared = rewrite_references(entry.prepared, {}, on_reference)
    except FhirError as err:
        raise _at(entry, err) from err


def _write(ctx: FhirContext, tx: WriteTx, entry: _Entry) -> None:
    type_ = entry.type_
    assert type_ is not None
    try:
        if entry.method == "DELETE":
            if entry.target is not None:
                entry.result = crud.write_in_tx(ctx, tx, type_, entry.target, None, "DELETE", entry.if_match)
        elif entry.matched is not None:
            entry.result = crud.WriteResult(entry.matched, changed=False)
        elif entry.method == "POST":
            assert entry.target is not None
            entry.result = crud.write_in_tx(ctx, tx, type_, entry.target, entry.prepared, "POST")
        elif entry.method == "PUT":
            assert entry.target is not None
            entry.result = crud.write_in_tx(ctx, tx, type_, entry.target, entry.prepared, "PUT", entry.if_match)
        else:
            assert entry.target is not None
            entry.result = crud.patch_in_tx(ctx, tx, type_, entry.target, entry.prepared, entry.if_match)
    except FhirError as err:
        raise _at(entry, err) from err


def _run_writes(ctx: FhirContext, tx: WriteTx, writes: list[_Entry], bundle_urls: set[str], batch: bool) -> None:
    """Resolve, rewrite and write ``writes`` (already in processing order) inside ``tx``."""
    for entry in writes:  # a retried transaction starts from the parsed entries again
        entry.target = entry.matched = entry.same_as = entry.prepared = entry.result = None
        entry.conditional_refs = False
    _resolve_targets(ctx, tx, writes)
    id_map = {
        e.full_url: f"{e.type_}/{e.target}"
        for e in writes
        if e.full_url and e.target is not None and e.method != "DELETE"
    }
    _prepare(writes, id_map, bundle_urls, batch)
    deferred = [e for e in writes if e.conditional_refs]
    for entry in writes:
        if not entry.conditional_refs and entry.same_as is None:
            _write(ctx, tx, entry)
    cache: dict[str, str] = {}
    for entry in deferred:
        _resolve_conditional_refs(ctx, tx, entry, cache)
        _write(ctx, tx, entry)
    by_index = {e.index: e for e in writes}
    for entry in writes:
        if entry.same_as is not None:
            first = by_index[entry.same_as].result
            entry.result = crud.WriteResult(first.resource, changed=False) if first else None


# -- responses -----------------------------------------------------------------------------


def _status(code: int) -> str:
    return f"{code} {HTTPStatus(code).phrase}"


def _error_entry(err: FhirError) -> dict[str, Any]:
    return {"response": {"status": _status(err.status), "outcome": err.outcome()}}


def _write_entry(base: str, entry: _Entry, prefer_return: str) -> dict[str, Any]:
    result = entry.result
    if result is None or (entry.method == "DELETE" and not result.changed):
        what = f"{entry.type_}/{entry.id_}" if entry.id_ else f"{entry.type_}?{entry.criteria}"
        outcome = operation_outcome(
            [Issue(f"Nothing to delete: no current resource matches {what}", "information", "informational")]
        )
        return {"response": {"status": _status(200), "outcome": outcome}}
    res = result.resource
    response: dict[str, Any] = {"etag": etag(res.version), "lastModified": instant(res.ts)}
    if entry.method == "DELETE":
        return {"response": {"status": _status(204), **response}}
    out: dict[str, Any] = {"fullUrl": f"{base}/{res.type}/{res.id}"}
    response = {
        "status": _status(201 if result.created else 200),
        "location": f"{res.type}/{res.id}/_history/{res.version}",
        **response,
    }
    if prefer_return == "representation":
        out["resource"] = fragment(res)
    elif prefer_return == "operationoutcome":
        verb = "created" if result.created else ("updated" if result.changed else "matched (not changed)")
        response["outcome"] = operation_outcome(
            [Issue(f"{res.type}/{res.id} {verb}, version {res.version}", "information", "informational")]
        )
    out["response"] = response
    return out


def _not_modified(entry: _Entry, res: StoredResource) -> bool:
    if entry.if_none_match is not None and entry.if_none_match in ("*", etag(res.version), f'"{res.version}"'):
        return True
    return entry.if_modified_since is not None and int(res.ts) <= entry.if_modified_since


def _read_entry(ctx: FhirContext, base: str, entry: _Entry) -> dict[str, Any]:
    """A GET/HEAD entry, answered with the ordinary read, vread, search and history functions."""
    try:
        body: Any
        response: dict[str, Any] = {"status": _status(200)}
        out: dict[str, Any] = {}
        if entry.tail and entry.tail[-1] == "_history":
            body = history(ctx, base, dict(parse_qsl(entry.criteria or "")), entry.type_, entry.id_)
        elif entry.id_ is None:
            assert entry.type_ is not None
            body = search(ctx, base, entry.type_, parse_qsl(entry.criteria or "", keep_blank_values=True))
        else:
            assert entry.type_ is not None
            res = (
                crud.vread(ctx, entry.type_, entry.id_, entry.tail[1])
                if entry.tail
                else crud.read(ctx, entry.type_, entry.id_)
            )
            response.update(etag=etag(res.version), lastModified=instant(res.ts))
            if not entry.tail and _not_modified(entry, res):
                return {"response": {**response, "status": _status(304)}}
            out["fullUrl"] = f"{base}/{res.type}/{res.id}"
            body = fragment(res)
        if entry.method == "GET":
            out["resource"] = body
        out["response"] = response
        return out
    except FhirError as err:
        return _error_entry(err)


def _response_bundle(kind: str, entries: list[dict[str, Any]]) -> dict[str, Any]:
    return {
        "resourceType": "Bundle",
        "id": str(uuid.uuid4()),
        "meta": {"lastUpdated": instant(datetime.now(UTC).timestamp())},
        "type": f"{kind}-response",
        **({"entry": entries} if entries else {}),  # no empty arrays in FHIR JSON
    }


def _in_order(entries: list[_Entry]) -> list[_Entry]:
    return sorted(entries, key=lambda e: (_ORDER.get(e.method, 4), e.index))


def _transaction(ctx: FhirContext, base: str, entries: list[_Entry], prefer_return: str) -> dict[str, Any]:
    writes = [e for e in _in_order(entries) if e.method in _WRITES]
    bundle_urls = {e.full_url for e in entries if e.full_url}
    try:
        crud.retrying(ctx, lambda tx: _run_writes(ctx, tx, writes, bundle_urls, batch=False))
    except ConflictRetry as exc:
        raise Conflict("The transaction kept conflicting with concurrent writers; retry it") from exc
    answers: dict[int, dict[str, Any]] = {e.index: _write_entry(base, e, prefer_return) for e in writes}
    for entry in _in_order(entries):
        if entry.method in ("GET", "HEAD"):
            answers[entry.index] = _read_entry(ctx, base, entry)
    return _response_bundle("transaction", [answers[e.index] for e in entries])


def _write_one(ctx: FhirContext, entry: _Entry, bundle_urls: set[str]) -> None:
    """One batch entry in its own store transaction."""
    crud.retrying(ctx, lambda tx: _run_writes(ctx, tx, [entry], bundle_urls, batch=True))


def _batch(ctx: FhirContext, base: str, entries: list[_Entry], prefer_return: str) -> dict[str, Any]:
    bundle_urls = {e.full_url for e in entries if e.full_url}
    answers: dict[int, dict[str, Any]] = {}
    for entry in _in_order(entries):
        if entry.error is not None:
            answers[entry.index] = _error_entry(entry.error)
        elif entry.method in ("GET", "HEAD"):
            answers[entry.index] = _read_entry(ctx, base, entry)
        else:
            try:
                _write_one(ctx, entry, bundle_urls)
                answers[entry.index] = _write_entry(base, entry, prefer_return)
            except ConflictRetry:
                answers[entry.index] = _error_entry(
                    _at(entry, Conflict("Kept conflicting with concurrent writers; retry"))
                )
            except FhirError as err:
                answers[entry.index] = _error_entry(err)
    return _response_bundle("batch", [answers[e.index] for e in entries])


def process(ctx: FhirContext, base: str, bundle: Any, prefer_return: str | None = None) -> dict[str, Any]:
    """Run a ``transaction`` or ``batch`` Bundle; the ``transaction-response``/``batch-response`` Bundle.

    ``prefer_return`` is the ``Prefer: return=`` value (minimal, representation, OperationOutcome).
    """
    kind, entries = _parse_bundle(ctx, base, bundle)
    wanted = (prefer_return or "minimal").lower()
    if kind == "transaction":
        return _transaction(ctx, base, entries, wanted)
    return _batch(ctx, base, entries, wanted)
