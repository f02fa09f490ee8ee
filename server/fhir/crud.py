"""Instance- and type-level CRUD interactions (http://hl7.org/fhir/R4/http.html).

read, vread (#read, #vread); create with server ids and conditional create ``If-None-Exist``
(#create, #ccreate); update, update-as-create with a client id, conditional update (#update,
#cond-update); JSON Patch (#patch); delete as a versioned tombstone and conditional delete
(#delete, #3.1.0.7.1); version-aware updates with ``If-Match`` (#concurrency).

Conditional writes search and write under one lock (``WriteTx.lock`` on the canonical
criteria), so two concurrent conditional creates with the same criteria create one resource.
Reads never go through a write transaction.

Each public write runs its ``*_in_tx`` form (``create_in_tx``, ``write_in_tx``, ``patch_in_tx``
…; ``create_match``/``update_target``/``patch_target``/``delete_targets`` resolve conditional
criteria) in a transaction of its own through :func:`retrying`; a transaction Bundle
(:mod:`server.fhir.transaction`) runs many of them inside one.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar
from urllib.parse import parse_qsl

import jsonpatch

from server import jsonio
from server.errors import BadRequest, Gone, Invalid, Issue, NotFound, PreconditionFailed
from server.fhir import guard
from server.fhir.context import FhirContext
from server.fhir.resource import check_id, check_resource, check_type, new_id, stamp
from server.search.extract import extract
from server.search.query import build_sql, parse_search
from server.store.base import ConflictRetry, StoredResource, WriteTx

__all__ = [
    "WriteResult",
    "conditional_delete",
    "conditional_patch",
    "conditional_update",
    "conditional_update_in_tx",
    "create",
    "create_in_tx",
    "create_match",
    "delete",
    "delete_targets",
    "find_matches",
    "patch",
    "patch_in_tx",
    "patch_target",
    "read",
    "retrying",
    "update",
    "update_target",
    "vread",
    "write_in_tx",
]

log = logging.getLogger(__name__)
T = TypeVar("T")
_RETRIES = 5


@dataclass(frozen=True)
class WriteResult:
    """What a write did: the version now current and whether it created the resource."""

    resource: StoredResource
    created: bool = False
    changed: bool = True  # False when a conditional create matched an existing resource
    outcome: list[Issue] | None = None


def retrying(ctx: FhirContext, work: Callable[[WriteTx], T]) -> T:
    """Run ``work`` in a write transaction, retrying when a concurrent writer won a race (it must be re-runnable)."""
    for attempt in range(_RETRIES):
        try:
            with ctx.store.transaction() as tx:
                return work(tx)
        except ConflictRetry:
            if attempt == _RETRIES - 1:
                raise
            time.sleep(0.005 * (attempt + 1))
    raise AssertionError("unreachable")


# -- reads ---------------------------------------------------------------------------------


def existing(ctx: FhirContext, type_: str, id_: str, hint: str = "") -> StoredResource:
    """The current version of ``type_/id_``: NotFound when unknown (``hint`` says what to do), Gone
    when deleted. No access check: :func:`read` adds it; operations check access their own way."""
    res = ctx.store.read(type_, id_)
    if res is None:
        raise NotFound(f"{type_}/{id_} is not known{hint}")
    if res.deleted:
        raise Gone(f"{type_}/{id_} was deleted (version {res.version})")
    return res


def read(ctx: FhirContext, type_: str, id_: str) -> StoredResource:
    check_type(type_)
    return guard.readable(existing(ctx, type_, id_))


def vread(ctx: FhirContext, type_: str, id_: str, version: str) -> StoredResource:
    check_type(type_)
    if not version.isdigit():
        raise NotFound(f"{type_}/{id_} has no version '{version}'")
    res = ctx.store.vread(type_, id_, int(version))
    if res is None:
        raise NotFound(f"{type_}/{id_} has no version {version}")
    if res.deleted:
        raise Gone(f"Version {version} of {type_}/{id_} is a deletion")
    return guard.readable(res)


# -- writes --------------------------------------------------------------------------------


def write_in_tx(
    ctx: FhirContext,
    tx: WriteTx,
    type_: str,
    id_: str,
    resource: dict[str, Any] | None,
    method: str,
    if_match: int | None = None,
) -> WriteResult:
    """Write a new version of ``type_/id_`` (a tombstone when ``resource`` is None) inside ``tx``."""
    tx.lock(f"{type_}/{id_}")
    current = tx.current(type_, id_)
    live = current is not None and not current.deleted
    guard.writable(type_, id_, current, resource, method)  # scopes, compartment (403/404), append-only types
    if if_match is not None and (not live or current is None or current.version != if_match):
        have = f"version {current.version}" if live and current else "no current version"
        raise PreconditionFailed(f"If-Match expected version {if_match} of {type_}/{id_}, but it has {have}")
    if resource is None and not live:
        return WriteResult(current, changed=False) if current else WriteResult(_absent(type_, id_), changed=False)
    version = current.version + 1 if current else 1
    ts = time.time()
    if resource is None:
        stored = StoredResource(type_, id_, version, ts, True, None, rid=current.rid if current else 0)
        deleted = tx.put(stored, "DELETE", None)
        assert current is not None and current.content is not None
        guard.written(ctx, tx, deleted, "DELETE", jsonio.loads(current.content))  # AuditEvent, same transaction
        return WriteResult(deleted)
    stamp(resource, id_, version, ts)
    content = jsonio.dumps(resource)
    stored = StoredResource(type_, id_, version, ts, False, content, rid=current.rid if current else 0)
    result = WriteResult(tx.put(stored, method, extract(resource, ctx.registry)), created=not live)
    guard.written(ctx, tx, result.resource, method, resource)  # AuditEvent, same transaction
    return result


def _absent(type_: str, id_: str) -> StoredResource:
    return StoredResource(type_, id_, 0, 0.0, True, None)


def find_matches(ctx: FhirContext, tx: WriteTx | None, type_: str, criteria: str, limit: int = 2) -> list[str]:
    """Ids of current resources matching conditional criteria (a query string), at most ``limit``.

    Unknown parameters are an error here: ignoring one would widen the match (http.html#ccreate).
    """
    pairs = parse_qsl(criteria.lstrip("?"), keep_blank_values=True)
    if not pairs:
        raise BadRequest(f"Conditional criteria for {type_} are empty")
    guard.searchable(type_)  # conditional criteria search: the client needs the search scope too
    parsed = parse_search(ctx.registry, type_, pairs, strict=True)
    sql, params = build_sql(parsed, limit=limit)
    rows = tx.query(sql, params) if tx is not None else ctx.store.query(sql, params)
    return [r[1] for r in rows]


def _criteria_lock(type_: str, criteria: str) -> str:
    pairs = sorted(parse_qsl(criteria.lstrip("?"), keep_blank_values=True))
    return f"?{type_}?" + "&".join(f"{k}={v}" for k, v in pairs)


def create_match(ctx: FhirContext, tx: WriteTx, type_: str, if_none_exist: str) -> StoredResource | None:
    """The one current resource matching ``If-None-Exist`` criteria (None: create); several are a 412."""
    tx.lock(_criteria_lock(type_, if_none_exist))
    matches = find_matches(ctx, tx, type_, if_none_exist)
    if len(matches) > 1:
        raise PreconditionFailed(f"If-None-Exist criteria '{if_none_exist}' match more than one {type_}; refine them")
    if not matches:
        return None
    existing = tx.current(type_, matches[0])
    assert existing is not None
    return existing


def create_in_tx(
    ctx: FhirContext, tx: WriteTx, type_: str, id_: str, resource: dict[str, Any], if_none_exist: str | None = None
) -> WriteResult:
    """Create (a checked resource) as ``type_/id_`` inside ``tx``, unless ``if_none_exist`` matches one."""
    if if_none_exist:
        existing = create_match(ctx, tx, type_, if_none_exist)
        if existing is not None:
            return WriteResult(existing, changed=False)
    return write_in_tx(ctx, tx, type_, id_, resource, "POST")


def create(ctx: FhirContext, type_: str, resource: Any, if_none_exist: str | None = None) -> WriteResult:
    check_type(type_)
    check_resource(resource, type_, None, lenient=ctx.lenient)
    id_ = new_id()
    return retrying(ctx, lambda tx: create_in_tx(ctx, tx, type_, id_, resource, if_none_exist))


def update(ctx: FhirContext, type_: str, id_: str, resource: Any, if_match: int | None = None) -> WriteResult:
    check_type(type_)
    check_id(id_)
    check_resource(resource, type_, id_, lenient=ctx.lenient, need_id=True)
    return retrying(ctx, lambda tx: write_in_tx(ctx, tx, type_, id_, resource, "PUT", if_match))


def conditional_update(
    ctx: FhirContext, type_: str, criteria: str, resource: Any, if_match: int | None = None
) -> WriteResult:
    """PUT [type]?criteria: no match creates, one match updates it, several are a 412."""
    check_type(type_)
    check_resource(resource, type_, None, lenient=ctx.lenient)
    return retrying(ctx, lambda tx: conditional_update_in_tx(ctx, tx, type_, criteria, resource, if_match))


def update_target(ctx: FhirContext, tx: WriteTx, type_: str, criteria: str, body_id: Any) -> str:
    """The id a conditional update writes: the one match, else the body's id or a new one."""
    tx.lock(_criteria_lock(type_, criteria))
    matches = find_matches(ctx, tx, type_, criteria)
    if len(matches) > 1:
        raise PreconditionFailed(f"Conditional update criteria '{criteria}' match more than one {type_}")
    if matches:
        if body_id is not None and body_id != matches[0]:
            raise BadRequest(
                f"The resource id '{body_id}' differs from the id of the matching {type_} ('{matches[0]}')"
            )
        return matches[0]
    target = body_id if isinstance(body_id, str) else new_id()
    check_id(target)
    return target


def conditional_update_in_tx(
    ctx: FhirContext, tx: WriteTx, type_: str, criteria: str, resource: dict[str, Any], if_match: int | None = None
) -> WriteResult:
    target = update_target(ctx, tx, type_, criteria, resource.get("id"))
    return write_in_tx(ctx, tx, type_, target, resource, "PUT", if_match)


def _apply_patch(type_: str, id_: str, current: StoredResource, ops: Any) -> dict[str, Any]:
    if not isinstance(ops, list):
        raise BadRequest("A JSON Patch body is a JSON array of operations (RFC 6902)")
    assert current.content is not None
    doc = jsonio.loads(current.content)
    try:
        patched = jsonpatch.JsonPatch(ops).apply(doc)
    except (jsonpatch.JsonPatchException, jsonpatch.JsonPointerException, TypeError, KeyError) as exc:
        raise Invalid(f"The JSON Patch could not be applied to {type_}/{id_}: {exc}") from exc
    if not isinstance(patched, dict) or patched.get("resourceType") != type_ or patched.get("id") != id_:
        raise Invalid("A patch may not change a resource's resourceType or id")
    return patched


def patch_in_tx(
    ctx: FhirContext, tx: WriteTx, type_: str, id_: str, ops: Any, if_match: int | None = None
) -> WriteResult:
    """Apply a JSON Patch to the current version of ``type_/id_`` inside ``tx`` (validated like an update)."""
    tx.lock(f"{type_}/{id_}")
    current = tx.current(type_, id_)
    if current is None:
        raise NotFound(f"{type_}/{id_} is not known")
    if current.deleted:
        raise Gone(f"{type_}/{id_} was deleted")
    patched = _apply_patch(type_, id_, current, ops)
    check_resource(patched, type_, id_, lenient=ctx.lenient, need_id=True)
    return write_in_tx(ctx, tx, type_, id_, patched, "PATCH", if_match)


def patch(ctx: FhirContext, type_: str, id_: str, ops: Any, if_match: int | None = None) -> WriteResult:
    check_type(type_)
    return retrying(ctx, lambda tx: patch_in_tx(ctx, tx, type_, id_, ops, if_match))


def conditional_patch(
    ctx: FhirContext, type_: str, criteria: str, ops: Any, if_match: int | None = None
) -> WriteResult:
    check_type(type_)
    return retrying(ctx, lambda tx: patch_in_tx(ctx, tx, type_, patch_target(ctx, tx, type_, criteria), ops, if_match))


def patch_target(ctx: FhirContext, tx: WriteTx, type_: str, criteria: str) -> str:
    """The id of the one resource a conditional patch applies to (none: 404, several: 412)."""
    tx.lock(_criteria_lock(type_, criteria))
    matches = find_matches(ctx, tx, type_, criteria)
    if len(matches) != 1:
        if not matches:
            raise NotFound(f"No {type_} matches the conditional patch criteria '{criteria}'")
        raise PreconditionFailed(f"Conditional patch criteria '{criteria}' match more than one {type_}")
    return matches[0]


def delete(ctx: FhirContext, type_: str, id_: str, if_match: int | None = None) -> WriteResult:
    """Delete (a tombstone version); deleting what is absent or already deleted changes nothing."""
    check_type(type_)
    return retrying(ctx, lambda tx: write_in_tx(ctx, tx, type_, id_, None, "DELETE", if_match))


def conditional_delete(ctx: FhirContext, type_: str, criteria: str) -> Sequence[WriteResult]:
    """DELETE [type]?criteria, single-match semantics: several matches are a 412."""
    check_type(type_)
    return retrying(
        ctx,
        lambda tx: [write_in_tx(ctx, tx, type_, m, None, "DELETE") for m in delete_targets(ctx, tx, type_, criteria)],
    )


def delete_targets(ctx: FhirContext, tx: WriteTx, type_: str, criteria: str) -> list[str]:
    """Ids a conditional delete removes: none or one (several are a 412)."""
    tx.lock(_criteria_lock(type_, criteria))
    matches = find_matches(ctx, tx, type_, criteria)
    if len(matches) > 1:
        raise PreconditionFailed(f"Conditional delete criteria '{criteria}' match more than one {type_}")
    return matches
