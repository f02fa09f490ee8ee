"""CDS Hooks services over HTTP: discovery, pgx-order-select/-sign, genomic-findings, qt-risk, prefetch, feedback.

Requests are signed with the public sandbox key (trusted with BIGMED_AUTH=open, the default).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from server.fhir import crud
from server.knowledge.drugs import load_drugs
from tests.conftest import SHARED, make_app
from tests.server.cds.cdsutil import (
    auth,
    bundle,
    dx_implication,
    hook_request,
    implication,
    med_order,
    variant,
)

CLOPIDOGREL_SCD = ("309362", "Clopidogrel 75 MG Oral Tablet")
ACS = {
    "resourceType": "Condition",
    "id": "c1",
    "subject": {"reference": "Patient/p1"},
    "code": {
        "coding": [{"system": "http://snomed.info/sct", "code": "394659003", "display": "Acute coronary syndrome"}]
    },
}


@pytest.fixture
def app(database_url: str) -> Any:
    application = make_app(database_url)
    ctx = application.extensions["bigmed"]
    crud.update(ctx, "Patient", "p1", {"resourceType": "Patient", "id": "p1"})
    yield application
    ctx.store.close()


@pytest.fixture
def client(app: Any) -> Any:
    return app.test_client()


def post(client: Any, service: str, body: dict[str, Any]) -> Any:
    path = f"/cds-services/{service}"
    return client.post(path, json=body, headers=auth(path))


def cards_of(resp: Any) -> list[dict[str, Any]]:
    assert resp.status_code == 200, resp.get_data(as_text=True)
    cards: list[dict[str, Any]] = resp.json["cards"]
    for card in cards:
        assert len(card["summary"]) < 140
        assert card["indicator"] in ("info", "warning", "critical")
        assert card["source"]["label"]
    return cards


def test_discovery_lists_every_service_with_prefetch(client: Any) -> None:
    resp = client.get("/cds-services", headers=auth("/cds-services"))
    assert resp.status_code == 200
    services = {s["id"]: s for s in resp.json["services"]}
    assert set(services) == {
        "pgx-order-select",
        "pgx-order-sign",
        "genomic-findings",
        "qt-risk",
        "qt-risk-order-select",
    }
    assert services["pgx-order-sign"]["hook"] == "order-sign"
    assert services["genomic-findings"]["hook"] == "patient-view"
    assert services["pgx-order-sign"]["prefetch"]["patient"] == "Patient/{{context.patientId}}"


def test_clopidogrel_poor_metabolizer_with_acs_is_critical_with_replacements(client: Any) -> None:
    order = med_order("mr1", *CLOPIDOGREL_SCD)
    prefetch = {
        "patient": {"resourceType": "Patient", "id": "p1"},
        "pgx": bundle(implication("CYP2C19", "Poor Metabolizer")),
        "conditions": bundle(ACS),
        "procedures": None,
    }
    (card,) = cards_of(post(client, "pgx-order-sign", hook_request("order-sign", [order], prefetch)))
    assert card["indicator"] == "critical"
    assert "clopidogrel" in card["summary"].lower() and "Poor Metabolizer" in card["summary"]
    assert card["source"]["url"] == "https://cpicpgx.org/guidelines/guideline-for-clopidogrel-and-cyp2c19/"
    assert "CVI ACS PCI" in card["detail"] and "Acute coronary syndrome" in card["detail"]
    assert "prasugrel or ticagrelor" in card["detail"]
    assert "RxNorm clinical drug 309362" in card["detail"]
    labels = [s["label"] for s in card["suggestions"]]
    assert labels[:2] == ["Replace clopidogrel by prasugrel", "Replace clopidogrel by ticagrelor"]
    assert card["selectionBehavior"] == "at-most-one"
    first = card["suggestions"][0]["actions"]
    assert first[0] == {
        "type": "delete",
        "description": "Remove the MedicationRequest/mr1 order",
        "resourceId": "MedicationRequest/mr1",
    }
    assert (
        first[1]["type"] == "create"
        and first[1]["resource"]["medicationCodeableConcept"]["coding"][0]["code"] == "613391"
    )
    assert card["overrideReasons"]


def test_clopidogrel_indication_assumed_when_no_acs_and_intermediate_without_acs_gives_no_card(client: Any) -> None:
    order = med_order("mr1", "32968", "clopidogrel")  # the ingredient code
    prefetch = {
        "pgx": bundle(implication("CYP2C19", "Poor Metabolizer")),
        "conditions": bundle(),
        "procedures": bundle(),
    }
    (card,) = cards_of(post(client, "pgx-order-sign", hook_request("order-sign", [order], prefetch)))
    assert "assumed a cardiovascular indication without ACS or PCI" in card["detail"]
    assert "CVI non-ACS non-PCI" in card["detail"]
    prefetch["pgx"] = bundle(implication("CYP2C19", "Intermediate Metabolizer"))
    assert (
        cards_of(post(client, "pgx-order-sign", hook_request("order-sign", [order], prefetch))) == []
    )  # CPIC: no recommendation
    prefetch["conditions"] = bundle(ACS)
    (card,) = cards_of(post(client, "pgx-order-sign", hook_request("order-sign", [order], prefetch)))
    assert card["indicator"] == "critical"


def test_order_select_acts_on_the_selections_only(client: Any) -> None:
    selected = med_order("sel", "55555", text="Paracetamol 500 mg")
    other = med_order("other", *CLOPIDOGREL_SCD)
    prefetch = {"pgx": bundle(implication("CYP2C19", "Poor Metabolizer")), "conditions": None, "procedures": None}
    body = hook_request("order-select", [selected, other], prefetch)
    assert cards_of(post(client, "pgx-order-select", body)) == []
    body["context"]["selections"] = ["MedicationRequest/other"]
    assert len(cards_of(post(client, "pgx-order-select", body))) == 1


def test_no_genotype_suggests_the_test(client: Any) -> None:
    order = med_order("mr1", text="Plavix 75 mg")  # brand name, text only
    prefetch = {"pgx": None, "conditions": None, "procedures": None}  # null: the client found no data
    (card,) = cards_of(post(client, "pgx-order-sign", hook_request("order-sign", [order], prefetch)))
    assert card["indicator"] == "info"
    assert "CYP2C19" in card["summary"] and "testing" in card["summary"]
    action = card["suggestions"][0]["actions"][0]
    assert action["type"] == "create" and action["resource"]["resourceType"] == "ServiceRequest"
    assert action["resource"]["subject"] == {"reference": "Patient/p1"}


@pytest.mark.parametrize(
    ("score", "indicator", "dose"), [(1.5, "warning", 500.0), (1.0, "warning", 500.0), (0.0, "critical", None)]
)
def test_dpyd_activity_score(client: Any, score: float, indicator: str, dose: float | None) -> None:
    order = med_order("cap", "194000", "capecitabine", dose=1000)
    prefetch = {
        "pgx": bundle(implication("DPYD", "Intermediate Metabolizer", score)),
        "conditions": None,
        "procedures": None,
    }
    (card,) = cards_of(post(client, "pgx-order-sign", hook_request("order-sign", [order], prefetch)))
    assert card["indicator"] == indicator
    assert f"activity score {score}" in card["detail"]
    actions = [a for s in card["suggestions"] for a in s["actions"]]
    if dose is not None:
        update = next(a for a in actions if a["type"] == "update")
        assert update["resource"]["dosageInstruction"][0]["doseAndRate"][0]["doseQuantity"]["value"] == dose
    else:
        assert any(a["type"] == "delete" for a in actions)
    prefetch["pgx"] = bundle(implication("DPYD", "Normal Metabolizer", 2.0))
    assert cards_of(post(client, "pgx-order-sign", hook_request("order-sign", [order], prefetch))) == []


def test_thiopurine_with_tpmt_only_and_simvastatin_and_warfarin(client: Any) -> None:
    orders = [
        med_order("aza", "1256", "azathioprine"),
        med_order("simva", "312961", "Simvastatin 20 MG Oral Tablet"),
        med_order("warf", "B01AA03", "warfarin", system="http://www.whocc.no/atc"),
    ]
    prefetch = {
        "pgx": bundle(
            implication("TPMT", "Poor Metabolizer"),
            implication("SLCO1B1", "Poor Function"),
            implication("VKORC1", "-1639 AG"),
        ),
        "conditions": None,
        "procedures": None,
    }
    cards = cards_of(post(client, "pgx-order-sign", hook_request("order-sign", orders, prefetch)))
    by = {c["source"]["url"]: c for c in cards}
    thio = by["https://cpicpgx.org/guidelines/guideline-for-thiopurines-and-tpmt/"]
    assert "TPMT Poor Metabolizer" in thio["summary"] and "NUDT15: no result" in thio["detail"]
    statin = by["https://cpicpgx.org/guidelines/cpic-guideline-for-statins/"]
    assert "alternative statin" in statin["detail"] and statin["indicator"] == "warning"
    warfarin = by["https://cpicpgx.org/guidelines/guideline-for-warfarin-and-cyp2c9-and-vkorc1/"]
    assert warfarin["indicator"] == "info" and "does not compute a dose" in warfarin["detail"]
    assert "VKORC1: -1639 AG" in warfarin["detail"]
    assert "suggestions" not in warfarin or all(
        a["type"] != "create" for s in warfarin["suggestions"] for a in s["actions"]
    )


def test_prefetch_from_our_own_store_and_412(client: Any, app: Any) -> None:
    ctx = app.extensions["bigmed"]
    crud.update(ctx, "Observation", "ti-cyp2c19", implication("CYP2C19", "Poor Metabolizer"))
    crud.update(ctx, "Condition", "c1", ACS)
    order = med_order("mr1", *CLOPIDOGREL_SCD)
    body = hook_request("order-sign", [order], fhirServer="http://testserver/fhir")
    (card,) = cards_of(post(client, "pgx-order-sign", body))
    assert card["indicator"] == "critical" and "Acute coronary syndrome" in card["detail"]
    # an OperationOutcome value means the client failed: the service fetches it itself
    body["prefetch"] = {"pgx": {"resourceType": "OperationOutcome", "issue": []}}
    assert len(cards_of(post(client, "pgx-order-sign", body))) == 1
    # nothing sent and nowhere to fetch from: 412 OperationOutcome
    resp = post(client, "pgx-order-sign", hook_request("order-sign", [order]))
    assert resp.status_code == 412
    assert resp.json["resourceType"] == "OperationOutcome" and "'pgx'" in resp.json["issue"][0]["diagnostics"]
    # a FHIR server that cannot be reached: 412 naming the failure
    resp = post(client, "pgx-order-sign", hook_request("order-sign", [order], fhirServer="http://127.0.0.1:9/fhir"))
    assert resp.status_code == 412 and "failed" in resp.json["issue"][0]["diagnostics"]


def test_bad_requests_are_400_operation_outcomes(client: Any) -> None:
    body = hook_request("patient-view", prefetch={"implications": None})
    assert post(client, "pgx-order-sign", body).status_code == 400  # wrong hook
    del body["hookInstance"]
    resp = post(client, "genomic-findings", body)
    assert resp.status_code == 400 and resp.json["resourceType"] == "OperationOutcome"
    assert post(client, "no-such-service", hook_request("patient-view")).status_code == 404


def test_genomic_findings_ras_braf_cardiac_and_link(client: Any) -> None:
    kras = variant("v-kras", "KRAS", somatic=True, protein="p.Gly12Asp")
    braf = variant("v-braf", "BRAF", somatic=True, protein="p.Val600Glu")
    kcnh2 = variant("v-kcnh2", "KCNH2")
    prefetch = {
        "patient": None,
        "implications": bundle(dx_implication("dx1", "v-kcnh2"), kcnh2),
        "ras": bundle(kras, braf),
        "pgx": bundle(implication("CYP2C19", "Poor Metabolizer")),
    }
    cards = cards_of(post(client, "genomic-findings", hook_request("patient-view", prefetch=prefetch)))
    summaries = [c["summary"] for c in cards]
    assert any("KCNH2" in s and "long QT" in s for s in summaries)
    assert any("anti-EGFR antibodies not indicated" in s for s in summaries)
    assert any("BRAF V600E" in s for s in summaries)
    assert any("CYP2C19 Poor Metabolizer" in s for s in summaries)
    for card in cards:
        assert {
            "label": "Open the patient in the BigMed sandbox",
            "url": "http://testserver/#/patient/p1",
            "type": "absolute",
        } in card["links"]
    # BRAF alone must not say "no anti-EGFR"
    prefetch["ras"] = bundle(braf)
    summaries = [
        c["summary"]
        for c in cards_of(post(client, "genomic-findings", hook_request("patient-view", prefetch=prefetch)))
    ]
    assert not any("anti-EGFR" in s for s in summaries)
    assert any("BRAF V600E" in s for s in summaries)
    # a KRAS variant outside the hotspot codons is no RAS mutation for this purpose
    prefetch["ras"] = bundle(variant("v-k2", "KRAS", somatic=True, protein="p.Leu19Phe"))
    summaries = [
        c["summary"]
        for c in cards_of(post(client, "genomic-findings", hook_request("patient-view", prefetch=prefetch)))
    ]
    assert not any("anti-EGFR" in s for s in summaries)


def test_qt_risk(client: Any) -> None:
    order = med_order("amio", "703", "amiodarone")
    prefetch = {"implications": bundle(dx_implication("dx1", "v1", "LA26332-9"), variant("v1", "KCNQ1"))}
    (card,) = cards_of(post(client, "qt-risk", hook_request("order-sign", [order], prefetch)))
    assert card["indicator"] == "warning" and "Amiodarone" in card["summary"] and "KCNQ1" in card["summary"]
    assert "Likely pathogenic" in card["detail"] and "Pacerone" in card["detail"]  # the drug's own citation
    assert card["suggestions"][0]["actions"][0]["resourceId"] == "MedicationRequest/amio"
    select = hook_request("order-select", [order], prefetch)
    assert len(cards_of(post(client, "qt-risk-order-select", select))) == 1
    prefetch = {"implications": bundle(variant("v1", "KCNQ1"))}  # no pathogenic implication
    assert cards_of(post(client, "qt-risk", hook_request("order-sign", [order], prefetch))) == []


def test_feedback_is_stored_and_queryable(client: Any) -> None:
    spec = SHARED / "cds-hooks" / "spec-2.0.1"
    if not spec.exists():
        pytest.skip(f"shared test data not found: {spec}")
    path = "/cds-services/pgx-order-sign/feedback"
    for name in ("example-18.json", "example-19.json", "example-20.json"):
        body = json.loads(Path(spec / name).read_text())
        resp = client.post(path, json=body, headers=auth(path))
        assert resp.status_code == 200, resp.get_data(as_text=True)
        assert resp.json["stored"] == 1
    every = client.get(path, headers=auth(path)).json["feedback"]
    assert len(every) == 3
    assert every[0]["outcomeTimestamp"] == "2021-12-11T10:05:31Z"  # newest first
    one = client.get(path + "?card=9368d37b-283f-44a0-93ea-547cebab93ed", headers=auth(path)).json["feedback"]
    assert len(one) == 1 and one[0]["overrideReason"]["userComment"] == "A comment entered by the clinician."
    other = "/cds-services/qt-risk/feedback"
    assert client.get(other, headers=auth(other)).json["feedback"] == []
    bad = {"feedback": [{"card": "x", "outcome": "maybe", "outcomeTimestamp": "2020-01-01T00:00:00Z"}]}
    resp = client.post(path, json=bad, headers=auth(path))
    assert resp.status_code == 400 and resp.json["resourceType"] == "OperationOutcome"
    assert len(client.get(path, headers=auth(path)).json["feedback"]) == 3  # nothing stored


def test_drug_recognition_order() -> None:
    index = load_drugs()
    found = index.recognise({"coding": [{"system": "http://www.nlm.nih.gov/research/umls/rxnorm", "code": "309362"}]})
    assert found is not None and found.drug.name == "clopidogrel" and found.how == "RxNorm clinical drug 309362"
    found = index.recognise({"coding": [{"system": "http://www.whocc.no/atc", "code": "L01BC06"}]})
    assert found is not None and found.drug.name == "capecitabine"
    found = index.recognise({"text": "XELODA 500mg tablets"})
    assert found is not None and found.drug.name == "capecitabine"
    assert index.recognise({"text": "Paracetamol"}) is None
    assert index.recognise({"text": "clopidogrelx"}) is None  # whole words only
