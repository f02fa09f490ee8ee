"""``_summary`` and ``_elements`` (http://hl7.org/fhir/R4/search.html#summary, #elements).

``_summary=true`` keeps the top-level elements the specification marks ``isSummary``;
``text`` keeps ``text``, ``id``, ``meta`` and mandatory elements; ``data`` drops ``text``;
``false`` returns everything. ``_elements`` keeps the listed top-level elements plus the
mandatory ones. A subsetted resource is tagged ``SUBSETTED`` (v3-ObservationValue) as the
spec asks. Nested elements of a kept element are kept whole. The element lists are generated
from the R4 StructureDefinitions by scripts/gen_summary_elements.py.
"""

from __future__ import annotations

import json
from collections.abc import Collection
from functools import cache
from pathlib import Path
from typing import Any

from server.errors import BadRequest

__all__ = ["SUMMARY_VALUES", "subset"]

SUMMARY_VALUES = ("true", "text", "data", "count", "false")
_DATA = Path(__file__).with_name("data") / "summary-elements.json"
_SUBSETTED = {"system": "http://terminology.hl7.org/CodeSystem/v3-ObservationValue", "code": "SUBSETTED"}
_ALWAYS = ("resourceType", "id", "meta")


@cache
def _elements() -> dict[str, dict[str, list[str]]]:
    data: dict[str, dict[str, list[str]]] = json.loads(_DATA.read_text())["types"]
    return data


def _base_name(key: str, names: Collection[str]) -> str | None:
    """The element name a JSON key belongs to (choice types: valueQuantity -> value; _x -> x)."""
    key = key.lstrip("_")
    if key in names:
        return key
    for i in range(len(key) - 1, 0, -1):
        if key[i].isupper() and key[:i] in names:
            return key[:i]
    return None


def _keep(resource: dict[str, Any], names: Collection[str]) -> dict[str, Any]:
    out = {k: v for k, v in resource.items() if k in _ALWAYS or _base_name(k, names) is not None}
    meta = dict(out.get("meta") or {})
    meta["tag"] = [*meta.get("tag", []), _SUBSETTED]
    out["meta"] = meta
    return out


def subset(resource: dict[str, Any], summary: str | None, elements: list[str] | None) -> dict[str, Any]:
    """The resource as ``_summary``/``_elements`` ask (the input is not modified)."""
    if summary not in (None, "false", "count") and summary not in SUMMARY_VALUES:
        raise BadRequest(f"_summary must be one of {', '.join(SUMMARY_VALUES)}, not '{summary}'")
    info = _elements().get(resource.get("resourceType", ""), {"summary": [], "mandatory": []})
    if summary == "true":
        return _keep(resource, set(info["summary"]))
    if summary == "text":
        return _keep(resource, {"text", *info["mandatory"]})
    if summary == "data":
        kept = _keep(resource, set(resource) - {"text"})
        kept.pop("text", None)
        return kept
    if elements:
        return _keep(resource, {*elements, *info["mandatory"]})
    return resource
