"""Regenerate the zstd dictionary the SQLite store compresses resource JSON with (``server/store/data``).

The dictionary (:mod:`server.store.content`) is trained (``zstandard.train_dictionary``, COVER)
on JSON the server stores, serialised as the server serialises it (``server.jsonio.dumps``):

- every resource of the official FHIR R4 (4.0.1) examples (CC0-1.0, ``examples.tgz`` from npm
  ``hl7.fhir.r4.examples`` 4.0.1), Bundles' entries included;
- what :mod:`mappers.vcf` makes of the small test VCFs of ``../shared/data/vcf`` (cyvcf2's test
  files, MIT; vcf2fhir's examples, Apache-2.0) other than ``HG00403A.vcf.gz``;
- what :mod:`mappers.hl7v2` makes of synthetic ORU^R01 and ADT^A01 messages written here.

The benchmark inputs (``HG00403A.vcf.gz``, the Synthea sample, ``bench/ehr.py``'s feed) are left
out, so the ratios the benchmarks report are measured on data the dictionary has not seen.
``bench/storage.py`` reports the ratio on those held-out sets.

A dictionary is never replaced: a new one gets the next ``DICT_ID`` and its own file, and the
store keeps reading frames of every earlier id (each frame names its dictionary).

Usage: ``python scripts/gen_content_dictionary.py [--source DIR] [--out FILE]``.
"""

from __future__ import annotations

import argparse
import json
import random
import sys
import tarfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

import zstandard  # noqa: E402
from cyvcf2 import VCF  # noqa: E402

from mappers.hl7v2 import MappedMessage, map_stream  # noqa: E402
from mappers.vcf import VcfError, map_vcf  # noqa: E402
from server import jsonio  # noqa: E402
from server.store.content import DICT_ID, DICTIONARY, LEVEL  # noqa: E402

DEFAULT_SOURCE = REPO.parent / "shared" / "data"
SIZE = 64 * 1024
HELD_OUT_VCF = "HG00403A.vcf.gz"


def _resources(doc: Any) -> Iterator[dict[str, Any]]:
    if isinstance(doc, dict) and "resourceType" in doc:
        yield doc
        for entry in doc.get("entry") or () if doc["resourceType"] == "Bundle" else ():
            if isinstance(entry, dict) and isinstance(entry.get("resource"), dict):
                yield from _resources(entry["resource"])


def r4_examples(source: Path) -> Iterator[dict[str, Any]]:
    with tarfile.open(source / "fhir-r4" / "examples.tgz") as tar:
        for member in sorted(tar.getmembers(), key=lambda m: m.name):
            handle = tar.extractfile(member) if member.name.endswith(".json") else None
            if handle is not None:
                yield from _resources(json.load(handle))


def vcf_resources(source: Path) -> Iterator[dict[str, Any]]:
    files = sorted(p for p in (source / "vcf").glob("*/*.vcf*") if p.suffix in (".vcf", ".gz"))
    for path in files:
        if path.name == HELD_OUT_VCF:
            continue
        try:
            sample = VCF(str(path)).samples[0]
            yield from map_vcf(path, "example", sample=sample, build=_build(path)).resources()
        except Exception:  # noqa: BLE001  # a test file that is broken on purpose
            continue


def _build(path: Path) -> str | None:
    """None when the header names the assembly, else GRCh37 (the test files without one are b37)."""
    try:
        next(iter(map_vcf(path, "example", sample=VCF(str(path)).samples[0]).resources()), None)
    except VcfError as exc:
        if "unknown build" in exc.message:
            return "GRCh37"
    return None


def hl7_messages(count: int, seed: int = 11) -> str:
    """Synthetic ADT^A01 and ORU^R01 messages (invented names and values)."""
    rng = random.Random(seed)
    labs = [
        ("2345-7", "Glucose", "mg/dL", "70-99"),
        ("718-7", "Hemoglobin", "g/dL", "12-16"),
        ("2160-0", "Creat", "mg/dL", "0.6-1.2"),
    ]
    out = []
    for n in range(count):
        pid = f"PID|1||{100000 + n}^^^HOSP^MR||Doe{n}^Jane^Q||19{rng.randint(40, 99)}0101|F|||1 Main St^^Oslo^^0150^NO"
        stamp = f"2024{rng.randint(1, 12):02d}{rng.randint(1, 28):02d}0800"
        msh = f"MSH|^~\\&|LAB|HOSP|EHR|HOSP|{stamp}||"
        if n % 3 == 0:
            out.append(f"{msh}ADT^A01|A{n}|P|2.5.1\r{pid}\rPV1|1|I|W1^101^1|||||1234^Smith^John\r")
            continue
        obx = "".join(
            f"OBX|{i + 1}|NM|{code}^{name}^LN||{rng.uniform(1, 150):.1f}|{unit}|{ref}|N|||F|||{stamp}\r"
            for i, (code, name, unit, ref) in enumerate(labs)
        )
        out.append(f"{msh}ORU^R01|M{n}|P|2.5.1\r{pid}\rOBR|1||F{n}|24323-8^Metabolic panel^LN|||{stamp}\r{obx}")
    return "".join(out)


def hl7_resources() -> Iterator[dict[str, Any]]:
    for result in map_stream(hl7_messages(60), "gen_content_dictionary"):
        if isinstance(result, MappedMessage):
            yield from result.resources


def samples(source: Path) -> list[bytes]:
    out = [jsonio.dumps(r) for r in r4_examples(source)]
    out += [jsonio.dumps(r) for r in vcf_resources(source)]
    out += [jsonio.dumps(r) for r in hl7_resources()]
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--source", type=Path, default=DEFAULT_SOURCE, help="the shared data folder")
    parser.add_argument("--out", type=Path, default=DICTIONARY, help="dictionary file to write")
    args = parser.parse_args(argv)
    data = samples(args.source)
    trained = zstandard.train_dictionary(SIZE, data, dict_id=DICT_ID, level=LEVEL, threads=1)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_bytes(trained.as_bytes())
    total = sum(map(len, data))
    compressor = zstandard.ZstdCompressor(level=LEVEL, dict_data=trained)
    packed = sum(len(compressor.compress(d)) for d in data)
    print(f"wrote {args.out} ({len(trained.as_bytes()):,} bytes, id {DICT_ID}) from {len(data):,} samples")
    print(f"ratio on its own samples: {packed / total:.3f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
