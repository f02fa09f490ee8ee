"""What the generators of vendored JSON tables share (``scripts/gen_*.py``; not run on its own).

The tables are hand-assembled JSON text, one record per line, so that a regeneration diff shows
only what changed: :func:`compact` writes one value, :func:`joined` one line per item with the
commas in between, :func:`write_table` checks that the text is still the very JSON of the table
before writing it, and :func:`arguments` is the generators' ``--source DIR --out FILE`` command
line. The generators run as scripts, so their folder is on ``sys.path``.
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Iterable
from pathlib import Path
from typing import Any

__all__ = ["arguments", "compact", "joined", "write_table"]


def compact(value: Any) -> str:
    """One JSON value on one line (no spaces, UTF-8 kept)."""
    return json.dumps(value, ensure_ascii=False, separators=(",", ":"))


def joined(items: Iterable[str]) -> list[str]:
    """The items as lines, each but the last followed by a comma."""
    out = list(items)
    return [item + ("," if i < len(out) - 1 else "") for i, item in enumerate(out)]


def write_table(out: Path, doc: Any, text: str) -> str:
    """Write ``text`` (the hand-assembled layout of ``doc``) to ``out`` once it parses back to ``doc``."""
    if json.loads(text) != doc:
        raise SystemExit("internal error: the compact layout does not round-trip")
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(text, encoding="utf-8")
    return text


def arguments(doc: str | None, source: Path, out: Path, argv: list[str] | None) -> argparse.Namespace:
    """``--source DIR`` (the R4 definitions) and ``--out FILE`` (the vendored table), with defaults."""
    parser = argparse.ArgumentParser(description=doc.splitlines()[0] if doc else None)
    parser.add_argument("--source", type=Path, default=source, help="folder of the R4 definitions")
    parser.add_argument("--out", type=Path, default=out, help="vendored JSON file to write")
    return parser.parse_args(argv)
