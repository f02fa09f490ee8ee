"""genomic-findings: the rare-disease candidate-gene card (server/cds/services/rare_candidates.py).

The record (written through the REST API, on SQLite and PostgreSQL) is this server's, so the hook
calls name ``fhirServer`` = this server:

- p1 (male): Marfan phenotypes; FBN1 stop-gained (het), CFTR missense, TTN missense — no diagnosis;
  mother m1 known through a RelatedPerson (de novo FBN1 in the card's explanation);
- p4: phenotypes but no variant calls; m1: variant calls but no phenotypes.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from typing import Any

import pytest

from server.auth.access import Access
from server.auth.scopes import Grant
from server.cds.services import rare_candidates
from server.cds.services.rare_candidates import _permitted, diagnosis
from server.fhir.operations import rare
from tests.conftest import make_app
from tests.server.cds.cdsutil import auth, bundle, dx_implication, hook_request
from tests.server.fhir.test_rare_operations import MARFAN, phenotype, variant

OWN = "http://testserver/fhir"
FULL = "http://testserver/fhir/Patient/p1/$prioritize-variants"
OMIM = "https://omim.org"


def record() -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = [
        {"resourceType": "Patient", "id": pid, "gender": g} for pid, g in (("p1", "male"), ("m1", "female"),
                                                                          ("f1", "male"), ("p4", "male"))
    ]  # fmt: skip
    out += [phenotype(f"p1-h{i}", "p1", code) for i, code in enumerate([*MARFAN, "HP:0002616"])]
    out += variant("p1-v1", "p1", "FBN1", 48_500_000, "het", "stop_gained")
    out += variant("p1-v2", "p1", "CFTR", 117_500_000, "het", "missense_variant", af=0.0002)
    out += variant("p1-v4", "p1", "TTN", 178_500_000, "het", "missense_variant", af=0.00001)
    out += variant("m1-v2", "m1", "CFTR", 117_500_000, "het", "missense_variant")
    out += variant("f1-v4", "f1", "TTN", 178_500_000, "het", "missense_variant")
    out += [phenotype("p4-h1", "p4", "HP:0002110")]
    out += [
        {"resourceType": "RelatedPerson", "id": "rp-m1", "patient": {"reference": "Patient/p1"}, "gender": "female",
         "relationship": [{"coding": [{"system": "http://terminology.hl7.org/CodeSystem/v3-RoleCode",
                                       "code": "NMTH"}]}]},
        {"resourceType": "FamilyMemberHistory", "id": "fmh-f1", "status": "completed",
         "patient": {"reference": "Patient/p1"},
         "relationship": {"coding": [{"system": "http://terminology.hl7.org/CodeSystem/v3-RoleCode", "code": "FTH"}]},
         "extension": [{"url": "http://hl7.org/fhir/StructureDefinition/familymemberhistory-patient-record",
                        "valueReference": {"reference": "Patient/f1"}}]},
    ]  # fmt: skip
    return out


def build(url: str, **config: Any) -> Any:
    app = make_app(url, audit=False, **config)  # the audit trail is not under test here
    client = app.test_client()
    for resource in record():
        response = client.put(f"/fhir/{resource['resourceType']}/{resource['id']}", json=resource)
        assert response.status_code in (200, 201), response.get_json()
    client.put(  # m1 is p1's mother (links to the RelatedPerson)
        "/fhir/Patient/m1",
        json={"resourceType": "Patient", "id": "m1", "gender": "female",
              "link": [{"other": {"reference": "RelatedPerson/rp-m1"}, "type": "seealso"}]},
    )  # fmt: skip
    return app


@pytest.fixture
def client(database_url: str) -> Iterator[Any]:
    app = build(database_url, cds_rare_budget_ms=120_000)  # wait for the ontology: deterministic cards
    yield app.test_client()
    app.extensions["bigmed"].store.close()


def call(client: Any, patient: str = "p1", **extra: Any) -> list[dict[str, Any]]:
    body = hook_request("patient-view", **extra)
    body["context"]["patientId"] = patient
    path = "/cds-services/genomic-findings"
    response = client.post(path, json=body, headers=auth(path))
    assert response.status_code == 200, response.get_json()
    cards: list[dict[str, Any]] = response.get_json()["cards"]
    for card in cards:
        assert len(card["summary"]) < 140 and card["indicator"] in ("info", "warning", "critical")
    return cards


def candidate_cards(cards: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [c for c in cards if c["source"] == rare_candidates.SOURCE]


def test_candidate_genes_card_links_to_the_full_result(client: Any) -> None:
    (card,) = candidate_cards(call(client, fhirServer=OWN))
    assert card["indicator"] == "info"
    assert card["summary"].startswith("No diagnosis yet; candidate genes for the phenotypes: FBN1")
    assert "1. **FBN1**" in card["detail"] and "Marfan syndrome (OMIM:154700)" in card["detail"]
    assert "de novo" in card["detail"]  # the parents from the record were used
    assert rare.hpo_release() in card["detail"]
    assert {"label": "Full ranking (Patient/$prioritize-variants)", "url": FULL, "type": "absolute"} in card["links"]
    assert {
        "label": "Open the patient in the BigMed sandbox",
        "url": "http://testserver/#/patient/p1",
        "type": "absolute",
    } in card["links"]
    assert "overrideReasons" not in card
    # the link answers the full ranking, with the same first gene
    answer = client.get(FULL.removeprefix("http://testserver")).get_json()
    first = next(p for p in answer["parameter"] if p["name"] == "gene")
    assert {"name": "symbol", "valueString": "FBN1"} in first["part"]
    # discovery announces the conditions prefetch the diagnosis rule reads
    services = client.get("/cds-services", headers=auth("/cds-services")).get_json()["services"]
    found = next(s for s in services if s["id"] == "genomic-findings")
    assert found["prefetch"]["conditions"] == "Condition?patient={{context.patientId}}&_count=500"


def test_no_card_without_this_servers_record_phenotypes_or_variants(client: Any) -> None:
    assert candidate_cards(call(client, prefetch={"implications": None})) == []  # no fhirServer: not our record
    assert candidate_cards(call(client, "p4", fhirServer=OWN)) == []  # phenotypes, no variant calls
    assert candidate_cards(call(client, "m1", fhirServer=OWN)) == []  # variant calls, no phenotypes


def test_no_card_when_diagnosed_but_a_provisional_diagnosis_keeps_it(client: Any) -> None:
    marfan = {
        "resourceType": "Condition",
        "id": "dx",
        "subject": {"reference": "Patient/p1"},
        "code": {"coding": [{"system": OMIM, "code": "154700", "display": "Marfan syndrome"}]},
    }
    assert candidate_cards(call(client, fhirServer=OWN, prefetch={"conditions": bundle(marfan)})) == []
    provisional = {
        **marfan,
        "verificationStatus": {
            "coding": [{"system": "http://terminology.hl7.org/CodeSystem/condition-ver-status", "code": "provisional"}]
        },
    }
    assert len(candidate_cards(call(client, fhirServer=OWN, prefetch={"conditions": bundle(provisional)}))) == 1
    # a diagnosis stored here is read through the prefetch (fetched from this server)
    assert client.put("/fhir/Condition/dx", json=marfan).status_code in (200, 201)
    assert candidate_cards(call(client, fhirServer=OWN)) == []


def test_no_card_when_the_best_candidate_rests_on_a_reported_pathogenic_variant(client: Any) -> None:
    implications = bundle(dx_implication("di-1", "p1-v1"), *variant("p1-v1", "p1", "FBN1", 48_500_000, "het", "x"))
    cards = call(client, fhirServer=OWN, prefetch={"implications": implications})
    assert candidate_cards(cards) == []
    assert any("FBN1" in c["summary"] and c["indicator"] == "warning" for c in cards)  # its own card
    # a reported pathogenic variant in another gene (a carrier finding) does not explain the phenotypes
    carrier = bundle(dx_implication("di-2", "p1-v2"), *variant("p1-v2", "p1", "CFTR", 117_500_000, "het", "x"))
    assert len(candidate_cards(call(client, fhirServer=OWN, prefetch={"implications": carrier}))) == 1


def test_an_hpo_code_the_ontology_rejects_gives_a_card_with_the_reason(client: Any) -> None:
    client.put("/fhir/Observation/p1-bad", json=phenotype("p1-bad", "p1", "HP:9999999"))
    (card,) = candidate_cards(call(client, fhirServer=OWN))
    assert "could not be ranked" in card["summary"]
    assert "Observation/p1-bad" in card["detail"] and "HP:9999999" in card["detail"]


def test_a_slow_ranking_gives_a_running_card_and_the_next_view_the_genes(
    sqlite_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    app = build(sqlite_url, cds_rare_budget_ms=50)
    client = app.test_client()
    release = threading.Event()
    started: list[str] = []

    def slow(ctx: Any, patient_id: str, n: int, *, family: bool = True) -> list[dict[str, Any]]:
        started.append(patient_id)
        assert release.wait(30)
        return [{"gene": "FBN1", "score": 0.9, "explanation": "FBN1: stand-in", "diseases": [],
                 "variants": ["Observation/p1-v1"], "hpoRelease": "test"}]  # fmt: skip

    monkeypatch.setattr(rare, "top_candidates", slow)
    try:
        (card,) = candidate_cards(call(client, fhirServer=OWN))
        assert card["summary"].startswith("Rare-disease candidate genes are being ranked")
        assert "50 ms" in card["detail"]
        assert {"label": "Full ranking (Patient/$prioritize-variants)", "url": FULL, "type": "absolute"} in card[
            "links"
        ]
        # still running: the same answer, and no second job for the same record
        assert candidate_cards(call(client, fhirServer=OWN))[0]["summary"] == card["summary"]
        assert started == ["p1"]
    finally:
        release.set()
    for _ in range(200):  # the job ends in the background; the next view shows its genes
        cards = candidate_cards(call(client, fhirServer=OWN))
        if cards[0]["summary"].startswith("No diagnosis yet"):
            break
        threading.Event().wait(0.05)
    assert cards[0]["summary"] == "No diagnosis yet; candidate genes for the phenotypes: FBN1"
    assert started == ["p1"]  # kept: not ranked again
    # a write to the record makes the kept answer stale: ranked again
    client.put("/fhir/Observation/p1-h9", json=phenotype("p1-h9", "p1", "HP:0001250"))
    call(client, fhirServer=OWN)
    assert started == ["p1", "p1"]
    app.extensions["bigmed"].store.close()


def test_scopes_of_the_fhir_authorization_decide() -> None:
    assert _permitted(None, "p1") == (True, True)
    system = Access("ehr", Grant.of("system/*.rs"))
    assert _permitted(system, "p1") == (True, True)
    assert _permitted(Access("ehr", Grant.of("system/Observation.rs system/Patient.r")), "p1") == (False, False)
    assert _permitted(Access("ehr", Grant.of("system/*.rs"), patient="p1"), "p1") == (True, False)  # no parents
    assert _permitted(Access("ehr", Grant.of("system/*.rs"), patient="p2"), "p1") == (False, False)


def test_diagnosis_rule() -> None:
    def condition(system: str, status: str | None = None) -> dict[str, Any]:
        out: dict[str, Any] = {"resourceType": "Condition", "id": "c", "code": {"coding": [{"system": system,
                                                                                            "code": "1"}]}}  # fmt: skip
        if status:
            out["verificationStatus"] = {"coding": [{"code": status}]}
        return out

    assert diagnosis(bundle(condition("http://www.orpha.net/ORDO/"))) == "Condition/c 1"
    assert diagnosis(bundle(condition("http://purl.obolibrary.org/obo/mondo.owl", "confirmed"))) is not None
    assert diagnosis(condition(OMIM, "differential")) is None
    assert diagnosis(bundle(condition("http://snomed.info/sct"))) is None  # a clinical problem, no gene
    assert diagnosis(bundle(condition("http://human-phenotype-ontology.org"))) is None  # a phenotype
    assert diagnosis(None) is None


def test_warm_up_follows_the_preload_setting(sqlite_url: str, monkeypatch: pytest.MonkeyPatch) -> None:
    loads: list[str] = []
    monkeypatch.setattr(rare, "loaded", lambda: False)
    monkeypatch.setattr(rare, "ontology", lambda: loads.append("load"))
    app = make_app(sqlite_url, hpo_preload="off", audit=False)
    ctx = app.extensions["bigmed"]
    assert rare.warm_up(ctx) is None
    auto = make_app(sqlite_url, hpo_preload="auto", audit=False).extensions["bigmed"]
    thread = rare.warm_up(auto)
    assert thread is not None
    thread.join(30)
    assert loads == []  # auto: no HPO phenotype stored, nothing to load
    for other in [t for t in threading.enumerate() if t.name == "hpo-preload"]:
        other.join(30)  # the apps' own warm-ups (create_app) are done too
    app.test_client().put("/fhir/Observation/h1", json=phenotype("h1", "p1", "HP:0001166"))
    thread = rare.warm_up(auto)
    assert thread is not None
    thread.join(30)
    assert loads == ["load"]
    on = make_app(sqlite_url, hpo_preload="on", audit=False).extensions["bigmed"]
    thread = rare.warm_up(on)
    assert thread is not None
    thread.join(30)
    assert len(loads) >= 2
    for context in (ctx, auto, on):
        context.store.close()
