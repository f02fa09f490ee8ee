"""PGx calling on ingest and on demand (``$call-pgx``, ``python -m server call-pgx``), both backends.

The hand-made ``multi_gene.vcf`` (GRCh38) gives CYP3A5 *3/*3 from a 1/1 call plus 0/0 calls at the
other positions, VKORC1 rs9923231 C/T, an uncertain TPMT call, and no call for the other genes.
"""

from __future__ import annotations

import json
import multiprocessing
from pathlib import Path
from typing import Any

import pytest

from server.cli import main
from server.fhir import crud
from server.fhir.operations import call_pgx as calling
from server.fhir.operations import ingest_vcf as ingest
from tests.conftest import make_app

DATA = Path(__file__).resolve().parents[2] / "data"
MULTI = DATA / "pgx" / "multi_gene.vcf"
CYP3A5_S1S3 = DATA / "pgx" / "CYP3A5_s1s3.vcf"
GRCH37 = DATA / "pgx" / "CYP3A5_grch37.vcf"
GENOTYPE = "http://loinc.org|84413-4"
IMPLICATION = "http://hl7.org/fhir/uv/genomics-reporting/CodeSystem/tbd-codes-cs|therapeutic-implication"


def _ctx(app: Any) -> Any:
    return app.extensions["bigmed"]


def _patient(ctx: Any, id_: str = "p1") -> None:
    crud.update(ctx, "Patient", id_, {"resourceType": "Patient", "id": id_})


def _observations(ctx: Any, code: str, patient: str = "p1") -> list[dict[str, Any]]:
    ids = crud.find_matches(ctx, None, "Observation", f"patient={patient}&code={code}", limit=1000)
    return [json.loads(crud.read(ctx, "Observation", i).content) for i in ids]


def _by_gene(resources: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    return {calling._gene_of(r) or "": r for r in resources}


def _versions(ctx: Any) -> int:
    return int(ctx.store.query("SELECT COUNT(*) FROM history WHERE res_type = 'Observation'")[0][0])


@pytest.fixture
def ctx(database_url: str) -> Any:
    app = make_app(database_url)
    context = _ctx(app)
    _patient(context)
    yield context
    context.store.close()


@pytest.mark.parametrize("workers", [0, 1])
def test_ingest_calls_pgx_in_the_same_transaction_and_reingest_changes_nothing(ctx: Any, workers: int) -> None:
    """In one process, and with a mapping process (the calls then read in a process of their own)."""
    result = ingest.ingest_vcf(ctx, MULTI, "p1", workers=workers)
    assert result.pgx is not None and result.pgx.skipped is None
    assert result.pgx.genes["CYP3A5"] == "final *3/*3 (Poor Metabolizer)"
    assert result.pgx.genes["DPYD"].startswith("no call")
    assert "PGx calls for Patient/p1" in result.summary()
    genotypes = _by_gene(_observations(ctx, GENOTYPE))
    assert set(genotypes) == {"CYP3A5", "TPMT", "VKORC1"}  # genes without data get nothing, never *1/*1
    cyp3a5 = genotypes["CYP3A5"]
    assert cyp3a5["status"] == "final"
    assert cyp3a5["valueCodeableConcept"]["text"] == "CYP3A5 *3/*3"
    assert cyp3a5["method"]["text"].startswith(calling.METHOD_MARK)
    # derivedFrom the variant Observation of rs776746 (chr7:99672916 T>C) written by the same ingestion
    (derived,) = cyp3a5["derivedFrom"]
    variant = json.loads(crud.read(ctx, "Observation", derived["reference"].split("/")[1]).content)
    assert variant["code"]["coding"][0]["code"] == "69548-6"
    assert any(c.get("valueString") == "C" for c in variant["component"])
    assert genotypes["TPMT"]["status"] == "preliminary"
    implications = _observations(ctx, IMPLICATION)
    assert len(implications) == 3
    by_parent = {i["derivedFrom"][0]["reference"]: i for i in implications}
    cyp_ti = by_parent[f"Observation/{cyp3a5['id']}"]
    assert cyp_ti["component"][0]["valueCodeableConcept"]["text"] == "Poor Metabolizer"
    before = _versions(ctx)
    again = ingest.ingest_vcf(ctx, MULTI, "p1", workers=workers)
    assert again.pgx is not None and (again.pgx.created, again.pgx.updated, again.pgx.deleted) == (0, 0, 0)
    assert again.pgx.unchanged == 6
    assert _versions(ctx) == before


def test_pgx_reading_failing_beside_the_mapping_process_writes_nothing(
    ctx: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The process reading the PGx calls failing fails the ingestion: nothing is written, no process is left."""

    def fails(*args: Any, **kwargs: Any) -> Any:
        raise OSError("cannot read the file again")

    monkeypatch.setattr(ingest, "calls_from_file", fails)
    before = _versions(ctx)
    with pytest.raises(OSError, match="cannot read the file again"):
        ingest.ingest_vcf(ctx, MULTI, "p1", workers=1)
    assert _versions(ctx) == before == 0
    assert multiprocessing.active_children() == []


def test_a_new_vcf_replaces_the_calls_of_the_genes_it_covers(ctx: Any) -> None:
    ingest.ingest_vcf(ctx, MULTI, "p1")
    old = _by_gene(_observations(ctx, GENOTYPE))["CYP3A5"]
    result = ingest.ingest_vcf(ctx, CYP3A5_S1S3, "p1")
    assert result.pgx is not None and result.pgx.genes["CYP3A5"].startswith("final *1/*3")
    genotypes = _by_gene(_observations(ctx, GENOTYPE))
    assert set(genotypes) == {"CYP3A5", "TPMT", "VKORC1"}  # TPMT/VKORC1 not in the new file: kept
    assert genotypes["CYP3A5"]["valueCodeableConcept"]["text"] == "CYP3A5 *1/*3"
    assert ctx.store.read("Observation", old["id"]).deleted
    assert len(_observations(ctx, IMPLICATION)) == 3


def test_grch37_and_somatic_files_are_ingested_without_pgx_calls(ctx: Any) -> None:
    result = ingest.ingest_vcf(ctx, GRCH37, "p1", build="GRCh37")
    assert result.pgx is not None and "GRCh38" in (result.pgx.skipped or "")
    result = ingest.ingest_vcf(ctx, MULTI, "p1", source_class="somatic")
    assert result.pgx is not None and "germline" in (result.pgx.skipped or "")
    assert _observations(ctx, GENOTYPE) == []


def test_call_on_demand_from_stored_variants(ctx: Any) -> None:
    ingest.ingest_vcf(ctx, MULTI, "p1")
    for resource in _observations(ctx, GENOTYPE) + _observations(ctx, IMPLICATION):
        crud.delete(ctx, "Observation", resource["id"])  # as if ingested before PGx calling existed
    result = calling.call_pgx(ctx, "p1")
    # the store has only rs776746 C/C: the other CYP3A5 positions are missing, so the call is uncertain
    assert result.genes["CYP3A5"].startswith("preliminary *3/*3")
    cyp = _by_gene(_observations(ctx, GENOTYPE))["CYP3A5"]
    assert "missing" in " ".join(n["text"] for n in cyp["note"]).lower() or cyp["status"] == "preliminary"
    assert len(cyp["derivedFrom"]) == 1
    before = _versions(ctx)
    assert calling.call_pgx(ctx, "p1").created == 0  # the same again: nothing written
    assert _versions(ctx) == before
    sure = calling.call_pgx(ctx, "p1", assume_reference=True)
    assert sure.genes["CYP3A5"] == "final *3/*3 (Poor Metabolizer)"
    assert sure.deleted >= 2
    genotypes = _observations(ctx, GENOTYPE)
    assert [g["status"] for g in genotypes if calling._gene_of(g) == "CYP3A5"] == ["final"]  # replaced, no duplicate


def test_on_demand_keeps_a_vcf_call_the_store_cannot_improve(ctx: Any) -> None:
    ingest.ingest_vcf(ctx, MULTI, "p1")
    before = _versions(ctx)
    result = calling.call_pgx(ctx, "p1")
    assert result.genes["CYP3A5"].startswith("kept")
    assert _versions(ctx) == before


def test_call_pgx_errors(ctx: Any) -> None:
    from server.errors import NotFound

    with pytest.raises(NotFound):
        calling.call_pgx(ctx, "nobody")
    assert calling.call_pgx(ctx, "p1").skipped  # nothing stored: said, nothing written


def test_http_operation_and_cli(database_url: str, monkeypatch: pytest.MonkeyPatch, capsys: Any) -> None:
    app = make_app(database_url)
    ctx = _ctx(app)
    _patient(ctx)
    ingest.ingest_vcf(ctx, MULTI, "p1")
    client = app.test_client()
    resp = client.post("/fhir/Patient/p1/$call-pgx?assumeReference=true")
    assert resp.status_code == 200, resp.json
    body = resp.json
    assert body["resourceType"] == "Parameters"
    names = [p["name"] for p in body["parameter"]]
    assert names.count("observation") == 18  # assumeReference: every gene is called (*1/*1 where no variant)
    assert client.post("/fhir/Patient/p1/$call-pgx?assumeReference=maybe").status_code == 400
    resp = client.post(
        "/fhir/Patient/p1/$call-pgx",
        json={"resourceType": "Parameters", "parameter": [{"name": "assumeReference", "valueBoolean": False}]},
    )
    assert resp.status_code == 200
    assert client.post("/fhir/Patient/nobody/$call-pgx").status_code == 404
    metadata = client.get("/fhir/metadata").json
    patient = next(r for r in metadata["rest"][0]["resource"] if r["type"] == "Patient")
    assert "call-pgx" in [o["name"] for o in patient["operation"]]
    ctx.store.close()
    monkeypatch.setenv("DATABASE_URL", database_url)
    assert main(["call-pgx", "--patient", "p1", "--quiet"]) == 0
    assert "PGx calls for Patient/p1" in capsys.readouterr().out
    assert main(["call-pgx", "--patient", "p1", "--patient", "nobody", "--quiet"]) == 1
