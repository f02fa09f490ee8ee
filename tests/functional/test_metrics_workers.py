"""``/metrics`` under gunicorn with two workers: one scrape sums every worker (prometheus multiprocess).

Requests are sent concurrently to sync workers, so both workers answer some; every scrape, whichever
worker answers it, must then count all of them.
"""

from __future__ import annotations

import re
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest
import requests

from tests.functional.serverutil import running_server

READS = 40


def _count(text: str, labels: str) -> float:
    match = re.search(rf"^bigmed_requests_total\{{{re.escape(labels)}\}} (\S+)$", text, re.MULTILINE)
    return float(match.group(1)) if match else 0.0


def _drive(base: str) -> None:
    headers = {"Content-Type": "application/fhir+json", "Connection": "close"}
    body: dict[str, Any] = {"resourceType": "Patient", "id": "mw", "name": [{"family": "Metrics"}]}
    assert requests.put(f"{base}/fhir/Patient/mw", json=body, headers=headers, timeout=10).ok

    def read(_: int) -> int:
        return requests.get(f"{base}/fhir/Patient/mw", headers={"Connection": "close"}, timeout=10).status_code

    with ThreadPoolExecutor(4) as pool:
        assert set(pool.map(read, range(READS))) == {200}


def _scrapes(base: str, n: int = 8) -> list[str]:
    return [requests.get(f"{base}/metrics", headers={"Connection": "close"}, timeout=10).text for _ in range(n)]


@pytest.mark.slow
def test_one_scrape_sees_every_worker(sqlite_url: str) -> None:
    with running_server(sqlite_url, workers=2) as base:  # serve makes a fresh multiprocess directory itself
        _drive(base)
        for text in _scrapes(base):
            assert _count(text, 'interaction="fhir.read",status="2xx"') == READS
            assert _count(text, 'interaction="fhir.update",status="2xx"') == 1


@pytest.mark.slow
def test_given_directory_holds_one_file_per_worker(sqlite_url: str, tmp_path: Path) -> None:
    directory = tmp_path / "prom"
    directory.mkdir()
    (directory / "counter_1.db").write_bytes(b"stale file of an earlier run")
    with running_server(sqlite_url, workers=2, PROMETHEUS_MULTIPROC_DIR=str(directory)) as base:
        _drive(base)
        texts = _scrapes(base)
        pids = {p.stem.rsplit("_", 1)[1] for p in directory.glob("counter_*.db")}
        assert "1" not in pids, "the stale file of an earlier run was not removed"
        assert len(pids) == 2, f"expected both workers to have answered, files of {sorted(pids)}"
    for text in texts:
        assert _count(text, 'interaction="fhir.read",status="2xx"') == READS
    assert directory.is_dir()  # a directory given by the operator is theirs: kept
