"""Loader of the vendored drug tables of the CDS Hooks services (no Flask, no database).

- ``data/cds-drugs.json`` (written by ``scripts/gen_cds_drugs.py``; sources in its header): per
  drug the RxNorm ingredient code, RxNorm clinical/branded drug (SCD/SBD) codes, WHO ATC codes
  and names (ingredient, brands) -> :class:`Drug`, and :class:`DrugIndex` that recognises a drug
  in a medication CodeableConcept: RxNorm ingredient, then SCD/SBD, then ATC, then text (last
  resort; whole words, case-insensitive).
- ``data/qt-drugs.json`` (compiled by hand from FDA labels / Drug Safety Communications and the
  AHA 2020 scientific statement, a citation per drug; not from CredibleMeds) -> :class:`QtDrug`.

Loaded once per process (``functools.cache``); read-only.
"""

from __future__ import annotations

import functools
import json
import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

DATA = Path(__file__).resolve().parent / "data"
DRUGS_FILE = DATA / "cds-drugs.json"
QT_FILE = DATA / "qt-drugs.json"
RXNORM = "http://www.nlm.nih.gov/research/umls/rxnorm"
ATC = "http://www.whocc.no/atc"

__all__ = ["ATC", "RXNORM", "Drug", "DrugIndex", "QtDrug", "Recognised", "load_drugs", "load_qt_drugs"]


@dataclass(frozen=True)
class Drug:
    name: str  # the ingredient, lower case (e.g. "clopidogrel")
    rxnorm: str | None  # RxNorm ingredient (IN) code
    atc: tuple[str, ...]
    clinical_drugs: Mapping[str, str]  # SCD/SBD code -> display
    names: tuple[str, ...]


@dataclass(frozen=True)
class Recognised:
    drug: Drug
    how: str  # "RxNorm ingredient 32968", "RxNorm clinical drug 309362", "ATC B01AC04", "text 'Plavix 75 mg'"


@dataclass(frozen=True)
class QtDrug:
    drug: str
    rxnorm: str
    atc: str
    citation: str


def _systems(system: str | None) -> str:
    return (system or "").rstrip("/").lower()


class DrugIndex:
    """Recognises the drugs of the table in a medication CodeableConcept."""

    def __init__(self, drugs: Mapping[str, Drug]) -> None:
        self.drugs = dict(drugs)
        self._ingredient = {d.rxnorm: d for d in drugs.values() if d.rxnorm}
        self._clinical = {code: d for d in drugs.values() for code in d.clinical_drugs}
        self._atc = {code: d for d in drugs.values() for code in d.atc}
        names = sorted({(n.lower(), d.name) for d in drugs.values() for n in d.names}, key=lambda x: -len(x[0]))
        self._text = [
            (re.compile(rf"(?<![\w-]){re.escape(n)}(?![\w-])", re.IGNORECASE), self.drugs[d]) for n, d in names
        ]

    def recognise(self, concept: Any) -> Recognised | None:
        """The drug of ``concept`` (RxNorm ingredient, SCD/SBD, ATC, then text), or None."""
        if not isinstance(concept, Mapping):
            return None
        codings = [c for c in concept.get("coding") or () if isinstance(c, Mapping)]
        for coding in codings:
            code = str(coding.get("code") or "")
            if _systems(coding.get("system")) == RXNORM:
                if code in self._ingredient:
                    return Recognised(self._ingredient[code], f"RxNorm ingredient {code}")
                if code in self._clinical:
                    return Recognised(self._clinical[code], f"RxNorm clinical drug {code}")
        for coding in codings:
            code = str(coding.get("code") or "")
            if _systems(coding.get("system")) == ATC and code in self._atc:
                return Recognised(self._atc[code], f"ATC {code}")
        texts = [str(concept.get("text") or "")] + [str(c.get("display") or "") for c in codings]
        for text in texts:
            if not text:
                continue
            for pattern, drug in self._text:
                if pattern.search(text):
                    return Recognised(drug, f"text '{text}'")
        return None


def _read(path: Path) -> dict[str, Any]:
    with path.open(encoding="utf-8") as fh:
        data: dict[str, Any] = json.load(fh)
    return data


@functools.cache
def load_drugs() -> DrugIndex:
    data = _read(DRUGS_FILE)
    drugs = {
        name: Drug(
            name=name,
            rxnorm=entry["rxnorm"],
            atc=tuple(entry["atc"]),
            clinical_drugs={code: v["display"] for code, v in entry["clinical_drugs"].items()},
            names=tuple(entry["names"]),
        )
        for name, entry in data["drugs"].items()
    }
    return DrugIndex(drugs)


@functools.cache
def load_qt_drugs() -> dict[str, QtDrug]:
    """Ingredient name -> :class:`QtDrug`."""
    data = _read(QT_FILE)
    return {d["drug"]: QtDrug(d["drug"], d["rxnorm"], d["atc"], d["citation"]) for d in data["drugs"]}
