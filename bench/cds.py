"""CDS Hooks benchmark: ``pgx-order-sign`` with full prefetch and without (prints figures; not a test).

The server runs as in production (``python -m server serve --workers N``: gunicorn), on SQLite (and
PostgreSQL with ``--pg-url`` when reachable). One Patient is seeded with CYP2C19/DPYD/SLCO1B1
TherapeuticImplication Observations and an ACS Condition. Two cases, each ``--requests`` order-sign
calls with a clopidogrel order (a critical card comes back) from ``--concurrency`` client threads:

``prefetch``     every prefetch key sent by the client (the service reads nothing)
``no-prefetch``  no prefetch, ``fhirServer`` = this server: the service searches its own store
                 (TherapeuticImplications, Conditions, Procedures, the Patient)

Each request carries its own ES384 JWT (signed before timing with the public sandbox key, trusted
with ``BIGMED_AUTH=open``; unique ``jti``), so JWT verification and the replay check are measured.
Figures: req/s, p50/p95/p99 in ms as the client sees them (gunicorn's queueing included). Goals
(GitHub issue 7): p95 <= 50 ms with prefetch, <= 150 ms without.

    .venv/bin/python bench/cds.py [--requests 2000] [--concurrency 8] [--workers 2] [--pg-url URL]
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import threading
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import requests

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from _common import Server, free_port, serve_argv  # noqa: E402  # bench/ is the script's folder

from server.cds.samples import client_jwt, hook_request, searchset, therapeutic_implication  # noqa: E402

SANDBOX_KEY = ROOT.parent / "shared" / "data" / "cds-hooks" / "sandbox-keys" / "ecprivkey.pem"
SERVICE = "/cds-services/pgx-order-sign"


def implication(gene: str, phenotype: str, score: float | None = None) -> dict[str, Any]:
    return therapeutic_implication(gene, phenotype, score, patient="bench")


PATIENT = {"resourceType": "Patient", "id": "bench", "name": [{"family": "Bench", "given": ["Cds"]}]}
CONDITION = {
    "resourceType": "Condition",
    "id": "bench-acs",
    "subject": {"reference": "Patient/bench"},
    "code": {
        "coding": [{"system": "http://snomed.info/sct", "code": "394659003", "display": "Acute coronary syndrome"}]
    },
}
OBSERVATIONS = [
    implication("CYP2C19", "Poor Metabolizer"),
    implication("DPYD", "Intermediate Metabolizer", 1.5),
    implication("SLCO1B1", "Normal Function"),
]
ORDER = {
    "resourceType": "MedicationRequest",
    "id": "mr-bench",
    "status": "draft",
    "intent": "order",
    "medicationCodeableConcept": {
        "coding": [
            {
                "system": "http://www.nlm.nih.gov/research/umls/rxnorm",
                "code": "309362",
                "display": "Clopidogrel 75 MG Oral Tablet",
            }
        ]
    },
    "subject": {"reference": "Patient/bench"},
}


def hook_body(base: str, prefetch: bool) -> bytes:
    if prefetch:
        data = {
            "patient": PATIENT,
            "pgx": searchset(*OBSERVATIONS),
            "conditions": searchset(CONDITION),
            "procedures": searchset(),
        }
        body = hook_request("order-sign", [ORDER], data, patient="bench")
    else:
        body = hook_request("order-sign", [ORDER], patient="bench", fhirServer=f"{base}/fhir")
    return json.dumps(body).encode()


def tokens(base: str, n: int) -> list[str]:
    key = SANDBOX_KEY.read_bytes()
    return [client_jwt(base + SERVICE, key, ttl=3600) for _ in range(n)]


def percentile(values: Sequence[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))] if ordered else float("nan")


def run_case(base: str, body: bytes, jwts: list[str], concurrency: int) -> tuple[list[float], int, float]:
    latencies: list[float] = []
    errors = [0]
    lock = threading.Lock()
    queue = list(reversed(jwts))

    def worker() -> None:
        session = requests.Session()
        while True:
            with lock:
                if not queue:
                    return
                jwt = queue.pop()
            started = time.perf_counter()
            try:
                resp = session.post(
                    base + SERVICE,
                    data=body,
                    headers={"Content-Type": "application/json", "Authorization": f"Bearer {jwt}"},
                    timeout=30,
                )
                ok = resp.status_code == 200 and resp.json()["cards"][0]["indicator"] == "critical"
            except (requests.RequestException, ValueError, KeyError, IndexError):
                ok = False
            elapsed = time.perf_counter() - started
            with lock:
                latencies.append(elapsed)
                if not ok:
                    errors[0] += 1

    threads = [threading.Thread(target=worker) for _ in range(concurrency)]
    started = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return latencies, errors[0], time.perf_counter() - started


def serve(database_url: str, port: int, workers: int, log: Path) -> Server:
    env = {
        **os.environ,
        "DATABASE_URL": database_url,
        "BIGMED_BASE_URL": f"http://127.0.0.1:{port}",
        "BIGMED_AUTH": "open",
        "BIGMED_LOG_LEVEL": "WARNING",
        "BIGMED_RATE_LIMIT": "0",
        "BIGMED_AUDIT": "on",
    }
    env.pop("REDIS_URL", None)
    server = Server("CDS", serve_argv(port, workers), env, port, log)
    try:
        server.wait_healthy(60)
    except BaseException:
        server.stop()
        raise
    return server


def seed(base: str) -> None:
    headers = {"Content-Type": "application/fhir+json"}
    resources: list[dict[str, Any]] = [PATIENT, CONDITION, *OBSERVATIONS]
    for resource in resources:
        url = f"{base}/fhir/{resource['resourceType']}/{resource['id']}"
        resp = requests.put(url, data=json.dumps(resource), headers=headers, timeout=30)
        resp.raise_for_status()


def bench_backend(label: str, database_url: str, args: argparse.Namespace, tmp: Path) -> list[tuple[Any, ...]]:
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    server = serve(database_url, port, args.workers, tmp / f"server-{label}.log")
    rows = []
    try:
        seed(base)
        for case, prefetch in (("prefetch", True), ("no-prefetch", False)):
            body = hook_body(base, prefetch)
            run_case(base, body, tokens(base, args.warmup), args.concurrency)  # warm-up
            latencies, errors, seconds = run_case(base, body, tokens(base, args.requests), args.concurrency)
            rows.append(
                (
                    label,
                    case,
                    len(latencies) / seconds,
                    percentile(latencies, 0.50) * 1000,
                    percentile(latencies, 0.95) * 1000,
                    percentile(latencies, 0.99) * 1000,
                    errors,
                )
            )
            print(f"  {label} {case}: done", flush=True)
    finally:
        server.stop()
    return rows


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--requests", type=int, default=2000)
    parser.add_argument("--warmup", type=int, default=200)
    parser.add_argument("--concurrency", type=int, default=8)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--pg-url", default=None, help="also run on this PostgreSQL (schema bigmed_cds_bench)")
    args = parser.parse_args()
    if not SANDBOX_KEY.exists():
        print(f"needs the sandbox key {SANDBOX_KEY}", file=sys.stderr)
        return 1
    rows: list[tuple[Any, ...]] = []
    with tempfile.TemporaryDirectory(prefix="bigmed-cds-bench-") as folder:
        tmp = Path(folder)
        rows += bench_backend("SQLite", f"sqlite:///{tmp}/bench.sqlite", args, tmp)
        if args.pg_url:
            import psycopg

            schema = "bigmed_cds_bench"
            try:
                with psycopg.connect(args.pg_url, autocommit=True, connect_timeout=3) as conn:
                    conn.execute(f"DROP SCHEMA IF EXISTS {schema} CASCADE")
                    conn.execute(f"CREATE SCHEMA {schema}")
            except psycopg.Error as exc:
                print(f"PostgreSQL skipped: {exc}", file=sys.stderr)
            else:
                sep = "&" if "?" in args.pg_url else "?"
                try:
                    rows += bench_backend(
                        "PostgreSQL", f"{args.pg_url}{sep}options=-csearch_path%3D{schema}", args, tmp
                    )
                finally:
                    with psycopg.connect(args.pg_url, autocommit=True) as conn:
                        conn.execute(f"DROP SCHEMA IF EXISTS {schema} CASCADE")
    print(
        f"\npgx-order-sign, {args.requests} requests, {args.concurrency} clients, gunicorn {args.workers} workers "
        f"(load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} cores)"
    )
    print(f"{'backend':<11} {'case':<12} {'req/s':>7} {'p50 ms':>7} {'p95 ms':>7} {'p99 ms':>7} {'errors':>6}  goal")
    for backend, case, rps, p50, p95, p99, errors in rows:
        goal = 50 if case == "prefetch" else 150
        verdict = "met" if p95 <= goal else "NOT met"
        figures = f"{rps:>7.0f} {p50:>7.1f} {p95:>7.1f} {p99:>7.1f} {errors:>6}"
        print(f"{backend:<11} {case:<12} {figures}  p95<={goal}: {verdict}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
