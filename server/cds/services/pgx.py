"""``pgx-order-select`` and ``pgx-order-sign``: CPIC pharmacogenomic recommendations for medication orders.

CDS Hooks 2.0 services (https://cds-hooks.hl7.org/2.0/) on the order-select and order-sign hooks
(GitHub issue 7). For each MedicationRequest of the call (:mod:`.orders`), the drug is recognised
(:class:`server.knowledge.drugs.DrugIndex`: RxNorm ingredient, SCD/SBD, ATC, text) and, when CPIC
has a guideline for it with genes this server calls, the patient's results
(:func:`server.cds.patient.pgx_results`) are looked up in the CPIC recommendations
(:func:`server.knowledge.pgx.recommendations_for`, CPIC database v1.20, https://cpicpgx.org/guidelines/):

- **clopidogrel** / CYP2C19: the population (ACS/PCI, neurovascular, other cardiovascular) comes
  from the patient's Conditions and Procedures (:func:`server.cds.patient.indication`) and the
  card says which it assumed; "avoid" -> critical, with suggestions to replace the order by
  prasugrel or ticagrelor (delete + create, ``selectionBehavior`` at-most-one);
- **capecitabine / fluorouracil** / DPYD activity score < 2: avoid (0, 0.5) -> critical with a
  "remove the order" suggestion; 1 and 1.5 -> "reduce the starting dose by 50%" with an update
  suggestion that halves the order's dose quantity (or records the reduction when it has none);
- **azathioprine / mercaptopurine / thioguanine** / TPMT + NUDT15 (a gene without result counts as
  CPIC's "No Result");
- **simvastatin** / SLCO1B1 (and every other CPIC drug whose genes this server calls, the same way);
- **warfarin**: CPIC gives a dosing algorithm, not table rows: an info card links to it with the
  CYP2C9 / VKORC1 results; no dose is computed.

The indicator follows the recommendation: "avoid" critical, other Strong/Moderate changes warning,
Optional info; a recommendation of standard dosing gives no card. A drug with a CPIC guideline and
no result for its genes gives an info card suggesting the test (a ServiceRequest ``create`` action).
A preliminary (uncertain) result is said in the card.
"""

from __future__ import annotations

import copy
import re
from collections.abc import Mapping, Sequence
from decimal import Decimal
from typing import Any

from server.cds.model import HookCall, card, link, suggestion
from server.cds.patient import PgxResult, indication, pgx_results
from server.cds.services.orders import medication_concept, medication_requests, order_reference, order_services
from server.knowledge.drugs import RXNORM, Recognised, load_drugs
from server.knowledge.pgx import CpicDrug, Recommendation, load_recommendations, load_tables, recommendations_for

__all__ = ["PREFETCH", "SERVICES", "cards"]

_TI = "http://hl7.org/fhir/uv/genomics-reporting/CodeSystem/tbd-codes-cs|therapeutic-implication"
PREFETCH = {
    "patient": "Patient/{{context.patientId}}",
    "pgx": "Observation?patient={{context.patientId}}&code=" + _TI + ",http://loinc.org|84413-4&_count=500",
    "conditions": "Condition?patient={{context.patientId}}&_count=500",
    "procedures": "Procedure?patient={{context.patientId}}&_count=500",
}
THIOPURINES = ("azathioprine", "mercaptopurine", "thioguanine")
FLUOROPYRIMIDINES = ("capecitabine", "fluorouracil")
P2Y12_ALTERNATIVES = ("prasugrel", "ticagrelor")
WARFARIN_LINKS = (
    (
        "CPIC warfarin guideline and dosing algorithm",
        "https://cpicpgx.org/guidelines/guideline-for-warfarin-and-cyp2c9-and-vkorc1/",
    ),
    ("Genotype-guided warfarin dosing calculator (warfarindosing.org)", "http://www.warfarindosing.org/"),
)
_NORMAL = re.compile(
    r"no indication to change|use at standard dose|label-recommended|desired starting dose|"
    r"start with normal starting dose|recommended starting dose|no recommendation",
    re.I,
)


def _genes_called() -> set[str]:
    return set(load_tables().definitions)


def _indicator(rec: Recommendation) -> str | None:
    text = rec.text or ""
    if rec.strength.lower().startswith("no recommendation") or (_NORMAL.search(text) and "avoid" not in text.lower()):
        return None
    if "avoid" in text.lower():
        return "critical"
    return "info" if rec.strength.lower().startswith("optional") else "warning"


def _source(drug: CpicDrug) -> dict[str, Any]:
    version = f" (CPIC database {load_recommendations().version})"
    return {"label": f"CPIC guideline: {drug.guideline}"[:120] + version, "url": drug.url}


def _results_text(genes: Sequence[str], results: Mapping[str, PgxResult]) -> str:
    parts = []
    for gene in genes:
        r = results.get(gene)
        if r is None:
            parts.append(f"{gene}: no result")
            continue
        score = f", activity score {r.activity_score}" if r.activity_score is not None else ""
        diplo = f" ({r.diplotype})" if r.diplotype else ""
        prelim = " — PRELIMINARY (uncertain call)" if r.preliminary else ""
        parts.append(f"{gene}: {r.phenotype}{score}{diplo}{prelim}")
    return "; ".join(parts)


def _test_card(call: HookCall, drug: CpicDrug, genes: Sequence[str], order: Mapping[str, Any]) -> dict[str, Any]:
    names = ", ".join(genes)
    request = {
        "resourceType": "ServiceRequest",
        "status": "draft",
        "intent": "proposal",
        "category": [{"text": "Pharmacogenomic test"}],
        "code": {"text": f"Pharmacogenomic genotyping: {names}"},
        "subject": {"reference": f"Patient/{call.patient_id}"},
        "reasonCode": [{"text": f"{drug.drug} ordered ({order_reference(order)}); CPIC guideline: {drug.url}"}],
    }
    return card(
        f"No {names} result on file for {drug.drug}: consider pharmacogenomic testing",
        "info",
        _source(drug),
        detail=(
            f"CPIC has a guideline for **{drug.drug}** and {names}, but the patient has no {names} result in the "
            f"record. A genotype can change the choice or dose of {drug.drug}."
        ),
        suggestions=[
            suggestion(
                f"Order {names} genotyping",
                [{"type": "create", "description": f"Order {names} genotyping", "resource": request}],
            )
        ],
        links=[call.patient_link()],
    )


def _replace_actions(call: HookCall, order: Mapping[str, Any], alternative: str) -> list[dict[str, Any]]:
    drug = load_drugs().drugs[alternative]
    new = {
        "resourceType": "MedicationRequest",
        "status": "draft",
        "intent": order.get("intent") or "order",
        "medicationCodeableConcept": {
            "coding": [{"system": RXNORM, "code": drug.rxnorm, "display": alternative}],
            "text": f"{alternative} (standard dose)",
        },
        "subject": order.get("subject") or {"reference": f"Patient/{call.patient_id}"},
    }
    if order.get("encounter"):
        new["encounter"] = order["encounter"]
    return [
        {
            "type": "delete",
            "description": f"Remove the {order_reference(order)} order",
            "resourceId": order_reference(order),
        },
        {"type": "create", "description": f"Order {alternative} at standard dose", "resource": new},
    ]


def _dose_update(order: Mapping[str, Any], fraction: float, note: str) -> dict[str, Any]:
    updated = copy.deepcopy(dict(order))
    changed = False
    for dosage in updated.get("dosageInstruction") or ():
        for dose_rate in dosage.get("doseAndRate") or ():
            quantity = dose_rate.get("doseQuantity")
            value = quantity.get("value") if isinstance(quantity, dict) else None
            if isinstance(value, int | float | Decimal) and not isinstance(value, bool):
                quantity["value"] = (
                    float(value) * fraction if not isinstance(value, Decimal) else value * Decimal(str(fraction))
                )
                changed = True
    updated.setdefault("note", []).append({"text": note})
    return {
        "type": "update",
        "description": ("Halve the dose quantity of the order" if changed else "Record the dose reduction on the order")
        + f" ({note})",
        "resource": updated,
    }


def _recommendation_card(
    call: HookCall,
    drug: CpicDrug,
    rec: Recommendation,
    genes: Sequence[str],
    results: Mapping[str, PgxResult],
    order: Mapping[str, Any],
    how: str,
    assumed: str | None = None,
) -> dict[str, Any] | None:
    indicator = _indicator(rec)
    if indicator is None:
        return None
    phen = ", ".join(f"{g} {results[g].phenotype if g in results else 'no result'}" for g in genes)
    verb = "avoid" if indicator == "critical" else "adjust"
    population = f", {rec.population}" if rec.population and rec.population != "general" else ""
    summary = f"{drug.drug.capitalize()}: {verb} — {phen} (CPIC)"
    implications = " ".join(f"{g}: {t}" for g, t in rec.implications.items())
    lines = [
        f"**Patient**: {_results_text(genes, results)}.",
        f"**Implication**: {implications}" if implications else "",
        f"**CPIC recommendation** ({rec.strength}{population}): {rec.text}",
        f"**Population assumed**: {assumed}." if assumed else "",
        f"_{rec.comments}_" if rec.comments else "",
        f"Order {order_reference(order)}; drug recognised by {how}.",
    ]
    if any(results[g].preliminary for g in genes if g in results):
        lines.append("**Note**: a result used here is preliminary (uncertain star-allele call); confirm before acting.")
    suggestions: list[dict[str, Any]] = []
    text = (rec.text or "").lower()
    if drug.drug == "clopidogrel" and ("prasugrel" in text or "alternative p2y12" in text):
        suggestions = [
            suggestion(f"Replace clopidogrel by {alt}", _replace_actions(call, order, alt), recommended=i == 0)
            for i, alt in enumerate(P2Y12_ALTERNATIVES)
        ]
    elif drug.drug in FLUOROPYRIMIDINES and "reduce starting dose by 50%" in text:
        suggestions = [
            suggestion(
                "Reduce the starting dose by 50%",
                [_dose_update(order, 0.5, "CPIC DPYD: reduce starting dose by 50%")],
                recommended=True,
            )
        ]
    elif drug.drug in THIOPURINES and "reduced starting doses" in text:
        suggestions = [
            suggestion(
                "Reduce the starting dose (CPIC: 30-80% of normal)",
                [_dose_update(order, 1.0, "CPIC TPMT/NUDT15: reduced starting dose, 30-80% of normal")],
            )
        ]
    if indicator == "critical" or "alternative" in text:
        suggestions.append(
            suggestion(
                f"Remove the {drug.drug} order",
                [
                    {
                        "type": "delete",
                        "description": f"Remove {order_reference(order)}",
                        "resourceId": order_reference(order),
                    }
                ],
            )
        )
    return card(
        summary,
        indicator,
        _source(drug),
        detail="\n\n".join(x for x in lines if x),
        suggestions=suggestions,
        selection_behavior="at-most-one",
        links=[link("CPIC guideline", drug.url), call.patient_link()],
    )


def _warfarin_card(
    call: HookCall, drug: CpicDrug, results: Mapping[str, PgxResult], order: Mapping[str, Any]
) -> dict[str, Any]:
    genes = [g for g in ("CYP2C9", "VKORC1") if g in results]
    if not genes:
        return _test_card(call, drug, ["CYP2C9", "VKORC1"], order)
    return card(
        "Warfarin: use a genotype-guided dosing algorithm (CYP2C9/VKORC1 on file)",
        "info",
        _source(drug),
        detail=(
            f"**Patient**: {_results_text(['CYP2C9', 'VKORC1'], results)}.\n\n"
            "CPIC recommends calculating the warfarin dose with a validated pharmacogenetic algorithm "
            "(CYP2C9, VKORC1 and, where known, CYP4F2 and clinical factors). This service does not compute a dose."
        ),
        links=[*(link(label, url) for label, url in WARFARIN_LINKS), call.patient_link()],
    )


def _order_cards(
    call: HookCall, order: Mapping[str, Any], found: Recognised, results: Mapping[str, PgxResult]
) -> list[dict[str, Any]]:
    drug = load_recommendations().drug(found.drug.name)
    if drug is None:
        return []
    if drug.drug == "warfarin":
        return [_warfarin_card(call, drug, results, order)]
    genes = [g for g in drug.genes if g in _genes_called()]
    if len(genes) != len(drug.genes):
        return []  # a gene this server does not call (CYP2D6, HLA-B …): no recommendation can match
    if drug.drug in THIOPURINES:
        if not any(g in results for g in genes):
            return [_test_card(call, drug, genes, order)]
        keys = {g: results[g].key if g in results else "No Result" for g in genes}
    else:
        missing = [g for g in genes if g not in results]
        if missing:
            return [_test_card(call, drug, missing, order)]
        keys = {g: results[g].key for g in genes}
    recs = recommendations_for(drug.drug, keys)
    assumed = None
    if drug.drug == "clopidogrel":
        found_indication = indication([call.prefetch.get("conditions"), call.prefetch.get("procedures")])
        recs = [r for r in recs if r.population == found_indication.population]
        assumed = f"{found_indication.population} — {found_indication.evidence}"
    if not recs:
        return []
    out = _recommendation_card(call, drug, recs[0], genes, results, order, found.how, assumed)
    return [out] if out else []


def cards(call: HookCall) -> list[dict[str, Any]]:
    results = pgx_results(call.prefetch.get("pgx"))
    index = load_drugs()
    out: list[dict[str, Any]] = []
    for order in medication_requests(call):
        found = index.recognise(medication_concept(order))
        if found is not None:
            out.extend(_order_cards(call, order, found, results))
    return out


_DESCRIPTION = (
    "CPIC pharmacogenomic recommendations for the medications being {what}: clopidogrel/CYP2C19 (by indication), "
    "fluoropyrimidines/DPYD, thiopurines/TPMT+NUDT15, simvastatin/SLCO1B1 and the other CPIC drugs of the genes "
    "this server calls; warfarin links to the CPIC dosing algorithm; no result on file suggests the test."
)
SERVICES = order_services(
    "Pharmacogenomics",
    {"order-select": "pgx-order-select", "order-sign": "pgx-order-sign"},
    _DESCRIPTION,
    cards,
    PREFETCH,
    required=("pgx",),
)
