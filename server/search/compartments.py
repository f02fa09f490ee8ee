"""Compartments (http://hl7.org/fhir/R4/compartmentdefinition.html, search.html "compartments").

The five R4 CompartmentDefinitions, vendored compactly in ``data/compartments-r4.json``
(generated from the official definitions by ``scripts/gen_compartments.py``; CC0-1.0): for each
compartment (its owner type) the resource types that can be in it and the reference search
parameters that put them there. ``/fhir/Patient/123/Observation?…`` is an Observation search
restricted to Observations whose ``subject`` or ``performer`` references Patient/123. The owner
resource itself is in its own compartment (``{def}``), as the spec states.

A linking parameter that is another one narrowed to one target type (``Registry.narrowings``:
Condition's ``patient`` is ``subject.where(resolve() is Patient)``) has no reference rows of its
own, so it is listed as its source (``subject``): membership always requires the owner's type as
the reference's target type, which is exactly the narrowing. One narrowed to another type than
the owner's never links to it and is left out.
"""

from __future__ import annotations

import functools
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from types import MappingProxyType

from server import jsonio
from server.search.registry import Registry, default_registry

__all__ = ["DATA_PATH", "SELF", "Compartment", "compartments"]

DATA_PATH = Path(__file__).resolve().parent / "data" / "compartments-r4.json"
#: The CompartmentDefinition marker for "the owner resource itself".
SELF = "{def}"


@dataclass(frozen=True)
class Compartment:
    """One compartment: owner type, canonical url, member types -> linking parameters."""

    code: str
    url: str
    members: Mapping[str, tuple[str, ...]]

    def params_for(self, resource_type: str) -> tuple[str, ...]:
        """The parameters linking ``resource_type`` to the owner (empty: not in the compartment)."""
        params = self.members.get(resource_type, ())
        if resource_type == self.code and SELF not in params:
            params = (*params, SELF)
        return params


@functools.cache
def compartments() -> Mapping[str, Compartment]:
    """The R4 compartments by owner type (loaded once)."""
    doc = jsonio.loads(DATA_PATH.read_bytes())
    registry = default_registry()
    out = {
        code: Compartment(
            code,
            str(c["url"]),
            MappingProxyType({t: _linking(registry, code, t, p) for t, p in c["resources"].items()}),
        )
        for code, c in doc["compartments"].items()
    }
    return MappingProxyType(out)


def _linking(registry: Registry, owner: str, resource_type: str, params: list[str]) -> tuple[str, ...]:
    """The parameters whose reference rows link ``resource_type`` to an ``owner`` (see the module doc)."""
    out: list[str] = []
    for code in params:
        narrowed = registry.narrowing(resource_type, code) if code != SELF else None
        if narrowed is None:
            out.append(code)
        elif narrowed[1] == owner:
            out.append(narrowed[0].code)
    return tuple(dict.fromkeys(out))
