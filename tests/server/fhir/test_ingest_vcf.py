"""VCF ingestion (``python -m server ingest-vcf`` and ``POST /fhir/Patient/{id}/$ingest-vcf``) on both backends.

Counts against the mapper's own report, idempotent re-ingestion (no new versions), updates and
deletions when the mapping changes, all-or-nothing on bad input (file and line in the error),
the lean index (search by ``gene``/``chromosome``, the fast rows equal the registry's), the
range index kept in step with REST writes, and the HTTP operation (sync, async, limits).
"""

from __future__ import annotations

import gzip
import json
import multiprocessing
import os
import shutil
import time
import uuid
from collections import Counter
from pathlib import Path
from typing import Any

import pytest

from mappers.vcf import NAMESPACE, map_vcf
from server import jsonio
from server.cli import main
from server.fhir import crud
from server.fhir.operations import ingest_vcf as ingest
from server.fhir.operations.variant_ranges import ranges_of
from server.search.extract import extractor_for
from server.search.implied import DERIVED_FROM, index_sources
from server.store.base import INDEX_TABLES
from server.store.sql import INDEX_COLUMNS, SqlWriteTx, index_params
from tests.conftest import SHARED, make_app

DATA = Path(__file__).resolve().parents[2] / "data" / "vcf"
VEP = DATA / "vep_clinvar_grch37.vcf"
PHASED = DATA / "phased_grch38.vcf"
NB6 = SHARED / "vcf" / "vcf2fhir" / "NB6TK328_filtered.vcf"
EXAMPLE3 = SHARED / "vcf" / "vcf2fhir" / "vcf_example3.vcf"
STRUCTURAL = SHARED / "vcf" / "vcf2fhir" / "vcf_structural_variants.vcf"
HG00404 = SHARED / "vcf" / "vcf2fhir" / "HG00404_b37.vcf"


def shared(path: Path) -> Path:
    if not path.exists():
        pytest.skip(f"shared test data not found: {path}")
    return path


def _ctx(app: Any) -> Any:
    return app.extensions["bigmed"]


def _patient(ctx: Any, id_: str = "p1") -> None:
    crud.update(ctx, "Patient", id_, {"resourceType": "Patient", "id": id_})


def _count(ctx: Any, sql: str, *params: Any) -> int:
    return int(ctx.store.query(sql, params)[0][0])


def _current(ctx: Any) -> Counter[str]:
    rows = ctx.store.query("SELECT res_type, COUNT(*) FROM resources WHERE deleted = 0 GROUP BY res_type")
    return Counter({str(t): int(n) for t, n in rows})


def _expected(path: Path, patient: str = "p1", **kwargs: Any) -> tuple[Any, list[dict[str, Any]]]:
    mapping = map_vcf(path, patient, **kwargs)
    resources = list(mapping.resources())
    return mapping.report, resources


def _ids(ctx: Any, type_: str, patient: str = "p1") -> list[str]:
    return crud.find_matches(ctx, None, type_, f"patient=Patient/{patient}", limit=1_000_000)


# -- the command line --------------------------------------------------------------------------


@pytest.mark.parametrize("workers", ["0", "1"])
def test_cli_ingest_counts_match_the_mapper_and_reingest_is_idempotent(
    database_url: str, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], workers: str
) -> None:
    path = shared(NB6)
    app = make_app(database_url)
    ctx = _ctx(app)
    _patient(ctx)
    monkeypatch.setenv("DATABASE_URL", database_url)
    report, resources = _expected(path)
    assert main(["ingest-vcf", str(path), "--patient", "p1", "--quiet", "--workers", workers]) == 0
    out = capsys.readouterr().out
    assert f"{report.variants} variants" in out and f"{len(resources)} created, 0 updated" in out
    by_type = Counter(r["resourceType"] for r in resources)
    current = _current(ctx)
    assert current["Observation"] == by_type["Observation"] == report.variants + 5 + 5  # + consequences, implications
    assert current["MolecularSequence"] == report.resources["MolecularSequence"] == report.variants == 5
    assert current["DiagnosticReport"] == 1
    assert _count(ctx, "SELECT COUNT(*) FROM variant_range") == report.variants
    history = _count(ctx, "SELECT COUNT(*) FROM history")

    # the same file again: everything found in place, nothing written
    assert main(["ingest-vcf", str(path), "--patient", "p1", "--quiet", "--workers", workers]) == 0
    assert f"0 created, 0 updated, {len(resources)} unchanged" in capsys.readouterr().out
    assert _current(ctx) == current
    assert _count(ctx, "SELECT COUNT(*) FROM history") == history
    assert _count(ctx, "SELECT MAX(version) FROM resources") == 1
    assert _count(ctx, "SELECT COUNT(*) FROM variant_range") == report.variants
    # ids are the mapper's
    assert sorted(_ids(ctx, "MolecularSequence")) == sorted(
        r["id"] for r in resources if r["resourceType"] == "MolecularSequence"
    )
    app.extensions["bigmed"].store.close()


def test_cli_bad_vcf_names_file_and_line_and_writes_nothing(
    database_url: str, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    app = make_app(database_url)
    ctx = _ctx(app)
    _patient(ctx)
    monkeypatch.setenv("DATABASE_URL", database_url)
    lines = VEP.read_text().splitlines()
    data_start = next(i for i, line in enumerate(lines) if line.startswith("#CHROM")) + 1
    broken = [*lines[: data_start + 3], "13\t32918000\t.\tZ\tG\t.\tPASS\t.\tGT\t0/1", *lines[data_start + 3 :]]
    bad = tmp_path / "broken.vcf"
    bad.write_text("\n".join(broken) + "\n")
    monkeypatch.setattr(ingest, "BATCH", 2)  # earlier batches are written before the bad line is read
    before = _current(ctx)
    assert main(["ingest-vcf", str(bad), "--patient", "p1", "--quiet", "--workers", "0"]) == 1
    err = capsys.readouterr().err
    assert f"{bad}: line {data_start + 4}: REF 'Z' is not a sequence of A, C, G, T, N; nothing was stored" in err
    assert _current(ctx) == before
    assert _count(ctx, "SELECT COUNT(*) FROM variant_range") == 0
    assert _count(ctx, "SELECT COUNT(*) FROM history WHERE res_type != 'Patient'") == 0

    # the same from the mapping process
    assert main(["ingest-vcf", str(bad), "--patient", "p1", "--quiet", "--workers", "1"]) == 1
    assert f"line {data_start + 4}: REF" in capsys.readouterr().err
    assert _current(ctx) == before

    # bad header, unknown patient, unknown file
    assert main(["ingest-vcf", str(shared(SHARED / "vcf" / "vcf2fhir" / "vcf_example1.vcf")), "--patient", "p1"]) == 1
    assert "unknown build" in capsys.readouterr().err
    assert main(["ingest-vcf", str(VEP), "--patient", "nobody", "--quiet"]) == 1
    assert "Patient/nobody is not known" in capsys.readouterr().err
    assert main(["ingest-vcf", str(tmp_path / "missing.vcf"), "--patient", "p1", "--quiet"]) == 1
    assert "missing.vcf: no such file" in capsys.readouterr().err
    assert _current(ctx) == before
    app.extensions["bigmed"].store.close()


# -- the domain function -----------------------------------------------------------------------


class _SeesOneMore:
    """A write transaction whose ``current_many`` reports one resource more: the batch path then
    writes through ``put_many``, as for a re-ingestion, instead of ``insert_fresh``."""

    def __init__(self, tx: Any) -> None:
        self._tx = tx

    def __getattr__(self, name: str) -> Any:
        return getattr(self._tx, name)

    def current_many(self, keys: Any) -> Any:
        return {**self._tx.current_many(keys), ("-", "-"): None}

    def any_between(self, *args: Any) -> bool:
        return True


def _tables(ctx: Any) -> dict[str, list[tuple[Any, ...]]]:
    """Every row a resource has in every table, with (type, id) for its internal id."""
    store = ctx.store
    keys = {int(r[0]): (str(r[1]), str(r[2])) for r in store.query("SELECT rid, res_type, res_id FROM resources")}
    out = {
        "resources": sorted(
            (keys[int(r[0])], r[1], r[2]) for r in store.query("SELECT rid, version, deleted FROM resources")
        )
    }
    out["history"] = sorted(
        (keys[r.rid], r.version, r.content)
        for type_, id_ in keys.values()
        for r in [e.resource for e in store.history(type_, id_)]
    )
    for table in ("idx_token", "idx_string", "idx_reference", "idx_date", "idx_quantity", "variant_range"):
        rows = store.query(f"SELECT * FROM {table}")
        out[table] = sorted((keys[int(r[0])], *map(repr, r[1:])) for r in rows)
    return out


def test_the_fresh_path_writes_what_put_many_writes(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """insert_fresh (a first ingestion) and put_many (the path of later ones) leave the same tables."""
    apps = [make_app(f"sqlite:///{tmp_path}/{name}.sqlite") for name in ("fresh", "put_many")]
    monkeypatch.setattr(ingest.time, "time", lambda: 1_700_000_000.0)  # one lastUpdated for both
    plain = ingest._write_batch

    def through_put_many(tx: Any, *args: Any) -> Any:
        return plain(_SeesOneMore(tx), *args)

    try:
        written = []
        for n, app in enumerate(apps):
            ctx = _ctx(app)
            _patient(ctx)
            if n == 1:
                monkeypatch.setattr(ingest, "_write_batch", through_put_many)
            result = ingest.ingest_vcf(ctx, shared(NB6), "p1", workers=0)
            written.append((result.created, _tables(ctx)))
        (created, fresh), (created_again, slow) = written
        assert created == created_again > 20
        assert fresh["idx_token"] and fresh["idx_reference"] and fresh["variant_range"]
        assert fresh == slow
        # and the rows are the indexer's, as the store would make them of its IndexRows
        ctx = _ctx(apps[0])
        indexer = ingest.Indexer(ctx.registry)
        for table in INDEX_TABLES:
            width = len(INDEX_COLUMNS[table])  # an ordinary row is stored with grp NULL
            expected = sorted(
                (
                    row + (None,) * (width - len(row))
                    for r in ctx.store.iter_current()
                    if r.type != "Patient"
                    for row in index_params(
                        r.rid, r.type, table, getattr(indexer(jsonio.loads(r.content or b"")), table)
                    )
                ),
                key=repr,
            )
            stored = ctx.store.query(f"SELECT * FROM idx_{table} WHERE res_type != 'Patient'")
            # with the rows the range rows imply (server.search.implied)
            for source in index_sources(table, None, None)[1:]:
                implied = ctx.store.query(f"SELECT * FROM {source} x")
                # every variant but the first (checked against the extractor, its rows written)
                assert len(implied) == len(fresh["variant_range"]) - 1 >= 4
                assert not set(map(tuple, implied)) & set(map(tuple, stored))
                stored += implied
            assert sorted((tuple(row) for row in stored), key=repr) == expected, table
    finally:
        for app in apps:
            app.extensions["bigmed"].store.close()


def test_changed_mapping_updates_in_place_and_deletes_what_is_gone(app: Any, tmp_path: Path) -> None:
    ctx = _ctx(app)
    _patient(ctx)
    first = ingest.ingest_vcf(ctx, VEP, "p1")
    assert first.report_created and first.created == sum(first.by_type.values())
    assert first.report.variants == 5
    # the same file with only chromosome 13: the chromosome 10 variant and what hangs on it go
    bed = tmp_path / "chr13.bed"
    bed.write_text("13\t0\t115169878\n")
    second = ingest.ingest_vcf(ctx, VEP, "p1", regions=bed)
    assert second.report.variants == 4
    # variant, its MolecularSequence, its consequence and implication
    assert second.deleted == 4
    assert second.updated == 1  # the DiagnosticReport: its result list and summary changed
    assert second.unchanged == sum(first.by_type.values()) - 4 - 1
    assert not second.report_created and second.diagnostic_report.version == 2
    assert _count(ctx, "SELECT COUNT(*) FROM variant_range") == 4
    assert _count(ctx, "SELECT COUNT(*) FROM variant_range WHERE ref_seq = 'NC_000010.10'") == 0
    # somatic: every variant Observation changes (source class component), nothing else does
    third = ingest.ingest_vcf(ctx, VEP, "p1", regions=bed, source_class="somatic")
    assert third.updated == 4 and third.created == 0 and third.deleted == 0
    assert _count(ctx, "SELECT COUNT(*) FROM variant_range WHERE source_class = 'somatic'") == 4


def test_a_first_ingestion_looks_up_no_id_but_finds_one_already_stored(
    app: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A batch whose id ranges hold nothing stored goes in without looking up its ids (one index
    range per type); a resource already stored under one of its ids (here a MolecularSequence PUT
    before the first ingestion) is found, and updated, not inserted a second time."""
    ctx = _ctx(app)
    _patient(ctx)
    looked_up: list[int] = []
    real = SqlWriteTx.current_many

    def counted(tx: Any, keys: Any) -> Any:
        looked_up.append(len(keys))
        return real(tx, keys)

    monkeypatch.setattr(SqlWriteTx, "current_many", counted)
    first = ingest.ingest_vcf(ctx, VEP, "p1", workers=0)
    assert looked_up == [] and first.created == sum(first.by_type.values()) > 10
    # another patient's ingestion of the same file: its ids differ; one of them is stored already
    _patient(ctx, "p2")
    resources = _expected(VEP, "p2")[1]
    sequence = [r for r in resources if r["resourceType"] == "MolecularSequence"][2]
    crud.update(ctx, "MolecularSequence", sequence["id"], {**sequence, "readCoverage": 1})
    second = ingest.ingest_vcf(ctx, VEP, "p2", workers=0)
    assert looked_up and second.updated == 1 and second.created == len(resources) - 1
    stored = crud.read(ctx, "MolecularSequence", sequence["id"])
    assert stored.version == 2
    assert jsonio.loads(stored.content or b"").get("readCoverage") == sequence.get("readCoverage") != 1


def test_statistics_are_refreshed_only_for_a_file_pgx_calling_searches(
    app: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A large ingestion refreshes the planner's statistics before the PGx search that follows it; a
    file that is not PGx-called (GRCh37, somatic) is not searched, so it is not ANALYZEd either."""
    ctx = _ctx(app)
    _patient(ctx)
    refreshed: list[bool] = []
    monkeypatch.setattr(SqlWriteTx, "refresh_statistics", lambda tx: refreshed.append(True))
    monkeypatch.setattr(ingest, "_FRESH_STATS_AFTER", 0)  # every ingestion counts as large
    grch37 = ingest.ingest_vcf(ctx, VEP, "p1", workers=0)
    assert grch37.pgx is not None and grch37.pgx.skipped and refreshed == []
    somatic = ingest.ingest_vcf(ctx, PHASED, "p1", workers=0, source_class="somatic")
    assert somatic.pgx is not None and somatic.pgx.skipped and refreshed == []
    germline = ingest.ingest_vcf(ctx, PHASED, "p1", workers=0)
    assert germline.pgx is not None and not germline.pgx.skipped and refreshed == [True]


def test_reingesting_after_the_id_format_changed_replaces_the_earlier_variants(app: Any) -> None:
    """The report keeps its uuid5 id across versions of the mapper: a file ingested by an earlier
    version (variants under other ids) and ingested again has its earlier variants deleted, not
    kept beside the new ones."""
    ctx = _ctx(app)
    _patient(ctx)
    mapping = map_vcf(VEP, "p1")
    resources = list(mapping.resources())
    report_id = str(uuid.uuid5(NAMESPACE, f"p1\x1f{mapping.sample}\x1f{mapping.sha256}\x1freport"))
    assert resources[-1]["id"] == report_id
    earlier = {"resourceType": "Observation", "id": "earlier-variant", "status": "final", "code": {"text": "v"}}
    crud.update(ctx, "Observation", "earlier-variant", earlier)
    sequence = {"resourceType": "MolecularSequence", "id": "earlier-variant", "coordinateSystem": 0}
    crud.update(ctx, "MolecularSequence", "earlier-variant", sequence)
    report = {
        "resourceType": "DiagnosticReport",
        "id": report_id,
        "status": "final",
        "code": {"text": "earlier"},
        "result": [{"reference": "Observation/earlier-variant"}],
    }
    crud.update(ctx, "DiagnosticReport", report_id, report)
    result = ingest.ingest_vcf(ctx, VEP, "p1")
    assert result.deleted == 2 and result.diagnostic_report.version == 2
    assert ctx.store.read("Observation", "earlier-variant").deleted
    assert ctx.store.read("MolecularSequence", "earlier-variant").deleted
    assert _current(ctx)["Observation"] == sum(1 for r in resources if r["resourceType"] == "Observation")


def test_unknown_patient_and_bad_arguments(app: Any) -> None:
    ctx = _ctx(app)
    from server.errors import BadRequest, Gone, NotFound

    with pytest.raises(NotFound):
        ingest.ingest_vcf(ctx, VEP, "p1")
    _patient(ctx)
    with pytest.raises(BadRequest, match="source_class"):
        ingest.ingest_vcf(ctx, VEP, "p1", source_class="mosaic")
    with pytest.raises(BadRequest, match="conflicting build"):
        ingest.ingest_vcf(ctx, VEP, "p1", build="GRCh38")
    crud.delete(ctx, "Patient", "p1")
    with pytest.raises(Gone):
        ingest.ingest_vcf(ctx, VEP, "p1")


def test_search_by_gene_and_chromosome(app: Any) -> None:
    ctx = _ctx(app)
    _patient(ctx)
    _patient(ctx, "p2")
    ingest.ingest_vcf(ctx, VEP, "p1")
    ingest.ingest_vcf(ctx, shared(NB6), "p2")
    client = app.test_client()

    def total(query: str) -> int:
        response = client.get(f"/fhir/Observation?{query}&_summary=count")
        assert response.status_code == 200, response.json
        return int(response.json["total"])

    # p1: CYP2C19 rs4244285 (variant + consequence + ClinVar implication; only the variant has the gene)
    assert total("subject=Patient/p1&gene=CYP2C19") == 1
    assert total("subject=Patient/p1&gene=HGNC:2621") == 1
    assert total("subject=Patient/p1&gene=http://www.genenames.org/geneId|HGNC:2621") == 1
    assert total("subject=Patient/p1&gene=BRCA2") == 1
    assert total("patient=p2&gene=BRCA2") == 1
    assert total("gene=BRCA2") == 2
    assert total("gene=BRCA1") == 0
    assert total("subject=Patient/p1&chromosome=NC_000013.10") == 4
    assert total("subject=Patient/p2&chromosome=http://www.ncbi.nlm.nih.gov/refseq|NC_000013.11") == 1
    assert total("subject=Patient/p1&code=http://loinc.org|69548-6") == 5
    cyp2c19 = client.get("/fhir/Observation?subject=Patient/p1&gene=CYP2C19").json["entry"][0]["resource"]["id"]
    assert total(f"derived-from=Observation/{cyp2c19}") == 2  # consequence, implication
    # the MolecularSequences, by patient and reference sequence
    response = client.get("/fhir/MolecularSequence?patient=p1&referenceseqid=NC_000013.10&_summary=count")
    assert response.json["total"] == 4


def _rows_by_table(rows: Any) -> dict[str, list[str]]:
    """Each index table's rows, comparable."""
    return {table: sorted(map(repr, getattr(rows, table))) for table in INDEX_TABLES}


@pytest.mark.parametrize("path", [VEP, PHASED, NB6, EXAMPLE3, STRUCTURAL, HG00404])
def test_fast_index_rows_equal_the_search_registrys(app: Any, path: Path) -> None:
    """The ingestion's fast rows are exactly what the registry's extractor gives for the lean parameters,
    and its range rows what ranges_of reads, whether made of the mapper's facts or of the resource."""
    ctx = _ctx(app)
    indexer = ingest.Indexer(ctx.registry)
    lean = ingest.ingest_registry(ctx.registry)
    kinds: Counter[str] = Counter()
    for resource, facts in map_vcf(shared(path), "p1").items():
        type_ = resource["resourceType"]
        expected = extractor_for(type_, lean if type_ in ingest.INDEXED else ctx.registry)(resource)
        for rows in (indexer(resource, facts), indexer(resource)):
            assert _rows_by_table(rows) == _rows_by_table(expected), (type_, resource["id"])
        if type_ == "Observation":
            assert indexer.ranges(resource, facts) == ranges_of(resource), resource["id"]
        # and as a batch takes them: (table, rows) of the tables with rows; a sequence variant's (its
        # facts were checked just above) made of the facts alone, as the writer makes them, with an
        # Observation's range row, which stands for its derived-from row (server.search.implied)
        implied, range_row = 0, None
        if facts is None:
            pairs = indexer.tables(resource, facts)
        else:
            assert indexer.checked(type_)
            pairs, range_row = indexer.fact_tables(type_, resource["id"], resource.get("code"), facts)
        tables = {table: sorted(map(repr, rows)) for table, rows in pairs if rows}
        if range_row is not None:
            implied = range_row[-1]
            assert [(*range_row[:-1], 0)] == ranges_of(resource), resource["id"]
        if implied:  # the rows its range row implies (server.search.implied), put back
            assert implied == DERIVED_FROM
            row = ("derived-from", "MolecularSequence", resource["id"], f"MolecularSequence/{resource['id']}")
            assert resource["derivedFrom"] == [{"reference": row[3]}]
            tables["reference"] = sorted([*tables["reference"], repr(row)])
        assert bool(implied) == (facts is not None and type_ == "Observation")
        kinds["implied"] += bool(implied)
        assert tables == {t: rows for t, rows in _rows_by_table(expected).items() if rows}, resource["id"]
        kinds[type_] += 1
        kinds["facts"] += facts is not None
    assert indexer.fast and indexer.facts
    assert kinds["facts"] > 0 or path == STRUCTURAL
    assert kinds["implied"] == kinds["facts"] // 2
    assert set(ingest.INDEXED) <= set(kinds)
    # every parameter of INDEXED is defined by the registry (a rename would silently drop rows)
    for type_, codes in ingest.INDEXED.items():
        assert set(lean.params_for(type_)) >= codes, type_


@pytest.mark.parametrize("slow", ["writer", "mapping"])
def test_the_rows_of_facts_are_made_where_a_process_would_wait(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, slow: str
) -> None:
    """With a mapping process, a batch's rows of its sequence variants are made by the writer when
    it has written every batch before (it would wait), else by the mapping process; the tables are
    those of an ingestion in one process either way."""
    monkeypatch.setattr(ingest, "BATCH", 64)
    monkeypatch.setattr(ingest.time, "time", lambda: 1_700_000_000.0)  # one lastUpdated for both
    apps = [make_app(f"sqlite:///{tmp_path}/{name}.sqlite") for name in ("one", "two")]
    made_by_writer: list[int] = []  # per batch, of the rows the writer made: the facts it got
    real_rows, real_write, real_prepare = ingest._with_fact_rows, ingest._write_batch, ingest._prepare_all

    def with_fact_rows(batch: Any, indexer: Any) -> Any:
        if os.getpid() == parent:
            made_by_writer.append(len(batch.facts))
        return real_rows(batch, indexer)

    def slow_write(*args: Any) -> Any:
        time.sleep(0.02)
        return real_write(*args)

    def slow_prepare(*args: Any) -> Any:
        for batch in real_prepare(*args):
            time.sleep(0.02)
            yield batch

    parent = os.getpid()
    monkeypatch.setattr(ingest, "_with_fact_rows", with_fact_rows)
    try:
        tables = []
        for workers, app in zip((0, 1), apps, strict=True):
            if workers:
                made_by_writer.clear()
                if slow == "writer":
                    monkeypatch.setattr(ingest, "_write_batch", slow_write)
                else:
                    monkeypatch.setattr(ingest, "_prepare_all", slow_prepare)
            ctx = _ctx(app)
            _patient(ctx)
            assert ingest.ingest_vcf(ctx, shared(HG00404), "p1", workers=workers).created > 3000
            tables.append(_tables(ctx))
        assert tables[0] == tables[1]
        batches = len(made_by_writer)
        assert batches > 20
        with_facts = sum(1 for n in made_by_writer if n)
        if slow == "writer":  # the mapping process made them (but of the first batch: the writer waits)
            assert with_facts <= 2
        else:
            assert with_facts >= batches - 3
    finally:
        for app in apps:
            app.extensions["bigmed"].store.close()


def test_the_writer_makes_the_rows_of_checked_variants_from_their_facts(app: Any) -> None:
    """A batch carries the facts of its sequence variants checked before it, not their rows; the
    rows the writer makes of them (numbered by resource, with an indexer that checked nothing) are
    each resource's rows as the registry's extractor gives them, and its range row."""
    ctx = _ctx(app)
    lean = ingest.ingest_registry(ctx.registry)
    batches = list(ingest._prepare_all(map_vcf(shared(HG00404), "p1"), ingest.Indexer(ctx.registry), 1.0))
    first = batches[0].keys[:2]
    assert [t for t, _ in first] == ["MolecularSequence", "Observation"]
    assert all(k > 1 for k, *_ in batches[0].facts)  # the first variant's rows are checked, then made
    writer = ingest.Indexer(ctx.registry)
    # an Observation derived from a MolecularSequence of another id keeps its derived-from row
    _, _, id_, code, facts = next(entry for entry in batches[1].facts if entry[1] == "Observation")
    pairs, range_row = writer.fact_tables("Observation", id_, code, facts._replace(sequence="MolecularSequence/other"))
    assert range_row is not None and range_row[-1] == 0
    assert ("derived-from", "MolecularSequence", "other", "MolecularSequence/other") in dict(pairs)["reference"]
    kinds: Counter[str] = Counter()
    for prepared in batches:
        deferred = {k for k, *_ in prepared.facts}
        batch = ingest._with_fact_rows(prepared, writer)
        assert not batch.facts
        ranges = batch.derived["variant_range"]
        for k, (type_, _) in enumerate(batch.keys):
            resource = jsonio.loads(batch.served(k))
            expected = extractor_for(type_, lean if type_ in ingest.INDEXED else ctx.registry)(resource)
            if type_ == "DiagnosticReport":
                continue
            rows = {t: sorted(repr(r[2:]) for r in batch.index[t] if r[0] == k) for t in INDEX_TABLES}
            own = [r[1:] for r in ranges if r[0] == k]
            if own and own[0][-1] & DERIVED_FROM:  # the row its range row stands for, put back
                row = ("derived-from", "MolecularSequence", resource["id"], f"MolecularSequence/{resource['id']}")
                assert resource["derivedFrom"] == [{"reference": row[3]}]
                rows["reference"] = sorted([*rows["reference"], repr(row)])
            assert rows == _rows_by_table(expected), (k, type_)
            assert [(*r[:-1], 0) for r in own] == (ranges_of(resource) if type_ == "Observation" else [])
            kinds["from facts" if k in deferred else "inline"] += 1
            kinds["implied"] += bool(own and own[0][-1])
    assert kinds["from facts"] > 10 * kinds["inline"] > 0
    assert kinds["implied"] == kinds["from facts"] // 2 > 0


def test_batches_start_small_and_grow_to_batch(app: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    """The writer waits for the first batch only: it is BATCH/8, and each next one doubles up to BATCH.
    The DiagnosticReport, which lists every result, comes alone in the last batch."""
    monkeypatch.setattr(ingest, "BATCH", 16)
    mapping = map_vcf(shared(HG00404), "p1")
    ctx = _ctx(app)
    batches = list(ingest._prepare_all(mapping, ingest.Indexer(ctx.registry), 1.0))
    sizes = [len(b.keys) for b in batches]
    assert sizes[:5] == [2, 4, 8, 16, 16]
    assert all(n == 16 for n in sizes[3:-2]) and 0 < sizes[-2] <= 16
    assert [type_ for type_, _ in batches[-1].keys] == ["DiagnosticReport"]
    assert all(type_ != "DiagnosticReport" for b in batches[:-1] for type_, _ in b.keys)
    assert sum(sizes) == sum(1 for _ in map_vcf(HG00404, "p1").resources())


def test_fast_index_falls_back_when_a_parameter_changes(app: Any, caplog: pytest.LogCaptureFixture) -> None:
    ctx = _ctx(app)
    indexer = ingest.Indexer(ctx.registry)
    resources = list(map_vcf(VEP, "p1").resources())
    variant = next(r for r in resources if r["resourceType"] == "Observation")
    indexer.lean = ingest.ingest_registry(ctx.registry)
    # pretend the registry's gene parameter no longer has the symbol branch
    from server.search.registry import Registry, parse_search_parameter

    changed = []
    for p in indexer.lean.all():
        if p.code == "gene":
            definition = {
                "url": p.url,
                "code": p.code,
                "base": list(p.base),
                "type": p.type,
                "expression": "Observation.component.where(code.coding.code = '48018-6').value.ofType(CodeableConcept)",
            }
            changed.append(parse_search_parameter(definition))
        else:
            changed.append(p)
    indexer.lean = Registry(changed, ctx.registry.types)
    rows = indexer(variant)
    assert not indexer.fast
    assert "differ from the search registry" in caplog.text
    assert ("gene", None, "CYP2C19", None) not in rows.token


def test_report_results_are_indexed_as_the_registry_does(app: Any) -> None:
    """A genomic report's result rows (made in one loop, not by the extractor) equal the extractor's,
    whatever shape a result has: a plain literal reference, one with a display, an identifier only,
    a contained or urn: reference, the same result twice."""
    ctx = _ctx(app)
    report = next(r for r in map_vcf(VEP, "p1").resources() if r["resourceType"] == "DiagnosticReport")
    assert len(report["result"]) > 3
    report["result"] = [
        *report["result"],
        {"reference": "Observation/with-display", "display": "a result"},
        {"identifier": {"system": "urn:ietf:rfc:3986", "value": "urn:uuid:6f1c2d9e-5a7b-4c3d-9e8f-0a1b2c3d4e5f"}},
        {"reference": "#contained"},
        {"reference": "urn:uuid:6f1c2d9e-5a7b-4c3d-9e8f-0a1b2c3d4e5f", "type": "Observation"},
        {"reference": "http://other.example/fhir/Observation/abc"},
        report["result"][-1],
    ]
    indexer = ingest.Indexer(ctx.registry)
    rows = indexer(report)
    assert indexer.fast
    assert _rows_by_table(rows) == _rows_by_table(extractor_for("DiagnosticReport", ctx.registry)(report))
    assert ("result", "Observation", "abc", "http://other.example/fhir/Observation/abc") in rows.reference


def test_report_results_fall_back_when_the_result_parameter_changes(app: Any, caplog: pytest.LogCaptureFixture) -> None:
    """When the registry's ``result`` parameter no longer gives one row per result, the report is
    indexed by the extractor (with a warning), not by the one-row-per-result loop."""
    from server.search.registry import Registry, parse_search_parameter

    ctx = _ctx(app)
    report = next(r for r in map_vcf(VEP, "p1").resources() if r["resourceType"] == "DiagnosticReport")
    changed = []
    for p in ctx.registry.all():
        if p.code == "result" and "DiagnosticReport" in p.base:
            definition = {
                "url": p.url,
                "code": p.code,
                "base": list(p.base),
                "type": p.type,
                "target": list(p.target),
                "expression": "DiagnosticReport.result.first()",
            }
            changed.append(parse_search_parameter(definition))
        else:
            changed.append(p)
    registry = Registry(changed, ctx.registry.types)
    indexer = ingest.Indexer(registry)
    rows = indexer(report)
    assert not indexer.fast and "results differ from the search registry" in caplog.text
    assert [r for r in rows.reference if r[0] == "result"] == [
        ("result", "Observation", report["result"][0]["reference"][12:], report["result"][0]["reference"])
    ]


def _report_result_rows(indexer: Any, report: dict[str, Any]) -> list[str]:
    """The report's ``result`` rows as a batch holds them (numbered 0), comparable."""
    rows = [r for r in indexer(report).reference if r[0] == "result"]
    return sorted(map(repr, index_params(0, "DiagnosticReport", "reference", rows)))


def test_report_rows_go_ahead_with_the_observations(app: Any) -> None:
    """Each batch carries the report's ``result`` rows of its Observations; the report's own batch
    then leaves them out, and together they are the report's rows."""
    ctx = _ctx(app)
    mapping = map_vcf(shared(HG00404), "p1")
    indexer = ingest.Indexer(ctx.registry)
    batches = list(ingest._prepare_all(mapping, indexer, 1.0))
    *variants, last = batches
    assert last.uses_ahead and not last.ahead
    assert not [r for r in last.index["reference"] if r[2] == "result"]
    observations = sum(1 for b in variants for type_, _ in b.keys if type_ == "Observation")
    ahead = [row for b in variants for row in b.ahead]
    assert len(ahead) == observations > 3
    report = jsonio.loads(last.served(0))
    assert sorted(map(repr, ahead)) == _report_result_rows(ingest.Indexer(ctx.registry), report)


def test_report_rows_are_made_whole_when_its_results_differ(app: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    """A report that does not list exactly the Observations before it (a mapper changed) gets its
    ``result`` rows in its own batch, and the rows sent ahead are dropped: the stored rows are the
    report's."""
    from mappers.vcf import VcfMapping

    real = VcfMapping.items

    def drops_a_result(self: Any) -> Any:
        for resource, facts in real(self):
            if resource["resourceType"] == "DiagnosticReport":
                resource["result"] = resource["result"][1:]
            yield resource, facts

    monkeypatch.setattr(VcfMapping, "items", drops_a_result)
    ctx = _ctx(app)
    batches = list(ingest._prepare_all(map_vcf(shared(HG00404), "p1"), ingest.Indexer(ctx.registry), 1.0))
    report = jsonio.loads(batches[-1].served(0))
    assert not batches[-1].uses_ahead
    assert sorted(map(repr, (r for r in batches[-1].index["reference"] if r[2] == "result"))) == (
        _report_result_rows(ingest.Indexer(ctx.registry), report)
    )
    for workers, patient in ((0, "p1"), (1, "p2")):  # in this process, and from a mapping process
        _patient(ctx, patient)
        result = ingest.ingest_vcf(ctx, shared(HG00404), patient, workers=workers)
        assert result.report_created
        stored = ctx.store.query(
            "SELECT x.target_type, x.target_id FROM idx_reference x JOIN resources r ON r.rid = x.rid "
            "WHERE r.res_type = 'DiagnosticReport' AND r.res_id = ? AND x.param = 'result'",
            (result.diagnostic_report.id,),
        )
        expected = jsonio.loads(result.diagnostic_report.content or b"")["result"]
        assert sorted(f"{t}/{i}" for t, i in stored) == sorted(r["reference"] for r in expected)
        assert len(stored) == len(expected) == len(report["result"])


def test_mapping_process_ends_unexpectedly(app: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    """A mapping process that dies says so (with its exit code); nothing is written."""
    ctx = _ctx(app)
    _patient(ctx)

    def dies(*args: Any) -> None:
        os._exit(3)

    monkeypatch.setattr(ingest, "_worker", dies)
    before = _current(ctx)
    with pytest.raises(RuntimeError, match=r"ended unexpectedly \(exit code 3\)"):
        ingest.ingest_vcf(ctx, VEP, "p1", workers=1)
    assert _current(ctx) == before and multiprocessing.active_children() == []


def test_writer_failing_stops_the_mapping_process(app: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    """The writer failing half-way (the mapping process still mapping) rolls everything back and
    ends the mapping process; the next ingestion goes through."""
    ctx = _ctx(app)
    _patient(ctx)
    monkeypatch.setattr(ingest, "BATCH", 2)  # many batches: the receiver is ahead when the writer fails
    real = ingest._write_batch
    calls: list[int] = []

    def fails_third(*args: Any) -> Any:
        calls.append(1)
        if len(calls) == 3:
            raise OSError("disk full")
        return real(*args)

    monkeypatch.setattr(ingest, "_write_batch", fails_third)
    before = _current(ctx)
    with pytest.raises(OSError, match="disk full"):
        ingest.ingest_vcf(ctx, VEP, "p1", workers=1)
    assert _current(ctx) == before and multiprocessing.active_children() == []
    monkeypatch.setattr(ingest, "_write_batch", real)
    result = ingest.ingest_vcf(ctx, VEP, "p1", workers=1)  # and the next one goes through
    assert result.created == sum(result.by_type.values()) > 0


def test_facts_fall_back_to_the_resource_when_they_differ(app: Any, caplog: pytest.LogCaptureFixture) -> None:
    """Facts that do not match their resources (a mapper changed one and not the other) are noticed
    on the first variant: that ingestion reads its rows from the resources instead."""
    ctx = _ctx(app)
    items = [(r, f) for r, f in map_vcf(VEP, "p1").items() if f is not None]
    sequence, facts = items[0]
    variant = items[1][0]
    moved = facts._replace(start=facts.start + 1)
    indexer = ingest.Indexer(ctx.registry)
    assert indexer.ranges(variant, moved) == ranges_of(variant)
    assert not indexer.facts and "range rows made of the VCF mapper's facts" in caplog.text
    # once off, the facts are not read at all
    assert indexer.ranges(variant, moved) == ranges_of(variant)
    assert indexer(variant, moved._replace(chromosome={"text": "x"})).token == indexer(variant).token
    # index rows: another chromosome concept than the resource's
    caplog.clear()
    indexer = ingest.Indexer(ctx.registry)
    wrong = facts._replace(chromosome={"coding": [{"system": "http://www.ncbi.nlm.nih.gov/refseq", "code": "NC_0"}]})
    rows = indexer(variant, wrong)
    assert not indexer.facts and "index rows made of the VCF mapper's facts" in caplog.text
    assert ("chromosome", "http://www.ncbi.nlm.nih.gov/refseq", "NC_0", None) not in rows.token
    assert sorted(rows.token, key=repr) == sorted(ingest.Indexer(ctx.registry)(variant).token, key=repr)
    # and the rows of a checked kind come from the facts (cached concept rows, nothing walked)
    indexer = ingest.Indexer(ctx.registry)
    indexer(sequence, facts)
    indexer(variant, facts)
    assert indexer.facts
    other = items[3][0]
    assert ("derived-from", "MolecularSequence", other["id"], f"MolecularSequence/{other['id']}") in indexer(
        other, items[3][1]
    ).reference


def test_facts_are_checked_even_after_a_walked_resource_of_the_same_type(
    app: Any, caplog: pytest.LogCaptureFixture
) -> None:
    """A structural variant's MolecularSequence (no facts: walked and checked as its kind) first does
    not let the first facts-made rows of that type through unchecked."""
    ctx = _ctx(app)
    items = list(map_vcf(shared(STRUCTURAL), "p1").items())
    walked = next(r for r, f in items if f is None and r["resourceType"] == "MolecularSequence")
    sequence, facts = next((r, f) for r, f in items if f is not None and r["resourceType"] == "MolecularSequence")
    indexer = ingest.Indexer(ctx.registry)
    indexer(walked)
    wrong = facts._replace(accession={"coding": [{"system": "http://www.ncbi.nlm.nih.gov/nuccore", "code": "NC_0"}]})
    rows = indexer(sequence, wrong)
    assert not indexer.facts and "index rows made of the VCF mapper's facts" in caplog.text
    assert ("referenceseqid", "http://www.ncbi.nlm.nih.gov/nuccore", "NC_0", None) not in rows.token


def test_range_index_follows_rest_writes(app: Any) -> None:
    """A variant Observation written through the API gets its range row; update and delete replace it."""
    ctx = _ctx(app)
    _patient(ctx)
    resources = list(map_vcf(VEP, "p1").resources())
    variant = next(r for r in resources if r["resourceType"] == "Observation")
    body = json.loads(json.dumps(variant))
    body.pop("derivedFrom")
    client = app.test_client()
    response = client.put(f"/fhir/Observation/{body['id']}", json=body, content_type="application/fhir+json")
    assert response.status_code == 201, response.json
    rows = ctx.store.query(
        "SELECT subject, ref_seq, start_pos, end_pos, ref_allele, alt_allele, structural FROM variant_range"
    )
    assert [tuple(r) for r in rows] == [("Patient/p1", "NC_000010.10", 96541615, 96541616, "G", "A", 0)]
    # moved by an update: the row follows
    for component in body["component"]:
        if component["code"]["coding"][0]["code"] == "81254-5":
            component["valueRange"] = {"low": {"value": 100}, "high": {"value": 101}}
    client.put(f"/fhir/Observation/{body['id']}", json=body, content_type="application/fhir+json")
    assert [tuple(r) for r in ctx.store.query("SELECT start_pos, end_pos FROM variant_range")] == [(100, 101)]
    # not a variant any more: no row
    body["code"] = {"coding": [{"system": "http://loinc.org", "code": "8867-4"}]}
    client.put(f"/fhir/Observation/{body['id']}", json=body, content_type="application/fhir+json")
    assert _count(ctx, "SELECT COUNT(*) FROM variant_range") == 0
    body["code"] = variant["code"]
    client.put(f"/fhir/Observation/{body['id']}", json=body, content_type="application/fhir+json")
    assert _count(ctx, "SELECT COUNT(*) FROM variant_range") == 1
    assert client.delete(f"/fhir/Observation/{body['id']}").status_code == 204
    assert _count(ctx, "SELECT COUNT(*) FROM variant_range") == 0


def test_ranges_of_reads_coordinates() -> None:
    variant = next(r for r in map_vcf(VEP, "p1").resources() if r["resourceType"] == "Observation")
    bin_ = 585 + (96541615 >> 17)  # the 128 kb bin holding it
    assert ranges_of(variant) == [("Patient/p1", "NC_000010.10", 96541615, 96541616, bin_, "G", "A", 0, "germline", 0)]
    one_based = json.loads(json.dumps(variant))
    for component in one_based["component"]:
        if component["code"]["coding"][0]["code"] == "92822-6":
            component["valueCodeableConcept"] = {"coding": [{"system": "http://loinc.org", "code": "LA30102-0"}]}
        if component["code"]["coding"][0]["code"] == "81254-5":
            component["valueRange"] = {"low": {"value": 96541616}, "high": {"value": 96541616}}
    assert ranges_of(one_based)[0][2:4] == (96541615, 96541616)
    assert ranges_of({"resourceType": "Observation", "code": {"coding": [{"code": "8867-4"}]}}) == []


# -- HTTP ------------------------------------------------------------------------------------


def test_http_ingest_sync(app: Any) -> None:
    ctx = _ctx(app)
    client = app.test_client()
    data = VEP.read_bytes()
    assert client.post("/fhir/Patient/p1/$ingest-vcf", data=data, content_type="text/plain").status_code == 404
    _patient(ctx)
    response = client.post(
        "/fhir/Patient/p1/$ingest-vcf?sample=S1&source-class=germline",
        data=data,
        content_type="text/x-vcf",
        headers={"Content-Disposition": 'attachment; filename="cyp2c19 sample.vcf"'},
    )
    assert response.status_code == 201, response.json
    report = response.json
    assert report["resourceType"] == "DiagnosticReport" and report["code"]["coding"][0]["code"] == "51969-4"
    assert report["subject"] == {"reference": "Patient/p1"}
    assert response.headers["Location"] == f"http://testserver/fhir/DiagnosticReport/{report['id']}/_history/1"
    assert "cyp2c19_sample.vcf" in report["conclusion"]
    assert len(report["result"]) == 5 + 2 + 4
    # again: the same report, nothing new
    history = _count(ctx, "SELECT COUNT(*) FROM history")
    again = client.post(
        "/fhir/Patient/p1/$ingest-vcf",
        data=data,
        content_type="text/plain",
        headers={"Content-Disposition": 'attachment; filename="cyp2c19 sample.vcf"'},
    )
    assert again.status_code == 200 and again.json["id"] == report["id"]
    assert again.json["meta"]["versionId"] == "1"
    assert _count(ctx, "SELECT COUNT(*) FROM history") == history
    # under another name: the same resources, the report says the new name (version 2)
    renamed = client.post("/fhir/Patient/p1/$ingest-vcf", data=data, content_type="text/plain")
    assert renamed.status_code == 200 and renamed.json["id"] == report["id"]
    assert renamed.json["meta"]["versionId"] == "2" and "upload.vcf" in renamed.json["conclusion"]
    assert _count(ctx, "SELECT COUNT(*) FROM history") == history + 1
    # gzip upload of the same content: another file (other sha256), another report
    gz = client.post("/fhir/Patient/p1/$ingest-vcf", data=gzip.compress(data), content_type="application/gzip")
    assert gz.status_code == 201 and gz.json["id"] != report["id"]


def test_http_ingest_errors(database_url: str) -> None:
    app = make_app(database_url, max_body_bytes=1000, max_vcf_bytes=4000)
    ctx = _ctx(app)
    _patient(ctx)
    client = app.test_client()
    data = VEP.read_bytes()
    assert 1000 < len(data) < 4000  # over the JSON body limit, under the VCF one
    response = client.post("/fhir/Patient/p1/$ingest-vcf", data=data, content_type="text/plain")
    assert response.status_code == 201, response.json
    too_big = client.post("/fhir/Patient/p1/$ingest-vcf", data=data + b"#" * 4000, content_type="text/plain")
    assert too_big.status_code == 413 and "BIGMED_MAX_VCF_BYTES" in too_big.json["issue"][0]["diagnostics"]
    wrong = client.post("/fhir/Patient/p1/$ingest-vcf", data=data, content_type="application/fhir+json")
    assert wrong.status_code == 415 and wrong.json["resourceType"] == "OperationOutcome"
    bad = client.post(
        "/fhir/Patient/p1/$ingest-vcf",
        data=data.replace(b"96541616\trs4244285;12345\tG", b"96541616\trs4244285;12345\tZ"),
        content_type="text/plain",
    )
    assert bad.status_code == 400
    assert (
        "upload.vcf: line 15: REF 'Z' is not a sequence of A, C, G, T, N; nothing was stored"
        in bad.json["issue"][0]["diagnostics"]
    )
    unknown = client.post("/fhir/Patient/p1/$ingest-vcf?regions=x.bed", data=data, content_type="text/plain")
    assert unknown.status_code == 400
    empty = client.post("/fhir/Patient/p1/$ingest-vcf", data=b"", content_type="text/plain")
    assert empty.status_code == 400
    assert _count(ctx, "SELECT COUNT(*) FROM resources WHERE res_type = 'DiagnosticReport'") == 1
    app.extensions["bigmed"].store.close()


def _poll(client: Any, url: str) -> Any:
    path = url.replace("http://testserver", "")
    for _ in range(300):
        response = client.get(path)
        if response.status_code != 202:
            return response
        assert "X-Progress" in response.headers
        time.sleep(0.05)
    raise AssertionError("the ingestion did not finish")


def test_http_ingest_async(database_url: str) -> None:
    app = make_app(database_url, vcf_async_bytes=0)
    ctx = _ctx(app)
    _patient(ctx)
    client = app.test_client()
    response = client.post("/fhir/Patient/p1/$ingest-vcf", data=VEP.read_bytes(), content_type="text/plain")
    assert response.status_code == 202, response.json
    status_url = response.headers["Content-Location"]
    assert status_url.startswith("http://testserver/fhir/Task/") and status_url.endswith("/$ingest-vcf-status")
    done = _poll(client, status_url)
    assert done.status_code == 200, done.json
    assert done.json["resourceType"] == "DiagnosticReport"
    assert done.headers["Location"] == f"http://testserver/fhir/DiagnosticReport/{done.json['id']}"
    task = client.get(status_url.replace("http://testserver", "").removesuffix("/$ingest-vcf-status")).json
    assert task["status"] == "completed" and task["for"] == {"reference": "Patient/p1"}
    # a failure is answered by the status endpoint with the ingestion's error; nothing stored
    failing = client.post("/fhir/Patient/p1/$ingest-vcf", data=b"not a vcf\n", content_type="text/plain")
    assert failing.status_code == 202
    failed = _poll(client, failing.headers["Content-Location"])
    assert failed.status_code == 400
    assert "upload.vcf: line 1: not a VCF file" in failed.json["issue"][0]["diagnostics"]
    # a Task that is not an ingestion
    other = crud.create(ctx, "Task", {"resourceType": "Task", "status": "draft", "intent": "order"}).resource.id
    assert client.get(f"/fhir/Task/{other}/$ingest-vcf-status").status_code == 404
    app.extensions["bigmed"].store.close()


def test_capability_statement_lists_the_operations(client: Any) -> None:
    statement = client.get("/fhir/metadata").json
    by_type = {r["type"]: r for r in statement["rest"][0]["resource"]}
    observation_ops = {op["name"] for op in by_type["Observation"]["operation"]}
    assert "find-subject-variants" in observation_ops and "find-population-specific-variants" in observation_ops
    assert {"ingest-vcf", "call-pgx"} <= {op["name"] for op in by_type["Patient"]["operation"]}
    gene = next(p for p in by_type["Observation"]["searchParam"] if p["name"] == "gene")
    assert gene["definition"] == "http://bigmed.example/fhir/SearchParameter/observation-gene"


def test_count_records(tmp_path: Path) -> None:
    assert ingest.count_records(VEP) == 5
    gz = tmp_path / "x.vcf.gz"
    with gzip.open(gz, "wb") as out:
        out.write(VEP.read_bytes())
    assert ingest.count_records(gz) == 5
    shutil.copy(VEP, tmp_path / "copy.vcf")
    assert ingest.count_records(tmp_path / "copy.vcf") == 5
