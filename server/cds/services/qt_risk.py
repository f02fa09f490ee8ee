"""``qt-risk`` (order-sign) and ``qt-risk-order-select``: a QT-prolonging drug for a patient with a long-QT variant.

CDS Hooks 2.0 services on order-sign / order-select (GitHub issue 7). The drug list is
``server/knowledge/data/qt-drugs.json``, compiled from openly citable sources (FDA labels and Drug
Safety Communications, the AHA 2020 scientific statement on drug-induced arrhythmias; a citation
per drug; not CredibleMeds). A pathogenic / likely pathogenic germline variant in a long-QT gene
(:data:`LQT_GENES`) and such a drug in the orders gives a warning card citing the drug's source,
with a "remove the order" suggestion. ESC 2022 ventricular arrhythmia guideline: patients with
LQTS should avoid QT-prolonging drugs.
"""

from __future__ import annotations

from typing import Any

from server.cds.model import HookCall, card, link, suggestion
from server.cds.patient import variants
from server.cds.services.orders import medication_concept, medication_requests, order_reference, order_services
from server.knowledge.drugs import load_drugs, load_qt_drugs

__all__ = ["LQT_GENES", "PREFETCH", "SERVICES", "cards"]

LQT_GENES = {
    "KCNQ1": "LQT1",
    "KCNH2": "LQT2",
    "SCN5A": "LQT3",
    "KCNE1": "LQT5",
    "KCNE2": "LQT6",
    "KCNJ2": "LQT7 (Andersen-Tawil)",
    "CACNA1C": "LQT8 (Timothy)",
    "CALM1": "calmodulinopathy",
    "CALM2": "calmodulinopathy",
    "CALM3": "calmodulinopathy",
    "TRDN": "triadin knockout syndrome",
}
_TBD = "http://hl7.org/fhir/uv/genomics-reporting/CodeSystem/tbd-codes-cs"
PREFETCH = {
    "patient": "Patient/{{context.patientId}}",
    "implications": (
        "Observation?patient={{context.patientId}}&code=" + _TBD + "|diagnostic-implication"
        "&_include=Observation:derived-from&_count=500"
    ),
}
SOURCE_URL = "https://doi.org/10.1161/CIR.0000000000000905"


def cards(call: HookCall) -> list[dict[str, Any]]:
    orders = []
    qt = load_qt_drugs()
    index = load_drugs()
    for order in medication_requests(call):
        found = index.recognise(medication_concept(order))
        if found is not None and found.drug.name in qt:
            orders.append((order, qt[found.drug.name], found.how))
    if not orders:
        return []
    lqt = [
        v
        for v in variants(call.prefetch.get("implications"))
        if v.gene in LQT_GENES and v.significance and not v.somatic
    ]
    if not lqt:
        return []
    variant_text = "; ".join(f"{v.label} ({v.significance}, {LQT_GENES[v.gene or '']})" for v in lqt)
    out = []
    for order, drug, how in orders:
        out.append(
            card(
                f"{drug.drug.capitalize()} prolongs the QT interval; patient has a long-QT variant ({lqt[0].gene})",
                "warning",
                {
                    "label": "AHA scientific statement: drug-induced arrhythmias (2020) and drug label",
                    "url": SOURCE_URL,
                },
                detail=(
                    f"**{drug.drug}** ({order_reference(order)}, recognised by {how}) can prolong the QT interval: "
                    f"{drug.citation}.\n\nThe patient carries {variant_text}. Patients with congenital long-QT "
                    "syndrome should avoid QT-prolonging drugs (ESC 2022 ventricular arrhythmia guideline); "
                    "if it is needed, "
                    "monitor the ECG (QTc) and potassium/magnesium."
                ),
                suggestions=[
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
                ],
                selection_behavior="at-most-one",
                links=[call.patient_link(), link("AHA statement on drug-induced arrhythmias", SOURCE_URL)],
            )
        )
    return out


_DESCRIPTION = "Warns when a QT-prolonging drug is {what} for a patient with a pathogenic long-QT gene variant."
SERVICES = order_services(
    "QT risk",
    {"order-sign": "qt-risk", "order-select": "qt-risk-order-select"},
    _DESCRIPTION,
    cards,
    PREFETCH,
    required=("implications",),
)
