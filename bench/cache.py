"""Query cache benchmark: reads and searches uncached, warm in Redis, and with Redis down (prints figures; not a test).

What it measures
    For each storage backend (SQLite, then PostgreSQL) the script starts the real server
    (``python -m server serve --workers 2 --threads T``: gunicorn gthread, keep-alive), seeds it through
    ``POST /fhir`` transaction Bundles (``--patients`` Patients, each with 10 LOINC Observations dated
    2018–2023 and 2 Encounters; fixed ids, so every URL below matches something), runs ``ANALYZE``
    through the store (PostgreSQL's autovacuum would within a minute; ``--no-analyze`` measures the blind
    plans right after a load) and drives this mix, every kind with 6–40 distinct URLs in rotation
    (http://hl7.org/fhir/R4/search.html):

    ``read``        Patient/{id}
    ``token``       Observation?code=http://loinc.org|{code}
    ``date``        Observation?date=ge{Y}-01-01&date=lt{Y+1}-01-01
    ``reference``   Observation?subject=Patient/{id}
    ``chain``       Observation?subject:Patient.name={family}
    ``include``     Observation?code=http://loinc.org|{code}&_include=Observation:subject
    ``revinclude``  Patient?_id={id}&_revinclude=Observation:subject
    ``sort``        Observation?code=http://loinc.org|{code}&_sort=-date
    ``has``         Patient?_has:Observation:subject:code=http://loinc.org|{code}

    under four conditions, three servers on the same database, the conditions of a kind measured back to
    back in ``--rounds`` alternating rounds (A B C D, D C B A) so that drifting load hits them alike (each
    kind: one unmeasured pass over its URLs per condition, then ``--requests`` measured):

    ``off``         server started with ``BIGMED_CACHE=off``: no cache code runs at all
    ``no-cache``    cache on (Redis), every request sends ``Cache-Control: no-cache``: the lookup is skipped,
                    the answer is computed and stored — the cost of a miss, the "uncached" baseline
    ``warm``        cache on (Redis), the same URLs again after the warm-up pass: hits (``X-Cache`` tallied)
    ``redis-down``  ``REDIS_URL=redis://127.0.0.1:1/0`` (nothing listens), ``BIGMED_CACHE_TIMEOUT_MS=20``:
                    Redis fails, ``/healthz`` should say degraded; each worker's in-process tier still answers
                    what that worker computed (the warm-up pass), the rest comes from the database without
                    waiting for Redis (after a failure it is left alone for a second)

    Goals: a warm search >= 5x faster than uncached with a server-side p50 <= 2 ms; a warm read >= 1.5x
    faster than an uncached read; Redis down costs little over ``off``.

How to run
    .venv/bin/python bench/cache.py                      # both backends (~3 min on 2 cores)
    .venv/bin/python bench/cache.py --quick              # smoke run (~2 min: small numbers, same code paths)
    .venv/bin/python bench/cache.py --backends sqlite --requests 1000 --conditions no-cache,warm --kinds read,chain
    .venv/bin/python bench/cache.py --audit off                                # without the AuditEvent per request

    Redis: ``--redis-url`` (default ``redis://127.0.0.1:6379/14``, a database no one else uses) is flushed
    before each backend and at the end. PostgreSQL: ``--pg-url`` (default
    ``postgresql://postgres@127.0.0.1:5432/test``); the bench drops and recreates its private schema
    ``bigmed_cachebench`` and drops it at the end; it is skipped with a message when unreachable. SQLite goes
    to a temporary directory. Every server is stopped on exit (Ctrl-C included); every loop is bounded
    in count and time (``--time-cap`` seconds per measured phase); all traffic goes to 127.0.0.1.
    The HTTP client, the server handling and the percentiles come from bench/rest.py.

How to read the figures
    ``req/s``, ``p50``, ``p99``  client side, ``--concurrency`` keep-alive connections (default 2, one per
                    worker, so latency is close to service time; more measure throughput under queueing).
    ``srv mean``/``srv p50``  server side, from ``/metrics`` (histogram ``bigmed_request_seconds``: from the
                    WSGI call into the app to the start of the response — routing, authorization, the audit
                    record, the view, every hook; not the network, gunicorn's parsing or the client; the same
                    figure each answer carries in ``Server-Timing``). ``serve --workers`` sums the workers in
                    prometheus-client's multiprocess files, so one scrape before and one after a phase give its
                    figures; "-" (with a note) when the timed count differs from the answers received. p50 is
                    interpolated within the buckets (0.1, 0.2, 0.3, 0.5, 0.75, 1, 1.5, 2, 3, 5 ms …): exact
                    enough to tell <= 2 ms.
    ``hit``         share of ``X-Cache: HIT`` among the answers that carried ``X-Cache``.
    ``rows``        entries in the first page of the kind's first URL (with ``_include``d ones), and its size:
                    what a hit has to ship.
    The ratio table: ``srv nc/w`` and ``srv off/w`` divide the server-side mean of ``no-cache`` and of ``off``
    by that of ``warm``; ``sp50 off/w`` the server-side p50 of ``off`` over that of ``warm`` (robust to the stalls
    a busy machine adds to means); ``p50 nc/w`` the client p50s; ``req/s w/nc`` the throughputs. A goal is judged on the
    smaller server-side speed-up (client p50 when no server figure) and the warm server-side p50.
    ``down/off`` is the server-side mean with Redis down over that with the cache off.
    Other jobs on the machine make absolute figures noisy (background load is printed); compare ratios.
"""

from __future__ import annotations

import argparse
import contextlib
import http.client
import json
import math
import multiprocessing
import os
import random
import shutil
import signal
import statistics
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import quote

sys.path.insert(0, str(Path(__file__).resolve().parent))

import rest  # bench/ is no package: its sibling is imported by path

HOST = rest.HOST
PG_SCHEMA = "bigmed_cachebench"
KINDS = ("read", "token", "date", "reference", "chain", "include", "revinclude", "sort", "has")
CONDITIONS = ("off", "no-cache", "warm", "redis-down")
DOWN_REDIS_URL = "redis://127.0.0.1:1/0"  # nothing listens on port 1
SEARCH_GOAL, SEARCH_P50_GOAL_MS, READ_GOAL = 5.0, 2.0, 1.5
LOINC = "http://loinc.org"
# (code, display, unit, low, high)
_CODES = [
    ("718-7", "Hemoglobin [Mass/volume] in Blood", "g/dL", 10.0, 17.0),
    ("2345-7", "Glucose [Mass/volume] in Serum or Plasma", "mg/dL", 70.0, 180.0),
    ("2160-0", "Creatinine [Mass/volume] in Serum or Plasma", "mg/dL", 0.5, 1.6),
    ("2093-3", "Cholesterol [Mass/volume] in Serum or Plasma", "mg/dL", 120.0, 280.0),
    ("8480-6", "Systolic blood pressure", "mm[Hg]", 95.0, 170.0),
    ("8462-4", "Diastolic blood pressure", "mm[Hg]", 55.0, 105.0),
    ("8867-4", "Heart rate", "/min", 48.0, 120.0),
    ("29463-7", "Body weight", "kg", 45.0, 130.0),
    ("8302-2", "Body height", "cm", 150.0, 200.0),
    ("39156-5", "Body mass index (BMI) [Ratio]", "kg/m2", 17.0, 38.0),
]
_LAB = {"718-7", "2345-7", "2160-0", "2093-3"}
YEARS = range(2018, 2024)


# -- data -----------------------------------------------------------------------------------------------


def patient_id(n: int) -> str:
    return f"cb-p{n:04d}"


def seed_bundles(patients: int, per_bundle: int) -> tuple[list[bytes], list[str]]:
    """Transaction Bundles (PUTs with fixed ids) and the family names of the Patients, in order."""
    rng = random.Random("cache-seed")
    bundles, families = [], []
    entries: list[dict[str, Any]] = []

    def put(resource: dict[str, Any]) -> None:
        url = f"{resource['resourceType']}/{resource['id']}"
        entries.append({"fullUrl": url, "resource": resource, "request": {"method": "PUT", "url": url}})

    for n in range(patients):
        pid = patient_id(n)
        patient = rest.make_patient(rng, n)
        patient["id"] = pid
        families.append(patient["name"][0]["family"])
        put(patient)
        for e in range(2):
            year = rng.choice(YEARS)
            day = f"{year}-{rng.randint(1, 12):02d}-{rng.randint(1, 28):02d}"
            put(
                {
                    "resourceType": "Encounter",
                    "id": f"cb-e{n:04d}-{e}",
                    "status": "finished",
                    "class": {"system": "http://terminology.hl7.org/CodeSystem/v3-ActCode", "code": "AMB"},
                    "subject": {"reference": f"Patient/{pid}"},
                    "period": {"start": f"{day}T08:00:00Z", "end": f"{day}T09:00:00Z"},
                }
            )
        for k, (code, display, unit, low, high) in enumerate(_CODES):
            when = (
                f"{rng.choice(YEARS)}-{rng.randint(1, 12):02d}-{rng.randint(1, 28):02d}T{rng.randint(7, 17):02d}:00:00Z"
            )
            category = "laboratory" if code in _LAB else "vital-signs"
            put(
                {
                    "resourceType": "Observation",
                    "id": f"cb-o{n:04d}-{k}",
                    "status": "final",
                    "category": [
                        {
                            "coding": [
                                {
                                    "system": "http://terminology.hl7.org/CodeSystem/observation-category",
                                    "code": category,
                                }
                            ]
                        }
                    ],
                    "code": {"coding": [{"system": LOINC, "code": code, "display": display}], "text": display},
                    "subject": {"reference": f"Patient/{pid}"},
                    "encounter": {"reference": f"Encounter/cb-e{n:04d}-{k % 2}"},
                    "effectiveDateTime": when,
                    "valueQuantity": {
                        "value": round(rng.uniform(low, high), 1),
                        "unit": unit,
                        "system": "http://unitsofmeasure.org",
                        "code": unit,
                    },
                }
            )
        if (n + 1) % per_bundle == 0 or n == patients - 1:
            bundle = {"resourceType": "Bundle", "type": "transaction", "entry": entries}
            bundles.append(rest.http_request("POST", "/fhir", rest.dumps(bundle)))
            entries = []
    return bundles, families


def _q(value: str) -> str:
    return quote(value, safe="|/:-")


def query_urls(patients: int, families: list[str]) -> dict[str, list[str]]:
    """The distinct URLs of each kind (rotated through by the measured requests)."""
    rng = random.Random("cache-urls")
    ids = [patient_id(n) for n in rng.sample(range(patients), min(patients, 40))]
    codes = [f"{LOINC}|{c[0]}" for c in _CODES]
    names = sorted(set(families))
    return {
        "read": [f"/fhir/Patient/{i}" for i in ids],
        "token": [f"/fhir/Observation?code={_q(c)}" for c in codes],
        "date": [f"/fhir/Observation?date=ge{y}-01-01&date=lt{y + 1}-01-01" for y in YEARS],
        "reference": [f"/fhir/Observation?subject=Patient/{i}" for i in ids],
        "chain": [f"/fhir/Observation?subject:Patient.name={_q(f)}" for f in names],
        "include": [f"/fhir/Observation?code={_q(c)}&_include=Observation:subject" for c in codes],
        "revinclude": [f"/fhir/Patient?_id={i}&_revinclude=Observation:subject" for i in ids],
        "sort": [f"/fhir/Observation?code={_q(c)}&_sort=-date" for c in codes],
        "has": [f"/fhir/Patient?_has:Observation:subject:code={_q(c)}" for c in codes],
    }


# -- server-side figures from /metrics --------------------------------------------------------------------


Hist = dict[str, float]  # "count", "sum" and "le=<bound>" cumulative bucket counts, summed over interactions


def _parse_metrics(text: str) -> Hist:
    """The request-time histogram of every interaction summed (the server sums its workers)."""
    hist: Hist = {}
    for line in text.splitlines():
        if not line.startswith("bigmed_request_seconds_"):
            continue
        series, _, value = line.rpartition(" ")
        name, _, labels = series.partition("{")
        try:
            v = float(value)
        except ValueError:
            continue
        if name == "bigmed_request_seconds_bucket":
            le = labels.split('le="', 1)[1].split('"', 1)[0] if 'le="' in labels else "+Inf"
            hist[f"le={le}"] = hist.get(f"le={le}", 0.0) + v
        elif name in ("bigmed_request_seconds_count", "bigmed_request_seconds_sum"):
            key = name.rsplit("_", 1)[1]
            hist[key] = hist.get(key, 0.0) + v
    return hist


def scrape(port: int, timeout: float) -> Hist | None:
    """The server's request-time histogram, or None when ``/metrics`` does not answer.

    ``python -m server serve --workers N`` keeps the figures of all workers in prometheus-client's
    multiprocess files, so any worker's answer covers them all. (A server that did not would be caught
    by the count check of :meth:`Measurement.kind`: timed requests must equal the answers received.)
    """
    conn = http.client.HTTPConnection(HOST, port, timeout=timeout)
    try:
        conn.request("GET", "/metrics", headers={"Connection": "close"})
        resp = conn.getresponse()
        text = resp.read().decode("utf-8", "replace")
    except (OSError, http.client.HTTPException):
        return None
    finally:
        conn.close()
    return _parse_metrics(text) if resp.status == 200 else None


@dataclass
class ServerSide:
    count: int
    mean_ms: float
    p50_ms: float


def hist_delta(before: Hist | None, after: Hist | None) -> Hist | None:
    if before is None or after is None:
        return None
    return {k: v - before.get(k, 0.0) for k, v in after.items()}


def server_side(delta: Hist | None) -> ServerSide | None:
    if delta is None:
        return None
    count = delta.get("count", 0.0)
    if count <= 0:
        return None
    buckets = sorted(
        (float(k[3:]), v) for k, v in delta.items() if k.startswith("le=") and k != "le=+Inf"
    )  # cumulative counts by upper bound; interpolate like Prometheus' histogram_quantile
    rank, lower, below, p50 = count / 2, 0.0, 0.0, float("nan")
    for bound, cumulative in buckets:
        if cumulative >= rank:
            width = cumulative - below
            p50 = lower + (bound - lower) * ((rank - below) / width if width > 0 else 1.0)
            break
        lower, below = bound, cumulative
    else:
        p50 = buckets[-1][0] if buckets else float("nan")  # in the +Inf bucket: the largest finite bound
    return ServerSide(int(count), delta.get("sum", 0.0) / count * 1000, p50 * 1000)


# -- measurement --------------------------------------------------------------------------------------------


@dataclass
class Result:
    backend: str
    condition: str
    kind: str
    row: rest.Row | None  # None when the kind failed in its warm-up pass (see ``failure``)
    server: ServerSide | None
    x_cache: dict[str, int] = field(default_factory=dict)
    rows_first_page: int | None = None
    bytes_first_page: int | None = None
    failure: str | None = None

    @property
    def hit_ratio(self) -> float | None:
        hits, misses = self.x_cache.get("HIT", 0), self.x_cache.get("MISS", 0)
        return hits / (hits + misses) if hits + misses else None


def first_page(port: int, url: str, timeout: float) -> tuple[int | None, int | None, str | None]:
    """(entries, bytes) of one answer to ``url``, or the error it gave (third item)."""
    conn = rest.Connection(port, timeout)
    try:
        status, body = conn.request(rest.http_request("GET", url, headers={"Cache-Control": "no-cache"}))
    except OSError as exc:
        return None, None, f"{type(exc).__name__}: {exc}"
    finally:
        conn.close()
    if not 200 <= status < 300:
        return None, None, f"HTTP {status}: {body[:300].decode('utf-8', 'replace')}"
    try:
        doc = json.loads(body)
        entries = len(doc.get("entry", [])) if doc.get("resourceType") == "Bundle" else 1
    except (ValueError, AttributeError):
        return None, len(body), None
    return entries, len(body), None


@dataclass
class Target:
    """One condition: the server that answers it and the headers its requests carry."""

    condition: str
    server: rest.Server
    headers: dict[str, str] | None = None


def sum_hists(hists: Sequence[Hist | None]) -> Hist | None:
    total: Hist = {}
    for h in hists:
        if h is None:
            return None
        for k, v in h.items():
            total[k] = total.get(k, 0.0) + v
    return total


def _tally(phases: Sequence[rest.Phase]) -> dict[str, int]:
    tally: Counter[str] = Counter()
    for phase in phases:
        for r in phase.results:
            tally.update(r.watched)
    return dict(tally)


class Measurement:
    """Every kind under every condition, the conditions of a kind back to back (and in ``--rounds``
    alternating rounds, A B C, C B A …), so load that drifts on the machine hits them alike."""

    def __init__(self, bench: rest.Bench, backend: str, targets: list[Target], urls: dict[str, list[str]]) -> None:
        self.bench, self.args, self.backend, self.targets, self.urls = bench, bench.args, backend, targets, urls
        self.phases: dict[str, list[rest.Phase]] = {t.condition: [] for t in targets}
        self.deltas: dict[str, list[Hist | None]] = {t.condition: [] for t in targets}

    def kind(self, kind: str) -> list[Result]:
        args, distinct = self.args, self.urls[kind]
        entries, size, error = first_page(self.targets[0].server.port, distinct[0], args.timeout)
        if error is not None:
            print(f"  {kind:<10} FAILED: {error[:200]}", flush=True)
            return [Result(self.backend, t.condition, kind, None, None, failure=error[:200]) for t in self.targets]
        order = [distinct[i % len(distinct)] for i in range(args.requests)]
        random.Random(f"{self.backend}-{kind}").shuffle(order)
        # One unmeasured pass over every distinct URL: fills the cache (warm), warms the database and the code.
        for t in self.targets:
            reqs = [rest.http_request("GET", u, headers=t.headers) for u in distinct]
            cap = max(4 * args.time_cap, 60.0) if t.condition == "warm" else args.time_cap / 2
            self.bench.drive(t.server.port, reqs, cap)
        rounds = max(1, min(args.rounds, len(order)))
        chunk = -(-len(order) // rounds)
        phases: dict[str, list[rest.Phase]] = {t.condition: [] for t in self.targets}
        deltas: dict[str, list[Hist | None]] = {t.condition: [] for t in self.targets}
        for r in range(rounds):
            part = order[r * chunk : (r + 1) * chunk]
            for t in self.targets if r % 2 == 0 else self.targets[::-1]:
                reqs = [rest.http_request("GET", u, headers=t.headers) for u in part]
                before = scrape(t.server.port, args.timeout)
                phase = self.bench.phase(t.server, reqs, args.time_cap / rounds)
                delta = hist_delta(before, scrape(t.server.port, args.timeout))
                answered = sum(len(r.latencies) for r in phase.results)
                if delta is None or round(delta.get("count", 0.0)) != answered:  # a worker missed or miscounted
                    seen = "no scrape" if delta is None else f"{delta.get('count', 0.0):.0f} timed"
                    print(f"    ({t.condition}: server-side figures unavailable: {seen}, {answered} answered)")
                    delta = None
                phases[t.condition].append(phase)
                deltas[t.condition].append(delta)
        out = []
        for t in self.targets:
            row = rest.make_row(self.backend, kind, phases[t.condition], None)
            delta = sum_hists(deltas[t.condition])
            res = Result(
                self.backend, t.condition, kind, row, server_side(delta), _tally(phases[t.condition]), entries, size
            )
            out.append(res)
            self.phases[t.condition] += phases[t.condition]
            self.deltas[t.condition] += deltas[t.condition]
            srv = f"srv mean {res.server.mean_ms:6.2f} ms" if res.server else "srv -"
            hit = f"hit {100 * res.hit_ratio:5.1f}%" if res.hit_ratio is not None else "hit -"
            row.report(f"{kind:<10} {t.condition:<10}", f"{srv}  {hit}  ")
        return out

    def overall(self) -> list[Result]:
        """Per condition, every measured kind together: latencies pooled, time = the phases' busy time summed."""
        out = []
        for t in self.targets:
            phases = self.phases[t.condition]
            if phases:
                row = rest.make_row(self.backend, "overall", phases, None)
                srv = server_side(sum_hists(self.deltas[t.condition]))
                out.append(Result(self.backend, t.condition, "overall", row, srv, _tally(phases)))
        return out


def server_env(database_url: str, setting: str, redis_url: str, audit: str = "on") -> dict[str, str]:
    env = rest.server_env(database_url)
    env["BIGMED_AUDIT"] = audit
    if setting == "off":
        env["BIGMED_CACHE"] = "off"
    elif setting == "redis-down":
        env.update({"REDIS_URL": DOWN_REDIS_URL, "BIGMED_CACHE_TIMEOUT_MS": "20"})
    else:
        env["REDIS_URL"] = redis_url
    return env


def health(port: int) -> str:
    conn = http.client.HTTPConnection(HOST, port, timeout=5)
    try:
        conn.request("GET", "/healthz")
        resp = conn.getresponse()
        body = json.loads(resp.read())
        return f"HTTP {resp.status}, status {body.get('status')}, cache {body.get('cache')}"
    except (OSError, ValueError) as exc:
        return f"{type(exc).__name__}: {exc}"
    finally:
        conn.close()


def flush_redis(url: str) -> bool:
    import redis

    try:
        redis.Redis.from_url(url, socket_timeout=2, socket_connect_timeout=2).flushdb()
    except redis.RedisError as exc:
        print(f"  cannot flush {url}: {type(exc).__name__}: {exc}")
        return False
    return True


def start_server(bench: rest.Bench, name: str, env: dict[str, str]) -> rest.Server:
    args = bench.args
    port = rest.free_port()
    argv = [sys.executable, "-m", "server", "serve", "--host", HOST, "--port", str(port)]
    argv += ["--workers", str(args.workers), "--threads", str(args.threads)]
    server = rest.Server(name, argv, env, port, bench.tmp / f"{name}.log")
    bench.servers.append(server)
    server.wait_healthy(90)
    print(f"  {name}: python -m server serve --workers {args.workers} --threads {args.threads} (port {port})")
    return server


def run_backend(bench: rest.Bench, backend: str, url: str) -> list[Result]:
    args = bench.args
    print(f"\n== {backend}")
    conditions = list(args.conditions)
    if any(c in conditions for c in ("no-cache", "warm")) and not flush_redis(args.redis_url):
        print(f"  skipping no-cache and warm: Redis at {args.redis_url} is unreachable")
        conditions = [c for c in conditions if c not in ("no-cache", "warm")]
    # One server per cache setting, all on the same database; the first one started seeds it.
    settings = {"off": "off", "no-cache": "redis", "warm": "redis", "redis-down": "redis-down"}
    wanted = [s for s in ("redis", "off", "redis-down") if any(settings[c] == s for c in conditions)]
    servers: dict[str, rest.Server] = {}
    try:
        urls = None
        for setting in wanted:
            env = server_env(url, setting, args.redis_url, args.audit)
            servers[setting] = start_server(bench, f"{backend}-{setting}", env)
            if setting == "redis-down":
                print(f"    /healthz: {health(servers[setting].port)}")
            if urls is None:
                rest.report_background(backend)
                urls = seed(bench, servers[setting])
                if urls is None:
                    print(f"  {backend}: seeding failed; skipping its measurements\n{servers[setting].log_tail()}")
                    return []
                if not args.no_analyze:
                    analyze(url)
        if urls is None:
            return []
        targets = [
            Target(c, servers[settings[c]], {"Cache-Control": "no-cache"} if c == "no-cache" else None)
            for c in CONDITIONS
            if c in conditions
        ]
        m = Measurement(bench, backend, targets, urls)
        results = [r for kind in KINDS if kind in args.kinds for r in m.kind(kind)] + m.overall()
        for server in servers.values():
            if server.proc.poll() is not None:
                print(f"  {server.name} server died during the run:\n{server.log_tail()}")
        return results
    except RuntimeError as exc:
        print(f"  {backend}: {exc}")
        return []
    finally:
        for server in servers.values():
            server.stop()


def analyze(database_url: str) -> None:
    """Planner statistics after the bulk seed, as PostgreSQL's autovacuum would gather within a minute."""
    if str(rest.ROOT) not in sys.path:
        sys.path.insert(0, str(rest.ROOT))
    try:
        from server.store import open_store

        t0 = time.monotonic()
        store = open_store(database_url, pool_size=1)
        try:
            store.analyze()
        finally:
            store.close()
        print(f"  ANALYZE after seeding: {time.monotonic() - t0:.1f} s")
    except Exception as exc:  # noqa: BLE001  # figures without statistics are still figures: say so and go on
        print(f"  ANALYZE after seeding failed ({type(exc).__name__}: {exc}); plans are chosen without statistics")


def seed(bench: rest.Bench, server: rest.Server) -> dict[str, list[str]] | None:
    args = bench.args
    bundles, families = seed_bundles(args.patients, per_bundle=5)
    t0 = time.monotonic()
    answers = bench.drive(server.port, bundles, 240.0)
    seconds = time.monotonic() - t0
    statuses: Counter[int] = Counter()
    for r in answers:
        statuses.update(r.statuses)
    ok = sum(v for k, v in statuses.items() if 200 <= k < 300)
    resources = args.patients * (1 + 2 + len(_CODES))
    print(
        f"  seeded {args.patients} Patients, {resources} resources in {len(bundles)} transactions in {seconds:.1f} s; "
        f"{len(bundles) - ok} transactions failed"
    )
    for sample in [s for r in answers for s in r.samples][:3]:
        print(f"    e.g. {sample}")
    return query_urls(args.patients, families) if ok == len(bundles) else None


# -- report -----------------------------------------------------------------------------------------------------


def _f(value: float | None, fmt: str, width: int) -> str:
    return f"{value:{width}{fmt}}" if value is not None and not math.isnan(value) else f"{'-':>{width}}"


def print_tables(results: list[Result], backends: list[str]) -> list[str]:
    header = (
        f"{'backend':<10} {'condition':<10} {'kind':<10} {'reqs':>5} {'req/s':>8} {'p50 ms':>7} {'p99 ms':>7} "
        f"{'srv mean':>8} {'srv p50':>7} {'hit':>6} {'err':>4} {'rows':>4} {'KB':>5}"
    )
    lines = [header, "-" * len(header)]
    for backend in backends:
        for condition in CONDITIONS:
            group = [r for r in results if r.backend == backend and r.condition == condition]
            for r in group:
                if r.row is None:
                    lines.append(f"{backend:<10} {condition:<10} {r.kind:<10} FAILED: {r.failure}")
                    continue
                row, srv = r.row, r.server
                hit = f"{100 * r.hit_ratio:5.1f}%" if r.hit_ratio is not None else "     -"
                kb = r.bytes_first_page / 1024 if r.bytes_first_page is not None else None
                lines.append(
                    f"{backend:<10} {condition:<10} {r.kind:<10} {row.requests:>4}{'*' if row.capped else ' '} "
                    f"{row.rps:>8.1f} {row.p50_ms:>7.2f} {row.p99_ms:>7.2f} "
                    f"{_f(srv.mean_ms if srv else None, '.2f', 8)} {_f(srv.p50_ms if srv else None, '.2f', 7)} "
                    f"{hit} {row.errors:>4} {_f(r.rows_first_page, 'd', 4)} {_f(kb, '.1f', 5)}"
                )
            if group:
                lines.append("")
    lines += ratio_table(results, backends)
    busy = [r.row.machine_cores for r in results if r.row is not None and r.row.machine_cores is not None]
    if busy:
        lines.append(f"machine: {statistics.fmean(busy):.2f} of {os.cpu_count()} cores busy on average while measuring")
    if any(r.row is not None and r.row.capped for r in results):
        lines.append("* stopped by the time cap before all requests were sent")
    for line in lines:
        print(line)
    return lines


def _ratio(a: float | None, b: float | None) -> float | None:
    return a / b if a is not None and b is not None and b > 0 else None


def ratio_table(results: list[Result], backends: list[str]) -> list[str]:
    def get(backend: str, condition: str, kind: str) -> Result | None:
        return next((r for r in results if (r.backend, r.condition, r.kind) == (backend, condition, kind)), None)

    def srv(r: Result | None) -> float | None:
        return r.server.mean_ms if r is not None and r.server is not None else None

    def p50(r: Result | None) -> float | None:
        return r.row.p50_ms if r is not None and r.row is not None else None

    def rps(r: Result | None) -> float | None:
        return r.row.rps if r is not None and r.row is not None else None

    header = (
        f"{'backend':<10} {'kind':<10} {'srv nc/w':>8} {'srv off/w':>9} {'sp50 off/w':>10} {'p50 nc/w':>8} "
        f"{'req/s w/nc':>10} {'warm srv p50':>12} {'down/off':>8}  goal"
    )
    lines = [
        "speed-ups of warm (w) over uncached: no-cache (nc) and cache off; Redis down (server mean) over off",
        header,
    ]
    lines.append("-" * len(header))
    for backend in backends:
        for kind in (*KINDS, "overall"):
            off, unc, warm, down = (get(backend, c, kind) for c in CONDITIONS)
            if all(r is None or r.row is None for r in (off, unc, warm, down)):
                continue
            srv_nc, srv_off = _ratio(srv(unc), srv(warm)), _ratio(srv(off), srv(warm))
            sp50_off = _ratio(*(r.server.p50_ms if r is not None and r.server else None for r in (off, warm)))
            p50_nc, rps_x = _ratio(p50(unc), p50(warm)), _ratio(rps(warm), rps(unc))
            down_off = _ratio(srv(down), srv(off))
            warm_p50 = warm.server.p50_ms if warm is not None and warm.server is not None else None
            # judged on the smaller server-side speed-up (client p50 when no server figure), p50 server-side
            speedups = [x for x in (srv_nc, srv_off) if x is not None] or ([p50_nc] if p50_nc is not None else [])
            speedup = min(speedups) if speedups else None
            if kind == "overall":
                goal = ""
            elif speedup is None:
                goal = "-"
            elif kind == "read":
                goal = f"{'meets' if speedup >= READ_GOAL else 'BELOW'} >= {READ_GOAL}x"
            else:
                latency = warm_p50 if warm_p50 is not None else p50(warm)
                met = speedup >= SEARCH_GOAL and latency is not None and latency <= SEARCH_P50_GOAL_MS
                goal = f"{'meets' if met else 'BELOW'} >= {SEARCH_GOAL:.0f}x, p50 <= {SEARCH_P50_GOAL_MS:.0f} ms"
            lines.append(
                f"{backend:<10} {kind:<10} {_f(srv_nc, '.1f', 8)} {_f(srv_off, '.1f', 9)} {_f(sp50_off, '.1f', 10)} "
                f"{_f(p50_nc, '.1f', 8)} "
                f"{_f(rps_x, '.1f', 10)} {_f(warm_p50, '.2f', 9)} ms {_f(down_off, '.2f', 8)}  {goal}"
            )
    return lines


# -- main -------------------------------------------------------------------------------------------------------


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0] if __doc__ else None)
    p.add_argument("--backends", default="sqlite,postgresql", help="comma-separated: sqlite,postgresql")
    p.add_argument("--requests", type=int, default=None, help="measured requests per kind and condition (300)")
    p.add_argument("--kinds", default=",".join(KINDS), help=f"comma-separated: {','.join(KINDS)}")
    p.add_argument("--conditions", default=",".join(CONDITIONS), help=f"comma-separated: {','.join(CONDITIONS)}")
    p.add_argument("--patients", type=int, default=None, help="seeded Patients, 13 resources each (default 200)")
    p.add_argument("--concurrency", type=int, default=2, help="requests in flight (default 2: one per worker)")
    p.add_argument("--workers", type=int, default=2, help="gunicorn workers (default 2)")
    p.add_argument("--threads", type=int, default=4, help="threads per worker; > 1 = gthread, keep-alive (default 4)")
    p.add_argument("--client-procs", type=int, default=2, help="client processes sharing the concurrency (2)")
    p.add_argument("--rounds", type=int, default=None, help="alternating rounds per kind (default 2)")
    p.add_argument("--time-cap", type=float, default=None, help="seconds per kind and condition (default 5)")
    p.add_argument("--timeout", type=float, default=30.0, help="socket timeout of one request, seconds")
    p.add_argument("--redis-url", default="redis://127.0.0.1:6379/14", help="Redis database for the bench (flushed)")
    p.add_argument("--pg-url", default="postgresql://postgres@127.0.0.1:5432/test", help="PostgreSQL server to use")
    p.add_argument("--no-analyze", action="store_true", help="no ANALYZE after seeding (blind query plans)")
    p.add_argument("--audit", choices=("on", "off"), default="on", help="BIGMED_AUDIT of the servers (default on)")
    p.add_argument("--quick", action="store_true", help="small numbers: a smoke run of about a minute")
    p.add_argument("--json", type=Path, default=None, metavar="FILE", help="also write the results as JSON")
    args = p.parse_args(argv)
    args.requests = args.requests if args.requests is not None else (60 if args.quick else 300)
    args.patients = args.patients if args.patients is not None else (40 if args.quick else 200)
    args.rounds = args.rounds if args.rounds is not None else (1 if args.quick else 2)
    args.time_cap = args.time_cap if args.time_cap is not None else (3.0 if args.quick else 5.0)
    args.backends = [b.strip() for b in args.backends.split(",") if b.strip()]
    for b in args.backends:
        if b not in ("sqlite", "postgresql"):
            p.error(f"unknown backend {b!r} (use sqlite, postgresql)")
    args.kinds = [k.strip() for k in args.kinds.split(",") if k.strip()]
    for k in args.kinds:
        if k not in KINDS:
            p.error(f"unknown kind {k!r} (use {', '.join(KINDS)})")
    args.conditions = [c.strip() for c in args.conditions.split(",") if c.strip()]
    for c in args.conditions:
        if c not in CONDITIONS:
            p.error(f"unknown condition {c!r} (use {', '.join(CONDITIONS)})")
    if min(args.requests, args.patients, args.concurrency, args.workers, args.threads, args.client_procs) < 1:
        p.error("--requests, --patients, --concurrency, --workers, --threads and --client-procs must be >= 1")
    if args.rounds < 1:
        p.error("--rounds must be >= 1")
    return args


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    procs = min(args.client_procs, args.concurrency)
    print(
        f"BigMed query cache bench: {', '.join(args.backends)}; conditions {', '.join(args.conditions)}; "
        f"{args.requests} requests per kind (time cap {args.time_cap:.0f} s); {args.patients} seeded Patients; "
        f"concurrency {args.concurrency} over {procs} client process(es), keep-alive; gunicorn {args.workers} "
        f"workers x {args.threads} threads; audit {args.audit}; {multiprocessing.cpu_count()} CPUs; "
        f"Python {sys.version.split()[0]}",
        flush=True,
    )
    signal.signal(signal.SIGINT, rest._interrupt)
    signal.signal(signal.SIGTERM, rest._interrupt)
    tmp = Path(tempfile.mkdtemp(prefix="bigmed-cachebench-"))
    pool = multiprocessing.get_context("fork").Pool(procs, initializer=rest._client_signals)
    bench = rest.Bench(args, pool, tmp)
    bench.watch_header = b"x-cache"
    results: list[Result] = []
    t0 = time.monotonic()
    try:
        for backend in args.backends:
            url = (
                f"sqlite:///{tmp / 'cache.sqlite'}" if backend == "sqlite" else rest.pg_prepare(args.pg_url, PG_SCHEMA)
            )
            if url is None:
                continue
            try:
                results += run_backend(bench, backend, url)
            finally:
                if backend == "postgresql":
                    rest.pg_drop(args.pg_url, PG_SCHEMA)
    except KeyboardInterrupt:
        print("\ninterrupted: stopping the servers", file=sys.stderr)
        return 130
    finally:
        pool.terminate()
        pool.join()
        for server in bench.servers:
            server.stop()
        with contextlib.suppress(Exception):
            flush_redis(args.redis_url)
        shutil.rmtree(tmp, ignore_errors=True)
    print(f"\n(run took {time.monotonic() - t0:.0f} s)\n")
    if not results:
        print("no figures: every backend failed or was skipped")
        return 1
    lines = print_tables(results, [b for b in args.backends if any(r.backend == b for r in results)])
    if args.json:
        payload = {
            "settings": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
            "results": [asdict(r) for r in results],
            "summary": lines,
        }
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(payload, indent=2, ensure_ascii=False) + "\n")
        print(f"results written to {args.json}")
    failed = any(r.row is None or r.row.errors for r in results)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
