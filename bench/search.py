"""Search benchmark: indexing throughput and search latency on Synthea data (prints figures; not a test).

What it measures (http://hl7.org/fhir/R4/search.html)
    For each backend (SQLite, then PostgreSQL) the script loads the Synthea sample
    (``../shared/data/synthea/smart-sample-100.tgz``: 100 transaction bundles, 11,659 resources,
    ``urn:uuid`` references rewritten to ``Type/id``) and, with ``--scale N`` (default 10), N-1
    clones of it with new ids (every id and reference of a clone gets a ``-cK`` suffix), so the
    default run holds ~116,600 resources. Then:

    ``load``         resources/s of the bulk loader (``server.fhir.load.load``, what ``python -m
                     server load`` runs, its worker processes included) on that data written as
                     NDJSON files: parse, validate (R4 StructureDefinitions), extract index rows,
                     write resources, history and index rows; the product's indexing throughput
    ``extract``      resources/s of index-row extraction alone (CPU, one core; the Synthea sample)
    ``reindex``      resources/s of ``python -m server reindex`` with its default worker processes
                     (read, parse, extract, compare with the stored rows, write what changed: here
                     nothing, as it runs right after the load)
    queries          p50/p99 latency (ms) of a representative mix, each run ``--repeat`` times with
                     rotating values, in-process through the domain function
                     ``server.fhir.search.search`` (parse, SQL, read the page, build the Bundle) and,
                     with ``--http``, through the Flask test client (adds routing and JSON output;
                     ``Cache-Control: no-cache`` so the query cache does not answer):

    token        Observation?code=http://loinc.org|CODE                    (a frequent LOINC code)
    date         Observation?date=geY-01-01&date=ltY-07-01
    reference    Observation?patient=Patient/ID
    chain        Observation?subject:Patient.name=FAMILY
    chain2       Encounter?service-provider.name=ORG-NAME-PREFIX&patient.gender=female
    include      Observation?code=CODE&_include=Observation:subject
    revinclude   Patient?_id=ID&_revinclude=Encounter:patient
    sort         Observation?code=CODE&_sort=-date
    has          Patient?_has:Observation:patient:code=CODE
    composite    Observation?code-value-quantity=http://loinc.org|8302-2$gt180
    page5        the 5th page of Observation?code=CODE&_count=50 (following next links)
    ref+token    Observation?subject=Patient/ID&code=http://loinc.org|CODE  (a frequent code, one patient)
    ref+rare     Observation?subject=Patient/BIG&code=http://loinc.org|RARE (a patient with many
                 Observations, a code few of them have)
    pat+cat      Observation?patient=ID&category=laboratory
    cat+code     Observation?category=laboratory&code=http://loinc.org|CODE  (two frequent tokens)
    code+date    Observation?code=CODE&date=geY-01-01
    compartment  Patient/ID/Observation?code=http://loinc.org|CODE       (compartment search)

    Goals (issue 3): token first page p50 <= 10 ms, chain p50 <= 50 ms on the 10x set, indexing
    >= 3,000 resources/s.

How to run
    .venv/bin/python bench/search.py                       # both backends, 10x, in-process
    .venv/bin/python bench/search.py --backends sqlite --scale 1 --repeat 20 --http
    ``--pg-url`` (default ``postgresql://postgres@127.0.0.1:5432/test``): the bench drops and recreates
    its private schema (``--pg-schema``, default ``bigmed_search_bench``) and drops it at the end;
    PostgreSQL is skipped with a message when unreachable. SQLite goes to a temporary directory.
    ``--explain`` prints the query plans (EXPLAIN ANALYZE, BUFFERS on PostgreSQL) of the first run
    of each query. To iterate on search SQL without reloading: ``--keep`` leaves the PostgreSQL
    schema in place at the end, and ``--reuse`` takes an existing, loaded schema as it is (no load,
    no reindex: their rows show ``nan``; the statistics are refreshed); drop the schema yourself
    when done.
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import io
import json
import random
import statistics
import sys
import tarfile
import tempfile
import time
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from server import create_app, jsonio  # noqa: E402  # the repository root is put on sys.path first
from server.config import Config  # noqa: E402
from server.fhir.context import FhirContext  # noqa: E402
from server.fhir.load import default_workers, load  # noqa: E402
from server.fhir.search import search, search_compartment  # noqa: E402
from server.search.compartments import compartments  # noqa: E402
from server.search.extract import extract  # noqa: E402
from server.search.query import compartment_clause, page_sql, parse_search  # noqa: E402
from server.search.reindex import reindex  # noqa: E402

SYNTHEA = REPO.parent / "shared" / "data" / "synthea" / "smart-sample-100.tgz"
PG_SCHEMA = "bigmed_search_bench"
BASE = "http://bench/fhir"


# -- data ----------------------------------------------------------------------------------------


def read_bundles(path: Path) -> list[list[dict[str, Any]]]:
    """The resources of each bundle, with urn:uuid references rewritten to Type/id."""
    bundles: list[list[dict[str, Any]]] = []
    with tarfile.open(path) as tar:
        for member in sorted(tar.getmembers(), key=lambda m: m.name):
            fh = tar.extractfile(member) if member.isfile() and member.name.endswith(".json") else None
            if fh is not None:
                bundle = json.load(io.TextIOWrapper(fh, encoding="utf-8"))
                bundles.append([e["resource"] for e in bundle["entry"]])
    urls = {f"urn:uuid:{r['id']}": f"{r['resourceType']}/{r['id']}" for b in bundles for r in b}
    for b in bundles:
        for r in b:
            _rewrite(r, lambda ref: urls.get(ref, ref))
    return bundles


def _rewrite(node: Any, fn: Callable[[str], str]) -> None:
    if isinstance(node, dict):
        for key, value in node.items():
            if key == "reference" and isinstance(value, str):
                node[key] = fn(value)
            else:
                _rewrite(value, fn)
    elif isinstance(node, list):
        for item in node:
            _rewrite(item, fn)


def clone(bundles: list[list[dict[str, Any]]], k: int) -> Iterator[dict[str, Any]]:
    """Copy ``k`` of every resource: new ids (``-cK``) and references to the copies."""
    suffix = f"-c{k}"

    def ref(value: str) -> str:
        return value + suffix if "/" in value and not value.startswith("#") else value

    for b in bundles:
        for r in b:
            c = copy.deepcopy(r)
            c["id"] = r["id"] + suffix
            _rewrite(c, ref)
            yield c


# -- measurements ----------------------------------------------------------------------------------


def write_ndjson(resources: Iterator[dict[str, Any]], folder: Path, lines_per_file: int = 5000) -> int:
    """Write ``resources`` as NDJSON files (one type per file, as an export would) into ``folder``."""
    files: dict[str, tuple[Any, int]] = {}
    n = 0
    for r in resources:
        type_ = r["resourceType"]
        handle, count = files.get(type_, (None, lines_per_file))
        if count >= lines_per_file:
            if handle is not None:
                handle.close()
            part = sum(1 for f in folder.iterdir() if f.name.startswith(type_ + "."))
            handle, count = (folder / f"{type_}.{part:03d}.ndjson").open("wb"), 0
        handle.write(jsonio.dumps(r) + b"\n")
        files[type_] = (handle, count + 1)
        n += 1
    for handle, _ in files.values():
        handle.close()
    return n


def _queries(bundles: list[list[dict[str, Any]]], scale: int, rng: random.Random) -> dict[str, list[str]]:
    resources = [r for b in bundles for r in b]
    codes = Counter(
        c["code"]
        for r in resources
        if r["resourceType"] == "Observation"
        for c in r.get("code", {}).get("coding", [])
        if c.get("system") == "http://loinc.org"
    )
    frequent = [c for c, _ in codes.most_common(12)]
    patients = [r for r in resources if r["resourceType"] == "Patient"]
    per_patient = Counter(
        r["subject"]["reference"] for r in resources if r["resourceType"] == "Observation" and "subject" in r
    )
    big = [ref for ref, _ in per_patient.most_common(5)]
    mine = Counter(
        c["code"]
        for r in resources
        if r["resourceType"] == "Observation" and r.get("subject", {}).get("reference") in big
        for c in r.get("code", {}).get("coding", [])
        if c.get("system") == "http://loinc.org"
    )
    rare = sorted(c for c, k in mine.items() if k <= 3)[:12] or [c for c, _ in codes.most_common()[-12:]]
    suffixes = [""] + [f"-c{k}" for k in range(1, scale)]

    def pid() -> str:
        return rng.choice(patients)["id"] + rng.choice(suffixes)

    families = sorted({r["name"][0]["family"] for r in patients if r.get("name")})
    orgs = sorted({r["name"][:4] for r in resources if r["resourceType"] == "Organization" and r.get("name")})
    n = 64
    return {
        "token": [f"Observation?code=http://loinc.org|{rng.choice(frequent)}" for _ in range(n)],
        "date": [f"Observation?date=ge{y}-01-01&date=lt{y}-07-01" for y in (rng.randint(2000, 2019) for _ in range(n))],
        "reference": [f"Observation?patient=Patient/{pid()}" for _ in range(n)],
        "chain": [f"Observation?subject:Patient.name={rng.choice(families)}" for _ in range(n)],
        "chain2": [f"Encounter?service-provider.name={rng.choice(orgs)}&patient.gender=female" for _ in range(n)],
        "include": [f"Observation?code={rng.choice(frequent)}&_include=Observation:subject" for _ in range(n)],
        "revinclude": [f"Patient?_id={pid()}&_revinclude=Encounter:patient" for _ in range(n)],
        "sort": [f"Observation?code={rng.choice(frequent)}&_sort=-date" for _ in range(n)],
        "has": [f"Patient?_has:Observation:patient:code={rng.choice(frequent)}" for _ in range(n)],
        "composite": ["Observation?code-value-quantity=http://loinc.org|8302-2$gt180"] * n,
        "page5": [f"Observation?code={rng.choice(frequent[:3])}&_count=50" for _ in range(n)],
        "ref+token": [
            f"Observation?subject=Patient/{pid()}&code=http://loinc.org|{rng.choice(frequent)}" for _ in range(n)
        ],
        "ref+rare": [
            f"Observation?subject={rng.choice(big)}{rng.choice(suffixes)}&code=http://loinc.org|{rng.choice(rare)}"
            for _ in range(n)
        ],
        "pat+cat": [f"Observation?patient={pid()}&category=laboratory" for _ in range(n)],
        "code+date": [
            f"Observation?code={rng.choice(frequent)}&date=ge{rng.randint(2000, 2019)}-01-01" for _ in range(n)
        ],
        "compartment": [f"Patient/{pid()}/Observation?code=http://loinc.org|{rng.choice(frequent)}" for _ in range(n)],
        "cat+code": [f"Observation?category=laboratory&code=http://loinc.org|{rng.choice(frequent)}" for _ in range(n)],
    }


def _split(query: str) -> tuple[str, list[tuple[str, str]]]:
    path, _, qs = query.partition("?")
    return path, parse_qsl(qs, keep_blank_values=True)


def _search(ctx: FhirContext, path: str, params: list[tuple[str, str]]) -> dict[str, Any]:
    """A type-level search, or a compartment search for ``Compartment/id/Type``."""
    parts = path.split("/")
    if len(parts) == 3:
        return search_compartment(ctx, BASE, parts[0], parts[1], parts[2], params)
    return search(ctx, BASE, path, params)


def _page5(ctx: FhirContext, query: str) -> dict[str, Any]:
    path, params = _split(query)
    bundle = _search(ctx, path, params)
    for _ in range(4):
        nxt = next((x["url"] for x in bundle["link"] if x["relation"] == "next"), None)
        if nxt is None:
            break
        path, params = _split(nxt.removeprefix(BASE + "/"))
        bundle = _search(ctx, path, params)
    return bundle


def run_queries(
    ctx: FhirContext, app: Any, queries: dict[str, list[str]], repeat: int, http: bool, explain: bool
) -> list[dict[str, Any]]:
    client = app.test_client() if http else None
    out = []
    for name, values in queries.items():
        runs = [values[i % len(values)] for i in range(repeat)]
        # warm-up: one run of each distinct value's plan
        for q in runs[:3]:
            path, params = _split(q)
            _search(ctx, path, params)
        if explain:
            _explain(ctx, runs[0])
        times, sizes = [], []
        for q in runs:
            path, params = _split(q)
            start = time.perf_counter()
            bundle = _page5(ctx, q) if name == "page5" else _search(ctx, path, params)
            times.append((time.perf_counter() - start) * 1000)
            sizes.append(len(bundle["entry"]))
        row = {"query": name, "p50": _pct(times, 50), "p99": _pct(times, 99), "entries": statistics.mean(sizes)}
        if client is not None and name != "page5":
            http_times = []
            for q in runs:
                start = time.perf_counter()
                resp = client.get(f"/fhir/{q}", headers={"Cache-Control": "no-cache"})  # measure, not the cache
                http_times.append((time.perf_counter() - start) * 1000)
                assert resp.status_code == 200, resp.get_data()[:300]
            row["http_p50"], row["http_p99"] = _pct(http_times, 50), _pct(http_times, 99)
        out.append(row)
        line = f"p50 {row['p50']:8.2f} ms  p99 {row['p99']:8.2f} ms  entries {row['entries']:.0f}"
        print(f"  {name:<11} {line}", flush=True)
    return out


def _pct(values: list[float], pct: int) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(pct / 100 * (len(ordered) - 1)))]


def _explain(ctx: FhirContext, query: str) -> None:
    path, params = _split(query)
    parts = path.split("/")
    parsed = parse_search(ctx.registry, parts[-1], params)
    if len(parts) == 3:
        parsed.clauses.insert(0, compartment_clause(compartments()[parts[0]], parts[1], parts[2]))
    sql, args = page_sql(parsed, None, 51)
    prefix = "EXPLAIN QUERY PLAN " if ctx.store.dialect == "sqlite" else "EXPLAIN (ANALYZE, BUFFERS) "
    print(f"    -- {query}\n    {sql}")
    for row in ctx.store.query(prefix + sql, args):
        print("      " + " | ".join(str(c) for c in row))


# -- backends ----------------------------------------------------------------------------------------


@contextlib.contextmanager
def _backend(name: str, args: argparse.Namespace) -> Iterator[tuple[Any, bool]]:
    """The app on a fresh database, and whether it holds an earlier run's data (``--reuse``)."""
    if name == "sqlite":
        with tempfile.TemporaryDirectory() as tmp:
            app = create_app(Config(database_url=f"sqlite:///{tmp}/bench.sqlite", base_url="http://bench"))
            try:
                yield app, False
            finally:
                app.extensions["bigmed"].store.close()
        return
    import psycopg

    pg_url, schema = args.pg_url, args.pg_schema
    with psycopg.connect(pg_url, autocommit=True, connect_timeout=3) as conn:
        found = conn.execute(
            "SELECT 1 FROM pg_tables WHERE schemaname = %s AND tablename = 'resources'", (schema,)
        ).fetchone()
        loaded = found and conn.execute(f"SELECT EXISTS (SELECT 1 FROM {schema}.resources)").fetchone()
        reused = bool(args.reuse and loaded and loaded[0])
        if not reused:
            conn.execute(f"DROP SCHEMA IF EXISTS {schema} CASCADE")
            conn.execute(f"CREATE SCHEMA {schema}")
    sep = "&" if "?" in pg_url else "?"
    app = create_app(Config(database_url=f"{pg_url}{sep}options=-csearch_path%3D{schema}", base_url="http://bench"))
    try:
        yield app, reused
    finally:
        app.extensions["bigmed"].store.close()
        if not args.keep:
            with psycopg.connect(pg_url, autocommit=True) as conn:
                conn.execute(f"DROP SCHEMA IF EXISTS {schema} CASCADE")


def _analyze(ctx: FhirContext) -> None:
    ctx.store.analyze()


def bench_backend(name: str, args: argparse.Namespace, bundles: list[list[dict[str, Any]]]) -> dict[str, Any]:
    with _backend(name, args) as (app, reused):
        ctx: FhirContext = app.extensions["bigmed"]
        if reused:
            print("  reusing the loaded schema: no load, no reindex", flush=True)
            _analyze(ctx)
            n = ctx.store.query("SELECT COUNT(*) FROM resources")[0][0]
            queries = _queries(bundles, args.scale, random.Random(42))
            rows = run_queries(ctx, app, queries, args.repeat, args.http, args.explain)
            nan = float("nan")
            return {"backend": name, "resources": n, "extract": nan, "write": nan, "reindex": nan, "queries": rows}
        originals = [copy.deepcopy(r) for b in bundles for r in b]

        def everything() -> Iterator[dict[str, Any]]:
            yield from originals
            for k in range(1, args.scale):
                yield from clone(bundles, k)

        docs = [jsonio.loads(jsonio.dumps(r)) for r in originals]
        start = time.perf_counter()
        for doc in docs:
            extract(doc, ctx.registry)
        ex_rate = len(docs) / (time.perf_counter() - start)
        print(f"  extract     {ex_rate:,.0f} resources/s", flush=True)
        with tempfile.TemporaryDirectory() as tmp:
            written = write_ndjson(everything(), Path(tmp))
            report = load(ctx, [tmp], progress=False, batch_size=args.batch)
        assert not report.failures and report.processed == written, report.summary()
        n, spent = report.processed, report.seconds
        print(f"  load        {n:,} resources in {spent:.1f} s: {n / spent:,.0f} resources/s", flush=True)
        _analyze(ctx)  # fresh statistics, as autovacuum would give a live server
        start = time.perf_counter()
        m = reindex(ctx.store, ctx.registry, batch=args.batch, workers=default_workers())
        re_spent = time.perf_counter() - start
        print(f"  reindex     {m:,} resources in {re_spent:.1f} s: {m / re_spent:,.0f} resources/s", flush=True)
        _analyze(ctx)
        queries = _queries(bundles, args.scale, random.Random(42))
        rows = run_queries(ctx, app, queries, args.repeat, args.http, args.explain)
        return {
            "backend": name,
            "resources": n,
            "extract": ex_rate,
            "write": n / spent,
            "reindex": m / re_spent,
            "queries": rows,
        }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--backends", default="sqlite,postgresql", help="comma-separated: sqlite,postgresql")
    parser.add_argument("--scale", type=int, default=10, help="copies of the Synthea sample (1 = as shipped)")
    parser.add_argument("--repeat", type=int, default=100, help="runs per query")
    parser.add_argument("--batch", type=int, default=2000, help="resources per write transaction")
    parser.add_argument("--pg-url", default="postgresql://postgres@127.0.0.1:5432/test")
    parser.add_argument("--pg-schema", default=PG_SCHEMA, help="the PostgreSQL schema the bench owns")
    parser.add_argument("--keep", action="store_true", help="leave the PostgreSQL schema in place at the end")
    parser.add_argument("--reuse", action="store_true", help="take an existing loaded PostgreSQL schema as it is")
    parser.add_argument("--http", action="store_true", help="also time each query through the Flask test client")
    parser.add_argument("--explain", action="store_true", help="print the query plan of each query")
    parser.add_argument("--json", type=Path, default=None, help="also write the figures to this file")
    args = parser.parse_args(argv)
    if not SYNTHEA.exists():
        print(f"Synthea sample not found at {SYNTHEA}", file=sys.stderr)
        return 2
    bundles = read_bundles(SYNTHEA)
    results = []
    for name in (b.strip() for b in args.backends.split(",") if b.strip()):
        print(f"{name}: scale {args.scale}", flush=True)
        try:
            results.append(bench_backend(name, args, bundles))
        except Exception as exc:  # an unreachable PostgreSQL skips that backend, loudly
            if name != "postgresql" or "connect" not in str(exc).lower():
                raise
            print(f"  skipped: PostgreSQL not reachable at {args.pg_url}: {exc}", flush=True)
    _table(results, args)
    if args.json:
        args.json.write_text(json.dumps(results, indent=1))
    return 0


def _table(results: list[dict[str, Any]], args: argparse.Namespace) -> None:
    if not results:
        return
    print()
    head = f"{'':<12}" + "".join(f"{r['backend'] + ' p50/p99 ms':>26}" for r in results)
    print(f"Search benchmark: Synthea x{args.scale} ({results[0]['resources']:,} resources), {args.repeat} runs/query")
    print(head)
    print(f"{'extract':<12}" + "".join(f"{r['extract']:>21,.0f} r/s" for r in results))
    print(f"{'load':<12}" + "".join(f"{r['write']:>21,.0f} r/s" for r in results))
    print(f"{'reindex':<12}" + "".join(f"{r['reindex']:>21,.0f} r/s" for r in results))
    for i, q in enumerate(results[0]["queries"]):
        cells = []
        for r in results:
            row = r["queries"][i]
            cells.append(f"{row['p50']:>12.1f} / {row['p99']:<9.1f}")
        print(f"{q['query']:<12}" + "".join(f"{c:>26}" for c in cells))
    if args.http:
        print("through the Flask test client (routing + JSON output):")
        for i, q in enumerate(results[0]["queries"]):
            if "http_p50" in q:
                cells = [f"{r['queries'][i]['http_p50']:>12.1f} / {r['queries'][i]['http_p99']:<9.1f}" for r in results]
                print(f"{q['query']:<12}" + "".join(f"{c:>26}" for c in cells))


if __name__ == "__main__":
    sys.exit(main())
