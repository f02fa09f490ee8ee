"""``python -m server clients add|list|revoke``: the SMART client registry from the command line.

Registration out of band, as SMART Backend Services expects
(https://hl7.org/fhir/smart-app-launch/backend-services.html#registering-a-smart-backend-service-communicating-public-keys);
the registry itself is :mod:`server.auth.clients`. Wired into ``server/cli.py``.
"""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any

from server.auth.clients import PURPOSES, ClientError, add_client, list_clients, revoke_client
from server.config import Config
from server.store import open_store

__all__ = ["add_parser", "run"]


def add_parser(sub: Any) -> None:
    cmd = sub.add_parser("clients", help="register, list and revoke SMART backend clients")
    actions = cmd.add_subparsers(dest="action", required=True)
    add = actions.add_parser("add", help="register a client with its public keys and the scopes it may get")
    add.add_argument("--id", required=True, help="the client id (the iss and sub of its assertions)")
    keys = add.add_mutually_exclusive_group(required=True)
    keys.add_argument("--jwks", metavar="FILE", help="a JSON file holding the client's public JWK Set")
    keys.add_argument("--jwks-url", metavar="URL", help="where the client publishes its JWK Set")
    add.add_argument("--scopes", required=True, help='e.g. "system/Patient.rs system/Observation.rs"')
    add.add_argument("--patient", metavar="ID", help="patient-level client: only this patient's compartment")
    add.add_argument("--purpose", choices=PURPOSES, default="treatment", help="research clients honour Consent denials")
    add.add_argument("--replace", action="store_true", help="change an existing client (key rotation, scopes)")
    actions.add_parser("list", help="list the registered clients")
    revoke = actions.add_parser("revoke", help="revoke a client: its tokens stop working at once")
    revoke.add_argument("id")


def run(args: argparse.Namespace, cfg: Config) -> int:
    store = open_store(cfg.database_url, pool_size=2)
    try:
        if args.action == "list":
            for client in list_clients(store):
                print(client.summary())
            return 0
        if args.action == "revoke":
            if not revoke_client(store, args.id):
                print(f"clients revoke: no active client '{args.id}'", file=sys.stderr)
                return 1
            print(f"revoked {args.id}")
            return 0
        jwks = None
        if args.jwks:
            try:
                with open(args.jwks, encoding="utf-8") as fh:
                    jwks = json.load(fh)
            except (OSError, ValueError) as exc:
                print(f"clients add: cannot read the JWK Set {args.jwks}: {exc}", file=sys.stderr)
                return 1
        try:
            client = add_client(
                store,
                args.id,
                scopes=args.scopes,
                jwks=jwks,
                jwks_url=args.jwks_url,
                patient=args.patient,
                purpose=args.purpose,
                replace=args.replace,
            )
        except ClientError as exc:
            print(f"clients add: {exc}", file=sys.stderr)
            return 1
        print(f"registered {client.summary()}")
        return 0
    finally:
        store.close()
