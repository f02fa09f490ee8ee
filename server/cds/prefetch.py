"""CDS Hooks prefetch (https://cds-hooks.hl7.org/2.0/#providing-fhir-resources-to-a-cds-service).

A service's discovery entry names prefetch templates (``Observation?patient={{context.patientId}}``).
For each key of the service, in order:

1. **What the client sent is honoured**: a resource or Bundle is used as is; a ``null`` value means
   the client found no data (#prefetch-template: a read that found nothing) and is used as "none",
   not fetched again.
2. An **OperationOutcome** value (the client failed to prefetch, #prefetch-template) or a key the
   client did not send is **fetched** from ``fhirServer`` with the ``fhirAuthorization`` bearer
   token (``requests``, connect/read timeouts from ``BIGMED_CDS_FETCH_TIMEOUT_MS``). When
   ``fhirServer`` is this server, its own store is read in-process (no HTTP round trip); with
   ``BIGMED_AUTH=smart`` only as far as the scopes of ``fhirAuthorization`` allow (the token's
   scopes are enforced as for any client), and not at all without one.
3. A key that cannot be had (no ``fhirServer``, a fetch error, scopes missing) is ``None`` with a
   note; when the service marked it required the call fails with **412** and an OperationOutcome
   naming the keys and why (:class:`server.errors.PreconditionFailed`).

Tokens (#prefetch-tokens): ``{{context.<field>}}`` (string fields of the hook context),
``{{userPractitionerId}}``, ``{{userPractitionerRoleId}}``, ``{{userPatientId}}``,
``{{userRelatedPersonId}}`` (from ``context.userId``). A template whose token has no value is not
fetched. Searches read the first page only (``_count`` in the template decides its size).
"""

from __future__ import annotations

import logging
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol
from urllib.parse import parse_qsl, urlsplit

import requests

from server import jsonio
from server.auth.access import Access, reset_access, set_access
from server.errors import FhirError, Gone, NotFound, PreconditionFailed
from server.fhir import crud
from server.fhir.context import FhirContext
from server.fhir.search import search

__all__ = ["FetchError", "Fetcher", "HttpFetcher", "OwnStoreFetcher", "Resolved", "render", "resolve"]

log = logging.getLogger(__name__)
_TOKEN = re.compile(r"\{\{\s*([A-Za-z0-9_.]+)\s*\}\}")
_USER_TOKENS = {
    "userPractitionerId": "Practitioner",
    "userPractitionerRoleId": "PractitionerRole",
    "userPatientId": "Patient",
    "userRelatedPersonId": "RelatedPerson",
}


class FetchError(Exception):
    """A prefetch query that could not be answered (the message says why)."""


class Fetcher(Protocol):
    def fetch(self, query: str) -> dict[str, Any] | None:
        """The resource (read) or Bundle (search) of a relative FHIR query; None when a read finds nothing."""


def render(template: str, context: Mapping[str, Any]) -> str | None:
    """The template with its tokens replaced, or None when one has no value."""
    missing = False

    def value(match: re.Match[str]) -> str:
        nonlocal missing
        name = match.group(1)
        if name.startswith("context."):
            found = context.get(name[len("context.") :])
            if isinstance(found, str | int) and str(found):
                return str(found)
        elif name in _USER_TOKENS:
            user = str(context.get("userId") or "")
            kind, _, ident = user.partition("/")
            if kind == _USER_TOKENS[name] and ident:
                return ident
        missing = True
        return ""

    out = _TOKEN.sub(value, template)
    return None if missing else out


def _split(query: str) -> tuple[str, str | None, list[tuple[str, str]]]:
    """(type, id or None, search params) of ``Type/id`` or ``Type?params``."""
    parts = urlsplit(query)
    path = parts.path.strip("/")
    type_, _, id_ = path.partition("/")
    if not re.fullmatch(r"[A-Z][A-Za-z]+", type_ or "") or "/" in id_:
        raise FetchError(f"prefetch query '{query}' is not Type/id or Type?params")
    return type_, id_ or None, parse_qsl(parts.query, keep_blank_values=True)


@dataclass
class OwnStoreFetcher:
    """Reads this server's own store (``fhirServer`` is us) through the interactions (:mod:`server.fhir`),
    as ``access`` (the client of the ``fhirAuthorization`` token: its scopes and patient compartment
    are enforced by :mod:`server.fhir.guard`); ``access`` None = the caller's own (open auth)."""

    ctx: FhirContext
    fhir_base: str
    access: Access | None = None

    def fetch(self, query: str) -> dict[str, Any] | None:
        type_, id_, params = _split(query)
        token = set_access(self.access) if self.access is not None else None
        try:
            if id_ is not None:
                try:
                    res = crud.read(self.ctx, type_, id_)
                except (NotFound, Gone):
                    return None
                assert res.content is not None
                return dict(jsonio.loads(res.content))
            bundle = search(self.ctx, self.fhir_base, type_, params)
            return dict(jsonio.loads(jsonio.dumps(bundle)))  # stored entries are pre-serialised fragments
        except FhirError as err:
            raise FetchError(err.message) from err
        finally:
            if token is not None:
                reset_access(token)


@dataclass
class HttpFetcher:
    """GET ``{fhirServer}/{query}`` with the bearer token of ``fhirAuthorization``."""

    server: str
    token: str | None
    timeout: float
    session: requests.Session = field(default_factory=requests.Session)

    def fetch(self, query: str) -> dict[str, Any] | None:
        headers = {"Accept": "application/fhir+json"}
        if self.token:
            headers["Authorization"] = f"Bearer {self.token}"
        url = f"{self.server.rstrip('/')}/{query.lstrip('/')}"
        try:
            resp = self.session.get(url, headers=headers, timeout=(self.timeout, self.timeout))
        except requests.RequestException as exc:
            raise FetchError(f"GET {url} failed: {type(exc).__name__}") from exc
        if resp.status_code in (404, 410) and "?" not in query:
            return None
        if resp.status_code != 200:
            raise FetchError(f"GET {url} answered {resp.status_code}")
        try:
            body = resp.json()
        except ValueError as exc:
            raise FetchError(f"GET {url} did not answer JSON") from exc
        if not isinstance(body, dict) or body.get("resourceType") == "OperationOutcome":
            raise FetchError(f"GET {url} did not answer a resource")
        return body


@dataclass
class Resolved:
    values: dict[str, Any]
    notes: list[str]
    fetched: list[str]


def resolve(
    templates: Mapping[str, str],
    sent: Mapping[str, Any] | None,
    context: Mapping[str, Any],
    fetcher: Fetcher | None,
    required: tuple[str, ...] = (),
    why_no_fetcher: str = "the request has no fhirServer",
) -> Resolved:
    """Every prefetch key of a service resolved (module docstring); 412 when a required one is missing."""
    sent = sent or {}
    values: dict[str, Any] = {}
    notes: list[str] = []
    fetched: list[str] = []
    problems: dict[str, str] = {}
    for key, template in templates.items():
        if key in sent:
            value = sent[key]
            if value is None:
                values[key] = None
                continue
            if isinstance(value, dict) and value.get("resourceType") not in (None, "OperationOutcome"):
                values[key] = value
                continue
            if not isinstance(value, dict):
                problems[key] = "the client sent a value that is not a FHIR resource"
                values[key] = None
                continue
            # OperationOutcome: the client could not prefetch it; try ourselves
        query = render(template, context)
        if query is None:
            problems[key] = "the template's tokens have no value in the context"
            values[key] = None
            continue
        if fetcher is None:
            problems[key] = why_no_fetcher
            values[key] = None
            continue
        try:
            values[key] = fetcher.fetch(query)
            fetched.append(key)
        except FetchError as exc:
            problems[key] = str(exc)
            values[key] = None
    for key, why in problems.items():
        notes.append(f"prefetch '{key}' unavailable: {why}")
    missing = [k for k in required if k in problems]
    if missing:
        raise PreconditionFailed(
            "Required prefetch data could not be had: "
            + "; ".join(f"'{k}': {problems[k]}" for k in missing)
            + ". Send it as prefetch, or send fhirServer and fhirAuthorization so this service can fetch it."
        )
    return Resolved(values, notes, fetched)
