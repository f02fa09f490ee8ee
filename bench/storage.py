"""Compressed resource JSON on SQLite: figures for the README (not a test).

    python bench/storage.py [--reads 2000]

Compares, in the same run, the SQLite store as it is (content as zstd frames with the shipped
dictionary, :mod:`server.store.content`) with the same store writing the plain JSON (the
baseline: what it did before):

1. The codec on data the dictionary was not trained on: the resources of HG00403A.vcf.gz (the
   VCF mapper's output), of the Synthea sample (``../shared/data/synthea``) and of
   ``bench/ehr.py``'s ORU^R01 feed (the HL7 v2 mapper's output): stored size as a share of the
   JSON, microseconds to compress and to decompress one resource.
2. HG00403A ingested (``ingest_vcf``, as the CLI runs it) into a fresh SQLite file each way: the
   database size (file + WAL) and the ingestion's seconds.
3. Reads from that database: ``read_many`` of 50 random resources (a search page's bodies), p50
   microseconds, each way.
"""

from __future__ import annotations

import argparse
import json
import random
import shutil
import statistics
import sys
import tarfile
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from ehr import oru  # noqa: E402  # bench/ is on sys.path as the script's folder
from vcf import HG00403A, Backend  # noqa: E402

from mappers.hl7v2 import MappedMessage, map_stream  # noqa: E402
from mappers.vcf import map_vcf  # noqa: E402
from server import jsonio  # noqa: E402
from server.fhir import crud  # noqa: E402
from server.fhir.operations import ingest_vcf as ingest  # noqa: E402
from server.store import content  # noqa: E402

SYNTHEA = ROOT.parent / "shared" / "data" / "synthea" / "smart-sample-100.tgz"


def synthea_resources() -> Iterator[dict[str, Any]]:
    with tarfile.open(SYNTHEA) as tar:
        for member in tar.getmembers():
            handle = tar.extractfile(member) if member.name.endswith(".json") else None
            if handle is not None:
                for entry in json.load(handle).get("entry") or ():
                    yield entry["resource"]


def hl7_resources(messages: int = 300) -> Iterator[dict[str, Any]]:
    rng = random.Random(5)
    feed = "".join(oru(n, 50, rng) for n in range(messages))
    for mapped in map_stream(feed):
        if isinstance(mapped, MappedMessage):
            yield from mapped.resources


def codec_row(label: str, resources: Iterator[dict[str, Any]]) -> str:
    bodies = [jsonio.dumps(r) for r in resources]
    started = time.perf_counter()
    frames = [content.compress(b) for b in bodies]
    packed = time.perf_counter()
    back = [content.decompress(f) for f in frames]
    done = time.perf_counter()
    assert back == bodies
    n = len(bodies)
    size = sum(map(len, bodies))
    return (
        f"| {label} | {n:,} | {size / n:,.0f} | {sum(map(len, frames)) / size:.1%} | "
        f"{(packed - started) / n * 1e6:.1f} | {(done - packed) / n * 1e6:.1f} |"
    )


def database_bytes(backend: Backend) -> int:
    base = Path(backend.ctx.store.database)
    return sum(p.stat().st_size for p in (base, base.with_name(base.name + "-wal")) if p.exists())


def _stored_as_is(data: bytes) -> bytes:
    return data


def ingest_and_read(folder: Path, compressed: bool, reads: int) -> dict[str, float]:
    """The baseline writes the JSON as it is: ``content.compress`` is the identity meanwhile (the
    ingestion's mapping process, forked meanwhile, encodes through it too)."""
    plain = content.compress
    if not compressed:
        content.compress = _stored_as_is
    try:
        backend = Backend("sqlite", folder)
        try:
            crud.update(backend.ctx, "Patient", "bench", {"resourceType": "Patient", "id": "bench"})
            result = ingest.ingest_vcf(backend.ctx, HG00403A, "bench", workers=ingest.default_workers())
            size = database_bytes(backend)
            store = backend.ctx.store
            rids = [int(r[0]) for r in store.query("SELECT rid FROM resources")]
            rng = random.Random(3)
            samples = []
            for _ in range(reads):
                page = rng.sample(rids, 50)
                started = time.perf_counter()
                store.read_many(page)
                samples.append(time.perf_counter() - started)
            return {"seconds": result.seconds, "mb": size / 1e6, "read_us": statistics.median(samples) * 1e6}
        finally:
            backend.close()
    finally:
        content.compress = plain


def main() -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    parser.add_argument("--reads", type=int, default=2000, help="read_many calls of 50 resources each way")
    args = parser.parse_args()

    print(f"Codec: zstd level {content.LEVEL} with dictionary {content.DICT_ID} (not trained on these sets)\n")
    print("| resources of | count | mean JSON bytes | stored share | compress µs | decompress µs |")
    print("| --- | ---: | ---: | ---: | ---: | ---: |")
    print(codec_row("HG00403A.vcf.gz (VCF mapper)", map_vcf(HG00403A, "bench").resources()), flush=True)
    if SYNTHEA.exists():
        print(codec_row("Synthea sample (100 patients)", synthea_resources()), flush=True)
    print(codec_row("bench/ehr.py ORU^R01 feed (HL7 v2 mapper)", hl7_resources()), flush=True)

    print("\nHG00403A ingested into SQLite, and read back (same run, one after the other)\n")
    print("| content | database MB | ingestion s | read_many(50) p50 µs |")
    print("| --- | ---: | ---: | ---: |")
    folder = Path(tempfile.mkdtemp(prefix="bigmed-bench-storage-"))
    try:
        for compressed in (False, True, False, True):
            r = ingest_and_read(folder, compressed, args.reads)
            label = "zstd + dictionary" if compressed else "plain JSON (before)"
            print(f"| {label} | {r['mb']:.1f} | {r['seconds']:.2f} | {r['read_us']:.0f} |", flush=True)
    finally:
        shutil.rmtree(folder, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
