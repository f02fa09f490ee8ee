"""Validation of every resource the server writes (http://hl7.org/fhir/R4/validation.html).

Two validators, one result shape (:class:`profiles.validate.Issue`, FHIRPath locations):

- :func:`profiles.validate.validate_structure`, the official R4 StructureDefinitions, first and
  for every resource: it is fast (tens of µs) and stricter than the models, which accept e.g.
  ``"yes"`` for a boolean, ``"1.0"`` for a decimal, empty arrays and JSON text in place of an
  object;
- then, when that found nothing, the fhir.resources R4B pydantic models, for the R4 types R4B
  carries with their R4 shape (the clinical and genomic resources; see DESIGN.md "FHIR
  version"). The R4 StructureDefinitions alone cover the R4 types R4B lacks
  (MedicinalProduct*, Substance{Specification,NucleicAcid,Polymer,Protein,
  ReferenceInformation,SourceMaterial}, EffectEvidenceSynthesis, RiskEvidenceSynthesis), the
  two R4B reshaped (Evidence, EvidenceVariable), for any resource that nests one of those (a
  Bundle entry, a contained resource), and whenever the R4B models fail with something other
  than a validation error.

Validation only inspects the parsed JSON: nothing is serialised back (the models' dump is not
faithful; the store keeps what the client sent). Model classes are looked up once per type.
``lenient=True`` turns missing-required-element issues into warnings (some official R4 examples,
e.g. Questionnaire-qs1, omit required elements); every other issue stays an error.
"""

from __future__ import annotations

import functools
import json
import logging
import re
from collections.abc import Iterable, Sequence
from decimal import Decimal
from typing import Any

from fhir.resources.R4B import fhirtypes, get_fhir_model_class
from pydantic import ValidationError

from profiles.validate import Issue, nested_resources, r4_resource_types, validate_structure

__all__ = [
    "R4B",
    "R4B_INCOMPATIBLE",
    "R4_STRUCTURE_DEFINITION",
    "Issue",
    "preload_models",
    "resource_types",
    "validate_resource",
    "validated_by",
]

log = logging.getLogger(__name__)

#: R4 types whose R4B model has another shape than R4 (validated with the R4 definitions)
R4B_INCOMPATIBLE = frozenset({"Evidence", "EvidenceVariable"})
R4B = "fhir.resources R4B"
R4_STRUCTURE_DEFINITION = "R4 StructureDefinition"

_SHOW = 60
_MODELS: dict[str, Any] = {}  # resource type -> R4B model class, or None when R4B can't be used
_CHOICE_MISSING = "Expect any of field value from this list"
_CHOICE_MULTIPLE = "but got multiple"
_ESCAPES = str.maketrans({"\r": "\\r", "\n": "\\n", "\t": "\\t"})  # regexes quoted in messages
_NAMES = re.compile(r"\[([^\]]*)\]")
#: pydantic / fhir_core error types meaning "a JSON object was expected here"
_NOT_AN_OBJECT = frozenset(
    {
        "model_type",
        "model_attributes_type",
        "dict_type",
        "model_validation_format",
        "json_invalid",
        "json_type",
    }
)


def resource_types() -> frozenset[str]:
    """Every R4 resource type the server serves (all concrete R4 4.0.1 types)."""
    return r4_resource_types()


@functools.cache
def _in_r4b(resource_type: str) -> bool:
    """True when an R4 type is validated with its R4B model (checked without importing it)."""
    return (
        resource_type in r4_resource_types()
        and resource_type not in R4B_INCOMPATIBLE
        and hasattr(fhirtypes, resource_type + "Type")
    )


def _model(resource_type: str) -> Any:
    """The R4B model class for an R4 type, or None when the R4 StructureDefinitions are used.

    A model module is imported on first use (0.1-0.3 s each); :func:`preload_models` does them all.
    """
    try:
        return _MODELS[resource_type]
    except KeyError:
        pass
    model = None
    if _in_r4b(resource_type):
        try:
            model = get_fhir_model_class(resource_type)
        except ValueError:  # not a model after all: the R4 definitions will do
            log.warning("fhir.resources R4B has no model for %s", resource_type)
    _MODELS[resource_type] = model
    return model


def preload_models() -> None:
    """Import every R4B model the validator uses (a few seconds), e.g. before forking workers."""
    for resource_type in sorted(r4_resource_types()):
        _model(resource_type)


def validated_by(resource_type: str) -> str:
    """Which validator checks ``resource_type`` (stated in the CapabilityStatement)."""
    if resource_type not in r4_resource_types():
        raise ValueError(f"Unknown R4 resource type '{resource_type}'")
    return R4B if _in_r4b(resource_type) else R4_STRUCTURE_DEFINITION


def validate_resource(resource: dict[str, Any], *, lenient: bool = False, models: bool = True) -> list[Issue]:
    """Validate one parsed R4 resource; returns every issue found (none: valid).

    ``models=False`` skips the R4B model pass (the bulk loader's default: the R4 definitions
    alone cost about a fifth of both passes; see server/fhir/load.py).
    """
    if not isinstance(resource, dict):
        return [Issue("error", "structure", "A resource must be a JSON object", ())]
    resource_type = resource.get("resourceType")
    if resource_type is None:
        return [Issue("error", "required", "Missing resourceType", ("resourceType",))]
    if not isinstance(resource_type, str) or resource_type not in r4_resource_types():
        shown = f"'{resource_type}'" if isinstance(resource_type, str) else _show(resource_type)
        return [Issue("error", "not-supported", f"Unknown resource type {shown}", ("resourceType",))]
    issues = validate_structure(resource)
    model = _model(resource_type) if models and _in_r4b(resource_type) else None
    if model is not None and not issues and _r4b_covers_nested(resource):
        issues = _validate_r4b(model, resource_type, resource)
    if lenient:
        issues = [Issue("warning", i.code, i.diagnostics, i.expression) if i.code == "required" else i for i in issues]
    return issues


def _r4b_covers_nested(resource: dict[str, Any]) -> bool:
    """True when every nested resource (contained, Bundle entries …) has an R4B model too."""
    try:
        for _, nested in nested_resources(resource):
            nested_type = nested.get("resourceType") if isinstance(nested, dict) else None
            if not isinstance(nested_type, str) or not _in_r4b(nested_type):
                return False
    except RecursionError:  # hostile nesting: the R4 definitions report it
        return False
    return True


def _validate_r4b(model: Any, resource_type: str, resource: dict[str, Any]) -> list[Issue]:
    try:
        model.model_validate(resource)
    except ValidationError as exc:
        return [_issue(resource_type, error) for error in exc.errors(include_url=False)]
    except Exception:  # the models fail on some malformed input (TypeError, KeyError …)
        log.debug("R4B model failed on a %s; using the R4 definitions", resource_type, exc_info=True)
        return validate_structure(resource)
    return []


# ---------------------------------------------------------------------------------------------
# pydantic error -> Issue


def _show(value: Any) -> str:
    if isinstance(value, Decimal):
        text = str(value)
    else:
        try:
            text = json.dumps(value, default=str, ensure_ascii=False)
        except ValueError:  # circular
            text = repr(value)
    return text if len(text) <= _SHOW else text[: _SHOW - 3] + "..."


def _expression(resource_type: str, loc: Sequence[int | str], *, unknown: bool = False) -> str:
    """FHIRPath of a pydantic ``loc``: ('name', 0, 'family') -> ``Patient.name[0].family``.

    ``_x`` siblings of primitives become ``x`` (their id and extensions are the primitive's),
    except an ``unknown`` last step, which is the client's own property name; ``root`` (added by
    fhir_core's validators) is dropped and ``resource_type`` is ``resourceType``.
    """
    parts = [resource_type]
    last = len(loc) - 1 if unknown else -1
    for index, step in enumerate(loc):
        if isinstance(step, int):
            parts.append(f"[{step}]")
        elif step == "root":
            continue
        elif step == "resource_type":
            parts.append(".resourceType")
        elif step[:1] == "_" and index != last:
            parts.append("." + step[1:])
        else:
            parts.append("." + step)
    return "".join(parts)


def _choice_names(message: str) -> list[str]:
    found = _NAMES.search(message)
    if found is None:
        return []
    return [name.strip().strip("'\"") for name in found.group(1).split(",") if name.strip()]


def _choice_base(names: Iterable[str]) -> str:
    """``value[x]`` of ['valueCodeableConcept', 'valueCoding']."""
    names = list(names)
    prefix = names[0] if names else ""
    for name in names[1:]:
        while not name.startswith(prefix):
            prefix = prefix[:-1]
    while prefix and not all(len(n) > len(prefix) and n[len(prefix)].isupper() for n in names):
        prefix = prefix[:-1]
    return f"{prefix}[x]" if prefix else "[x]"


def _issue(resource_type: str, error: Any) -> Issue:
    loc: tuple[int | str, ...] = tuple(error["loc"])
    kind: str = error["type"]
    message: str = error["msg"]
    value = error.get("input")
    expr = _expression(resource_type, loc, unknown=kind == "extra_forbidden")
    names = [step for step in loc if isinstance(step, str) and step != "root"]
    name = names[-1].lstrip("_") if names else resource_type
    message = message.removeprefix("Value error, ").translate(_ESCAPES)
    if kind == "extra_forbidden":
        return Issue("error", "structure", f"Unknown element '{loc[-1]}'", (expr,))
    if kind in ("missing", "model_field_validation.missing"):
        return Issue("error", "required", f"Missing required element '{name}'", (expr,))
    if kind == "value_error" and message.startswith(_CHOICE_MISSING):
        base = _choice_base(_choice_names(message))
        return Issue("error", "required", f"Missing required element '{base}'", (f"{expr}.{base}",))
    if kind == "value_error" and _CHOICE_MULTIPLE in message:
        names = _choice_names(message)
        present = [key for key in value if key in names] if isinstance(value, dict) else []  # as sent
        if len(present) >= 2:
            where = f"{expr}.{present[1]}"
            return Issue(
                "error",
                "structure",
                f"Only one of '{present[0]}' and '{present[1]}' may be present",
                (where,),
            )
        return Issue("error", "structure", message, (expr,))
    if kind == "fhir-validation-wrong-resource-type":
        return Issue("error", "structure", f"Wrong resourceType {_show(value)} here", (expr,))
    if kind == "list_type":
        if isinstance(value, list):  # a null inside an array of objects
            return Issue("error", "structure", f"null in '{name}'", (expr,))
        return Issue("error", "structure", f"Element '{name}' must be an array (max cardinality *)", (expr,))
    if isinstance(value, list):
        return Issue("error", "structure", f"Element '{name}' must not be an array (max cardinality 1)", (expr,))
    if kind in _NOT_AN_OBJECT:
        return Issue("error", "structure", f"Expected a JSON object for '{name}', got {_show(value)}", (expr,))
    return Issue("error", "value", f"Invalid value {_show(value)}: {message}", (expr,))
