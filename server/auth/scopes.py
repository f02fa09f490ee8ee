"""SMART scopes, v1 and v2 syntax (https://hl7.org/fhir/smart-app-launch/scopes-and-launch-context.html).

A scope is ``context/Type.permissions``: context ``system``, ``patient`` or ``user``; Type a
resource type or ``*``; permissions either v1 (``read``, ``write``, ``*``) or v2 letters in
order ``c r u d s`` (create, read, update, delete, search). v2 scopes may carry a query
(``?category=laboratory``, SMART v2 "finer-grained resource constraints"): this server does not
support them — rather than grant nothing silently, the token endpoint refuses a request naming
one with ``invalid_scope`` and ``clients add`` refuses to register one
(:func:`granular_refusal` says so, naming the scope without its query). They still parse, and a
:class:`Grant` never lets a scope with a query allow anything (deny by default).

Interactions map to letters: create -> c; read, vread, history -> r; update, patch -> u;
delete -> d; search (and ``_include``d results) -> s. v1 ``read`` = ``rs``, ``write`` = ``cud``.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass

__all__ = ["PERMISSIONS", "Grant", "Scope", "ScopeError", "granular_refusal", "parse_scope", "parse_scopes"]

PERMISSIONS = "cruds"
_V1 = {"read": "rs", "write": "cud", "*": "cruds"}
_SCOPE_RE = re.compile(r"^(system|patient|user)/(\*|[A-Z][A-Za-z]+)\.([a-z*]+)(\?.*)?$")


class ScopeError(ValueError):
    """A scope string that is not a SMART resource scope."""


@dataclass(frozen=True, order=True)
class Scope:
    context: str
    resource_type: str
    permissions: str  # a subset of "cruds", in that order
    query: str | None = None

    def __str__(self) -> str:
        return f"{self.context}/{self.resource_type}.{self.permissions}{self.query or ''}"

    def covers(self, context: str, resource_type: str) -> bool:
        return self.context == context and self.resource_type in ("*", resource_type)


def _letters(perms: str) -> str:
    if perms in _V1:
        return _V1[perms]
    if not perms or any(c not in PERMISSIONS for c in perms):
        raise ScopeError(f"unknown permissions '{perms}' (use read, write, * or letters of cruds)")
    if list(perms) != sorted(perms, key=PERMISSIONS.index) or len(set(perms)) != len(perms):
        raise ScopeError(f"permissions '{perms}' must be in the order c r u d s, each once")
    return perms


def parse_scope(text: str) -> Scope:
    m = _SCOPE_RE.match(text)
    if not m:
        raise ScopeError(f"'{text}' is not a SMART resource scope like system/Observation.rs")
    context, resource_type, perms, query = m.groups()
    if query is not None and perms in _V1:
        raise ScopeError(f"'{text}': only v2 scopes may carry a query")
    return Scope(context, resource_type, _letters(perms), query)


def granular_refusal(scopes: Iterable[str]) -> str:
    """Why scopes with a query (``system/Observation.rs?category=laboratory``) are refused."""
    named = list(scopes)
    plain = ", ".join(dict.fromkeys(s.split("?", 1)[0] for s in named))
    return (
        f"{', '.join(named)}: SMART v2 scopes with query parameters are not supported by this server; "
        f"ask for {plain} without the query (all resources of the type)"
    )


def parse_scopes(
    text: str, *, ignore: Iterable[str] = ("openid", "fhirUser", "offline_access", "launch")
) -> list[Scope]:
    """Parse a space-separated scope list; non-resource scopes in ``ignore`` are skipped."""
    skip = set(ignore)
    return [parse_scope(part) for part in text.split() if part not in skip and not part.startswith("launch/")]


@dataclass(frozen=True)
class Grant:
    """The scopes a token carries, and what they allow."""

    scopes: tuple[Scope, ...]

    @classmethod
    def of(cls, text: str) -> Grant:
        return cls(tuple(parse_scopes(text)))

    def allows(self, resource_type: str, permission: str, context: str | None = None) -> bool:
        """True when some scope (without a query) grants ``permission`` on ``resource_type``."""
        return any(
            permission in s.permissions
            and s.query is None
            and s.resource_type in ("*", resource_type)
            and (context is None or s.context == context)
            for s in self.scopes
        )

    def intersect(self, requested: Iterable[Scope]) -> Grant:
        """What of ``requested`` these (registered) scopes allow: requested ∩ registered."""
        merged: dict[tuple[str, str, str | None], set[str]] = {}
        for req in requested:
            for reg in self.scopes:
                if reg.context != req.context or reg.query is not None:
                    continue
                if reg.resource_type not in ("*", req.resource_type) and req.resource_type != "*":
                    continue
                resource_type = req.resource_type if reg.resource_type == "*" else reg.resource_type
                perms = "".join(c for c in PERMISSIONS if c in req.permissions and c in reg.permissions)
                if perms:
                    merged.setdefault((req.context, resource_type, req.query), set()).update(perms)
        return Grant(
            tuple(
                sorted(
                    Scope(ctx, rt, "".join(c for c in PERMISSIONS if c in letters), query)
                    for (ctx, rt, query), letters in merged.items()
                )
            )
        )

    def __str__(self) -> str:
        return " ".join(str(s) for s in self.scopes)
