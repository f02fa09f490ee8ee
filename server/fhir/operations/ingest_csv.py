"""Ingesting CSV EHR extracts: ``python -m server ingest-csv --kind K [--mapping CONFIG] FILE…``.

Maps each row with :func:`mappers.csv_ehr.map_csv` (the documented layouts of docs/ehr-mapping.md:
patients, encounters, diagnoses, lab results, medications, phenotypes; a hospital's JSON mapping
config renames columns, sets delimiter, encoding, date formats and value maps) and stores each
row's resources atomically through :mod:`.ehr_store` (the transaction rules, many rows per
database commit; ids are deterministic, so loading a file again changes nothing). Every row that
does not become FHIR, quarantined by the mapper or refused by the store, is reported with its file,
line, column and reason and written to the quarantine table (``GET /fhir/$quarantine``).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from mappers.csv_ehr import KINDS, Mapped, Quarantined, load_config, map_csv
from mappers.ehr_common import Problem
from server.fhir.context import FhirContext
from server.fhir.operations.ehr_store import (
    Outcome,
    RecordError,
    Unit,
    Writer,
    prepare_unit,
    quarantine_row,
)
from server.fhir.report import IngestReport
from server.workers import paused_gc

__all__ = ["ALIASES", "CsvReport", "ingest_csv", "kind_of"]

#: short names the CLI accepts beside the mapper's kinds
ALIASES = {"labs": "lab_results", "lab": "lab_results", "diagnosis": "diagnoses", "medication": "medications"}


def kind_of(name: str) -> str:
    """The mapper's kind for a CLI name (``labs`` -> ``lab_results``); ValueError when unknown."""
    kind = ALIASES.get(name, name)
    if kind not in KINDS:
        raise ValueError(f"unknown CSV kind '{name}'; expected one of {', '.join(KINDS)} (or labs)")
    return kind


@dataclass
class CsvReport(IngestReport):
    rows: int = 0

    def summary(self, max_rows: int = 50) -> str:
        rate = self.rows / self.seconds if self.seconds else 0.0
        lines = [
            f"Ingested {self.rows:,} CSV row(s) from {self.files:,} file(s) in {self.seconds:.1f} s "
            f"({rate:,.0f} rows/s): {self.stored:,} stored, {len(self.quarantined):,} quarantined",
            self.resources_line("rows"),
            *self.quarantine_lines(
                "file, line, column",
                lambda q, where: f"{q['source']}  line {q['record']}  {where}{q['reason']}",
                max_rows,
            ),
        ]
        return "\n".join(lines)


def ingest_csv(
    ctx: FhirContext,
    paths: Iterable[str | Path],
    kind: str,
    *,
    mapping: str | Path | dict[str, Any] | None = None,
    batch_size: int = 2000,
    progress: Callable[[int], None] | None = None,
    validate: bool = False,
    report: CsvReport | None = None,
) -> CsvReport:
    """Store every row of the CSV files (one ``kind``); returns (and fills) the report.

    A bad mapping config raises ValueError/OSError before anything is stored.
    """
    kind = kind_of(kind)
    config = load_config(mapping)
    report = report if report is not None else CsvReport()
    started = time.perf_counter()
    writer = Writer(ctx, batch_size)

    def settle(done: list[tuple[Unit, Outcome]]) -> None:
        for unit, outcome in done:
            if outcome.status == "failed":
                problem = outcome.problem or Problem("", "not stored")
                where = {"source": unit.source, "record": unit.record, "location": problem.location}
                report.quarantined.append({**where, "reason": problem.reason})
            else:
                report.stored += 1
                report.warnings += len(unit.warnings)
            if progress is not None:
                progress(1)

    try:
        with paused_gc(), ctx.store.bulk_session():  # into an empty store: value indexes built once at the end
            for path in paths:
                report.files += 1
                for result in map_csv(path, kind, config):
                    report.rows += 1
                    if isinstance(result, Quarantined):
                        writer.quarantine(quarantine_row("csv", result))
                        report.quarantined.append(result.report())
                        if progress is not None:
                            progress(1)
                        continue
                    assert isinstance(result, Mapped)
                    ts = time.time()
                    try:
                        items, guesses = prepare_unit(result.entries, ctx.registry, ts, validate=validate)
                    except RecordError as exc:
                        q = Quarantined(result.source, result.line, exc.problem, "")
                        writer.quarantine(quarantine_row("csv", q))
                        report.quarantined.append(q.report())
                        continue
                    unit = Unit("csv", result.source, result.line, items, guesses, ts, warnings=result.warnings)
                    settle(writer.add(unit))
            settle(writer.flush())
    finally:
        report.counts.add(writer.counts)
        report.seconds = time.perf_counter() - started
    return report
