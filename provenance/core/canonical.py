"""RFC 8785 canonical JSON bytes, and strict JSON loading (duplicate keys, NaN refused)."""

from __future__ import annotations

import _json
import os

from provenance.core.errors import ProvError


def dumps(obj: object) -> bytes:
    """RFC 8785 (JCS) bytes of a JSON value. Written here rather than taken from the rfc8785 package:
    its import (typing) was a fifth of `prov verify`'s start-up; a test holds the two equal value
    for value. Raises ValueError for what JCS cannot express (NaN, infinities, integers beyond
    2**53, non-string keys, lone surrogates)."""
    out: list[str] = []
    _dump(obj, out.append)
    try:
        return "".join(out).encode("utf-8")
    except UnicodeEncodeError:
        raise ValueError("input contains non-UTF-8 codepoints (a lone surrogate)") from None


def _dump(obj, put) -> None:
    if obj is None:
        put("null")
    elif obj is True or obj is False:
        put("true" if obj else "false")
    elif isinstance(obj, int):
        if abs(obj) > MAX_SAFE_INT:
            raise ValueError(f"{obj} exceeds safe integer domain for JSON floats")
        put(str(int(obj)))
    elif isinstance(obj, float):
        put(_number(float(obj)))
    elif isinstance(obj, str):
        put(_string(str(obj)))  # JSON.stringify's escapes: quote, backslash, controls; nothing else
    elif isinstance(obj, (list, tuple)):
        put("[")
        for i, v in enumerate(obj):
            if i:
                put(",")
            _dump(v, put)
        put("]")
    elif isinstance(obj, dict):
        if any(not isinstance(k, str) for k in obj):
            raise ValueError("object keys must be strings")
        put("{")
        # RFC 8785 3.2.3: by UTF-16 code units, which is code point order unless a key leaves ASCII
        # (and the utf-16 codec's import is paid only then)
        keys = sorted(obj) if all(k.isascii() for k in obj) else sorted(
            obj, key=lambda k: k.encode("utf-16-be", "surrogatepass"))
        for i, k in enumerate(keys):
            if i:
                put(",")
            put(_string(k))
            put(":")
            _dump(obj[k], put)
        put("}")
    else:
        raise ValueError(f"unsupported type: {type(obj)}")


def _number(f: float) -> str:
    """ECMAScript's Number::toString (ECMA-262 7.1.12.1), as RFC 8785 3.2.2.3 requires: the shortest
    round-trip digits (Python's repr), in plain notation from 1e-6 to below 1e21."""
    if f != f or f in (INF, -INF):
        raise ValueError(f"{f} is not representable in JCS")
    if f == 0:
        return "0"
    if f < 0:
        return "-" + _number(-f)
    mantissa, _, exp = repr(f).partition("e")
    whole, _, frac = mantissa.partition(".")
    s = whole + frac
    digits = s.lstrip("0")
    # f = 0.DIGITS x 10**point: the point sits `point` digits into `digits` (<= 0, or past its end)
    point = len(whole) + int(exp or 0) - (len(s) - len(digits))
    digits = digits.rstrip("0")
    if 0 < point <= 21:  # 1 <= f < 1e21: integer part, then any fraction
        return digits[:point] + "0" * (point - len(digits)) + ("." + digits[point:] if len(digits) > point else "")
    if -6 < point <= 0:  # 1e-6 <= f < 1
        return "0." + "0" * -point + digits
    e = point - 1
    return digits[0] + ("." + digits[1:] if len(digits) > 1 else "") + "e" + ("+" if e > 0 else "-") + str(abs(e))


INF = float("inf")
# json's own C escaper and scanner, taken from _json directly: importing json brings re, enum and
# functools, a sixth of `prov verify`'s start-up; errors are worded by json itself (the slow path below)
_string = _json.encode_basestring  # exactly JSON.stringify's escapes
_WS = " \t\n\r"
MAX_SAFE_INT = 2 ** 53 - 1


def loads_tracking(data: bytes | str, what: str = "JSON") -> tuple[object, list[str]]:
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
    except UnicodeError as e:
        raise ProvError(f"{what}: not valid JSON ({e})") from None
    # the fast path: json.loads's own C scanner, skipping whitespace as JSONDecoder.decode does;
    # anything it refuses, and any surrogate escape (a lone one is refused), goes through json itself
    if isinstance(data, str) and not _surrogate_escape(data):
        try:
            obj, end = _json.make_scanner(_Context(hook, no_constant, finite, safe_int))(
                data, len(data) - len(data.lstrip(_WS)))
            if not data[end:].strip(_WS):
                return obj, dupes
        except Exception:  # StopIteration, ValueError, RecursionError; on 3.11 a SystemError where
            pass  # json.decoder was never imported (_json words its errors with json.decoder's class)
        dupes.clear()
    return _loads_with_json(data, what, hook, no_constant, finite, safe_int), dupes


def _surrogate_escape(text: str) -> bool:
    """Whether text holds a \\uD800-\\uDFFF escape (or what looks like one): the regex
    \\\\u[dD][89a-fA-F], without importing re."""
    i = text.find("\\u")
    while i >= 0:
        if text[i + 2:i + 3] in ("d", "D") and text[i + 3:i + 4] in _HIGH:
            return True
        i = text.find("\\u", i + 2)
    return False


_HIGH = frozenset("89abcdefABCDEF")


class _Context:
    """What _json.make_scanner reads off a JSONDecoder."""
    strict = True
    object_hook = None

    def __init__(self, pairs, constant, parse_float, parse_int):
        self.object_pairs_hook, self.parse_constant = pairs, constant
        self.parse_float, self.parse_int = parse_float, parse_int
        self.memo = {}


def _loads_with_json(data: str, what: str, hook, no_constant, finite, safe_int) -> object:
    """json.loads with the same hooks: its error messages, and escapes decoded (a lone surrogate
    refused: RFC 8785 is UTF-8)."""
    import json
    try:
        obj = json.loads(data, object_pairs_hook=hook, parse_constant=no_constant, parse_float=finite,
                         parse_int=safe_int)
        json.dumps(obj, ensure_ascii=False).encode("utf-8")
        return obj
    except (ValueError, UnicodeError) as e:
        raise ProvError(f"{what}: not valid JSON ({e})") from None
    except RecursionError:
        raise ProvError(f"{what}: JSON nested too deeply") from None


def loads(data: bytes | str, what: str = "JSON") -> object:
    obj, dupes = loads_tracking(data, what)
    if dupes:
        raise ProvError(f"{what}: duplicate JSON key {dupes[0]!r}")
    return obj


def load_file(path, what: str | None = None, limit: int = 16 << 20) -> object:
    from provenance.core.files import read_input
    return loads(read_input(path, limit), what or os.fspath(path))
