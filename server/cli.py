"""Command line: ``python -m server serve …`` (other subcommands arrive with their features).

``serve`` runs Flask's threaded development server by default, or gunicorn with
``--workers N`` (each worker builds its own app and connections through ``create_app``).
``load PATH…`` bulk-loads Bundles and NDJSON files or folders of them (:mod:`server.fhir.load`)
with a progress bar and a summary; it exits 1 when something failed to load.
``reindex [--type T]`` rebuilds the search index tables from the stored current resources
(:mod:`server.search.reindex`) with a progress bar.
``ingest-vcf FILE --patient ID …`` stores one sample of a VCF as Genomics Reporting resources
(:mod:`server.fhir.operations.ingest_vcf`) in one transaction, with a progress bar; bad input
is reported with its file and line, exit code 1, and nothing is stored.
``seed [--folder DIR]`` stores the sandbox's synthetic patients (:mod:`server.sandbox.seed`);
``make run`` runs it before serving; a rerun writes nothing.
"""

from __future__ import annotations

import argparse
import contextlib
import gc
import os
import shutil
import sys
import tempfile
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any, Protocol

from flask import Flask
from gunicorn.app.base import BaseApplication
from tqdm import tqdm

from server import create_app
from server.api import metrics as metrics_api
from server.audit_queue import shutdown_all as shutdown_audit
from server.auth import cli as clients_cli
from server.config import Config
from server.errors import FhirError
from server.fhir.context import FhirContext
from server.fhir.load import LoadReport, load
from server.fhir.operations import ingest_hl7 as hl7
from server.fhir.operations.call_pgx import call_pgx
from server.fhir.operations.ingest_csv import CsvReport, ingest_csv, kind_of
from server.fhir.operations.ingest_vcf import count_records, default_workers, ingest_vcf
from server.sandbox import seed as sandbox
from server.search.reindex import count_current, reindex

__all__ = ["main"]

#: what a subcommand's work hands back: the summary to print (None: nothing) and the exit code
Outcome = tuple[str | None, int]


class _Summarised(Protocol):
    def summary(self) -> str: ...


class _Usage(Exception):
    """Bad arguments found once the app is up (exit code 2)."""


def _run(
    command: str,
    cfg: Config,
    work: Callable[[FhirContext], Outcome],
    *,
    errors: Mapping[type[Exception], int] | None = None,
    interrupted: str | None = None,
    partial: _Summarised | None = None,
) -> int:
    """Run one subcommand's ``work`` on a fresh app context, the way every subcommand ends.

    An exception of a type in ``errors`` (default: a :class:`FhirError`, exit 1) is printed as
    ``command: message`` on stderr with its exit code; with ``interrupted``, Ctrl-C prints
    ``partial``'s summary (what was done so far) and that message on stderr and exits 130. The
    store is closed in every case, before the summary is printed.
    """
    errors = {FhirError: 1} if errors is None else errors
    handled: tuple[type[BaseException], ...] = (KeyboardInterrupt,) if interrupted is not None else ()
    context = create_app(cfg.with_(hpo_preload="off")).extensions["bigmed"]  # no ontology for batch commands
    try:
        summary, code = work(context)
    except handled:
        if partial is not None:
            print(partial.summary(), file=sys.stderr)
        print(interrupted, file=sys.stderr)
        return 130
    except tuple(errors) as exc:
        message = exc.message if isinstance(exc, FhirError) else str(exc)
        print(f"{command}: {message}", file=sys.stderr)
        return next(code for kind, code in errors.items() if isinstance(exc, kind))
    finally:
        context.store.close()
    if summary is not None:
        print(summary)
    return code


def _missing(command: str, paths: Sequence[str]) -> bool:
    """Say which of ``paths`` are no files (True: some are)."""
    missing = [p for p in paths if not os.path.isfile(p)]
    if missing:
        print(f"{command}: no such file: {', '.join(missing)}", file=sys.stderr)
    return bool(missing)


def _serve(args: argparse.Namespace, cfg: Config) -> int:
    if args.workers:
        # one /metrics for every worker: prometheus-client multiprocess files (server/api/metrics.py)
        own_metrics_dir = cfg.metrics_dir is None
        metrics_dir = cfg.metrics_dir or tempfile.mkdtemp(prefix="bigmed-metrics-")
        metrics_api.enable_multiprocess(metrics_dir)
        cfg = cfg.with_(metrics_dir=metrics_dir)

        class _Gunicorn(BaseApplication):
            def load_config(self) -> None:
                self.cfg.set("bind", f"{args.host}:{args.port}")
                self.cfg.set("workers", args.workers)
                self.cfg.set("worker_class", "gthread" if args.threads > 1 else "sync")
                self.cfg.set("threads", args.threads)
                self.cfg.set("timeout", 120)
                self.cfg.set("accesslog", "-" if args.access_log else None)
                # a worker leaving flushes its queued AuditEvents (server/audit_queue.py; atexit also does)
                self.cfg.set("worker_exit", lambda _arbiter, _worker: shutdown_audit())
                self.cfg.set("child_exit", lambda _arbiter, worker: metrics_api.worker_exited(worker.pid, metrics_dir))

            def load(self) -> Any:
                return _serving_app(cfg)

        try:
            _Gunicorn().run()
        finally:
            if own_metrics_dir:
                shutil.rmtree(metrics_dir, ignore_errors=True)
        return 0
    _serving_app(cfg).run(host=args.host, port=args.port, threaded=True, debug=False)
    return 0


def _serving_app(cfg: Config) -> Flask:
    """The app of a serving process, its start-up objects (registry, knowledge tables, compiled
    extractors) frozen out of the cyclic GC's full collections: they live as long as the process."""
    app = create_app(cfg)
    gc.freeze()
    return app


def _load(args: argparse.Namespace, cfg: Config) -> int:
    report = LoadReport()

    def work(context: FhirContext) -> Outcome:
        load(
            context,
            args.paths,
            report=report,
            progress=not args.quiet,
            full_validation=args.full_validation,
            batch_size=args.batch_size,
            workers=args.workers,
        )
        return report.summary(), 1 if report.failures else 0

    return _run(
        "load",
        cfg,
        work,
        errors={FileNotFoundError: 2},
        interrupted="Interrupted: what was committed stays; run the same command again to complete the load.",
        partial=report,
    )


def _reindex(args: argparse.Namespace, cfg: Config) -> int:
    """``reindex [--type T]``: rebuild the search index rows from the current resources."""

    def work(context: FhirContext) -> Outcome:
        if args.type and args.type not in context.registry.resource_types():
            raise _Usage(f"unknown resource type '{args.type}'")
        total = count_current(context.store, args.type)
        workers = args.workers
        if workers is None:  # extraction in worker processes pays off for large stores only
            workers = min(4, (os.cpu_count() or 1) - 1) if total >= 20_000 else 0
        with tqdm(total=total, unit="res", desc="reindex", disable=args.quiet) as bar:
            done = reindex(
                context.store, context.registry, args.type, batch=args.batch_size, progress=bar.update, workers=workers
            )
        return f"reindexed {done} of {total} current {args.type or 'resources'}", 0

    return _run("reindex", cfg, work, errors={_Usage: 2})


def _ingest_vcf(args: argparse.Namespace, cfg: Config) -> int:
    """``ingest-vcf FILE --patient ID …``: all or nothing; exit 1 with the file and line on bad input."""

    def work(context: FhirContext) -> Outcome:
        try:
            total = count_records(args.file) if not args.quiet else None
        except OSError:
            total = None  # ingest_vcf reports the unreadable file
        with tqdm(total=total, unit="rec", desc="ingest-vcf", disable=args.quiet, dynamic_ncols=True) as bar:

            def progress(records: int) -> None:
                bar.update(records - bar.n)

            result = ingest_vcf(
                context,
                args.file,
                args.patient,
                sample=args.sample,
                build=args.build,
                source_class=args.source_class,
                regions=args.regions,
                progress=progress,
                workers=default_workers() if args.workers is None else args.workers,
            )
        return result.summary(), 0

    return _run("ingest-vcf", cfg, work, interrupted="ingest-vcf: interrupted; nothing was stored")


def _call_pgx(args: argparse.Namespace, cfg: Config) -> int:
    """``call-pgx --patient ID…``: PGx calls from each Patient's stored variants; exit 1 if one failed."""

    def work(context: FhirContext) -> Outcome:
        failed = 0
        for patient in tqdm(args.patient, unit="patient", desc="call-pgx", disable=args.quiet or len(args.patient) < 2):
            try:
                print(call_pgx(context, patient, assume_reference=args.assume_reference).summary())
            except FhirError as err:
                print(f"call-pgx: Patient/{patient}: {err.message}", file=sys.stderr)
                failed += 1
        return None, 1 if failed else 0

    return _run("call-pgx", cfg, work, errors={})


def _count_messages(path: str) -> int:
    """About how many HL7 v2 messages a file holds (segment starts ``MSH``), for the progress bar."""
    count, tail = 0, b"\n"
    with open(path, "rb") as fh:
        while chunk := fh.read(1 << 20):
            data = tail + chunk
            count += sum(data.count(sep + b"MSH") for sep in (b"\r", b"\n", b"\x0b"))
            count -= sum(tail.count(sep + b"MSH") for sep in (b"\r", b"\n", b"\x0b"))
            tail = data[-4:]
    return count


def _ingest_hl7(args: argparse.Namespace, cfg: Config) -> int:
    """``ingest-hl7 FILE…``: store each message atomically; summary and quarantine; exit 1 if any quarantined."""
    if _missing("ingest-hl7", args.files):
        return 2
    report = hl7.Hl7Report()

    def work(context: FhirContext) -> Outcome:
        total = None if args.quiet else sum(_count_messages(p) for p in args.files)
        with (
            contextlib.ExitStack() as files,
            tqdm(total=total, unit="msg", desc="ingest-hl7", disable=args.quiet, dynamic_ncols=True) as bar,
        ):
            handles = [files.enter_context(open(p, "rb")) for p in args.files]  # streamed by the mapper
            hl7.ingest_hl7(
                context,
                [(os.path.basename(p), fh) for p, fh in zip(args.files, handles, strict=True)],
                workers=hl7.default_workers() if args.workers is None else args.workers,
                batch_size=args.batch_size,
                progress=bar.update,
                default_tz=args.timezone,
                validate=args.validate,
                report=report,
            )
        return report.summary(), 1 if report.quarantined else 0

    return _run(
        "ingest-hl7",
        cfg,
        work,
        errors={},
        interrupted="Interrupted: stored messages stay; run the same command again (duplicates are skipped).",
        partial=report,
    )


def _ingest_csv(args: argparse.Namespace, cfg: Config) -> int:
    """``ingest-csv --kind K [--mapping CONFIG] FILE…``: one transaction per row; exit 1 if any quarantined."""
    try:
        kind = kind_of(args.kind)
    except ValueError as exc:
        print(f"ingest-csv: {exc}", file=sys.stderr)
        return 2
    if _missing("ingest-csv", args.files):
        return 2
    report = CsvReport()

    def work(context: FhirContext) -> Outcome:
        total = None
        if not args.quiet:
            with_lines = [open(p, "rb") for p in args.files]  # noqa: SIM115  # closed right here
            total = sum(max(sum(1 for _ in fh) - 1, 0) for fh in with_lines)
            for fh in with_lines:
                fh.close()
        with tqdm(total=total, unit="row", desc=f"ingest-csv {kind}", disable=args.quiet, dynamic_ncols=True) as bar:
            ingest_csv(
                context,
                args.files,
                kind,
                mapping=args.mapping,
                batch_size=args.batch_size,
                progress=bar.update,
                validate=args.validate,
                report=report,
            )
        return report.summary(), 1 if report.quarantined else 0

    return _run(
        "ingest-csv",
        cfg,
        work,
        errors={OSError: 2, ValueError: 2},
        interrupted="Interrupted: stored rows stay; run the same command again (unchanged rows write nothing).",
        partial=report,
    )


def _seed(args: argparse.Namespace, cfg: Config) -> int:
    """``seed [--folder DIR]``: the sandbox's synthetic patients (idempotent: a rerun writes nothing)."""

    def work(context: FhirContext) -> Outcome:
        with tqdm(total=len(sandbox.steps()), unit="step", desc="seed", disable=args.quiet) as bar:
            report = sandbox.seed(context, Path(args.folder), step=lambda _name: bar.update())
        return report.summary(), 0

    return _run("seed", cfg, work)


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m server", description="BigMed FHIR R4 server")
    sub = parser.add_subparsers(dest="command", required=True)
    serve = sub.add_parser("serve", help="serve the HTTP API (FHIR at /fhir)")
    serve.add_argument("--host", default="127.0.0.1")
    serve.add_argument("--port", type=int, default=8080)
    serve.add_argument("--workers", type=int, default=0, help="gunicorn worker processes (0: Flask dev server)")
    serve.add_argument("--threads", type=int, default=1, help="threads per gunicorn worker")
    serve.add_argument("--access-log", action="store_true", help="log every request (gunicorn)")
    load_cmd = sub.add_parser("load", help="bulk-load Bundles / NDJSON files or folders of them (plain or .gz)")
    load_cmd.add_argument("paths", nargs="+", metavar="PATH")
    load_cmd.add_argument(
        "--full-validation", action="store_true", help="also validate with the R4B models, as the API does (slower)"
    )
    load_cmd.add_argument("--batch-size", type=int, default=2000, help="resources per store transaction")
    load_cmd.add_argument(
        "--workers",
        type=int,
        default=None,
        help="processes preparing files beside the writer (default: one per core, at most 4)",
    )
    load_cmd.add_argument("--quiet", action="store_true", help="no progress bar")
    reindex_cmd = sub.add_parser("reindex", help="rebuild the search index tables from the stored resources")
    reindex_cmd.add_argument("--type", default=None, metavar="T", help="only resources of this type")
    reindex_cmd.add_argument("--batch-size", type=int, default=500, help="resources per write transaction")
    reindex_cmd.add_argument(
        "--workers", type=int, default=None, help="extraction processes (default: cores - 1 from 20,000 resources)"
    )
    reindex_cmd.add_argument("--quiet", action="store_true", help="no progress bar")
    vcf_cmd = sub.add_parser("ingest-vcf", help="store one sample of a VCF (plain or bgzipped) for a Patient")
    vcf_cmd.add_argument("file", metavar="FILE")
    vcf_cmd.add_argument("--patient", required=True, metavar="ID", help="id of the Patient (must exist)")
    vcf_cmd.add_argument("--sample", default=None, metavar="NAME", help="sample column (needed when there are several)")
    vcf_cmd.add_argument("--build", choices=("GRCh37", "GRCh38"), default=None, help="when the header does not say")
    vcf_cmd.add_argument("--source-class", choices=("germline", "somatic"), default="germline")
    vcf_cmd.add_argument("--regions", default=None, metavar="BED", help="only records overlapping these intervals")
    vcf_cmd.add_argument(
        "--workers", type=int, default=None, help="mapping processes beside the writer: 0 or 1 (default: 1 on 2+ cores)"
    )
    vcf_cmd.add_argument("--quiet", action="store_true", help="no progress bar")
    pgx_cmd = sub.add_parser("call-pgx", help="star-allele calls from the stored variants of Patients")
    pgx_cmd.add_argument("--patient", required=True, action="append", metavar="ID", help="Patient id (repeatable)")
    pgx_cmd.add_argument(
        "--assume-reference",
        action="store_true",
        help="read definition positions without a stored variant as reference",
    )
    pgx_cmd.add_argument("--quiet", action="store_true", help="no progress bar")
    hl7_cmd = sub.add_parser("ingest-hl7", help="store HL7 v2 messages (ADT, ORU) from files, one transaction each")
    hl7_cmd.add_argument("files", nargs="+", metavar="FILE")
    hl7_cmd.add_argument(
        "--workers", type=int, default=None, help="mapping processes beside the writer (default: cores - 1, at most 4)"
    )
    hl7_cmd.add_argument("--batch-size", type=int, default=2000, help="resources per database transaction")
    hl7_cmd.add_argument("--timezone", default="Europe/Oslo", help="zone of times without an offset")
    hl7_cmd.add_argument("--validate", action="store_true", help="check every mapped resource against R4 (slower)")
    hl7_cmd.add_argument("--quiet", action="store_true", help="no progress bar")
    csv_cmd = sub.add_parser("ingest-csv", help="store a CSV EHR extract, one transaction per row")
    csv_cmd.add_argument("files", nargs="+", metavar="FILE")
    csv_cmd.add_argument(
        "--kind", required=True, help="patients, encounters, diagnoses, labs (lab_results), medications, phenotypes"
    )
    csv_cmd.add_argument("--mapping", default=None, metavar="CONFIG", help="JSON mapping config (docs/ehr-mapping.md)")
    csv_cmd.add_argument("--batch-size", type=int, default=2000, help="resources per database transaction")
    csv_cmd.add_argument("--validate", action="store_true", help="check every mapped resource against R4 (slower)")
    csv_cmd.add_argument("--quiet", action="store_true", help="no progress bar")
    clients_cli.add_parser(sub)
    seed_cmd = sub.add_parser("seed", help="seed the sandbox with synthetic patients (idempotent)")
    seed_cmd.add_argument("--folder", default="var/sandbox", help="where the generated Bundle and VCFs are written")
    seed_cmd.add_argument("--quiet", action="store_true", help="no progress bar")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        cfg = Config.from_env()
    except ValueError as exc:
        print(f"configuration error: {exc}", file=sys.stderr)
        return 2
    if args.command == "serve":
        return _serve(args, cfg)
    if args.command == "load":
        return _load(args, cfg)
    if args.command == "reindex":
        return _reindex(args, cfg)
    if args.command == "ingest-vcf":
        return _ingest_vcf(args, cfg)
    if args.command == "ingest-hl7":
        return _ingest_hl7(args, cfg)
    if args.command == "ingest-csv":
        return _ingest_csv(args, cfg)
    if args.command == "call-pgx":
        return _call_pgx(args, cfg)
    if args.command == "clients":
        return clients_cli.run(args, cfg)
    if args.command == "seed":
        return _seed(args, cfg)
    return 2
