"""How every ``python -m server`` subcommand ends (server/cli.py ``_run``): errors, Ctrl-C, the store closed.

The subcommands' own work is tested with their features (tests/server/fhir/test_load.py …); here
the domain function is replaced by one that fails or is interrupted half-way.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from server import cli
from server.errors import NotFound
from server.fhir.load import LoadReport


@pytest.fixture
def closed(database_url: str, monkeypatch: pytest.MonkeyPatch) -> list[bool]:
    """Run the CLI on ``database_url``; the list records each app's store being closed."""
    monkeypatch.setenv("DATABASE_URL", database_url)
    seen: list[bool] = []
    real = cli.create_app

    def create_app(cfg: Any) -> Any:
        app = real(cfg)
        store = app.extensions["bigmed"].store
        close = store.close

        def closing() -> None:
            seen.append(True)
            close()

        store.close = closing
        return app

    monkeypatch.setattr(cli, "create_app", create_app)
    return seen


def test_interrupted_load_prints_what_was_done_and_exits_130(
    closed: list[bool], monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    def load(context: Any, paths: Any, *, report: LoadReport, **_: Any) -> LoadReport:
        report.files, report.created = 1, 3
        raise KeyboardInterrupt

    monkeypatch.setattr(cli, "load", load)
    assert cli.main(["load", "--quiet", str(tmp_path)]) == 130
    out, err = capsys.readouterr()
    assert out == ""
    assert "3 created" in err and "Interrupted: what was committed stays" in err
    assert closed == [True]


def test_interrupted_vcf_ingest_says_nothing_was_stored(
    closed: list[bool], monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    def ingest_vcf(*_: Any, **__: Any) -> Any:
        raise KeyboardInterrupt

    monkeypatch.setattr(cli, "ingest_vcf", ingest_vcf)
    assert cli.main(["ingest-vcf", str(tmp_path / "x.vcf"), "--patient", "p1", "--quiet"]) == 130
    assert capsys.readouterr().err.strip() == "ingest-vcf: interrupted; nothing was stored"
    assert closed == [True]


def test_typed_error_is_one_line_on_stderr_with_its_exit_code(
    closed: list[bool], monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    def seed(*_: Any, **__: Any) -> Any:
        raise NotFound("Patient/p9 is not known")

    monkeypatch.setattr(cli.sandbox, "seed", seed)
    assert cli.main(["seed", "--folder", str(tmp_path), "--quiet"]) == 1
    out, err = capsys.readouterr()
    assert out == "" and err.strip() == "seed: Patient/p9 is not known"
    assert cli.main(["reindex", "--type", "Nope", "--quiet"]) == 2
    assert capsys.readouterr().err.strip() == "reindex: unknown resource type 'Nope'"
    assert closed == [True, True]


def test_unexpected_error_is_not_swallowed_and_the_store_is_closed(
    closed: list[bool], monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    def load(*_: Any, **__: Any) -> Any:
        raise RuntimeError("bug")

    monkeypatch.setattr(cli, "load", load)
    with pytest.raises(RuntimeError, match="bug"):
        cli.main(["load", "--quiet", str(tmp_path)])
    assert closed == [True]
