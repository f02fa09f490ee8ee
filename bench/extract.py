"""Index-row extraction microbenchmark: µs per ``extract`` call by resource type (prints figures; not a test).

What it measures
    ``server.search.extract.extract`` (every search parameter of the resource's type evaluated on
    the resource, rows built and de-duplicated) on the Synthea sample
    (``../shared/data/synthea/smart-sample-100.tgz``, ``urn:uuid`` references rewritten to
    ``Type/id``), one core, CPU time (``time.process_time``) so that other load on the machine
    counts less. Each resource type's resources are extracted ``--rounds`` times and the best
    time is reported, as µs per resource, with the type's resource count; the last line is
    the whole sample (all types, weighted by their counts) as µs/resource and resources/s.
    The extractors are compiled before timing (the first call per type compiles them). Timing
    goes by chunks of 200 resources: a type's figure is the sum of each chunk's best round, so
    a burst of load on a shared machine spoils a few chunk timings rather than the figure. The
    extractor's memo tables (``normalize_string`` …) are emptied before each chunk, so repeated
    rounds do not find every string already remembered (a pessimistic figure: a long ingest keeps
    what it met in earlier resources). Without ``--types`` a last line times whole passes over
    the sample in bundle order (as a load meets the resources, memo tables emptied per pass).

    With ``--compare MODULE_PATH`` another copy of ``extract.py`` (e.g. an older version saved
    from git: ``git show HEAD:server/search/extract.py > /tmp/old_extract.py``) is timed the same
    way, interleaved round by round, and its rows are checked to be identical.

How to run
    .venv/bin/python bench/extract.py                       # all types in the sample
    .venv/bin/python bench/extract.py --types Observation,Patient --rounds 10
    .venv/bin/python bench/extract.py --compare /tmp/old_extract.py
"""

from __future__ import annotations

import argparse
import importlib.util
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from search import read_bundles  # noqa: E402  # bench/search.py: bench/ is the script's folder

from server.search.extract import IndexRows, extract  # noqa: E402  # the repository root is put on sys.path first

SYNTHEA = REPO.parent / "shared" / "data" / "synthea" / "smart-sample-100.tgz"
TABLES = ("token", "string", "reference", "date", "number", "quantity", "uri")
CHUNK = 200  # resources timed in one go

Extract = Callable[[dict[str, Any]], IndexRows]


def read_resources(path: Path) -> list[dict[str, Any]]:
    """Every entry's resource in bundle order, references rewritten from ``urn:uuid:`` fullUrls to ``Type/id``."""
    return [resource for bundle in read_bundles(path) for resource in bundle]


def _rows(rows: IndexRows) -> list[str]:
    return [repr(getattr(rows, t)) for t in TABLES]


def _forget(module: Any) -> None:
    """Empty the module's memo tables (normalised strings, reference targets, date ranges), if any."""
    for name in ("_normalized", "_targets", "_ranges"):
        table = getattr(module, name, None)
        if isinstance(table, dict):
            table.clear()


def _time(fn: Extract, resources: list[dict[str, Any]]) -> float:
    _forget(sys.modules[fn.__module__])  # a repeated run must not find every string remembered
    start = time.process_time()
    for res in resources:
        fn(res)
    return time.process_time() - start


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--types", help="comma-separated resource types (default: every type in the sample)")
    parser.add_argument("--rounds", type=int, default=5, help="timed rounds per type (the best is reported)")
    parser.add_argument("--compare", type=Path, help="another extract.py to time and check against")
    parser.add_argument("--data", type=Path, default=SYNTHEA, help="Synthea .tgz of transaction bundles")
    args = parser.parse_args(argv)

    resources = read_resources(args.data)
    by_type: dict[str, list[dict[str, Any]]] = {}
    for res in resources:
        by_type.setdefault(res["resourceType"], []).append(res)
    wanted = args.types.split(",") if args.types else sorted(by_type, key=lambda t: -len(by_type[t]))

    impls: list[tuple[str, Extract]] = [("now", extract)]
    if args.compare is not None:
        spec = importlib.util.spec_from_file_location("_compared_extract", args.compare)
        if spec is None or spec.loader is None:
            parser.error(f"cannot import {args.compare}")
        module = importlib.util.module_from_spec(spec)
        sys.modules[spec.name] = module  # dataclasses look their module up there
        spec.loader.exec_module(module)
        impls.insert(0, ("compared", module.extract))
        mismatches = 0
        for res in resources:
            if _rows(module.extract(res)) != _rows(extract(res)):
                mismatches += 1
                if mismatches <= 3:
                    print(f"rows differ: {res['resourceType']}/{res.get('id')}")
        print(f"rows identical on {len(resources) - mismatches}/{len(resources)} resources")

    for _, fn in impls:  # compile every type's extractors before timing
        for rtype in wanted:
            for res in by_type.get(rtype, [])[:1]:
                fn(res)

    header = f"{'type':<28}{'n':>7}" + "".join(f"{name + ' µs':>14}" for name, _ in impls)
    print(header + ("   speed-up" if len(impls) == 2 else ""))
    totals = [0.0] * len(impls)
    count = 0
    for rtype in wanted:
        group = by_type.get(rtype, [])
        if not group:
            print(f"{rtype:<28}{0:>7}  (not in the sample)")
            continue
        # chunks of CHUNK resources, the implementations alternating within each round: a burst
        # of load elsewhere spoils a few chunk timings, not the type's figure
        chunks = [group[i : i + CHUNK] for i in range(0, len(group), CHUNK)]
        chunk_best = [[float("inf")] * len(impls) for _ in chunks]
        for r in range(args.rounds):
            for chunk, chunk_min in zip(chunks, chunk_best, strict=True):
                order = list(enumerate(impls)) if r % 2 == 0 else list(reversed(list(enumerate(impls))))
                for i, (_, fn) in order:
                    chunk_min[i] = min(chunk_min[i], _time(fn, chunk))
        best = [sum(chunk_min[i] for chunk_min in chunk_best) for i in range(len(impls))]
        for i, b in enumerate(best):
            totals[i] += b
        count += len(group)
        line = f"{rtype:<28}{len(group):>7}" + "".join(f"{b / len(group) * 1e6:>14.1f}" for b in best)
        print(line + (f"{best[0] / best[1]:>10.2f}x" if len(impls) == 2 else ""))
    if count:
        line = f"{'all':<28}{count:>7}" + "".join(f"{t / count * 1e6:>14.1f}" for t in totals)
        print(line + (f"{totals[0] / totals[1]:>10.2f}x" if len(impls) == 2 else ""))
        print(
            "resources/s (one core): "
            + ", ".join(f"{name} {count / t:,.0f}" for (name, _), t in zip(impls, totals, strict=True))
        )
    if not args.types:
        # as a load meets them: every resource once, in bundle (patient) order, memo tables empty at
        # the start of the pass only; the best of --rounds passes
        passes = [float("inf")] * len(impls)
        for r in range(args.rounds):
            order = list(enumerate(impls)) if r % 2 == 0 else list(reversed(list(enumerate(impls))))
            for i, (_, fn) in order:
                passes[i] = min(passes[i], _time(fn, resources))
        line = f"{'load order, one pass':<28}{len(resources):>7}"
        line += "".join(f"{t / len(resources) * 1e6:>14.1f}" for t in passes)
        print(line + (f"{passes[0] / passes[1]:>10.2f}x" if len(impls) == 2 else ""))
    return 0


if __name__ == "__main__":
    sys.exit(main())
