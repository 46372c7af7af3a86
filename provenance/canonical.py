"""RFC 8785 canonical JSON bytes, and strict JSON loading (duplicate keys, NaN refused)."""

from __future__ import annotations

import json
from typing import Any

import rfc8785

from .errors import ProvError


def dumps(obj: Any) -> bytes:
    return rfc8785.dumps(obj)


def _no_dupes(pairs):
    seen = {}
    for k, v in pairs:
        if k in seen:
            raise ProvError(f"duplicate JSON key {k!r}")
        seen[k] = v
    return seen


def _no_constant(name):
    raise ProvError(f"non-finite number {name} in JSON")


def loads(data: bytes | str, what: str = "JSON") -> Any:
    try:
        return json.loads(data, object_pairs_hook=_no_dupes, parse_constant=_no_constant)
    except ProvError as e:
        raise ProvError(f"{what}: {e}") from None
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ProvError(f"{what}: not valid JSON ({e})") from None


def load_file(path, what: str | None = None, limit: int = 16 << 20) -> Any:
    from pathlib import Path
    p = Path(path)
    try:
        with open(p, "rb") as f:
            data = f.read(limit + 1)
    except OSError as e:
        raise ProvError(f"{p}: {e.strerror}") from None
    if len(data) > limit:
        raise ProvError(f"{p}: larger than {limit} bytes")
    return loads(data, what or str(p))
