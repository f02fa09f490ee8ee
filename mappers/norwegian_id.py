"""Norwegian person identifiers: fødselsnummer, D-number, H-number and FH-number, with their check digits.

Owns the validation of the 11-digit person numbers that Norwegian EHRs send in PID-3 and CSV
extracts, and the FHIR identifier systems they map to (the OIDs registered in Volven,
https://www.ehelse.no/standardisering/standarder/identifikatorer-for-personer, HIS 1001):

=========================  =======================================  ===============================
kind                       how it is recognised                     ``Identifier.system``
=========================  =======================================  ===============================
fødselsnummer (``fnr``)    DDMMYY + individual number + 2 controls  urn:oid:2.16.578.1.12.4.1.4.1
D-number (``dnr``)         day + 40 (first digit 4-7)               urn:oid:2.16.578.1.12.4.1.4.2
H-number (``hnr``)         month + 40 (third digit 4 or 5)          urn:oid:2.16.578.1.12.4.1.4.3
FH-number (``fhnr``)       first digit 8 or 9, no date              urn:oid:2.16.578.1.12.4.1.4.3
=========================  =======================================  ===============================

(OID ...4.3 is registered for the *felles hjelpenummer*; hospitals' local H-numbers are sent
under it in practice (DIPS does so), and we follow that. A hospital whose H-numbers are local can
map them to a system of its own in the mappers' ``authorities`` table.)

Check digits (Skatteetaten, "Nytt fødselsnummer fra 2032",
https://skatteetaten.github.io/folkeregisteret-api-dokumentasjon/nytt-fodselsnummer-fra-2032/):

* weights k1 = 3 7 6 1 8 9 4 5 2 over digits 1-9, k2 = 5 4 3 2 7 6 5 4 3 2 over digits 1-10;
* today's rule (numbers since 1964): ``(Σ w1·d + k1) mod 11 == 0`` and ``(Σ w2·d + k2) mod 11 == 0``;
* the rule in force from 1 January 2032: the remainder for k1 may be 0, 1, 2 or 3 (four accepted
  values, so more individual numbers per birth date); k2 is unchanged. Systems must accept both
  in parallel, so every number valid today stays valid. A number whose k1 remainder is 1-3 is
  reported as ``rule == "2032"``; remainder 0 as ``"1964"`` (valid under both rules).
* New numbers are gender-neutral (the individual number no longer carries a gender digit) and
  the century can no longer be read from the individual number. This module therefore derives
  neither gender nor century: it checks that DDMMYY is a real calendar date in some century and
  exposes the day/month/two-digit year for a consistency check against a birth date sent alongside.

The 2032 rule is applied to fødselsnummer and D-numbers (the ones Folkeregisteret issues) and to
their synthetic test versions; H- and FH-numbers are issued by the health sector with the classic
rule only. Synthetic test identities from Skatteetaten's test register (Tenor, "syntetiske
fødselsnummer") add 80 to the month; they are recognised (``synthetic=True``) and accepted unless
``allow_synthetic=False``. Other synthetic series (NAV Dolly's month + 40, which collides with
H-numbers, and month + 60) are not recognised: month + 40 reads as an H-number, month + 60 is invalid.
"""

from __future__ import annotations

import calendar
from dataclasses import dataclass
from datetime import date
from enum import StrEnum

__all__ = [
    "SYSTEMS",
    "IdKind",
    "InvalidNorwegianId",
    "NorwegianId",
    "control_digits",
    "is_norwegian_system",
    "kind_of_system",
    "parse_norwegian_id",
]

_W1 = (3, 7, 6, 1, 8, 9, 4, 5, 2)
_W2 = (5, 4, 3, 2, 7, 6, 5, 4, 3, 2)
_K1_REST_1964 = frozenset({0})
_K1_REST_2032 = frozenset({0, 1, 2, 3})


class IdKind(StrEnum):
    """The kind of a Norwegian person number."""

    FNR = "fnr"
    DNR = "dnr"
    HNR = "hnr"
    FHNR = "fhnr"


#: ``Identifier.system`` of each kind
SYSTEMS: dict[IdKind, str] = {
    IdKind.FNR: "urn:oid:2.16.578.1.12.4.1.4.1",
    IdKind.DNR: "urn:oid:2.16.578.1.12.4.1.4.2",
    IdKind.HNR: "urn:oid:2.16.578.1.12.4.1.4.3",
    IdKind.FHNR: "urn:oid:2.16.578.1.12.4.1.4.3",
}
_SYSTEM_KINDS = {SYSTEMS[IdKind.FNR]: IdKind.FNR, SYSTEMS[IdKind.DNR]: IdKind.DNR, SYSTEMS[IdKind.HNR]: IdKind.HNR}


class InvalidNorwegianId(ValueError):
    """A value that is not a valid Norwegian person number; ``reason`` says why."""

    def __init__(self, value: str, reason: str) -> None:
        super().__init__(f"{value!r} is not a valid Norwegian person number: {reason}")
        self.value = value
        self.reason = reason


@dataclass(frozen=True, slots=True)
class NorwegianId:
    """A validated person number."""

    value: str
    kind: IdKind
    #: ``"1964"``: k1 remainder 0, valid under today's and the 2032 rule; ``"2032"``: only under the new rule
    rule: str
    #: a synthetic test identity (Tenor: month + 80)
    synthetic: bool
    #: day, month and two-digit year of the birth date part (offsets removed); None for FH-numbers
    day: int | None
    month: int | None
    yy: int | None

    @property
    def system(self) -> str:
        return SYSTEMS[self.kind]

    def matches_birth_date(self, birth: date) -> bool:
        """Whether DDMMYY agrees with ``birth`` (always True for FH-numbers, which carry no date)."""
        if self.day is None:
            return True
        return (self.day, self.month, self.yy) == (birth.day, birth.month, birth.year % 100)


def is_norwegian_system(system: str | None) -> bool:
    """Whether ``system`` is one of the Norwegian person-number systems."""
    return system in _SYSTEM_KINDS


def kind_of_system(system: str) -> IdKind | None:
    """The kind a system stands for (``...4.3`` reads as H-number, which also covers FH-numbers)."""
    return _SYSTEM_KINDS.get(system)


def _remainders(digits: list[int]) -> tuple[int, int]:
    r1 = (sum(w * d for w, d in zip(_W1, digits, strict=False)) + digits[9]) % 11
    r2 = (sum(w * d for w, d in zip(_W2, digits, strict=False)) + digits[10]) % 11
    return r1, r2


def control_digits(first9: str, k1_remainder: int = 0) -> str | None:
    """The two control digits for nine leading digits, or None when no digit fits.

    ``k1_remainder`` 0 gives today's number; 1-3 the additional numbers of the 2032 rule.
    Used to build test numbers; the validation is :func:`parse_norwegian_id`.
    """
    if len(first9) != 9 or not first9.isdigit():
        raise ValueError("nine digits expected")
    d = [int(c) for c in first9]
    s1 = sum(w * x for w, x in zip(_W1, d, strict=True))
    k1 = (k1_remainder - s1) % 11
    if k1 == 10:
        return None
    s2 = sum(w * x for w, x in zip(_W2, [*d, k1], strict=True))
    k2 = (-s2) % 11
    if k2 == 10:
        return None
    return f"{k1}{k2}"


def _real_date_in_some_century(day: int, month: int, yy: int) -> bool:
    if not 1 <= month <= 12 or day < 1:
        return False
    # the century is unknown for numbers of the 2032 rule: accept when any of 18yy, 19yy, 20yy fits
    return any(day <= calendar.monthrange(century + yy, month)[1] for century in (1800, 1900, 2000))


def parse_norwegian_id(value: str, *, allow_2032: bool = True, allow_synthetic: bool = True) -> NorwegianId:
    """Validate an 11-digit Norwegian person number and tell its kind.

    Raises :class:`InvalidNorwegianId` with the reason (length, characters, date, check digits,
    synthetic number not allowed).
    """
    text = value.strip()
    if len(text) != 11:
        raise InvalidNorwegianId(value, f"11 digits expected, got {len(text)} characters")
    if not text.isascii() or not text.isdigit():
        raise InvalidNorwegianId(value, "only digits are allowed")
    digits = [int(c) for c in text]
    r1, r2 = _remainders(digits)

    if digits[0] >= 8:  # FH-number: no date, classic check digits
        if r1 != 0 or r2 != 0:
            raise InvalidNorwegianId(value, "check digits do not match (FH-number)")
        return NorwegianId(text, IdKind.FHNR, "1964", False, None, None, None)

    day, month, yy = int(text[0:2]), int(text[2:4]), int(text[4:6])
    kind = IdKind.FNR
    synthetic = False
    if day > 40:
        kind, day = IdKind.DNR, day - 40
    if month > 80:
        synthetic, month = True, month - 80
    elif month > 40:
        if kind is IdKind.DNR:
            raise InvalidNorwegianId(value, "day + 40 and month + 40 together is no defined number series")
        kind, month = IdKind.HNR, month - 40
    if not _real_date_in_some_century(day, month, yy):
        raise InvalidNorwegianId(value, f"{text[:6]} does not hold a valid date (day {day}, month {month})")

    accepted = _K1_REST_2032 if allow_2032 and kind in (IdKind.FNR, IdKind.DNR) else _K1_REST_1964
    if r1 not in accepted or r2 != 0:
        raise InvalidNorwegianId(value, "check digits do not match")
    if synthetic and not allow_synthetic:
        raise InvalidNorwegianId(value, "synthetic test number (month + 80) not allowed here")
    return NorwegianId(text, kind, "1964" if r1 == 0 else "2032", synthetic, day, month, yy)
