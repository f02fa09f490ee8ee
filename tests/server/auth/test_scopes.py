"""SMART scope parsing, checking and narrowing (v1 and v2 syntax)."""

from __future__ import annotations

import pytest

from server.auth.scopes import Grant, Scope, ScopeError, parse_scope, parse_scopes


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("system/Observation.read", Scope("system", "Observation", "rs")),
        ("system/Observation.write", Scope("system", "Observation", "cud")),
        ("system/*.*", Scope("system", "*", "cruds")),
        ("system/Observation.rs", Scope("system", "Observation", "rs")),
        ("patient/Patient.cruds", Scope("patient", "Patient", "cruds")),
        ("system/*.rs", Scope("system", "*", "rs")),
        ("system/Observation.rs?category=laboratory", Scope("system", "Observation", "rs", "?category=laboratory")),
    ],
)
def test_parse(text: str, expected: Scope) -> None:
    assert parse_scope(text) == expected


@pytest.mark.parametrize(
    "text",
    [
        "system/Observation.sr",
        "system/Observation.rr",
        "system/Observation.x",
        "Observation.read",
        "admin/*.*",
        "system/observation.read",
        "system/Observation.read?x=1",
        "system/Observation.",
    ],
)
def test_parse_rejects(text: str) -> None:
    with pytest.raises(ScopeError):
        parse_scope(text)


def test_parse_list_skips_non_resource_scopes() -> None:
    assert [str(s) for s in parse_scopes("openid fhirUser launch/patient system/Patient.read")] == ["system/Patient.rs"]


def test_allows() -> None:
    grant = Grant.of("system/Observation.rs system/Patient.r patient/Condition.read")
    assert grant.allows("Observation", "r") and grant.allows("Observation", "s")
    assert not grant.allows("Observation", "c") and not grant.allows("Observation", "d")
    assert grant.allows("Patient", "r") and not grant.allows("Patient", "s")
    assert not grant.allows("Encounter", "r")
    assert grant.allows("Condition", "s", context="patient") and not grant.allows("Condition", "s", context="system")
    assert Grant.of("system/*.rs").allows("Encounter", "s")
    assert not Grant.of("system/Observation.rs?category=laboratory").allows("Observation", "r")


def test_intersect_is_never_wider_than_either_side() -> None:
    registered = Grant.of("system/Observation.rs system/Patient.read system/*.s")
    granted = registered.intersect(parse_scopes("system/Observation.cruds system/Patient.rs system/Encounter.r"))
    assert str(granted) == "system/Observation.rs system/Patient.rs"
    assert not granted.allows("Encounter", "r")
    assert not granted.allows("Observation", "c")
    escalation = Grant.of("system/Patient.rs").intersect(parse_scopes("system/*.cruds"))
    assert {str(s) for s in escalation.scopes} == {"system/Patient.rs"}
    assert Grant.of("system/Patient.rs").intersect(parse_scopes("patient/Patient.rs")).scopes == ()
