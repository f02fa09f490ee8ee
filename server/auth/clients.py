"""The SMART client registry, stored in the database (table ``auth_client``, ``server/store/schema.py``).

SMART Backend Services (https://hl7.org/fhir/smart-app-launch/backend-services.html#registering-a-smart-backend-service-communicating-public-keys)
registers each client out of band with its public keys, either a JWK Set (``--jwks FILE``) or
the URL where it publishes one (``--jwks-url URL``), and the most it may ever be granted
(``--scopes``). ``--patient ID`` makes it a patient-level client: every token it gets sees only
that patient's compartment (:mod:`server.auth.access`). ``revoke`` is immediate: tokens already
issued stop working at their next use (the registry is read on every request), and a revoked
id cannot be registered again (the trail stays unambiguous). ``add --replace`` rotates the keys
or changes the scopes of an active client.

Only ``WriteTx.execute_many`` and ``Store.query`` are used: no store Protocol change.
"""

from __future__ import annotations

import json
import re
import time
from dataclasses import dataclass
from typing import Any

from server.auth.jose import JwtError, check_jwks
from server.auth.scopes import Grant, ScopeError, granular_refusal
from server.store.base import Store

__all__ = ["PURPOSES", "Client", "ClientError", "add_client", "get_client", "list_clients", "revoke_client"]

_ID_RE = re.compile(r"^[A-Za-z0-9._~-]{1,128}$")
_COLUMNS = "client_id, jwks, jwks_url, scopes, patient, status, created, revoked, purpose"
PURPOSES = ("treatment", "research")


class ClientError(ValueError):
    """A registration that cannot be made (the message says why)."""


@dataclass(frozen=True)
class Client:
    client_id: str
    scopes: str
    jwks: dict[str, Any] | None = None
    jwks_url: str | None = None
    patient: str | None = None
    status: str = "active"
    created: float = 0.0
    revoked: float | None = None
    purpose: str = "treatment"  # research: population operations leave out patients who denied research use

    @property
    def active(self) -> bool:
        return self.status == "active"

    @property
    def grant(self) -> Grant:
        return Grant.of(self.scopes)

    def summary(self) -> str:
        keys = f"jwks-url {self.jwks_url}" if self.jwks_url else f"{len((self.jwks or {}).get('keys', []))} key(s)"
        patient = f", patient {self.patient}" if self.patient else ""
        return f"{self.client_id}\t{self.status}\t{self.purpose}\t{keys}{patient}\t{self.scopes}"


def _row(row: tuple[Any, ...]) -> Client:
    client_id, jwks, jwks_url, scopes, patient, status, created, revoked, purpose = row
    return Client(
        str(client_id),
        str(scopes),
        json.loads(jwks) if jwks else None,
        jwks_url,
        patient,
        str(status),
        float(created),
        None if revoked is None else float(revoked),
        str(purpose),
    )


def get_client(store: Store, client_id: str) -> Client | None:
    rows = store.query(f"SELECT {_COLUMNS} FROM auth_client WHERE client_id = ?", (client_id,))
    return _row(rows[0]) if rows else None


def list_clients(store: Store) -> list[Client]:
    return [_row(r) for r in store.query(f"SELECT {_COLUMNS} FROM auth_client ORDER BY client_id")]


def _check(
    client_id: str, scopes: str, jwks: Any, jwks_url: str | None, patient: str | None
) -> tuple[str, dict[str, Any] | None]:
    if not _ID_RE.match(client_id):
        raise ClientError("a client id is 1-128 letters, digits or . _ ~ -")
    if (jwks is None) == (jwks_url is None):
        raise ClientError("give exactly one of a JWK Set (--jwks) or a JWKS URL (--jwks-url)")
    if jwks_url is not None and not re.match(r"^https?://[^\s/]+", jwks_url):
        raise ClientError(f"'{jwks_url}' is not an http(s) URL")
    try:
        grant = Grant.of(scopes)
    except ScopeError as exc:
        raise ClientError(str(exc)) from None
    if not grant.scopes:
        raise ClientError("register at least one resource scope, e.g. system/Observation.rs")
    granular = [str(s) for s in grant.scopes if s.query is not None]
    if granular:
        raise ClientError(granular_refusal(granular))
    if patient is not None and not re.match(r"^[A-Za-z0-9\-.]{1,64}$", patient):
        raise ClientError(f"'{patient}' is not a resource id")
    checked = None
    if jwks is not None:
        try:
            checked = check_jwks(jwks, "the JWK Set")
        except JwtError as exc:
            raise ClientError(str(exc)) from None
        if not checked["keys"]:
            raise ClientError("the JWK Set has no keys")
    return str(grant), checked


def add_client(
    store: Store,
    client_id: str,
    *,
    scopes: str,
    jwks: Any = None,
    jwks_url: str | None = None,
    patient: str | None = None,
    purpose: str = "treatment",
    replace: bool = False,
) -> Client:
    """Register (or with ``replace``, re-register an active) client; :class:`ClientError` when refused."""
    normal, checked = _check(client_id, scopes, jwks, jwks_url, patient)
    if purpose not in PURPOSES:
        raise ClientError(f"purpose must be one of {', '.join(PURPOSES)}")
    jwks_text = json.dumps(checked, sort_keys=True) if checked is not None else None
    now = time.time()
    with store.transaction() as tx:
        tx.lock(f"auth_client/{client_id}")
        found = tx.query("SELECT status FROM auth_client WHERE client_id = ?", (client_id,))
        if found and found[0][0] != "active":
            raise ClientError(f"client '{client_id}' was revoked; register it under a new id")
        if found and not replace:
            raise ClientError(f"client '{client_id}' is already registered (use --replace to change it)")
        if found:
            tx.execute_many(
                "UPDATE auth_client SET jwks = ?, jwks_url = ?, scopes = ?, patient = ?, purpose = ? "
                "WHERE client_id = ?",
                [(jwks_text, jwks_url, normal, patient, purpose, client_id)],
            )
        else:
            tx.execute_many(
                f"INSERT INTO auth_client ({_COLUMNS}) VALUES (?, ?, ?, ?, ?, 'active', ?, NULL, ?)",
                [(client_id, jwks_text, jwks_url, normal, patient, now, purpose)],
            )
    client = get_client(store, client_id)
    assert client is not None
    return client


def revoke_client(store: Store, client_id: str) -> bool:
    """Revoke an active client; False when there is none of that id (or it was revoked already)."""
    with store.transaction() as tx:
        tx.lock(f"auth_client/{client_id}")
        found = tx.query("SELECT status FROM auth_client WHERE client_id = ?", (client_id,))
        if not found or found[0][0] != "active":
            return False
        tx.execute_many(
            "UPDATE auth_client SET status = 'revoked', revoked = ? WHERE client_id = ?", [(time.time(), client_id)]
        )
    return True
