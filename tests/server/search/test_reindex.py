"""``python -m server reindex``: index rows recomputed from the stored resources, on both backends."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest

from server.cli import main
from server.search.registry import Registry, default_registry
from server.search.reindex import count_current, reindex
from tests.server.search.searchdata import RESOURCES
from tests.server.search.searchutil import bundle, ids, put_all

EXTRA = {
    "resourceType": "SearchParameter",
    "url": "http://example.org/SearchParameter/patient-family-x",
    "code": "family-x",
    "base": ["Patient"],
    "type": "string",
    "expression": "Patient.name.family",
}


def test_reindex_follows_the_registry(app: Any, tmp_path: Path) -> None:
    client = app.test_client()
    put_all(client, RESOURCES)
    store = app.extensions["bigmed"].store
    (tmp_path / "sp.json").write_text(json.dumps(EXTRA))
    custom = Registry.load(extra_paths=[tmp_path])
    rows = "SELECT COUNT(*) FROM idx_string WHERE param = 'family-x'"
    assert store.query(rows)[0][0] == 0
    seen: list[int] = []
    assert reindex(store, custom, "Patient", batch=2, progress=seen.append) == 3 == count_current(store, "Patient")
    assert seen == [2, 1] and store.query(rows)[0][0] == 3
    client.delete("/fhir/Patient/kari")
    assert reindex(store, default_registry()) == count_current(store) == len(RESOURCES) - 1
    assert store.query(rows)[0][0] == 0
    assert sorted(ids(bundle(client, "Observation?subject:Patient.name=nord"))) == ["bp1", "hb1"]
    assert ids(bundle(client, "Observation?component-code-value-quantity=8480-6$gt140")) == ["bp2"]


def test_reindex_with_worker_processes(app: Any) -> None:
    client = app.test_client()
    put_all(client, RESOURCES)
    store = app.extensions["bigmed"].store
    before = store.query("SELECT param, code, grp FROM idx_token ORDER BY rid, param, code, grp")
    assert reindex(store, default_registry(), batch=3, workers=2) == len(RESOURCES)
    assert store.query("SELECT param, code, grp FROM idx_token ORDER BY rid, param, code, grp") == before
    assert ids(bundle(client, "Observation?component-code-value-quantity=8480-6$gt140")) == ["bp2"]


def test_reindex_command(app: Any, database_url: str, monkeypatch: pytest.MonkeyPatch, capsys: Any) -> None:
    put_all(app.test_client(), RESOURCES)
    monkeypatch.setenv("DATABASE_URL", database_url)
    assert main(["reindex", "--type", "Observation", "--quiet"]) == 0
    assert "reindexed 5 of 5 current Observation" in capsys.readouterr().out
    assert main(["reindex", "--type", "Nope", "--quiet"]) == 2


def test_reindex_drops_the_rows_an_older_server_wrote_for_union_parameters(app: Any) -> None:
    client = app.test_client()
    put_all(client, RESOURCES)
    store = app.extensions["bigmed"].store
    combo = "SELECT COUNT(*) FROM idx_token WHERE param = 'combo-code'"
    full = default_registry()
    # as before union parameters: a registry in which combo-code is not one (a second base makes
    # it no union) writes combo-code rows
    older = Registry(
        [replace(p, base=(*p.base, "Basic")) if p.code == "combo-code" else p for p in full.all()], full.types
    )
    assert "combo-code" not in older.unions("Observation")
    assert reindex(store, older, "Observation") == 5
    assert store.query(combo)[0][0] > 0
    found = sorted(ids(bundle(client, "Observation?combo-code=8480-6")))
    assert found == ["bp1", "bp2"]
    assert reindex(store, full, "Observation") == 5
    assert store.query(combo)[0][0] == 0
    assert sorted(ids(bundle(client, "Observation?combo-code=8480-6"))) == found
