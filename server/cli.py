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
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence
from typing import Any

from gunicorn.app.base import BaseApplication
from tqdm import tqdm

from server import create_app
from server.config import Config
from server.errors import FhirError
from server.fhir.load import LoadReport, load
from server.fhir.operations.ingest_vcf import count_records, default_workers, ingest_vcf
from server.search.reindex import count_current, reindex

__all__ = ["main"]


def _serve(args: argparse.Namespace, cfg: Config) -> int:
    if args.workers:

        class _Gunicorn(BaseApplication):
            def load_config(self) -> None:
                self.cfg.set("bind", f"{args.host}:{args.port}")
                self.cfg.set("workers", args.workers)
                self.cfg.set("worker_class", "gthread" if args.threads > 1 else "sync")
                self.cfg.set("threads", args.threads)
                self.cfg.set("timeout", 120)
                self.cfg.set("accesslog", "-" if args.access_log else None)

            def load(self) -> Any:
                return create_app(cfg)

        _Gunicorn().run()
        return 0
    create_app(cfg).run(host=args.host, port=args.port, threaded=True, debug=False)
    return 0


def _load(args: argparse.Namespace, cfg: Config) -> int:
    context = create_app(cfg).extensions["bigmed"]
    report = LoadReport()
    try:
        load(
            context,
            args.paths,
            report=report,
            progress=not args.quiet,
            full_validation=args.full_validation,
            batch_size=args.batch_size,
            workers=args.workers,
        )
    except FileNotFoundError as exc:
        print(f"load: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(report.summary(), file=sys.stderr)
        print(
            "Interrupted: what was committed stays; run the same command again to complete the load.", file=sys.stderr
        )
        return 130
    finally:
        context.store.close()
    print(report.summary())
    return 1 if report.failures else 0


def _reindex(args: argparse.Namespace, cfg: Config) -> int:
    """``reindex [--type T]``: rebuild the search index rows from the current resources."""
    context = create_app(cfg).extensions["bigmed"]
    try:
        if args.type and args.type not in context.registry.resource_types():
            print(f"reindex: unknown resource type '{args.type}'", file=sys.stderr)
            return 2
        total = count_current(context.store, args.type)
        workers = args.workers
        if workers is None:  # extraction in worker processes pays off for large stores only
            workers = min(4, (os.cpu_count() or 1) - 1) if total >= 20_000 else 0
        with tqdm(total=total, unit="res", desc="reindex", disable=args.quiet) as bar:
            done = reindex(
                context.store, context.registry, args.type, batch=args.batch_size, progress=bar.update, workers=workers
            )
    finally:
        context.store.close()
    print(f"reindexed {done} of {total} current {args.type or 'resources'}")
    return 0


def _ingest_vcf(args: argparse.Namespace, cfg: Config) -> int:
    """``ingest-vcf FILE --patient ID …``: all or nothing; exit 1 with the file and line on bad input."""
    context = create_app(cfg).extensions["bigmed"]
    try:
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
    except FhirError as err:
        print(f"ingest-vcf: {err.message}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("ingest-vcf: interrupted; nothing was stored", file=sys.stderr)
        return 130
    finally:
        context.store.close()
    print(result.summary())
    return 0


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
    return 2
