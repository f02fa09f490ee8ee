"""The genomic range index: where each stored variant Observation lies on its reference sequence.

Owns the ``variant_range`` table (documented in ``server/store/schema.py``) and everything that
reads or writes it. A variant Observation of the HL7 Genomics Reporting IG (STU3,
http://hl7.org/fhir/uv/genomics-reporting/StructureDefinition/variant; code LOINC 69548-6) gives
one row: its subject, the genomic reference sequence (component 48013-7, an ``NC_`` accession),
the interval of component 81254-5 (exact start-end; else 81301-4 outer, else 81302-2 inner
start-end) as a 0-based half-open interval (component 92822-6: LA30100-4 0-based interval
counting; LA30102-0 1-based character counting is converted; absent means 0-based), the REF/ALT
alleles (69547-8/69551-0) and the genomic source class (48002-0). A variant without REF and ALT
sequences (symbolic allele, breakend, copy number) is *structural*: the IG's simple-variant
operations skip it, the structural ones see only those.

The store keeps the rows in step with the resources (:class:`server.store.base.DerivedIndex`):
:data:`VARIANT_RANGES` is handed to it by the app factory, the ingestion passes precomputed rows
(:func:`ranges_of`), any other write (REST, transaction, bulk load) has them computed from the
stored JSON (:meth:`VariantRanges.rows`). Deletes and updates replace them with the resource's
other index rows, in the same transaction.

Overlap queries use the UCSC binning scheme (Kent et al. 2002, https://genome.cshlp.org/content/12/6/996):
an interval is filed under the smallest of the nested 128 kb / 1 Mb / 8 Mb / 64 Mb / 512 Mb bins
that holds it, so the variants overlapping a query are found by reading, per level, only the
bins the query touches — a few index range scans whatever the number of variants of the subject,
and long structural variants cost nothing to short queries. Intervals are 0-based and half-open
on both sides: a variant ``[s, e)`` overlaps the query ``[qs, qe)`` when ``s < qe`` and ``e > qs``
(a query ending exactly where a variant starts does not match it; an empty query is refused by
the operations). An empty variant interval (an insertion between two bases, ``s == e``; the VCF
mapper never writes one, it keeps the anchor base) overlaps the queries holding its point
strictly inside.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from mappers import genomics_codes as gc
from server import jsonio
from server.search.extract import reference_target
from server.store.base import Store

__all__ = [
    "COLUMNS",
    "TABLE",
    "VARIANT_RANGES",
    "RangeRow",
    "VariantRanges",
    "bin_of",
    "bins_overlapping",
    "count_subjects",
    "normalise_allele",
    "overlap_sql",
    "ranges_of",
    "subject_reference",
]

TABLE = "variant_range"
COLUMNS = (
    "subject",
    "ref_seq",
    "start_pos",
    "end_pos",
    "bin",
    "ref_allele",
    "alt_allele",
    "structural",
    "source_class",
    "implied",
)

_LOINC = gc.LOINC
_ONE_BASED = "LA30102-0"
_SOURCE_CLASSES = {code: name for name, (code, _) in gc.SOURCE_CLASSES.items()}
_RANGE_CODES = (gc.EXACT_START_END, gc.OUTER_START_END, gc.INNER_START_END)
_MARKER = gc.VARIANT_ASSESSMENT.encode()

# UCSC binning: 4096 bins of 128 kb, 512 of 1 Mb, 64 of 8 Mb, 8 of 64 Mb, 1 of 512 Mb
_BIN_OFFSETS = (512 + 64 + 8 + 1, 64 + 8 + 1, 8 + 1, 1, 0)
_FIRST_SHIFT = 17
_NEXT_SHIFT = 3
_BIN_LIMIT = 1 << 29  # positions beyond 512 Mb (no human chromosome) are filed in the last bins


def bin_of(start: int, end: int) -> int:
    """The smallest bin holding ``[start, end)`` (an empty interval is filed as one base)."""
    start = min(max(start, 0), _BIN_LIMIT - 1)
    end = min(max(end, start + 1), _BIN_LIMIT)
    first, last = start >> _FIRST_SHIFT, (end - 1) >> _FIRST_SHIFT
    for offset in _BIN_OFFSETS:
        if first == last:
            return offset + first
        first >>= _NEXT_SHIFT
        last >>= _NEXT_SHIFT
    return 0  # unreachable for positions under _BIN_LIMIT


def bins_overlapping(start: int, end: int) -> list[tuple[int, int]]:
    """Per bin level, the (first, last) bin that may hold an interval overlapping ``[start, end)``."""
    start = min(max(start, 0), _BIN_LIMIT - 1)
    end = min(max(end, start + 1), _BIN_LIMIT)
    first, last = start >> _FIRST_SHIFT, (end - 1) >> _FIRST_SHIFT
    out = []
    for offset in _BIN_OFFSETS:
        out.append((offset + first, offset + last))
        first >>= _NEXT_SHIFT
        last >>= _NEXT_SHIFT
    return out


RangeRow = tuple[str, str, int, int, int, str | None, str | None, int, str | None, int]


#: concept -> its first code, by identity: the VCF mapper shares its (read-only) component code
#: concepts between resources; the concept is kept so that its id cannot be reused while cached
_CODES: dict[int, tuple[Any, str | None]] = {}


def _code(concept: Any) -> str | None:
    hit = _CODES.get(id(concept))
    if hit is not None and hit[0] is concept:
        return hit[1]
    code = None
    if concept.__class__ is dict:
        for coding in concept.get("coding") or ():
            if coding.__class__ is dict and coding.get("code"):
                code = str(coding["code"])
                break
    if len(_CODES) >= 4096:
        _CODES.clear()
    _CODES[id(concept)] = (concept, code)
    return code


def _is_variant(resource: Mapping[str, Any]) -> bool:
    code = resource.get("code")
    if code.__class__ is not dict:
        return False
    return any(
        c.__class__ is dict and c.get("code") == gc.VARIANT_ASSESSMENT and c.get("system") in (_LOINC, None)
        for c in code.get("coding") or ()
    )


def subject_reference(value: str) -> str | None:
    """``Type/id`` of a subject given as ``Type/id``, an absolute URL or a bare (Patient) id."""
    if not value:
        return None
    if "/" not in value:
        return f"Patient/{value}"
    type_, id_ = reference_target(value)
    return f"{type_}/{id_}" if type_ and id_ else None


def ranges_of(resource: Mapping[str, Any]) -> list[RangeRow]:
    """The ``variant_range`` row of a variant Observation (none for anything else, or without coordinates);
    ``implied`` 0: its index rows are written (only the VCF ingestion leaves some out, see
    :mod:`server.search.implied`)."""
    if not _is_variant(resource):
        return []
    subject = resource.get("subject")
    reference = subject.get("reference") if subject.__class__ is dict else None
    subject_ref = subject_reference(reference) if isinstance(reference, str) else None
    if subject_ref is None:
        return []
    ref_seq = None
    ranges: dict[str, tuple[Any, Any]] = {}
    ref = alt = source = None
    one_based = False
    for component in resource.get("component") or ():
        if component.__class__ is not dict:
            continue
        code = _code(component.get("code"))
        if code == gc.GENOMIC_REF_SEQ:
            ref_seq = _code(component.get("valueCodeableConcept"))
        elif code in _RANGE_CODES:
            value = component.get("valueRange")
            if value.__class__ is dict:
                low, high = value.get("low"), value.get("high")
                ranges[code] = (
                    low.get("value") if low.__class__ is dict else None,
                    high.get("value") if high.__class__ is dict else None,
                )
        elif code == gc.REF_ALLELE:
            ref = component.get("valueString")
        elif code == gc.ALT_ALLELE:
            alt = component.get("valueString")
        elif code == gc.COORDINATE_SYSTEM:
            one_based = _code(component.get("valueCodeableConcept")) == _ONE_BASED
        elif code == gc.GENOMIC_SOURCE_CLASS:
            source = _SOURCE_CLASSES.get(_code(component.get("valueCodeableConcept")) or "")
    if not ref_seq:
        return []
    interval = next((ranges[c] for c in _RANGE_CODES if c in ranges), None)
    if interval is None:
        return []
    low, high = interval
    try:
        start = int(low) if low is not None else None
        end = int(high) if high is not None else None
    except (TypeError, ValueError):
        return []
    if start is None:
        if end is None:
            return []
        start = end
    if end is None:
        end = start + (len(ref) if isinstance(ref, str) and ref else 1)
    if one_based:  # [low, high] counted from 1 -> [low - 1, high)
        start -= 1
    if end < start:
        return []
    ref_s = ref if isinstance(ref, str) else None
    alt_s = alt if isinstance(alt, str) else None
    structural = 0 if ref_s is not None and alt_s is not None else 1
    return [(subject_ref, ref_seq, start, end, bin_of(start, end), ref_s, alt_s, structural, source, 0)]


class VariantRanges:
    """The ``variant_range`` derived index (:class:`server.store.base.DerivedIndex`)."""

    table: str = TABLE
    columns: tuple[str, ...] = COLUMNS
    types: frozenset[str] = frozenset({"Observation"})

    def rows(self, type_: str, content: bytes) -> list[tuple[Any, ...]]:
        if _MARKER not in content:  # not a variant: no need to parse
            return []
        return list(ranges_of(jsonio.loads(content)))


VARIANT_RANGES = VariantRanges()


def overlap_sql(
    ref_seq: str,
    start: int,
    end: int,
    *,
    subject: str | None = None,
    structural: bool | None = None,
    source_class: str | None = None,
    columns: Sequence[str] = ("rid",),
) -> tuple[str, list[Any]]:
    """SQL of the current variants on ``ref_seq`` overlapping ``[start, end)`` (see the module docstring).

    ``subject`` (``Patient/id``) narrows to one subject (the per-subject index); without it every
    subject is searched. Returns ``columns`` of ``variant_range``.
    """
    cols = ", ".join(columns)
    parts: list[str] = []
    params: list[Any] = []
    filters = "start_pos < ? AND end_pos > ?"
    extra: list[Any] = [end, start]
    if structural is not None:
        filters += " AND structural = ?"
        extra.append(1 if structural else 0)
    if source_class is not None:
        filters += " AND source_class = ?"
        extra.append(source_class)
    for first, last in bins_overlapping(start, end):
        where = "ref_seq = ? AND bin = ?" if first == last else "ref_seq = ? AND bin BETWEEN ? AND ?"
        bin_params: list[Any] = [first] if first == last else [first, last]
        if subject is not None:
            where = "subject = ? AND " + where
            params.append(subject)
        params += [ref_seq, *bin_params, *extra]
        parts.append(f"SELECT {cols} FROM {TABLE} WHERE {where} AND {filters}")
    return " UNION ALL ".join(parts), params


def count_subjects(store: Store, source_class: str | None = None) -> int:
    """How many distinct subjects have variants (of ``source_class``) in the range index."""
    if source_class is None:
        rows = store.query(f"SELECT COUNT(DISTINCT subject) FROM {TABLE}")
    else:
        rows = store.query(f"SELECT COUNT(DISTINCT subject) FROM {TABLE} WHERE source_class = ?", (source_class,))
    return int(rows[0][0]) if rows else 0


def normalise_allele(position: int, ref: str, alt: str) -> tuple[int, str, str]:
    """(position, REF, ALT) with the bases both alleles share removed (suffix first, then prefix).

    ``(99, "AT", "A")`` (a VCF deletion with its anchor base) becomes ``(100, "T", "")``, the
    SPDI form of the same deletion. No shifting through repeats (that needs the reference).
    """
    r, a = ref.upper(), alt.upper()
    while r and a and r[-1] == a[-1]:
        r, a = r[:-1], a[:-1]
    shift = 0
    while r and a and r[0] == a[0]:
        r, a = r[1:], a[1:]
        shift += 1
    return position + shift, r, a
