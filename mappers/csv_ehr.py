"""CSV EHR extracts -> FHIR R4 resources, one transaction per row, with a quarantine for bad rows.

Owns the documented CSV layouts (docs/ehr-mapping.md) of six extract kinds and their mapping to
FHIR R4 (http://hl7.org/fhir/R4/):

=============  ==========================================================================================
kind           resource
=============  ==========================================================================================
patients       Patient (conditional update on the patient id, http://hl7.org/fhir/R4/patient.html)
encounters     Encounter (PUT by the id derived from the encounter number, as HL7 v2 PV1-19 does)
diagnoses      Condition, ICD-10 (``http://hl7.org/fhir/sid/icd-10``, http://hl7.org/fhir/R4/condition.html)
lab_results    Observation, LOINC with check digit, UCUM units (http://hl7.org/fhir/R4/observation.html)
medications    MedicationStatement or MedicationRequest, ATC (``http://www.whocc.no/atc``)
phenotypes     Observation with the HPO term as code and LOINC LA9633-4 Present / LA9634-2 Absent as
               value, as the GA4GH Phenopackets-on-FHIR PhenotypicFeature profile
               (https://build.fhir.org/ig/HL7/phenomics-exchange-ig/) for rare-disease patients
=============  ==========================================================================================

A JSON mapping config (``mappers/data/csv-mapping-default.json``; a hospital's file is merged over
it) gives column names, delimiter, encoding, date formats, decimal comma, the patient id system
and value maps, so a hospital adapts its export without code. Every row yields a :class:`Mapped`
(transaction entries + warnings) or a :class:`~mappers.ehr_common.Quarantined` (file, line,
column, reason, raw row); a bad row never stops the file. Resources reference their patient by
the conditional reference ``Patient?identifier=system|value``; ids are deterministic, so loading
a file twice changes nothing. Pure: imports nothing of ``server``.
"""

from __future__ import annotations

import copy
import csv
import io
import json
import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import date, datetime
from decimal import Decimal, InvalidOperation
from pathlib import Path
from typing import IO, Any, cast
from zoneinfo import ZoneInfo

from mappers.ehr_common import (
    NORWEGIAN_PERSON,
    UCUM,
    Problem,
    Quarantined,
    conditional_update,
    fhir_id,
    identifier_query,
    local_system,
    transaction_bundle,
    ucum_code,
    update_by_id,
)
from mappers.norwegian_id import InvalidNorwegianId, parse_norwegian_id

__all__ = ["DEFAULT_CONFIG", "KINDS", "Mapped", "Quarantined", "load_config", "map_csv"]

DEFAULT_CONFIG = Path(__file__).resolve().parent / "data" / "csv-mapping-default.json"
KINDS = ("patients", "encounters", "diagnoses", "lab_results", "medications", "phenotypes")

ICD10 = "http://hl7.org/fhir/sid/icd-10"
LOINC = "http://loinc.org"
ATC = "http://www.whocc.no/atc"
HPO = "http://human-phenotype-ontology.org"
V3_ACTCODE = "http://terminology.hl7.org/CodeSystem/v3-ActCode"
_INTERPRETATION = "http://terminology.hl7.org/CodeSystem/v3-ObservationInterpretation"

#: fields a row of each kind cannot be mapped without
REQUIRED: dict[str, tuple[str, ...]] = {
    "patients": ("patient_id",),
    "encounters": ("encounter_id", "patient_id", "class"),
    "diagnoses": ("patient_id", "icd10_code"),
    "lab_results": ("patient_id", "loinc_code", "effective"),
    "medications": ("patient_id", "atc_code"),
    "phenotypes": ("patient_id", "hpo_id"),
}


@dataclass(slots=True)
class Mapped:
    """One mapped row: the transaction entries to store atomically, and its warnings."""

    source: str
    line: int
    kind: str
    entries: list[dict[str, Any]]
    warnings: list[Problem] = field(default_factory=list)

    @property
    def resources(self) -> list[dict[str, Any]]:
        return [e["resource"] for e in self.entries]

    def bundle(self) -> dict[str, Any]:
        return transaction_bundle(self.entries)


class RowError(Exception):
    """Raised while mapping a row: quarantines it with the column and reason."""

    def __init__(self, column: str, reason: str) -> None:
        super().__init__(f"{column}: {reason}")
        self.column = column
        self.reason = reason


def _merge(base: dict[str, Any], over: dict[str, Any]) -> dict[str, Any]:
    out = copy.deepcopy(base)
    for key, value in over.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = _merge(out[key], value)
        else:
            out[key] = value
    return out


def load_config(config: dict[str, Any] | str | Path | None = None) -> dict[str, Any]:
    """The default config with a hospital's config (dict or JSON file) merged over it."""
    base = json.loads(DEFAULT_CONFIG.read_text(encoding="utf-8"))
    if config is None:
        return dict(base)
    over: dict[str, Any] = (
        json.loads(Path(config).read_text(encoding="utf-8")) if isinstance(config, str | Path) else config
    )
    return _merge(base, over)


# ---------------------------------------------------------------------------------------------
# rows and values


class _Row:
    """One CSV row read through the config's column names."""

    __slots__ = ("cfg", "columns", "kind", "values", "warnings")

    def __init__(self, values: dict[str, str], kind: str, cfg: dict[str, Any]) -> None:
        self.values = values
        self.kind = kind
        self.cfg = cfg
        self.columns: dict[str, str] = cfg["columns"][kind]
        self.warnings: list[Problem] = []

    def column(self, name: str) -> str:
        return self.columns.get(name) or name

    def get(self, name: str) -> str:
        return (self.values.get(self.column(name)) or "").strip()

    def required(self, name: str) -> str:
        value = self.get(name)
        if not value:
            raise RowError(self.column(name), "required value is empty")
        return value

    def mapped(self, name: str, table: str, default: str | None = None) -> Any:
        raw = self.get(name)
        values: dict[str, Any] = self.cfg["values"][table]
        key = raw.lower()
        if key in values:
            return values[key]
        if not raw and default is not None:
            return default
        raise RowError(self.column(name), f"{raw!r} is not a known {table.replace('_', ' ')} (config values.{table})")

    def warn(self, name: str, reason: str) -> None:
        self.warnings.append(Problem(self.column(name), reason, "warning"))


_ISO_DATE = re.compile(r"\d{4}-\d{2}-\d{2}")


def _date(row: _Row, name: str, *, with_time: bool = True) -> str | None:
    """A date or date-time column as FHIR date/dateTime (offset from the config timezone when absent)."""
    raw = row.get(name)
    if not raw:
        return None
    cfg = row.cfg
    if with_time:
        for fmt in cfg["datetime_formats"]:
            try:
                dt = datetime.strptime(raw, fmt)  # naive: the zone is applied just below
            except ValueError:
                continue
            if dt.tzinfo is None:
                dt = dt.replace(tzinfo=ZoneInfo(cfg["timezone"]))
            return dt.isoformat()
    for fmt in cfg["date_formats"]:
        try:
            return datetime.strptime(raw, fmt).date().isoformat()
        except ValueError:
            continue
    if with_time and ("T" in raw or " " in raw):  # ISO 8601 date-time (with or without offset) is always accepted
        try:
            dt = datetime.fromisoformat(raw)
        except ValueError:
            pass
        else:
            if dt.tzinfo is None:
                dt = dt.replace(tzinfo=ZoneInfo(cfg["timezone"]))
            return dt.isoformat()
    if _ISO_DATE.fullmatch(raw):  # ISO 8601 dates are unambiguous, so always accepted too
        try:
            return date.fromisoformat(raw).isoformat()
        except ValueError:
            pass
    formats = cfg["date_formats"] + (cfg["datetime_formats"] if with_time else [])
    raise RowError(row.column(name), f"{raw!r} is not a date in the configured formats {formats}")


def _decimal(row: _Row, name: str, raw: str | None = None) -> Decimal:
    text = row.get(name) if raw is None else raw
    if row.cfg.get("decimal_comma"):
        text = text.replace(" ", "").replace(",", ".")
    try:
        value = Decimal(text)
    except InvalidOperation:
        raise RowError(row.column(name), f"{text!r} is not a number") from None
    if not value.is_finite():
        raise RowError(row.column(name), f"{text!r} is not a number")
    return value


def _patient_key(row: _Row) -> tuple[str, str]:
    """(system, value) of the row's patient id: a Norwegian person number is validated."""
    value = row.required("patient_id")
    system = row.cfg.get("patient_id_system") or NORWEGIAN_PERSON
    if system == NORWEGIAN_PERSON:
        try:
            nid = parse_norwegian_id(value)
        except InvalidNorwegianId as exc:
            raise RowError(row.column("patient_id"), f"invalid Norwegian person number: {exc.reason}") from None
        if nid.synthetic:
            row.warn("patient_id", f"{value} is a synthetic test identity (Tenor, month + 80)")
        return nid.system, value
    return system, value


def _subject(system: str, value: str) -> dict[str, Any]:
    return {"reference": f"Patient?{identifier_query(system, value)}"}


def _encounter_system(cfg: dict[str, Any]) -> str:
    system: str | None = cfg.get("encounter_id_system")
    return system or local_system(cfg["authority"])


def _encounter_ref(row: _Row) -> dict[str, Any] | None:
    value = row.get("encounter_id")
    if not value:
        return None
    system = _encounter_system(row.cfg)
    return {"reference": f"Encounter/{fhir_id('Encounter', system, value)}"}


def _record_id(row: _Row, name: str, *fallback: str) -> str:
    """A deterministic resource id: from the row's own id column, else from the given key values."""
    own = row.get(name)
    if own:
        return fhir_id(row.kind, row.cfg["authority"], own)
    return fhir_id(row.kind, *fallback)


# ---------------------------------------------------------------------------------------------
# kinds


def _patients(row: _Row) -> list[dict[str, Any]]:
    system, value = _patient_key(row)
    patient: dict[str, Any] = {
        "resourceType": "Patient",
        "identifier": [{"system": system, "value": value}],
        "active": True,
    }
    family, given = row.get("family_name"), row.get("given_names").split()
    if family or given:
        name: dict[str, Any] = {"use": "official"}
        if family:
            name["family"] = family
        if given:
            name["given"] = given
        patient["name"] = [name]
    telecom = []
    if row.get("phone"):
        telecom.append({"system": "phone", "value": row.get("phone"), "use": "home"})
    if row.get("email"):
        telecom.append({"system": "email", "value": row.get("email")})
    if telecom:
        patient["telecom"] = telecom
    if row.get("gender"):
        patient["gender"] = row.mapped("gender", "gender")
    birth = _date(row, "birth_date", with_time=False)
    if birth:
        patient["birthDate"] = birth
    deceased = _date(row, "deceased_date")
    if deceased:
        patient["deceasedDateTime"] = deceased
    address: dict[str, Any] = {}
    if row.get("address_line"):
        address["line"] = [row.get("address_line")]
    for key, col in (("city", "city"), ("postalCode", "postal_code"), ("country", "country")):
        if row.get(col):
            address[key] = row.get(col)
    if address:
        patient["address"] = [{"use": "home", **address}]
    return [conditional_update(patient, system, value)]


_CLASS_DISPLAY = {"IMP": "inpatient encounter", "AMB": "ambulatory", "EMER": "emergency", "VR": "virtual"}
_CLASS_DISPLAY["HH"] = "home health"


def _encounters(row: _Row) -> list[dict[str, Any]]:
    system, value = _patient_key(row)
    number = row.required("encounter_id")
    enc_system = _encounter_system(row.cfg)
    code = row.mapped("class", "encounter_class")
    start, end = _date(row, "start"), _date(row, "end")
    if start and end and end < start:
        raise RowError(row.column("end"), f"end {end} is before start {start}")
    encounter: dict[str, Any] = {
        "resourceType": "Encounter",
        "id": fhir_id("Encounter", enc_system, number),
        "identifier": [{"use": "official", "system": enc_system, "value": number}],
        "status": "finished" if end else "in-progress",
        "class": {"system": V3_ACTCODE, "code": code, "display": _CLASS_DISPLAY.get(code, code)},
        "subject": _subject(system, value),
    }
    entries = []
    hpr = row.get("practitioner_hpr")
    if hpr:
        if not hpr.isdigit():
            raise RowError(row.column("practitioner_hpr"), f"HPR number {hpr!r} is not numeric")
        ref = {"reference": f"Practitioner?{identifier_query('urn:oid:2.16.578.1.12.4.1.4.4', hpr)}"}
        encounter["participant"] = [
            {
                "type": [
                    {
                        "coding": [
                            {
                                "system": "http://terminology.hl7.org/CodeSystem/v3-ParticipationType",
                                "code": "ATND",
                                "display": "attender",
                            }
                        ]
                    }
                ],
                "individual": ref,
            }
        ]
        practitioner = {
            "resourceType": "Practitioner",
            "identifier": [{"system": "urn:oid:2.16.578.1.12.4.1.4.4", "value": hpr}],
        }
        entries.append(
            {
                "fullUrl": "urn:uuid:" + fhir_id("entry", "POST", ref["reference"]),
                "resource": practitioner,
                "request": {
                    "method": "POST",
                    "url": "Practitioner",
                    "ifNoneExist": identifier_query("urn:oid:2.16.578.1.12.4.1.4.4", hpr),
                },
            }
        )
    period = {k: v for k, v in (("start", start), ("end", end)) if v}
    if period:
        encounter["period"] = period
    if row.get("location"):
        encounter["location"] = [{"location": {"display": row.get("location")}}]
    entries.append(update_by_id(encounter))
    return entries


_ICD10 = re.compile(r"([A-Z])(\d{2})(?:\.?([0-9A-Z]{1,4}))?")


def _diagnoses(row: _Row) -> list[dict[str, Any]]:
    system, value = _patient_key(row)
    raw = row.required("icd10_code").upper().replace(" ", "")
    m = _ICD10.fullmatch(raw)
    if m is None:
        raise RowError(row.column("icd10_code"), f"{raw!r} is not an ICD-10 code (letter, two digits, optional .x)")
    code = f"{m.group(1)}{m.group(2)}" + (f".{m.group(3)}" if m.group(3) else "")
    onset = _date(row, "onset_date")
    recorded = _date(row, "recorded_date")
    encounter = _encounter_ref(row)
    cid = _record_id(row, "diagnosis_id", system, value, code, onset or "", recorded or "", row.get("encounter_id"))
    coding: dict[str, Any] = {"system": ICD10, "code": code}
    if row.get("display"):
        coding["display"] = row.get("display")
    category = "encounter-diagnosis" if encounter else "problem-list-item"
    condition: dict[str, Any] = {
        "resourceType": "Condition",
        "id": cid,
        "clinicalStatus": {
            "coding": [
                {
                    "system": "http://terminology.hl7.org/CodeSystem/condition-clinical",
                    "code": row.mapped("clinical_status", "clinical_status", "active"),
                }
            ]
        },
        "verificationStatus": {
            "coding": [{"system": "http://terminology.hl7.org/CodeSystem/condition-ver-status", "code": "confirmed"}]
        },
        "category": [
            {"coding": [{"system": "http://terminology.hl7.org/CodeSystem/condition-category", "code": category}]}
        ],
        "code": {"coding": [coding]},
        "subject": _subject(system, value),
    }
    if encounter:
        condition["encounter"] = encounter
    if onset:
        condition["onsetDateTime"] = onset
    if recorded:
        condition["recordedDate"] = recorded
    return [update_by_id(condition)]


_LOINC = re.compile(r"(\d{1,7})-(\d)")


def loinc_check_digit(number: str) -> int:
    """The LOINC check digit of the part before the dash (mod 10, as the Luhn algorithm)."""
    total = 0
    for i, ch in enumerate(reversed(number)):
        d = int(ch)
        if i % 2 == 0:
            d *= 2
            if d > 9:
                d -= 9
        total += d
    return (10 - total % 10) % 10


_COMPARATOR = re.compile(r"(<=|>=|<|>)\s*(.+)")


def _lab_results(row: _Row) -> list[dict[str, Any]]:
    system, value = _patient_key(row)
    code = row.required("loinc_code")
    m = _LOINC.fullmatch(code)
    if m is None:
        raise RowError(row.column("loinc_code"), f"{code!r} is not a LOINC code (digits-check digit)")
    if loinc_check_digit(m.group(1)) != int(m.group(2)):
        raise RowError(row.column("loinc_code"), f"{code!r} fails the LOINC check digit")
    effective = _date(row, "effective")
    if effective is None:
        raise RowError(row.column("effective"), "required value is empty")
    status = row.mapped("status", "observation_status", "final")
    coding: dict[str, Any] = {"system": LOINC, "code": code}
    if row.get("display"):
        coding["display"] = row.get("display")
    oid = _record_id(row, "result_id", system, value, code, effective)
    obs: dict[str, Any] = {
        "resourceType": "Observation",
        "id": oid,
        "status": status,
        "category": [
            {
                "coding": [
                    {
                        "system": "http://terminology.hl7.org/CodeSystem/observation-category",
                        "code": "laboratory",
                        "display": "Laboratory",
                    }
                ]
            }
        ],
        "code": {"coding": [coding]},
        "subject": _subject(system, value),
        "effectiveDateTime": effective,
    }
    encounter = _encounter_ref(row)
    if encounter:
        obs["encounter"] = encounter
    unit_text = row.get("unit")
    unit: dict[str, Any] = {}
    if unit_text:
        ucum = ucum_code(unit_text)
        unit = {"unit": unit_text, "system": UCUM, "code": ucum} if ucum else {"unit": unit_text}
        if ucum is None:
            row.warn("unit", f"unit {unit_text!r} is not a recognised UCUM code; kept as text")
    raw_value = row.get("value")
    if raw_value:
        cm = _COMPARATOR.fullmatch(raw_value)
        number_text = cm.group(2) if cm else raw_value
        try:
            number = _decimal(row, "value", number_text)
        except RowError:
            if cm or unit_text:
                raise
            obs["valueString"] = raw_value
        else:
            quantity: dict[str, Any] = {"value": number}
            if cm:
                quantity["comparator"] = cm.group(1)
            obs["valueQuantity"] = {**quantity, **unit}
    elif status not in ("cancelled", "entered-in-error"):
        obs["dataAbsentReason"] = {
            "coding": [{"system": "http://terminology.hl7.org/CodeSystem/data-absent-reason", "code": "unknown"}]
        }
    flag = row.mapped("interpretation", "interpretation", "") if row.get("interpretation") else None
    if flag:
        obs["interpretation"] = [{"coding": [{"system": _INTERPRETATION, "code": flag}]}]
    low, high = row.get("reference_low"), row.get("reference_high")
    if low or high:
        rr: dict[str, Any] = {}
        if low:
            rr["low"] = {"value": _decimal(row, "reference_low"), **unit}
        if high:
            rr["high"] = {"value": _decimal(row, "reference_high"), **unit}
        obs["referenceRange"] = [rr]
    return [update_by_id(obs)]


_ATC = re.compile(r"[A-Z](?:\d{2}(?:[A-Z](?:[A-Z](?:\d{2})?)?)?)?")


def _medications(row: _Row) -> list[dict[str, Any]]:
    system, value = _patient_key(row)
    code = row.required("atc_code").upper().replace(" ", "")
    if not _ATC.fullmatch(code):
        raise RowError(row.column("atc_code"), f"{code!r} is not an ATC code (e.g. A10BA02)")
    if len(code) != 7:
        row.warn(
            "atc_code", f"{code} is an ATC group (level {(1, 0, 2, 0, 3, 4, 0, 5)[len(code) - 1]}), not a substance"
        )
    start, end = _date(row, "start"), _date(row, "end")
    if start and end and end < start:
        raise RowError(row.column("end"), f"end {end} is before start {start}")
    medication: dict[str, Any] = {"coding": [{"system": ATC, "code": code}]}
    if row.get("display"):
        medication["coding"][0]["display"] = row.get("display")
        medication["text"] = row.get("display")
    status = row.mapped("status", "medication_status", "active")
    rtype = row.cfg.get("medication_resource", "MedicationStatement")
    mid = _record_id(row, "medication_id", system, value, code, start or "")
    if rtype == "MedicationRequest":
        request_status = {"completed": "completed", "stopped": "stopped", "on-hold": "on-hold"}.get(status, status)
        if request_status == "intended":
            request_status = "draft"
        res: dict[str, Any] = {
            "resourceType": "MedicationRequest",
            "id": mid,
            "status": request_status,
            "intent": "order",
            "medicationCodeableConcept": medication,
            "subject": _subject(system, value),
        }
        if start:
            res["authoredOn"] = start
        if row.get("dosage"):
            res["dosageInstruction"] = [{"text": row.get("dosage")}]
        if start or end:
            period = {k: v for k, v in (("start", start), ("end", end)) if v}
            res["dispenseRequest"] = {"validityPeriod": period}
    elif rtype == "MedicationStatement":
        res = {
            "resourceType": "MedicationStatement",
            "id": mid,
            "status": status,
            "medicationCodeableConcept": medication,
            "subject": _subject(system, value),
        }
        period = {k: v for k, v in (("start", start), ("end", end)) if v}
        if period:
            res["effectivePeriod"] = period
        if row.get("dosage"):
            res["dosage"] = [{"text": row.get("dosage")}]
    else:
        raise RowError("medication_resource", f"config medication_resource {rtype!r} is not supported")
    return [update_by_id(res)]


_HPO = re.compile(r"HP[:_](\d{7})")
_PRESENT = {"system": LOINC, "code": "LA9633-4", "display": "Present"}
_ABSENT = {"system": LOINC, "code": "LA9634-2", "display": "Absent"}


def _phenotypes(row: _Row) -> list[dict[str, Any]]:
    system, value = _patient_key(row)
    raw = row.required("hpo_id").upper()
    m = _HPO.fullmatch(raw)
    if m is None:
        raise RowError(row.column("hpo_id"), f"{raw!r} is not an HPO term id (HP:0000000)")
    term = f"HP:{m.group(1)}"
    status = row.mapped("status", "phenotype_status", "present")
    coding: dict[str, Any] = {"system": HPO, "code": term}
    if row.get("label"):
        coding["display"] = row.get("label")
    obs: dict[str, Any] = {
        "resourceType": "Observation",
        "id": _record_id(row, "phenotype_id", system, value, term),
        "status": "final",
        "category": [
            {
                "coding": [
                    {
                        "system": "http://terminology.hl7.org/CodeSystem/observation-category",
                        "code": "exam",
                        "display": "Exam",
                    }
                ]
            }
        ],
        "code": {"coding": [coding]},
        "subject": _subject(system, value),
        "valueCodeableConcept": {"coding": [_PRESENT if status == "present" else _ABSENT]},
    }
    onset = _date(row, "onset")
    if onset:
        obs["effectiveDateTime"] = onset
    recorded = _date(row, "recorded")
    if recorded:
        if "T" not in recorded:
            raise RowError(row.column("recorded"), "recorded needs a time (Observation.issued is an instant)")
        obs["issued"] = recorded
    return [update_by_id(obs)]


_MAPPERS: dict[str, Callable[[_Row], list[dict[str, Any]]]] = {
    "patients": _patients,
    "encounters": _encounters,
    "diagnoses": _diagnoses,
    "lab_results": _lab_results,
    "medications": _medications,
    "phenotypes": _phenotypes,
}


# ---------------------------------------------------------------------------------------------
# files


def _open(path_or_stream: str | Path | IO[str] | IO[bytes], encoding: str) -> tuple[IO[str], str, bool]:
    """A text stream for the input (decoded with the config's encoding when binary), its name, and ownership."""
    if isinstance(path_or_stream, str | Path):
        path = Path(path_or_stream)
        return open(path, encoding=encoding, newline=""), path.name, True  # closed by map_csv
    name = str(getattr(path_or_stream, "name", "<stream>"))
    if isinstance(path_or_stream, io.TextIOBase) or isinstance(path_or_stream.read(0), str):
        return cast("IO[str]", path_or_stream), name, False
    return io.TextIOWrapper(cast("IO[bytes]", path_or_stream), encoding=encoding, newline=""), name, False


def map_csv(
    path_or_stream: str | Path | IO[str] | IO[bytes],
    kind: str,
    config: dict[str, Any] | str | Path | None = None,
) -> Iterator[Mapped | Quarantined]:
    """Map every row of a CSV extract of ``kind`` (one of :data:`KINDS`), lazily.

    ``config`` is a dict or a JSON file merged over the default config (:func:`load_config`).
    """
    if kind not in _MAPPERS:
        raise ValueError(f"unknown CSV kind {kind!r}; expected one of {', '.join(KINDS)}")
    cfg = load_config(config)
    mapper = _MAPPERS[kind]
    stream, source, owned = _open(path_or_stream, cfg.get("encoding", "utf-8-sig"))
    try:
        reader = csv.reader(stream, delimiter=cfg["delimiter"])
        header: list[str] | None = None
        missing: list[str] = []
        for fields in reader:
            line = reader.line_num
            if header is None:
                header = [h.strip().lstrip("\ufeff") for h in fields]
                columns = cfg["columns"][kind]
                missing = [columns.get(n, n) for n in REQUIRED[kind] if columns.get(n, n) not in header]
                continue
            if not any(f.strip() for f in fields):
                continue
            raw = cfg["delimiter"].join(fields)
            if missing:
                problem = Problem(", ".join(missing), f"the header lacks required column(s) {', '.join(missing)}")
                yield Quarantined(source, line, problem, raw)
                continue
            if len(fields) != len(header):
                problem = Problem(f"line {line}", f"{len(fields)} fields, the header has {len(header)}")
                yield Quarantined(source, line, problem, raw)
                continue
            row = _Row(dict(zip(header, fields, strict=True)), kind, cfg)
            try:
                entries = mapper(row)
            except RowError as exc:
                yield Quarantined(source, line, Problem(exc.column, exc.reason), raw, warnings=row.warnings)
                continue
            except Exception as exc:  # noqa: BLE001  # one row's surprise must not stop the file: quarantined with the error
                yield Quarantined(source, line, Problem("", f"mapping failed: {type(exc).__name__}: {exc}"), raw)
                continue
            yield Mapped(source, line, kind, entries, row.warnings)
    finally:
        if owned:
            stream.close()
