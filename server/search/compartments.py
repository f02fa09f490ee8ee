"""Compartments (http://hl7.org/fhir/R4/compartmentdefinition.html, search.html "compartments").

The five R4 CompartmentDefinitions, vendored compactly in ``data/compartments-r4.json``
(generated from the official definitions by ``scripts/gen_compartments.py``; CC0-1.0): for each
compartment (its owner type) the resource types that can be in it and the reference search
parameters that put them there. ``/fhir/Patient/123/Observation?…`` is an Observation search
restricted to Observations whose ``subject`` or ``performer`` references Patient/123. The owner
resource itself is in its own compartment (``{def}``), as the spec states.
"""

from __future__ import annotations

import functools
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from types import MappingProxyType

from server import jsonio

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
    out = {
        code: Compartment(code, str(c["url"]), MappingProxyType({t: tuple(p) for t, p in c["resources"].items()}))
        for code, c in doc["compartments"].items()
    }
    return MappingProxyType(out)
