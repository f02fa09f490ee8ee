"""HL7 v2 (2.3-2.5.1) messages -> FHIR R4 transaction Bundles, with a quarantine for what cannot be mapped.

Owns reading v2 feeds (ER7 "pipe" encoding, HL7 v2.5.1 chapter 2 "Control": 2.5 message
construction, 2.7 encoding rules, 2.7.4 escape sequences, appendix C MLLP framing, 2.10.3 batch
protocol FHS/BHS/BTS/FTS), mapping the messages below to FHIR R4 resources
(http://hl7.org/fhir/R4/), and building acknowledgments (chapter 2.9 ACK, 2.14 MSA/ERR).

Mapping follows the HL7 v2-to-FHIR IG (https://build.fhir.org/ig/HL7/v2-to-fhir/): segment maps
PID->Patient, PV1->Encounter, OBR->DiagnosticReport, OBX->Observation, SPM->Specimen, datatype maps
(CX->Identifier, XPN->HumanName, XAD->Address, XTN->ContactPoint, XCN->Practitioner,
CWE->CodeableConcept, DTM->dateTime) and the vocabulary maps of tables 0001, 0004, 0078, 0085 and 0123.

=========================  =======================================================================
message (chapter)          resources
=========================  =======================================================================
ADT^A01/A04/A08 (3.3)      Patient (conditional update on the matching identifier), Encounter
                           (PUT by a deterministic id from the visit number PV1-19), Practitioners
                           of PV1-7/8/9/17 (conditional create on their identifier)
ADT^A03 (3.3.3)            the same; Encounter ``status`` finished, ``period.end`` PV1-45
ADT^A40 (3.3.40)           surviving Patient (PID) ``link`` replaces, retired Patient (MRG-1)
                           ``active`` false and ``link`` replaced-by
ORU^R01 (7.3.1)            Patient (conditional create: results never overwrite demographics),
                           DiagnosticReport per OBR, Observation per OBX, Specimen (SPM or OBR-15);
                           subjects are conditional references ``Patient?identifier=system|value``
=========================  =======================================================================

Reading: segments end with CR, CRLF or LF (a bare LF not followed by a segment id is kept as a
line break inside the field); messages start at MSH; MLLP bytes (0x0B ... 0x1C 0x0D) and batch
envelopes are removed. The character set comes from MSH-18 (UTF-8 and ISO 8859-1/-15; undeclared
bytes that are not UTF-8 are read as ISO 8859-1 with a warning). Times without an offset are read
in ``default_tz`` (Europe/Oslo). Z-segments and segments without a mapping are listed in the
message's ``ignored`` report.

Nothing is lost: every message yields a :class:`MappedMessage` or a
:class:`~mappers.ehr_common.Quarantined` (source, index, control id, segment+field, reason, raw
text), and no malformed message stops the rest of the stream. Norwegian person numbers are
validated (:mod:`mappers.norwegian_id`); an invalid one quarantines the message (see
docs/ehr-mapping.md for the decisions). Pure: imports nothing of ``server``.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from decimal import Decimal, InvalidOperation
from typing import IO, Any
from urllib.parse import quote
from zoneinfo import ZoneInfo

from mappers.ehr_common import (
    KNOWN_AUTHORITIES,
    NORWEGIAN_PERSON,
    Problem,
    Quarantined,
    conditional_create,
    conditional_update,
    fhir_id,
    identifier_query,
    local_system,
    transaction_bundle,
    ucum_code,
    update_by_id,
)
from mappers.norwegian_id import IdKind, InvalidNorwegianId, NorwegianId, parse_norwegian_id

__all__ = [
    "Encoding",
    "MappedMessage",
    "Quarantined",
    "RawMessage",
    "Segment",
    "ack",
    "escape",
    "map_message",
    "map_stream",
    "parse_messages",
]

DEFAULT_TZ = "Europe/Oslo"
SUPPORTED_VERSIONS = frozenset({"2.3", "2.3.1", "2.4", "2.5", "2.5.1"})

V2_0203 = "http://terminology.hl7.org/CodeSystem/v2-0203"
V3_ACTCODE = "http://terminology.hl7.org/CodeSystem/v3-ActCode"
UCUM = "http://unitsofmeasure.org"
LOINC = "http://loinc.org"

# ---------------------------------------------------------------------------------------------
# reading: framing, segments, encoding characters, escapes


@dataclass(frozen=True, slots=True)
class Encoding:
    """The delimiters of a message: MSH-1 and the four (or five) characters of MSH-2."""

    field: str = "|"
    component: str = "^"
    repetition: str = "~"
    escape: str = "\\"
    subcomponent: str = "&"

    @property
    def msh2(self) -> str:
        return self.component + self.repetition + self.escape + self.subcomponent


class Segment:
    """One segment: ``fields[n]`` is field n (``fields[0]`` the segment id; for MSH ``fields[1]`` is MSH-1)."""

    __slots__ = ("enc", "fields", "line", "name")

    def __init__(self, name: str, fields: list[str], enc: Encoding, line: int) -> None:
        self.name = name
        self.fields = fields
        self.enc = enc
        self.line = line

    def raw(self, n: int) -> str:
        """Field n as sent (repetitions, components and escapes untouched); '' when absent."""
        return self.fields[n] if n < len(self.fields) else ""

    def reps(self, n: int) -> list[str]:
        """The repetitions of field n (raw), without empty ones."""
        value = self.raw(n)
        if not value:
            return []
        if self.name == "MSH" and n <= 2:
            return [value]
        return [r for r in value.split(self.enc.repetition) if r]

    def get(self, n: int, comp: int = 1, sub: int = 1, rep: int = 0) -> str:
        """Field n, component ``comp``, subcomponent ``sub`` of repetition ``rep``, unescaped; '' when absent."""
        value = self.raw(n)
        if not value:
            return ""
        if self.name == "MSH" and n <= 2:
            return value
        return _pick(value, self.enc, comp, sub, rep)

    def __repr__(self) -> str:
        return f"Segment({self.name!r}, line {self.line})"


def _pick(value: str, enc: Encoding, comp: int, sub: int, rep: int) -> str:
    if enc.repetition in value:
        reps = value.split(enc.repetition)
        value = reps[rep] if rep < len(reps) else ""
    elif rep:
        return ""
    if enc.component in value:
        parts = value.split(enc.component)
        value = parts[comp - 1] if comp <= len(parts) else ""
    elif comp != 1:
        return ""
    if enc.subcomponent in value:
        subs = value.split(enc.subcomponent)
        value = subs[sub - 1] if sub <= len(subs) else ""
    elif sub != 1:
        return ""
    return unescape(value, enc) if enc.escape in value else value


def components(value: str, enc: Encoding) -> list[str]:
    """The components of one raw repetition, each unescaped (subcomponents left joined)."""
    return [unescape(c, enc) if enc.escape in c else c for c in value.split(enc.component)]


def _sub(value: str, enc: Encoding, n: int = 1) -> str:
    """Subcomponent n of an already unescaped component (escaped & was decoded, so split raw first)."""
    parts = value.split(enc.subcomponent)
    return parts[n - 1] if n <= len(parts) else ""


_FORMATTING = {".br": "\n", ".sp": "\n", ".fi": "", ".nf": "", ".in": "", ".ti": "", ".sk": " ", ".ce": "\n"}


def unescape(value: str, enc: Encoding, charset: str = "utf-8") -> str:
    """Decode the escape sequences of HL7 v2 chapter 2.7.4 (\\F\\ \\S\\ \\T\\ \\R\\ \\E\\ \\Xhh..\\ \\.br\\ …).

    Highlighting (\\H\\ \\N\\) and formatting commands other than line breaks are dropped; hex
    bytes are decoded with the message's character set; an unterminated escape is kept literally.
    """
    esc = enc.escape
    parts = value.split(esc)
    # parts alternate: text, sequence, text, sequence, ..., text; an even count leaves one unterminated
    tail = ""
    if len(parts) % 2 == 0:
        tail = esc + parts.pop()
    out: list[str] = [parts[0]]
    pending = bytearray()
    for i in range(1, len(parts), 2):
        seq, text = parts[i], parts[i + 1]
        if seq.startswith("X") and len(seq) > 1:
            try:
                pending.extend(bytes.fromhex(seq[1:]))
            except ValueError:
                out.append(esc + seq + esc)
            else:
                if not text:
                    continue  # consecutive hex escapes form one byte sequence
        if pending:
            out.append(pending.decode(charset, errors="replace"))
            pending.clear()
        if not (seq.startswith("X") and len(seq) > 1):
            out.append(_escape_text(seq, enc))
        out.append(text)
    if pending:
        out.append(pending.decode(charset, errors="replace"))
    out.append(tail)
    return "".join(out)


def _escape_text(seq: str, enc: Encoding) -> str:
    """The text one escape sequence (between escape characters, not hex) stands for."""
    if seq == "F":
        return enc.field
    if seq == "S":
        return enc.component
    if seq == "T":
        return enc.subcomponent
    if seq == "R":
        return enc.repetition
    if seq == "E":
        return enc.escape
    if seq in ("H", "N"):
        return ""
    if seq[:3] in _FORMATTING:
        text = _FORMATTING[seq[:3]]
        count = seq[3:].lstrip("+")
        return text * int(count) if count.isdigit() and text else text
    if seq.startswith(("C", "M", "Z")):
        return ""  # character set switches and locally defined escapes: not supported, dropped
    return enc.escape + seq + enc.escape


def escape(value: str, enc: Encoding) -> str:
    """Escape text for a field (chapter 2.7.4): delimiters become \\F\\ \\S\\ \\R\\ \\T\\ \\E\\, line breaks \\.br\\."""
    esc = enc.escape
    table = {
        esc: f"{esc}E{esc}",
        enc.field: f"{esc}F{esc}",
        enc.component: f"{esc}S{esc}",
        enc.repetition: f"{esc}R{esc}",
        enc.subcomponent: f"{esc}T{esc}",
        "\r": f"{esc}.br{esc}",
        "\n": f"{esc}.br{esc}",
    }
    return "".join(table.get(c, c) for c in value)


@dataclass(slots=True)
class RawMessage:
    """One message as read from a stream, split into segments (or the reason it could not be)."""

    source: str
    index: int
    text: str
    segments: list[Segment]
    enc: Encoding
    #: set when the message cannot be read at all (no MSH, bad encoding characters …)
    error: Problem | None = None
    warnings: list[Problem] = field(default_factory=list)
    charset: str = "utf-8"

    @property
    def msh(self) -> Segment | None:
        return self.segments[0] if self.segments and self.segments[0].name == "MSH" else None

    @property
    def control_id(self) -> str | None:
        msh = self.msh
        return (msh.get(10) or None) if msh is not None else None

    @property
    def message_type(self) -> str | None:
        msh = self.msh
        if msh is None:
            return None
        code, event = msh.get(9, 1), msh.get(9, 2)
        return f"{code}^{event}" if event else code or None

    @property
    def version(self) -> str:
        msh = self.msh
        return msh.get(12, 1) if msh is not None else ""


_LINE_SPLIT = re.compile(rb"(\r\n|\r|\n|\x0b|\x1c)")
_SEGMENT_ID = re.compile(r"[A-Z][A-Z0-9]{2}")
_SEGMENT_START = re.compile(rb"[A-Z][A-Z0-9]{2}(?:[|^~\\&]|\s*$)")
_ENVELOPE = (b"FHS", b"BHS", b"BTS", b"FTS")


def _chunks(data: bytes | str | IO[bytes] | IO[str]) -> Iterator[bytes]:
    if isinstance(data, str):
        yield data.encode("utf-8")
    elif isinstance(data, bytes | bytearray | memoryview):
        yield bytes(data)
    else:
        while chunk := data.read(1 << 20):
            yield chunk.encode("utf-8") if isinstance(chunk, str) else chunk


def _lines(data: bytes | str | IO[bytes] | IO[str]) -> Iterator[tuple[bytes, bytes]]:
    """Physical lines with the terminator that ended each (b'' for the last, unterminated one)."""
    tail = b""
    for chunk in _chunks(data):
        parts = _LINE_SPLIT.split(tail + chunk)
        tail = parts.pop()
        for i in range(0, len(parts), 2):
            yield parts[i], parts[i + 1]
    if tail:
        yield tail, b""


@dataclass(slots=True)
class _Block:
    lines: list[bytes]
    first_line: int
    orphan: bool = False
    batch_note: Problem | None = None


def _blocks(data: bytes | str | IO[bytes] | IO[str]) -> Iterator[_Block]:
    """Group physical lines into messages (from one MSH to the next) and runs of orphan segments."""
    current: _Block | None = None
    prev_term = b""
    batch_count = 0
    batch_declared: int | None = None
    lineno = 0
    for raw_line, term in _lines(data):
        lineno += 1
        line = raw_line.strip(b" \t\x00").removeprefix(b"\xef\xbb\xbf")
        if not line:
            prev_term = term or prev_term
            continue
        head = line[:3]
        if head == b"MSH":
            if current is not None:
                yield current
            current = _Block([line], lineno)
            batch_count += 1
        elif head in _ENVELOPE:
            if current is not None:
                yield current
                current = None
            if head == b"BHS":
                batch_count, batch_declared = 0, None
            elif head == b"BTS":
                fields = line.split(line[3:4] or b"|")
                count = fields[1].strip() if len(fields) > 1 else b""
                batch_declared = int(count) if count.isdigit() else None
                if batch_declared is not None and batch_declared != batch_count:
                    note = Problem("BTS-1", f"batch trailer counts {batch_declared} messages, {batch_count} were read")
                    yield _Block([], lineno, orphan=True, batch_note=note)
        elif current is not None and not current.orphan:
            if prev_term == b"\n" and not _SEGMENT_START.match(line):
                current.lines[-1] += b"\n" + line  # a line break inside a field, not a segment end
            else:
                current.lines.append(line)
        elif current is not None:  # continuing a run of orphan segments
            current.lines.append(line)
        else:
            current = _Block([line], lineno, orphan=True)
        prev_term = term or prev_term
    if current is not None:
        yield current


_CHARSETS = {
    "UNICODE UTF-8": "utf-8",
    "UTF-8": "utf-8",
    "8859/1": "latin-1",
    "8859/15": "iso8859-15",
    "ASCII": "ascii",
}


def _decode(lines: list[bytes], text_input: bool) -> tuple[str, str, Problem | None]:
    """Decode a message's bytes with its MSH-18 character set; returns (text, charset, warning)."""
    joined = b"\r".join(lines)
    if text_input:
        return joined.decode("utf-8"), "utf-8", None
    declared = ""
    msh = lines[0]
    if len(msh) > 3:
        fields = msh.split(msh[3:4])
        if len(fields) > 17:
            declared = fields[17].split(b"~")[0].decode("ascii", errors="replace").strip().upper()
    charset = _CHARSETS.get(declared)
    if charset in ("latin-1", "iso8859-15"):
        return joined.decode(charset), charset, None
    try:
        return joined.decode("utf-8"), "utf-8", None
    except UnicodeDecodeError:
        note = Problem("MSH-18", "bytes are not UTF-8; read as ISO 8859-1", "warning")
        return joined.decode("latin-1"), "latin-1", note


def _encoding(msh: str) -> Encoding | str:
    """The delimiters declared by an MSH segment, or the reason they are invalid."""
    if len(msh) < 8:
        return "MSH too short to hold MSH-1 and MSH-2"
    fs = msh[3]
    end = msh.find(fs, 4)
    chars = msh[4:end] if end >= 0 else msh[4:]
    if fs.isalnum() or fs.isspace():
        return f"MSH-1 field separator {fs!r} is not a delimiter character"
    if len(chars) not in (4, 5) or len(set(chars + fs)) != len(chars) + 1:
        return f"MSH-2 encoding characters {chars!r} are not four distinct delimiters"
    if any(c.isalnum() or c.isspace() for c in chars):
        return f"MSH-2 encoding characters {chars!r} contain letters, digits or spaces"
    return Encoding(fs, chars[0], chars[1], chars[2], chars[3])


def parse_messages(data: bytes | str | IO[bytes] | IO[str], source: str = "<stream>") -> Iterator[RawMessage]:
    """Split a feed into messages (MLLP frames, batches, any line ending), lazily.

    Runs of segments outside any message and batch trailer mismatches come out as a RawMessage
    with ``error`` set, so they reach the quarantine report instead of vanishing.
    """
    text_input = isinstance(data, str) or (
        not isinstance(data, bytes | bytearray | memoryview) and isinstance(data.read(0), str)
    )
    index = 0
    for block in _blocks(data):
        if block.batch_note is not None:
            yield RawMessage(source, index, "", [], Encoding(), error=block.batch_note)
            index += 1
            continue
        if block.orphan:
            text = b"\r".join(block.lines).decode("utf-8", errors="replace")
            problem = Problem(f"line {block.first_line}", "segments outside a message (no MSH before them)", code="100")
            yield RawMessage(source, index, text, [], Encoding(), error=problem)
            index += 1
            continue
        text, charset, note = _decode(block.lines, text_input)
        msg = RawMessage(source, index, text, [], Encoding(), charset=charset)
        index += 1
        if note is not None:
            msg.warnings.append(note)
        seg_texts = text.split("\r")
        enc = _encoding(seg_texts[0])
        if isinstance(enc, str):
            msg.error = Problem("MSH-2", enc, code="102")
            yield msg
            continue
        msg.enc = enc
        segments: list[Segment] = []
        for i, seg in enumerate(seg_texts):
            fields = seg.split(enc.field)
            name = fields[0].strip()
            if not _SEGMENT_ID.fullmatch(name):
                msg.error = Problem(f"segment {i + 1}", f"not a segment: {seg[:40]!r}", code="100")
                break
            if name == "MSH":
                if i:
                    msg.error = Problem(f"segment {i + 1}", "second MSH inside one message", code="100")
                    break
                fields.insert(1, enc.field)
            segments.append(Segment(name, fields, enc, block.first_line + i))
        msg.segments = segments
        yield msg


# ---------------------------------------------------------------------------------------------
# results


@dataclass(slots=True)
class MappedMessage:
    """A mapped message: the transaction entries to store atomically, and its report."""

    source: str
    index: int
    control_id: str
    message_type: str
    entries: list[dict[str, Any]]
    warnings: list[Problem] = field(default_factory=list)
    #: segments not mapped (Z-segments and segments without a mapping), with the reason
    ignored: list[Problem] = field(default_factory=list)
    message: RawMessage | None = None

    @property
    def resources(self) -> list[dict[str, Any]]:
        return [e["resource"] for e in self.entries]

    def bundle(self) -> dict[str, Any]:
        """The ``transaction`` Bundle (http://hl7.org/fhir/R4/bundle.html)."""
        return transaction_bundle(self.entries)


class MappingError(Exception):
    """Raised inside a mapping to quarantine the message with a located reason."""

    def __init__(self, location: str, reason: str, code: str = "207", ack_code: str = "AE") -> None:
        super().__init__(f"{location}: {reason}")
        self.problem = Problem(location, reason, "error", code)
        self.ack_code = ack_code


# ---------------------------------------------------------------------------------------------
# datatypes


_DTM = re.compile(r"(\d{4})(\d{2})?(\d{2})?(\d{2})?(\d{2})?(\d{2})?(\.\d{1,4})?([+-]\d{4})?")


@dataclass(slots=True)
class _Ctx:
    """Per-message mapping state."""

    msg: RawMessage
    tz: ZoneInfo
    authorities: dict[str, str]
    facility: str
    warnings: list[Problem]
    ignored: list[Problem]

    def warn(self, location: str, reason: str) -> None:
        self.warnings.append(Problem(location, reason, "warning"))


def _dtm(value: str, location: str, ctx: _Ctx, *, date_only: bool = False, instant: bool = False) -> str | None:
    """A v2 DTM/TS as a FHIR date/dateTime/instant; None for an empty value; MappingError when invalid.

    FHIR needs an offset whenever a time is given: a value without one is read in ``ctx.tz``.
    """
    value = value.strip()
    if not value:
        return None
    try:
        return _dtm_cached(value, ctx.tz.key, date_only, instant)
    except ValueError:
        raise MappingError(location, f"invalid date/time {value!r}", "102") from None


@functools.lru_cache(maxsize=4096)
def _dtm_cached(value: str, tz: str, date_only: bool, instant: bool) -> str | None:
    m = _DTM.fullmatch(value)
    if m is None:
        raise ValueError(value)
    y, mo, d, hh, mi, ss, frac, off = m.groups()
    datetime(int(y), int(mo or 1), int(d or 1), int(hh or 0), int(mi or 0), int(ss or 0))  # ValueError if not a date
    if date_only or hh is None:
        if instant:
            return None
        return "-".join(p for p in (y, mo, d) if p)
    base = f"{y}-{mo}-{d}T{hh}:{mi or '00'}:{ss or '00'}{frac or ''}"
    if off:
        return f"{base}{off[:3]}:{off[3:]}"
    local = datetime(int(y), int(mo), int(d), int(hh), int(mi or 0), int(ss or 0), tzinfo=ZoneInfo(tz))
    return base + _offset(local.utcoffset() or timedelta(0))


def _offset(delta: timedelta) -> str:
    if delta == timedelta(0):
        return "+00:00"
    minutes = int(delta.total_seconds() // 60)
    sign = "+" if minutes >= 0 else "-"
    minutes = abs(minutes)
    return f"{sign}{minutes // 60:02d}:{minutes % 60:02d}"


_LOCAL_CODESYSTEM = "urn:bigmed:codesystem:"
_CODING_SYSTEMS = {
    "LN": LOINC,
    "LOINC": LOINC,
    "SCT": "http://snomed.info/sct",
    "SNOMED": "http://snomed.info/sct",
    "SNM": "http://snomed.info/sct",
    "I10": "http://hl7.org/fhir/sid/icd-10",
    "ICD10": "http://hl7.org/fhir/sid/icd-10",
    "ICD-10": "http://hl7.org/fhir/sid/icd-10",
    "UCUM": UCUM,
    "ATC": "http://www.whocc.no/atc",
    "HPO": "http://human-phenotype-ontology.org",
    "NPU": "urn:oid:1.2.208.176.2.1",  # IUPAC/IFCC NPU codes, used by Nordic laboratories (NLK)
    "NLK": "urn:oid:2.16.578.1.12.4.1.1.7280",  # Norsk laboratoriekodeverk (Volven 7280)
}


def _coding_system(name: str, ctx: _Ctx) -> str:
    """The FHIR system of a v2 coding-system name (table 0396); local names get a facility URN."""
    known = _CODING_SYSTEMS.get(name.upper())
    if known:
        return known
    upper = name.upper()
    if upper.startswith("HL7") and upper[3:].isdigit():
        return f"http://terminology.hl7.org/CodeSystem/v2-{upper[3:]}"
    return _LOCAL_CODESYSTEM + quote(f"{ctx.facility or 'local'}:{name or 'L'}", safe="-._~:")


def _codeable(raw_rep: str, ctx: _Ctx) -> dict[str, Any] | None:
    """CE/CWE -> CodeableConcept (identifier, text, system; alternate triplet as a second coding)."""
    enc = ctx.msg.enc
    c = components(raw_rep, enc)
    c += [""] * (9 - len(c))
    codings = []
    for code, display, system in ((c[0], c[1], c[2]), (c[3], c[4], c[5])):
        if code:
            coding: dict[str, Any] = {"system": _coding_system(system, ctx), "code": code}
            if display:
                coding["display"] = display
            codings.append(coding)
    out: dict[str, Any] = {}
    if codings:
        out["coding"] = codings
    text = c[8] if len(c) > 8 and c[8] else ("" if codings else c[1])
    if text:
        out["text"] = text
    return out or None


def _authority_system(namespace: str, universal: str, utype: str, id_type: str, ctx: _Ctx) -> str:
    """The system of an identifier from its assigning authority (HD) and type; may be NORWEGIAN_PERSON."""
    table = ctx.authorities
    for key in (namespace, universal, id_type):
        if key and key.upper() in table:
            return table[key.upper()]
    if universal and utype.upper() in ("ISO", "") and re.fullmatch(r"[0-2](\.\d+)+", universal):
        return "urn:oid:" + universal
    if universal and utype.upper() in ("URI", "URL"):
        return universal
    authority = namespace or universal or ctx.facility
    if not authority:
        return ""
    return local_system(authority)


@dataclass(slots=True)
class _Ident:
    identifier: dict[str, Any]
    system: str
    value: str
    norwegian: NorwegianId | None = None
    id_type: str = ""


_KNOWN_0203 = frozenset(  # table 0203 identifier types we pass on as codes
    "AN BA BC DL EI EN FILL MA MC MR NH NI NPI PI PLAC PN PPN PRN PT RRI SR SS TAX VN WC XX".split()  # noqa: SIM905  # a code table reads best as a line of codes
)


def _cx(raw_rep: str, location: str, ctx: _Ctx) -> _Ident | None:
    """CX -> Identifier; Norwegian person numbers validated (MappingError when invalid)."""
    enc = ctx.msg.enc
    parts = raw_rep.split(enc.component)
    parts += [""] * (5 - len(parts))
    value = _plain(parts[0], enc).strip()
    if not value:
        return None
    hd = [*parts[3].split(enc.subcomponent), "", "", ""]
    namespace, universal, utype = (_plain(h, enc).strip() for h in hd[:3])
    id_type = _plain(parts[4], enc).strip()
    system = _authority_system(namespace, universal, utype, id_type, ctx)
    nid: NorwegianId | None = None
    if system == NORWEGIAN_PERSON:
        try:
            nid = _norwegian_id(value)
        except InvalidNorwegianId as exc:
            raise MappingError(location, f"invalid Norwegian person number {value!r}: {exc.reason}", "102") from None
        system = nid.system
        if nid.synthetic:
            ctx.warn(location, f"{value} is a synthetic test identity (Tenor, month + 80)")
    identifier: dict[str, Any] = {}
    if id_type:
        if id_type in _KNOWN_0203:
            identifier["type"] = {"coding": [{"system": V2_0203, "code": id_type}]}
        else:  # e.g. NNNOR: table 0203 defines the pattern NNxxx, not each country's code
            identifier["type"] = {"text": id_type}
    if system:
        identifier["system"] = system
    identifier["value"] = value
    if namespace and system.startswith("urn:oid:") and not nid:
        identifier["assigner"] = {"display": namespace}
    return _Ident(identifier, system, value, nid, id_type)


@functools.lru_cache(maxsize=4096)
def _norwegian_id(value: str) -> NorwegianId:
    """parse_norwegian_id, remembered: feeds repeat the same patients (only valid numbers are cached)."""
    return parse_norwegian_id(value)


def _plain(value: str, enc: Encoding) -> str:
    return unescape(value, enc) if enc.escape in value else value


def _human_name(raw_rep: str, enc: Encoding) -> dict[str, Any] | None:
    """XPN (or the name part of XCN, shifted by the caller) -> HumanName."""
    parts = raw_rep.split(enc.component)
    parts += [""] * (7 - len(parts))
    family = _plain(parts[0].split(enc.subcomponent)[0], enc).strip()
    given = [g for g in (_plain(parts[1], enc).strip(), _plain(parts[2], enc).strip()) if g]
    name: dict[str, Any] = {}
    use = _NAME_USE.get(_plain(parts[6], enc).strip().upper())
    if use:
        name["use"] = use
    if family:
        name["family"] = family
    if given:
        name["given"] = given
    prefix = _plain(parts[4], enc).strip()
    if prefix:
        name["prefix"] = [prefix]
    suffix = [s for s in (_plain(parts[3], enc).strip(), _plain(parts[5], enc).strip()) if s]
    if suffix:
        name["suffix"] = suffix
    if not (family or given):
        return None
    return name


_NAME_USE = {"L": "official", "D": "usual", "M": "maiden", "N": "nickname", "BAD": "old", "TEMP": "temp"}
_GENDER = {"M": "male", "F": "female", "O": "other", "A": "other", "U": "unknown", "N": "unknown"}
_ADDRESS_USE: dict[str, tuple[str | None, str | None]] = {
    "H": ("home", None),
    "P": ("home", None),
    "B": ("work", None),
    "O": ("work", None),
}
_ADDRESS_USE |= {"C": ("temp", None), "BA": ("old", None), "M": (None, "postal"), "SH": (None, "physical")}


def _address(raw_rep: str, enc: Encoding) -> dict[str, Any] | None:
    c = components(raw_rep, enc)
    c += [""] * (9 - len(c))
    addr: dict[str, Any] = {}
    use, atype = _ADDRESS_USE.get(c[6].upper(), (None, None))
    if use:
        addr["use"] = use
    if atype:
        addr["type"] = atype
    lines = [x for x in (_sub(c[0], enc).strip(), c[1].strip()) if x]
    if lines:
        addr["line"] = lines
    for key, val in (("city", c[2]), ("district", c[8]), ("state", c[3]), ("postalCode", c[4]), ("country", c[5])):
        if val.strip():
            addr[key] = val.strip()
    return addr if set(addr) - {"use", "type"} else None


_PHONE_USE = {"PRN": "home", "ORN": "home", "VHN": "home", "WPN": "work"}


def _telecom(raw_rep: str, enc: Encoding, default_use: str) -> dict[str, Any] | None:
    c = components(raw_rep, enc)
    c += [""] * (12 - len(c))
    use_code, equipment = c[1].upper(), c[2].upper()
    email = c[3].strip()
    if equipment in ("INTERNET", "X.400") or use_code == "NET" or (email and not c[0].strip()):
        value = email or c[0].strip()
        return {"system": "email", "value": value, "use": _PHONE_USE.get(use_code, default_use)} if value else None
    number = c[0].strip() or c[11].strip()
    if not number and c[6].strip():
        number = "".join(
            p for p in (f"+{c[4].strip()} " if c[4].strip() else "", c[5].strip(), c[6].strip()) if p
        ).strip()
        if c[7].strip():
            number += f" ext. {c[7].strip()}"
    if not number:
        return None
    system = {"FX": "fax", "BP": "pager"}.get(equipment, "phone")
    use = "mobile" if equipment == "CP" else _PHONE_USE.get(use_code, default_use)
    return {"system": system, "value": number, "use": use}


# ---------------------------------------------------------------------------------------------
# Patient (PID), merge (MRG)


class _PatientKey:
    """The identifier a patient is matched on, and the conditional reference built from it."""

    __slots__ = ("_ref", "system", "value")

    def __init__(self, system: str, value: str) -> None:
        self.system = system
        self.value = value
        self._ref = f"Patient?{identifier_query(system, value)}"

    @property
    def reference(self) -> dict[str, Any]:
        return {"reference": self._ref}


_NATIONAL_RANK = {IdKind.FNR: 0, IdKind.DNR: 1, IdKind.HNR: 2, IdKind.FHNR: 3}


def _primary(idents: list[_Ident]) -> _Ident:
    """The identifier patients are matched on: a Norwegian person number, else an MR, else the first."""
    national = [i for i in idents if i.norwegian is not None]
    if national:
        return min(national, key=lambda i: _NATIONAL_RANK[i.norwegian.kind] if i.norwegian else 9)
    for i in idents:
        if i.id_type == "MR":
            return i
    return idents[0]


def _patient(pid: Segment, ctx: _Ctx) -> tuple[dict[str, Any], _PatientKey]:
    """PID -> Patient (v2-to-FHIR segment map PID[Patient])."""
    enc = ctx.msg.enc
    idents: list[_Ident] = []
    for n in (3, 2, 4):  # PID-3 patient identifier list; PID-2/PID-4 (2.3 external/alternate ids)
        for r, rep in enumerate(pid.reps(n)):
            ident = _cx(rep, f"PID-{n}[{r + 1}]", ctx)
            if ident is not None and not any(i.identifier == ident.identifier for i in idents):
                idents.append(ident)
    if not idents:
        raise MappingError("PID-3", "no patient identifier", "101")
    primary = _primary(idents)
    if not primary.system:
        raise MappingError("PID-3", "the patient identifier has no assigning authority and MSH-4 is empty", "101")
    patient: dict[str, Any] = {"resourceType": "Patient", "identifier": [i.identifier for i in idents], "active": True}
    if any(i.norwegian is not None and i.norwegian.synthetic for i in idents):
        patient["meta"] = {"tag": [_HTEST]}
    names = [nm for rep in pid.reps(5) if (nm := _human_name(rep, enc)) is not None]
    if names:
        patient["name"] = names
    telecom = [t for rep in pid.reps(13) if (t := _telecom(rep, enc, "home")) is not None]
    telecom += [t for rep in pid.reps(14) if (t := _telecom(rep, enc, "work")) is not None]
    if telecom:
        patient["telecom"] = telecom
    sex = pid.get(8).strip().upper()
    if sex:
        if sex not in _GENDER:
            raise MappingError("PID-8", f"administrative sex {sex!r} is not in table 0001", "103")
        patient["gender"] = _GENDER[sex]
    birth = _dtm(pid.get(7), "PID-7", ctx, date_only=True)
    if birth:
        patient["birthDate"] = birth
        if len(birth) == 10:
            for i in idents:
                nid = i.norwegian
                if nid is not None and nid.kind in (IdKind.FNR, IdKind.DNR):
                    y, m, d = (int(x) for x in birth.split("-"))
                    if (nid.day, nid.month, nid.yy) != (d, m, y % 100):
                        ctx.warn("PID-7", f"birth date {birth} differs from the date in person number {nid.value}")
    deceased = _dtm(pid.get(29), "PID-29", ctx)
    if deceased:
        patient["deceasedDateTime"] = deceased
    elif pid.get(30).upper() in ("Y", "N"):
        patient["deceasedBoolean"] = pid.get(30).upper() == "Y"
    addresses = [a for rep in pid.reps(11) if (a := _address(rep, enc)) is not None]
    if addresses:
        patient["address"] = addresses
    return patient, _PatientKey(primary.system, primary.value)


_HTEST = {
    "system": "http://terminology.hl7.org/CodeSystem/v3-ActReason",
    "code": "HTEST",
    "display": "test health data",
}


# ---------------------------------------------------------------------------------------------
# Encounter (PV1), Practitioner (XCN)

#: table 0004 patient class -> Encounter.class (v2-to-FHIR ConceptMap table-hl70004-to-v3-actcode)
_CLASS = {
    "E": (V3_ACTCODE, "EMER", "emergency"),
    "I": (V3_ACTCODE, "IMP", "inpatient encounter"),
    "O": (V3_ACTCODE, "AMB", "ambulatory"),
    "P": (V3_ACTCODE, "PRENC", "pre-admission"),
    "R": ("http://terminology.hl7.org/CodeSystem/v2-0004", "R", "Recurring patient"),
    "B": ("http://terminology.hl7.org/CodeSystem/v2-0004", "B", "Obstetrics"),
    "C": ("http://terminology.hl7.org/CodeSystem/v2-0004", "C", "Commercial Account"),
    "U": ("http://terminology.hl7.org/CodeSystem/v2-0004", "U", "Unknown"),
}
_PARTICIPANTS = ((7, "ATND", "attender"), (8, "REF", "referrer"), (9, "CON", "consultant"), (17, "ADM", "admitter"))
_PARTICIPATION = "http://terminology.hl7.org/CodeSystem/v3-ParticipationType"


def _practitioner(raw_rep: str, location: str, ctx: _Ctx, entries: list[dict[str, Any]]) -> dict[str, Any] | None:
    """XCN -> a Reference: conditional create of a Practitioner with an identifier, else contained-free display."""
    enc = ctx.msg.enc
    parts = raw_rep.split(enc.component)
    parts += [""] * (13 - len(parts))
    pid = _plain(parts[0], enc).strip()
    name = _human_name(enc.component.join([*parts[1:7], ""]), enc)
    if name is not None:
        name.pop("use", None)
        xcn_use = _NAME_USE.get(_plain(parts[9], enc).strip().upper())
        if xcn_use:
            name["use"] = xcn_use
    if not pid:
        if name is None:
            return None
        return {"display": _display(name)}
    hd = [*parts[8].split(enc.subcomponent), "", "", ""]
    namespace, universal, utype = (_plain(h, enc).strip() for h in hd[:3])
    id_type = _plain(parts[12], enc).strip()
    system = _authority_system(namespace, universal, utype, id_type, ctx)
    if system == NORWEGIAN_PERSON:  # a practitioner identified by a person number: keep it as HPR-less id
        system = local_system(namespace or ctx.facility)
    practitioner: dict[str, Any] = {"resourceType": "Practitioner", "identifier": [{"system": system, "value": pid}]}
    if name is not None:
        practitioner["name"] = [name]
    entry = conditional_create(practitioner, system, pid)
    if not any(e["fullUrl"] == entry["fullUrl"] for e in entries):
        entries.append(entry)
    ref: dict[str, Any] = {"reference": f"Practitioner?{identifier_query(system, pid)}"}
    if name is not None:
        ref["display"] = _display(name)
    return ref


def _display(name: dict[str, Any]) -> str:
    return " ".join([*name.get("prefix", []), *name.get("given", []), name.get("family", "")]).strip()


def _visit_key(pv1: Segment, ctx: _Ctx) -> _Ident | None:
    rep = pv1.reps(19)
    return _cx(rep[0], "PV1-19", ctx) if rep else None


def _encounter(
    pv1: Segment, patient: _PatientKey, ctx: _Ctx, entries: list[dict[str, Any]], *, discharge: bool
) -> dict[str, Any] | None:
    """PV1 -> Encounter (v2-to-FHIR segment map PV1[Encounter]); None for class N (not applicable)."""
    enc = ctx.msg.enc
    pclass = pv1.get(2).strip().upper()
    if pclass == "N" and not discharge:
        return None
    if not pclass:
        raise MappingError("PV1-2", "patient class is empty (Encounter.class is required)", "101")
    if pclass not in _CLASS:
        raise MappingError("PV1-2", f"patient class {pclass!r} is not in table 0004", "103")
    visit = _visit_key(pv1, ctx)
    if visit is None:
        if discharge:
            raise MappingError("PV1-19", "a discharge needs the visit number to find the encounter", "101")
        ctx.warn("PV1-19", "no visit number: the encounter is keyed on the message control id")
        enc_id = fhir_id("Encounter", "msg", ctx.facility, ctx.msg.control_id or "")
    else:
        enc_id = fhir_id("Encounter", visit.system, visit.value)
    system, code, display = _CLASS[pclass]
    start = _dtm(pv1.get(44), "PV1-44", ctx)
    end = _dtm(pv1.get(45), "PV1-45", ctx)
    if discharge and not end:
        evn = next((s for s in ctx.msg.segments if s.name == "EVN"), None)
        end = _dtm(evn.get(6) or evn.get(2), "EVN-6", ctx) if evn is not None else None
        if not end:
            raise MappingError("PV1-45", "discharge date/time missing (PV1-45, EVN-6, EVN-2)", "101")
    status = "finished" if discharge or end else "planned" if pclass == "P" else "in-progress"
    encounter: dict[str, Any] = {"resourceType": "Encounter", "id": enc_id}
    if visit is not None:
        ident = dict(visit.identifier)
        ident.setdefault("type", {"coding": [{"system": V2_0203, "code": "VN"}]})
        encounter["identifier"] = [{"use": "official", **ident}]
    encounter["status"] = status
    encounter["class"] = {"system": system, "code": code, "display": display}
    encounter["subject"] = patient.reference
    participants = []
    for n, ptype, pdisplay in _PARTICIPANTS:
        for r, rep in enumerate(pv1.reps(n)):
            ref = _practitioner(rep, f"PV1-{n}[{r + 1}]", ctx, entries)
            if ref is not None:
                coding = {"system": _PARTICIPATION, "code": ptype, "display": pdisplay}
                participants.append({"type": [{"coding": [coding]}], "individual": ref})
    if participants:
        encounter["participant"] = participants
    period = {k: v for k, v in (("start", start), ("end", end)) if v}
    if period:
        encounter["period"] = period
    loc = pv1.reps(3)
    if loc:
        c = components(loc[0], enc)
        c += [""] * (9 - len(c))
        words = [w for w in (c[0], f"room {c[1]}" if c[1] else "", f"bed {c[2]}" if c[2] else "") if w]
        facility = _sub(c[3], enc)
        text = ", ".join(words) + (f" ({facility})" if facility else "") if words else c[8] or facility
        if text:
            encounter["location"] = [{"location": {"display": text}, "status": "completed" if end else "active"}]
    return encounter


# ---------------------------------------------------------------------------------------------
# ORU: DiagnosticReport (OBR), Observation (OBX), Specimen (SPM / OBR-15)

#: table 0085 -> Observation.status (v2-to-FHIR ConceptMap table-hl70085-to-observation-status)
_OBS_STATUS = {
    "A": "amended",
    "B": "amended",
    "C": "corrected",
    "D": "entered-in-error",
    "F": "final",
    "I": "registered",
    "N": "cancelled",
    "O": "registered",
    "P": "preliminary",
    "R": "preliminary",
    "S": "preliminary",
    "U": "final",
    "V": "final",
    "W": "entered-in-error",
    "X": "cancelled",
}
#: table 0123 -> DiagnosticReport.status (ConceptMap table-hl70123-queries-to-diagnostic-report-status)
_REPORT_STATUS = {
    "O": "registered",
    "I": "registered",
    "S": "partial",
    "A": "partial",
    "R": "partial",
    "P": "preliminary",
    "C": "corrected",
    "F": "final",
    "X": "cancelled",
}
#: table 0078 abnormal flags that exist in v3-ObservationInterpretation with the same code
_INTERPRETATION = frozenset(
    "< > A AA AC B D DET E EX H HH HU HX I IE IND L LL LU LX MS N NCL ND NEG NR NS POS QCF R RR S SDD SDSC "  # noqa: SIM905  # a code table reads best as a line of codes
    "SYN-R SYN-S TOX U VS W WR".split()
)
_INTERPRETATION_SYSTEM = "http://terminology.hl7.org/CodeSystem/v3-ObservationInterpretation"
_OBS_CATEGORY = "http://terminology.hl7.org/CodeSystem/observation-category"
_V2_0074 = "http://terminology.hl7.org/CodeSystem/v2-0074"

_NUMBER = re.compile(r"\s*(<=|>=|<|>)?\s*([+-]?(?:\d+\.?\d*|\.\d+))\s*")
_RANGE = re.compile(r"\s*([+-]?\d+\.?\d*)\s*(?:-|–|\.\.)\s*([+-]?\d+\.?\d*)\s*")


def _unit(raw: str, location: str, ctx: _Ctx) -> dict[str, Any]:
    """OBX-6 units (CE/CWE) -> the unit/system/code of a Quantity, UCUM when it is or can be recognised."""
    if not raw:
        return {}
    c = components(raw, ctx.msg.enc)
    c += ["", "", ""]
    code, text, system = c[0].strip(), c[1].strip(), c[2].strip().upper()
    if not code and not text:
        return {}
    if system == "UCUM" and code:
        return {"unit": text or code, "system": UCUM, "code": code}
    ucum = ucum_code(code) if code else None
    if ucum is not None:
        return {"unit": code, "system": UCUM, "code": ucum}
    ctx.warn(location, f"unit {code or text!r} is not a recognised UCUM code; kept as text")
    return {"unit": text or code}


def _decimal(text: str, location: str) -> Decimal:
    try:
        value = Decimal(text.strip())
    except InvalidOperation:
        raise MappingError(location, f"{text!r} is not a number", "102") from None
    if not value.is_finite():
        raise MappingError(location, f"{text!r} is not a number", "102")
    return value


def _quantity(number: str, unit: dict[str, Any], location: str, comparator: str | None = None) -> dict[str, Any]:
    q: dict[str, Any] = {"value": _decimal(number, location)}
    if comparator:
        q["comparator"] = comparator
    q.update(unit)
    return q


def _value(obx: Segment, unit: dict[str, Any], ctx: _Ctx) -> tuple[str, Any] | None:
    """OBX-2/OBX-5 -> (value[x] name, value); MappingError for an unsupported type or a bad value."""
    vtype = obx.get(2).strip().upper()
    reps = obx.reps(5)
    if not reps:
        return None
    enc = ctx.msg.enc
    loc = "OBX-5"
    if len(reps) > 1 and vtype not in ("ST", "TX", "FT"):
        ctx.warn(loc, f"{len(reps) - 1} repetition(s) after the first are not mapped (value type {vtype})")
    if vtype == "NM":
        m = _NUMBER.fullmatch(_plain(reps[0], enc))
        if m is None:
            raise MappingError(loc, f"{_plain(reps[0], enc)!r} is not a number (value type NM)", "102")
        return "valueQuantity", _quantity(m.group(2), unit, loc, m.group(1))
    if vtype == "SN":
        c = components(reps[0], enc)
        c += ["", "", "", ""]
        comparator, n1, sep, n2 = (x.strip() for x in c[:4])
        if sep in ("-", "") and n2 and n1:
            return "valueRange", {"low": _quantity(n1, unit, loc), "high": _quantity(n2, unit, loc)}
        if sep in (":", "/") and n2:
            return "valueRatio", {"numerator": _quantity(n1, {}, loc), "denominator": _quantity(n2, {}, loc)}
        if comparator not in ("", "<", ">", "<=", ">=", "="):
            raise MappingError(loc, f"SN comparator {comparator!r} is not one of < > <= >= =", "102")
        if sep == "+" and not n2:  # "^2^+" means "2+" (ordinal); keep it as text
            return "valueString", f"{n1}+"
        if not n1:
            raise MappingError(loc, "SN value without a number", "102")
        return "valueQuantity", _quantity(n1, unit, loc, comparator if comparator not in ("", "=") else None)
    if vtype in ("ST", "TX", "FT"):
        text = "\n".join(_plain(r, enc) for r in reps).strip()
        return ("valueString", text) if text else None
    if vtype in ("CE", "CWE", "CNE", "CF"):
        cc = _codeable(reps[0], ctx)
        return ("valueCodeableConcept", cc) if cc else None
    if vtype in ("DT", "TS", "DTM"):
        value = _dtm(_plain(reps[0].split(enc.component)[0], enc), loc, ctx)
        return ("valueDateTime", value) if value else None
    if vtype == "TM":
        m = re.fullmatch(r"(\d{2})(\d{2})?(\d{2})?(?:\.\d+)?(?:[+-]\d{4})?", _plain(reps[0], enc).strip())
        if m is None or int(m.group(1)) > 23 or int(m.group(2) or 0) > 59 or int(m.group(3) or 0) > 59:
            raise MappingError(loc, f"invalid time {_plain(reps[0], enc)!r}", "102")
        return "valueTime", f"{m.group(1)}:{m.group(2) or '00'}:{m.group(3) or '00'}"
    if not vtype:
        raise MappingError("OBX-2", "value type is empty but OBX-5 holds a value", "101")
    raise MappingError("OBX-2", f"value type {vtype!r} is not supported", "102")


def _reference_range(raw: str, unit: dict[str, Any], ctx: _Ctx) -> dict[str, Any] | None:
    text = _plain(raw, ctx.msg.enc).strip()
    if not text:
        return None
    simple = {k: v for k, v in unit.items() if k in ("unit", "system", "code")}
    m = _RANGE.fullmatch(text)
    if m is not None:
        return {
            "low": {"value": Decimal(m.group(1)), **simple},
            "high": {"value": Decimal(m.group(2)), **simple},
        }
    m = _NUMBER.fullmatch(text)
    if m is not None and m.group(1):
        side = "high" if m.group(1).startswith("<") else "low"
        return {side: {"value": Decimal(m.group(2)), **simple}, "text": text}
    return {"text": text}


@dataclass(slots=True)
class _Report:
    obr: Segment
    orc: Segment | None
    key: str
    identifiers: list[dict[str, Any]]
    effective: str | None = None
    issued: str | None = None
    obx: list[tuple[Segment, list[str]]] = field(default_factory=list)
    spm: list[Segment] = field(default_factory=list)


def _order_key(obr: Segment, orc: Segment | None, ordinal: int, ctx: _Ctx) -> tuple[str, list[dict[str, Any]]]:
    """The report's key (filler, else placer order number, else message) and its identifiers."""
    idents: list[dict[str, Any]] = []
    key = ""
    for n_obr, n_orc, code in ((3, 3, "FILL"), (2, 2, "PLAC")):
        raw = obr.raw(n_obr) or (orc.raw(n_orc) if orc is not None else "")
        if not raw:
            continue
        c = [*raw.split(ctx.msg.enc.component), "", "", ""]
        value = _plain(c[0], ctx.msg.enc).strip()
        if not value:
            continue
        namespace = _plain(c[1], ctx.msg.enc).strip()
        universal = _plain(c[2], ctx.msg.enc).strip()
        system = _authority_system(namespace, universal, c[3] if len(c) > 3 else "", "", ctx)
        if system == NORWEGIAN_PERSON:
            system = local_system(namespace)
        idents.append({"type": {"coding": [{"system": V2_0203, "code": code}]}, "system": system, "value": value})
        if not key:
            key = f"{code}|{system}|{value}"
    if not key:
        key = f"msg|{ctx.facility}|{ctx.msg.control_id or ''}|{obr.get(1) or ordinal}"
    return key, idents


def _specimen(report: _Report, patient: _PatientKey, ctx: _Ctx, entries: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """SPM (2.5+) or OBR-15 (2.3/2.4) -> Specimen resources (PUT by deterministic id); returns references."""
    refs = []
    enc = ctx.msg.enc
    obr = report.obr
    sources: list[tuple[str, dict[str, Any]]] = []
    for i, spm in enumerate(report.spm):
        spec: dict[str, Any] = {"resourceType": "Specimen", "id": fhir_id("Specimen", report.key, "SPM", str(i))}
        sid = spm.raw(2)
        if sid:
            ident_value = _plain(sid.split(enc.component)[0].split(enc.subcomponent)[0], enc).strip()
            if ident_value:
                spec["identifier"] = [{"system": local_system(f"{ctx.facility}:specimen"), "value": ident_value}]
        stype = spm.reps(4)
        if stype:
            cc = _codeable(stype[0], ctx)
            if cc:
                spec["type"] = cc
        collected = _dtm(spm.get(17, 1), "SPM-17", ctx) or _dtm(obr.get(7), "OBR-7", ctx)
        if collected:
            spec["collection"] = {"collectedDateTime": collected}
        received = _dtm(spm.get(18), "SPM-18", ctx, instant=True)
        if received:
            spec["receivedTime"] = received
        sources.append((f"SPM[{i + 1}]", spec))
    if not sources and obr.raw(15):
        c = obr.raw(15).split(enc.component)
        cc = _codeable(c[0].replace(enc.subcomponent, enc.component), ctx) if c[0] else None
        spec = {"resourceType": "Specimen", "id": fhir_id("Specimen", report.key, "OBR-15")}
        if cc:
            spec["type"] = cc
        collected = _dtm(obr.get(7), "OBR-7", ctx)
        if collected:
            spec["collection"] = {"collectedDateTime": collected}
        if cc or collected:
            sources.append(("OBR-15", spec))
    for _, spec in sources:
        spec["subject"] = patient.reference
        entries.append(update_by_id(spec))
        refs.append({"reference": f"Specimen/{spec['id']}"})
    return refs


def _observation(
    obx: Segment,
    notes: list[str],
    report: _Report,
    obs_id: str,
    patient: _PatientKey,
    encounter: dict[str, Any] | None,
    specimen: list[dict[str, Any]],
    ctx: _Ctx,
) -> dict[str, Any]:
    """OBX -> Observation (v2-to-FHIR segment map OBX[Observation])."""
    code = _codeable(obx.raw(3).split(ctx.msg.enc.repetition)[0], ctx)
    if code is None:
        raise MappingError("OBX-3", "observation identifier is empty", "101")
    raw_status = obx.get(11).strip().upper()
    if raw_status and raw_status not in _OBS_STATUS:
        raise MappingError("OBX-11", f"result status {raw_status!r} is not in table 0085", "103")
    status = _OBS_STATUS.get(raw_status, "unknown")
    obs: dict[str, Any] = {
        "resourceType": "Observation",
        "id": obs_id,
        "status": status,
        "category": [{"coding": [{"system": _OBS_CATEGORY, "code": "laboratory", "display": "Laboratory"}]}],
        "code": code,
        "subject": patient.reference,
    }
    if encounter is not None:
        obs["encounter"] = encounter
    effective = _dtm(obx.get(14), "OBX-14", ctx) or report.effective
    if effective:
        obs["effectiveDateTime"] = effective
    if report.issued:
        obs["issued"] = report.issued
    unit = _unit(obx.raw(6), "OBX-6", ctx)
    value = _value(obx, unit, ctx)
    if value is not None:
        obs[value[0]] = value[1]
    flags = []
    for r, rep in enumerate(obx.reps(8)):
        flag = _plain(rep.split(ctx.msg.enc.component)[0], ctx.msg.enc).strip()
        if not flag:
            continue
        if flag not in _INTERPRETATION:
            raise MappingError(f"OBX-8[{r + 1}]", f"abnormal flag {flag!r} is not in table 0078", "103")
        flags.append({"coding": [{"system": _INTERPRETATION_SYSTEM, "code": flag}]})
    if flags:
        obs["interpretation"] = flags
    if notes:
        obs["note"] = [{"text": n} for n in notes]
    if specimen:
        obs["specimen"] = specimen[0]
    rr = _reference_range(obx.raw(7), unit, ctx)
    if rr:
        obs["referenceRange"] = [rr]
    return obs


# ---------------------------------------------------------------------------------------------
# messages


def _group_ignored(seg: Segment, ctx: _Ctx) -> None:
    if seg.name.startswith("Z"):
        ctx.ignored.append(Problem(seg.name, "Z-segment (local extension) ignored", "info"))
    else:
        ctx.ignored.append(Problem(seg.name, "segment not mapped", "info"))


def _map_adt(ctx: _Ctx, event: str) -> list[dict[str, Any]]:
    segs = ctx.msg.segments
    pid = next((s for s in segs if s.name == "PID"), None)
    if pid is None:
        raise MappingError("PID", "PID segment missing", "100")
    patient, key = _patient(pid, ctx)
    entries: list[dict[str, Any]] = []
    if event == "A40":
        mrg = next((s for s in segs if s.name == "MRG"), None)
        if mrg is None:
            raise MappingError("MRG", "MRG segment missing (A40 needs the prior patient identifiers)", "100")
        old_idents = [i for r, rep in enumerate(mrg.reps(1)) if (i := _cx(rep, f"MRG-1[{r + 1}]", ctx)) is not None]
        if not old_idents:
            raise MappingError("MRG-1", "no prior patient identifier", "101")
        old = _primary(old_idents)
        if (old.system, old.value) == (key.system, key.value):
            raise MappingError("MRG-1", "prior and surviving patient have the same identifier", "205")
        old_key = _PatientKey(old.system, old.value)
        retired: dict[str, Any] = {
            "resourceType": "Patient",
            "identifier": [i.identifier for i in old_idents],
            "active": False,
        }
        survivor_entry = conditional_update(patient, key.system, key.value)
        retired_entry = conditional_update(retired, old_key.system, old_key.value)
        # the two links point at each other's entry (fullUrl, rewritten to Patient/id by the
        # transaction): conditional references both ways could not be resolved for new patients
        patient["link"] = [{"other": {"reference": retired_entry["fullUrl"]}, "type": "replaces"}]
        retired["link"] = [{"other": {"reference": survivor_entry["fullUrl"]}, "type": "replaced-by"}]
        entries.extend((survivor_entry, retired_entry))
        for seg in segs:
            if seg.name not in ("MSH", "EVN", "PID", "MRG", "PV1"):
                _group_ignored(seg, ctx)
        return entries
    entries.append(conditional_update(patient, key.system, key.value))
    pv1 = next((s for s in segs if s.name == "PV1"), None)
    if pv1 is None:
        if event == "A03":
            raise MappingError("PV1", "PV1 segment missing (a discharge needs the visit)", "100")
        ctx.warn("PV1", "no PV1 segment: no Encounter")
    else:
        encounter = _encounter(pv1, key, ctx, entries, discharge=event == "A03")
        if encounter is not None:
            entries.append(update_by_id(encounter))
    for seg in segs:
        if seg.name not in ("MSH", "EVN", "PID", "PV1"):
            _group_ignored(seg, ctx)
    return entries


def _map_oru(ctx: _Ctx) -> list[dict[str, Any]]:
    enc = ctx.msg.enc
    entries: list[dict[str, Any]] = []
    groups: list[tuple[Segment, Segment | None, list[_Report]]] = []
    orc: Segment | None = None
    last: list[str] | None = None  # the note list NTE segments attach to
    for seg in ctx.msg.segments[1:]:
        name = seg.name
        if name == "PID":
            groups.append((seg, None, []))
            last = None
        elif name == "PV1" and groups:
            groups[-1] = (groups[-1][0], seg, groups[-1][2])
        elif name == "ORC":
            orc = seg
        elif name == "OBR":
            if not groups:
                raise MappingError("OBR", "OBR before any PID (results need a patient)", "100")
            reports = groups[-1][2]
            reports.append(_Report(seg, orc, *_order_key(seg, orc, len(reports), ctx)))
            orc = None
            last = None
        elif name == "OBX":
            if not groups or not groups[-1][2]:
                raise MappingError("OBX", "OBX outside an OBR group", "100")
            notes: list[str] = []
            groups[-1][2][-1].obx.append((seg, notes))
            last = notes
        elif name == "NTE":
            if last is not None:
                text = "\n".join(_plain(r, enc) for r in seg.reps(3)).strip()
                if text:
                    last.append(text)
            else:
                ctx.ignored.append(Problem("NTE", "note outside an OBX not mapped", "info"))
        elif name == "SPM":
            if not groups or not groups[-1][2]:
                raise MappingError("SPM", "SPM outside an OBR group", "100")
            groups[-1][2][-1].spm.append(seg)
            last = None
        else:
            _group_ignored(seg, ctx)
    if not groups:
        raise MappingError("PID", "PID segment missing", "100")
    for pid, pv1, reports in groups:
        patient, pkey = _patient(pid, ctx)
        entry = conditional_create(patient, pkey.system, pkey.value)
        if not any(e["fullUrl"] == entry["fullUrl"] for e in entries):
            entries.append(entry)
        encounter_ref = None
        if pv1 is not None:
            visit = _visit_key(pv1, ctx)
            if visit is not None:  # logical reference: results may arrive before the ADT that creates the visit
                encounter_ref = {"identifier": {"system": visit.system, "value": visit.value}}
        if not reports:
            ctx.warn("OBR", "patient without results")
        for report in reports:
            entries.extend(_report_entries(report, pkey, encounter_ref, ctx))
    return entries


def _report_entries(
    report: _Report, patient: _PatientKey, encounter: dict[str, Any] | None, ctx: _Ctx
) -> list[dict[str, Any]]:
    """One OBR group -> its Specimens, Observations and the DiagnosticReport (last, as it references them)."""
    obr = report.obr
    entries: list[dict[str, Any]] = []
    report.effective = _dtm(obr.get(7), "OBR-7", ctx)
    report.issued = _dtm(obr.get(22), "OBR-22", ctx, instant=True)
    specimen = _specimen(report, patient, ctx, entries)
    key, identifiers = report.key, report.identifiers
    code = _codeable(obr.raw(4).split(ctx.msg.enc.repetition)[0], ctx)
    if code is None:
        raise MappingError("OBR-4", "universal service identifier is empty", "101")
    raw_status = obr.get(25).strip().upper()
    if raw_status and raw_status not in _REPORT_STATUS:
        raise MappingError("OBR-25", f"result status {raw_status!r} is not in table 0123", "103")
    results = []
    seen: dict[str, int] = {}
    for obx, notes in report.obx:
        c = [*obx.raw(3).split(ctx.msg.enc.component), "", "", ""]
        base = f"{c[2]}|{c[0]}|{obx.get(4)}"
        occurrence = seen.get(base, 0)
        seen[base] = occurrence + 1
        obs_id = fhir_id("Observation", key, base, str(occurrence))
        obs = _observation(obx, notes, report, obs_id, patient, encounter, specimen, ctx)
        entries.append(update_by_id(obs))
        results.append({"reference": f"Observation/{obs_id}"})
    dr: dict[str, Any] = {"resourceType": "DiagnosticReport", "id": fhir_id("DiagnosticReport", key)}
    if identifiers:
        dr["identifier"] = identifiers
    dr["status"] = _REPORT_STATUS.get(raw_status, "unknown")
    section = obr.get(24).strip().upper() or "LAB"
    dr["category"] = [{"coding": [{"system": _V2_0074, "code": section}]}]
    dr["code"] = code
    dr["subject"] = patient.reference
    if encounter is not None:
        dr["encounter"] = encounter
    if report.effective:
        dr["effectiveDateTime"] = report.effective
    if report.issued:
        dr["issued"] = report.issued
    if specimen:
        dr["specimen"] = specimen
    if results:
        dr["result"] = results
    entries.append(update_by_id(dr))
    return entries


_ADT_EVENTS = frozenset({"A01", "A03", "A04", "A08", "A40"})


def map_message(
    raw: RawMessage, *, default_tz: str = DEFAULT_TZ, authorities: dict[str, str] | None = None
) -> MappedMessage | Quarantined:
    """Map one message; every failure comes back as a Quarantined with its location and reason.

    ``authorities`` adds or overrides assigning authority -> ``Identifier.system`` entries (keys
    are CX-4 namespaces, universal ids or CX-5 identifier types; the value
    ``"norwegian-person-number"`` validates the number and picks the fnr/dnr/hnr system).
    """
    if raw.error is not None:
        return _quarantine(raw, raw.error, "AR" if raw.error.code in ("200", "201", "203") else "AE")
    msh = raw.msh
    if msh is None:  # pragma: no cover - parse_messages always starts a message at MSH
        return _quarantine(raw, Problem("MSH", "missing MSH", code="100"), "AE")
    table = KNOWN_AUTHORITIES if not authorities else KNOWN_AUTHORITIES | {k.upper(): v for k, v in authorities.items()}
    ctx = _Ctx(raw, ZoneInfo(default_tz), table, msh.get(4) or msh.get(3), list(raw.warnings), [])
    try:
        if not raw.control_id:
            raise MappingError("MSH-10", "message control id is empty", "101")
        version = raw.version
        if not version.startswith("2."):
            raise MappingError("MSH-12", f"version {version!r} is not HL7 v2", "203", "AR")
        if version not in SUPPORTED_VERSIONS:
            ctx.warn("MSH-12", f"version {version} is outside 2.3-2.5.1; mapped as 2.5.1")
        code, event = msh.get(9, 1).strip().upper(), msh.get(9, 2).strip().upper()
        if code == "ADT" and not event:
            evn = next((s for s in raw.segments if s.name == "EVN"), None)
            event = evn.get(1).strip().upper() if evn is not None else ""
        if code == "ADT" and event in _ADT_EVENTS:
            entries = _map_adt(ctx, event)
        elif code == "ORU" and event == "R01":
            entries = _map_oru(ctx)
        elif code in ("ADT", "ORU"):
            raise MappingError("MSH-9", f"event {code}^{event} is not supported", "201", "AR")
        else:
            raise MappingError("MSH-9", f"message type {code or '(empty)'} is not supported", "200", "AR")
    except MappingError as exc:
        return _quarantine(raw, exc.problem, exc.ack_code, ctx.warnings)
    except Exception as exc:  # noqa: BLE001  # one message's surprise must not stop a batch: quarantined with the error
        return _quarantine(raw, Problem("", f"mapping failed: {type(exc).__name__}: {exc}", code="207"), "AE")
    return MappedMessage(
        raw.source,
        raw.index,
        raw.control_id or "",
        raw.message_type or "",
        entries,
        ctx.warnings,
        ctx.ignored,
        raw,
    )


def _quarantine(raw: RawMessage, problem: Problem, ack_code: str, warnings: list[Problem] | None = None) -> Quarantined:
    return Quarantined(
        raw.source,
        raw.index,
        problem,
        raw.text,
        raw.control_id,
        raw.message_type,
        ack_code,
        list(warnings or raw.warnings),
        raw,
    )


def map_stream(
    data: bytes | str | IO[bytes] | IO[str],
    source_name: str = "<stream>",
    *,
    default_tz: str = DEFAULT_TZ,
    authorities: dict[str, str] | None = None,
) -> Iterator[MappedMessage | Quarantined]:
    """Map every message of a feed, lazily; one result per message (or per unreadable run of lines)."""
    for raw in parse_messages(data, source_name):
        yield map_message(raw, default_tz=default_tz, authorities=authorities)


# ---------------------------------------------------------------------------------------------
# acknowledgments


def ack(
    message: RawMessage | MappedMessage | Quarantined,
    code: str = "AA",
    error: Problem | str | None = None,
    *,
    control_id: str | None = None,
    now: datetime | None = None,
) -> str:
    """An original-mode ACK (chapter 2.9.2) for a message: MSH with sender and receiver swapped, MSA, ERR.

    ``code`` is AA (accepted), AE (error) or AR (rejected). ``error`` (a Problem, e.g. a
    Quarantined's ``problem``, or a text) becomes MSA-3 and an ERR segment: ERR-2 location and
    ERR-3 table 0357 code in 2.5+, ERR-1 in 2.3/2.4. Segments end with CR; no MLLP framing.
    """
    if code not in ("AA", "AE", "AR", "CA", "CE", "CR"):
        raise ValueError(f"acknowledgment code {code!r} is not in table 0008")
    raw = message if isinstance(message, RawMessage) else message.message
    enc = raw.enc if isinstance(raw, RawMessage) else Encoding()
    msh = raw.msh if isinstance(raw, RawMessage) else None

    def f(n: int) -> str:
        return msh.raw(n) if msh is not None else ""

    original = (raw.control_id if isinstance(raw, RawMessage) else None) or ""
    version = f(12) or "2.5.1"
    event = msh.get(9, 2) if msh is not None else ""
    stamp = (now or datetime.now(UTC)).strftime("%Y%m%d%H%M%S%z")
    ack_id = control_id or ("A" + original)[:20] or "ACK"
    s = enc.component
    header = [
        "MSH",
        enc.msh2,
        f(5),
        f(6),
        f(3),
        f(4),
        stamp,
        "",
        f"ACK{s}{event}{s}ACK" if event else "ACK",
        escape(ack_id, enc),
        f(11) or "P",
        version,
    ]
    segments = [enc.field.join(header)]
    problem = error if isinstance(error, Problem) else (Problem("", error) if error else None)
    text = escape(problem.reason, enc)[:80] if problem is not None else ""
    segments.append(enc.field.join(["MSA", code, escape(original, enc)] + ([text] if text else [])))
    if problem is not None and code != "AA":
        segments.append(_err(problem, enc, version))
    return "\r".join(segments) + "\r"


_LOCATION = re.compile(r"([A-Z][A-Z0-9]{2})(?:-(\d+))?(?:\[(\d+)\])?")


def _err(problem: Problem, enc: Encoding, version: str) -> str:
    s, sub = enc.component, enc.subcomponent
    m = _LOCATION.match(problem.location)
    seg, fld, rep = (m.group(1), m.group(2) or "", m.group(3) or "") if m else ("", "", "")
    code = problem.code or "207"
    severity = "E" if problem.severity == "error" else "W"
    if version in ("2.3", "2.3.1", "2.4"):
        # ERR-1 error code and location (ELD): segment ^ sequence ^ field position ^ code&text&table
        return enc.field.join(["ERR", f"{seg}{s}1{s}{fld}{s}{code}{sub}{escape(problem.reason, enc)}{sub}HL70357"])
    location = s.join([seg, "1" if seg else "", fld, rep or ("1" if fld else "")])
    parts = ["ERR", "", location, f"{code}{s}{escape(problem.reason, enc)}{s}HL70357", severity]
    return enc.field.join(parts)
