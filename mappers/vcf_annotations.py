"""Functional annotations in VCF INFO fields: SnpEff ``ANN``, SnpEff classic ``EFF``, Ensembl VEP ``CSQ``.

Owns reading the annotation layout from the header (the ``##INFO`` Description lists the
sub-field order: ``Format: 'Allele | Annotation | …'`` for ANN, ``Format: Allele|Consequence|…``
for CSQ, ``Format: 'Effect ( Effect_Impact | … )'`` for EFF) and picking, for one ALT allele,
the annotation to report: gene symbol (and HGNC ID when VEP gives one), Sequence Ontology
consequence terms, transcript, c. and p. HGVS.

Specs: SnpEff ANN ("VCF annotation format v1.0", https://pcingola.github.io/SnpEff/adds/VCFannotationformat_v1.0.pdf),
SnpEff classic EFF and its effect table (https://pcingola.github.io/SnpEff/), VEP VCF output
(https://www.ensembl.org/info/docs/tools/vep/vep_formats.html#vcfout). The consequence terms feed
the Genomics Reporting MolecularConsequence profile (http://hl7.org/fhir/uv/genomics-reporting/).

Choice of annotation: SnpEff writes the most severe effect first, so the first entry for the
allele whose feature is a transcript wins; for VEP the entry flagged ``PICK``, then ``CANONICAL``,
then the first. Imports nothing from ``server``.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any
from urllib.parse import unquote

from mappers.genomics_codes import so_from_snpeff_classic

__all__ = [
    "CSQ_POPULATION_FIELDS",
    "INFO_POPULATION_KEYS",
    "Annotation",
    "AnnotationReader",
    "PopulationFrequencies",
    "protein_change_to_hgvs",
]

#: INFO keys holding a population allele frequency (lower case; see the module docstring)
INFO_POPULATION_KEYS = frozenset(
    k.lower()
    for k in (
        "gnomAD_AF", "gnomADe_AF", "gnomADg_AF", "gnomAD_exomes_AF", "gnomAD_genomes_AF", "gnomAD_exome_AF",
        "gnomAD_genome_AF", "gnomAD_exome_ALL", "gnomAD_genome_ALL", "AF_popmax", "AF_grpmax",
        "gnomAD_AF_popmax", "ExAC_AF", "ExAC_ALL", "MAX_AF", "dbNSFP_gnomAD_exomes_AF",
        "dbNSFP_gnomAD_genomes_AF", "dbNSFP_ExAC_AF",
    )
)  # fmt: skip
#: VEP CSQ sub-fields holding a population allele frequency (CSQ ``AF`` = 1000 Genomes is not used)
CSQ_POPULATION_FIELDS = ("gnomAD_AF", "gnomADe_AF", "gnomADg_AF", "gnomAD_exomes_AF", "gnomAD_genomes_AF",
                         "ExAC_AF", "MAX_AF")  # fmt: skip

_THREE_LETTER = {
    "A": "Ala", "R": "Arg", "N": "Asn", "D": "Asp", "C": "Cys", "E": "Glu", "Q": "Gln", "G": "Gly",
    "H": "His", "I": "Ile", "L": "Leu", "K": "Lys", "M": "Met", "F": "Phe", "P": "Pro", "S": "Ser",
    "T": "Thr", "W": "Trp", "Y": "Tyr", "V": "Val", "U": "Sec", "O": "Pyl", "*": "Ter",
}  # fmt: skip
_ONE_LETTER_CHANGE = re.compile(r"^([A-Z*])(\d+)([A-Z*]?)$")
_EFF_ENTRY = re.compile(r"^\s*([A-Za-z0-9_+ ]+?)\s*\((.*)\)\s*$")


@dataclass(frozen=True)
class Annotation:
    """What the mapper reports from one annotation entry of one ALT allele."""

    gene: str | None = None
    hgnc_id: str | None = None
    consequences: tuple[str, ...] = ()  #: SO term names, most severe first
    transcript: str | None = None
    hgvs_c: str | None = None  #: full expression, ``NM_000059.4:c.7397T>C``
    hgvs_p: str | None = None  #: ``ENSP…:p.Val2466Ala`` or ``p.Val2466Ala`` when no protein accession
    source: str = ""  #: ANN, EFF or CSQ
    population_af: float | None = None  #: highest population AF of the CSQ entries of the allele
    population_keys: tuple[str, ...] = ()  #: the CSQ sub-fields it was read from


def _frequency(text: str) -> float | None:
    """A population AF value (``&``-joined: the highest); None unless a number in [0, 1]."""
    best: float | None = None
    for part in text.split("&"):
        try:
            value = float(part)
        except ValueError:
            continue
        if 0.0 <= value <= 1.0 and (best is None or value > best):
            best = value
    return best


def _allele_value(raw: str, alts: list[str], allele: int) -> str | None:
    values = raw.split(",")
    if len(values) == len(alts):
        return values[allele - 1]
    if len(alts) == 1 and len(values) == 1:
        return values[0]
    return None  # one value for several ALTs (Number=1): which allele it belongs to is unknown


class PopulationFrequencies:
    """Population allele frequencies from the INFO keys the header declares (module docstring)."""

    def __init__(self, infos: dict[str, str]) -> None:
        self.keys = [key for key in infos if key.lower() in INFO_POPULATION_KEYS]

    def __bool__(self) -> bool:
        return bool(self.keys)

    def read(self, info: dict[str, Any], alts: list[str], allele: int) -> tuple[float | None, list[str]]:
        """(highest AF of ALT number ``allele``, the keys that gave a value) of one record."""
        best: float | None = None
        found: list[str] = []
        for key in self.keys:
            raw = info.get(key)
            if not isinstance(raw, str):
                continue
            text = _allele_value(raw, alts, allele)
            value = _frequency(text) if text is not None else None
            if value is None:
                continue
            found.append(key)
            if best is None or value > best:
                best = value
        return best, found


def protein_change_to_hgvs(change: str) -> str | None:
    """SnpEff classic one-letter change (``F113C``, ``S60``) -> HGVS (``p.Phe113Cys``, ``p.Ser60=``)."""
    match = _ONE_LETTER_CHANGE.match(change)
    if not match:
        return None
    ref, pos, alt = match.groups()
    ref3 = _THREE_LETTER.get(ref)
    if ref3 is None:
        return None
    if not alt or alt == ref:
        return f"p.{ref3}{pos}="
    alt3 = _THREE_LETTER.get(alt)
    return f"p.{ref3}{pos}{alt3}" if alt3 else None


def _field_names(description: str, style: str) -> list[str]:
    if style == "CSQ":
        _, _, fmt = description.partition("Format:")
        return [name.strip() for name in fmt.strip().strip("'\"").split("|")]
    quoted = re.search(r"'([^']*)'", description)
    text = quoted.group(1) if quoted else description.partition("Format:")[2]
    if style == "EFF":
        inner = text.partition("(")[2].rpartition(")")[0] or text
        text = inner.replace("[", "").replace("]", "")
    return [name.strip() for name in text.split("|")]


def _index(names: list[str], *candidates: str) -> int | None:
    lowered = [name.lower() for name in names]
    for candidate in candidates:
        if candidate.lower() in lowered:
            return lowered.index(candidate.lower())
    return None


def _get(fields: list[str], index: int | None) -> str:
    if index is None or index >= len(fields):
        return ""
    return fields[index].strip()


class AnnotationReader:
    """Reads one annotation INFO field of a file whose header declared its layout.

    ``infos`` maps INFO IDs to their header Description. The first of ANN, CSQ, EFF present is
    used (ANN supersedes EFF in SnpEff ≥ 4.1).
    """

    def __init__(self, infos: dict[str, str]) -> None:
        self.key: str | None = None
        self.style = ""
        for key in ("ANN", "CSQ", "EFF"):
            if key in infos:
                self.key, self.style = key, key
                self.names = _field_names(infos[key], key)
                break
        if self.key is None:
            return
        names = self.names
        if self.style == "ANN":
            self._allele = _index(names, "Allele")
            self._effect = _index(names, "Annotation")
            self._gene = _index(names, "Gene_Name")
            self._feature_type = _index(names, "Feature_Type")
            self._feature = _index(names, "Feature_ID")
            self._c = _index(names, "HGVS.c")
            self._p = _index(names, "HGVS.p")
        elif self.style == "CSQ":
            self._allele = _index(names, "Allele")
            self._allele_num = _index(names, "ALLELE_NUM")
            self._effect = _index(names, "Consequence")
            self._gene = _index(names, "SYMBOL")
            self._hgnc = _index(names, "HGNC_ID")
            self._feature_type = _index(names, "Feature_type")
            self._feature = _index(names, "Feature")
            self._c = _index(names, "HGVSc")
            self._p = _index(names, "HGVSp")
            self._canonical = _index(names, "CANONICAL")
            self._pick = _index(names, "PICK")
            self._population = [(n, i) for n in CSQ_POPULATION_FIELDS if (i := _index(names, n)) is not None]
        else:
            self._genotype = _index(names, "Genotype_Number", "Genotype")
            self._aa = _index(names, "Amino_Acid_change", "Amino_Acid_Change")
            self._gene = _index(names, "Gene_Name")
            self._feature = _index(names, "Transcript", "Transcript_ID")

    def annotate(self, info: dict[str, Any], ref: str, alts: list[str], allele: int) -> Annotation | None:
        """The annotation of ALT number ``allele`` (1-based) of a record, or None."""
        if self.key is None:
            return None
        raw = info.get(self.key)
        if not isinstance(raw, str) or not raw:
            return None
        if self.style == "ANN":
            return self._ann(raw, alts[allele - 1])
        if self.style == "CSQ":
            return self._csq(raw, ref, alts, allele)
        return self._eff(raw, alts, allele)

    def _ann(self, raw: str, alt: str) -> Annotation | None:
        chosen: list[str] | None = None
        for entry in raw.split(","):
            fields = entry.split("|")
            if _get(fields, self._allele) != alt:
                continue
            if chosen is None:
                chosen = fields
            if _get(fields, self._feature_type).lower() == "transcript":
                chosen = fields
                break
        if chosen is None:
            return None
        transcript = _get(chosen, self._feature) if _get(chosen, self._feature_type).lower() == "transcript" else ""
        c = _get(chosen, self._c)
        return Annotation(
            gene=_get(chosen, self._gene) or None,
            consequences=tuple(t for t in _get(chosen, self._effect).split("&") if t),
            transcript=transcript or None,
            hgvs_c=(f"{transcript}:{c}" if transcript else c) if c.startswith(("c.", "n.")) else None,
            hgvs_p=_get(chosen, self._p) or None,
            source="ANN",
        )

    def _csq(self, raw: str, ref: str, alts: list[str], allele: int) -> Annotation | None:
        alt = alts[allele - 1]
        # VEP drops the first base when REF and every ALT share it (VCF padding base); '-' = empty
        trimmed = alt
        if all(a and a[0] == ref[0] for a in alts) and ref:
            trimmed = alt[1:] or "-"
        candidates: list[list[str]] = []
        for entry in raw.split(","):
            fields = entry.split("|")
            if self._allele_num is not None:
                if _get(fields, self._allele_num) != str(allele):
                    continue
            elif self._allele is not None:
                if _get(fields, self._allele) not in (alt, trimmed):
                    continue
            elif len(alts) > 1:
                return None  # no Allele sub-field: entries of a multi-allelic record are ambiguous
            candidates.append(fields)
        if not candidates:
            return None
        chosen = candidates[0]
        for index in (self._pick, self._canonical):
            flagged = [f for f in candidates if _get(f, index) in ("1", "YES")]
            if index is not None and flagged:
                chosen = flagged[0]
                break
        feature = _get(chosen, self._feature)
        is_transcript = _get(chosen, self._feature_type).lower() == "transcript" or feature.startswith(
            ("ENST", "NM_", "NR_", "XM_", "XR_", "LRG_")
        )
        hgnc = _get(chosen, self._hgnc)
        if hgnc and not hgnc.startswith("HGNC:"):
            hgnc = "HGNC:" + hgnc
        c = unquote(_get(chosen, self._c))
        p = unquote(_get(chosen, self._p))
        population_af: float | None = None
        population_keys: list[str] = []
        for name, index in self._population:  # per allele, the same in every transcript's entry
            values = [v for f in candidates if (v := _frequency(_get(f, index))) is not None]
            if values:
                population_keys.append(name)
                population_af = max(values) if population_af is None else max(population_af, *values)
        return Annotation(
            gene=_get(chosen, self._gene) or None,
            hgnc_id=hgnc or None,
            consequences=tuple(t for t in _get(chosen, self._effect).split("&") if t),
            transcript=feature if is_transcript and feature else None,
            hgvs_c=c or None,
            hgvs_p=p or None,
            source="CSQ",
            population_af=population_af,
            population_keys=tuple(population_keys),
        )

    def _eff(self, raw: str, alts: list[str], allele: int) -> Annotation | None:
        first: tuple[str, list[str]] | None = None
        chosen: tuple[str, list[str]] | None = None
        for entry in raw.split(","):
            match = _EFF_ENTRY.match(entry)
            if not match:
                continue
            effect, fields = match.group(1), match.group(2).split("|")
            genotype = _get(fields, self._genotype)
            if genotype:
                if genotype != str(allele) and genotype != alts[allele - 1]:
                    continue
            elif len(alts) > 1:
                return None  # no Genotype_Number: entries of a multi-allelic record are ambiguous
            if first is None:
                first = (effect, fields)
            if _get(fields, self._feature):
                chosen = (effect, fields)
                break
        chosen = chosen or first
        if chosen is None:
            return None
        effect, fields = chosen
        term = so_from_snpeff_classic(effect)
        change = _get(fields, self._aa)
        hgvs_p: str | None = None
        hgvs_c: str | None = None
        transcript = _get(fields, self._feature) or None
        for part in change.split("/"):
            if part.startswith("p."):
                hgvs_p = part
            elif part.startswith("c."):
                hgvs_c = f"{transcript}:{part}" if transcript else part
        if hgvs_p is None and change:
            hgvs_p = protein_change_to_hgvs(change)
        return Annotation(
            gene=_get(fields, self._gene) or None,
            consequences=(term.term,) if term else (effect,),
            transcript=transcript,
            hgvs_c=hgvs_c,
            hgvs_p=hgvs_p,
            source="EFF",
        )
