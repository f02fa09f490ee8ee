"""Tests of mappers.norwegian_id: fødselsnummer, D-, H- and FH-numbers, today's and the 2032 check-digit rule.

Samples: published example numbers (fnrinfo.no's worked example 31129956715; navikt/fnrvalidator's
H-number 13527248013 and Tenor number 10915596784; nonin's generated 29100207042 and 43022014103;
stdnum-js issue #101's 11111598403 and 23114048690, valid with a zero check digit) and numbers built
here with :func:`control_digits` (synthetic or arbitrary; none belongs to a known person).
"""

from __future__ import annotations

from datetime import date

import pytest

from mappers.norwegian_id import (
    SYSTEMS,
    IdKind,
    InvalidNorwegianId,
    control_digits,
    is_norwegian_system,
    kind_of_system,
    parse_norwegian_id,
)


@pytest.mark.parametrize(
    ("value", "kind", "rule", "synthetic"),
    [
        ("31129956715", IdKind.FNR, "1964", False),  # fnrinfo.no worked example
        ("29100207042", IdKind.FNR, "1964", False),
        ("11111598403", IdKind.FNR, "1964", False),  # k2 from remainder 0 is 0, not 11
        ("23114048690", IdKind.FNR, "1964", False),
        ("43022014103", IdKind.DNR, "1964", False),  # D-number: day + 40
        ("55108412304", IdKind.DNR, "1964", False),
        ("13527248013", IdKind.HNR, "1964", False),  # H-number: month + 40
        ("10915596784", IdKind.FNR, "1964", True),  # Tenor synthetic: month + 80
        ("15838512329", IdKind.FNR, "1964", True),
        ("80000000179", IdKind.FHNR, "1964", False),  # FH-number: first digit 8/9, no date
        ("91234567883", IdKind.FHNR, "1964", False),
        ("29022450350", IdKind.FNR, "1964", False),  # 29 February of a leap year
    ],
)
def test_valid_numbers_today(value: str, kind: IdKind, rule: str, synthetic: bool) -> None:
    nid = parse_norwegian_id(value)
    assert (nid.value, nid.kind, nid.rule, nid.synthetic) == (value, kind, rule, synthetic)
    assert nid.system == SYSTEMS[kind]


@pytest.mark.parametrize(
    "value",
    [
        "15038512371",  # k1 remainder 1
        "15038512460",  # k1 remainder 2
        "15038512398",  # k1 remainder 3
        "01020304002",  # remainder 1 where today's rule has no valid k1 at all
        "55108412339",  # D-number, remainder 3
        "15838512345",  # synthetic (Tenor) numbers follow the new rule too
    ],
)
def test_numbers_valid_only_under_the_2032_rule(value: str) -> None:
    nid = parse_norwegian_id(value)
    assert nid.rule == "2032"
    with pytest.raises(InvalidNorwegianId, match="check digits"):
        parse_norwegian_id(value, allow_2032=False)


def test_every_number_valid_today_stays_valid_and_reads_as_1964() -> None:
    for first9 in ("150385123", "311299567", "551084123", "231260123"):
        digits = control_digits(first9, 0)
        assert digits is not None
        assert parse_norwegian_id(first9 + digits, allow_2032=False).rule == "1964"
        assert parse_norwegian_id(first9 + digits).rule == "1964"


def test_control_digits_match_the_published_example() -> None:
    assert control_digits("311299567") == "15"  # fnrinfo.no: sums 241 and 215 give 1 and 5
    assert control_digits("010203040") is None  # k1 would be 10: this individual number is unused today
    assert control_digits("010203040", 1) == "02"
    with pytest.raises(ValueError):
        control_digits("12345")


def test_the_2032_rule_accepts_exactly_four_k1_remainders() -> None:
    first9 = "150385124"
    built = {r: control_digits(first9, r) for r in range(11)}
    for r, digits in built.items():
        if digits is None:
            continue
        valid = r <= 3
        if valid:
            assert parse_norwegian_id(first9 + digits).rule == ("1964" if r == 0 else "2032")
        else:
            with pytest.raises(InvalidNorwegianId):
                parse_norwegian_id(first9 + digits)


@pytest.mark.parametrize(
    ("value", "reason"),
    [
        ("31129956716", "check digits"),  # k2 wrong
        ("31129956725", "check digits"),  # k1 wrong (remainder 2 with the old k2)
        ("3112995671", "11 digits"),
        ("311299567155", "11 digits"),
        ("3112995671a", "only digits"),
        ("32129956715", "valid date"),  # day 32
        ("31139956715", "valid date"),  # month 13
        ("29022350311", "valid date"),  # 29 February 2023 / 1923 / 1823: never a leap year
        ("31062399812", "valid date"),  # month 62 (NAV synthetic D-series): not recognised
        ("55458412307", "no defined number series"),  # day + 40 and month + 40
        ("80000000187", "FH-number"),  # FH-numbers only follow today's rule
        ("13527248021", "check digits"),  # H-numbers only follow today's rule (remainder 1)
    ],
)
def test_invalid_numbers(value: str, reason: str) -> None:
    with pytest.raises(InvalidNorwegianId, match=reason) as info:
        parse_norwegian_id(value)
    assert info.value.value == value


def test_h_number_2032_remainder_is_rejected() -> None:
    digits = control_digits("135272480", 1)
    assert digits is not None
    with pytest.raises(InvalidNorwegianId, match="check digits"):
        parse_norwegian_id("135272480" + digits)


def test_synthetic_numbers_can_be_refused() -> None:
    with pytest.raises(InvalidNorwegianId, match="synthetic"):
        parse_norwegian_id("15838512329", allow_synthetic=False)
    dnr_tenor = "5583851" + "23"  # a synthetic D-number: day + 40 and month + 80
    digits = control_digits(dnr_tenor)
    assert digits is not None
    nid = parse_norwegian_id(dnr_tenor + digits)
    assert (nid.kind, nid.synthetic, nid.day, nid.month) == (IdKind.DNR, True, 15, 3)


def test_birth_date_parts_and_consistency() -> None:
    nid = parse_norwegian_id("43022014103")
    assert (nid.day, nid.month, nid.yy) == (3, 2, 20)
    assert nid.matches_birth_date(date(2020, 2, 3))
    assert nid.matches_birth_date(date(1920, 2, 3))  # the century is not derived (2032 rule)
    assert not nid.matches_birth_date(date(2020, 2, 4))
    assert parse_norwegian_id("80000000179").matches_birth_date(date(1999, 1, 1))  # FH: no date


def test_whitespace_is_tolerated_around_the_number() -> None:
    assert parse_norwegian_id(" 31129956715 ").value == "31129956715"


def test_systems() -> None:
    assert SYSTEMS[IdKind.FNR] == "urn:oid:2.16.578.1.12.4.1.4.1"
    assert SYSTEMS[IdKind.DNR] == "urn:oid:2.16.578.1.12.4.1.4.2"
    assert SYSTEMS[IdKind.HNR] == "urn:oid:2.16.578.1.12.4.1.4.3"
    assert is_norwegian_system("urn:oid:2.16.578.1.12.4.1.4.2")
    assert not is_norwegian_system("urn:oid:2.16.578.1.12.4.1.4.4")  # HPR: practitioners, not persons
    assert kind_of_system("urn:oid:2.16.578.1.12.4.1.4.1") is IdKind.FNR
    assert kind_of_system("http://example.org") is None
