"""JSON in and out, faithful to what the client sent.

FHIR decimals carry their precision (``1.50`` is not ``1.5``, http://hl7.org/fhir/R4/datatypes.html#decimal),
so bodies are parsed with decimals kept as :class:`decimal.Decimal` and written back with the
exact digits, through orjson (fast) with a ``default`` hook that emits a Decimal as a raw JSON
number fragment. Strings (dates, base64) are never touched. Every module reads and writes JSON
through these two functions.
"""

from __future__ import annotations

import json
from decimal import Decimal
from typing import Any

import orjson

__all__ = ["JSONDecodeError", "dumps", "loads"]

JSONDecodeError = json.JSONDecodeError

_decoder = json.JSONDecoder(parse_float=Decimal)


def loads(data: bytes | str) -> Any:
    """Parse JSON; decimals become Decimal, so their digits survive a round trip."""
    if isinstance(data, bytes | bytearray | memoryview):
        data = bytes(data).decode("utf-8")
    obj, end = _decoder.raw_decode(data, _skip_ws(data, 0))
    end = _skip_ws(data, end)
    if end != len(data):
        raise JSONDecodeError("Extra data", data, end)
    return obj


def _skip_ws(data: str, pos: int) -> int:
    n = len(data)
    while pos < n and data[pos] in " \t\r\n":
        pos += 1
    return pos


def _default(obj: Any) -> Any:
    if isinstance(obj, Decimal):
        if not obj.is_finite():
            raise TypeError(f"{obj} is not a valid JSON number")
        return orjson.Fragment(str(obj))
    raise TypeError(f"Type is not JSON serializable: {type(obj).__name__}")


def dumps(obj: Any, pretty: bool = False) -> bytes:
    """Serialise to UTF-8 JSON bytes (Decimal digits kept as given)."""
    option = orjson.OPT_INDENT_2 if pretty else 0
    return orjson.dumps(obj, default=_default, option=option)
