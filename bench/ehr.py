"""HL7 v2 ingestion speed: ORU^R01 with 10 OBX each, end to end into the store (not a test).

    python bench/ehr.py [--messages 5000] [--patients 1000] [--workers N] [--skip-postgres] [--skip-floor]

Generates ``--messages`` ORU^R01 messages (one PID with an MRN of ``--patients`` distinct
patients, one OBR, 10 numeric OBX with LOINC codes, UCUM units, reference ranges and flags, one
SPM: 13 resources per message), writes them to a feed file (LF segment ends) and ingests it as
``python -m server ingest-hl7`` does (:func:`server.fhir.operations.ingest_hl7.ingest_hl7`:
parse, map, index, serialise in ``--workers`` processes, one writer, batched writes) into a fresh
SQLite file and a fresh PostgreSQL schema. Prints messages/s and resources/s for each, beside
parse+map alone on one core, and compares with the goal (2,000 messages/s on SQLite). A second
run of the same feed (every message a duplicate) is timed too. The CPU time per message of this
process and of the workers is printed as well: on a shared machine it varies less than the rate.
Then (``--skip-floor`` leaves it out) the feed is ingested once more into a fresh SQLite file with
the writer's statements recorded and replayed alone (:mod:`sql_floor`): SQLite's own share, the
ceiling of the storage layout whatever the Python costs.

PostgreSQL: ``BIGMED_TEST_POSTGRES_URL`` (default ``postgresql://postgres@127.0.0.1:5432/test``),
in a schema of its own, dropped at the end.
"""

from __future__ import annotations

import argparse
import os
import random
import resource
import sys
import tempfile
import time
import uuid
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from sql_floor import floor_of  # noqa: E402  # bench/ is on sys.path as the script's folder

from mappers.hl7v2 import map_stream  # noqa: E402  # after the path setup, as for every bench script
from server import create_app  # noqa: E402
from server.config import Config  # noqa: E402
from server.fhir.operations.ingest_hl7 import default_workers, ingest_hl7  # noqa: E402

PG_URL = os.environ.get("BIGMED_TEST_POSTGRES_URL", "postgresql://postgres@127.0.0.1:5432/test")
GOAL = 2000.0
TESTS = [  # LOINC, name, unit, low, high
    ("2345-7", "Glucose", "mmol/L", 3.9, 6.1),
    ("2823-3", "Potassium", "mmol/L", 3.5, 5.0),
    ("2951-2", "Sodium", "mmol/L", 137, 145),
    ("2160-0", "Creatinine", "umol/L", 45, 90),
    ("1742-6", "ALT", "U/L", 10, 45),
    ("718-7", "Hemoglobin", "g/dL", 12, 16),
    ("6690-2", "Leukocytes", "10*9/L", 3.5, 10),
    ("777-3", "Platelets", "10*9/L", 145, 390),
    ("1988-5", "CRP", "mg/L", 0, 5),
    ("2093-3", "Cholesterol", "mmol/L", 2.9, 5.0),
]


def oru(n: int, patients: int, rng: random.Random) -> str:
    p = n % patients
    stamp = f"202403{1 + n % 28:02d}{8 + n % 10:02d}{n % 60:02d}00"
    segs = [
        f"MSH|^~\\&|LIS|OUS^2.16.578.1.12.4.1.2.101^ISO|BIGMED|BIGMED|{stamp}||ORU^R01^ORU_R01|BENCH{n:08d}|P|2.5.1",
        f"PID|1||MRN{p:07d}^^^OUS^MR||Pasient{p}^Test^^^^^L||19{50 + p % 50:02d}0101|{'MF'[p % 2]}",
        f"PV1|1|O|LAB^^^OUS||||||||||||||||V{n:08d}^^^OUS^VN",
        f"OBR|1|PLC{n:08d}^LIS|FIL{n:08d}^LAB|24323-8^Panel^LN|||{stamp}|||||||||||||||{stamp}||CH|F",
    ]
    for i, (code, name, unit, low, high) in enumerate(TESTS, 1):
        value = round(rng.uniform(low * 0.7, high * 1.3), 1)
        flag = "H" if value > high else ("L" if value < low else "N")
        segs.append(f"OBX|{i}|NM|{code}^{name}^LN||{value}|{unit}^^UCUM|{low}-{high}|{flag}|||F|||{stamp}")
    segs.append(f"SPM|1|SP{n:08d}^LIS||BLD^Whole blood^HL70487|||||||||||||{stamp}|{stamp}")
    return "\n".join(segs) + "\n"


def postgres_url() -> tuple[str, str] | None:
    try:
        import psycopg

        schema = f"bench_ehr_{uuid.uuid4().hex[:8]}"
        with psycopg.connect(PG_URL, connect_timeout=3, autocommit=True) as conn:
            conn.execute(f"CREATE SCHEMA {schema}")
    except Exception as exc:  # noqa: BLE001  # any failure: PostgreSQL is not there
        print(f"PostgreSQL not reachable at {PG_URL} ({exc}); skipped")
        return None
    sep = "&" if "?" in PG_URL else "?"
    return f"{PG_URL}{sep}options=-csearch_path%3D{schema}", schema


def drop_schema(schema: str) -> None:
    import psycopg

    with psycopg.connect(PG_URL, autocommit=True) as conn:
        conn.execute(f"DROP SCHEMA IF EXISTS {schema} CASCADE")


def cpu_seconds() -> tuple[float, float]:
    """CPU seconds (user + system) of this process and of its finished child processes (the workers)."""
    me, children = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return me.ru_utime + me.ru_stime, children.ru_utime + children.ru_stime


def run(name: str, url: str, feed: Path, messages: int, workers: int) -> float:
    app = create_app(Config(database_url=url, cache_enabled=False, log_level="WARNING"))
    ctx = app.extensions["bigmed"]
    ctx.store.reset()
    try:
        before = cpu_seconds()
        with feed.open("rb") as fh:
            report = ingest_hl7(ctx, [(feed.name, fh)], workers=workers)
        writer, mappers = (after - start for after, start in zip(cpu_seconds(), before, strict=True))
        assert report.stored == messages, report.summary()
        rate = report.rate
        resources = report.counts.created / report.seconds
        print(
            f"  {name:<10} workers={workers}: {report.seconds:6.2f} s  {rate:7,.0f} messages/s  "
            f"{resources:8,.0f} resources/s  ({report.counts.created:,} created)"
        )
        print(
            f"  {'':<10} CPU per message: {writer / messages * 1e3:.2f} ms in this process (parse, write)"
            + (f", {mappers / messages * 1e3:.2f} ms in the workers (map, index, serialise)" if workers else "")
        )
        with feed.open("rb") as fh:
            again = ingest_hl7(ctx, [(feed.name, fh)], workers=workers)
        assert again.duplicates == messages
        print(f"  {'':<10} same feed again (all duplicates): {again.rate:7,.0f} messages/s, nothing written")
        return rate
    finally:
        ctx.store.close()


def floor(folder: Path, feed: Path, messages: int, workers: int) -> None:
    """The feed ingested once more into a fresh SQLite file, its statements replayed alone (:mod:`sql_floor`)."""
    app = create_app(Config(database_url=f"sqlite:///{folder}/floor.sqlite", cache_enabled=False, log_level="WARNING"))
    ctx = app.extensions["bigmed"]
    try:
        with feed.open("rb") as fh:
            report, result = floor_of(ctx.store, folder, lambda: ingest_hl7(ctx, [(feed.name, fh)], workers=workers))
    finally:
        ctx.store.close()
    assert report.stored == messages, report.summary()
    print(
        f"  SQLite statements alone (replayed without Python, bench/sql_floor.py): {result.wall:.2f} s "
        f"({result.cpu:.2f} s CPU) = {result.wall / messages * 1e3:.2f} ms per message, "
        f"a ceiling of {messages / result.wall:,.0f} messages/s for this storage layout\n"
        f"  {'':<10} largest, per message: {result.shares(messages)}"
    )


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--messages", type=int, default=5000)
    parser.add_argument("--patients", type=int, default=1000)
    parser.add_argument("--workers", type=int, default=None, help="mapping processes (default: cores - 1)")
    parser.add_argument("--skip-postgres", action="store_true")
    parser.add_argument("--skip-floor", action="store_true", help="do not replay the SQLite statements alone")
    args = parser.parse_args()
    workers = default_workers() if args.workers is None else args.workers
    rng = random.Random(8)
    with tempfile.TemporaryDirectory() as tmp:
        feed = Path(tmp) / "oru.hl7"
        feed.write_text("".join(oru(n, args.patients, rng) for n in range(args.messages)))
        print(
            f"ORU^R01 x {args.messages:,} (10 OBX, 13 resources each, {args.patients:,} patients), "
            f"{os.cpu_count()} cores, load {os.getloadavg()[0]:.1f}"
        )
        sample = feed.read_bytes()[: len(feed.read_bytes()) // max(1, args.messages // 500)]
        start = time.process_time()
        mapped = sum(1 for _ in map_stream(sample, "sample"))
        print(f"  parse+map only, one core: {mapped / (time.process_time() - start):7,.0f} messages/s (CPU time)")
        sqlite_rate = run("SQLite", f"sqlite:///{tmp}/bench.sqlite", feed, args.messages, workers)
        if workers:
            run("SQLite", f"sqlite:///{tmp}/bench0.sqlite", feed, args.messages, 0)
        if not args.skip_floor:
            floor(Path(tmp), feed, args.messages, workers)
        if not args.skip_postgres:
            pg = postgres_url()
            if pg is not None:
                try:
                    run("PostgreSQL", pg[0], feed, args.messages, workers)
                finally:
                    drop_schema(pg[1])
    verdict = "meets" if sqlite_rate >= GOAL else "is below"
    print(f"SQLite end to end: {sqlite_rate:,.0f} messages/s {verdict} the goal of {GOAL:,.0f} messages/s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
