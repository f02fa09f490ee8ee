"""VCF -> FHIR R4 genomics resources (HL7 Genomics Reporting IG STU3), streaming and pure.

Owns the translation of one sample of a VCF file (VCF 4.1–4.3, https://samtools.github.io/hts-specs/VCFv4.3.pdf;
plain or bgzipped, single- or multi-sample; 4.0 and 4.4 are read the same way) into FHIR resource
dicts following http://hl7.org/fhir/uv/genomics-reporting/ (codes in ``mappers.genomics_codes``):

- one **MolecularSequence** per variant Observation (R4 shape: ``type`` dna, ``coordinateSystem`` 0,
  ``patient``, ``referenceSeq.referenceSeqId`` = the RefSeq ``NC_`` accession, ``windowStart/End``,
  ``strand`` watson, ``variant[start,end,referenceAllele,observedAllele]``, ``readCoverage`` =
  FORMAT/DP, ``structureVariant`` for symbolic alleles). One per variant keeps every variant
  range-searchable on its own (``referenceseqid-variant-coordinate``). ``referenceSeq`` carries
  the accession only: R4 invariant msq-6 allows exactly one of genomeBuild / referenceSeqId /
  referenceSeqPointer / referenceSeqString, and the versioned accession names chromosome and
  build at once (chromosome and build are also in the Observation components);
- one **variant Observation** (profile ``variant``, code 69548-6, value LA9633-4 Present) per
  called non-reference allele of the sample's GT, ``derivedFrom`` its MolecularSequence, with the
  components gene studied, genomic ref seq, assembly, coordinate system (0-based interval),
  exact start-end (``[POS-1, POS-1+len(REF))``; symbolic alleles ``[POS-1, END)``), outer/inner
  start-end from CIPOS/CIEND, ref/alt allele (VCF-normalised strings; not for symbolic alleles),
  DNA change type (SO), allelic state (GT; hemizygous for haploid calls, hetero-/homoplasmic on
  MT), sample allelic frequency (FORMAT/AF, else AD[allele]/sum(AD); never INFO/AF), allelic read
  depth (AD[allele]), population allele frequency (92821-8, the highest gnomAD/ExAC/popmax AF of
  the INFO keys or VEP CSQ fields that name such a resource, see ``mappers.vcf_annotations``;
  never INFO/AF, which is the cohort's; ``code.text`` names the keys read), copy number
  (FORMAT/CN or ``<CNn>``), genomic source class, variation
  codes (ID column: dbSNP ``rs``; ClinVar numeric IDs when the header declares ClinVar CLNSIG, or
  ``VCV`` accessions), and c./p. HGVS + transcript from SnpEff ANN/EFF or VEP CSQ
  (``mappers.vcf_annotations``);
- one **MolecularConsequence** Observation per annotated allele (code tbd-codes-cs#molecular-consequence,
  ``focus`` and ``derivedFrom`` the variant). STU3 constrains GenomicImplication ``value[x]`` to 0..0,
  so the SO consequence terms are ``component[feature-consequence]`` (tbd-codes-cs#feature-consequence),
  with the transcript and c./p. HGVS;
- one **DiagnosticImplication** Observation per allele with ClinVar ``CLNSIG`` (single-ALT records),
  component 53037-8 coded LA6668-3 … LA6675-8; other CLNSIG values are kept as text;
- **sequence phase relationship** Observations (82120-7, value Cis/Trans from
  sequence-phase-relationship-cs, ``derivedFrom`` both variants) between consecutive
  heterozygous phased calls (``|``) of a phase set (same chromosome and FORMAT/PS; phased calls
  without PS form one set per chromosome, as the VCF spec says). Consecutive pairs are enough:
  cis/trans of any two members follows by composition, and the count stays linear;
- one **DiagnosticReport** (51969-4, category GE) last, ``result`` = every Observation, with the
  ingestion summary in ``conclusion`` (text) and the extension ``EXT_INGESTION`` (fileName,
  sha256, sample, build, records, variants, one ``skipped`` entry {reason, count} per reason).

Skipped and counted in :attr:`VcfMapping.report` (records count once under the first reason):
``outside_regions``, ``reference_block`` (gVCF, ALT only ``<NON_REF>``/``<*>``), ``no_genotype``
(no GT), ``no_call`` (no ALT allele called and some allele missing: ``./.``, ``0/.``), ``hom_ref``,
``filtered`` (FILTER not PASS/.), ``sample_filtered`` (FORMAT/FT not PASS/.), both only when
``skip_filtered``, ``unsupported_contig`` (not a primary chromosome: alt/decoy/unplaced); per allele:
``non_ref_allele`` (``<NON_REF>``/``<*>`` called), ``spanning_deletion`` (``*``, ``<*:DEL>``),
``unsupported_symbolic`` (``<CGA_CNVWIN>`` …). When ``skip_filtered`` is False, filtered calls are
mapped with a ``note`` naming the filters. A partly called genotype (``1/.``) is mapped without
allelic state. BCF input is not read (text VCF only).

Ids are ``<ingestion>-<line>-<key>`` (:class:`_Ids`: hashes of patient, sample and file sha256, the
record's line number, a hash of CHROM, POS, REF, ALT and kind): the same file ingested again for
the same patient and sample yields the same ids (idempotent writes), in ascending order through the
file.
A variant Observation and its MolecularSequence share one id (ids are unique per resource type).
References between resources use them (``Observation/<id>``); subject is ``Patient/<patient_id>``.
The DiagnosticReport lists every Observation, so one reference string per Observation is held
until the end of the file; everything else streams.

Bad input raises :class:`VcfError` (file, line, message) before or while iterating: no file,
empty file, invalid header (``##fileformat`` missing, broken ``#CHROM`` line, htslib rejects it),
unknown sample, unknown or conflicting build (``##reference``, ``##contig`` assembly=/length=,
RefSeq contig names and the ``build`` argument must agree; the line of the disagreeing header
line is named), truncated gzip/BGZF data, and broken record lines (htslib parse errors, blank
lines, wrong column count, POS not a number, REF other than A/C/G/T/N, malformed ALT, GT allele
out of range). The caller commits nothing when it is raised.

cyvcf2 (htslib) parses and validates every record and decodes GT; the record's own text line,
read in lockstep, gives exact line numbers and the FORMAT/INFO values of the records that are
mapped (cheaper than one numpy array per ``Variant.format`` call), and shields htslib from lines
it mis-parses (a blank line yields a record whose CHROM access crashes the process).

Resources share read-only sub-structures (CodeableConcepts, constant components such as the
assembly or source class): consumers may set top-level keys and ``meta`` but must copy a resource
(``copy.deepcopy``) before editing nested values in place. Imports nothing from ``server``.
"""

from __future__ import annotations

import bisect
import gzip
import hashlib
import io
import os
import re
import uuid
import zlib
from collections import Counter
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NamedTuple, TextIO

from cyvcf2 import VCF

from mappers import genomics_codes as gc
from mappers.vcf_annotations import Annotation, AnnotationReader, PopulationFrequencies

__all__ = [
    "EXT_INGESTION",
    "NAMESPACE",
    "VariantFacts",
    "VcfError",
    "VcfMapping",
    "VcfReport",
    "map_vcf",
    "read_bed",
]

#: the namespace hashed into every id this mapper derives (a uuid, for its 16 bytes)
NAMESPACE = uuid.UUID("6f0c5b8e-3d1a-5c55-9a57-4b1e0f2f7a11")
#: DiagnosticReport extension carrying the ingestion summary
EXT_INGESTION = "http://bigmed.example/fhir/StructureDefinition/vcf-ingestion"

_FIXED_COLUMNS = ["#CHROM", "POS", "ID", "REF", "ALT", "QUAL", "FILTER", "INFO"]
_BASES = "ACGTNacgtn"
_BASES_COMMA = _BASES + ","
_BAD_FIRST = " \t#"
_FHIR_ID = re.compile(r"^[A-Za-z0-9\-.]{1,64}$")
_STRUCTURED = re.compile(r"^##(\w+)=<(.*)>\s*$")
_KEY_VALUE = re.compile(r'([A-Za-z0-9_.\-]+)=("(?:[^"\\]|\\.)*"|[^,]*)')
_BREAKEND_MATE = re.compile(r"[\[\]]([^:\[\]]+):(\d+)[\[\]]")
_COPY_NUMBER_ALLELE = re.compile(r"^CN(\d+)$")
_BGZF_EOF = bytes.fromhex("1f8b08040000000000ff0600424302001b0003000000000000000000")
_PASS = ("PASS", ".")
_NON_REF = ("<NON_REF>", "<*>")
_SPANNING_DELETION = ("*", "<*:DEL>")
_UNMAPPED_CLNSIG = frozenset(
    ["not provided", "no interpretation for the single variant", "no classification for the single variant"]
)


class VcfError(Exception):
    """Bad VCF (or BED) input: ``file`` and, when known, the 1-based ``line`` the problem is on."""

    def __init__(self, file: str | os.PathLike[str], line: int | None, message: str) -> None:
        self.file = str(file)
        self.line = line
        self.message = message
        where = f"{self.file}: line {line}" if line is not None else self.file
        super().__init__(f"{where}: {message}")


@dataclass
class VcfReport:
    """What an ingestion read, produced and skipped; filled while :meth:`VcfMapping.resources` runs."""

    file: str
    sha256: str
    sample: str
    build: str
    build_evidence: list[str]
    version: str
    records: int = 0  #: data lines read (so far, while resources() runs)
    variants: int = 0  #: variant Observations produced
    resources: Counter[str] = field(default_factory=Counter)  #: produced, by kind
    skipped: Counter[str] = field(default_factory=Counter)  #: by reason
    complete: bool = False  #: the whole file was read

    def as_dict(self) -> dict[str, Any]:
        return {
            "file": self.file,
            "sha256": self.sha256,
            "sample": self.sample,
            "build": self.build,
            "buildEvidence": list(self.build_evidence),
            "vcfVersion": self.version,
            "records": self.records,
            "variants": self.variants,
            "resources": dict(self.resources),
            "skipped": dict(sorted(self.skipped.items())),
            "complete": self.complete,
        }

    def summary(self) -> str:
        skipped = ", ".join(f"{reason} {count}" for reason, count in sorted(self.skipped.items())) or "none"
        return (
            f"{self.variants} variant(s) from {self.file} (sha256 {self.sha256}), sample {self.sample}, "
            f"{self.build}; {self.records} record(s) read; skipped: {skipped}."
        )


# -- header --------------------------------------------------------------------------------------
@dataclass
class _Header:
    version: str
    lines: int  #: number of header lines, the #CHROM line included
    samples: list[str]
    infos: dict[str, str]  #: INFO ID -> Description
    contigs: list[dict[str, str]]
    references: list[tuple[int, str]]  #: (line, value)
    file_date: str | None
    clinvar: bool  #: the header declares ClinVar annotations (CLNSIG)


def _open_text(path: Path) -> TextIO:
    with path.open("rb") as fh:
        magic = fh.read(2)
    if magic == b"\x1f\x8b":
        return io.TextIOWrapper(gzip.GzipFile(path, "rb"), encoding="utf-8", newline="")
    return path.open(encoding="utf-8", newline="")


def _structured(value: str) -> dict[str, str]:
    fields: dict[str, str] = {}
    for key, raw in _KEY_VALUE.findall(value):
        fields[key] = raw[1:-1].replace('\\"', '"') if raw.startswith('"') else raw
    return fields


def _read_header(path: Path) -> _Header:
    infos: dict[str, str] = {}
    contigs: list[dict[str, str]] = []
    references: list[tuple[int, str]] = []
    file_date: str | None = None
    version = ""
    try:
        with _open_text(path) as fh:
            number = 0
            for number, raw in enumerate(fh, start=1):  # number is read after the loop
                line = raw.rstrip("\r\n")
                if number == 1:
                    if not line.startswith("##fileformat=VCFv"):
                        raise VcfError(path, 1, "not a VCF file: the first line must be ##fileformat=VCFv4.x")
                    version = line[len("##fileformat=VCFv") :]
                    if not re.fullmatch(r"4\.[0-4]", version):
                        raise VcfError(path, 1, f"unsupported VCF version {version!r} (4.0 to 4.4 are read)")
                    continue
                if line.startswith("##"):
                    match = _STRUCTURED.match(line)
                    if match:
                        kind, body = match.groups()
                        if kind == "INFO":
                            fields = _structured(body)
                            if "ID" in fields:
                                infos[fields["ID"]] = fields.get("Description", "")
                        elif kind == "contig":
                            contigs.append({**_structured(body), "_line": str(number)})
                    elif line.startswith("##reference="):
                        references.append((number, line[len("##reference=") :]))
                    elif line.startswith("##fileDate="):
                        file_date = line[len("##fileDate=") :].strip()
                    continue
                if line.startswith("#CHROM"):
                    columns = line.split("\t")
                    if columns[:8] != _FIXED_COLUMNS:
                        raise VcfError(path, number, f"the header line must start with {' '.join(_FIXED_COLUMNS)}")
                    samples = columns[9:]
                    if len(columns) > 8 and columns[8] != "FORMAT":
                        raise VcfError(path, number, f"column 9 of the #CHROM line must be FORMAT, not {columns[8]!r}")
                    for index, name in enumerate(samples, start=10):
                        if not name.strip():
                            raise VcfError(path, number, f"empty sample name in column {index} (trailing tab?)")
                    duplicates = sorted(name for name, n in Counter(samples).items() if n > 1)
                    if duplicates:
                        raise VcfError(path, number, f"duplicate sample name(s): {', '.join(duplicates)}")
                    return _Header(
                        version=version,
                        lines=number,
                        samples=samples,
                        infos=infos,
                        contigs=contigs,
                        references=references,
                        file_date=file_date,
                        clinvar="CLNSIG" in infos,
                    )
                raise VcfError(path, number, "expected a ##meta line or the #CHROM header line")
    except (OSError, EOFError, UnicodeDecodeError, gzip.BadGzipFile) as exc:
        raise VcfError(path, None, f"cannot read the header: {exc}") from exc
    if number == 0:
        raise VcfError(path, None, "empty file")
    raise VcfError(path, number, "the header has no #CHROM line")


def _resolve_build(path: Path, header: _Header, requested: str | None) -> tuple[str, list[str]]:
    """The build the header states (and the argument confirms), with the evidence; else VcfError."""
    votes: list[tuple[str, int, str]] = []  # (build, header line, what says so)
    assemblies: Counter[tuple[str, str]] = Counter()
    lengths: Counter[str] = Counter()
    for line, value in header.references:
        found = gc.build_from_text(value)
        if found:
            votes.append((found, line, f"##reference={value}"))
    for contig in header.contigs:
        name, line = contig.get("ID", ""), int(contig["_line"])
        assembly = contig.get("assembly")
        if assembly:
            found = gc.build_from_text(assembly) or f"other:{assembly}"
            if not assemblies[(found, assembly)]:
                votes.append((found, line, f"##contig=<ID={name},assembly={assembly}>"))
            assemblies[(found, assembly)] += 1
        accession_build = gc.accession_build(name)
        if accession_build:
            votes.append((accession_build, line, f"##contig=<ID={name}> (RefSeq accession)"))
        chromosome = gc.chromosome_name(name)
        length = contig.get("length", "")
        if chromosome and length.isdigit():
            by_length = gc.build_from_length(chromosome, int(length))
            if by_length == "other":
                what = f"##contig=<ID={name},length={length}> (matches neither GRCh37 nor GRCh38)"
                votes.append(("other", line, what))
            elif by_length:
                if not lengths[by_length]:
                    votes.append((by_length, line, f"##contig=<ID={name},length={length}>"))
                lengths[by_length] += 1
    evidence = [f"{where} -> {build}" for build, _, where in votes]
    evidence += [f"{n} ##contig line(s) with assembly={a} -> {b}" for (b, a), n in assemblies.items() if n > 1]
    evidence += [f"{n} ##contig length(s) of {b} chromosomes" for b, n in lengths.items() if n > 1]
    if requested is not None:
        build = gc.normalise_build(requested)
        if build is None:
            raise VcfError(path, None, f"unknown build {requested!r}: use GRCh37 or GRCh38")
        against = [vote for vote in votes if vote[0] != build]
        if against:
            b, line, where = against[0]
            raise VcfError(path, line, f"conflicting build: build={requested} but the header says {where} ({b})")
        return build, [f"build={requested}", *evidence]
    builds = sorted({b for b, _, _ in votes})
    if not builds:
        raise VcfError(
            path,
            None,
            "unknown build: the header names no assembly (##reference, ##contig assembly=/length=); "
            "pass build='GRCh37' or 'GRCh38'",
        )
    if len(builds) > 1:
        first = {b: (line, where) for b, line, where in reversed(votes)}
        detail = "; ".join(f"line {first[b][0]} {first[b][1]} says {b}" for b in builds)
        raise VcfError(path, max(line for line, _ in first.values()), f"conflicting build in the header: {detail}")
    build = builds[0]
    if build not in gc.BUILDS:
        _, line, where = next(vote for vote in votes if vote[0] == build)
        raise VcfError(path, line, f"unsupported build: {where} ({build}); GRCh37 and GRCh38 are supported")
    return build, evidence


def _sha256_and_check(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as fh:
        head = fh.read(18)
        digest.update(head)
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            digest.update(chunk)
        # BGZF (bgzip) blocks: FEXTRA with the 'BC' subfield; a file cut at a block boundary reads
        # without error, so the end-of-file marker block is the only sign of truncation
        if head[:4] == b"\x1f\x8b\x08\x04" and head[12:14] == b"BC":
            size = fh.seek(0, os.SEEK_END)
            fh.seek(max(0, size - len(_BGZF_EOF)))
            if fh.read() != _BGZF_EOF:
                raise VcfError(path, None, "truncated: the BGZF end-of-file marker is missing")
    return digest.hexdigest()


# -- regions -------------------------------------------------------------------------------------
Regions = dict[str, tuple[list[int], list[int]]]


def read_bed(path: str | os.PathLike[str]) -> Regions:
    """BED intervals (0-based, half-open) by canonical chromosome, merged and sorted."""
    intervals: list[tuple[str, int, int]] = []
    try:
        with Path(path).open(encoding="utf-8") as fh:
            for number, raw in enumerate(fh, start=1):
                line = raw.strip()
                if not line or line.startswith(("#", "track", "browser")):
                    continue
                fields = line.split("\t") if "\t" in line else line.split()
                if len(fields) < 3:
                    raise VcfError(path, number, "a BED line needs chrom, start and end")
                try:
                    start, end = int(fields[1]), int(fields[2])
                except ValueError as exc:
                    raise VcfError(
                        path, number, f"BED start/end must be integers: {fields[1]!r}, {fields[2]!r}"
                    ) from exc
                if start < 0 or end < start:
                    raise VcfError(path, number, f"invalid BED interval {start}-{end}")
                intervals.append((fields[0], start, end))
    except OSError as exc:
        raise VcfError(path, None, f"cannot read the BED file: {exc}") from exc
    return _merge(intervals, path)


def _merge(intervals: Iterable[tuple[str, int, int]], source: str | os.PathLike[str]) -> Regions:
    by_chromosome: dict[str, list[tuple[int, int]]] = {}
    for contig, start, end in intervals:
        chromosome = gc.chromosome_name(str(contig)) or str(contig)
        by_chromosome.setdefault(chromosome, []).append((int(start), int(end)))
    regions: Regions = {}
    for chromosome, spans in by_chromosome.items():
        starts: list[int] = []
        ends: list[int] = []
        for start, end in sorted(spans):
            if starts and start <= ends[-1]:
                ends[-1] = max(ends[-1], end)
            else:
                starts.append(start)
                ends.append(end)
        regions[chromosome] = (starts, ends)
    return regions


def _overlaps(regions: Regions, chromosome: str, start: int, end: int) -> bool:
    spans = regions.get(chromosome)
    if spans is None:
        return False
    starts, ends = spans
    i = bisect.bisect_right(starts, start) - 1
    if i >= 0 and ends[i] > start:
        return True
    return i + 1 < len(starts) and starts[i + 1] < max(end, start + 1)


# -- small helpers used per record ---------------------------------------------------------------
def _parse_info(text: str) -> dict[str, Any]:
    info: dict[str, Any] = {}
    if text == ".":
        return info
    for item in text.split(";"):
        key, eq, value = item.partition("=")
        info[key] = value if eq else True
    return info


def _int_pair(value: Any) -> tuple[int, int] | None:
    if not isinstance(value, str):
        return None
    parts = value.split(",")
    try:
        return (int(parts[0]), int(parts[1])) if len(parts) == 2 else None
    except ValueError:
        return None


def _to_int(value: str | None) -> int | None:
    if value is None or value in (".", ""):
        return None
    try:
        return int(value)
    except ValueError:
        return None


def _change_type(ref: str, alt: str) -> str:
    """SO variant class of a sequence allele, after trimming the bases REF and ALT share."""
    r, a = ref.upper(), alt.upper()
    while r and a and r[-1] == a[-1]:
        r, a = r[:-1], a[:-1]
    while r and a and r[0] == a[0]:
        r, a = r[1:], a[1:]
    if not r and not a:
        return "sequence_alteration"
    if not r:
        return "insertion"
    if not a:
        return "deletion"
    if len(r) == len(a):
        return "SNV" if len(r) == 1 else "MNV"
    return "delins"


def _symbolic_type(alt: str) -> tuple[str | None, int | None]:
    """(SO class, copy number) of a symbolic ALT ``<…>``; (None, None) when not mapped."""
    name = alt[1:-1].upper()
    top = name.split(":", 1)[0]
    if top == "DEL":
        return "deletion", None
    if top == "DUP":
        return ("tandem_duplication" if name.startswith("DUP:TANDEM") else "duplication"), None
    if top == "INV":
        return "inversion", None
    if top == "INS":
        return ("mobile_element_insertion" if ":ME" in name else "insertion"), None
    if top == "CNV":
        return "copy_number_variation", None
    match = _COPY_NUMBER_ALLELE.match(name)
    if match:
        return "copy_number_variation", int(match.group(1))
    return None, None


def _valid_alt(alt: str) -> bool:
    if not alt:
        return False
    if not alt.strip(_BASES) or alt == "*":
        return True
    if alt[0] == "<":
        return alt[-1] == ">" and len(alt) > 2 and "<" not in alt[1:-1] and ">" not in alt[1:-1]
    if "[" in alt or "]" in alt:
        return _BREAKEND_MATE.search(alt) is not None
    return len(alt) > 1 and (alt[0] == "." or alt[-1] == ".") and not alt.strip(_BASES + ".")


class _Ids:
    """The ids of one ingestion: ``<ingestion>-<line>-<key>``, ascending through the file.

    ``<ingestion>`` is 16 hex digits of sha1(``NAMESPACE``, patient, sample, file sha256),
    ``<line>`` the record's line number (9 digits), ``<key>`` 16 hex digits of sha1 of what tells
    the resources of one line apart (CHROM, POS, REF, ALT, kind). The same file for the same
    patient and sample gives the same ids (idempotent writes); and, unlike uuids, one ingestion's
    ids come in ascending order, so the store's B-trees keyed by them (the resources' ids, the
    references to them: ``result``, ``derived-from``) grow at their end instead of at a random
    page per resource (``bench/vcf.py``: README, "Performance").
    """

    def __init__(self, patient: str, sample: str, sha256: str) -> None:
        self._name = f"{patient}\x1f{sample}\x1f{sha256}"
        self._prefix = hashlib.sha1(NAMESPACE.bytes + self._name.encode()).hexdigest()[:16]

    def __call__(self, line: int, key: str) -> str:
        return f"{self._prefix}-{line:09d}-{hashlib.sha1(key.encode()).hexdigest()[:16]}"

    def report(self) -> str:
        """The DiagnosticReport's id: uuid5(``NAMESPACE``, patient, sample, sha256, "report"), as
        every version of this mapper has made it, so that ingesting a file again after an upgrade
        finds the report of the earlier ingestion and deletes what it listed and this one does
        not (the variants under their earlier ids) instead of keeping both."""
        return str(uuid.uuid5(NAMESPACE, f"{self._name}\x1freport"))


def _reject_line(path: Path, line_no: int, line: str) -> None:
    if not line.strip():
        raise VcfError(path, line_no, "blank line in the data section")
    if line[0] == "#":
        raise VcfError(path, line_no, "header line after the #CHROM line")
    raise VcfError(path, line_no, "empty CHROM")


def _check_alts(path: Path, line_no: int, alt_text: str) -> None:
    for alt in alt_text.split(","):
        if not _valid_alt(alt):
            raise VcfError(path, line_no, f"ALT allele {alt!r} is not valid")


def _int_list(text: str) -> list[int | None]:
    try:
        return [int(v) for v in text.split(",")]
    except ValueError:
        return [_to_int(v) for v in text.split(",")]


def _to_float(value: str) -> float | None:
    try:
        return float(value)
    except ValueError:
        return None


def _variation_ids(id_text: str, code: dict[str, Any], clinvar: bool) -> list[dict[str, Any]]:
    """81252-9 components for the ID column: dbSNP rs numbers and ClinVar variation IDs."""
    found: list[dict[str, Any]] = []
    for identifier in id_text.split(";"):
        if identifier.startswith("rs") and identifier[2:].isdigit():
            system = gc.DBSNP
            value = identifier
        elif identifier.startswith("VCV") and identifier[3:].split(".")[0].isdigit():
            system, value = gc.CLINVAR, str(int(identifier[3:].split(".")[0]))
        elif clinvar and identifier.isdigit():
            system, value = gc.CLINVAR, identifier
        else:
            continue  # caller-specific record names (MantaBND:…) are not variation codes
        found.append({"code": code, "valueCodeableConcept": gc.concept(system, value)})
    return found


def _range(code: str, low: int, high: int) -> dict[str, Any]:
    return gc.component(code, "valueRange", {"low": {"value": low}, "high": {"value": high}})


def _structural(
    alt: str,
    allele: int,
    alleles: list[int],
    alts: list[str],
    chromosome: str,
    start: int,
    record_end: int,
    fmt: dict[str, str],
    info: dict[str, Any],
) -> tuple[str, int, dict[str, Any], list[dict[str, Any]], int | None] | None:
    """A symbolic or breakend ALT -> (SO class, end, MolecularSequence.structureVariant, components, copy number).

    Coordinates are 0-based half-open: ``[POS-1, END)`` for ``<DEL>``/``<DUP>``/``<INV>``/``<CNV>``,
    the padding base ``[POS-1, POS)`` for breakends and ``<INS>``. CIPOS/CIEND widen the ends into
    the outer range and narrow them into the inner one (omitted when empty). None when not mapped.
    """
    if alt[0] == "<":
        so_name, allele_copies = _symbolic_type(alt)
        if so_name is None:
            return None
        point = so_name in ("insertion", "mobile_element_insertion")
        end = max(record_end, start + 1)
    else:
        mate = _BREAKEND_MATE.search(alt)
        if mate is None:
            so_name = "structural_variant"  # single breakend (``G.`` / ``.G``)
        elif gc.chromosome_name(mate.group(1)) == chromosome:
            so_name = "intrachromosomal_breakpoint"
        else:
            so_name = "interchromosomal_breakpoint"
        allele_copies, point, end = None, True, start + 1
    cipos = _int_pair(info.get("CIPOS"))
    ciend = _int_pair(info.get("CIEND"))
    if ciend is None and point:
        ciend = cipos
    intervals = cipos is not None or ciend is not None
    structure: dict[str, Any] = {"exact": "IMPRECISE" not in info and (not intervals or "PRECISE" in info)}
    components: list[dict[str, Any]] = []
    if not intervals or "PRECISE" in info:
        # the caller's own coordinates; an IMPRECISE call without CIPOS/CIEND has no better ones
        components.append(_range(gc.EXACT_START_END, start, end))
    if intervals:
        low_ci, high_ci = cipos or (0, 0), ciend or (0, 0)
        outer = (max(0, start + low_ci[0]), end + high_ci[1])
        inner = (max(0, start + low_ci[1]), end + high_ci[0])
        components.append(_range(gc.OUTER_START_END, *outer))
        structure["outer"] = {"start": outer[0], "end": outer[1]}
        if inner[0] < inner[1]:
            components.append(_range(gc.INNER_START_END, *inner))
            structure["inner"] = {"start": inner[0], "end": inner[1]}
    svlen = info.get("SVLEN")
    if isinstance(svlen, str):
        lengths = svlen.split(",")
        length = _to_int(lengths[allele - 1 if len(lengths) >= allele else 0].lstrip("-"))
        if length is not None:
            structure["length"] = length
    copy_number = _to_int(fmt.get("CN"))
    if copy_number is None and allele_copies is not None:
        # total copy number from <CNn> alleles: REF counts one copy per haplotype
        copies = [1 if a == 0 else _symbolic_type(alts[a - 1])[1] if a > 0 else None for a in alleles]
        if None not in copies:
            copy_number = sum(c for c in copies if c is not None)
    return so_name, end, structure, components, copy_number


class _Constants:
    """The shared, read-only parts of the resources of one mapping (see the module docstring)."""

    def __init__(self, build: str, source_class: str) -> None:
        self.categories = [
            gc.concept(gc.OBSERVATION_CATEGORY, "laboratory", "Laboratory"),
            gc.concept(gc.V2_0074, "GE", "Genetics"),
        ]
        self.variant_code = gc.loinc(gc.VARIANT_ASSESSMENT, "Genetic variant assessment")
        self.present = gc.loinc(gc.PRESENT, "Present")
        self.consequence_code = gc.concept(gc.TBD_CODES, "molecular-consequence", "Molecular Consequence")
        self.feature_consequence_code = gc.concept(gc.TBD_CODES, "feature-consequence", "Feature Consequence")
        self.implication_code = gc.concept(gc.TBD_CODES, "diagnostic-implication", "Diagnostic Implication")
        self.phase_code = gc.loinc(gc.ALLELIC_PHASE, "Allelic phase")
        self.cis = gc.concept(gc.PHASE_RELATIONSHIP, "Cis", "Cis")
        self.trans = gc.concept(gc.PHASE_RELATIONSHIP, "Trans", "Trans")
        self.assembly_component = gc.component(
            gc.REFERENCE_ASSEMBLY, "valueCodeableConcept", gc.loinc(gc.ASSEMBLY_ANSWERS[build], build)
        )
        self.coordinate_component = gc.component(
            gc.COORDINATE_SYSTEM, "valueCodeableConcept", gc.loinc(gc.ZERO_BASED_INTERVAL, "0-based interval counting")
        )
        self.source_component = gc.component(
            gc.GENOMIC_SOURCE_CLASS, "valueCodeableConcept", gc.loinc(*gc.SOURCE_CLASSES[source_class])
        )
        self.state_components = {
            name: gc.component(gc.ALLELIC_STATE, "valueCodeableConcept", gc.loinc(code, display))
            for name, (code, display) in gc.ALLELIC_STATES.items()
        }
        self.exact_code = gc.loinc(gc.EXACT_START_END)
        self.ref_code = gc.loinc(gc.REF_ALLELE)
        self.alt_code = gc.loinc(gc.ALT_ALLELE)
        self.af_code = gc.loinc(gc.SAMPLE_ALLELIC_FREQUENCY)
        self.depth_code = gc.loinc(gc.ALLELIC_READ_DEPTH)
        self.variation_code = gc.loinc(gc.VARIATION_CODE)
        self._population_codes: dict[tuple[str, ...], dict[str, Any]] = {}
        self._changes: dict[str, dict[str, Any]] = {}
        self._genes: dict[tuple[str, str | None], dict[str, Any]] = {}

    def change_component(self, so_name: str) -> dict[str, Any]:
        found = self._changes.get(so_name)
        if found is None:
            found = self._changes[so_name] = gc.component(
                gc.DNA_CHANGE_TYPE, "valueCodeableConcept", gc.so_concept(so_name)
            )
        return found

    def population_component(self, value: float, keys: tuple[str, ...]) -> dict[str, Any]:
        """92821-8 Population allele frequency; ``code.text`` names the annotation keys it came from."""
        code = self._population_codes.get(keys)
        if code is None:
            code = self._population_codes[keys] = {
                **gc.loinc(gc.POPULATION_ALLELE_FREQUENCY, "Population allele frequency"),
                "text": f"Population allele frequency ({', '.join(keys)})",
            }
        return {"code": code, "valueQuantity": {"value": value, "system": gc.UCUM, "code": "1"}}

    def gene_component(self, symbol: str, hgnc_id: str | None) -> dict[str, Any]:
        found = self._genes.get((symbol, hgnc_id))
        if found is None:
            # the vendored HGNC table wins; otherwise an HGNC ID the annotator gave (VEP --hgnc)
            if hgnc_id and symbol not in gc.hgnc_ids():
                value = gc.concept(gc.HGNC, hgnc_id, symbol)
            else:
                value = gc.gene_concept(symbol)
            found = self._genes[(symbol, hgnc_id)] = gc.component(gc.GENE_STUDIED, "valueCodeableConcept", value)
        return found

    def _observation(self, id_: str, profile: str, code: dict[str, Any], subject: str) -> dict[str, Any]:
        return {
            "resourceType": "Observation",
            "id": id_,
            "meta": {"profile": [profile]},
            "status": "final",
            "category": self.categories,
            "code": code,
            "subject": {"reference": subject},
        }

    def consequence(self, id_: str, subject: str, variant: str, annotation: Annotation) -> dict[str, Any]:
        """MolecularConsequence: SO terms as feature-consequence components (STU3: value[x] 0..0)."""
        resource = self._observation(id_, gc.MOLECULAR_CONSEQUENCE_PROFILE, self.consequence_code, subject)
        resource["focus"] = [{"reference": variant}]
        resource["derivedFrom"] = [{"reference": variant}]
        resource["component"] = [
            *(
                {"code": self.feature_consequence_code, "valueCodeableConcept": gc.so_concept(term)}
                for term in annotation.consequences
            ),
            *_hgvs_components(annotation),
        ]
        return resource

    def implication(self, id_: str, subject: str, variant: str, info: dict[str, Any]) -> dict[str, Any] | None:
        """DiagnosticImplication from ClinVar CLNSIG (53037-8 coded when it is one of the five classes)."""
        significance = info.get("CLNSIG")
        if not isinstance(significance, str) or significance in ("", "."):
            return None
        label = significance.replace("_", " ").replace(",", ", ").strip()
        if label.lower() in _UNMAPPED_CLNSIG:
            return None
        answer = gc.CLINICAL_SIGNIFICANCES.get(label.lower())
        value = gc.loinc(*answer) if answer else {"text": label}
        resource = self._observation(id_, gc.DIAGNOSTIC_IMPLICATION_PROFILE, self.implication_code, subject)
        resource["derivedFrom"] = [{"reference": variant}]
        resource["component"] = [gc.component(gc.CLINICAL_SIGNIFICANCE, "valueCodeableConcept", value)]
        return resource

    def phase(self, id_: str, subject: str, first: str, second: str, *, cis: bool) -> dict[str, Any]:
        """Sequence phase relationship (82120-7) of two variants: Cis or Trans."""
        resource = self._observation(id_, gc.PHASE_RELATIONSHIP_PROFILE, self.phase_code, subject)
        resource["valueCodeableConcept"] = self.cis if cis else self.trans
        resource["derivedFrom"] = [{"reference": first}, {"reference": second}]
        return resource


class VariantFacts(NamedTuple):
    """What the mapper put into a variant Observation and its MolecularSequence, as it knew it.

    :meth:`VcfMapping.items` gives it beside both resources of a sequence variant (not beside
    structural variants, whose interval comes from CIPOS/CIEND), so that a store indexing them
    need not find these values again by walking the resources' components. The values are the
    resources' own: the concepts are the very dicts the resources hold.
    """

    subject: str  #: ``Patient/<id>`` (Observation.subject, MolecularSequence.patient)
    sequence: str  #: ``MolecularSequence/<id>`` (the Observation's ``derivedFrom``)
    chromosome: dict[str, Any]  #: the genomic ref seq (48013-7) component's valueCodeableConcept
    accession: dict[str, Any]  #: MolecularSequence.referenceSeq.referenceSeqId
    gene: dict[str, Any] | None  #: the gene studied (48018-6) component's valueCodeableConcept
    ref_seq: str  #: the RefSeq ``NC_`` accession
    start: int  #: 0-based start of the exact start-end (81254-5) interval
    end: int  #: its exclusive end
    ref: str  #: the ref allele component's value
    alt: str  #: the alt allele component's value
    source_class: str  #: ``germline`` or ``somatic``


# -- the mapping -------------------------------------------------------------------------------
class VcfMapping:
    """One sample of one VCF, ready to stream as FHIR resources (see the module docstring)."""

    def __init__(
        self,
        path: Path,
        patient_id: str,
        header: _Header,
        sample: str,
        build: str,
        build_evidence: list[str],
        sha256: str,
        source_class: str,
        regions: Regions | None,
        skip_filtered: bool,
    ) -> None:
        self.path = path
        self.patient_id = patient_id
        self.sample = sample
        self.build = build
        self.sha256 = sha256
        self.source_class = source_class
        self.skip_filtered = skip_filtered
        self._header = header
        self._regions = regions
        self._build_evidence = build_evidence
        self.report = self._new_report()

    def _new_report(self) -> VcfReport:
        return VcfReport(
            file=self.path.name,
            sha256=self.sha256,
            sample=self.sample,
            build=self.build,
            build_evidence=list(self._build_evidence),
            version=self._header.version,
        )

    # The per-record loop is deliberately one long function with local aliases: it runs once per
    # VCF line and its cost is the mapper's throughput.
    def resources(self) -> Iterator[dict[str, Any]]:
        """FHIR resource dicts in write order; the DiagnosticReport comes last.

        Each call reads the file again and starts a fresh :attr:`report`. Raises :class:`VcfError`
        on a broken record (the resources yielded before it must then be discarded).
        """
        for resource, _ in self.items():
            yield resource

    def items(self) -> Iterator[tuple[dict[str, Any], VariantFacts | None]]:  # one loop over the spec's cases
        """:meth:`resources`, each with the :class:`VariantFacts` of a sequence variant's
        MolecularSequence and Observation (None beside every other resource)."""
        self.report = report = self._new_report()
        path, header = self.path, self._header
        skipped = report.skipped
        counts = report.resources
        ids = _Ids(self.patient_id, self.sample, self.sha256)
        subject_ref = f"Patient/{self.patient_id}"
        sample_column = 9 + header.samples.index(self.sample)
        multi = len(header.samples) > 1
        tabs = 8 + len(header.samples)
        regions = self._regions
        skip_filtered = self.skip_filtered
        annotations = AnnotationReader(header.infos)
        annotated = annotations.key is not None
        populations = PopulationFrequencies(header.infos)
        wants_info = annotated or header.clinvar or bool(populations)
        k = _Constants(self.build, self.source_class)
        mt_accession = self._mt_accession()
        table = gc.refseq_chromosomes()[self.build]
        chromosomes: dict[str, tuple[str, str, dict[str, Any], dict[str, Any]] | None] = {}

        def chromosome_of(contig: str) -> tuple[str, str, dict[str, Any], dict[str, Any]] | None:
            name = gc.chromosome_name(contig)
            found = None
            if name is not None:
                accession = mt_accession if name == "MT" else table[name].accession
                found = (
                    name,
                    accession,
                    gc.component(gc.GENOMIC_REF_SEQ, "valueCodeableConcept", gc.concept(gc.REFSEQ, accession)),
                    gc.concept(gc.NUCCORE, accession),
                )
            chromosomes[contig] = found
            return found

        state_components = k.state_components
        change_component = k.change_component
        categories, variant_code, present = k.categories, k.variant_code, k.present
        exact_code, ref_code, alt_code = k.exact_code, k.ref_code, k.alt_code
        af_code, depth_code, variation_code = k.af_code, k.depth_code, k.variation_code
        assembly_component, coordinate_component = k.assembly_component, k.coordinate_component
        source_component = k.source_component
        variant_profile = gc.VARIANT_PROFILE
        ucum = gc.UCUM

        observations: list[str] = []
        phase_sets: dict[str | None, tuple[str, int]] = {}
        phase_chromosome = ""
        records_read = 0
        variants = 0

        try:
            text = _open_text(path)
        except OSError as exc:
            raise VcfError(path, None, f"cannot open: {exc}") from exc
        try:
            reader = VCF(str(path), samples=[self.sample] if multi else None)
        except Exception as exc:  # cyvcf2 raises bare Exception/OSError for header errors
            text.close()
            raise VcfError(path, None, f"htslib cannot read the file: {exc}") from exc
        records = iter(reader)
        line_no = 0
        try:
            for _ in range(header.lines):
                next(text)
            line_no = header.lines
            for raw in text:
                line_no += 1
                line = raw[:-1] if raw[-1:] == "\n" else raw
                if line[-1:] == "\r":
                    line = line[:-1]
                # checked before cyvcf2 builds its record: htslib turns a blank line or an empty CHROM
                # into a record whose CHROM access crashes the process
                if not line or line[0] in _BAD_FIRST:
                    _reject_line(path, line_no, line)
                if line.count("\t") != tabs:
                    raise VcfError(
                        path, line_no, f"expected {tabs + 1} tab-separated columns, found {line.count(chr(9)) + 1}"
                    )
                try:
                    variant = next(records)
                except StopIteration:
                    raise VcfError(path, line_no, "htslib stopped reading before this line") from None
                except Exception as exc:  # cyvcf2 raises bare Exception on htslib errors
                    raise VcfError(path, line_no, f"cannot parse the record: {exc}") from exc
                records_read += 1
                report.records = records_read  # live: callers show progress with it
                contig, pos_text, id_text, ref, alt_text, tail = line.split("\t", 5)  # the tabs were counted
                # the two readers stay in step (checked at the end: same number of records and lines)
                if not pos_text.isdigit() or pos_text[0] == "0":
                    raise VcfError(path, line_no, f"POS {pos_text!r} is not a position")
                pos = int(pos_text)
                if not ref or ref.strip(_BASES):
                    raise VcfError(path, line_no, f"REF {ref!r} is not a sequence of A, C, G, T, N")
                if alt_text != "." and (
                    alt_text.strip(_BASES_COMMA) or alt_text[0] == "," or alt_text[-1] == "," or ",," in alt_text
                ):
                    _check_alts(path, line_no, alt_text)
                start = pos - 1
                if regions is not None and not _overlaps(
                    regions, gc.chromosome_name(contig) or contig, start, variant.end
                ):
                    skipped["outside_regions"] += 1
                    continue
                if alt_text in _NON_REF:
                    skipped["reference_block"] += 1
                    continue
                try:
                    genotype = variant.genotypes[0]
                except Exception:  # noqa: BLE001  # cyvcf2: "error parsing genotypes" when FORMAT has no GT
                    skipped["no_genotype"] += 1
                    continue
                alleles = genotype[:-1]
                if max(alleles) <= 0:
                    skipped["no_call" if min(alleles) < 0 else "hom_ref"] += 1
                    continue
                rest = tail.split("\t")
                filters = rest[1]
                if skip_filtered and filters not in _PASS:
                    skipped["filtered"] += 1
                    continue
                fmt = dict(zip(rest[3].split(":"), rest[sample_column - 5].split(":"), strict=False))
                sample_filter = fmt.get("FT")
                if skip_filtered and sample_filter is not None and sample_filter not in _PASS:
                    skipped["sample_filtered"] += 1
                    continue
                place = chromosomes[contig] if contig in chromosomes else chromosome_of(contig)
                if place is None:
                    skipped["unsupported_contig"] += 1
                    continue
                chromosome, accession, refseq_component, accession_concept = place
                if chromosome != phase_chromosome:
                    phase_sets.clear()
                    phase_chromosome = chromosome
                alts = alt_text.split(",")
                info = _parse_info(rest[2]) if wants_info else None
                ploidy = len(alleles)
                missing = min(alleles) < 0
                phased = genotype[-1] and ploidy > 1 and not missing
                ad = fmt.get("AD")
                ad_values: list[int | None] | None = None
                if ad is not None and ad != ".":
                    try:
                        ad_values = [int(v) for v in ad.split(",")]
                    except ValueError:
                        ad_values = _int_list(ad)
                af = fmt.get("AF")
                af_values = af.split(",") if af is not None and af != "." else None
                depth = _to_int(fmt.get("DP"))
                notes: list[dict[str, str]] | None = None
                if filters not in _PASS:
                    notes = [{"text": f"VCF FILTER: {filters.replace(';', ', ')}"}]
                if sample_filter is not None and sample_filter not in _PASS:
                    notes = [*(notes or []), {"text": f"VCF FORMAT/FT: {sample_filter.replace(';', ', ')}"}]
                variation_ids = _variation_ids(id_text, variation_code, header.clinvar) if id_text != "." else None
                for allele in alleles if ploidy == 1 else dict.fromkeys(alleles):
                    if allele <= 0:
                        continue
                    if allele > len(alts) or alt_text == ".":
                        raise VcfError(
                            path, line_no, f"GT allele {allele} but the record has {len(alts)} ALT allele(s)"
                        )
                    alt = alts[allele - 1]
                    end = start + len(ref)
                    allele_notes = notes
                    structure: dict[str, Any] | None = None
                    sv_components: list[dict[str, Any]] = []
                    copy_number: int | None = None
                    if alt[0] in "<[]." or alt[-1] in "[]." or alt == "*":
                        if alt in _NON_REF:
                            skipped["non_ref_allele"] += 1
                            continue
                        if alt in _SPANNING_DELETION:
                            skipped["spanning_deletion"] += 1
                            continue
                        sv = _structural(
                            alt,
                            allele,
                            alleles,
                            alts,
                            chromosome,
                            start,
                            variant.end,
                            fmt,
                            info if info is not None else _parse_info(rest[2]),
                        )
                        if sv is None:
                            skipped["unsupported_symbolic"] += 1
                            continue
                        so_name, end, structure, sv_components, copy_number = sv
                        allele_notes = [*(notes or []), {"text": f"VCF ALT: {alt}"}]
                    elif len(ref) == 1 and len(alt) == 1:
                        so_name = "SNV"
                    else:
                        so_name = _change_type(ref, alt)
                    # -- variant Observation and its MolecularSequence (same id, two types) ------
                    key = f"{line_no}:{contig}:{pos}:{ref}:{alt}"
                    oid = ids(line_no, key)
                    observation_ref = "Observation/" + oid
                    annotation: Annotation | None = None
                    if annotated and info is not None:
                        annotation = annotations.annotate(info, ref, alts, allele)
                    components: list[dict[str, Any]] = []
                    gene = None
                    if annotation is not None and annotation.gene:
                        gene_component = k.gene_component(annotation.gene, annotation.hgnc_id)
                        components.append(gene_component)
                        gene = gene_component["valueCodeableConcept"]
                    components.append(refseq_component)
                    components.append(assembly_component)
                    components.append(coordinate_component)
                    if structure is None:
                        components.append(
                            {"code": exact_code, "valueRange": {"low": {"value": start}, "high": {"value": end}}}
                        )
                        components.append({"code": ref_code, "valueString": ref})
                        components.append({"code": alt_code, "valueString": alt})
                    else:
                        components.extend(sv_components)
                    components.append(change_component(so_name))
                    if not missing:
                        count = alleles.count(allele)
                        if chromosome == "MT":
                            components.append(state_components["homoplasmic" if count == ploidy else "heteroplasmic"])
                        elif ploidy == 1:
                            components.append(state_components["hemizygous"])
                        else:
                            components.append(state_components["homozygous" if count == ploidy else "heterozygous"])
                    allele_depth = ad_values[allele] if ad_values is not None and len(ad_values) > allele else None
                    frequency = None
                    if af_values is not None:
                        frequency = _to_float(af_values[allele - 1]) if len(af_values) >= allele else None
                    elif allele_depth is not None and ad_values is not None:
                        total = sum(v for v in ad_values if v is not None)
                        if total > 0:
                            frequency = allele_depth / total
                    if frequency is not None:
                        components.append(
                            {
                                "code": af_code,
                                "valueQuantity": {"value": round(frequency, 4), "system": ucum, "code": "1"},
                            }
                        )
                    if allele_depth is not None:
                        components.append({"code": depth_code, "valueQuantity": {"value": allele_depth}})
                    if info is not None and (populations or (annotation is not None and annotation.population_keys)):
                        population_af, population_keys = populations.read(info, alts, allele)
                        if annotation is not None and annotation.population_af is not None:
                            population_keys += [f"CSQ {key}" for key in annotation.population_keys]
                            if population_af is None or annotation.population_af > population_af:
                                population_af = annotation.population_af
                        if population_af is not None:
                            components.append(k.population_component(population_af, tuple(population_keys)))
                    if copy_number is not None:
                        components.append(
                            gc.component(
                                gc.COPY_NUMBER, "valueQuantity", {"value": copy_number, "system": ucum, "code": "1"}
                            )
                        )
                    components.append(source_component)
                    if variation_ids:
                        components.extend(variation_ids)
                    if annotation is not None:
                        components.extend(_hgvs_components(annotation))
                    sequence: dict[str, Any] = {
                        "resourceType": "MolecularSequence",
                        "id": oid,
                        "type": "dna",
                        "coordinateSystem": 0,
                        "patient": {"reference": subject_ref},
                        "referenceSeq": {
                            "referenceSeqId": accession_concept,
                            "strand": "watson",
                            "windowStart": start,
                            "windowEnd": end,
                        },
                        "variant": [
                            {"start": start, "end": end, "observedAllele": alt, "referenceAllele": ref}
                            if structure is None
                            else {"start": start, "end": end}
                        ],
                    }
                    if depth is not None:
                        sequence["readCoverage"] = depth
                    facts = None
                    if structure is not None:
                        sequence["structureVariant"] = [structure]
                    else:
                        facts = VariantFacts(
                            subject_ref,
                            "MolecularSequence/" + oid,
                            refseq_component["valueCodeableConcept"],
                            accession_concept,
                            gene,
                            accession,
                            start,
                            end,
                            ref,
                            alt,
                            self.source_class,
                        )
                    yield sequence, facts
                    observation: dict[str, Any] = {
                        "resourceType": "Observation",
                        "id": oid,
                        "meta": {"profile": [variant_profile]},
                        "status": "final",
                        "category": categories,
                        "code": variant_code,
                        "subject": {"reference": subject_ref},
                        "valueCodeableConcept": present,
                        "derivedFrom": [{"reference": "MolecularSequence/" + oid}],
                        "component": components,
                    }
                    if allele_notes:
                        observation["note"] = list(allele_notes)
                    yield observation, facts
                    variants += 1
                    observations.append(observation_ref)
                    if annotation is not None and annotation.consequences:
                        consequence = k.consequence(
                            ids(line_no, key + ":consequence"), subject_ref, observation_ref, annotation
                        )
                        yield consequence, None
                        counts["molecular-consequence"] += 1
                        observations.append("Observation/" + consequence["id"])
                    if info is not None and header.clinvar and len(alts) == 1:
                        implication = k.implication(
                            ids(line_no, key + ":implication"), subject_ref, observation_ref, info
                        )
                        if implication is not None:
                            yield implication, None
                            counts["diagnostic-implication"] += 1
                            observations.append("Observation/" + implication["id"])
                    if phased and alleles.count(allele) == 1:
                        phase_set = fmt.get("PS")
                        if phase_set == ".":
                            phase_set = None
                        haplotype = alleles.index(allele)
                        previous = phase_sets.get(phase_set)
                        phase_sets[phase_set] = (observation_ref, haplotype)
                        if previous is not None:
                            relation = k.phase(
                                ids(line_no, f"{previous[0]}:{observation_ref}:phase"),
                                subject_ref,
                                previous[0],
                                observation_ref,
                                cis=previous[1] == haplotype,
                            )
                            yield relation, None
                            counts["sequence-phase-relationship"] += 1
                            observations.append("Observation/" + relation["id"])
            try:
                next(records)
            except StopIteration:
                pass
            except Exception as exc:  # cyvcf2 raises bare Exception on htslib errors
                raise VcfError(path, line_no, f"cannot parse the record: {exc}") from exc
            else:
                raise VcfError(path, line_no, "htslib read more records than the file has lines")
        except (EOFError, OSError, UnicodeDecodeError, zlib.error) as exc:
            raise VcfError(path, line_no + 1 if line_no else None, f"cannot read the file: {exc}") from exc
        finally:
            text.close()
            reader.close()
            report.records = records_read
            report.variants = variants
            if variants:
                counts["MolecularSequence"] += variants
                counts["variant"] += variants
        report.complete = True
        counts["DiagnosticReport"] += 1
        yield self._diagnostic_report(ids, subject_ref, observations), None

    def _mt_accession(self) -> str:
        """rCRS (NC_012920.1), unless the header's chrM is UCSC hg19's 16,571-base NC_001807.4."""
        for contig in self._header.contigs:
            if gc.chromosome_name(contig.get("ID", "")) == "MT" and contig.get("length") == "16571":
                return gc.refseq_chromosomes()["hg19-chrM"]["MT"].accession
        return gc.refseq_chromosomes()[self.build]["MT"].accession

    def _diagnostic_report(self, ids: _Ids, subject_ref: str, observations: list[str]) -> dict[str, Any]:
        report = self.report
        extension: list[dict[str, Any]] = [
            {"url": "fileName", "valueString": report.file},
            {"url": "sha256", "valueString": report.sha256},
            {"url": "sample", "valueString": report.sample},
            {"url": "build", "valueString": report.build},
            {"url": "records", "valueInteger": report.records},
            {"url": "variants", "valueInteger": report.variants},
        ]
        for reason, count in sorted(report.skipped.items()):
            extension.append(
                {
                    "url": "skipped",
                    "extension": [{"url": "reason", "valueCode": reason}, {"url": "count", "valueInteger": count}],
                }
            )
        resource: dict[str, Any] = {
            "resourceType": "DiagnosticReport",
            "id": ids.report(),
            "extension": [{"url": EXT_INGESTION, "extension": extension}],
            "status": "final",
            "category": [gc.concept(gc.V2_0074, "GE", "Genetics")],
            "code": gc.loinc(gc.GENETIC_ANALYSIS_REPORT, "Genetic analysis report"),
            "subject": {"reference": subject_ref},
        }
        date = self._header.file_date
        if date and re.fullmatch(r"\d{8}", date):
            resource["effectiveDateTime"] = f"{date[:4]}-{date[4:6]}-{date[6:]}"
        if observations:
            resource["result"] = [{"reference": ref} for ref in observations]
        resource["conclusion"] = report.summary()
        return resource


def _hgvs_components(annotation: Annotation) -> list[dict[str, Any]]:
    components: list[dict[str, Any]] = []
    if annotation.transcript:
        transcript = annotation.transcript
        if transcript.startswith(("NM_", "NR_", "XM_", "XR_")):
            value = gc.concept(gc.REFSEQ, transcript)
        elif transcript.startswith("ENST"):
            value = gc.concept(gc.ENSEMBL, transcript)
        elif transcript.startswith("LRG_"):
            value = gc.concept(gc.LRG, transcript)
        else:
            value = {"text": transcript}
        components.append(gc.component(gc.TRANSCRIPT_REF_SEQ, "valueCodeableConcept", value))
    if annotation.hgvs_c:
        components.append(gc.component(gc.CODING_HGVS, "valueCodeableConcept", gc.concept(gc.HGVS, annotation.hgvs_c)))
    if annotation.hgvs_p:
        components.append(gc.component(gc.PROTEIN_HGVS, "valueCodeableConcept", gc.concept(gc.HGVS, annotation.hgvs_p)))
    return components


def map_vcf(
    path: str | os.PathLike[str],
    patient_id: str,
    *,
    sample: str | None = None,
    build: str | None = None,
    source_class: str = "germline",
    regions: str | os.PathLike[str] | Iterable[tuple[str, int, int]] | None = None,
    skip_filtered: bool = True,
) -> VcfMapping:
    """Check a VCF and prepare the mapping of one of its samples (see the module docstring).

    ``regions`` is a BED file path or ``(chrom, start, end)`` tuples (0-based, half-open); records
    outside every interval are skipped. Header, sample, build and BED problems raise
    :class:`VcfError` here, before any resource; record problems raise it from ``resources()``.
    ``source_class`` is ``germline`` or ``somatic``; a bad argument raises ValueError.
    """
    if not _FHIR_ID.match(patient_id):
        raise ValueError(f"patient_id {patient_id!r} is not a FHIR id ([A-Za-z0-9-.]{{1,64}})")
    if source_class not in gc.SOURCE_CLASSES:
        raise ValueError(f"source_class must be one of {', '.join(gc.SOURCE_CLASSES)}, not {source_class!r}")
    file = Path(path)
    if not file.is_file():
        raise VcfError(file, None, "no such file")
    sha256 = _sha256_and_check(file)
    header = _read_header(file)
    if not header.samples:
        raise VcfError(file, header.lines, "the file has no sample columns (sites-only VCF)")
    if sample is None:
        if len(header.samples) > 1:
            shown = ", ".join(header.samples[:10]) + (" …" if len(header.samples) > 10 else "")
            raise VcfError(file, header.lines, f"{len(header.samples)} samples ({shown}): pass sample=")
        sample = header.samples[0]
    elif sample not in header.samples:
        shown = ", ".join(header.samples[:10]) + (" …" if len(header.samples) > 10 else "")
        raise VcfError(file, header.lines, f"sample {sample!r} is not in the file (samples: {shown})")
    resolved, evidence = _resolve_build(file, header, build)
    try:
        probe = VCF(str(file))
    except Exception as exc:  # cyvcf2 raises bare Exception for header errors
        raise VcfError(file, None, f"htslib cannot parse the header: {exc}") from exc
    probe.close()
    bed: Regions | None = None
    if isinstance(regions, (str, os.PathLike)):
        bed = read_bed(regions)
    elif regions is not None:
        bed = _merge(regions, "regions")
    return VcfMapping(file, patient_id, header, sample, resolved, evidence, sha256, source_class, bed, skip_filtered)
