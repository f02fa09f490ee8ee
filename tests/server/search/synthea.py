"""Loading the Synthea sample for tests (not a test): 100 transaction bundles whose entries refer
to each other by ``urn:uuid`` fullUrls. Without the transaction interaction, the references are
rewritten to ``Type/id`` (every fullUrl here is ``urn:uuid:<the resource's id>``) and each
resource is written through :func:`server.fhir.crud.write_in_tx` (the real write path: stamp,
extract index rows, store; no validation), a few hundred per store transaction."""

from __future__ import annotations

import io
import json
import tarfile
from pathlib import Path
from typing import Any

from server.fhir import crud
from server.fhir.context import FhirContext

SYNTHEA = Path(__file__).resolve().parents[4] / "shared" / "data" / "synthea" / "smart-sample-100.tgz"


def read_resources(path: Path = SYNTHEA) -> list[dict[str, Any]]:
    """Every entry's resource, in bundle order, references rewritten from urn:uuid to Type/id."""
    resources: list[dict[str, Any]] = []
    urls: dict[str, str] = {}
    with tarfile.open(path) as tar:
        for member in sorted(tar.getmembers(), key=lambda m: m.name):
            fh = tar.extractfile(member) if member.isfile() and member.name.endswith(".json") else None
            if fh is None:
                continue
            bundle = json.load(io.TextIOWrapper(fh, encoding="utf-8"))
            for entry in bundle["entry"]:
                res = entry["resource"]
                urls[entry["fullUrl"]] = f"{res['resourceType']}/{res['id']}"
                resources.append(res)
    for res in resources:
        _rewrite(res, urls)
    return resources


def _rewrite(node: Any, urls: dict[str, str]) -> None:
    if isinstance(node, dict):
        for key, value in node.items():
            if key == "reference" and isinstance(value, str):
                node[key] = urls.get(value, value)
            else:
                _rewrite(value, urls)
    elif isinstance(node, list):
        for item in node:
            _rewrite(item, urls)


def load(ctx: FhirContext, resources: list[dict[str, Any]], batch: int = 400) -> None:
    """PUT every resource (a repeated id becomes a new version), ``batch`` per transaction."""
    for start in range(0, len(resources), batch):
        with ctx.store.transaction() as tx:
            for res in resources[start : start + batch]:
                body = json.loads(json.dumps(res))  # write_in_tx stamps meta on its argument
                crud.write_in_tx(ctx, tx, body["resourceType"], body["id"], body, "PUT")
    ctx.store.analyze()  # as autovacuum (PostgreSQL) would soon after a bulk load
