"""Index rows extracted from resources by the compiled search-parameter expressions
(http://hl7.org/fhir/R4/search.html): exact rows for hand-made resources of every parameter type,
and the compiler checked against fhirpathpy on every official R4 example."""

from __future__ import annotations

import re
import tarfile
from collections.abc import Iterator
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
from fhirpathpy import compile as fp_compile
from fhirpathpy.engine.nodes import ResourceNode
from fhirpathpy.models import models as fp_models

from server import jsonio
from server.search.extract import (
    NEG_INF,
    POS_INF,
    RESOURCE_COLUMNS,
    CompileError,
    IndexRows,
    add_rows,
    compile_expression,
    date_range,
    extract,
    extractor_for,
    fallback_expressions,
    normalize_string,
    reference_target,
)
from server.search.query import _reference_codes
from server.search.registry import Registry, split_union

EXAMPLES = Path(__file__).resolve().parents[3].parent / "shared" / "data" / "fhir-r4" / "examples.tgz"
TABLES = ("token", "string", "reference", "date", "number", "quantity", "uri")


@pytest.fixture(scope="module")
def registry() -> Registry:
    return Registry.load(extra_paths=[])  # official parameters only, whatever profiles/ holds


def ts(iso: str) -> float:
    """Epoch seconds of a UTC date/time (``2021-03-04T08:00:01``), computed by the standard library."""
    return datetime.fromisoformat(iso).replace(tzinfo=UTC).timestamp()


def rows_of(resource: dict[str, Any], code: str, registry: Registry) -> IndexRows:
    return extract(resource, registry).only(code)


# ---------------------------------------------------------------------------------------------
# string


def test_human_name_parts_are_normalised(registry: Registry) -> None:
    patient = {
        "resourceType": "Patient",
        "name": [
            {
                "family": "Álvarez",
                "given": ["José", "Luis"],
                "prefix": ["Dr."],
                "suffix": ["PhD"],
                "text": "Dr. José  Luis\tÁLVAREZ",
            }
        ],
    }
    assert rows_of(patient, "name", registry).string == [
        ("name", "alvarez", "Álvarez"),
        ("name", "jose", "José"),
        ("name", "luis", "Luis"),
        ("name", "dr.", "Dr."),
        ("name", "phd", "PhD"),
        ("name", "dr. jose luis alvarez", "Dr. José  Luis\tÁLVAREZ"),
    ]
    assert rows_of(patient, "family", registry).string == [("family", "alvarez", "Álvarez")]
    assert rows_of(patient, "given", registry).string == [
        ("given", "jose", "José"),
        ("given", "luis", "Luis"),
    ]


def test_address_parts(registry: Registry) -> None:
    patient = {
        "resourceType": "Patient",
        "address": [
            {
                "line": ["Storgata 1", "Leil. 2"],
                "city": "Tromsø",
                "district": "Troms",
                "state": "TF",
                "postalCode": "9008",
                "country": "NO",
                "text": "Storgata 1, 9008 Tromsø",
                "use": "home",
            }
        ],
    }
    assert rows_of(patient, "address", registry).string == [
        ("address", "storgata 1", "Storgata 1"),
        ("address", "leil. 2", "Leil. 2"),
        ("address", "tromsø", "Tromsø"),  # ø is a letter of its own, not o + a mark
        ("address", "troms", "Troms"),
        ("address", "tf", "TF"),
        ("address", "9008", "9008"),
        ("address", "no", "NO"),
        ("address", "storgata 1, 9008 tromsø", "Storgata 1, 9008 Tromsø"),
    ]
    assert rows_of(patient, "address-city", registry).string == [("address-city", "tromsø", "Tromsø")]
    assert rows_of(patient, "address-use", registry).token == [("address-use", None, "home", None)]


def test_normalize_string() -> None:
    assert normalize_string("  Crème   Brûlée ") == "creme brulee"
    assert normalize_string("STRASSE") == "strasse"
    assert normalize_string("Straße") == "strasse"
    assert normalize_string("ﬁle") == "file"  # NFKD compatibility form


# ---------------------------------------------------------------------------------------------
# token


def test_identifier_contact_point_and_primitives(registry: Registry) -> None:
    patient = {
        "resourceType": "Patient",
        "id": "p1",
        "identifier": [
            {
                "system": "urn:oid:2.16.578.1.12.4.1.4.1",
                "value": "13097248022",
                "type": {"text": "National id"},
            },
            {"value": "no-system"},
        ],
        "telecom": [
            {"system": "phone", "value": "+47 22 00 00 00", "use": "work"},
            {"system": "email", "value": "kari@example.org"},
        ],
        "active": True,
        "gender": "female",
    }
    rows = extract(patient, registry)
    assert rows.only("identifier").token == [
        ("identifier", "urn:oid:2.16.578.1.12.4.1.4.1", "13097248022", "national id"),  # text normalised
        ("identifier", None, "no-system", None),
    ]
    assert rows.only("phone").token == [("phone", None, "+47 22 00 00 00", None)]
    assert rows.only("email").token == [("email", None, "kari@example.org", None)]
    assert rows.only("telecom").token == [
        ("telecom", None, "+47 22 00 00 00", None),
        ("telecom", None, "kari@example.org", None),
    ]
    assert rows.only("active").token == [("active", None, "true", None)]
    assert rows.only("gender").token == [("gender", None, "female", None)]
    assert rows.only("_id").token == []  # _id and _lastUpdated are columns of the resources table


def test_codeable_concept_codings_and_text(registry: Registry) -> None:
    obs = {
        "resourceType": "Observation",
        "status": "final",
        "code": {
            "coding": [
                {"system": "http://loinc.org", "code": "69548-6", "display": "Genetic variant assessment"},
                {"system": "http://snomed.info/sct", "code": "1234"},
                {"system": "http://loinc.org", "code": "69548-6", "display": "Genetic variant assessment"},
            ],
            "text": "Variant",
        },
        "meta": {"tag": [{"system": "urn:tags", "code": "t1"}], "security": [{"code": "R"}]},
    }
    rows = extract(obs, registry)
    assert rows.only("code").token == [  # the repeated coding gives one row
        ("code", "http://loinc.org", "69548-6", "genetic variant assessment"),
        ("code", "http://snomed.info/sct", "1234", None),
        ("code", None, None, "variant"),
    ]
    assert rows.only("status").token == [("status", None, "final", None)]
    assert rows.only("_tag").token == [("_tag", "urn:tags", "t1", None)]
    assert rows.only("_security").token == [("_security", None, "R", None)]
    # combo-code (Observation.code | Observation.component.code) is a union parameter: no rows of
    # its own, a search reads those of code and component-code
    assert rows.only("combo-code").token == []


def test_deceased_token_expression(registry: Registry) -> None:
    # Patient.deceased.exists() and Patient.deceased != false
    alive = {"resourceType": "Patient"}
    assert rows_of(alive, "deceased", registry).token == [("deceased", None, "false", None)]
    dead = {"resourceType": "Patient", "deceasedDateTime": "2020-05-01"}
    assert rows_of(dead, "deceased", registry).token == [("deceased", None, "true", None)]
    assert rows_of(dead, "death-date", registry).date == [("death-date", ts("2020-05-01"), ts("2020-05-02"))]
    not_dead = {"resourceType": "Patient", "deceasedBoolean": False}
    assert rows_of(not_dead, "deceased", registry).token == [("deceased", None, "false", None)]
    assert rows_of(not_dead, "death-date", registry).date == []


# ---------------------------------------------------------------------------------------------
# reference


def test_references_relative_absolute_contained_and_logical(registry: Registry) -> None:
    def obs(subject: dict[str, Any]) -> dict[str, Any]:
        return {"resourceType": "Observation", "status": "final", "subject": subject}

    # patient is subject narrowed to Patient (Registry.narrowings): its reference rows are the
    # subject rows whose target type is Patient, and it has none of its own
    rel = extract(obs({"reference": "Patient/123"}), registry)
    assert rel.only("subject").reference == [("subject", "Patient", "123", "Patient/123")]
    assert rel.only("patient").reference == []

    url = "http://other.example/fhir/Patient/abc/_history/2"
    absolute = extract(obs({"reference": url}), registry)
    assert absolute.only("subject").reference == [("subject", "Patient", "abc", url)]

    group = extract(obs({"reference": "Group/g1"}), registry)
    assert group.only("subject").reference == [("subject", "Group", "g1", "Group/g1")]

    contained = extract(obs({"reference": "#p1"}), registry)
    assert contained.only("subject").reference == [] and contained.only("subject").token == []

    urn = "urn:uuid:9d3c9b8e-0a55-4a4c-8d0b-5f0f2b0e3e55"
    by_urn = extract(obs({"reference": urn}), registry)
    assert by_urn.only("subject").reference == [("subject", None, None, urn)]
    # the target type resolve() sees: the url's, else the declared type
    typed_urn = extract(obs({"reference": urn, "type": "Patient"}), registry)
    assert typed_urn.only("subject").reference == [("subject", "Patient", None, urn)]

    logical = extract(obs({"identifier": {"system": "urn:mrn", "value": "42"}, "type": "Patient"}), registry)
    assert logical.only("subject").reference == []
    assert logical.only("subject").token == [("subject", "urn:mrn", "42", None)]  # for :identifier
    assert logical.only("patient").token == [("patient", "urn:mrn", "42", None)]  # type says Patient


def test_canonical_reference_is_a_url(registry: Registry) -> None:
    qr = {
        "resourceType": "QuestionnaireResponse",
        "status": "completed",
        "questionnaire": "http://example.org/Questionnaire/phq9|1.0",
    }
    assert rows_of(qr, "questionnaire", registry).reference == [
        ("questionnaire", None, None, "http://example.org/Questionnaire/phq9|1.0")
    ]


def test_reference_target() -> None:
    assert reference_target("Patient/123") == ("Patient", "123")
    assert reference_target("Patient/123/_history/7") == ("Patient", "123")
    assert reference_target("https://x.example/fhir/Observation/a.b-c") == ("Observation", "a.b-c")
    assert reference_target("urn:uuid:0c3b2f1a-1111-2222-3333-444455556666") == (None, None)
    assert reference_target("#contained") == (None, None)
    assert reference_target("Patient?identifier=x") == (None, None)


# ---------------------------------------------------------------------------------------------
# date


def test_date_range_precision_and_time_zones() -> None:
    assert date_range("1970") == (0.0, ts("1971-01-01"))
    assert date_range("2020-02") == (ts("2020-02-01"), ts("2020-03-01"))
    assert date_range("2020-12") == (ts("2020-12-01"), ts("2021-01-01"))
    assert date_range("2020-02-29") == (ts("2020-02-29"), ts("2020-03-01"))
    assert date_range("2021-03-04T10:00:00Z") == (ts("2021-03-04T10:00:00"), ts("2021-03-04T10:00:01"))
    assert date_range("2021-03-04T10:00:00") == (
        ts("2021-03-04T10:00:00"),
        ts("2021-03-04T10:00:01"),
    )  # no zone: UTC
    assert date_range("2021-03-04T10:00:00+02:00") == (ts("2021-03-04T08:00:00"), ts("2021-03-04T08:00:01"))
    assert date_range("2021-03-04T10:00:00-05:30") == (ts("2021-03-04T15:30:00"), ts("2021-03-04T15:30:01"))
    low, high = date_range("2021-03-04T10:00:00.250Z") or (0.0, 0.0)
    assert low == pytest.approx(ts("2021-03-04T10:00:00") + 0.25) and high == pytest.approx(low + 0.001)
    assert date_range("1850-06-01") == (ts("1850-06-01"), ts("1850-06-02"))
    for bad in ("2021-02-29", "2021-13", "2021-03-04T25:00:00Z", "yesterday", "21-03-04", ""):
        assert date_range(bad) is None, bad


def test_dates_periods_and_timing(registry: Registry) -> None:
    obs = {
        "resourceType": "Observation",
        "status": "final",
        "effectiveDateTime": "2021-03-04T10:00:00+02:00",
        "meta": {"lastUpdated": "2021-03-05T00:00:00.000Z"},
    }
    rows = extract(obs, registry)
    assert rows.only("date").date == [("date", ts("2021-03-04T08:00:00"), ts("2021-03-04T08:00:01"))]
    assert rows.only("_lastUpdated").date == []  # answered from resources.ts

    open_end = dict(obs, effectivePeriod={"start": "2021-03"})
    del open_end["effectiveDateTime"]
    assert rows_of(open_end, "date", registry).date == [("date", ts("2021-03-01"), POS_INF)]
    open_start = {"resourceType": "Observation", "status": "final", "effectivePeriod": {"end": "2021-03-04"}}
    assert rows_of(open_start, "date", registry).date == [("date", NEG_INF, ts("2021-03-05"))]

    timing = {
        "resourceType": "Observation",
        "status": "final",
        "effectiveTiming": {
            "event": ["2021-01-10", "2021-01-05T10:00:00Z"],
            "repeat": {"boundsPeriod": {"start": "2021-01-01", "end": "2021-01-31"}, "frequency": 1},
        },
    }
    assert rows_of(timing, "date", registry).date == [("date", ts("2021-01-01"), ts("2021-02-01"))]
    events_only = {
        "resourceType": "Observation",
        "status": "final",
        "effectiveTiming": {"event": ["2021-01-10", "2021-01-05T10:00:00Z"]},
    }
    assert rows_of(events_only, "date", registry).date == [
        ("date", ts("2021-01-05T10:00:00"), ts("2021-01-11"))  # earliest event start .. latest event end
    ]

    patient = {"resourceType": "Patient", "birthDate": "1970"}
    assert rows_of(patient, "birthdate", registry).date == [("birthdate", 0.0, ts("1971-01-01"))]
    bad = {"resourceType": "Patient", "birthDate": "not a date"}
    assert rows_of(bad, "birthdate", registry).date == []


# ---------------------------------------------------------------------------------------------
# number, quantity, uri, choice types


def test_choice_types_narrowed_by_as(registry: Registry) -> None:
    quantity = {
        "resourceType": "Observation",
        "status": "final",
        "valueQuantity": {
            "value": Decimal("1.50"),
            "unit": "mg",
            "system": "http://unitsofmeasure.org",
            "code": "mg",
        },
        "component": [
            {"code": {"text": "a"}, "valueQuantity": {"value": 120, "code": "mm[Hg]"}},
            {"code": {"text": "b"}, "valueCodeableConcept": {"coding": [{"system": "urn:s", "code": "x"}]}},
            {"code": {"text": "c"}, "valueString": "free text"},
        ],
    }
    rows = extract(quantity, registry)
    vq = rows.only("value-quantity").quantity
    assert vq == [("value-quantity", Decimal("1.50"), "http://unitsofmeasure.org", "mg", "mg")]
    assert str(vq[0][1]) == "1.50"  # digits kept
    assert rows.only("value-concept").token == []  # valueQuantity is not a CodeableConcept
    assert rows.only("component-value-quantity").quantity == [
        ("component-value-quantity", Decimal(120), None, "mm[Hg]", None)
    ]
    assert rows.only("component-value-concept").token == [("component-value-concept", "urn:s", "x", None)]
    assert rows.only("combo-value-concept").token == []  # a union parameter: its sources' rows serve it
    assert rows.only("value-string").string == []  # component strings are not Observation.value

    concept = {
        "resourceType": "Observation",
        "status": "final",
        "valueCodeableConcept": {
            "coding": [{"system": "http://loinc.org", "code": "LA9633-4"}],
            "text": "Present",
        },
    }
    rows = extract(concept, registry)
    assert rows.only("value-quantity").quantity == []
    assert rows.only("value-concept").token == [
        ("value-concept", "http://loinc.org", "LA9633-4", None),
        ("value-concept", None, None, "present"),
    ]
    # (Observation.value as string) | (Observation.value as CodeableConcept).text
    assert rows.only("value-string").string == [("value-string", "present", "Present")]


def test_money_age_number_and_uri(registry: Registry) -> None:
    invoice = {
        "resourceType": "Invoice",
        "status": "issued",
        "totalNet": {"value": Decimal("99.90"), "currency": "NOK"},
    }
    assert rows_of(invoice, "totalnet", registry).quantity == [
        ("totalnet", Decimal("99.90"), "urn:iso:std:iso:4217", "NOK", None)
    ]
    condition = {
        "resourceType": "Condition",
        "subject": {"reference": "Patient/1"},
        "onsetAge": {"value": 52, "unit": "years", "system": "http://unitsofmeasure.org", "code": "a"},
    }
    assert rows_of(condition, "onset-age", registry).quantity == [
        ("onset-age", Decimal(52), "http://unitsofmeasure.org", "a", "years")
    ]
    assert rows_of(condition, "onset-date", registry).date == []
    ranged = dict(condition, onsetRange={"low": {"value": 1}, "high": {"value": 5}})
    del ranged["onsetAge"]
    assert rows_of(ranged, "onset-age", registry).quantity == []  # a Range has no single value

    risk = {
        "resourceType": "RiskAssessment",
        "status": "final",
        "subject": {"reference": "Patient/1"},
        "prediction": [{"probabilityDecimal": Decimal("0.02")}, {"probabilityRange": {"low": {"value": 1}}}],
    }
    assert rows_of(risk, "probability", registry).number == [("probability", Decimal("0.02"))]
    seq = {
        "resourceType": "MolecularSequence",
        "coordinateSystem": 0,
        "variant": [{"start": 100, "end": 101}],
    }
    assert rows_of(seq, "variant-start", registry).number == [("variant-start", Decimal(100))]

    vs = {
        "resourceType": "ValueSet",
        "status": "active",
        "url": "http://example.org/ValueSet/v",
        "meta": {"profile": ["http://example.org/StructureDefinition/p"], "source": "http://src.example"},
    }
    rows = extract(vs, registry)
    assert rows.only("url").uri == [("url", "http://example.org/ValueSet/v")]
    assert rows.only("_profile").uri == [("_profile", "http://example.org/StructureDefinition/p")]
    assert rows.only("_source").uri == [("_source", "http://src.example")]


def test_composite_and_special_give_no_rows(registry: Registry) -> None:
    location = {"resourceType": "Location", "position": {"longitude": 10.7, "latitude": 59.9}}
    assert extract(location, registry) == IndexRows()
    obs = {
        "resourceType": "Observation",
        "status": "final",
        "code": {"text": "x"},
        "valueQuantity": {"value": 1},
    }
    codes = {row[0] for table in TABLES for row in getattr(extract(obs, registry), table)}
    assert "code-value-quantity" not in codes and "near" not in codes


def test_composite_rows_per_item(registry: Registry) -> None:
    """Composites keep their own codes and groups per item; the combo-* union composites and the
    root composites searched through other parameters (code-value-quantity) get no rows."""
    obs = {
        "resourceType": "Observation",
        "status": "final",
        "code": {"coding": [{"system": "http://loinc.org", "code": "85354-9"}], "text": "BP"},
        "valueQuantity": {"value": 1, "system": "http://unitsofmeasure.org", "code": "1"},
        "valueString": "high",  # not a valid Observation (one value[x]): both root composites at once
        "component": [
            {"code": {"coding": [{"system": "http://loinc.org", "code": "8480-6"}]}, "valueQuantity": {"value": 120}},
            {"code": {"coding": [{"system": "http://loinc.org", "code": "8462-4"}]}},  # no value: no group
            {"code": {"coding": [{"system": "http://loinc.org", "code": "8462-4"}]}, "valueQuantity": {"value": 80}},
        ],
    }
    rows = extract(obs, registry)
    loinc, ucum = "http://loinc.org", "http://unitsofmeasure.org"
    assert not rows.only("code-value-quantity")  # searched as code and value-quantity
    assert rows.only("value-quantity").quantity == [("value-quantity", Decimal(1), ucum, "1", None)]
    # code-value-string's value component is not value-string's (which has CodeableConcept.text too)
    assert rows.only("code-value-string").token == [("code-value-string:0", loinc, "85354-9", None, 1)]
    assert rows.only("code-value-string").string == [("code-value-string:1", "high", "high", 1)]
    assert not rows.only("combo-code-value-quantity")  # a union: code-value-quantity and component-…
    assert rows.only("component-code-value-quantity").token == [
        ("component-code-value-quantity:0", loinc, "8480-6", None, 1),
        ("component-code-value-quantity:0", loinc, "8462-4", None, 2),
    ]
    assert [r[-1] for r in rows.only("component-code-value-quantity").quantity] == [1, 2]
    assert not rows.only("code-value-concept") and not rows.only("combo-code-value-concept")


def test_generated_handlers_match_the_compiled_functions(registry: Registry) -> None:
    """The per-type generated code walks JSON paths inline: same rows as the compiled closures."""
    ref = {"reference": "Device/d1"}
    claim = {
        "resourceType": "Claim",
        "status": "active",
        "patient": {"reference": "Patient/p1", "identifier": {"system": "urn:s", "value": "v"}},
        "item": [
            {"encounter": [{"reference": "Encounter/e1"}], "udi": [ref]},
            {"detail": [{"udi": [ref, {"reference": "Device/d2"}], "subDetail": [{"udi": [ref]}, "odd"]}]},
            None,
            "not an object",
        ],
        "meta": {"tag": [{"system": "urn:t", "code": "x"}], "profile": ["http://p"]},
    }
    patient = {
        "resourceType": "Patient",
        "name": [{"family": "Ñandú", "given": ["A", "B"]}, {"text": "x"}],
        "telecom": [{"system": "phone", "value": "1"}, {"system": "email", "value": "a@b"}],
        "address": {"city": "not a list"},
    }
    for resource in (claim, patient):
        extractor = extractor_for(resource["resourceType"], registry)
        expected = IndexRows()
        for code, fn, emit in extractor.plan:
            for value in fn(resource):
                if value is not None:
                    emit(expected, code, value)
        got = extractor(resource)
        for table in TABLES:
            assert set(getattr(got, table)) == set(getattr(expected, table)), (resource["resourceType"], table)
    source = extractor_for("Claim", registry).source
    assert "'subDetail'" in source and "'udi'" in source  # walked inline, not by calling the closures
    assert ("subdetail-udi", "Device", "d1", "Device/d1") in extract(claim, registry).reference


def test_memo_tables_are_bounded(monkeypatch: pytest.MonkeyPatch) -> None:
    from server.search import extract as module

    monkeypatch.setattr(module, "_MEMO_SIZE", 10)
    for i in range(50):
        assert normalize_string(f"Äb  {i}") == f"ab {i}"
        assert reference_target(f"Patient/{i}") == ("Patient", str(i))
        assert date_range(f"20{i:02d}") is not None
    assert date_range("2020-13") is None and date_range("2020-13") is None  # misses are remembered too
    for table in (module._normalized, module._targets, module._ranges):
        assert 0 < len(table) <= 10
    long = "x" * (module._MEMO_MAX_LEN + 1)
    assert normalize_string(long) == long and long not in module._normalized


def test_extract_needs_a_resource_type(registry: Registry) -> None:
    with pytest.raises(ValueError, match="resourceType"):
        extract({"id": "x"}, registry)


# ---------------------------------------------------------------------------------------------
# compiler coverage and fallback


def test_every_official_expression_compiles(registry: Registry) -> None:
    assert fallback_expressions(registry) == []


def test_compile_expression_reports_types(registry: Registry) -> None:
    compiled = compile_expression("Observation.value", "Observation", registry.types)
    assert "Quantity" in compiled.result_types and "CodeableConcept" in compiled.result_types
    obs = {"resourceType": "Observation", "valueQuantity": {"value": 1}}
    assert compiled(obs) == [("Quantity", {"value": 1})]
    expression = "value.as(Quantity) | value.as(Range)"
    component = compile_expression(expression, "Observation.component", registry.types)
    assert component({"valueRange": {"low": {"value": 2}}}) == [("Range", {"low": {"value": 2}})]
    ext = compile_expression("Patient.extension('http://x/ext').value", "Patient", registry.types)
    patient = {
        "resourceType": "Patient",
        "extension": [{"url": "http://x/ext", "valueCode": "a"}, {"url": "y"}],
    }
    assert ext(patient) == [("code", "a")]
    first = compile_expression("Bundle.entry[0].resource", "Bundle", registry.types)
    bundle = {
        "resourceType": "Bundle",
        "entry": [{"resource": {"resourceType": "Composition"}}, {"resource": {}}],
    }
    assert first(bundle) == [("Resource", {"resourceType": "Composition"})]
    for unsupported in ("Patient.name.select(given)", "Patient.birthDate + 1 year", "%resource.id"):
        with pytest.raises(CompileError):
            compile_expression(unsupported, "Patient", registry.types)


def test_uncompilable_expression_falls_back_to_fhirpathpy(tmp_path: Path) -> None:
    param = {
        "resourceType": "SearchParameter",
        "url": "http://bigmed.example/fhir/SearchParameter/patient-given-select",
        "code": "given-select",
        "base": ["Patient"],
        "type": "string",
        "expression": "Patient.name.select(given)",
    }
    (tmp_path / "sp.json").write_bytes(jsonio.dumps(param))
    custom = Registry.load(extra_paths=[tmp_path])
    assert fallback_expressions(custom) == [("Patient", "given-select", "Patient.name.select(given)")]
    patient = {"resourceType": "Patient", "name": [{"given": ["Åse", "Kari"]}]}
    assert extract(patient, custom).only("given-select").string == [
        ("given-select", "ase", "Åse"),
        ("given-select", "kari", "Kari"),
    ]


# ---------------------------------------------------------------------------------------------
# Reference test: the compiled extractors against fhirpathpy on every official R4 example.
#
# fhirpathpy is driven here with R4 *search* semantics, and the test says how:
# - ``Resource.x`` roots are rewritten to the concrete type (fhirpathpy matches the root name
#   against resourceType literally, so ``Resource.id`` finds nothing on a Patient);
# - ``X as T`` / ``X.as(T)`` are evaluated as ``X.ofType(T)``: R4 search expressions such as
#   ``(Observation.component.value as Quantity)`` use ``as`` as a filter on collections, which
#   fhirpathpy implements strictly (an error for more than one item);
# - top-level union branches are evaluated one by one: fhirpathpy's ``|`` rebuilds the nodes
#   without their type, which the rows need (rows are compared as sets, so the union's
#   de-duplication does not matter);
# - fhirpathpy has no ``resolve()``: a stand-in returns a stub resource of the type named by the
#   reference (its url, else Reference.type), which is all ``resolve() is T`` needs.
# With that, no parameter differs (no exclusion list).

_FP_SYSTEM_TYPES = {"String": "string", "Boolean": "boolean", "Integer": "integer", "Decimal": "decimal"}
_FP_SYSTEM_TYPES |= {"Date": "date", "DateTime": "dateTime", "Time": "time"}


def _fp_resolve(inputs: list[Any]) -> list[Any]:
    out = []
    for ref in inputs:
        if not isinstance(ref, dict):
            continue
        rtype = None
        url = ref.get("reference")
        if isinstance(url, str) and not url.startswith(("#", "urn:")):
            parts = url.split("/_history/")[0].split("/")
            if len(parts) >= 2 and parts[-2][:1].isupper():
                rtype = parts[-2]
        if rtype is None and isinstance(ref.get("type"), str):
            rtype = ref["type"].rsplit("/", 1)[-1]
        if rtype:
            out.append(ResourceNode.create_node({"resourceType": rtype}))
    return out


_FP_OPTIONS = {"returnRawData": True, "userInvocationTable": {"resolve": {"fn": _fp_resolve}}}
_fp_compiled: dict[tuple[str, str], Any] = {}


def _fp_branch(branch: str, resource_type: str) -> Any:
    key = (branch, resource_type)
    if key not in _fp_compiled:
        text = re.sub(r"^(\(?)(?:Resource|DomainResource)\.", rf"\1{resource_type}.", branch)
        text = text.replace(".as(", ".ofType(")
        text = re.sub(r"([A-Za-z_][\w.]*) as ([A-Za-z_]\w*)", r"\1.ofType(\2)", text)
        _fp_compiled[key] = fp_compile(text, model=fp_models["r4"], options=_FP_OPTIONS)
    return _fp_compiled[key]


def _fp_typed(node: Any) -> tuple[str, Any]:
    if isinstance(node, ResourceNode):
        path = str(node.path)
        return (_FP_SYSTEM_TYPES.get(path[7:], path) if path.startswith("System.") else path), node.data
    return ("boolean" if isinstance(node, bool) else "string"), node


def fhirpathpy_rows(
    resource: dict[str, Any], code: str, param_type: str, expression: str, registry: Registry
) -> IndexRows:
    values = []
    for branch in split_union(expression):
        for node in _fp_branch(branch, resource["resourceType"])(resource):
            typed = _fp_typed(node)
            if typed[1] is not None:
                values.append(typed)
    rows = IndexRows()
    add_rows(rows, registry.types, param_type, code, values)
    return rows


def _examples() -> Iterator[tuple[str, dict[str, Any]]]:
    """Every example file, plus the resources inside the example Bundles."""

    def with_entries(name: str, resource: dict[str, Any]) -> Iterator[tuple[str, dict[str, Any]]]:
        yield name, resource
        if resource.get("resourceType") == "Bundle":
            for i, entry in enumerate(resource.get("entry", [])):
                if isinstance(entry.get("resource"), dict):
                    yield from with_entries(f"{name}#entry[{i}]", entry["resource"])

    with tarfile.open(EXAMPLES) as tar:
        for member in tar:
            fh = tar.extractfile(member) if member.isfile() and member.name.endswith(".json") else None
            if fh is not None:
                yield from with_entries(member.name, jsonio.loads(fh.read()))


@pytest.mark.slow
def _renamed(parts: list[IndexRows], code: str) -> IndexRows:
    """The rows of several parameters as one parameter ``code``'s (each table's rows, first column renamed)."""
    out = IndexRows()
    for part in parts:
        for table in TABLES:
            getattr(out, table).extend((code, *row[1:]) for row in getattr(part, table))
    return out


def test_compiled_extractors_match_fhirpathpy_on_all_r4_examples(registry: Registry) -> None:
    if not EXAMPLES.exists():
        pytest.skip(f"official R4 examples not found at {EXAMPLES} (../shared missing)")
    files = 0
    compared: dict[str, int] = dict.fromkeys(TABLES, 0)
    compared_unions = compared_narrowed = 0
    mismatches: list[str] = []
    for name, resource in _examples():
        files += "#" not in name
        rtype = resource["resourceType"]
        extractor = extractor_for(rtype, registry)
        assert not extractor.fallbacks, f"{rtype} has fhirpathpy fallbacks: nothing compiled to compare"
        before = jsonio.dumps(resource)
        ours = extractor(resource)
        assert jsonio.dumps(resource) == before, f"{name}: extraction modified the resource"
        unions = registry.unions(rtype)
        for code, param in registry.params_for(rtype).items():
            expression = param.expression_for(rtype)
            if param.type in ("composite", "special") or not expression or code in RESOURCE_COLUMNS:
                continue
            theirs = fhirpathpy_rows(resource, code, param.type, expression, registry)
            mine = ours.only(code)
            if code in unions:  # no rows of its own: its sources' rows, as a search reads them
                assert not mine, f"{name}: union parameter {code} has rows"
                mine = _renamed([ours.only(source.code) for source in unions[code]], code)
                compared_unions += 1
            narrowed = registry.narrowing(rtype, code)
            if narrowed is not None:  # its source's reference rows of its target type, its own tokens
                assert not mine.reference, f"{name}: narrowed parameter {code} has reference rows"
                source, target = narrowed
                mine.reference = [(code, *row[1:]) for row in ours.only(source.code).reference if row[1] == target]
                compared_narrowed += bool(mine.reference)
            for table in TABLES:
                a, b = set(getattr(mine, table)), set(getattr(theirs, table))
                compared[table] += len(b)
                if a != b:
                    mismatches.append(
                        f"{name} {code} [{expression}] {table}: ours-only {a - b} fhirpathpy-only {b - a}"
                    )
    assert files == 713
    assert compared_unions > 500  # every Observation example, for each union parameter
    assert compared_narrowed > 500, compared_narrowed  # patient of most clinical examples …
    assert not mismatches, f"{len(mismatches)} differences, e.g.:\n" + "\n".join(mismatches[:20])
    # the comparison is not vacuous: every index table got rows from the examples
    assert all(n > 50 for n in compared.values()), compared
    assert sum(compared.values()) > 10_000, compared


def test_every_reference_row_is_under_a_code_revinclude_asks_for(registry: Registry) -> None:
    """``_revinclude=*`` (no index by target alone) asks each source type for the codes of
    ``query._reference_codes``: every reference row the extractor writes for the R4 examples is
    under one of them."""
    if not EXAMPLES.exists():
        pytest.skip(f"official R4 examples not found at {EXAMPLES} (../shared missing)")
    codes: dict[str, set[str]] = {}
    written: set[tuple[str, str]] = set()
    for _, resource in _examples():
        rtype = resource["resourceType"]
        if rtype not in codes:
            codes[rtype] = set(_reference_codes(registry, rtype))
        for row in extractor_for(rtype, registry)(resource).reference:
            written.add((rtype, row[0]))
    # a composite's reference component would write under "code:k": asked for too (R4's one such
    # composite, DocumentReference relationship, writes none: its component expressions are swapped)
    assert "relationship:0" in codes["DocumentReference"] and "relatesto" in codes["DocumentReference"]
    missing = {(t, c) for t, c in written if c not in codes[t]}
    assert not missing, sorted(missing)[:20]
    assert len(written) > 300
