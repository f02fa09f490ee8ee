"""Bad input gets a clear OperationOutcome, never a crash, and writes nothing (DESIGN rule 5)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import make_app

FHIR = "application/fhir+json"
PATIENT = b'{"resourceType":"Patient","name":[{"family":"X"}]}'


@pytest.fixture
def small_app(tmp_path: Path) -> Iterator[Any]:
    app = make_app(f"sqlite:///{tmp_path}/e.sqlite", max_body_bytes=4096, max_json_depth=20)
    yield app
    app.extensions["bigmed"].store.close()


def _deep(levels: int) -> bytes:
    return b'{"resourceType":"Patient","extension":' + b"[" * levels + b"]" * levels + b"}"


BAD_REQUESTS = [
    # (method, path, body, content type, status, words in the diagnostics)
    ("POST", "/fhir/Patient", b'{"resourceType": "Patient",', FHIR, 400, "not valid JSON"),
    ("POST", "/fhir/Patient", b"\xff\xfe", FHIR, 400, "UTF-8"),
    ("POST", "/fhir/Patient", b"", FHIR, 400, "empty"),
    ("POST", "/fhir/Patient", PATIENT, "text/plain", 415, "Expected FHIR JSON"),
    ("POST", "/fhir/Patient", PATIENT, "application/fhir+xml", 415, "Expected FHIR JSON"),
    ("POST", "/fhir/Patient", b"x" * 5000, FHIR, 413, "larger than"),
    ("POST", "/fhir/Patient", _deep(30), FHIR, 400, "deeper"),
    ("POST", "/fhir/Patient", _deep(2000), FHIR, 400, "nest"),
    ("POST", "/fhir/Patient", b"[1,2]", FHIR, 400, "JSON object"),
    (
        "POST",
        "/fhir/Patient",
        b'{"resourceType":"Observation","status":"final","code":{}}',
        FHIR,
        400,
        "does not match",
    ),
    (
        "POST",
        "/fhir/Patient",
        b'{"resourceType":"Patient","birthDate":"1970-13-01","foo":1}',
        FHIR,
        422,
        "Unknown element 'foo'",
    ),
    ("POST", "/fhir/Foo", b'{"resourceType":"Foo"}', FHIR, 404, "Unknown resource type"),
    ("GET", "/fhir/Foo/1", b"", FHIR, 404, "Unknown resource type"),
    ("GET", "/fhir/Patient/nope", b"", FHIR, 404, "not known"),
    ("PUT", "/fhir/Patient/bad id!", PATIENT, FHIR, 400, "Invalid resource id"),
    (
        "PUT",
        "/fhir/Patient/" + "a" * 65,
        b'{"resourceType":"Patient","id":"' + b"a" * 65 + b'"}',
        FHIR,
        400,
        "Invalid resource id",
    ),
    ("GET", "/fhir/Patient/1/_history/x", b"", FHIR, 404, "no version"),
    ("GET", "/nowhere", b"", FHIR, 404, "Not found"),
    ("GET", "/fhir/Patient/1/foo/bar/baz", b"", FHIR, 404, "No FHIR interaction"),
    ("PUT", "/healthz", b"{}", FHIR, 405, "not allowed"),
    ("GET", "/fhir/Patient/_history?_count=abc", b"", FHIR, 400, "_count"),
    ("GET", "/fhir/Patient?birthdate=notadate", b"", FHIR, 400, "birthdate"),
    ("PUT", "/fhir/Patient/p1", PATIENT.replace(b"{", b'{"id":"p1",', 1), FHIR, 400, None),
    ("POST", "/fhir", PATIENT, FHIR, 400, "transaction or batch"),
    ("POST", "/fhir", b'{"resourceType":"Bundle","type":"collection"}', FHIR, 400, "transaction or batch"),
    (
        "POST",
        "/fhir",
        b'{"resourceType":"Bundle","type":"transaction","entry":[{"request":{"method":"POST","url":"Patient"},'
        b'"resource":{"resourceType":"Patient","id":"x"}},{"request":{"method":"POST","url":"Patient"},'
        b'"resource":{"resourceType":"Patient","gender":7}}]}',
        FHIR,
        422,
        "Bundle.entry[1]",
    ),
]


@pytest.mark.parametrize(("method", "path", "body", "ctype", "status", "words"), BAD_REQUESTS)
def test_every_error_is_an_operation_outcome(
    small_app: Any, method: str, path: str, body: bytes, ctype: str, status: int, words: str | None
) -> None:
    client = small_app.test_client()
    headers = {"Content-Type": ctype}
    if path == "/fhir/Patient/p1":
        headers["If-Match"] = "garbage"
    resp = client.open(path, method=method, data=body, headers=headers)
    assert resp.status_code == status, resp.data[:300]
    assert resp.content_type.startswith(FHIR)
    outcome = resp.get_json()
    assert outcome["resourceType"] == "OperationOutcome"
    assert outcome["issue"] and all(i["severity"] in ("error", "fatal") for i in outcome["issue"])
    if words:
        assert words in " ".join(i["diagnostics"] for i in outcome["issue"])
    assert small_app.extensions["bigmed"].store.count_history() == 0, "a failed request wrote data"


def test_validation_issues_have_locations(small_app: Any) -> None:
    body = b'{"resourceType":"Patient","birthDate":"1970-13-01","foo":1,"name":[{"family":["x"]}]}'
    resp = small_app.test_client().post("/fhir/Patient", data=body, headers={"Content-Type": FHIR})
    assert resp.status_code == 422
    expressions = {e for i in resp.get_json()["issue"] for e in i.get("expression", [])}
    assert {"Patient.birthDate", "Patient.foo", "Patient.name[0].family"} <= expressions


def test_unexpected_error_is_500_without_internals(small_app: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    store = small_app.extensions["bigmed"].store

    def explode(*_: Any) -> Any:
        raise RuntimeError("SELECT secret FROM table")

    monkeypatch.setattr(store, "read", explode)
    resp = small_app.test_client().get("/fhir/Patient/x")
    assert resp.status_code == 500
    text = resp.get_data(as_text=True)
    assert "OperationOutcome" in text and "SELECT" not in text and "Traceback" not in text
