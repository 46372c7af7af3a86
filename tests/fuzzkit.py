"""Helpers for the never-a-traceback harness (tests/test_fuzz_inputs.py): mutation strategies over
bytes and over JSON structure, and the one assertion every command's outcome must pass."""

from __future__ import annotations

import json
import os
import traceback

from click.testing import CliRunner
from hypothesis import HealthCheck, settings, strategies as st

from provenance.cli import cli

EXAMPLES = int(os.environ.get("PROV_FUZZ_EXAMPLES", "2000"))
FUZZ = settings(max_examples=EXAMPLES, deadline=None, derandomize=True, database=None,
                suppress_health_check=list(HealthCheck), print_blob=True)

# Values a hostile or merely odd producer writes where a well-formed one wrote something else.
_RAW = "\x00RAW:"
RAW_NUMBERS = ["1e400", "-1e400", "1E999", "123456789012345678901234567890123456789e300", "-0", "0.0", "1e-400",
               "9" * 5000, "4.2e1", "1.0"]
DEEP = "[" * 100_000 + "]" * 100_000
ODD_VALUES = [None, True, False, 0, -1, 1, 2 ** 63, 2 ** 64 + 1, 10 ** 400, -(10 ** 400), 0.5, 1e308, -1e308,
              5e-324, "", " ", "x", "١٢٣", "１２", "²", "0x10", "NaN", "Infinity", "2026-13-45T99:99:99Z",
              "../../etc/passwd", "/abs/path", "a" * 300, "\u0000", "\ud800", [], {}, [None], {"": None},
              "ab" * 32, "00" * 32]

_INDEX: dict[int, st.SearchStrategy] = {}


def _pick(draw, seq):
    """draw an element; strategies are made once per length (hypothesis validates each new one)."""
    n = len(seq)
    if n not in _INDEX:
        _INDEX[n] = st.integers(0, n - 1)
    return seq[draw(_INDEX[n])]


_KIND = st.integers(0, 9)
_SMALL = st.integers(0, 2)
_INTS = st.integers()
_FLOATS = st.floats(allow_nan=False, allow_infinity=False)
_TEXT = st.text(max_size=12)
_KEYS = st.text(max_size=6)


@st.composite
def json_values(draw, depth: int = 0):
    """An odd JSON value: edge numbers, raw tokens (1e400), wrong types, small nested containers."""
    k = draw(_KIND)
    if k <= 3:
        return _pick(draw, ODD_VALUES)
    if k == 4:
        return draw(_INTS)
    if k == 5:
        return draw(_FLOATS)
    if k == 6:
        return draw(_TEXT)
    if k == 7:
        return _RAW + _pick(draw, RAW_NUMBERS)
    if depth >= 2:
        return None
    if k == 8:
        return [draw(json_values(depth + 1)) for _ in range(draw(_SMALL))]
    return {draw(_KEYS): draw(json_values(depth + 1)) for _ in range(draw(_SMALL))}


def dumps_raw(obj) -> bytes:
    """json.dumps, then splice raw tokens (1e400, 5,000-digit integers...) where placeholders sit."""
    text = json.dumps(obj, ensure_ascii=False)
    for r in RAW_NUMBERS:
        text = text.replace(json.dumps(_RAW + r, ensure_ascii=False), r)
    return text.encode("utf-8", "surrogatepass")


def paths_of(doc, prefix=()) -> list[tuple]:
    out = [prefix]
    if isinstance(doc, dict):
        for k, v in doc.items():
            out += paths_of(v, prefix + (k,))
    elif isinstance(doc, list):
        for i, v in enumerate(doc):
            out += paths_of(v, prefix + (i,))
    return out


def _copy(doc):
    return json.loads(json.dumps(doc))


def _set(doc, path, value, action):
    if not path:
        return value if action == "replace" else doc
    parent = doc
    for p in path[:-1]:
        parent = parent[p]
    last = path[-1]
    if action == "delete":
        del parent[last]
    elif action == "replace":
        parent[last] = value
    elif action == "dup":  # the same value twice in a list / under a new key
        if isinstance(parent, list):
            parent.insert(last, parent[last])
        else:
            parent[f"{last}_"] = parent[last]
    return doc


_EDITS = st.integers(1, 3)
_ACTIONS = ["replace", "replace", "replace", "delete", "dup"]
_RARE = st.integers(0, 200)


@st.composite
def json_mutant(draw, doc, paths=None):
    """`doc` with 1-3 structural edits: a value replaced by an odd one, a key deleted, one duplicated."""
    paths = paths or paths_of(doc)
    out = _copy(doc)
    for _ in range(draw(_EDITS)):
        live = paths_of(out)
        path = _pick(draw, live)
        action = _pick(draw, _ACTIONS)
        if not path and action != "replace":
            continue
        value = draw(json_values())
        if draw(_RARE) == 0:
            value = _RAW + "DEEP"
        out = _set(out, path, value, action)
    data = dumps_raw(out)
    return data.replace(json.dumps(_RAW + "DEEP").encode(), DEEP.encode())


_BYTE_EDITS = st.integers(1, 4)
_BYTE_OPS = ["flip", "delete", "insert", "truncate", "dup", "set"]
_POS = st.integers(0, 1 << 20)
_BIT = st.integers(0, 7)
_RUN = st.integers(1, 16)
_JUNK = st.binary(min_size=1, max_size=8)
_SPECIAL = list(b"\x00\xff\"{}[],:0 9e-\\\n\xc3\xe2")


@st.composite
def byte_mutant(draw, data: bytes):
    """`data` with 1-4 byte-level edits: flip, delete a range, insert junk, truncate, duplicate a range."""
    b = bytearray(data)
    for _ in range(draw(_BYTE_EDITS)):
        op = _pick(draw, _BYTE_OPS)
        n = len(b)
        i = draw(_POS) % max(n, 1)
        if op == "flip" and n:
            b[i] ^= 1 << draw(_BIT)
        elif op == "set" and n:
            b[i] = _pick(draw, _SPECIAL)
        elif op == "delete" and n:
            del b[i:i + draw(_RUN)]
        elif op == "insert":
            b[i:i] = draw(_JUNK)
        elif op == "truncate":
            del b[i:]
        elif op == "dup" and n:
            b[i:i] = b[i:i + draw(_RUN) * 2]
    return bytes(b)


def mutant(doc=None, data: bytes | None = None):
    """Structural mutants of a JSON document, byte mutants of its bytes, and both."""
    data = data if data is not None else json.dumps(doc).encode()
    parts = [byte_mutant(data)]
    if doc is not None:
        parts += [json_mutant(doc), json_mutant(doc), json_mutant(doc).flatmap(byte_mutant)]
    return st.one_of(*parts)


_runner = CliRunner()


def invoke(args: list[str]):
    return _runner.invoke(cli, [str(a) for a in args], catch_exceptions=True)


def assert_clean(res, args, allowed=(0, 1, 2, 3)) -> None:
    """The outcome a judge may see: a documented exit code, one line on error, never a traceback."""
    exc = res.exception
    if exc is not None and not isinstance(exc, SystemExit):
        tb = "".join(traceback.format_exception(type(exc), exc, exc.__traceback__))
        raise AssertionError(f"prov {' '.join(map(str, args))}: uncaught {type(exc).__name__}\n{tb[-3000:]}")
    assert res.exit_code in allowed, (args, res.exit_code, res.output[-500:])
    err = res.stderr
    assert "Traceback" not in err and "internal error" not in err, (args, err[-2000:])
    if res.exit_code in (2, 3):
        lines = err.strip("\n").split("\n")
        if lines and lines[0].startswith("Usage:"):  # click's usage error: usage, a hint, one "Error:" line
            assert lines[-1].startswith("Error: "), (args, err[-2000:])
        else:
            assert len(lines) == 1 and lines[0].startswith("prov: error: "), (args, err[-2000:])


def library_outcome(fn, *args) -> int:
    """Run a library call as the command line would (cli.Cli.invoke): our errors and OS errors are one
    line with their exit code; anything faults.py calls an internal error fails the harness."""
    from provenance.errors import ProvError
    from provenance.faults import one_line, os_error_code
    try:
        fn(*args)
        return 0
    except ProvError as e:
        return e.exit_code
    except OSError as e:
        return os_error_code(e)
    except Exception as e:
        code, line = one_line(e)
        assert not line.startswith("internal error"), "".join(
            traceback.format_exception(type(e), e, e.__traceback__))[-3000:]
        return code
