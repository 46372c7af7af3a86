"""RFC 8785 canonical JSON bytes, and strict JSON loading (duplicate keys, NaN refused)."""

from __future__ import annotations

import json
from typing import Any

from .errors import ProvError


def dumps(obj: Any) -> bytes:
    import rfc8785  # here, not at import: the verify path only loads
    return rfc8785.dumps(obj)


def loads_tracking(data: bytes | str, what: str = "JSON") -> tuple[Any, list[str]]:
    """Parse JSON, refusing NaN/Infinity; return the value and every duplicated key, so a
    verifier can report duplicates as a failed check rather than unreadable input."""
    dupes: list[str] = []

    def hook(pairs):
        d = {}
        for k, v in pairs:
            if k in d:
                dupes.append(k)
            d[k] = v
        return d

    def no_constant(c):
        raise ValueError(f"non-finite number {c}")
    try:
        return json.loads(data, object_pairs_hook=hook, parse_constant=no_constant), dupes
    except (ValueError, UnicodeDecodeError) as e:
        raise ProvError(f"{what}: not valid JSON ({e})") from None


def loads(data: bytes | str, what: str = "JSON") -> Any:
    obj, dupes = loads_tracking(data, what)
    if dupes:
        raise ProvError(f"{what}: duplicate JSON key {dupes[0]!r}")
    return obj


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
