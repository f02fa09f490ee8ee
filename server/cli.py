"""Command line: ``python -m server serve …`` (other subcommands arrive with their features).

``serve`` runs Flask's threaded development server by default, or gunicorn with
``--workers N`` (each worker builds its own app and connections through ``create_app``).
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from typing import Any

from gunicorn.app.base import BaseApplication

from server import create_app
from server.config import Config

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


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m server", description="BigMed FHIR R4 server")
    sub = parser.add_subparsers(dest="command", required=True)
    serve = sub.add_parser("serve", help="serve the HTTP API (FHIR at /fhir)")
    serve.add_argument("--host", default="127.0.0.1")
    serve.add_argument("--port", type=int, default=8080)
    serve.add_argument("--workers", type=int, default=0, help="gunicorn worker processes (0: Flask dev server)")
    serve.add_argument("--threads", type=int, default=1, help="threads per gunicorn worker")
    serve.add_argument("--access-log", action="store_true", help="log every request (gunicorn)")
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
    return 2
