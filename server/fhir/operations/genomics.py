"""The HL7 Genomics Reporting STU3 operations (https://hl7.org/fhir/uv/genomics-reporting/STU3/operations.html).

Answered at ``/fhir/Observation/$<name>`` (GET with query parameters, or POST with a Parameters
resource; both take the IG's parameter names), each returning a Parameters resource shaped as
the IG's OperationDefinition says:

- ``$find-subject-variants`` (subject, ranges, genomicSourceClass, includeVariants,
  includePhasing): one ``variants`` parameter per range with ``rangeItem``, ``presence`` and,
  when asked, the ``variant`` Observations and the ``sequencePhaseRelationship`` Observations
  between them. Simple variants only (REF/ALT sequences); structural variants have their own
  operation.
- ``$find-subject-structural-intersecting-variants`` (subject, ranges, genomicSourceClass,
  includeVariants): the same for structural variants (symbolic alleles, breakends, copy number),
  matched on their exact (else outer, else inner) interval.
- ``$find-subject-specific-variants`` (subject, variants, genomicSourceClass, includeVariants):
  one ``variants`` parameter per sought variant with ``variantItem`` and ``presence``.
- ``$find-subject-haplotypes`` (subject, genes): one ``genes`` parameter per gene with
  ``geneItem`` and the subject's ``genotype`` (LOINC 84413-4) and ``haplotype`` (84414-2)
  Observations of that gene (without ``genes``: every gene that has some).
- ``$find-subject-tx-implications`` / ``$find-subject-dx-implications`` (subject, variants,
  ranges, haplotypes, treatments (tx), conditions): the subject's TherapeuticImplication /
  DiagnosticImplication Observations (``tbd-codes-cs#therapeutic-implication`` /
  ``#diagnostic-implication``) as ``implication`` parameters, narrowed to those derived from
  the given variants, from variants in the given ranges, from genotypes/haplotypes with the
  given values, naming the given medications (component 51963-7) or conditions (81259-4); then
  the ``variant``/``genotype``/``haplotype`` Observations they derive from.
- ``$find-population-specific-variants`` (variants, genomicSourceClass, includePatientList):
  how many subjects have the variants (``numerator``) out of the subjects with variant data
  (``denominator``), and who (``subject``). A repeated ``variants`` parameter is a logical AND
  (one answer for the conjunction), a comma-separated list an OR (one answer per item).

Conventions (the IG's): ranges are ``RefSeq:start-end``, 0-based half-open (``NC_000001.11:
12345-67890``; a range ending where a variant starts does not contain it); a list parameter may
be repeated or comma-separated. Variants are SPDI (``NC_000001.11:12344:A:G``; the deleted part
may be a length) or genomic HGVS (``NC_000001.11:g.12345A>G``, ``g.S_Edel``, ``g.S_EinsSEQ``,
``g.S_EdelinsSEQ``); both sides are compared after trimming the bases REF and ALT share, without
shifting through repeats (that needs the reference sequence): an indel written left-aligned (VCF)
and right-aligned (HGVS's 3' rule) in a repeat does not match. Transcript (c.) and protein (p.)
HGVS are refused. ``subject`` is ``Patient/id`` (a bare id means a Patient); an unknown subject is
a 404 rather than "absent". ``testIdentifiers``, ``testDateRange`` and ``specimenIdentifiers``
are refused (400): ignoring them would widen the answer.

Positions come from the range index (:mod:`server.fhir.operations.variant_ranges`); everything
else through the search registry (``subject``, ``code``, ``derived-from`` …).
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from mappers import genomics_codes as gc
from server import jsonio
from server.errors import BadRequest, NotFound
from server.fhir import guard
from server.fhir.bundle import fragment
from server.fhir.context import FhirContext
from server.fhir.operations.variant_ranges import (
    TABLE,
    count_subjects,
    normalise_allele,
    overlap_sql,
    ranges_of,
    subject_reference,
)
from server.search.query import build_sql, parse_search
from server.store.base import StoredResource

__all__ = [
    "DEFINITION_BASE",
    "OPERATIONS",
    "RESOURCE_TYPE",
    "Allele",
    "GenomicRange",
    "capabilities",
    "parameters_pairs",
    "parse_allele",
    "parse_range",
    "run",
]

_LOINC = gc.LOINC
GENOTYPE = "84413-4"
HAPLOTYPE = "84414-2"
PHASE = gc.ALLELIC_PHASE
MEDICATION_ASSESSED = "51963-7"
ASSOCIATED_PHENOTYPE = "81259-4"
_IMPLICATIONS = {"tx": "therapeutic-implication", "dx": "diagnostic-implication"}
_SOURCE_CLASS_NAMES = {
    **{name: name for name in gc.SOURCE_CLASSES},
    **{code: name for name, (code, _) in gc.SOURCE_CLASSES.items()},
}
_ACCESSION = r"[A-Z]{2}_[0-9]+\.[0-9]+"
_RANGE = re.compile(rf"^({_ACCESSION}):([0-9]+)-([0-9]+)$")
_SPDI = re.compile(rf"^({_ACCESSION}):([0-9]+):([A-Za-z]*|[0-9]+):([A-Za-z]*)$")
_HGVS_G = re.compile(rf"^({_ACCESSION}):g\.([0-9]+)(?:_([0-9]+))?([A-Za-z>]+)$")
_BASES = re.compile(r"^[ACGTNacgtn]*$")
#: a stored variant may start this many bases before the position its trimmed form names (VCF
#: anchor bases); the population lookup reads this window of the position index
_ANCHOR_WINDOW = 64
_UNSUPPORTED = ("testIdentifiers", "testDateRange", "specimenIdentifiers")
_CONTROL = ("_format", "_pretty")
_CHUNK = 200


# -- parameter parsing ---------------------------------------------------------------------------


@dataclass(frozen=True)
class GenomicRange:
    """A 0-based half-open interval on a RefSeq sequence, as written in the request."""

    text: str
    ref_seq: str
    start: int
    end: int


@dataclass(frozen=True)
class Allele:
    """A sought simple variant: position (0-based), deleted sequence (or only its length), inserted sequence."""

    text: str
    ref_seq: str
    position: int
    deleted: str | None
    deleted_length: int
    inserted: str

    def matches(self, start: int, ref: str | None, alt: str | None) -> bool:
        """Whether a stored variant (start, REF, ALT as in the VCF) is this one."""
        if ref is None or alt is None:
            return False
        position, r, a = normalise_allele(start, ref, alt)
        if position != self.position or a != self.inserted:
            return False
        return r == self.deleted if self.deleted is not None else len(r) == self.deleted_length


def parse_range(text: str) -> GenomicRange:
    match = _RANGE.match(text.strip())
    if match is None:
        raise BadRequest(
            f"range '{text}' is not a zero-based RefSeq:start-end interval like NC_000007.14:55174721-55174820"
        )
    start, end = int(match.group(2)), int(match.group(3))
    if end <= start:
        raise BadRequest(f"range '{text}' is empty: its end must be greater than its start (0-based, end excluded)")
    return GenomicRange(text.strip(), match.group(1), start, end)


def _allele(text: str, ref_seq: str, position: int, deleted: str | None, length: int, inserted: str) -> Allele:
    if (deleted is not None and not _BASES.match(deleted)) or not _BASES.match(inserted):
        raise BadRequest(f"variant '{text}': sequences are made of A, C, G, T and N")
    if deleted is not None:
        position, deleted, inserted = normalise_allele(position, deleted, inserted)
        return Allele(text, ref_seq, position, deleted, len(deleted), inserted)
    return Allele(text, ref_seq, position, None, length, inserted.upper())


def parse_allele(text: str) -> Allele:
    """An SPDI or genomic HGVS expression (see the module docstring)."""
    value = text.strip()
    spdi = _SPDI.match(value)
    if spdi:
        ref_seq, position, deleted, inserted = spdi.groups()
        if deleted.isdigit():
            return _allele(value, ref_seq, int(position), None, int(deleted), inserted)
        return _allele(value, ref_seq, int(position), deleted, len(deleted), inserted)
    hgvs = _HGVS_G.match(value)
    if hgvs:
        ref_seq, first_text, last_text, change = hgvs.groups()
        first = int(first_text)
        last = int(last_text) if last_text else first
        if first < 1 or last < first:
            raise BadRequest(f"variant '{value}': HGVS positions are 1-based and ordered")
        if ">" in change and last_text is None:
            ref, _, alt = change.partition(">")
            if len(ref) == 1 and len(alt) == 1:
                return _allele(value, ref_seq, first - 1, ref, 1, alt)
        elif change.startswith("delins"):
            return _allele(value, ref_seq, first - 1, None, last - first + 1, change[6:])
        elif change.startswith("del"):
            deleted = change[3:]
            if deleted and len(deleted) != last - first + 1:
                raise BadRequest(f"variant '{value}': the deleted sequence does not span {first}_{last}")
            if deleted:
                return _allele(value, ref_seq, first - 1, deleted, len(deleted), "")
            return _allele(value, ref_seq, first - 1, None, last - first + 1, "")
        elif change.startswith("ins") and last == first + 1:
            return _allele(value, ref_seq, first, "", 0, change[3:])
        raise BadRequest(
            f"variant '{value}' is not supported: use SPDI or genomic HGVS substitution, del, ins or delins "
            "(dup and other forms need the reference sequence)"
        )
    if re.match(r"^[A-Z]{2}_[0-9]+(\.[0-9]+)?:[cnpmr]\.", value):
        raise BadRequest(f"variant '{value}': transcript and protein HGVS are not supported; use genomic (g.) or SPDI")
    raise BadRequest(
        f"variant '{value}' is neither SPDI (NC_000001.11:12344:A:G) nor genomic HGVS (NC_000001.11:g.12345A>G)"
    )


class _Params:
    """The request's parameters by name; lists accept repetition and commas."""

    def __init__(self, operation: str, pairs: Iterable[tuple[str, str]], allowed: Sequence[str]) -> None:
        self.operation = operation
        self.values: dict[str, list[str]] = {}
        for name, value in pairs:
            if name in _CONTROL:
                continue
            if name in _UNSUPPORTED:
                raise BadRequest(f"${operation}: parameter '{name}' is not supported by this server")
            if name not in allowed:
                raise BadRequest(f"${operation}: unknown parameter '{name}' (known: {', '.join(allowed)})")
            self.values.setdefault(name, []).append(value)

    def one(self, name: str, required: bool = False) -> str | None:
        got = self.values.get(name, [])
        if len(got) > 1:
            raise BadRequest(f"${self.operation}: '{name}' may be given once")
        if not got or not got[0].strip():
            if required:
                raise BadRequest(f"${self.operation}: '{name}' is required")
            return None
        return got[0].strip()

    def groups(self, name: str, required: bool = False) -> list[list[str]]:
        """One list per occurrence, split on commas."""
        out = [[item.strip() for item in raw.split(",") if item.strip()] for raw in self.values.get(name, [])]
        out = [group for group in out if group]
        if required and not out:
            raise BadRequest(f"${self.operation}: '{name}' is required")
        return out

    def many(self, name: str, required: bool = False) -> list[str]:
        return [item for group in self.groups(name, required) for item in group]

    def flag(self, name: str) -> bool:
        value = self.one(name)
        if value is None:
            return False
        if value.lower() not in ("true", "false"):
            raise BadRequest(f"${self.operation}: '{name}' must be true or false, not '{value}'")
        return value.lower() == "true"

    def source_class(self) -> str | None:
        value = self.one("genomicSourceClass")
        if value is None:
            return None
        code = value.rsplit("|", 1)[-1]  # germline, somatic, or their LOINC answer codes
        name = _SOURCE_CLASS_NAMES.get(code) or _SOURCE_CLASS_NAMES.get(code.lower())
        if name is None:
            raise BadRequest(f"${self.operation}: genomicSourceClass must be germline or somatic, not '{value}'")
        return name


def parameters_pairs(body: Any) -> list[tuple[str, str]]:
    """(name, value) pairs of a Parameters resource (POST), values as their query-string text."""
    if not isinstance(body, dict) or body.get("resourceType") != "Parameters":
        raise BadRequest("POST a Parameters resource (or use GET with query parameters)")
    pairs: list[tuple[str, str]] = []
    for index, parameter in enumerate(body.get("parameter") or []):
        name = parameter.get("name") if isinstance(parameter, dict) else None
        if not isinstance(name, str):
            raise BadRequest(f"Parameters.parameter[{index}] has no name")
        value: Any = None
        for key, raw in parameter.items():
            if key.startswith("value"):
                value = raw
        if isinstance(value, dict) and "reference" in value:
            value = value["reference"]
        elif isinstance(value, dict) and ("start" in value or "end" in value):
            raise BadRequest(f"Parameters.parameter[{index}] ({name}): Period values are not supported")
        if isinstance(value, bool):
            value = "true" if value else "false"
        if not isinstance(value, str | int):
            raise BadRequest(f"Parameters.parameter[{index}] ({name}) needs a string, code, boolean or reference value")
        pairs.append((name, str(value)))
    return pairs


# -- reading -------------------------------------------------------------------------------------


def _subject(ctx: FhirContext, value: str | None) -> str:
    reference = subject_reference(value or "")
    if reference is None:
        raise BadRequest(f"subject '{value}' is not a reference like Patient/123")
    type_, id_ = reference.split("/", 1)
    found = ctx.store.read(type_, id_)
    if found is None or found.deleted:
        raise NotFound(f"subject {reference} is not known")
    return reference


def _search(ctx: FhirContext, pairs: list[tuple[str, str]]) -> list[StoredResource]:
    """Current Observations matching a search (through the registry and index tables)."""
    parsed = parse_search(ctx.registry, "Observation", pairs, strict=True)
    sql, params = build_sql(parsed)
    return ctx.store.read_many([int(r[0]) for r in ctx.store.query(sql, params)])


def _read_ids(ctx: FhirContext, type_: str, ids: Iterable[str]) -> list[StoredResource]:
    wanted = list(dict.fromkeys(ids))
    out: list[StoredResource] = []
    for start in range(0, len(wanted), _CHUNK):
        chunk = wanted[start : start + _CHUNK]
        marks = ", ".join("?" for _ in chunk)
        rows = ctx.store.query(
            f"SELECT rid FROM resources WHERE res_type = ? AND deleted = 0 AND res_id IN ({marks})", [type_, *chunk]
        )
        out.extend(ctx.store.read_many([int(r[0]) for r in rows]))
    return out


def _overlapping(
    ctx: FhirContext, subject: str, region: GenomicRange, structural: bool, source_class: str | None
) -> list[int]:
    sql, params = overlap_sql(
        region.ref_seq, region.start, region.end, subject=subject, structural=structural, source_class=source_class
    )
    return sorted({int(r[0]) for r in ctx.store.query(sql, params)})


def _candidates(
    ctx: FhirContext, allele: Allele, subject: str | None, source_class: str | None
) -> list[tuple[Any, ...]]:
    """(rid, subject, start, REF, ALT) of the stored simple variants that may be ``allele``, matching ones only."""
    low = allele.position - _ANCHOR_WINDOW
    if subject is not None:
        sql, params = overlap_sql(
            allele.ref_seq,
            max(0, low),
            allele.position + max(allele.deleted_length, 1) + 1,
            subject=subject,
            structural=False,
            source_class=source_class,
            columns=("rid", "subject", "start_pos", "ref_allele", "alt_allele"),
        )
    else:
        sql = (
            f"SELECT rid, subject, start_pos, ref_allele, alt_allele FROM {TABLE} "
            "WHERE ref_seq = ? AND start_pos BETWEEN ? AND ? AND structural = 0"
        )
        params = [allele.ref_seq, low, allele.position]
        if source_class is not None:
            sql += " AND source_class = ?"
            params.append(source_class)
    return [r for r in ctx.store.query(sql, params) if allele.matches(int(r[2]), r[3], r[4])]


def _resource_part(name: str, res: StoredResource) -> dict[str, Any]:
    return {"name": name, "resource": fragment(res)}


def _phase_relationships(ctx: FhirContext, subject: str, variants: Sequence[StoredResource]) -> list[StoredResource]:
    """Sequence-phase-relationship Observations (82120-7) both of whose variants are in ``variants``."""
    refs = [f"Observation/{v.id}" for v in variants]
    inside = set(refs)
    found: dict[int, StoredResource] = {}
    for start in range(0, len(refs), _CHUNK):
        pairs = [
            ("subject", subject),
            ("code", f"{_LOINC}|{PHASE}"),
            ("derived-from", ",".join(refs[start : start + _CHUNK])),
        ]
        for res in _search(ctx, pairs):
            found[res.rid] = res
    out = []
    for res in found.values():
        assert res.content is not None
        derived = {d.get("reference") for d in jsonio.loads(res.content).get("derivedFrom") or ()}
        if derived and derived <= inside:
            out.append(res)
    return out


# -- the operations ------------------------------------------------------------------------------


def _find_in_ranges(ctx: FhirContext, name: str, pairs: Iterable[tuple[str, str]], structural: bool) -> dict[str, Any]:
    allowed = ["subject", "ranges", "genomicSourceClass", "includeVariants"] + (
        [] if structural else ["includePhasing"]
    )
    p = _Params(name, pairs, allowed)
    subject = _subject(ctx, p.one("subject", required=True))
    ranges = [parse_range(text) for text in p.many("ranges", required=True)]
    source_class = p.source_class()
    phasing = not structural and p.flag("includePhasing")
    include = p.flag("includeVariants") or phasing
    out = []
    for region in ranges:
        rids = _overlapping(ctx, subject, region, structural, source_class)
        parts: list[dict[str, Any]] = [
            {"name": "rangeItem", "valueString": region.text},
            {"name": "presence", "valueBoolean": bool(rids)},
        ]
        if include and rids:
            variants = ctx.store.read_many(rids)
            parts += [_resource_part("variant", v) for v in variants]
            if phasing:
                parts += [
                    _resource_part("sequencePhaseRelationship", r) for r in _phase_relationships(ctx, subject, variants)
                ]
        out.append({"name": "variants", "part": parts})
    return {"resourceType": "Parameters", "parameter": out}


def find_subject_variants(ctx: FhirContext, pairs: Iterable[tuple[str, str]]) -> dict[str, Any]:
    return _find_in_ranges(ctx, "find-subject-variants", pairs, structural=False)


def find_subject_structural_intersecting_variants(ctx: FhirContext, pairs: Iterable[tuple[str, str]]) -> dict[str, Any]:
    return _find_in_ranges(ctx, "find-subject-structural-intersecting-variants", pairs, structural=True)


def find_subject_specific_variants(ctx: FhirContext, pairs: Iterable[tuple[str, str]]) -> dict[str, Any]:
    p = _Params(
        "find-subject-specific-variants", pairs, ["subject", "variants", "genomicSourceClass", "includeVariants"]
    )
    subject = _subject(ctx, p.one("subject", required=True))
    alleles = [parse_allele(text) for text in p.many("variants", required=True)]
    source_class = p.source_class()
    include = p.flag("includeVariants")
    out = []
    for allele in alleles:
        rids = sorted({int(r[0]) for r in _candidates(ctx, allele, subject, source_class)})
        parts: list[dict[str, Any]] = [
            {"name": "variantItem", "valueString": allele.text},
            {"name": "presence", "valueBoolean": bool(rids)},
        ]
        if include and rids:
            parts += [_resource_part("variant", v) for v in ctx.store.read_many(rids)]
        out.append({"name": "variants", "part": parts})
    return {"resourceType": "Parameters", "parameter": out}


def _concept_matches(concept: Any, token: str) -> bool:
    """Token match on a CodeableConcept: ``system|code``, ``code``, or the display/text (case-insensitive)."""
    if not isinstance(concept, dict):
        return False
    system, bar, code = token.rpartition("|")
    for coding in concept.get("coding") or ():
        if not isinstance(coding, dict):
            continue
        if coding.get("code") == code and (not bar or (coding.get("system") or "") == system):
            return True
        if not bar and isinstance(coding.get("display"), str) and coding["display"].lower() == code.lower():
            return True
    text = concept.get("text")
    return not bar and isinstance(text, str) and text.lower() == code.lower()


def _components(resource: Mapping[str, Any], code: str) -> list[Any]:
    return [
        c.get("valueCodeableConcept")
        for c in resource.get("component") or ()
        if isinstance(c, dict) and any(x.get("code") == code for x in (c.get("code") or {}).get("coding") or ())
    ]


def _gene_of(resource: Mapping[str, Any]) -> str | None:
    for concept in _components(resource, gc.GENE_STUDIED):
        if isinstance(concept, dict):
            for coding in concept.get("coding") or ():
                if coding.get("display") or coding.get("code"):
                    return str(coding.get("display") or coding.get("code"))
            if concept.get("text"):
                return str(concept["text"])
    return None


def _code_of(resource: Mapping[str, Any]) -> str | None:
    for coding in (resource.get("code") or {}).get("coding") or ():
        if isinstance(coding, dict) and coding.get("code"):
            return str(coding["code"])
    return None


def find_subject_haplotypes(ctx: FhirContext, pairs: Iterable[tuple[str, str]]) -> dict[str, Any]:
    p = _Params("find-subject-haplotypes", pairs, ["subject", "genes"])
    subject = _subject(ctx, p.one("subject", required=True))
    genes = p.many("genes")
    found = _search(ctx, [("subject", subject), ("code", f"{_LOINC}|{GENOTYPE},{_LOINC}|{HAPLOTYPE}")])
    docs = [(res, jsonio.loads(res.content or b"{}")) for res in found]
    items: list[tuple[str, list[tuple[StoredResource, dict[str, Any]]]]]
    if genes:
        items = [
            (gene, [(r, d) for r, d in docs if any(_concept_matches(c, gene) for c in _components(d, gc.GENE_STUDIED))])
            for gene in genes
        ]
    else:
        by_gene: dict[str, list[tuple[StoredResource, dict[str, Any]]]] = {}
        for res, doc in docs:
            by_gene.setdefault(_gene_of(doc) or "unknown", []).append((res, doc))
        items = sorted(by_gene.items())
    out = []
    for gene, matched in items:
        parts: list[dict[str, Any]] = [{"name": "geneItem", "valueString": gene}]
        parts += [_resource_part("genotype", r) for r, d in matched if _code_of(d) == GENOTYPE]
        parts += [_resource_part("haplotype", r) for r, d in matched if _code_of(d) == HAPLOTYPE]
        out.append({"name": "genes", "part": parts})
    return {"resourceType": "Parameters", "parameter": out}


def _implications(ctx: FhirContext, kind: str, pairs: Iterable[tuple[str, str]]) -> dict[str, Any]:
    name = f"find-subject-{kind}-implications"
    allowed = ["subject", "variants", "ranges", "haplotypes", "conditions"] + (["treatments"] if kind == "tx" else [])
    p = _Params(name, pairs, allowed)
    subject = _subject(ctx, p.one("subject", required=True))
    alleles = [parse_allele(text) for text in p.many("variants")]
    ranges = [parse_range(text) for text in p.many("ranges")]
    haplotypes = p.many("haplotypes")
    treatments = p.many("treatments") if kind == "tx" else []
    conditions = p.many("conditions")
    implications = _search(ctx, [("subject", subject), ("code", f"{gc.TBD_CODES}|{_IMPLICATIONS[kind]}")])
    docs = {res.rid: jsonio.loads(res.content or b"{}") for res in implications}
    sources: dict[str, StoredResource] = {}
    wanted = {
        ref.split("/", 1)[1]
        for doc in docs.values()
        for d in doc.get("derivedFrom") or ()
        if isinstance(ref := d.get("reference"), str) and ref.startswith("Observation/")
    }
    for res in _read_ids(ctx, "Observation", sorted(wanted)):
        sources[f"Observation/{res.id}"] = res
    source_docs = {ref: jsonio.loads(res.content or b"{}") for ref, res in sources.items()}

    def derived(doc: Mapping[str, Any]) -> list[str]:
        return [d.get("reference") for d in doc.get("derivedFrom") or () if d.get("reference") in source_docs]

    def by_variant(doc: Mapping[str, Any]) -> bool:
        for ref in derived(doc):
            for row in ranges_of(source_docs[ref]):
                _, ref_seq, start, end, _, ref_allele, alt_allele, _, _, _ = row
                if alleles and any(a.ref_seq == ref_seq and a.matches(start, ref_allele, alt_allele) for a in alleles):
                    return True
                if ranges and any(g.ref_seq == ref_seq and start < g.end and end > g.start for g in ranges):
                    return True
        return False

    def by_haplotype(doc: Mapping[str, Any]) -> bool:
        for ref in derived(doc):
            source = source_docs[ref]
            if _code_of(source) in (GENOTYPE, HAPLOTYPE) and any(
                _concept_matches(source.get("valueCodeableConcept"), h) for h in haplotypes
            ):
                return True
        return False

    kept = []
    for res in implications:
        doc = docs[res.rid]
        if (alleles or ranges or haplotypes) and not (
            ((alleles or ranges) and by_variant(doc)) or (haplotypes and by_haplotype(doc))
        ):
            continue
        if treatments and not any(
            _concept_matches(c, t) for c in _components(doc, MEDICATION_ASSESSED) for t in treatments
        ):
            continue
        if conditions and not any(
            _concept_matches(c, t) for c in _components(doc, ASSOCIATED_PHENOTYPE) for t in conditions
        ):
            continue
        kept.append(res)
    out = [_resource_part("implication", res) for res in kept]
    seen: set[str] = set()
    for res in kept:
        for ref in derived(docs[res.rid]):
            if ref in seen:
                continue
            seen.add(ref)
            code = _code_of(source_docs[ref])
            part = {GENOTYPE: "genotype", HAPLOTYPE: "haplotype", gc.VARIANT_ASSESSMENT: "variant"}.get(code or "")
            if part:
                out.append(_resource_part(part, sources[ref]))
    return {"resourceType": "Parameters", "parameter": out}


def find_subject_tx_implications(ctx: FhirContext, pairs: Iterable[tuple[str, str]]) -> dict[str, Any]:
    return _implications(ctx, "tx", pairs)


def find_subject_dx_implications(ctx: FhirContext, pairs: Iterable[tuple[str, str]]) -> dict[str, Any]:
    return _implications(ctx, "dx", pairs)


def _count_subjects_among(ctx: FhirContext, subjects: Sequence[str], source_class: str | None) -> int:
    """How many of ``subjects`` have variants (of ``source_class``) in the range index."""
    marks = ", ".join("?" for _ in subjects)
    sql = f"SELECT COUNT(DISTINCT subject) FROM {TABLE} WHERE subject IN ({marks})"
    args: list[Any] = list(subjects)
    if source_class is not None:
        sql += " AND source_class = ?"
        args.append(source_class)
    return int(ctx.store.query(sql, args)[0][0])


def find_population_specific_variants(ctx: FhirContext, pairs: Iterable[tuple[str, str]]) -> dict[str, Any]:
    p = _Params("find-population-specific-variants", pairs, ["variants", "genomicSourceClass", "includePatientList"])
    groups = [[parse_allele(text) for text in group] for group in p.groups("variants", required=True)]
    source_class = p.source_class()
    listing = p.flag("includePatientList")
    denominator = count_subjects(ctx.store, source_class)
    # research clients: patients who denied research use (Consent) are in neither count
    excluded = {f"Patient/{p}" for p in guard.research_excluded_patients(ctx)}
    if excluded:
        denominator -= _count_subjects_among(ctx, sorted(excluded), source_class)

    def subjects(allele: Allele) -> set[str]:
        return {str(r[1]) for r in _candidates(ctx, allele, None, source_class)} - excluded

    def answer(item: str, found: set[str]) -> dict[str, Any]:
        parts: list[dict[str, Any]] = [
            {"name": "variantItem", "valueString": item},
            {"name": "numerator", "valueQuantity": {"value": len(found)}},
            {"name": "denominator", "valueQuantity": {"value": denominator}},
        ]
        if listing:
            parts += [{"name": "subject", "valueString": s} for s in sorted(found)]
        return {"name": "variants", "part": parts}

    if len(groups) == 1:  # OR: one answer per variant
        out = [answer(a.text, subjects(a)) for a in groups[0]]
    else:  # AND of the repeated parameters (each an OR of its items): one answer
        found: set[str] | None = None
        for group in groups:
            either = set().union(*(subjects(a) for a in group))
            found = either if found is None else found & either
        text = " AND ".join(",".join(a.text for a in group) for group in groups)
        out = [answer(text, found or set())]
    return {"resourceType": "Parameters", "parameter": out}


#: operation name (without $) -> implementation; routes and the CapabilityStatement are made from it
OPERATIONS: dict[str, Callable[[FhirContext, Iterable[tuple[str, str]]], dict[str, Any]]] = {
    "find-subject-variants": find_subject_variants,
    "find-subject-specific-variants": find_subject_specific_variants,
    "find-subject-structural-intersecting-variants": find_subject_structural_intersecting_variants,
    "find-subject-haplotypes": find_subject_haplotypes,
    "find-subject-tx-implications": find_subject_tx_implications,
    "find-subject-dx-implications": find_subject_dx_implications,
    "find-population-specific-variants": find_population_specific_variants,
}
#: the resource type the operations are invoked on, and the canonical urls of the IG's OperationDefinitions
RESOURCE_TYPE = "Observation"
DEFINITION_BASE = "http://hl7.org/fhir/uv/genomics-reporting/OperationDefinition/"


def capabilities() -> list[tuple[str, str, str]]:
    """(resource type, operation name, OperationDefinition canonical) for the CapabilityStatement."""
    return [(RESOURCE_TYPE, name, DEFINITION_BASE + name) for name in OPERATIONS]


def run(ctx: FhirContext, name: str, pairs: Iterable[tuple[str, str]]) -> dict[str, Any]:
    """Run operation ``name`` (without ``$``) with (name, value) parameter pairs; a Parameters resource."""
    operation = OPERATIONS.get(name)
    if operation is None:
        raise NotFound(f"No operation ${name} on Observation (known: {', '.join('$' + n for n in OPERATIONS)})")
    return operation(ctx, list(pairs))
