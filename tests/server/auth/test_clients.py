"""The client registry on both backends, and ``python -m server clients``."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from server.auth.clients import ClientError, add_client, get_client, list_clients, revoke_client
from server.cli import main
from tests.conftest import make_app
from tests.server.auth.authutil import ec_key, rsa_key


def test_registry_contract(database_url: str) -> None:
    app = make_app(database_url)
    store = app.extensions["bigmed"].store
    try:
        client = add_client(store, "a", scopes="system/Observation.read system/Patient.rs", jwks=rsa_key().jwks)
        assert client.active and client.scopes == "system/Observation.rs system/Patient.rs"
        add_client(
            store, "b", scopes="system/*.rs", jwks_url="https://b.example/jwks", patient="p1", purpose="research"
        )
        assert [c.client_id for c in list_clients(store)] == ["a", "b"]
        assert get_client(store, "b") is not None and get_client(store, "b").patient == "p1"  # type: ignore[union-attr]
        with pytest.raises(ClientError, match="already registered"):
            add_client(store, "a", scopes="system/*.rs", jwks=rsa_key().jwks)
        rotated = add_client(store, "a", scopes="system/Observation.rs", jwks=ec_key().jwks, replace=True)
        assert rotated.jwks == ec_key().jwks and rotated.scopes == "system/Observation.rs"
        assert revoke_client(store, "a") and not revoke_client(store, "a") and not revoke_client(store, "zz")
        with pytest.raises(ClientError, match="revoked"):
            add_client(store, "a", scopes="system/*.rs", jwks=rsa_key().jwks, replace=True)
        bad: list[dict[str, Any]] = [
            {"scopes": "system/*.rs"},  # no keys
            {"scopes": "system/*.rs", "jwks": rsa_key().jwks, "jwks_url": "https://x/jwks"},
            {"scopes": "nonsense", "jwks": rsa_key().jwks},
            {"scopes": "system/*.rs", "jwks": {"keys": [{"kty": "oct", "k": "c2VjcmV0"}]}},
            {"scopes": "system/*.rs", "jwks": rsa_key().jwks, "purpose": "marketing"},
            {"scopes": "system/Observation.rs?category=laboratory", "jwks": rsa_key().jwks},  # v2 query: refused
        ]
        for kwargs in bad:
            with pytest.raises(ClientError):
                add_client(store, "c", **kwargs)
        assert get_client(store, "c") is None
    finally:
        store.close()


def test_cli(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setenv("DATABASE_URL", f"sqlite:///{tmp_path}/cli.sqlite")
    jwks = tmp_path / "k.json"
    jwks.write_text(json.dumps(rsa_key().jwks))
    assert (
        main(["clients", "add", "--id", "ehr", "--jwks", str(jwks), "--scopes", "system/Patient.rs", "--patient", "p9"])
        == 0
    )
    assert main(["clients", "add", "--id", "ehr", "--jwks", str(jwks), "--scopes", "system/Patient.rs"]) == 1
    assert main(["clients", "list"]) == 0
    assert "ehr\tactive\ttreatment\t1 key(s), patient p9\tsystem/Patient.rs" in capsys.readouterr().out
    assert main(["clients", "revoke", "ehr"]) == 0
    assert main(["clients", "revoke", "ehr"]) == 1
