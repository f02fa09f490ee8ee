"""``/metrics`` and the ``Server-Timing`` header: server-side time of every request, per interaction."""

from __future__ import annotations

import re
from typing import Any

from tests.conftest import make_app

FHIR = "application/fhir+json"


def _sample(text: str, name: str, labels: str) -> float:
    match = re.search(rf"^{re.escape(name)}\{{{re.escape(labels)}\}} (\S+)$", text, re.MULTILINE)
    return float(match.group(1)) if match else 0.0


def test_every_answer_carries_its_server_time(sqlite_url: str) -> None:
    app = make_app(sqlite_url)
    client = app.test_client()
    try:
        created = client.post(
            "/fhir/Patient", json={"resourceType": "Patient"}, headers={"Content-Type": FHIR, "Accept": FHIR}
        )
        for resp in (created, client.get("/fhir/Patient"), client.get("/fhir/Nope/1"), client.get("/healthz")):
            timing = resp.headers["Server-Timing"]
            match = re.fullmatch(r"app;dur=(\d+\.\d{3})", timing)
            assert match, timing
            assert 0 < float(match.group(1)) < 10_000
    finally:
        app.extensions["bigmed"].store.close()


def test_requests_are_counted_and_timed_per_interaction(sqlite_url: str) -> None:
    app = make_app(sqlite_url)
    client: Any = app.test_client()
    try:
        before = client.get("/metrics").get_data(as_text=True)
        pid = client.post("/fhir/Patient", json={"resourceType": "Patient"}, headers={"Content-Type": FHIR}).get_json()[
            "id"
        ]
        for _ in range(3):
            assert client.get(f"/fhir/Patient/{pid}").status_code == 200
        assert client.get("/fhir/Patient/missing").status_code == 404
        text = client.get("/metrics").get_data(as_text=True)

        def delta(name: str, labels: str) -> float:
            return _sample(text, name, labels) - _sample(before, name, labels)

        assert delta("bigmed_requests_total", 'interaction="fhir.read",status="2xx"') == 3
        assert delta("bigmed_requests_total", 'interaction="fhir.read",status="4xx"') == 1
        assert delta("bigmed_requests_total", 'interaction="fhir.create",status="2xx"') == 1
        assert delta("bigmed_request_seconds_count", 'interaction="fhir.read"') == 4
        # the buckets resolve the cache's 2 ms goal; every timed request falls in +Inf
        assert 'bigmed_request_seconds_bucket{interaction="fhir.read",le="0.002"}' in text
        assert delta("bigmed_request_seconds_bucket", 'interaction="fhir.read",le="+Inf"') == 4
        assert "metrics.metrics" not in text  # scrapes do not time themselves
    finally:
        app.extensions["bigmed"].store.close()
