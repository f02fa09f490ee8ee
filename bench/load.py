"""Bulk-load and transaction benchmark (prints figures; not a test).

What it measures, on each storage backend (SQLite, then PostgreSQL):

``load``         ``server.fhir.load.load`` (what ``python -m server load`` runs) on the shared Synthea
                 sample (``../shared/data/synthea/smart-sample-100.tgz``: 100 transaction Bundles,
                 11,659 resources) into an empty database; resources/s is resources processed / the
                 loader's own wall time (app start-up excluded, it is reported apart).
``load again``   the same files once more: every resource is compared and found unchanged.
``export``       Bulk Data ``$export`` (:mod:`server.fhir.operations.export`, what the background
                 job runs) of the loaded sample to NDJSON files, system level and Patient level,
                 in this process; resources/s is resources written / wall time, and the growth of
                 the process's peak RSS is reported (the export streams: it should stay flat).
``transaction``  ``POST /fhir`` of small transaction Bundles (1 Patient + 5 Observations referring
                 to it by ``urn:uuid``) through HTTP against the real server started as production
                 does (``python -m server serve --workers 2``: gunicorn), ``--clients`` concurrent
                 clients; Bundles/s, resources/s and latency percentiles.

CPU notes: ``CPU-s`` is the CPU time of this process and its children (the loader's worker
processes), ``cores`` that divided by wall time, ``machine busy`` the cores the whole machine used
meanwhile (``/proc/stat``): when ``busy`` is well above ``cores``, other work shared the machine,
the wall-clock figures are low and ``CPU-s`` / cores is the better guide.

How to run
    .venv/bin/python bench/load.py                       # both backends
    .venv/bin/python bench/load.py --backends sqlite --workers 0 --bundles 200 --clients 4

PostgreSQL: ``--pg-url`` (default ``$BIGMED_TEST_POSTGRES_URL`` or
``postgresql://postgres@127.0.0.1:5432/test``); the bench uses its own schema ``bigmed_bench_load``,
created and dropped. SQLite files go to a temporary directory. Servers started are stopped on exit.
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import resource
import statistics
import sys
import tarfile
import tempfile
import threading
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from _common import Server, free_port, serve_argv  # noqa: E402  # bench/ is the script's folder

SAMPLE = ROOT.parent / "shared" / "data" / "synthea" / "smart-sample-100.tgz"
PG_SCHEMA = "bigmed_bench_load"


@dataclass
class Row:
    backend: str
    what: str
    count: int
    seconds: float
    rate: str
    notes: str


def machine_busy() -> tuple[float, float]:
    """(busy jiffies, total jiffies) of the whole machine."""
    with open("/proc/stat") as fh:
        fields = [float(x) for x in fh.readline().split()[1:]]
    idle = fields[3] + fields[4]
    return sum(fields) - idle, sum(fields)


class Meter:
    """Wall time, CPU of this process and its children, cores busy on the machine."""

    def __enter__(self) -> Meter:
        self.t0 = time.perf_counter()
        self.cpu0 = self._cpu()
        self.m0 = machine_busy()
        return self

    @staticmethod
    def _cpu() -> float:
        me, kids = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
        return me.ru_utime + me.ru_stime + kids.ru_utime + kids.ru_stime

    def __exit__(self, *exc: object) -> None:
        self.seconds = time.perf_counter() - self.t0
        self.cpu_seconds = self._cpu() - self.cpu0
        self.cpu = self.cpu_seconds / self.seconds
        busy, total = machine_busy()
        ncpu = os.cpu_count() or 1
        self.busy = (busy - self.m0[0]) / max(total - self.m0[1], 1) * ncpu


def pg_url(base: str) -> str:
    sep = "&" if "?" in base else "?"
    return f"{base}{sep}options=-csearch_path%3D{PG_SCHEMA}"


def pg_schema(base: str, create: bool) -> bool:
    try:
        import psycopg

        with psycopg.connect(base, connect_timeout=3, autocommit=True) as conn:
            conn.execute(f"DROP SCHEMA IF EXISTS {PG_SCHEMA} CASCADE")
            if create:
                conn.execute(f"CREATE SCHEMA {PG_SCHEMA}")
    except Exception as exc:  # noqa: BLE001  # any failure: PostgreSQL is not usable here
        print(f"PostgreSQL at {base} is not usable ({exc}); skipped", file=sys.stderr)
        return False
    return True


def bench_export(backend: str, ctx: Any) -> list[Row]:
    """Export the loaded data (system and Patient level) as the background job does, in this process."""
    from server.fhir.operations import export

    rows = []
    for level in ("system", "patient"):
        req = export.parse_request(ctx, level, [], f"bench {level} export")
        rss0 = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        with Meter() as m:
            job = export.kick_off(ctx, req, background=False)
        grown = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - rss0
        manifest = export.poll(ctx, job, "http://bench/fhir").manifest
        assert manifest is not None
        n = sum(o["count"] for o in manifest["output"])
        folder = Path(ctx.config.export_dir) / job
        size = sum(p.stat().st_size for p in folder.glob("*.ndjson"))
        rows.append(
            Row(
                backend,
                f"export, {level} level ({len(manifest['output'])} files)",
                n,
                m.seconds,
                f"{n / m.seconds:,.0f} res/s",
                f"{size / 1e6:,.1f} MB NDJSON, {m.cpu_seconds:.1f} CPU-s, peak RSS +{grown / 1024:,.1f} MB, "
                f"machine busy {m.busy:.1f}",
            )
        )
        export.cancel(ctx, job)
    return rows


def bench_load(
    backend: str, url: str, data: Path, workers: int | None, batch: int, export_dir: Path | None = None
) -> list[Row]:
    from server import create_app
    from server.config import Config
    from server.fhir.load import default_workers, load

    t0 = time.perf_counter()
    cfg = Config(database_url=url, export_dir=str(export_dir or data.parent / "exports"))
    ctx = create_app(cfg).extensions["bigmed"]
    startup = time.perf_counter() - t0
    ctx.store.reset()
    rows = []
    try:
        for what in ("load", "load again"):
            with Meter() as m:
                report = load(ctx, [data], progress=False, workers=workers, batch_size=batch)
            if report.failures:
                print(report.summary(), file=sys.stderr)
            n = report.processed
            used = default_workers() if workers is None else workers
            rows.append(
                Row(
                    backend,
                    f"{what} ({report.files} files)",
                    n,
                    report.seconds,
                    f"{n / report.seconds:,.0f} res/s",
                    f"{report.created:,} created, {report.unchanged:,} unchanged; workers {used}, "
                    f"{m.cpu_seconds:.1f} CPU-s (cores {m.cpu:.1f}), machine busy {m.busy:.1f}; "
                    f"app start {startup:.1f} s",
                )
            )
        if export_dir is not None:
            rows += bench_export(backend, ctx)
    finally:
        ctx.store.close()
    return rows


def small_bundle(n: int) -> bytes:
    pid = f"urn:uuid:{uuid.uuid4()}"
    entries: list[dict[str, Any]] = [
        {
            "fullUrl": pid,
            "resource": {
                "resourceType": "Patient",
                "identifier": [{"system": "http://bench.example/mrn", "value": f"B{n}"}],
                "name": [{"family": f"Bench{n}", "given": ["Kari"]}],
                "gender": "female",
                "birthDate": "1970-01-01",
            },
            "request": {"method": "POST", "url": "Patient"},
        }
    ]
    for i in range(5):
        entries.append(
            {
                "fullUrl": f"urn:uuid:{uuid.uuid4()}",
                "resource": {
                    "resourceType": "Observation",
                    "status": "final",
                    "category": [
                        {
                            "coding": [
                                {
                                    "system": "http://terminology.hl7.org/CodeSystem/observation-category",
                                    "code": "vital-signs",
                                }
                            ]
                        }
                    ],
                    "code": {"coding": [{"system": "http://loinc.org", "code": "8867-4", "display": "Heart rate"}]},
                    "subject": {"reference": pid},
                    "effectiveDateTime": f"2020-01-0{i + 1}T10:00:00Z",
                    "valueQuantity": {"value": 60 + i, "unit": "/min", "system": "http://unitsofmeasure.org"},
                },
                "request": {"method": "POST", "url": "Observation"},
            }
        )
    return json.dumps({"resourceType": "Bundle", "type": "transaction", "entry": entries}).encode()


def post(port: int, body: bytes) -> tuple[int, float]:
    t = time.perf_counter()
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
    try:
        conn.request("POST", "/fhir", body, {"Content-Type": "application/fhir+json"})
        resp = conn.getresponse()
        resp.read()
        return resp.status, time.perf_counter() - t
    finally:
        conn.close()


def bench_transactions(backend: str, url: str, bundles: int, clients: int, tmp: Path) -> list[Row]:
    port = free_port()
    env = {**os.environ, "DATABASE_URL": url, "BIGMED_LOG_LEVEL": "WARNING"}
    server = Server(backend, serve_argv(port, 2), env, port, tmp / f"serve-{backend}.log")
    try:
        server.wait_healthy(60)
        warm = [small_bundle(-i) for i in range(1, 2 * clients + 1)]
        with ThreadPoolExecutor(clients) as pool:
            list(pool.map(lambda b: post(port, b), warm))
        bodies = [small_bundle(i) for i in range(bundles)]
        lock = threading.Lock()
        errors = 0

        def one(body: bytes) -> float:
            nonlocal errors
            status, seconds = post(port, body)
            if status != 200:
                with lock:
                    errors += 1
            return seconds

        with Meter() as m, ThreadPoolExecutor(clients) as pool:
            latencies = sorted(pool.map(one, bodies))
        p50 = statistics.median(latencies) * 1000
        p99 = latencies[min(len(latencies) - 1, int(len(latencies) * 0.99))] * 1000
        return [
            Row(
                backend,
                "transaction (1 Patient + 5 Observations), HTTP",
                bundles,
                m.seconds,
                f"{bundles / m.seconds:,.0f} bundles/s",
                f"{6 * bundles / m.seconds:,.0f} res/s, p50 {p50:.0f} ms, p99 {p99:.0f} ms, {clients} clients, "
                f"gunicorn 2 workers, errors {errors}, busy {m.busy:.1f}",
            )
        ]
    finally:
        server.stop()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--backends", default="sqlite,postgresql")
    parser.add_argument(
        "--pg-url", default=os.environ.get("BIGMED_TEST_POSTGRES_URL", "postgresql://postgres@127.0.0.1:5432/test")
    )
    parser.add_argument(
        "--workers", type=int, default=None, help="loader worker processes (default: one per core, at most 4)"
    )
    parser.add_argument("--batch-size", type=int, default=2000)
    parser.add_argument("--bundles", type=int, default=300, help="transaction Bundles to POST")
    parser.add_argument("--clients", type=int, default=4)
    parser.add_argument("--skip-load", action="store_true")
    parser.add_argument("--skip-http", action="store_true")
    parser.add_argument("--skip-export", action="store_true", help="no $export figures")
    args = parser.parse_args()
    if not SAMPLE.exists() and not args.skip_load:
        print(f"the Synthea sample is absent ({SAMPLE})", file=sys.stderr)
        return 2
    rows: list[Row] = []
    with tempfile.TemporaryDirectory(prefix="bigmed-bench-load-") as tmpdir:
        tmp = Path(tmpdir)
        data = tmp / "synthea"
        if not args.skip_load:
            with tarfile.open(SAMPLE) as tar:
                tar.extractall(data, filter="data")
        for backend in args.backends.split(","):
            if backend == "sqlite":
                urls = (f"sqlite:///{tmp}/load.sqlite", f"sqlite:///{tmp}/http.sqlite")
            elif backend == "postgresql":
                if not pg_schema(args.pg_url, create=True):
                    continue
                urls = (pg_url(args.pg_url), pg_url(args.pg_url))
            else:
                raise SystemExit(f"unknown backend {backend!r}")
            try:
                if not args.skip_load:
                    export_dir = None if args.skip_export else tmp / f"exports-{backend}"
                    rows += bench_load(backend, urls[0], data, args.workers, args.batch_size, export_dir)
                    print(f"{backend}: load done", file=sys.stderr)
                if not args.skip_http:
                    if backend == "postgresql":  # a fresh schema for the HTTP run too
                        pg_schema(args.pg_url, create=True)
                    rows += bench_transactions(backend, urls[1], args.bundles, args.clients, tmp)
                    print(f"{backend}: transactions done", file=sys.stderr)
            finally:
                if backend == "postgresql":
                    pg_schema(args.pg_url, create=False)
    print(f"\n{'backend':<11} {'what':<48} {'n':>7} {'s':>7} {'rate':>14}  notes")
    for r in rows:
        print(f"{r.backend:<11} {r.what:<48} {r.count:>7,} {r.seconds:>7.2f} {r.rate:>14}  {r.notes}")
    print(f"\nmachine: {os.cpu_count()} cores; python {sys.version.split()[0]}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
