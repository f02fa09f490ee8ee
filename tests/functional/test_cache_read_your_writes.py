"""Read-your-writes through the cache across two gunicorn worker processes sharing Redis.

Each round writes a new version and immediately reads it back (and searches for it) on fresh
connections, which gunicorn hands to either worker; a stale cached answer from the other worker
would show the previous version.
"""

from __future__ import annotations

import pytest
import requests

from tests.conftest import redis_url
from tests.functional.serverutil import running_server


@pytest.mark.slow
def test_read_your_writes_across_workers(database_url: str) -> None:
    with running_server(database_url, workers=2, REDIS_URL=redis_url()) as base:
        headers = {"Content-Type": "application/fhir+json", "Connection": "close"}
        hits = 0
        for version in range(1, 41):
            body = {"resourceType": "Patient", "id": "ryw", "name": [{"family": f"Gen{version}"}]}
            assert requests.put(f"{base}/fhir/Patient/ryw", json=body, headers=headers, timeout=10).ok
            for _ in range(3):  # read twice more: later reads may be served from the cache
                got = requests.get(f"{base}/fhir/Patient/ryw", headers={"Connection": "close"}, timeout=10)
                assert got.json()["meta"]["versionId"] == str(version), "a stale read"
                hits += got.headers.get("X-Cache") == "HIT"
                found = requests.get(
                    f"{base}/fhir/Patient",
                    params={"family": f"gen{version}"},
                    headers={"Connection": "close"},
                    timeout=10,
                ).json()
                assert [e["resource"]["id"] for e in found.get("entry", []) if e["search"]["mode"] == "match"] == [
                    "ryw"
                ], "a stale search"
        assert hits > 0, "the cache was never used"
