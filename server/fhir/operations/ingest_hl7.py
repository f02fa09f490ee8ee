"""Ingesting HL7 v2 feeds: ``python -m server ingest-hl7 FILE…`` and ``POST /hl7v2``.

Reads feeds (:func:`mappers.hl7v2.parse_messages`: CR, CRLF or LF segment ends, MLLP framing,
FHS/BHS batches), maps each message (:func:`mappers.hl7v2.map_message`: ADT^A01/A03/A04/A08/A40,
ORU^R01) and stores each message's resources atomically through :mod:`.ehr_store` (the
transaction rules, many messages per database commit, idempotent by control id). Every message
gets an outcome, and on request an original-mode acknowledgment (HL7 v2.5.1 chapter 2.9,
:func:`mappers.hl7v2.ack`): ``AA`` stored (or a duplicate of a stored message), ``AE``/``AR`` with an
ERR segment when it was quarantined by the mapper or refused by the store. A malformed message
never stops the others; each one that did not become FHIR is written to the quarantine table.

Speed: mapping, indexing and serialising run in ``workers`` forked processes, in chunks of
:data:`CHUNK` messages (a few queued per worker, so they go on while the writer commits), while
this process parses the feed and writes (one writer: the store's own rule on SQLite). The cyclic
garbage collector is paused meanwhile (:func:`server.workers.paused_gc`; the workers fork with it
paused). ``workers=0`` does it all here (the HTTP endpoint, small inputs). ``bench/ehr.py``
prints the CPU time per message of both sides.
"""

from __future__ import annotations

import multiprocessing
import os
import time
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import Future, ProcessPoolExecutor
from dataclasses import dataclass, field
from typing import IO, Any

from mappers.ehr_common import Problem, Quarantined
from mappers.hl7v2 import DEFAULT_TZ, RawMessage, ack, map_message, parse_messages
from server.fhir.context import FhirContext
from server.fhir.operations.ehr_store import (
    Outcome,
    RecordError,
    Unit,
    Writer,
    compress_units,
    logged_digests,
    message_digest,
    prepare_unit,
    quarantine_row,
)
from server.fhir.report import IngestReport
from server.search.registry import Registry, default_registry
from server.workers import orphan_guard, paused_gc

__all__ = ["CHUNK", "Hl7Report", "default_workers", "ingest_hl7"]

#: messages per task handed to a worker process
CHUNK = 50
#: tasks queued per worker: enough to keep the workers busy while the writer commits a batch
_AHEAD = 8
_DUPLICATE = "duplicate of a message already processed (same sender, control id and content): nothing changed"

#: what the workers need, set by :func:`ingest_hl7` before they are forked
_SETTINGS: dict[str, Any] = {}


@dataclass
class Hl7Report(IngestReport):
    """What an ingestion did; ``acks`` holds one acknowledgment per message when asked for."""

    messages: int = 0
    duplicates: int = 0
    acks: list[str] = field(default_factory=list)
    patients: set[str] = field(default_factory=set)  # Patient ids of the stored messages (the audit's entities)

    @property
    def rate(self) -> float:
        return self.messages / self.seconds if self.seconds else 0.0

    def summary(self, max_rows: int = 50) -> str:
        lines = [
            f"Ingested {self.messages:,} HL7 v2 message(s) from {self.files:,} source(s) in {self.seconds:.1f} s "
            f"({self.rate:,.0f} messages/s): {self.stored:,} stored, {self.duplicates:,} duplicate(s) "
            f"(nothing changed), {len(self.quarantined):,} quarantined",
            self.resources_line("messages"),
            *self.quarantine_lines(
                "source, message, control id, location",
                lambda q, where: (
                    f"{q['source']}  message {q['record']}  {q.get('control_id') or '-'}  {where}{q['reason']}"
                ),
                max_rows,
            ),
        ]
        return "\n".join(lines)


def default_workers() -> int:
    """Mapping processes beside the writer: one per core but one (at most 4), none on one core."""
    cores = os.cpu_count() or 1
    return min(4, cores - 1) if cores > 1 else 0


def _log_key(raw: RawMessage) -> str | None:
    msh = raw.msh
    if msh is None or not raw.control_id:
        return None
    return f"{msh.get(3)}|{msh.get(4)}|{raw.control_id}"


def _prepare(batch: list[tuple[int, RawMessage]], ts: float) -> list[tuple[int, Unit | Quarantined]]:
    """Map and prepare messages (in a worker process or inline)."""
    registry: Registry = _SETTINGS.get("registry") or default_registry()
    tz: str = _SETTINGS.get("default_tz", DEFAULT_TZ)
    authorities = _SETTINGS.get("authorities")
    validate = bool(_SETTINGS.get("validate", False))
    out: list[tuple[int, Unit | Quarantined]] = []
    for seq, raw in batch:
        result = map_message(raw, default_tz=tz, authorities=authorities)
        if isinstance(result, Quarantined):
            result.message = None  # the caller has it; not sent back between processes
            out.append((seq, result))
            continue
        try:
            items, guesses = prepare_unit(result.entries, registry, ts, validate=validate)
        except RecordError as exc:
            problem = exc.problem
        except Exception as exc:  # noqa: BLE001  # one message's surprise must not stop the feed: quarantined
            problem = Problem("", f"preparing failed: {type(exc).__name__}: {exc}", "error", "207")
        else:
            unit = Unit(
                "hl7v2",
                raw.source,
                raw.index,
                items,
                guesses,
                ts,
                raw.control_id,
                raw.message_type,
                _log_key(raw),
                message_digest(raw.text),
                raw.text,
                result.warnings,
            )
            out.append((seq, unit))
            continue
        out.append((seq, Quarantined(raw.source, raw.index, problem, raw.text, raw.control_id, raw.message_type)))
    compress_units(result for _, result in out if isinstance(result, Unit))
    return out


def _run(
    chunks: Iterator[list[tuple[int, RawMessage]]], workers: int
) -> Iterator[list[tuple[int, Unit | Quarantined]]]:
    """Each chunk prepared, in order; ``workers`` processes prepare ahead of the writer (0: inline)."""
    if workers <= 0:
        for chunk in chunks:
            yield _prepare(chunk, time.time())
        return
    methods = multiprocessing.get_all_start_methods()
    context = multiprocessing.get_context("fork" if "fork" in methods else None)
    pool = ProcessPoolExecutor(
        max_workers=workers, mp_context=context, initializer=orphan_guard, initargs=(os.getpid(),)
    )
    pending: deque[Future[list[tuple[int, Unit | Quarantined]]]] = deque()
    try:
        for chunk in chunks:
            pending.append(pool.submit(_prepare, chunk, time.time()))
            if len(pending) > _AHEAD * workers:  # bounded look-ahead: memory stays flat on long feeds
                yield pending.popleft().result()
        while pending:
            yield pending.popleft().result()
    finally:
        pool.shutdown(wait=True, cancel_futures=True)


def ingest_hl7(
    ctx: FhirContext,
    inputs: Iterable[tuple[str, bytes | str | IO[bytes]]],
    *,
    workers: int = 0,
    batch_size: int = 2000,
    acks: bool = False,
    progress: Callable[[int], None] | None = None,
    default_tz: str = DEFAULT_TZ,
    authorities: dict[str, str] | None = None,
    validate: bool = False,
    report: Hl7Report | None = None,
) -> Hl7Report:
    """Store every message of the ``(source name, data)`` inputs; returns (and fills) the report.

    ``batch_size`` is about how many resources go into one database transaction; ``progress`` is
    called with the number of messages done since its last call; ``acks`` collects one ACK per
    message, in input order.
    """
    report = report if report is not None else Hl7Report()
    started = time.perf_counter()
    raws: dict[int, RawMessage] = {}
    answers: dict[int, str] = {}
    writer = Writer(ctx, batch_size)

    def finish(seq: int, code: str, problem: Problem | None) -> None:
        raw = raws.pop(seq)
        if acks:
            answers[seq] = ack(raw, code, problem)
        if progress is not None:
            progress(1)

    def settle(done: list[tuple[Unit, Outcome]]) -> None:
        for unit, outcome in done:
            seq = seqs.pop(id(unit))
            if outcome.status == "stored":
                report.stored += 1
                report.warnings += len(unit.warnings)
                report.patients.update(outcome.patients)
                finish(seq, "AA", None)
            elif outcome.status == "duplicate":
                report.duplicates += 1
                finish(seq, "AA", Problem("", _DUPLICATE, "information", "205"))
            else:
                problem = outcome.problem or Problem("", "not stored")
                report.quarantined.append(
                    {
                        "source": unit.source,
                        "record": unit.record,
                        "control_id": unit.control_id,
                        "message_type": unit.message_type,
                        "location": problem.location,
                        "reason": problem.reason,
                    }
                )
                finish(seq, "AE", problem)

    seqs: dict[int, int] = {}

    def chunks() -> Iterator[list[tuple[int, RawMessage]]]:
        seq = 0
        chunk: list[tuple[int, RawMessage]] = []
        for name, data in inputs:
            report.files += 1
            for raw in parse_messages(data, name):
                raws[seq] = raw
                chunk.append((seq, raw))
                seq += 1
                if len(chunk) >= CHUNK:
                    yield known_duplicates(chunk)
                    chunk = []
        if chunk:
            yield known_duplicates(chunk)

    def known_duplicates(chunk: list[tuple[int, RawMessage]]) -> list[tuple[int, RawMessage]]:
        """The chunk without the messages the log already holds (settled as duplicates, not mapped)."""
        keys = {seq: (key, message_digest(raw.text)) for seq, raw in chunk if (key := _log_key(raw)) is not None}
        logged = logged_digests(ctx, [k for k, _ in keys.values()])
        kept = []
        for seq, raw in chunk:
            if seq in keys and logged.get(keys[seq][0]) == keys[seq][1]:
                report.messages += 1
                report.duplicates += 1
                finish(seq, "AA", Problem("", _DUPLICATE, "information", "205"))
            else:
                kept.append((seq, raw))
        return kept

    _SETTINGS.update(registry=ctx.registry, default_tz=default_tz, authorities=authorities, validate=validate)
    try:
        with paused_gc(), ctx.store.bulk_session():  # workers fork with the collector paused; see bulk_session
            for prepared in _run(chunks(), workers):
                for seq, result in prepared:
                    report.messages += 1
                    if isinstance(result, Quarantined):
                        writer.quarantine(quarantine_row("hl7v2", result))
                        report.quarantined.append(result.report())
                        finish(seq, result.ack_code, result.problem)
                    else:
                        seqs[id(result)] = seq
                        settle(writer.add(result))
            settle(writer.flush())
    finally:
        _SETTINGS.clear()
        report.counts.add(writer.counts)
        report.seconds = time.perf_counter() - started
    report.acks.extend(answers[k] for k in sorted(answers))
    return report
