"""What a bulk write did: resource counts and the summary lines the bulk paths print.

Owns :class:`WriteCounts` (the outcome of each resource written the way an update or create
is, http://hl7.org/fhir/R4/http.html#update and #ccreate: created, updated, unchanged — same
content, no new version —, deleted, or matched by ``ifNoneExist``, with the count per type),
:class:`IngestReport` (the part an EHR ingestion report shares: files, stored units, warnings,
counts, the quarantine list, time) and :func:`listing` (a capped list of problems under a heading).
Used by the bulk loader (:mod:`server.fhir.load`), the HL7 v2 and CSV ingestions
(:mod:`server.fhir.operations.ingest_hl7`, :mod:`server.fhir.operations.ingest_csv`) and their
writer (:mod:`server.fhir.operations.ehr_store`).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, TypeVar

__all__ = ["IngestReport", "WriteCounts", "listing"]

T = TypeVar("T")


@dataclass
class WriteCounts:
    """Resources by outcome (and written ones by type, where the caller counts them)."""

    created: int = 0
    updated: int = 0
    unchanged: int = 0
    deleted: int = 0
    matched: int = 0  # a conditional create (ifNoneExist) matched an existing resource: nothing written
    by_type: Counter[str] = field(default_factory=Counter)

    @property
    def written(self) -> int:
        return self.created + self.updated + self.deleted

    @property
    def processed(self) -> int:
        return self.written + self.unchanged + self.matched

    def add(self, other: WriteCounts) -> None:
        self.created += other.created
        self.updated += other.updated
        self.unchanged += other.unchanged
        self.deleted += other.deleted
        self.matched += other.matched
        if other.by_type:
            self.by_type.update(other.by_type)


def listing(heading: str, rows: Sequence[T], render: Callable[[T], str], empty: str, max_rows: int = 50) -> list[str]:
    """``heading`` and the first ``max_rows`` rows (indented, then how many more), or ``empty`` when none."""
    if not rows:
        return [empty]
    lines = [heading, *(f"  {render(row)}" for row in rows[:max_rows])]
    if len(rows) > max_rows:
        lines.append(f"  … and {len(rows) - max_rows:,} more")
    return lines


@dataclass
class IngestReport:
    """What an EHR ingestion did (per file or feed): the part the HL7 v2 and CSV reports share."""

    files: int = 0
    stored: int = 0
    warnings: int = 0
    counts: WriteCounts = field(default_factory=WriteCounts)
    quarantined: list[dict[str, Any]] = field(default_factory=list)
    seconds: float = 0.0

    def resources_line(self, units: str) -> str:
        c = self.counts
        return (
            f"  resources: {c.created:,} created, {c.updated:,} updated, {c.unchanged:,} unchanged, "
            f"{c.matched:,} matched by ifNoneExist; {self.warnings:,} warning(s) in stored {units}"
        )

    def quarantine_lines(self, columns: str, render: Callable[[dict[str, Any], str], str], max_rows: int) -> list[str]:
        """The quarantine list: ``render(row, where)`` gives a row, ``where`` being ``location: `` or empty."""
        return listing(
            f"Quarantine ({columns}: reason); kept in GET /fhir/$quarantine",
            self.quarantined,
            lambda q: render(q, f"{q['location']}: " if q.get("location") else ""),
            "Quarantine: none",
            max_rows,
        )
