"""Bulk load of FHIR data from files: ``python -m server load PATH…``.

Reads Bundle JSON files (``transaction``, ``batch``, ``collection``, ``searchset``, ``history``;
any other Bundle, e.g. a ``document``, is stored as one Bundle resource), NDJSON files (one
resource per line, as FHIR Bulk Data writes them, https://hl7.org/fhir/uv/bulkdata/) and
folders of them, plain or gzip (``.json``, ``.ndjson``, ``.jsonl``, each optionally ``.gz``).
It bypasses HTTP and writes many resources per store transaction with one ``executemany``
per table (:meth:`server.store.base.WriteTx.put_many`).

Semantics (what makes a load repeatable):

- **Ids are kept.** Each resource gets the id its source gives it: the ``PUT`` url's id, else
  ``resource.id``, else the uuid of a ``urn:uuid:`` fullUrl (the last path segment of an
  absolute one). Loading the same export again, or rerunning a load that was killed, updates
  the same resources; a resource whose content did not change is left alone (no new version).
  References to fullUrls are rewritten to ``Type/id`` as a transaction would
  (:func:`server.fhir.transaction.rewrite_references`), urn fullUrls also where they are used
  as uri/canonical values.
- **Reference data first.** Files holding ``batch`` Bundles or entries with ``ifNoneExist``
  (Synthea's hospital and practitioner files) are loaded before the others, whatever the order
  given, each committed before the next file starts, so that the patient files' conditional
  references (``Practitioner?identifier=…``) find them. An ``ifNoneExist`` that matches an
  existing resource writes nothing and points the entry's fullUrl at the match.
- **Conditional references** are resolved by search (:func:`server.fhir.crud.find_matches`,
  cached for the run): exactly one match, else the entry fails.
- **What fails together:** a ``transaction`` Bundle is all or nothing; an entry of any other
  Bundle, and a line of an NDJSON file, fails alone. Failures are reported with file,
  entry/line and reason; everything else loads. GET/HEAD entries are skipped (counted);
  PATCH and conditional PUT/DELETE entries fail (POST such a Bundle to ``/fhir`` instead).
  An NDJSON line holding a ``transaction`` or ``batch`` Bundle is processed as that Bundle (the
  ``deleted`` files of Bulk Data ``$export``: one DELETE entry per line), not stored.
- **Statistics.** A load that wrote something ends with :meth:`Store.analyze` (the planner's
  statistics; PostgreSQL's autovacuum would take a minute or so, SQLite never does it).
- **Validation** is on. By default every resource is checked against the official R4
  StructureDefinitions (:func:`profiles.validate.validate_structure`: elements, cardinality,
  types, primitive formats, choice types, ele-1), the first of the API's two passes. The
  second pass, the fhir.resources R4B models, costs about 0.55 ms per resource, 5-7 times the
  first (6.3 s of CPU for the 11,659-resource Synthea sample against 0.9-1.2 s) and, in the
  validator's own tests, finds nothing the first pass misses; ``--full-validation`` turns it on
  (the same checks as a PUT through the API) for about 1.7 times the CPU of a load.

Where the time goes (the Synthea sample, CPU seconds, one process): search index extraction
1.4, validation 0.9, JSON parsing 0.45, reference rewriting 0.4, serialising 0.15; SQLite's
inserts of 11,521 resources with 215,000 index rows 2.5-3.5 and commits 0.5-1.5. The workers
(``workers``, default one per core) do the first part for whole files while this process writes.
"""

from __future__ import annotations

import gzip
import logging
import multiprocessing
import os
import re
import time
from collections import deque
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from concurrent.futures import Future, ProcessPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any
from urllib.parse import parse_qsl

from tqdm import tqdm

from server import jsonio
from server.errors import FhirError
from server.fhir import crud
from server.fhir.context import FhirContext
from server.fhir.report import WriteCounts, listing
from server.fhir.resource import check_id, instant, new_id, stamp
from server.fhir.transaction import (
    LOCAL_URN_PREFIXES,
    conditional_reference,
    criteria_of,
    reference_path,
    rewrite_references,
)
from server.fhir.validation import resource_types, validate_resource
from server.search.extract import extract
from server.search.registry import Registry, default_registry
from server.store.base import INDEX_TABLES, StoredResource, WriteTx
from server.workers import orphan_guard, paused_gc

__all__ = ["Failure", "LoadReport", "default_workers", "discover", "load"]

log = logging.getLogger(__name__)

_SUFFIXES = (".json", ".ndjson", ".jsonl")
_ENTRY_BUNDLES = ("transaction", "batch", "collection", "searchset", "history")
#: Bundles on an NDJSON line that are processed rather than stored (Bulk Data ``deleted`` files)
_LINE_BUNDLES = ("transaction", "batch")
_TOP_TYPE = re.compile(rb'"type"\s*:\s*"([a-z-]+)"')
_SHOW_ISSUES = 3


@dataclass(frozen=True)
class Failure:
    """Something that was not loaded: the file, the entry or line, and why."""

    source: str
    where: str
    reason: str


@dataclass
class LoadReport(WriteCounts):
    """What a load did (counts are of committed work only)."""

    files: int = 0
    skipped: int = 0  # GET/HEAD entries
    without_id: int = 0  # resources whose source gave no id (a rerun would load them again)
    failures: list[Failure] = field(default_factory=list)
    seconds: float = 0.0

    @property
    def rate(self) -> float:
        return self.processed / self.seconds if self.seconds else 0.0

    def summary(self, max_failures: int = 50) -> str:
        lines = [
            f"Loaded {self.processed:,} resources from {self.files:,} file(s) in {self.seconds:.1f} s "
            f"({self.rate:,.0f} resources/s): {self.created:,} created, {self.updated:,} updated, "
            f"{self.unchanged:,} unchanged, {self.deleted:,} deleted, {self.matched:,} matched by ifNoneExist"
            + (f", {self.skipped:,} GET entries skipped" if self.skipped else "")
        ]
        if self.by_type:
            lines.append("  " + ", ".join(f"{t} {n:,}" for t, n in self.by_type.most_common()))
        if self.without_id:
            lines.append(f"  {self.without_id:,} resource(s) had no id in their source: a rerun creates them again")
        lines += listing(
            f"Failed: {len(self.failures):,} (file, entry/line, reason)",
            self.failures,
            lambda f: f"{f.source}  {f.where}  {f.reason}",
            "Failed: none",
            max_failures,
        )
        return "\n".join(lines)


class _Failed(Exception):
    """One unit (a transaction Bundle, an entry, a line) cannot be loaded."""

    def __init__(self, where: str, reason: str, ref: str | None = None):
        super().__init__(reason)
        self.where = where
        self.reason = reason
        self.ref = ref  # the reference that could not be resolved, if that is the reason


@dataclass
class _Item:
    """One resource to write, or delete, with the id it keeps.

    Prepared in a worker: ``content`` (stamped as version 1 at ``ts``) and ``index`` are ready and
    ``resource`` is dropped. Items of a unit with ``ifNoneExist`` entries, and items holding
    conditional references, keep ``resource`` and are finished at write time.
    """

    where: str
    type_: str
    id_: str
    resource: dict[str, Any] | None
    delete: bool = False
    full_url: str | None = None
    if_none_exist: str | None = None
    conditional: bool = False
    content: bytes | None = None
    index: Any = None
    ts: float = 0.0
    matched: bool = False  # its ifNoneExist matched an existing resource: nothing to write


@dataclass
class _Unit:
    """What is written or fails together: a transaction Bundle, or one entry, or one line."""

    source: str
    where: str
    items: list[_Item]
    id_map: dict[str, str]  # fullUrl -> Type/id, shared by the units of one Bundle
    deferred: bool = False  # has ifNoneExist entries: references are rewritten at write time


@dataclass
class _Prepared:
    """What a worker made of one file, or of a slice of an NDJSON file."""

    units: list[_Unit] = field(default_factory=list)
    failures: list[Failure] = field(default_factory=list)
    skipped: int = 0
    without_id: int = 0
    entries: int = 0  # units + failed entries, for the progress bar


# -- reading -------------------------------------------------------------------------------


def _kind(path: Path) -> str:
    name = path.name.lower().removesuffix(".gz")
    return "ndjson" if name.endswith((".ndjson", ".jsonl")) else "json"


def discover(paths: Iterable[str | Path]) -> list[Path]:
    """The loadable files under ``paths`` (folders walked in name order)."""
    out: list[Path] = []
    for raw in paths:
        path = Path(raw)
        if path.is_dir():
            out.extend(
                p
                for p in sorted(path.rglob("*"))
                if p.is_file() and p.name.lower().removesuffix(".gz").endswith(_SUFFIXES)
            )
        elif path.is_file():
            out.append(path)
        else:
            raise FileNotFoundError(f"No such file or folder: {path}")
    return out


def _open(path: Path) -> IO[bytes]:
    if path.name.lower().endswith(".gz"):
        return gzip.GzipFile(path, "rb")  # type: ignore[return-value]  # GzipFile reads bytes like a file
    return path.open("rb")


def _read(path: Path) -> bytes:
    with _open(path) as fh:
        return fh.read()


def _survey(path: Path) -> tuple[bool, int]:
    """(holds reference data, about how many resources), from the bytes without parsing them."""
    data = _read(path)
    if _kind(path) == "ndjson":
        return False, data.count(b"\n") + (0 if data.endswith(b"\n") else 1)
    head = data[: data.find(b'"entry"')] if b'"entry"' in data else data
    top = _TOP_TYPE.search(head)
    batch = top is not None and top.group(1) == b"batch"
    count = data.count(b'"resource":') + data.count(b'"resource" :')
    return batch or b'"ifNoneExist"' in data, max(count, 1)


# -- preparing (in worker processes: parse, ids, validation, references, index) -------------

#: what the workers need, set by :func:`load` before they are forked (None: the defaults)
_SETTINGS: dict[str, Any] = {}


def _validate(resource: dict[str, Any]) -> None:
    lenient, models = _SETTINGS.get("lenient", False), _SETTINGS.get("models", False)
    issues = validate_resource(resource, lenient=lenient, models=models)
    errors = [i for i in issues if i.severity in ("error", "fatal")]
    if errors:
        shown = "; ".join(f"{', '.join(i.expression) or 'resource'}: {i.diagnostics}" for i in errors[:_SHOW_ISSUES])
        more = f" (and {len(errors) - _SHOW_ISSUES} more)" if len(errors) > _SHOW_ISSUES else ""
        raise _Failed("", f"invalid {resource.get('resourceType')}: {shown}{more}")


def _id_from_full_url(full_url: str | None) -> str | None:
    if not full_url:
        return None
    for prefix in LOCAL_URN_PREFIXES:
        if full_url.startswith(prefix):
            return full_url[len(prefix) :]
    tail = full_url.rstrip("/").split("/")
    if len(tail) >= 2 and tail[-2] == "_history":
        tail = tail[:-2]
    return tail[-1] if len(tail) > 1 else None


def _resource_item(where: str, resource: Any, url_id: str | None, full_url: str | None, out: _Prepared) -> _Item:
    if not isinstance(resource, dict):
        raise _Failed(where, "not a JSON object holding a resource")
    type_ = resource.get("resourceType")
    if not isinstance(type_, str) or type_ not in resource_types():
        raise _Failed(where, f"unknown resourceType {type_!r}")
    body_id = resource.get("id")
    id_ = url_id or (body_id if isinstance(body_id, str) else None) or _id_from_full_url(full_url)
    if id_ is None:
        id_ = new_id()
        out.without_id += 1
    try:
        check_id(id_)
        _validate(resource)
    except FhirError as err:
        raise _Failed(where, err.message) from err
    except _Failed as failed:
        raise _Failed(where, failed.reason) from failed
    return _Item(where, type_, id_, resource, full_url=full_url)


def _entry_item(index: int, entry: Any, out: _Prepared) -> _Item | None:
    """The item of one Bundle entry; None for a GET/HEAD entry (nothing to load)."""
    full_url = entry.get("fullUrl") if isinstance(entry, dict) else None
    full_url = full_url if isinstance(full_url, str) else None
    where = f"Bundle.entry[{index}]" + (f" (fullUrl {full_url})" if full_url else "")
    if not isinstance(entry, dict):
        raise _Failed(where, "an entry must be a JSON object")
    raw_request = entry.get("request")
    request: dict[str, Any] = raw_request if isinstance(raw_request, dict) else {}
    method = str(request.get("method") or "PUT").upper()
    url = str(request.get("url") or "")
    path, _, query = url.partition("?")
    parts = [p for p in path.split("/") if p]
    if method in ("GET", "HEAD"):
        out.skipped += 1
        return None
    if method == "PATCH" or (query and method in ("PUT", "DELETE")):
        raise _Failed(where, f"{method} {url} is not loaded by the bulk loader; POST the Bundle to /fhir instead")
    if method == "DELETE":
        if len(parts) != 2 or parts[0] not in resource_types():
            raise _Failed(where, f"DELETE needs a url 'Type/id', not '{url}'")
        return _Item(where, parts[0], parts[1], None, delete=True, full_url=full_url)
    if method not in ("POST", "PUT"):
        raise _Failed(where, f"unknown request.method '{method}'")
    url_id = parts[1] if method == "PUT" and len(parts) == 2 else None
    item = _resource_item(where, entry.get("resource"), url_id, full_url, out)
    if parts and parts[0] != item.type_:
        raise _Failed(where, f"request.url '{url}' does not match the resource's type {item.type_}")
    if method == "POST" and request.get("ifNoneExist"):
        item.if_none_exist = criteria_of(str(request["ifNoneExist"]), item.type_)
    return item


def _bundle_units(source: str, bundle: dict[str, Any], out: _Prepared) -> None:
    kind = bundle.get("type")
    entries = bundle.get("entry") or []
    if kind not in _ENTRY_BUNDLES or not isinstance(entries, list):
        out.units.append(_Unit(source, "Bundle", [_resource_item("Bundle", bundle, None, None, out)], {}))
        return
    id_map: dict[str, str] = {}
    items: list[_Item] = []
    failures: list[_Failed] = []
    for index, entry in enumerate(entries):
        try:
            got = _entry_item(index, entry, out)
        except _Failed as failed:
            failures.append(failed)
            continue
        if got is not None:
            items.append(got)
            if got.full_url and not got.delete:
                id_map[got.full_url] = f"{got.type_}/{got.id_}"
    if kind == "transaction":
        if failures:
            more = f" (and {len(failures) - 1} more failed entries)" if len(failures) > 1 else ""
            raise _Failed("Bundle", f"{failures[0].where}: {failures[0].reason}{more}; the transaction is not loaded")
        seen: dict[tuple[str, str], str] = {}
        for item in items:
            other = seen.setdefault((item.type_, item.id_), item.where)
            if other is not item.where:
                raise _Failed("Bundle", f"{other} and {item.where} both write {item.type_}/{item.id_}")
        out.units.append(_Unit(source, "Bundle", items, id_map))
        return
    out.failures.extend(Failure(source, f.where, f.reason) for f in failures)
    out.units.extend(_Unit(source, item.where, [item], id_map) for item in items)


def _static_rewrite(unit: _Unit) -> None:
    """References to the fullUrls of the unit's Bundle become ``Type/id`` (ids are the source's)."""
    id_map = unit.id_map
    urn_map = {k: v for k, v in id_map.items() if k.startswith(LOCAL_URN_PREFIXES)}
    for item in unit.items:
        if item.resource is None:
            continue

        def on_reference(ref: str, item: _Item = item) -> str:
            mapped = id_map.get(ref)
            if mapped is not None:
                return mapped
            if ref.startswith(LOCAL_URN_PREFIXES):
                raise _Failed(item.where, f"the reference '{ref}' is not the fullUrl of any entry of its Bundle")
            if conditional_reference(ref):
                item.conditional = True
            return ref

        rewrite_references(item.resource, urn_map, on_reference, copy=False)


class _Rows:
    """A resource's index rows by table, as :meth:`WriteTx.put_many` reads them, cheap to pickle."""

    __slots__ = tuple(INDEX_TABLES)

    def __init__(self, *tables: list[Any]) -> None:
        for name, rows in zip(INDEX_TABLES, tables, strict=True):
            setattr(self, name, rows)

    @classmethod
    def of(cls, index: Any) -> _Rows:
        return cls(*(getattr(index, name) for name in INDEX_TABLES))

    def __reduce__(self) -> tuple[Any, ...]:
        return (_Rows, tuple(getattr(self, name) for name in INDEX_TABLES))


def _finish(item: _Item, registry: Registry, ts: float) -> None:
    """Stamp (version 1 at ``ts``), serialise and index a resource whose references are final."""
    assert item.resource is not None
    stamp(item.resource, item.id_, 1, ts)
    item.content = jsonio.dumps(item.resource)
    item.index = _Rows.of(extract(item.resource, registry))
    item.ts = ts
    item.resource = None


def _finish_units(out: _Prepared, source: str) -> _Prepared:
    """Rewrite, stamp and index what needs no database; units that fail are reported instead."""
    registry = _SETTINGS.get("registry") or default_registry()
    kept: list[_Unit] = []
    ts = time.time()
    for unit in out.units:
        unit.deferred = any(i.if_none_exist for i in unit.items)
        if not unit.deferred:
            try:
                _static_rewrite(unit)
            except _Failed as failed:
                where = unit.where if unit.where != "Bundle" else "Bundle"
                reason = failed.reason if unit.where != "Bundle" else f"{failed.where}: {failed.reason}"
                out.failures.append(Failure(source, where, reason))
                continue
            for item in unit.items:
                if item.resource is not None and not item.conditional:
                    _finish(item, registry, ts)
        kept.append(unit)
    out.units = kept
    out.entries = sum(len(u.items) for u in kept) + len(out.failures)
    return out


def _prepare_json(path: str) -> _Prepared:
    """Task: one JSON file (a Bundle or a single resource)."""
    out = _Prepared()
    try:
        doc = jsonio.loads(_read(Path(path)))
    except (jsonio.JSONDecodeError, UnicodeDecodeError) as exc:
        out.failures.append(Failure(path, "file", f"not JSON: {exc}"))
        out.entries = 1
        return out
    try:
        if isinstance(doc, dict) and doc.get("resourceType") == "Bundle":
            _bundle_units(path, doc, out)
        else:
            out.units.append(_Unit(path, "resource", [_resource_item("resource", doc, None, None, out)], {}))
    except _Failed as failed:
        out.failures.append(Failure(path, failed.where, failed.reason))
    return _finish_units(out, path)


def _prepare_lines(path: str, first: int, lines: list[bytes]) -> _Prepared:
    """Task: a slice of an NDJSON file, ``first`` being the number of its first line."""
    out = _Prepared()
    for number, line in enumerate(lines, start=first):
        if not line.strip():
            continue
        where = f"line {number}"
        try:
            doc = jsonio.loads(line)
            if isinstance(doc, dict) and doc.get("resourceType") == "Bundle" and doc.get("type") in _LINE_BUNDLES:
                try:  # e.g. the ``deleted`` files of Bulk Data $export: DELETE entries
                    _bundle_units(path, doc, out)
                except _Failed as failed:
                    out.failures.append(Failure(path, f"{where}: {failed.where}", failed.reason))
                continue
            item = _resource_item(where, doc, None, None, out)
        except _Failed as failed:
            out.failures.append(Failure(path, failed.where, failed.reason))
            continue
        except (jsonio.JSONDecodeError, UnicodeDecodeError) as exc:
            out.failures.append(Failure(path, where, f"not JSON: {exc}"))
            continue
        out.units.append(_Unit(path, where, [item], {}))
    return _finish_units(out, path)


@dataclass(frozen=True)
class _Task:
    fn: Callable[..., _Prepared]
    args: tuple[Any, ...]
    path: Path
    reference_data: bool
    last: bool  # the file's last task


def _tasks(files: Sequence[tuple[Path, bool, int]], lines_per_task: int) -> Iterator[_Task]:
    for path, reference_data, _ in files:
        if _kind(path) != "ndjson":
            yield _Task(_prepare_json, (str(path),), path, reference_data, True)
            continue
        with _open(path) as fh:
            first, chunk = 1, []
            for line in fh:
                chunk.append(line)
                if len(chunk) >= lines_per_task:
                    yield _Task(_prepare_lines, (str(path), first, chunk), path, reference_data, False)
                    first, chunk = first + len(chunk), []
            yield _Task(_prepare_lines, (str(path), first, chunk), path, reference_data, True)


def _run(tasks: Iterator[_Task], workers: int) -> Iterator[tuple[_Task, _Prepared]]:
    """Each task with its result, in order; ``workers`` processes prepare ahead (0: inline)."""
    if workers <= 0:
        for task in tasks:
            yield task, task.fn(*task.args)
        return
    methods = multiprocessing.get_all_start_methods()
    context = multiprocessing.get_context("fork" if "fork" in methods else None)
    pool = ProcessPoolExecutor(
        max_workers=workers, mp_context=context, initializer=orphan_guard, initargs=(os.getpid(),)
    )
    pending: deque[tuple[_Task, Future[_Prepared]]] = deque()
    try:
        for task in tasks:
            pending.append((task, pool.submit(task.fn, *task.args)))
            if len(pending) > 2 * workers + 1:  # bounded look-ahead: memory stays flat on big inputs
                done, future = pending.popleft()
                yield done, future.result()
        while pending:
            done, future = pending.popleft()
            yield done, future.result()
    finally:
        pool.shutdown(wait=True, cancel_futures=True)


# -- writing groups of units in one store transaction ---------------------------------------


def _canonical(type_: str, criteria: str) -> str:
    pairs = sorted(parse_qsl(criteria.lstrip("?"), keep_blank_values=True))
    return type_ + "?" + "&".join(f"{k}={v}" for k, v in pairs)


@dataclass
class _GroupResult:
    counts: WriteCounts
    failures: list[tuple[_Unit, _Failed]]
    found: dict[str, str]  # canonical criteria -> Type/id learnt by this group


def _resolver(
    ctx: FhirContext, tx: WriteTx, sources: Sequence[Mapping[str, str]], learn: dict[str, str]
) -> Callable[[str], str]:
    """Resolve ``Type?criteria`` to ``Type/id``: what this load already knows (``sources``), else a search."""

    def resolve(ref: str) -> str:
        cond = conditional_reference(ref)
        assert cond is not None
        type_, criteria = cond
        key = _canonical(type_, criteria)
        for known in sources:
            hit = known.get(key)
            if hit is not None:
                return hit
        if type_ not in resource_types():
            raise _Failed("", f"the conditional reference '{ref}' names an unknown resource type", ref)
        try:
            matches = crud.find_matches(ctx, tx, type_, criteria)
        except FhirError as err:
            raise _Failed("", f"the conditional reference '{ref}' is not a valid search: {err.message}", ref) from err
        if len(matches) != 1:
            how = "matches no" if not matches else "matches more than one"
            raise _Failed("", f"the conditional reference '{ref}' {how} {type_}; it must match exactly one", ref)
        learn[key] = f"{type_}/{matches[0]}"
        return learn[key]

    return resolve


def _resolve_unit(ctx: FhirContext, tx: WriteTx, unit: _Unit, known: Mapping[str, str], found: dict[str, str]) -> None:
    """ifNoneExist and the remaining references of one unit, in place; raises :class:`_Failed`."""
    mine: dict[str, str] = {}
    resolve = _resolver(ctx, tx, (mine, found, known), mine)
    for item in unit.items:
        item.matched = False
        if not item.if_none_exist:
            continue
        key = _canonical(item.type_, item.if_none_exist)
        hit = mine.get(key) or found.get(key) or known.get(key)
        if hit is None:
            try:
                matches = crud.find_matches(ctx, tx, item.type_, item.if_none_exist)
            except FhirError as err:
                raise _Failed(item.where, f"ifNoneExist '{item.if_none_exist}': {err.message}") from err
            if len(matches) > 1:
                raise _Failed(item.where, f"ifNoneExist '{item.if_none_exist}' matches more than one {item.type_}")
            hit = f"{item.type_}/{matches[0]}" if matches else None
        if hit is not None:
            item.matched = True
            if item.full_url:
                unit.id_map[item.full_url] = hit
        else:
            mine[key] = f"{item.type_}/{item.id_}"
    id_map = unit.id_map
    urn_map = {k: v for k, v in id_map.items() if k.startswith(LOCAL_URN_PREFIXES)} if unit.deferred else {}
    for item in unit.items:
        if item.resource is None or item.matched or not (unit.deferred or item.conditional):
            continue

        def on_reference(ref: str) -> str:
            mapped = id_map.get(ref)
            if mapped is not None:
                return mapped
            if ref.startswith(LOCAL_URN_PREFIXES):
                raise _Failed("", f"the reference '{ref}' is not the fullUrl of any entry of its Bundle", ref)
            return resolve(ref) if conditional_reference(ref) else ref

        try:
            rewrite_references(item.resource, urn_map, on_reference, copy=False)
        except _Failed as failed:
            path = reference_path(item.resource, failed.ref, "resource") if failed.ref else None
            raise _Failed(item.where, failed.reason + (f" (at {path})" if path else "")) from failed
    found.update(mine)


def _same_bytes(content: bytes, ts: float, cur: StoredResource) -> bool:
    """True when ``content`` (stamped version 1 at ``ts``) is ``cur`` byte for byte but for its meta.

    The fast path of a rerun: no parsing. Only a byte-identical document counts (SQLite stores the
    bytes it was given); anything else (PostgreSQL's JSONB text, meta elements in another order)
    falls back to comparing the parsed resources.
    """
    if cur.content is None or len(content) - len(cur.content) not in range(-8, 9):
        return False
    ours = b'"versionId":"1","lastUpdated":"' + instant(ts).encode() + b'"'
    theirs = b'"versionId":"' + str(cur.version).encode() + b'","lastUpdated":"' + instant(cur.ts).encode() + b'"'
    return content.replace(ours, theirs, 1) == cur.content


def _write_group(ctx: FhirContext, tx: WriteTx, units: Sequence[_Unit], known: Mapping[str, str]) -> _GroupResult:
    """Write prepared units in ``tx``: re-runnable (the store may ask for a retry)."""
    counts = WriteCounts()
    failures: list[tuple[_Unit, _Failed]] = []
    found: dict[str, str] = {}
    planned: list[_Item] = []
    for unit in units:
        if unit.deferred or any(i.conditional for i in unit.items):
            try:
                _resolve_unit(ctx, tx, unit, known, found)
            except _Failed as failed:
                failures.append((unit, failed))
                continue
        for item in unit.items:
            if item.matched:
                counts.matched += 1
            else:
                planned.append(item)
    current = tx.current_many([(i.type_, i.id_) for i in planned])
    now = time.time()
    writes: list[tuple[StoredResource, str, Any]] = []
    for item in planned:
        cur = current.get((item.type_, item.id_))
        live = cur is not None and not cur.deleted
        if item.delete:
            if cur is None or not live:
                counts.unchanged += 1
            else:
                writes.append(
                    (StoredResource(item.type_, item.id_, cur.version + 1, now, True, None, cur.rid), "DELETE", None)
                )
                counts.deleted += 1
            continue
        ts, content, index, resource = item.ts, item.content, item.index, item.resource
        if content is None:  # finished here: its references were resolved in this transaction
            assert resource is not None
            ts = now
            stamp(resource, item.id_, 1, ts)
            index = extract(resource, ctx.registry)
        if cur is not None:
            if live and content is not None and _same_bytes(content, ts, cur):
                counts.unchanged += 1
                continue
            resource = resource if resource is not None else jsonio.loads(content or b"")
            if live and cur.content is not None:
                stamp(resource, item.id_, cur.version, cur.ts)
                if jsonio.loads(cur.content) == resource:
                    counts.unchanged += 1
                    continue
            stamp(resource, item.id_, cur.version + 1, ts)
            content = None
        stored = StoredResource(
            item.type_,
            item.id_,
            cur.version + 1 if cur is not None else 1,
            ts,
            False,
            content if content is not None else jsonio.dumps(resource),
            cur.rid if cur is not None else 0,
        )
        writes.append((stored, "PUT", index))
        if live:
            counts.updated += 1
        else:
            counts.created += 1
        counts.by_type[item.type_] += 1
    tx.put_many(writes)
    return _GroupResult(counts, failures, found)


class _Writer:
    """Collects prepared units into groups and writes each group in one store transaction."""

    def __init__(self, ctx: FhirContext, report: LoadReport, bar: Any, batch_size: int):
        self.ctx = ctx
        self.report = report
        self.bar = bar
        self.batch_size = batch_size
        self.known: dict[str, str] = {}  # canonical criteria -> Type/id, committed
        self.group: list[_Unit] = []
        self.keys: set[tuple[str, str]] = set()
        self.size = 0

    def add(self, unit: _Unit) -> None:
        keys = {(i.type_, i.id_) for i in unit.items}
        if self.keys & keys:
            self.flush()  # a resource written twice goes into two store transactions, in order
        self.group.append(unit)
        self.keys |= keys
        self.size += len(unit.items)
        if self.size >= self.batch_size:
            self.flush()

    def flush(self) -> None:
        units, self.group, self.keys, self.size = self.group, [], set(), 0
        if units:
            self._write(units)

    def _write(self, units: list[_Unit]) -> None:
        try:
            result = crud.retrying(self.ctx, lambda tx: _write_group(self.ctx, tx, units, self.known))
        except Exception as exc:  # a store error fails the group: find the unit(s) it came from
            if len(units) > 1:
                for unit in units:
                    self._write([unit])
                return
            unit = units[0]
            log.debug("unit %s of %s failed", unit.where, unit.source, exc_info=True)
            self._fail(unit, _Failed(unit.where, f"the store refused it: {type(exc).__name__}: {exc}"))
            self.bar.update(len(unit.items))
            return
        self.report.add(result.counts)
        self.known.update(result.found)
        for unit, failed in result.failures:
            self._fail(unit, failed)
        self.bar.update(sum(len(u.items) for u in units))

    def _fail(self, unit: _Unit, failed: _Failed) -> None:
        if unit.where == "Bundle" and failed.where not in ("", "Bundle"):
            where, reason = "Bundle", f"{failed.where}: {failed.reason}; the transaction is not loaded"
        else:
            where, reason = unit.where, failed.reason
        self.report.failures.append(Failure(unit.source, where, reason))


def default_workers() -> int:
    """Worker processes preparing files while this one writes: one per core (at most 4), none on one core.

    The writer spends most of its time inside the database (SQLite's C code, or waiting for
    PostgreSQL), so the workers, about 60 % of the CPU of a load, get the cores.
    """
    cores = os.cpu_count() or 1
    return min(4, cores) if cores > 1 else 0


def load(
    ctx: FhirContext,
    paths: Iterable[str | Path],
    *,
    report: LoadReport | None = None,
    progress: bool = True,
    full_validation: bool = False,
    batch_size: int = 2000,
    workers: int | None = None,
) -> LoadReport:
    """Load the files under ``paths`` (see the module docstring); returns (and fills) ``report``.

    ``batch_size`` is about how many resources go into one store transaction (a transaction
    Bundle is never split); ``workers`` processes parse, validate and index ahead of the writer
    (default :func:`default_workers`; 0 does everything in this process). ``report`` may be
    passed in to keep what was done when the load is interrupted.
    """
    report = report if report is not None else LoadReport()
    started = time.perf_counter()
    files = discover(paths)
    surveyed = [(path, *_survey(path)) for path in files]
    ordered = [s for s in surveyed if s[1]] + [s for s in surveyed if not s[1]]
    _SETTINGS.update(lenient=ctx.lenient, models=full_validation, registry=ctx.registry)
    total = sum(s[2] for s in surveyed)
    with tqdm(total=total, unit="res", unit_scale=True, disable=not progress, dynamic_ncols=True) as bar:
        writer = _Writer(ctx, report, bar, batch_size)
        try:
            # into an empty store the value indexes are built once at the end (Store.bulk_session)
            with paused_gc(), ctx.store.bulk_session():  # pool workers fork with the collector paused
                tasks = _tasks(ordered, batch_size)
                for task, prepared in _run(tasks, default_workers() if workers is None else workers):
                    report.skipped += prepared.skipped
                    report.without_id += prepared.without_id
                    report.failures.extend(prepared.failures)
                    bar.update(len(prepared.failures))
                    for unit in prepared.units:
                        writer.add(unit)
                    if task.last:
                        report.files += 1
                        if task.reference_data:
                            writer.flush()  # committed before anything may refer to it
                    bar.set_postfix(failed=len(report.failures), refresh=False)
                writer.flush()
            if report.written:
                ctx.store.analyze()  # fresh planner statistics after a bulk write (PostgreSQL needs it)
        finally:
            report.seconds = time.perf_counter() - started
            _SETTINGS.clear()
    return report
