"""Concurrent conditional creates with the same criteria create exactly one resource.

A real server (gunicorn, several worker processes) on SQLite and on PostgreSQL receives
parallel ``POST`` requests with the same ``If-None-Exist``; afterwards exactly one Patient has
the identifier, and every response names that one.
"""

from __future__ import annotations

from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor

import pytest
import requests

from tests.functional.serverutil import running_server


@pytest.fixture
def server(database_url: str) -> Iterator[str]:
    with running_server(database_url, workers=4) as base:
        yield base


@pytest.mark.slow
def test_parallel_conditional_creates_make_one_resource(server: str) -> None:
    body = {
        "resourceType": "Patient",
        "identifier": [{"system": "urn:oid:2.16.578.1.12.4.1.4.1", "value": "13097248022"}],
    }
    headers = {
        "Content-Type": "application/fhir+json",
        "If-None-Exist": "identifier=urn:oid:2.16.578.1.12.4.1.4.1|13097248022",
    }

    def post(_: int) -> requests.Response:
        return requests.post(f"{server}/fhir/Patient", json=body, headers=headers, timeout=30)

    statuses: list[int] = []
    ids: set[str] = set()
    for _round in range(3):
        with ThreadPoolExecutor(max_workers=16) as pool:
            responses = list(pool.map(post, range(32)))
        statuses += [r.status_code for r in responses]
        ids |= {r.json()["id"] for r in responses}
    assert set(statuses) <= {200, 201}, statuses
    assert statuses.count(201) == 1, f"{statuses.count(201)} creates for one set of criteria"
    assert len(ids) == 1, f"{len(ids)} different Patients were named"
    found = requests.get(
        f"{server}/fhir/Patient",
        params={"identifier": "urn:oid:2.16.578.1.12.4.1.4.1|13097248022", "_total": "accurate"},
        timeout=10,
    ).json()
    assert found["total"] == 1
