"""REST benchmark: throughput and latency of the FHIR instance interactions (prints figures; not a test).

What it measures
    For each storage backend (SQLite, then PostgreSQL) the script starts the real server exactly as
    production does (``python -m server serve --workers N``: gunicorn, one ``create_app`` per worker),
    seeds it with realistic Patients (~1 KB: identifiers, name, telecom, address, birthDate …) and drives
    four interactions (http://hl7.org/fhir/R4/http.html) with a fixed number of requests each:

    ``read``    GET  /fhir/Patient/{id}                   random seeded ids
    ``create``  POST /fhir/Patient                        new Patients
    ``update``  PUT  /fhir/Patient/{id}                   seeded ids in turn, body carries the id
    ``vread``   GET  /fhir/Patient/{id}/_history/1        first version (a historical one once updated)

    The same measurement runs against a *bare* Flask app defined in this file (rows ``bare@<backend>``):
    same gunicorn settings (workers, worker class, threads) and routes that answer with the very JSON bytes
    the backend returned for a read of a seeded Patient, doing no other work. It is the ceiling of Flask +
    gunicorn on this machine; ``read`` through the full stack as a share of the bare ``read`` is the figure
    we watch (goal: at least 60 %). Each interaction runs in ``--rounds`` rounds that alternate full stack
    and bare (A B, B A, …), so load from other processes that drifts during the run hits both alike.

    The client is lean so that it does not measure itself: a few client processes (``--client-procs``),
    each with threads holding one keep-alive socket apiece and sending pre-built request bytes through a
    minimal HTTP/1.1 reader (stdlib ``socket`` only). It measures its own CPU (``getrusage``) and the CPU of
    the gunicorn processes and of the whole machine (``/proc``), so you can see who used the cores.
    Gunicorn's ``sync`` worker (the default, ``--threads 1``) closes every connection after a response;
    the client then reconnects, which is part of the measured latency in both the full and the bare run.

How to run
    make bench                                  # = .venv/bin/python bench/rest.py (both backends)
    .venv/bin/python bench/rest.py --quick      # smoke run (~20 s: small numbers, same code paths)
    .venv/bin/python bench/rest.py --backends sqlite --requests 5000 --concurrency 16 --json out.json
    .venv/bin/python bench/rest.py --audit async,sync,off   # the audit trail's cost: one server per
                                                            # BIGMED_AUDIT(_MODE), same rounds, "% off" column

    PostgreSQL: ``--pg-url`` (default ``postgresql://postgres@127.0.0.1:5432/test``); the bench drops and
    recreates its private schema ``bigmed_bench`` and drops it again at the end. It is skipped with a
    message when the server cannot be reached. SQLite files go to a temporary directory. Every server the
    script starts is stopped on exit, Ctrl-C included; every loop is bounded in count and time
    (``--time-cap`` seconds per interaction); all traffic goes to 127.0.0.1.

How to read the figures
    ``req/s``        answered requests / time from the first request sent to the last answer, summed over
                     the rounds (warm-up excluded).
    ``p50``/``p99``  latency in ms as the client sees it: queueing in gunicorn's backlog included, so with
                     concurrency C and W single-threaded workers, p50 is roughly C/W service times.
    ``errors``       non-2xx answers plus transport failures (samples follow the progress line).
    ``% bare``       req/s as a share of the bare app's req/s for the same interaction (same rounds).
                     The read ratio line adds the median and range of the per-round ratios (each round runs
                     full stack and bare back to back): a wide range means the machine was busy; rerun.
    ``cpu cl/srv/all`` cores used on average during the phase by the client processes, by gunicorn's
                     processes, and by the whole machine (PostgreSQL's own processes show up only in ``all``).
                     If ``cl`` is a large part of ``all`` the client competes with the server; on a
                     2-core machine a client under ~0.5 cores leaves the server most of the CPU. Most of the
                     client's CPU is the kernel's TCP connect/close that the ``sync`` worker forces.
    ``background``   cores busy while everything of ours is idle, sampled before each backend: other work on
                     the machine. Above ~0.25 cores the figures are noisy; compare ratios, not absolutes.
"""

from __future__ import annotations

import argparse
import contextlib
import itertools
import json
import multiprocessing
import multiprocessing.pool
import os
import random
import resource
import shutil
import signal
import socket
import statistics
import sys
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from _common import Server, free_port  # bench/ is the script's folder (cache.py puts it on sys.path)

ROOT = Path(__file__).resolve().parent.parent
HOST = "127.0.0.1"
INTERACTIONS = ("read", "create", "update", "vread")
BARE = "bare"  # rows of the bare Flask app are labelled bare@<backend>
GOAL_RATIO = 0.60
PG_SCHEMA = "bigmed_bench"
#: --audit: BIGMED_AUDIT / BIGMED_AUDIT_MODE of each compared server
AUDIT_MODES = {"async": ("on", "async"), "sync": ("on", "sync"), "off": ("off", "async")}
FHIR_JSON = "application/fhir+json"
_MAX_HEAD = 64 * 1024
_MAX_BODY = 16 * 1024 * 1024


# -- test data ------------------------------------------------------------------------------------

_GIVEN = ["Ingrid", "Ola", "Kari", "Håkon", "Sigrid", "Lars", "Åse", "Nils", "Marta", "Jonas", "Émile", "Zoë"]
_FAMILY = ["Hansen", "Johansen", "Olsen", "Larsen", "Andersen", "Pedersen", "Nilsen", "Kristiansen", "Jensen", "Bø"]
_STREETS = ["Storgata", "Kirkeveien", "Parkveien", "Skolegata", "Fjordveien", "Bjørkeveien", "Sjøgata"]
_CITIES = [("Oslo", "0150"), ("Bergen", "5003"), ("Trondheim", "7011"), ("Tromsø", "9008"), ("Stavanger", "4006")]


def make_patient(rng: random.Random, n: int) -> dict[str, Any]:
    """A realistic Patient of about 1 KB (valid R4: no narrative, codes from their value sets)."""
    family = rng.choice(_FAMILY)
    given = [rng.choice(_GIVEN), rng.choice(_GIVEN)]
    city, postal = rng.choice(_CITIES)
    gender = rng.choice(["female", "male"])
    birth = f"{rng.randint(1930, 2020)}-{rng.randint(1, 12):02d}-{rng.randint(1, 28):02d}"
    phone = f"+47 {rng.randint(40000000, 99999999)}"
    return {
        "resourceType": "Patient",
        "identifier": [
            {
                "use": "usual",
                "type": {"coding": [{"system": "http://terminology.hl7.org/CodeSystem/v2-0203", "code": "MR"}]},
                "system": "http://bigmed.example.org/fhir/sid/mrn",
                "value": f"MRN-{n:08d}",
            },
            {
                "use": "official",
                "system": "urn:oid:2.16.578.1.12.4.1.4.1",
                "value": f"{rng.randint(10**10, 10**11 - 1)}",
            },
        ],
        "active": True,
        "name": [
            {"use": "official", "family": family, "given": given, "prefix": [rng.choice(["Mr.", "Ms.", "Dr."])]},
            {"use": "nickname", "given": [given[0][:3]]},
        ],
        "telecom": [
            {"system": "phone", "value": phone, "use": "mobile", "rank": 1},
            {"system": "email", "value": f"{given[0].lower()}.{n}@example.org", "use": "home"},
        ],
        "gender": gender,
        "birthDate": birth,
        "address": [
            {
                "use": "home",
                "type": "both",
                "line": [f"{rng.choice(_STREETS)} {rng.randint(1, 200)}", f"Leilighet H{rng.randint(101, 499)}"],
                "city": city,
                "postalCode": postal,
                "country": "NO",
                "period": {"start": f"{rng.randint(1990, 2023)}-01-01"},
            }
        ],
        "maritalStatus": {
            "coding": [{"system": "http://terminology.hl7.org/CodeSystem/v3-MaritalStatus", "code": "M"}],
            "text": "Married",
        },
        "communication": [
            {"language": {"coding": [{"system": "urn:ietf:bcp:47", "code": "nb", "display": "Norwegian Bokmål"}]}}
        ],
        "managingOrganization": {"display": "BigMed University Hospital"},
    }


def dumps(obj: Any) -> bytes:
    return json.dumps(obj, ensure_ascii=False, separators=(",", ":")).encode("utf-8")


def http_request(method: str, path: str, body: bytes | None = None, headers: dict[str, str] | None = None) -> bytes:
    """The exact bytes of one HTTP/1.1 request, built before the clock starts (the same for every server)."""
    head = f"{method} {path} HTTP/1.1\r\nHost: {HOST}\r\nUser-Agent: bigmed-bench\r\nAccept: {FHIR_JSON}\r\n"
    head += "".join(f"{name}: {value}\r\n" for name, value in (headers or {}).items())
    if body is not None:
        head += f"Content-Type: {FHIR_JSON}\r\nContent-Length: {len(body)}\r\n"
    return head.encode("ascii") + b"\r\n" + (body or b"")


# -- the client: keep-alive sockets, a minimal HTTP/1.1 reader --------------------------------------


class _Closed(OSError):
    """The peer closed the connection before a whole response arrived."""


class Connection:
    """One keep-alive connection; reconnects when the server closes it (gunicorn ``sync`` always does)."""

    def __init__(self, port: int, timeout: float) -> None:
        self.addr = (HOST, port)
        self.timeout = timeout
        self.sock: socket.socket | None = None
        self.buf = b""
        self.connects = 0
        self.watch: bytes | None = None  # a response header name (lower case) to remember in ``watched``
        self.watched: str | None = None

    def _connect(self) -> socket.socket:
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)  # no getaddrinfo: the address is a literal
        sock.settimeout(self.timeout)
        try:
            sock.connect(self.addr)
        except OSError:
            sock.close()
            raise
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.sock, self.buf = sock, b""
        self.connects += 1
        return sock

    def close(self) -> None:
        if self.sock is not None:
            with contextlib.suppress(OSError):
                self.sock.close()
        self.sock, self.buf = None, b""

    def request(self, data: bytes) -> tuple[int, bytes]:
        """Send ``data`` and read one response; retried once on a fresh socket if a reused one was stale."""
        reused = self.sock is not None
        sock = self.sock if self.sock is not None else self._connect()
        try:
            sock.sendall(data)
            return self._response(sock)
        except OSError:
            self.close()
            if not reused:
                raise
        sock = self._connect()
        try:
            sock.sendall(data)
            return self._response(sock)
        except OSError:
            self.close()
            raise

    def _recv(self, sock: socket.socket) -> bytes:
        chunk = sock.recv(65536)
        if not chunk:
            raise _Closed("connection closed by the server")
        return chunk

    def _response(self, sock: socket.socket) -> tuple[int, bytes]:
        buf = self.buf
        while (end := buf.find(b"\r\n\r\n")) < 0:
            if len(buf) > _MAX_HEAD:
                raise OSError("response head too large")
            buf += self._recv(sock)
        lines = buf[:end].split(b"\r\n")
        rest = buf[end + 4 :]
        status = int(lines[0].split(b" ", 2)[1])
        length: int | None = None
        close = lines[0].startswith(b"HTTP/1.0")
        chunked = False
        self.watched = None
        for line in lines[1:]:
            name, _, value = line.partition(b":")
            name = name.strip().lower()
            if name == self.watch:
                self.watched = value.strip().decode("latin-1")
            if name == b"content-length":
                length = int(value)
            elif name == b"connection":
                close = value.strip().lower() == b"close"
            elif name == b"transfer-encoding":
                chunked = b"chunked" in value.lower()
        if chunked:
            body, rest = self._chunked(sock, rest)
        elif length is not None or status in (204, 304) or status < 200:
            length = length or 0
            if length > _MAX_BODY:
                raise OSError("response body too large")
            while len(rest) < length:
                rest += self._recv(sock)
            body, rest = rest[:length], rest[length:]
        else:  # no length: the body runs to the end of the connection
            parts = [rest]
            total = len(rest)
            while total <= _MAX_BODY and (chunk := sock.recv(65536)):
                parts.append(chunk)
                total += len(chunk)
            body, rest, close = b"".join(parts), b"", True
        self.buf = rest
        if close:
            self.close()
        return status, body

    def _chunked(self, sock: socket.socket, buf: bytes) -> tuple[bytes, bytes]:
        parts: list[bytes] = []
        total = 0
        while total <= _MAX_BODY:
            while (eol := buf.find(b"\r\n")) < 0:
                buf += self._recv(sock)
            size = int(buf[:eol].split(b";")[0], 16)
            buf = buf[eol + 2 :]
            if size == 0:  # last chunk; skip trailers up to the blank line
                while (end := buf.find(b"\r\n")) != 0:
                    if end < 0:
                        buf += self._recv(sock)
                    else:
                        buf = buf[end + 2 :]
                return b"".join(parts), buf[2:]
            while len(buf) < size + 2:
                buf += self._recv(sock)
            parts.append(buf[:size])
            total += size
            buf = buf[size + 2 :]
        raise OSError("chunked response body too large")


@dataclass
class ClientJob:
    port: int
    requests: list[bytes]
    threads: int
    start_at: float  # time.monotonic() value (CLOCK_MONOTONIC: the same clock in every process)
    deadline: float
    timeout: float
    keep_bodies: bool = False
    watch_header: bytes | None = None  # lower-case name of a response header whose values are tallied


@dataclass
class ClientResult:
    latencies: list[float] = field(default_factory=list)
    statuses: Counter[int] = field(default_factory=Counter)
    failures: int = 0
    samples: list[str] = field(default_factory=list)
    bodies: list[bytes] = field(default_factory=list)
    t_first: float = float("inf")
    t_last: float = 0.0
    cpu: float = 0.0
    connects: int = 0
    watched: Counter[str] = field(default_factory=Counter)  # values of ``ClientJob.watch_header`` ("" = absent)


def run_client(job: ClientJob) -> ClientResult:
    """One client process: ``job.threads`` threads share the request list, one connection each."""
    result = ClientResult()
    lock = threading.Lock()
    counter = itertools.count()  # next() on a count is atomic under the GIL
    n = len(job.requests)

    def worker() -> None:
        conn = Connection(job.port, job.timeout)
        conn.watch = job.watch_header
        lat: list[float] = []
        statuses: Counter[int] = Counter()
        watched: Counter[str] = Counter()
        failures = 0
        samples: list[str] = []
        bodies: list[bytes] = []
        first, last = float("inf"), 0.0
        clock = time.monotonic
        try:
            while (i := next(counter)) < n:
                t0 = clock()
                if t0 > job.deadline:
                    break
                try:
                    status, body = conn.request(job.requests[i])
                except (OSError, ValueError, IndexError) as exc:  # transport failure or a malformed answer
                    conn.close()
                    failures += 1
                    if len(samples) < 3:
                        samples.append(f"{type(exc).__name__}: {exc}")
                    continue
                t1 = clock()
                first, last = min(first, t0), t1
                lat.append(t1 - t0)
                statuses[status] += 1
                if job.watch_header is not None:
                    watched[conn.watched or ""] += 1
                if not 200 <= status < 300 and len(samples) < 3:
                    samples.append(f"HTTP {status}: {body[:300].decode('utf-8', 'replace')}")
                if job.keep_bodies and 200 <= status < 300:
                    bodies.append(body)
        finally:
            conn.close()
        with lock:
            result.latencies.extend(lat)
            result.statuses.update(statuses)
            result.watched.update(watched)
            result.failures += failures
            result.samples.extend(samples[: max(0, 3 - len(result.samples))])
            result.bodies.extend(bodies)
            result.t_first = min(result.t_first, first)
            result.t_last = max(result.t_last, last)
            result.connects += conn.connects

    pause = job.start_at - time.monotonic()
    if pause > 0:
        time.sleep(min(pause, 5.0))
    ru0 = resource.getrusage(resource.RUSAGE_SELF)
    threads = [threading.Thread(target=worker, daemon=True) for _ in range(job.threads)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=max(0.0, job.deadline - time.monotonic()) + job.timeout + 5.0)
    ru1 = resource.getrusage(resource.RUSAGE_SELF)
    result.cpu = (ru1.ru_utime - ru0.ru_utime) + (ru1.ru_stime - ru0.ru_stime)
    return result


def _client_signals() -> None:
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the parent handles Ctrl-C and tears everything down
    signal.signal(signal.SIGTERM, signal.SIG_DFL)  # and ends the clients with pool.terminate()


def _interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt(f"signal {signum}")


# -- CPU accounting from /proc (Linux; figures are left out elsewhere) --------------------------------

_TICK = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100


def _proc_stat(pid: int) -> tuple[int, float] | None:
    """(parent pid, user+system CPU seconds) of one process."""
    try:
        raw = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = raw[raw.rfind(")") + 2 :].split()
    return int(fields[1]), (int(fields[11]) + int(fields[12])) / _TICK


def tree_cpu(root: int) -> float | None:
    """CPU seconds used so far by ``root`` and its children (gunicorn's master and workers)."""
    if not Path("/proc").is_dir():
        return None
    total = 0.0
    for entry in os.scandir("/proc"):
        if entry.name.isdigit():
            st = _proc_stat(int(entry.name))
            if st is not None and (int(entry.name) == root or st[0] == root):
                total += st[1]
    return total


def machine_cpu() -> tuple[float, float] | None:
    """(busy, total) jiffies of all CPUs from /proc/stat; busy leaves out idle, iowait and a VM's steal."""
    try:
        first = Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]
    except OSError:
        return None
    user, nice, system, idle, iowait, irq, softirq, steal = (int(v) for v in first[:8])
    busy = user + nice + system + irq + softirq
    return float(busy), float(busy + idle + iowait + steal)


def background_load(seconds: float = 1.0) -> float | None:
    """Cores kept busy by other processes while the bench sits idle for ``seconds``."""
    m0 = machine_cpu()
    time.sleep(seconds)
    m1 = machine_cpu()
    if m0 is None or m1 is None or m1[1] <= m0[1]:
        return None
    return (m1[0] - m0[0]) / (m1[1] - m0[1]) * (os.cpu_count() or 1)


def report_background(backend: str) -> float | None:
    load = background_load()
    if load is not None:
        note = "  — the machine is not idle: figures will be lower and noisier" if load > 0.25 else ""
        print(f"  background load with the {backend} server idle: {load:.2f} cores busy{note}", flush=True)
    return load


# -- servers ------------------------------------------------------------------------------------------


def serve_bare(port: int, workers: int, threads: int, body_file: Path) -> None:
    """The bare endpoint: Flask routes that answer with fixed JSON bytes, under the server's gunicorn settings.

    The gunicorn settings mirror ``_serve`` in server/cli.py (bind, workers, worker class, threads, timeout,
    no access log), so the only difference from the full stack is the work the server does per request.
    """
    from flask import Flask, Response, request
    from gunicorn.app.base import BaseApplication

    body = body_file.read_bytes()
    headers = {"ETag": 'W/"1"', "Last-Modified": "Mon, 01 Jan 2024 00:00:00 GMT"}
    app = Flask("bare")

    @app.get("/healthz")
    def healthz() -> Response:
        return Response(b'{"status":"ok"}', content_type="application/json")

    @app.get("/fhir/Patient/<id_>")
    @app.get("/fhir/Patient/<id_>/_history/<vid>")
    def read(id_: str, vid: str = "1") -> Response:
        return Response(body, content_type=FHIR_JSON, headers=headers)

    @app.post("/fhir/Patient")
    def create() -> Response:
        request.get_data()
        location = f"http://{HOST}:{port}/fhir/Patient/x/_history/1"
        return Response(body, status=201, content_type=FHIR_JSON, headers={**headers, "Location": location})

    @app.put("/fhir/Patient/<id_>")
    def update(id_: str) -> Response:
        request.get_data()
        return Response(body, content_type=FHIR_JSON, headers=headers)

    class Bare(BaseApplication):
        def load_config(self) -> None:
            self.cfg.set("bind", f"{HOST}:{port}")
            self.cfg.set("workers", workers)
            self.cfg.set("worker_class", "gthread" if threads > 1 else "sync")
            self.cfg.set("threads", threads)
            self.cfg.set("timeout", 120)
            self.cfg.set("accesslog", None)

        def load(self) -> Flask:
            return app

    Bare().run()


# -- the measurement -----------------------------------------------------------------------------------


@dataclass
class Phase:
    """One stretch of requests against one server, with the CPU it cost."""

    results: list[ClientResult]
    sent: int
    wall: float
    server_cpu: float | None
    machine: tuple[float, float] | None  # (busy, total) jiffies during the phase


@dataclass
class Row:
    backend: str
    interaction: str
    requests: int
    ok: int
    errors: int
    seconds: float
    rps: float
    p50_ms: float
    p99_ms: float
    mean_ms: float
    client_cores: float
    client_us_per_req: float
    server_cores: float | None
    machine_cores: float | None
    connects: int
    capped: bool
    background_cores: float | None
    round_rps: list[float]
    samples: list[str]
    statuses: dict[str, int]

    def report(self, label: str, extra: str) -> None:
        """Print the progress line of this row (``label`` first, ``extra`` figures before the errors)."""
        print(
            f"  {label} {self.rps:8.1f} req/s  p50 {self.p50_ms:6.2f} ms  p99 {self.p99_ms:7.2f} ms  {extra}"
            f"errors {self.errors}" + ("  (time cap hit)" if self.capped else ""),
            flush=True,
        )
        for sample in self.samples:
            print(f"    e.g. {sample}")


def percentile(sorted_values: Sequence[float], q: float) -> float:
    if not sorted_values:
        return float("nan")
    k = min(len(sorted_values) - 1, max(0, round(q * (len(sorted_values) - 1))))
    return sorted_values[k]


def make_row(backend: str, interaction: str, phases: list[Phase], background: float | None) -> Row:
    results = [r for p in phases for r in p.results]
    lat = sorted(x for r in results for x in r.latencies)
    statuses: Counter[int] = Counter()
    for r in results:
        statuses.update(r.statuses)
    failures = sum(r.failures for r in results)
    ok = sum(v for k, v in statuses.items() if 200 <= k < 300)
    done = sum(statuses.values()) + failures
    # Busy time of each phase: first request sent to last answer received, over all its client processes.
    seconds = 0.0
    round_rps = []
    for p in phases:
        firsts = [r.t_first for r in p.results if r.latencies]
        lasts = [r.t_last for r in p.results if r.latencies]
        busy = max((max(lasts) - min(firsts)) if firsts else p.wall, 1e-9)
        seconds += busy
        round_rps.append(sum(len(r.latencies) for r in p.results) / busy)
    seconds = max(seconds, 1e-9)
    wall = max(sum(p.wall for p in phases), 1e-9)
    client_cpu = sum(r.cpu for r in results)
    server_cpu = None if any(p.server_cpu is None for p in phases) else sum(p.server_cpu or 0.0 for p in phases)
    machine = None
    if all(p.machine is not None for p in phases):
        busy = sum(p.machine[0] for p in phases if p.machine)
        total = sum(p.machine[1] for p in phases if p.machine)
        machine = busy / total * (os.cpu_count() or 1) if total > 0 else None
    return Row(
        backend=backend,
        interaction=interaction,
        requests=done,
        ok=ok,
        errors=done - ok,
        seconds=seconds,
        rps=len(lat) / seconds,
        p50_ms=percentile(lat, 0.50) * 1000,
        p99_ms=percentile(lat, 0.99) * 1000,
        mean_ms=(statistics.fmean(lat) * 1000) if lat else float("nan"),
        client_cores=client_cpu / wall,
        client_us_per_req=client_cpu / max(done, 1) * 1e6,
        server_cores=server_cpu / wall if server_cpu is not None else None,
        machine_cores=machine,
        connects=sum(r.connects for r in results),
        capped=done < sum(p.sent for p in phases),
        background_cores=background,
        round_rps=round_rps,
        samples=[s for r in results for s in r.samples][:3],
        statuses={str(k): v for k, v in sorted(statuses.items())},
    )


class Bench:
    """The run's settings and resources: the client pool, the temp dir, every server started (to stop them)."""

    def __init__(self, args: argparse.Namespace, pool: multiprocessing.pool.Pool, tmp: Path) -> None:
        self.args = args
        self.pool = pool
        self.tmp = tmp
        self.servers: list[Server] = []
        self.procs = max(1, min(args.client_procs, args.concurrency))
        self.watch_header: bytes | None = None  # tally this response header's values (see ``ClientJob``)

    def submit(
        self, port: int, requests: list[bytes], time_cap: float, keep_bodies: bool = False
    ) -> tuple[float, multiprocessing.pool.AsyncResult[list[ClientResult]]]:
        """Hand ``requests`` to the client processes (concurrency split over them); they all start at the
        returned ``time.monotonic()`` instant."""
        procs, conc = self.procs, self.args.concurrency
        per_proc = [conc // procs + (1 if i < conc % procs else 0) for i in range(procs)]
        start_at = time.monotonic() + 0.2
        deadline = start_at + time_cap
        # Interleave the requests so every process gets the same mix.
        jobs = [
            ClientJob(port, requests[i::procs], per_proc[i], start_at, deadline, self.args.timeout, keep_bodies)
            for i in range(procs)
            if per_proc[i] > 0
        ]
        for job in jobs:
            job.watch_header = self.watch_header
        return start_at, self.pool.map_async(run_client, jobs)

    def drive(self, port: int, requests: list[bytes], time_cap: float, keep_bodies: bool = False) -> list[ClientResult]:
        """Send ``requests`` and wait for the answers (bounded by ``time_cap`` and the socket timeout)."""
        if not requests:
            return []
        _, pending = self.submit(port, requests, time_cap, keep_bodies)
        return pending.get(timeout=time_cap + self.args.timeout + 30)

    def phase(self, server: Server, requests: list[bytes], time_cap: float) -> Phase:
        """``drive`` with CPU accounting over exactly the clients' run: from their common start to the end."""
        start_at, pending = self.submit(server.port, requests, time_cap)
        time.sleep(max(0.0, start_at - time.monotonic()))
        cpu0, m0 = tree_cpu(server.proc.pid), machine_cpu()
        results = pending.get(timeout=time_cap + self.args.timeout + 30)
        cpu1, m1 = tree_cpu(server.proc.pid), machine_cpu()
        wall = time.monotonic() - start_at
        server_cpu = cpu1 - cpu0 if cpu0 is not None and cpu1 is not None else None
        machine = (m1[0] - m0[0], m1[1] - m0[1]) if m0 is not None and m1 is not None else None
        return Phase(results, len(requests), max(wall, 1e-9), server_cpu, machine)

    def workload(self, ids: list[str], rng: random.Random) -> dict[str, tuple[list[bytes], list[bytes]]]:
        """(warm-up, measured) request bytes per interaction, built before any clock starts."""
        n, warm = self.args.requests, self.args.warmup
        out: dict[str, tuple[list[bytes], list[bytes]]] = {}
        reads = [http_request("GET", f"/fhir/Patient/{rng.choice(ids)}") for _ in range(warm + n)]
        out["read"] = (reads[:warm], reads[warm:])
        creates = [http_request("POST", "/fhir/Patient", dumps(make_patient(rng, 10**7 + i))) for i in range(warm + n)]
        out["create"] = (creates[:warm], creates[warm:])
        updates = []
        for i in range(warm + n):
            pid = ids[i % len(ids)]  # in turn: the C requests in flight touch C different Patients
            patient = make_patient(rng, i)
            patient["id"] = pid
            patient["telecom"][0]["value"] = f"+47 {40000000 + i}"
            updates.append(http_request("PUT", f"/fhir/Patient/{pid}", dumps(patient)))
        out["update"] = (updates[:warm], updates[warm:])
        vreads = [http_request("GET", f"/fhir/Patient/{ids[(i * 7) % len(ids)]}/_history/1") for i in range(warm + n)]
        out["vread"] = (vreads[:warm], vreads[warm:])
        return out

    def run_interactions(
        self, backend: str, server: Server, bare: Server | None, ids: list[str], background: float | None
    ) -> list[Row]:
        """Each interaction in ``--rounds`` rounds, alternating full stack and bare (ABBA), so drifting load
        on the machine hits both alike."""
        rounds = self.args.rounds if bare is not None else 1
        cap = self.args.time_cap / rounds
        rows = []
        for name, (warm, measured) in self.workload(ids, random.Random(f"{backend}-load")).items():
            targets = [server] if bare is None else [server, bare]
            for target in targets:
                self.drive(target.port, warm, cap)
            phases: dict[str, list[Phase]] = {t.name: [] for t in targets}
            size = -(-len(measured) // rounds)
            for r in range(rounds):
                chunk = measured[r * size : (r + 1) * size]
                for target in targets if r % 2 == 0 else targets[::-1]:
                    phases[target.name].append(self.phase(target, chunk, cap))
            for target in targets:
                row = make_row(target.name, name, phases[target.name], background)
                rows.append(row)
                row.report(f"{target.name:<17} {name:<7}", f"client {row.client_cores:.2f} cores  ")
        return rows

    def seed(self, server: Server) -> tuple[list[str], bytes | None]:
        """Create ``--seed`` Patients; return their ids and the body of one read (for the bare endpoint)."""
        rng = random.Random("seed")
        reqs = [http_request("POST", "/fhir/Patient", dumps(make_patient(rng, i))) for i in range(self.args.seed)]
        t0 = time.monotonic()
        results = self.drive(server.port, reqs, max(self.args.time_cap, 120.0), keep_bodies=True)
        seconds = time.monotonic() - t0
        ids = []
        for r in results:
            for body in r.bodies:
                with contextlib.suppress(ValueError, KeyError, TypeError):
                    ids.append(str(json.loads(body)["id"]))
        bad = sum(r.failures for r in results)
        bad += sum(v for r in results for k, v in r.statuses.items() if not 200 <= k < 300)
        print(f"  seeded {len(ids)} Patients in {seconds:.1f} s ({len(ids) / max(seconds, 1e-9):.0f}/s), {bad} failed")
        for sample in [s for r in results for s in r.samples][:3]:
            print(f"    e.g. {sample}")
        if not ids:
            return ids, None
        conn = Connection(server.port, self.args.timeout)
        try:
            status, body = conn.request(http_request("GET", f"/fhir/Patient/{ids[0]}"))
        finally:
            conn.close()
        return ids, body if status == 200 else None


# -- backends --------------------------------------------------------------------------------------------


def pg_prepare(url: str, schema: str = PG_SCHEMA) -> str | None:
    """Drop and recreate the bench schema; the server URL pinned to it, or None (with a message) if unreachable."""
    try:
        import psycopg
    except ImportError:
        print("skipping postgresql: psycopg is not installed")
        return None
    try:
        with psycopg.connect(url, connect_timeout=5, autocommit=True) as conn:
            conn.execute(f"DROP SCHEMA IF EXISTS {schema} CASCADE")
            conn.execute(f"CREATE SCHEMA {schema}")
    except psycopg.Error as exc:
        print(f"skipping postgresql: cannot reach {url} ({type(exc).__name__}: {str(exc).strip()})")
        return None
    sep = "&" if "?" in url else "?"
    return f"{url}{sep}options=-csearch_path%3D{schema}"


def pg_drop(url: str, schema: str = PG_SCHEMA) -> None:
    import psycopg

    with contextlib.suppress(psycopg.Error), psycopg.connect(url, connect_timeout=5, autocommit=True) as conn:
        conn.execute(f"DROP SCHEMA IF EXISTS {schema} CASCADE")


def server_env(database_url: str) -> dict[str, str]:
    env = {
        k: v for k, v in os.environ.items() if not k.startswith("BIGMED_") and k not in ("DATABASE_URL", "REDIS_URL")
    }
    env.update(
        {"DATABASE_URL": database_url, "BIGMED_LOG_LEVEL": "WARNING", "BIGMED_AUTH": "open", "PYTHONPATH": str(ROOT)}
    )
    return env


def start_bare(args: argparse.Namespace, tmp: Path, label: str, body: bytes, servers: list[Server]) -> Server:
    body_file = tmp / f"{label}-body.json"
    body_file.write_bytes(body)
    port = free_port()
    argv = [sys.executable, str(Path(__file__).resolve()), "--serve-bare", str(port), "--body-file", str(body_file)]
    argv += ["--workers", str(args.workers), "--threads", str(args.threads)]
    server = Server(label, argv, server_env("sqlite:///unused"), port, tmp / f"{label}.log")
    servers.append(server)
    server.wait_healthy(60)
    print(f"  {label}: bare Flask app, same gunicorn settings, fixed {len(body)}-byte answer (port {port})")
    return server


# -- report ------------------------------------------------------------------------------------------------


def _cores(value: float | None) -> str:
    return "   -" if value is None else f"{value:4.2f}"


def print_table(rows: list[Row], args: argparse.Namespace) -> list[str]:
    def bare_of(backend: str) -> dict[str, float]:
        return {r.interaction: r.rps for r in rows if r.backend == f"{BARE}@{backend}"}

    header = (
        f"{'backend':<17} {'interaction':<11} {'requests':>8} {'req/s':>9} {'p50 ms':>8} {'p99 ms':>8} {'errors':>6} "
        f"{'% bare':>7}  {'cpu cl/srv/all':>14}"
    )
    lines = [header, "-" * len(header)]
    backends = [b for b in args.backends if any(r.backend == b for r in rows)]
    for backend in backends:
        bare = bare_of(backend)
        group = [r for r in rows if r.backend in (backend, f"{BARE}@{backend}")]
        for r in sorted(group, key=lambda r: (r.backend != backend, INTERACTIONS.index(r.interaction))):
            share = f"{100 * r.rps / bare[r.interaction]:6.1f}%" if bare.get(r.interaction) else "      -"
            cap = "*" if r.capped else " "
            lines.append(
                f"{r.backend:<17} {r.interaction:<11} {r.requests:>7}{cap} {r.rps:>9.1f} {r.p50_ms:>8.2f} "
                f"{r.p99_ms:>8.2f} {r.errors:>6} {share:>7}  "
                f"{_cores(r.client_cores)}/{_cores(r.server_cores)}/{_cores(r.machine_cores)}"
            )
    lines.append("")
    for backend in backends:
        bare_read = bare_of(backend).get("read")
        full_row = next((r for r in rows if r.backend == backend and r.interaction == "read"), None)
        bare_row = next((r for r in rows if r.backend == f"{BARE}@{backend}" and r.interaction == "read"), None)
        if full_row is None or bare_row is None or not bare_read:
            lines.append(f"read throughput, full stack / bare Flask: {backend}: no bare figure")
            continue
        ratio = full_row.rps / bare_read
        verdict = "meets" if ratio >= GOAL_RATIO else "BELOW"
        # Each round pairs a full-stack and a bare phase run back to back: their ratios show the noise.
        pairs = [f / b for f, b in zip(full_row.round_rps, bare_row.round_rps, strict=False) if b > 0]
        spread = (
            f"; per round median {100 * statistics.median(pairs):.0f}% (range {100 * min(pairs):.0f}–"
            f"{100 * max(pairs):.0f}%)"
            if len(pairs) > 1
            else ""
        )
        lines.append(
            f"read throughput, full stack / bare Flask: {backend}: {100 * ratio:.1f}% "
            f"({full_row.rps:.0f} / {bare_read:.0f} req/s{spread}) — {verdict} the {100 * GOAL_RATIO:.0f}% goal"
        )
    avg = statistics.fmean(r.client_cores for r in rows)
    worst = max(rows, key=lambda r: r.client_cores)
    us = statistics.fmean(r.client_us_per_req for r in rows)
    lines.append(
        f"client CPU: {avg:.2f} cores on average of {os.cpu_count()} (max {worst.client_cores:.2f}, "
        f"{worst.backend} {worst.interaction}); {us:.0f} µs of client CPU per request"
    )
    busy = [r.background_cores for r in rows if r.background_cores is not None]
    if busy and max(busy) > 0.25:
        lines.append(f"note: other processes kept up to {max(busy):.2f} cores busy before the runs; figures are noisy")
    if any(r.capped for r in rows):
        lines.append(f"* stopped by the time cap ({args.time_cap:.0f} s per interaction) before all requests were sent")
    for line in lines:
        print(line)
    return lines


# -- main --------------------------------------------------------------------------------------------------


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0] if __doc__ else None)
    p.add_argument("--backends", default="sqlite,postgresql", help="comma-separated: sqlite,postgresql")
    p.add_argument("--requests", type=int, default=None, help="measured requests per interaction (default 3000)")
    p.add_argument("--concurrency", type=int, default=8, help="requests in flight (default 8)")
    p.add_argument("--workers", type=int, default=2, help="gunicorn workers, full stack and bare alike (default 2)")
    p.add_argument("--threads", type=int, default=1, help="threads per gunicorn worker (>1: gthread worker class)")
    p.add_argument("--seed", type=int, default=None, help="Patients created before measuring (default 1000)")
    p.add_argument("--warmup", type=int, default=None, help="unmeasured requests before each interaction (default 200)")
    p.add_argument("--rounds", type=int, default=None, help="alternations of full stack and bare (default 6)")
    p.add_argument("--time-cap", type=float, default=None, help="seconds per interaction and server (default 120)")
    p.add_argument("--client-procs", type=int, default=2, help="client processes sharing the concurrency (default 2)")
    p.add_argument("--timeout", type=float, default=30.0, help="socket timeout of one request, seconds")
    p.add_argument("--pg-url", default="postgresql://postgres@127.0.0.1:5432/test", help="PostgreSQL server to use")
    p.add_argument("--no-bare", action="store_true", help="skip the bare Flask reference")
    p.add_argument(
        "--audit",
        default=None,
        metavar="MODES",
        help="compare audit modes instead (comma-separated of async,sync,off): one server per mode, same rounds",
    )
    p.add_argument("--quick", action="store_true", help="small numbers: a smoke run of a few seconds")
    p.add_argument("--json", type=Path, default=None, metavar="FILE", help="also write the results as JSON")
    p.add_argument("--serve-bare", type=int, default=None, help=argparse.SUPPRESS)  # internal: the bare server
    p.add_argument("--body-file", type=Path, default=None, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    quick = args.quick
    args.requests = args.requests if args.requests is not None else (100 if quick else 3000)
    args.seed = args.seed if args.seed is not None else (50 if quick else 1000)
    args.warmup = args.warmup if args.warmup is not None else (10 if quick else 200)
    args.rounds = args.rounds if args.rounds is not None else (2 if quick else 6)
    args.time_cap = args.time_cap if args.time_cap is not None else (15.0 if quick else 120.0)
    args.backends = [b.strip() for b in args.backends.split(",") if b.strip()]
    for b in args.backends:
        if b not in ("sqlite", "postgresql"):
            p.error(f"unknown backend {b!r} (use sqlite, postgresql)")
    if min(args.requests, args.seed, args.concurrency, args.workers, args.threads, args.client_procs, args.rounds) < 1:
        p.error("--requests, --seed, --concurrency, --workers, --threads, --client-procs and --rounds must be >= 1")
    args.rounds = min(args.rounds, args.requests)
    args.audit = [m.strip() for m in args.audit.split(",") if m.strip()] if args.audit else []
    for m in args.audit:
        if m not in AUDIT_MODES:
            p.error(f"unknown audit mode {m!r} (use {', '.join(AUDIT_MODES)})")
    return args


def run_audit_compare(bench: Bench, backend: str) -> list[Row]:
    """``--audit``: one server per audit mode (own database), every interaction in rounds that rotate
    the order of the servers (A B C, C B A …), so drifting load hits every mode alike."""
    args, tmp = bench.args, bench.tmp
    servers: list[Server] = []
    ids: dict[str, list[str]] = {}
    schemas: list[str] = []
    try:
        for mode in args.audit:
            if backend == "sqlite":
                url: str | None = f"sqlite:///{tmp / f'bench-audit-{mode}.sqlite'}"
            else:
                schemas.append(f"{PG_SCHEMA}_audit_{mode}")
                url = pg_prepare(args.pg_url, schemas[-1])
            if url is None:
                return []
            port = free_port()
            serve = [sys.executable, "-m", "server", "serve", "--host", HOST, "--port", str(port)]
            serve += ["--workers", str(args.workers), "--threads", str(args.threads)]
            audit, audit_mode = AUDIT_MODES[mode]
            env = {**server_env(url), "BIGMED_AUDIT": audit, "BIGMED_AUDIT_MODE": audit_mode}
            label = f"{backend}/audit-{mode}"
            print(f"\n== {label}: BIGMED_AUDIT={audit} BIGMED_AUDIT_MODE={audit_mode} (port {port})")
            server = Server(label, serve, env, port, tmp / f"{backend}-audit-{mode}.log")
            servers.append(server)
            bench.servers.append(server)
            server.wait_healthy(90)
            ids[label], _ = bench.seed(server)
            if not ids[label]:
                print(f"  {label}: seeding failed\n{server.log_tail()}")
                return []
        background = report_background(backend)
        cap = args.time_cap / args.rounds
        work = {s.name: bench.workload(ids[s.name], random.Random(f"{backend}-load")) for s in servers}
        rows: list[Row] = []
        for name in INTERACTIONS:
            for s in servers:
                bench.drive(s.port, work[s.name][name][0], cap)
            phases: dict[str, list[Phase]] = {s.name: [] for s in servers}
            measured = {s.name: work[s.name][name][1] for s in servers}
            size = -(-args.requests // args.rounds)
            for r in range(args.rounds):
                order = servers[r % len(servers) :] + servers[: r % len(servers)]
                for s in order if r % 2 == 0 else order[::-1]:
                    phases[s.name].append(bench.phase(s, measured[s.name][r * size : (r + 1) * size], cap))
            for s in servers:
                row = make_row(s.name, name, phases[s.name], background)
                rows.append(row)
                print(
                    f"  {s.name:<22} {name:<7} {row.rps:8.1f} req/s  p50 {row.p50_ms:6.2f} ms  "
                    f"p99 {row.p99_ms:7.2f} ms  errors {row.errors}" + ("  (time cap hit)" if row.capped else ""),
                    flush=True,
                )
        return rows
    except RuntimeError as exc:
        print(f"  {backend}: {exc}")
        return []
    finally:
        for server in servers:
            server.stop()
        for schema in schemas:
            pg_drop(args.pg_url, schema)


def print_audit_table(rows: list[Row], args: argparse.Namespace) -> list[str]:
    header = f"{'server':<22} {'interaction':<11} {'requests':>8} {'req/s':>9} {'p50 ms':>8} {'p99 ms':>8}"
    header += f" {'errors':>6} {'% off':>7}"
    lines = [header, "-" * len(header)]
    for backend in args.backends:
        off = {r.interaction: r.rps for r in rows if r.backend == f"{backend}/audit-off"}
        for name in INTERACTIONS:
            for r in (r for r in rows if r.backend.startswith(f"{backend}/") and r.interaction == name):
                share = f"{100 * r.rps / off[name]:6.1f}%" if off.get(name) else "      -"
                lines.append(
                    f"{r.backend:<22} {name:<11} {r.requests:>8} {r.rps:>9.1f} {r.p50_ms:>8.2f} {r.p99_ms:>8.2f} "
                    f"{r.errors:>6} {share:>7}"
                )
    for line in lines:
        print(line)
    return lines


def run_backend(bench: Bench, backend: str, url: str) -> list[Row]:
    args, tmp, servers = bench.args, bench.tmp, bench.servers
    port = free_port()
    serve = [sys.executable, "-m", "server", "serve", "--host", HOST, "--port", str(port)]
    serve += ["--workers", str(args.workers), "--threads", str(args.threads)]
    print(f"\n== {backend}: python -m server serve --workers {args.workers} --threads {args.threads} (port {port})")
    server = Server(backend, serve, server_env(url), port, tmp / f"{backend}.log")
    servers.append(server)
    bare: Server | None = None
    try:
        server.wait_healthy(90)
        background = report_background(backend)
        ids, body = bench.seed(server)
        if not ids:
            print(f"  {backend}: seeding failed; skipping its measurements\n{server.log_tail()}")
            return []
        if not args.no_bare:
            if body is None:
                print("  could not read a seeded Patient back; the bare app answers with a generated one")
                body = dumps({"resourceType": "Patient", "id": ids[0], **make_patient(random.Random("bare"), 1)})
            bare = start_bare(args, tmp, f"{BARE}@{backend}", body, servers)
        rows = bench.run_interactions(backend, server, bare, ids, background)
        if server.proc.poll() is not None:
            print(f"  {backend} server died during the run:\n{server.log_tail()}")
        return rows
    except RuntimeError as exc:
        print(f"  {backend}: {exc}")
        return []
    finally:
        server.stop()
        if bare is not None:
            bare.stop()


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    if args.serve_bare is not None:
        serve_bare(args.serve_bare, args.workers, args.threads, args.body_file)
        return 0
    procs = min(args.client_procs, args.concurrency)
    print(
        f"BigMed REST bench: {', '.join(args.backends)}; {args.requests} requests per interaction "
        f"(+{args.warmup} warm-up) in {args.rounds} round(s); {args.seed} seeded Patients; concurrency "
        f"{args.concurrency} over {procs} client process(es); gunicorn {args.workers} workers × {args.threads} "
        f"thread(s) ({'gthread' if args.threads > 1 else 'sync'}); {os.cpu_count()} CPUs; "
        f"Python {sys.version.split()[0]}",
        flush=True,
    )
    # Ctrl-C and SIGTERM both unwind through the ``finally`` below, which stops every server we started
    # (SIGINT explicitly: a shell starting us in the background would have left it ignored).
    signal.signal(signal.SIGINT, _interrupt)
    signal.signal(signal.SIGTERM, _interrupt)
    tmp = Path(tempfile.mkdtemp(prefix="bigmed-bench-"))
    pool = multiprocessing.get_context("fork").Pool(procs, initializer=_client_signals)
    bench = Bench(args, pool, tmp)
    rows: list[Row] = []
    try:
        for backend in args.backends:
            if args.audit:
                rows += run_audit_compare(bench, backend)
                continue
            url = f"sqlite:///{tmp / 'bench.sqlite'}" if backend == "sqlite" else pg_prepare(args.pg_url)
            if url is None:
                continue
            try:
                rows += run_backend(bench, backend, url)
            finally:
                if backend == "postgresql":
                    pg_drop(args.pg_url)
    except KeyboardInterrupt:
        print("\ninterrupted: stopping the servers", file=sys.stderr)
        return 130
    finally:
        pool.terminate()
        pool.join()
        for server in bench.servers:
            server.stop()
        shutil.rmtree(tmp, ignore_errors=True)
    print()
    if not rows:
        print("no figures: every backend failed or was skipped")
        return 1
    lines = print_audit_table(rows, args) if args.audit else print_table(rows, args)
    if args.json:
        payload = {
            "settings": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
            "cpus": os.cpu_count(),
            "rows": [asdict(r) for r in rows],
            "summary": lines,
        }
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(payload, indent=2, ensure_ascii=False) + "\n")
        print(f"results written to {args.json}")
    return 0 if all(r.errors == 0 for r in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
