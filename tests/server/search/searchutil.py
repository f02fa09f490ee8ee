"""Helpers shared by the search tests: loading resources and reading searchset Bundles (not tests)."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import pytest

from tests.conftest import make_app, postgres_url

FHIR = "application/fhir+json"


@contextmanager
def loaded_app(backend: str, folder: Any, resources: list[dict[str, Any]]) -> Iterator[Any]:
    """An app on ``backend`` (``sqlite`` in ``folder``, or the test PostgreSQL) holding ``resources``."""
    app = make_app(f"sqlite:///{folder}/test.sqlite" if backend == "sqlite" else postgres_url())
    try:
        put_all(app.test_client(), resources)
        yield app
    finally:
        app.extensions["bigmed"].store.close()


def backend_fixtures(resources: list[dict[str, Any]], folder: str) -> tuple[Any, Any]:
    """Pytest fixtures ``loaded`` (an app holding ``resources``, once per module on each backend)
    and ``client`` (its test client): ``loaded, client = backend_fixtures(RESOURCES, "name")``."""

    @pytest.fixture(scope="module", params=["sqlite", "postgresql"])
    def loaded(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
        with loaded_app(request.param, tmp_path_factory.mktemp(folder), resources) as app:
            yield app

    @pytest.fixture
    def client(loaded: Any) -> Any:
        return loaded.test_client()

    return loaded, client


def put_all(client: Any, resources: list[dict[str, Any]]) -> None:
    for res in resources:
        resp = client.put(f"/fhir/{res['resourceType']}/{res['id']}", json=res, headers={"Content-Type": FHIR})
        assert resp.status_code in (200, 201), resp.get_json()


def bundle(client: Any, query: str, status: int = 200, **headers: str) -> dict[str, Any]:
    query = query.removeprefix("http://testserver")
    path = query if query.startswith("/") else f"/fhir/{query}"
    resp = client.get(path, headers=headers)
    assert resp.status_code == status, resp.get_json()
    body: dict[str, Any] = resp.get_json()
    return body


def entries(b: dict[str, Any], mode: str = "match") -> list[str]:
    """``Type/id`` of the entries of one search mode, in Bundle order."""
    return [
        f"{e['resource']['resourceType']}/{e['resource']['id']}"
        for e in b.get("entry", [])
        if e["search"]["mode"] == mode
    ]


def ids(b: dict[str, Any], mode: str = "match") -> list[str]:
    return [e.split("/", 1)[1] for e in entries(b, mode)]


def link(b: dict[str, Any], relation: str) -> str | None:
    return next((x["url"] for x in b.get("link", []) if x["relation"] == relation), None)


def warnings(b: dict[str, Any]) -> list[str]:
    return [
        issue["diagnostics"]
        for e in b.get("entry", [])
        if e["search"]["mode"] == "outcome"
        for issue in e["resource"]["issue"]
    ]
