"""RFC 8785 canonical JSON bytes, and strict JSON loading (duplicate keys, NaN refused)."""

from __future__ import annotations

import json
import re
from typing import Any

from provenance.core.errors import ProvError


def dumps(obj: Any) -> bytes:
    import rfc8785  # here, not at import: the verify path only loads
    return rfc8785.dumps(obj)


INF = float("inf")
_SURROGATE = re.compile(r"\\u[dD][89a-fA-F]")
MAX_SAFE_INT = 2 ** 53 - 1


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

    def finite(text):  # 1e400 would otherwise parse as infinity: RFC 8785 numbers are finite doubles
        f = float(text)
        if f in (INF, -INF):
            raise ValueError(f"number {text[:20]} is beyond a double")
        return f

    def safe_int(text):  # beyond 2**53 a double (what RFC 8785 and every other JSON reader keep) is not exact
        n = int(text)
        if abs(n) > MAX_SAFE_INT:
            raise ValueError(f"integer {text[:20]}{'...' if len(text) > 20 else ''} is beyond 2**53")
        return n
    try:
        if isinstance(data, (bytes, bytearray)):  # json.loads would let CESU-8 surrogates through
            data = bytes(data).decode("utf-8")
        obj = json.loads(data, object_pairs_hook=hook, parse_constant=no_constant, parse_float=finite,
                         parse_int=safe_int)
        if _SURROGATE.search(data):  # a \ud800 escape: fine in a pair, not alone (RFC 8785 is UTF-8)
            json.dumps(obj, ensure_ascii=False).encode("utf-8")
        return obj, dupes
    except (ValueError, UnicodeError) as e:
        raise ProvError(f"{what}: not valid JSON ({e})") from None
    except RecursionError:
        raise ProvError(f"{what}: JSON nested too deeply") from None


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

