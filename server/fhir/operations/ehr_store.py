"""Storing EHR records (HL7 v2 messages, CSV rows): one transaction per record, many per database commit.

Owns the write path of :mod:`.ingest_hl7` and :mod:`.ingest_csv`, the EHR message log (table
``ehr_message``) and the quarantine table (``ehr_quarantine``, read by :mod:`.quarantine`).

Each record mapped by :mod:`mappers.hl7v2` or :mod:`mappers.csv_ehr` is the entry list of one
``transaction`` Bundle (http://hl7.org/fhir/R4/http.html#transaction). Posting each Bundle to
:func:`server.fhir.transaction.process` would give the right answer at a few hundred records a
second; this module gives the same answer in bulk, keeping the transaction rules
(http://hl7.org/fhir/R4/http.html#trules) the mappers rely on:

- **Atomic per record.** A record's entries are written together or not at all: a record whose
  conditional reference matches no resource, or several, fails alone (the others of its batch are
  written) and is quarantined with the entry and the reason.
- **Entries.** ``PUT Type/id`` (update or create with that id), ``PUT Type?criteria`` (conditional
  update: the one match, else a create), ``POST Type`` with ``ifNoneExist`` (conditional create:
  the one match is used and nothing is written, else a create), ``POST Type`` (a create with the id
  of its ``urn:uuid`` fullUrl). Several matches fail the record (as a 412 would). Other entries
  (DELETE, PATCH, GET) fail it too: the mappers never write them.
- **References.** References to an entry's fullUrl become ``Type/id``; conditional references
  (``Patient?identifier=system|value``) are resolved after the record's own creates, so they find a
  Patient the same record (or an earlier record) creates; exactly one match is required. The
  rewriting is :func:`server.fhir.transaction.rewrite_references`'s, but it looks only where the
  mappers put references (``subject``, ``result[]``, ``participant[].individual`` …) and lets the
  serialised JSON prove nothing else needed it (as many ``"reference":`` keys, no string equal to
  a ``urn:`` fullUrl); a resource that fails the proof is walked element by element.
- **Ids.** Resources created by a conditional entry get the id ``uuid5(type?criteria)``, so the
  same patient arriving first in an ORU or first in an ADT gets one id either way, and a record's
  conditional references can be written, indexed and serialised *before* the database is asked
  (in worker processes) on the guess that the target is, or will be, that id. The writer checks
  every guess in its transaction and rewrites the few that were wrong (a Patient created through
  the REST API has another id): the id string is replaced in the JSON and in the index rows.
- **Idempotent.** A resource whose content did not change gets no new version. HL7 v2 messages are
  also logged by sender (MSH-3, MSH-4) and control id (MSH-10) with the SHA-256 of their text: the
  same message again is recognised before anything is resolved and changes nothing (it is
  acknowledged ``AA`` as a duplicate). The same control id with other content is a new message.
- **In order.** Records are applied in the order given; a record that writes a resource an
  earlier record of the same batch writes goes into the next database transaction.
- **Nothing lost.** Every record that does not become FHIR (quarantined by the mapper, or refused
  here) is written to ``ehr_quarantine`` with its source, record number, control id, location,
  reason and raw text, in the same database transaction as the records of its batch.

Conditional matches found in the database are remembered for the run (a resource created by
someone else meanwhile is not seen by later records of the same run, as in the bulk loader).
The mapper's output is not validated against the models on this path (``validate=True`` turns
the R4 StructureDefinition check on): the mappers' tests validate what they produce.
"""

from __future__ import annotations

import functools
import hashlib
import logging
import re
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field, fields
from typing import Any
from urllib.parse import parse_qsl, urlencode

from mappers.ehr_common import Problem, Quarantined, fhir_id, identifier_query
from server import jsonio
from server.errors import FhirError
from server.fhir import crud
from server.fhir.context import FhirContext
from server.fhir.report import WriteCounts
from server.fhir.resource import instant, stamp
from server.fhir.transaction import LOCAL_URN_PREFIXES, conditional_reference, criteria_of, rewrite_references
from server.fhir.validation import validate_resource
from server.search.extract import IndexRows, extract
from server.search.registry import Registry
from server.store.base import StoredResource, WriteTx
from server.store.content import compress_many

__all__ = [
    "Outcome",
    "QuarantineRow",
    "RecordError",
    "Unit",
    "Writer",
    "canonical",
    "compress_units",
    "logged_digests",
    "message_digest",
    "prepare_unit",
    "quarantine_row",
]

log = logging.getLogger(__name__)

#: a JSON string that starts like a local fullUrl (``urn:uuid:``, ``urn:oid:``)
_URN_STRING = re.compile(rb'"urn:(?:uuid|oid):')
_ABSENT = object()
_INDEX_TABLES = tuple(f.name for f in fields(IndexRows))
#: identifier criteria looked up with one OR search per this many values
_LOOKUP_CHUNK = 200
_ID_NAMESPACE = "ehr-conditional-target"


class RecordError(Exception):
    """One record cannot be stored: where (``Bundle.entry[2]``) and why."""

    def __init__(self, where: str, reason: str, code: str = "207") -> None:
        super().__init__(f"{where}: {reason}" if where else reason)
        self.problem = Problem(where, reason, "error", code)


@functools.lru_cache(maxsize=16384)  # the same patients' criteria come again and again
def canonical(type_: str, criteria: str) -> str:
    """``Type?k=v&…`` with the parameters decoded and sorted: one key per search, however it was spelt."""
    pairs = sorted(parse_qsl(criteria.lstrip("?"), keep_blank_values=True))
    return type_ + "?" + "&".join(f"{k}={v}" for k, v in pairs)


@functools.lru_cache(maxsize=16384)
def _guess(key: str) -> str:
    """The id of a resource created by a conditional entry with canonical criteria ``key``."""
    return fhir_id(_ID_NAMESPACE, key)


@functools.lru_cache(maxsize=16384)
def _conditional_target(ref: str) -> tuple[str, str, str] | None:
    """(type, canonical criteria, guessed id) of a conditional reference ``Type?criteria``, else None."""
    cond = conditional_reference(ref)
    if cond is None:
        return None
    key = canonical(*cond)
    return cond[0], key, _guess(key)


def message_digest(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8", errors="surrogatepass")).hexdigest()


@dataclass(slots=True)
class Item:
    """One resource of a record, stamped (version 1), indexed and serialised under its guessed id."""

    where: str
    type_: str
    id_: str
    mode: str  # "put" (fixed id), "create" (conditional create), "update" (conditional update)
    key: str | None  # canonical criteria of a conditional entry
    content: bytes
    index: IndexRows
    keys: tuple[str, ...] = ()  # canonical identifier criteria the resource answers (created ones)
    #: ``content`` as the history table keeps it (compressed in the worker, :func:`compress_units`:
    #: the writer is the busier half); used when the resource is written as prepared (no id
    #: swapped, no new version); None: the store compresses it
    stored: bytes | None = None

    def __reduce__(self) -> tuple[Any, ...]:
        # plain tuples between processes: a slots dataclass's own pickling runs Python per field
        rows = tuple(getattr(self.index, name) for name in _INDEX_TABLES)
        return _item, (
            self.where,
            self.type_,
            self.id_,
            self.mode,
            self.key,
            self.content,
            rows,
            self.keys,
            self.stored,
        )


def _item(
    where: str,
    type_: str,
    id_: str,
    mode: str,
    key: str | None,
    content: bytes,
    rows: Any,
    keys: tuple[str, ...],
    stored: bytes | None,
) -> Item:
    index = IndexRows(**dict(zip(_INDEX_TABLES, rows, strict=True)))
    return Item(where, type_, id_, mode, key, content, index, keys, stored)


@dataclass(slots=True)
class Unit:
    """One record to store atomically (an HL7 v2 message, a CSV row), prepared for the writer."""

    kind: str  # hl7v2 | csv
    source: str
    record: int
    items: list[Item]
    #: guessed id -> (type, canonical criteria) of every conditional target and reference
    guesses: dict[str, tuple[str, str]]
    ts: float
    control_id: str | None = None
    message_type: str | None = None
    log_key: str | None = None  # message log key (HL7 v2), None: not logged (CSV)
    digest: str | None = None
    raw: str = ""
    warnings: list[Problem] = field(default_factory=list)

    def __reduce__(self) -> tuple[Any, ...]:
        return Unit, tuple(getattr(self, name) for name in self.__slots__)


@dataclass(slots=True)
class QuarantineRow:
    """A row of ``ehr_quarantine`` to write."""

    kind: str
    source: str
    record: int
    location: str
    reason: str
    code: str
    raw: str
    control_id: str | None = None
    message_type: str | None = None


def quarantine_row(kind: str, q: Quarantined) -> QuarantineRow:
    return QuarantineRow(
        kind, q.source, q.record, q.location, q.reason, q.problem.code, q.raw, q.control_id, q.message_type
    )


@dataclass
class Outcome:
    """What became of one unit: ``stored``, ``duplicate`` (logged message seen again) or ``failed``."""

    status: str
    counts: WriteCounts = field(default_factory=WriteCounts)
    problem: Problem | None = None
    patients: list[str] = field(default_factory=list)  # ids of the Patients the record is about (audit)


# -- preparing (pure but for the registry; runs in worker processes) -----------------------


def prepare_unit(
    entries: Sequence[dict[str, Any]], registry: Registry, ts: float, *, validate: bool = False
) -> tuple[list[Item], dict[str, tuple[str, str]]]:
    """Ids, references, stamp, index rows and JSON of a record's entries; raises :class:`RecordError`.

    The resources in ``entries`` are changed in place (references rewritten, id and meta stamped).
    """
    guesses: dict[str, tuple[str, str]] = {}
    full_urls: dict[str, str] = {}
    planned: list[tuple[int, dict[str, Any], str, str, str | None]] = []
    for i, entry in enumerate(entries):
        where = f"Bundle.entry[{i}]"
        request = entry.get("request") or {}
        resource = entry.get("resource")
        method = str(request.get("method", "")).upper()
        url = str(request.get("url", ""))
        if not isinstance(resource, dict) or not isinstance(resource.get("resourceType"), str):
            raise RecordError(where, "the entry holds no resource")
        type_ = resource["resourceType"]
        path, _, query = url.partition("?")
        key: str | None = None
        if method == "PUT" and not query:
            parts = path.split("/")
            if len(parts) != 2 or parts[0] != type_:
                raise RecordError(where, f"PUT url '{url}' is not '{type_}/id'")
            id_, mode = parts[1], "put"
        elif method == "PUT":
            key, mode = canonical(type_, query), "update"
            id_ = _guess(key)
        elif method == "POST" and request.get("ifNoneExist"):
            key, mode = canonical(type_, criteria_of(str(request["ifNoneExist"]), type_)), "create"
            id_ = _guess(key)
        elif method == "POST":
            full_url = str(entry.get("fullUrl") or "")
            if not full_url.startswith("urn:uuid:"):
                raise RecordError(where, "a POST entry without ifNoneExist needs a urn:uuid fullUrl (its id)")
            id_, mode = full_url[len("urn:uuid:") :], "put"
        else:
            raise RecordError(where, f"{method or 'no'} method: the EHR ingest writes PUT and POST entries only")
        if key is not None:
            guesses[id_] = (type_, key)
        if entry.get("fullUrl"):
            full_urls[str(entry["fullUrl"])] = f"{type_}/{id_}"
        planned.append((i, resource, id_, mode, key))

    def on_reference(ref: str) -> str:
        mapped = full_urls.get(ref)
        if mapped is not None:
            return mapped
        if ref.startswith(LOCAL_URN_PREFIXES):
            raise RecordError("", f"the reference '{ref}' is not the fullUrl of any entry of the record")
        target = _conditional_target(ref) if "?" in ref else None
        if target is None:
            return ref
        type_, key, guessed = target
        guesses.setdefault(guessed, (type_, key))
        return f"{type_}/{guessed}"

    urn_map = {k: v for k, v in full_urls.items() if k.startswith(LOCAL_URN_PREFIXES)}
    try:
        urn_json: list[bytes] | None = [jsonio.dumps(k) for k in urn_map]
    except TypeError:  # a fullUrl JSON cannot hold: the walk handles it
        urn_json = None
    last_updated = instant(ts)
    items: list[Item] = []
    for i, resource, id_, mode, key in planned:
        where = f"Bundle.entry[{i}]"
        content: bytes | None = None
        try:
            if not validate and urn_json is not None:
                content = _rewrite_and_stamp(resource, id_, last_updated, urn_json, on_reference)
            if content is None:
                rewrite_references(resource, urn_map, on_reference, copy=False)
        except RecordError as exc:
            raise RecordError(where, exc.problem.reason) from exc
        if validate:
            errors = [x for x in validate_resource(resource, models=False) if x.severity in ("error", "fatal")]
            if errors:
                shown = "; ".join(f"{', '.join(x.expression) or 'resource'}: {x.diagnostics}" for x in errors[:3])
                raise RecordError(where, f"invalid {resource['resourceType']}: {shown}")
        keys: tuple[str, ...] = ()
        if mode != "put":
            keys = tuple(
                canonical(resource["resourceType"], identifier_query(ident.get("system"), ident["value"]))
                for ident in resource.get("identifier") or ()
                if isinstance(ident, dict) and isinstance(ident.get("value"), str)
            )
        if content is None:
            _stamp(resource, id_, last_updated)
            content = jsonio.dumps(resource)
        index = extract(resource, registry)
        items.append(Item(where, resource["resourceType"], id_, mode, key, content, index, keys))
    return items, guesses


def compress_units(units: Iterable[Unit]) -> None:
    """Fill in the stored (compressed) content of every item of ``units``, in one loop
    (:func:`server.store.content.compress_many`; a worker does it for its whole chunk)."""
    items = [item for unit in units for item in unit.items]
    for item, stored in zip(items, compress_many(item.content for item in items), strict=True):
        item.stored = stored


def _stamp(resource: dict[str, Any], id_: str, last_updated: str) -> None:
    """:func:`server.fhir.resource.stamp` as version 1, with ``lastUpdated`` formatted once per record."""
    resource["id"] = id_
    meta = resource.get("meta")
    meta = dict(meta) if isinstance(meta, dict) else {}
    meta["versionId"] = "1"
    meta["lastUpdated"] = last_updated
    resource["meta"] = meta


def _reference_sites(resource: dict[str, Any]) -> list[dict[str, Any]]:
    """The elements holding a ``reference`` string where mappers put them: a guess, checked by the caller.

    Elements of the resource (``subject``, ``specimen``, ``result[]``) and elements of their items
    (``participant[].individual``, ``link[].other``); deeper ones are not looked for.
    """
    sites = []
    for value in resource.values():
        if type(value) is dict:
            if type(value.get("reference")) is str:
                sites.append(value)
        elif type(value) is list:
            for item in value:
                if type(item) is not dict:
                    continue
                if type(item.get("reference")) is str:
                    sites.append(item)
                    continue
                for inner in item.values():
                    if type(inner) is dict and type(inner.get("reference")) is str:
                        sites.append(inner)
    return sites


def _rewrite_and_stamp(
    resource: dict[str, Any],
    id_: str,
    last_updated: str,
    urn_json: Sequence[bytes],
    on_reference: Callable[[str], str],
) -> bytes | None:
    """The JSON of ``resource`` with references rewritten and stamped, without walking every element.

    Only the :func:`_reference_sites` go through ``on_reference``; the serialised result then
    proves that nothing else needed :func:`rewrite_references`: it holds exactly as many
    ``"reference":`` keys (compact JSON has that text only there) and no string equal to a local
    fullUrl (``urn_json``). Otherwise the resource is put back as it was and None is returned
    (the caller walks it), also when a reference is refused (the walk reports the first one).
    """
    sites = _reference_sites(resource)
    olds = [site["reference"] for site in sites]
    done = 0
    restore_id, restore_meta = resource.get("id", _ABSENT), resource.get("meta", _ABSENT)
    try:
        for site in sites:
            site["reference"] = on_reference(site["reference"])
            done += 1
        _stamp(resource, id_, last_updated)
        content = jsonio.dumps(resource)
        if content.count(b'"reference":') == len(sites) and not (
            _URN_STRING.search(content) and any(k in content for k in urn_json)
        ):
            return content
    except RecordError:
        pass
    for site, old in reversed(list(zip(sites[:done], olds[:done], strict=True))):
        site["reference"] = old
    for name, was in (("id", restore_id), ("meta", restore_meta)):
        if was is _ABSENT:
            resource.pop(name, None)
        else:
            resource[name] = was
    return None


# -- writing -------------------------------------------------------------------------------


def _swap_rows(index: IndexRows, swaps: Mapping[str, str]) -> IndexRows:
    """``index`` with every guessed id replaced by the real one (in reference rows and urls)."""

    def fix(value: Any) -> Any:
        if isinstance(value, str):
            for old, new in swaps.items():
                if old in value:
                    value = value.replace(old, new)
        return value

    out = IndexRows()
    for name in ("token", "string", "reference", "date", "number", "quantity", "uri"):
        rows = getattr(index, name)
        setattr(out, name, [tuple(fix(v) for v in row) for row in rows] if name in ("reference", "token") else rows)
    return out


def _swap_content(content: bytes, swaps: Mapping[str, str]) -> bytes:
    for old, new in swaps.items():
        content = content.replace(old.encode(), new.encode())
    return content


def _same(content: bytes, ts: float, cur: StoredResource) -> bool:
    """``content`` (stamped version 1 at ``ts``) equals the current version but for meta."""
    if cur.content is None:
        return False
    ours = b'"versionId":"1","lastUpdated":"' + instant(ts).encode() + b'"'
    theirs = b'"versionId":"' + str(cur.version).encode() + b'","lastUpdated":"' + instant(cur.ts).encode() + b'"'
    if content.replace(ours, theirs, 1) == cur.content:
        return True
    mine, stored = jsonio.loads(content), jsonio.loads(cur.content)
    mine.pop("meta", None)
    stored.pop("meta", None)
    return bool(mine == stored)


def _lock_key(key: str) -> str:
    """The lock :mod:`server.fhir.crud` takes for conditional criteria (``?Type?k=v…``)."""
    return "?" + key


def _lookup(ctx: FhirContext, tx: WriteTx, keys: Iterable[str]) -> dict[str, list[str]]:
    """Ids of the current resources matching each canonical criteria (at most 2 each)."""
    found: dict[str, list[str]] = {}
    by_type: dict[str, list[str]] = {}
    single: list[str] = []
    for key in sorted(keys):
        tx.lock(_lock_key(key))
        type_, _, criteria = key.partition("?")
        if criteria.partition("=")[0] == "identifier" and "&" not in criteria:
            by_type.setdefault(type_, []).append(key)
        else:
            single.append(key)
    for type_, wanted in by_type.items():
        for start in range(0, len(wanted), _LOOKUP_CHUNK):
            chunk = wanted[start : start + _LOOKUP_CHUNK]
            values = ",".join(k.partition("?")[2].partition("=")[2] for k in chunk)
            try:
                ids = crud.find_matches(ctx, tx, type_, urlencode([("identifier", values)]), limit=4 * len(chunk) + 4)
            except FhirError:
                single.extend(chunk)
                continue
            if not ids:
                continue
            explained: set[str] = set()
            asked = set(chunk)
            for (t, id_), res in tx.current_many([(type_, i) for i in ids]).items():
                if res.deleted or res.content is None:
                    continue
                for ident in jsonio.loads(res.content).get("identifier") or ():
                    if isinstance(ident, dict) and isinstance(ident.get("value"), str):
                        key = canonical(t, identifier_query(ident.get("system"), ident["value"]))
                        if key in asked and id_ not in found.setdefault(key, []):
                            found[key].append(id_)
                            explained.add(id_)
            if len(explained) < len(set(ids)):  # matched by search rules the keys do not capture
                single.extend(k for k in chunk if k not in found)
    for key in single:
        type_, _, criteria = key.partition("?")
        try:
            found[key] = crud.find_matches(ctx, tx, type_, urlencode(parse_qsl(criteria, keep_blank_values=True)))
        except FhirError as err:
            found[key] = []
            log.debug("criteria %s: %s", key, err.message)
    return found


@dataclass
class _Planned:
    unit: Unit
    writes: list[tuple[Item, str, bytes, IndexRows]]  # item, real id, content, index
    created_keys: dict[str, str]
    outcome: Outcome


class Writer:
    """Collects prepared units (in order) and writes them, many per database transaction.

    ``add`` queues a unit (and writes the queue when it holds ``batch_size`` resources),
    ``quarantine`` queues a quarantine row, ``flush`` writes what is queued. Both return the
    outcome of every unit written, in order.
    """

    def __init__(self, ctx: FhirContext, batch_size: int = 2000) -> None:
        self.ctx = ctx
        self.batch_size = batch_size
        self.known: dict[str, str] = {}  # canonical criteria -> id, committed
        self.units: list[Unit] = []
        self.rows: list[QuarantineRow] = []
        self.size = 0
        self.counts = WriteCounts()
        self.quarantined = 0  # rows written to ehr_quarantine

    def add(self, unit: Unit) -> list[tuple[Unit, Outcome]]:
        self.units.append(unit)
        self.size += len(unit.items)
        return self.flush() if self.size >= self.batch_size else []

    def quarantine(self, row: QuarantineRow) -> None:
        self.rows.append(row)

    def flush(self) -> list[tuple[Unit, Outcome]]:
        units, rows = self.units, self.rows
        self.units, self.rows, self.size = [], [], 0
        if not units and not rows:
            return []
        return self._write(units, rows)

    def _write(self, units: list[Unit], rows: list[QuarantineRow]) -> list[tuple[Unit, Outcome]]:
        done: list[tuple[Unit, Outcome]] = []
        while True:
            try:
                consumed, outcomes, learnt = crud.retrying(
                    self.ctx, functools.partial(self._group, units=units, rows=rows)
                )
            except Exception as exc:  # a store error fails the group: find the unit(s) it came from
                if len(units) > 1:
                    half = len(units) // 2
                    return done + self._write(units[:half], rows) + self._write(units[half:], [])
                log.warning("EHR record refused by the store", exc_info=True)
                problem = Problem("", f"the store refused it: {type(exc).__name__}: {exc}", "error", "207")
                failed = [*rows, *(quarantine_row_for(u, problem) for u in units)]
                crud.retrying(self.ctx, functools.partial(_insert_quarantine, rows=failed))
                consumed, outcomes, learnt = len(units), [Outcome("failed", problem=problem) for _ in units], {}
            self.known.update(learnt)
            self.quarantined += len(rows)
            for unit, outcome in zip(units[:consumed], outcomes, strict=True):
                self.counts.add(outcome.counts)
                if outcome.status == "failed":
                    self.quarantined += 1
                done.append((unit, outcome))
            units, rows = units[consumed:], []
            if not units:
                return done

    def _group(
        self, tx: WriteTx, units: Sequence[Unit], rows: Sequence[QuarantineRow]
    ) -> tuple[int, list[Outcome], dict[str, str]]:
        """Write as many of ``units`` as fit one transaction, in order; re-runnable (retries)."""
        now = time.time()
        logged = _logged(tx, [u.log_key for u in units if u.log_key])
        found = _lookup(self.ctx, tx, {k for u in units for _, k in u.guesses.values() if k not in self.known})
        batch: dict[str, str] = {}  # criteria -> id of resources created in this group
        written: set[tuple[str, str]] = set()
        seen_logs: dict[str, str] = {}
        outcomes: list[Outcome] = []
        plans: list[_Planned] = []
        failed_rows: list[QuarantineRow] = []

        def resolve(key: str) -> list[str]:
            if key in batch:
                return [batch[key]]
            if key in self.known:
                return [self.known[key]]
            return found.get(key, [])

        for unit in units:
            if unit.log_key and (seen_logs.get(unit.log_key) or logged.get(unit.log_key)) == unit.digest:
                outcomes.append(Outcome("duplicate"))
                continue
            try:
                plan = self._plan(unit, resolve)
            except RecordError as exc:
                outcomes.append(Outcome("failed", problem=exc.problem))
                failed_rows.append(quarantine_row_for(unit, exc.problem))
                continue
            keys = {(item.type_, real) for item, real, _, _ in plan.writes}
            if keys & written:
                break  # an earlier unit of this group writes the same resource: the next transaction
            written |= keys
            batch.update(plan.created_keys)
            if unit.log_key:
                seen_logs[unit.log_key] = unit.digest or ""
            plans.append(plan)
            outcomes.append(plan.outcome)
        current = tx.current_many([(item.type_, real) for p in plans for item, real, _, _ in p.writes])
        puts: list[tuple[StoredResource, str, Any]] = []
        compressed: list[bytes | None] = []
        for plan in plans:
            counts = plan.outcome.counts
            for item, real, prepared, index in plan.writes:
                content = prepared
                cur = current.get((item.type_, real))
                live = cur is not None and not cur.deleted
                ts = plan.unit.ts
                if cur is not None:
                    if live and _same(content, ts, cur):
                        counts.unchanged += 1
                        continue
                    resource = jsonio.loads(content)
                    stamp(resource, real, cur.version + 1, now)
                    content, ts = jsonio.dumps(resource), now
                stored = StoredResource(
                    item.type_, real, cur.version + 1 if cur else 1, ts, False, content, cur.rid if cur else 0
                )
                puts.append((stored, "POST" if item.mode == "create" else "PUT", index))
                compressed.append(item.stored if content is item.content else None)
                if live:
                    counts.updated += 1
                else:
                    counts.created += 1
        tx.put_many(puts, compressed)
        tx.execute_many(
            "INSERT INTO ehr_message (msg_key, digest, ts) VALUES (?, ?, ?) "
            "ON CONFLICT (msg_key) DO UPDATE SET digest = excluded.digest, ts = excluded.ts",
            [(p.unit.log_key, p.unit.digest, now) for p in plans if p.unit.log_key and p.unit.digest],
        )
        _insert_quarantine(tx, [*rows, *failed_rows])
        learnt = {k: v[0] for k, v in found.items() if len(v) == 1}
        learnt.update(batch)
        return len(outcomes), outcomes, learnt

    @staticmethod
    def _plan(unit: Unit, resolve: Callable[[str], list[str]]) -> _Planned:
        """Real ids of a unit's conditional targets and references; raises :class:`RecordError`."""
        swaps: dict[str, str] = {}
        created: dict[str, str] = {}
        matched: set[int] = set()
        targets = {item.id_ for item in unit.items if item.mode != "put"}
        for n, item in enumerate(unit.items):
            if item.mode == "put":
                continue
            assert item.key is not None
            hits = created.get(item.key)
            found = [hits] if hits else resolve(item.key)
            if len(found) > 1:
                raise RecordError(item.where, f"the criteria '{item.key}' match more than one {item.type_}", "205")
            if found:
                if found[0] != item.id_:
                    swaps[item.id_] = found[0]
                if item.mode == "create":
                    matched.add(n)
            else:
                for key in (item.key, *item.keys):
                    created.setdefault(key, item.id_)
        for guessed, (type_, key) in unit.guesses.items():
            if guessed in targets:
                continue
            hits_ = [created[key]] if key in created else resolve(key)
            if len(hits_) != 1:
                how = "matches no" if not hits_ else "matches more than one"
                where = next((i.where for i in unit.items if guessed.encode() in i.content), "")
                raise RecordError(where, f"the conditional reference '{key}' {how} {type_}; it must match exactly one")
            if hits_[0] != guessed:
                swaps[guessed] = hits_[0]
        writes: list[tuple[Item, str, bytes, IndexRows]] = []
        seen: dict[tuple[str, str], str] = {}
        for n, item in enumerate(unit.items):
            if n in matched:
                continue
            real = swaps.get(item.id_, item.id_)
            other = seen.setdefault((item.type_, real), item.where)
            if other != item.where:
                raise RecordError(
                    item.where, f"{other} changes {item.type_}/{real} too: a record may change a resource only once"
                )
            if swaps:
                writes.append((item, real, _swap_content(item.content, swaps), _swap_rows(item.index, swaps)))
            else:
                writes.append((item, real, item.content, item.index))
        patients = {swaps.get(i.id_, i.id_) for i in unit.items if i.type_ == "Patient"}
        patients.update(swaps.get(g, g) for g, (type_, _) in unit.guesses.items() if type_ == "Patient")
        outcome = Outcome("stored", WriteCounts(matched=len(matched)), patients=sorted(patients))
        return _Planned(unit, writes, created, outcome)


def quarantine_row_for(unit: Unit, problem: Problem) -> QuarantineRow:
    """The quarantine row of a prepared unit the store did not take."""
    return QuarantineRow(
        unit.kind,
        unit.source,
        unit.record,
        problem.location,
        problem.reason,
        problem.code,
        unit.raw,
        unit.control_id,
        unit.message_type,
    )


def _logged(tx: WriteTx | FhirContext, keys: Sequence[str]) -> dict[str, str]:
    out: dict[str, str] = {}
    query = tx.store.query if isinstance(tx, FhirContext) else tx.query
    for start in range(0, len(keys), 500):
        chunk = list(dict.fromkeys(keys[start : start + 500]))
        marks = ", ".join("?" for _ in chunk)
        out.update(
            (str(k), str(d))
            for k, d in query(f"SELECT msg_key, digest FROM ehr_message WHERE msg_key IN ({marks})", chunk)
        )
    return out


def logged_digests(ctx: FhirContext, keys: Sequence[str]) -> dict[str, str]:
    """Message log key -> digest of the committed messages among ``keys`` (read outside any transaction)."""
    return _logged(ctx, keys) if keys else {}


def _insert_quarantine(tx: WriteTx, rows: Sequence[QuarantineRow]) -> None:
    now = time.time()
    tx.execute_many(
        "INSERT INTO ehr_quarantine (ts, kind, source, record, control_id, message_type, location, reason, code, raw) "
        "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
        [
            (now, r.kind, r.source, r.record, r.control_id, r.message_type, r.location, r.reason, r.code, r.raw)
            for r in rows
        ],
    )
