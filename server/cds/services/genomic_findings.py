"""``genomic-findings`` (patient-view): the patient's actionable genomic findings as cards.

CDS Hooks 2.0 patient-view service (https://cds-hooks.hl7.org/hooks/patient-view/; GitHub issue 7):

- **pathogenic / likely pathogenic variants** (HL7 Genomics Reporting DiagnosticImplication,
  clinical significance 53037-8 LA6668-3 / LA26332-9), grouped by what they imply: inherited
  cardiac conditions (KCNQ1, KCNH2, SCN5A: long-QT / Brugada; MYBPC3, MYH7: cardiomyopathy),
  hereditary colorectal cancer (MLH1, MSH2, MSH6, PMS2: Lynch syndrome; APC: familial adenomatous
  polyposis), anything else as a rare-disease finding;
- **somatic RAS status**: a KRAS or NRAS mutation (somatic variant; when the protein change is known,
  only codons 12, 13, 59, 61, 117, 146 — exons 2-4, the extended RAS testing of the ESMO and NCCN
  colorectal guidelines) means anti-EGFR antibodies (cetuximab, panitumumab) are not indicated.
  BRAF V600E alone does **not** give that card: BRAF V600E metastatic colorectal cancer is treated
  with encorafenib plus cetuximab (BEACON CRC, Kopetz et al. N Engl J Med 2019;381:1632-43), an
  anti-EGFR antibody; it gets an info card of its own;
- **PGx phenotypes** (TherapeuticImplication Observations): one info card listing them;
- **rare-disease candidate genes** for a patient with HPO phenotypes and variant calls but no
  diagnosis: one info card with the top genes of the phenotype-driven ranking and links to the
  full ``Patient/$prioritize-variants`` result (:mod:`server.cds.services.rare_candidates`, which
  states what "no diagnosis" means and how its latency is bounded);
- every card links to the patient's page of the sandbox UI (``{BIGMED_BASE_URL}/#/patient/{id}``).
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import Any

from server.cds.model import HookCall, Service, card, link
from server.cds.patient import Variant, pgx_results, variants
from server.cds.services import rare_candidates

__all__ = ["PREFETCH", "SERVICES", "cards"]

_TBD = "http://hl7.org/fhir/uv/genomics-reporting/CodeSystem/tbd-codes-cs"
PREFETCH = {
    "patient": "Patient/{{context.patientId}}",
    "implications": (
        "Observation?patient={{context.patientId}}&code=" + _TBD + "|diagnostic-implication"
        "&_include=Observation:derived-from&_count=500"
    ),
    "ras": "Observation?patient={{context.patientId}}&code=http://loinc.org|69548-6&gene=KRAS,NRAS,BRAF&_count=500",
    "pgx": "Observation?patient={{context.patientId}}&code="
    + _TBD
    + "|therapeutic-implication,http://loinc.org|84413-4&_count=500",
    **rare_candidates.PREFETCH,
}
CARDIAC = {
    "KCNQ1": "long QT syndrome type 1",
    "KCNH2": "long QT syndrome type 2",
    "SCN5A": "long QT syndrome type 3 / Brugada syndrome",
    "MYBPC3": "hypertrophic cardiomyopathy",
    "MYH7": "hypertrophic / dilated cardiomyopathy",
}
COLORECTAL = {
    "MLH1": "Lynch syndrome",
    "MSH2": "Lynch syndrome",
    "MSH6": "Lynch syndrome",
    "PMS2": "Lynch syndrome",
    "APC": "familial adenomatous polyposis",
}
RAS_GENES = ("KRAS", "NRAS")
RAS_CODONS = {12, 13, 59, 61, 117, 146}
_CODON = re.compile(r"p\.\(?[A-Z][a-z]{0,2}(\d+)")
_V600E = re.compile(r"p\.\(?(V600E|Val600Glu)\)?")
SOURCES = {
    "cardiac": {
        "label": "ClinGen / ACMG SF v3.2 actionable genes (inherited cardiac conditions)",
        "url": "https://www.ncbi.nlm.nih.gov/clinvar/docs/acmg/",
    },
    "colorectal": {
        "label": "NCCN / ACMG SF v3.2: hereditary colorectal cancer genes",
        "url": "https://www.ncbi.nlm.nih.gov/clinvar/docs/acmg/",
    },
    "rare": {
        "label": "ClinVar classification in the patient's genomic report",
        "url": "https://www.ncbi.nlm.nih.gov/clinvar/",
    },
    "ras": {
        "label": "ESMO metastatic colorectal cancer guideline (2023): RAS testing before anti-EGFR therapy",
        "url": "https://www.esmo.org/guidelines/guidelines-by-topic/gastrointestinal-cancers/metastatic-colorectal-cancer",
    },
    "braf": {
        "label": "BEACON CRC: encorafenib + cetuximab in BRAF V600E mCRC (NEJM 2019)",
        "url": "https://doi.org/10.1056/NEJMoa1908075",
    },
    "pgx": {
        "label": "CPIC (Clinical Pharmacogenetics Implementation Consortium)",
        "url": "https://cpicpgx.org/guidelines/",
    },
}


def _codon(variant: Variant) -> int | None:
    match = _CODON.search(variant.protein_change or "")
    return int(match.group(1)) if match else None


def _ras_mutated(found: Sequence[Variant]) -> list[Variant]:
    out = []
    for v in found:
        if v.gene not in RAS_GENES or not v.somatic:
            continue
        codon = _codon(v)
        if codon is None or codon in RAS_CODONS:
            out.append(v)
    return out


def _pathogenic_cards(call: HookCall, found: Sequence[Variant]) -> list[dict[str, Any]]:
    out = []
    for v in found:
        if v.significance is None or v.gene is None or v.somatic:
            continue
        if v.gene in CARDIAC:
            kind, what = "cardiac", CARDIAC[v.gene]
            action = (
                "Refer to cardiogenetics; ECG; avoid QT-prolonging drugs where relevant; cascade testing of relatives."
            )
        elif v.gene in COLORECTAL:
            kind, what = "colorectal", COLORECTAL[v.gene]
            action = "Refer to clinical genetics; colonoscopy surveillance per guideline; cascade testing of relatives."
        else:
            kind, what = "rare", "a rare-disease gene"
            action = "Review with clinical genetics."
        out.append(
            card(
                f"{v.significance} {v.gene} variant: {what}",
                "warning",
                SOURCES[kind],
                detail=f"**{v.label}** ({v.significance}, germline). Implication: {what}.\n\n{action}",
                links=[call.patient_link()],
            )
        )
    return out


def _oncology_cards(call: HookCall, found: Sequence[Variant]) -> list[dict[str, Any]]:
    out = []
    ras = _ras_mutated(found)
    if ras:
        labels = ", ".join(v.label for v in ras)
        unknown = any(_codon(v) is None for v in ras)
        out.append(
            card(
                f"RAS mutated ({', '.join(sorted({v.gene or '' for v in ras}))}): anti-EGFR antibodies not indicated",
                "warning",
                SOURCES["ras"],
                detail=(
                    f"Somatic **{labels}**. In metastatic colorectal cancer a KRAS/NRAS mutation predicts "
                    "no benefit from cetuximab or panitumumab: anti-EGFR antibodies are not indicated."
                    + (
                        " The protein change of a variant is not recorded: confirm it is an activating "
                        "exon 2-4 mutation."
                        if unknown
                        else ""
                    )
                ),
                links=[call.patient_link()],
            )
        )
    braf = [v for v in found if v.gene == "BRAF" and v.somatic and _V600E.search(v.protein_change or "")]
    if braf:
        out.append(
            card(
                "BRAF V600E (somatic): in colorectal cancer consider encorafenib plus cetuximab",
                "info",
                SOURCES["braf"],
                detail=(
                    f"Somatic **{braf[0].label}**. For previously treated BRAF V600E metastatic colorectal cancer, "
                    "encorafenib plus cetuximab improved survival (BEACON CRC). BRAF V600E on its own does not "
                    "rule out anti-EGFR therapy; the RAS status decides that."
                ),
                links=[call.patient_link()],
            )
        )
    return out


def _pgx_card(call: HookCall) -> list[dict[str, Any]]:
    results = pgx_results(call.prefetch.get("pgx"))
    if not results:
        return []
    normal = re.compile(r"^(normal|\*1/\*1|-1639 GG)", re.I)
    lines = []
    flagged = []
    for gene, r in sorted(results.items()):
        score = f", activity score {r.activity_score}" if r.activity_score is not None else ""
        prelim = " (preliminary)" if r.preliminary else ""
        lines.append(f"- **{gene}**: {r.phenotype}{score}{' — ' + r.diplotype if r.diplotype else ''}{prelim}")
        if not normal.match(r.phenotype) and r.phenotype != "Indeterminate":
            flagged.append(f"{gene} {r.phenotype}")
    summary = "Pharmacogenomic results: " + ("; ".join(flagged) if flagged else "no actionable phenotype")
    return [
        card(
            summary,
            "info",
            SOURCES["pgx"],
            detail="\n".join(lines),
            override=False,
            links=[call.patient_link(), link("CPIC guidelines", "https://cpicpgx.org/guidelines/")],
        )
    ]


def cards(call: HookCall) -> list[dict[str, Any]]:
    found = variants(call.prefetch.get("implications"), call.prefetch.get("ras"))
    return [
        *_pathogenic_cards(call, found),
        *_oncology_cards(call, found),
        *_pgx_card(call),
        *rare_candidates.cards(call, found),
    ]


SERVICES = (
    Service(
        id="genomic-findings",
        hook="patient-view",
        title="Actionable genomic findings",
        description=(
            "Pathogenic/likely pathogenic variants (inherited cardiac, hereditary colorectal cancer, rare disease), "
            "somatic RAS status for anti-EGFR therapy (BRAF V600E handled apart), PGx phenotypes, candidate genes "
            "for a patient with HPO phenotypes and variant calls but no diagnosis, and a link to the patient's page "
            "in the BigMed sandbox."
        ),
        prefetch=PREFETCH,
        handler=cards,
        required=("implications",),
    ),
)
