"""Helpers for the never-a-traceback harness (tests/cli/test_fuzz_inputs.py): mutation strategies over
bytes and over JSON structure, and the one assertion every command's outcome must pass."""

from __future__ import annotations

import copy
import json
import os
import random
import traceback

from click.testing import CliRunner
from hypothesis import HealthCheck, settings, strategies as st

from provenance.cli.app import cli

EXAMPLES = int(os.environ.get("PROV_FUZZ_EXAMPLES", "2000"))  # cases per kind
BATCH = 10  # cases per hypothesis example: the engine's own bookkeeping would otherwise cost more than prov
FUZZ = settings(max_examples=max(1, EXAMPLES // BATCH), deadline=None, derandomize=True, database=None,
                suppress_health_check=list(HealthCheck), print_blob=True)


def cases(strategy):
    """BATCH inputs per example (so EXAMPLES cases per kind); a failure names the one input."""
    return st.lists(strategy, min_size=BATCH, max_size=BATCH)


def each(inputs, fn) -> None:
    for x in inputs:
        try:
            fn(x)
        except AssertionError as e:
            raise AssertionError(f"{e}\n  input: {x!r:.3000}") from None

# Values a hostile or merely odd producer writes where a well-formed one wrote something else.
_RAW = "\x00RAW:"
RAW_NUMBERS = ["1e400", "-1e400", "1E999", "123456789012345678901234567890123456789e300", "-0", "0.0", "1e-400",
               "9" * 5000, "4.2e1", "1.0"]
DEEP = "[" * 100_000 + "]" * 100_000
ODD_VALUES = [None, True, False, 0, -1, 1, 2 ** 63, 2 ** 64 + 1, 10 ** 400, -(10 ** 400), 0.5, 1e308, -1e308,
              5e-324, "", " ", "x", "١٢٣", "１２", "²", "0x10", "NaN", "Infinity", "2026-13-45T99:99:99Z",
              "../../etc/passwd", "/abs/path", "a" * 300, "\u0000", "\ud800", [], {}, [None], {"": None},
              "ab" * 32, "00" * 32]

# Hypothesis draws one seed per case and our mutators do the rest with random.Random(seed): the
# engine's per-draw bookkeeping (tens of draws per JSON edit) would otherwise cost more than prov
# itself. Seeds are derandomized, so a failure reproduces; the failing input is printed whole.
SEEDS = st.integers(0, 2 ** 64 - 1)


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
            parent.insert(last, copy.deepcopy(parent[last]))
        else:
            parent[f"{last}_"] = copy.deepcopy(parent[last])
    return doc


def json_value(rng: random.Random, depth: int = 0):
    """An odd JSON value: edge numbers, raw tokens (1e400), wrong types, small nested containers."""
    k = rng.randrange(10)
    if k <= 3:
        return copy.deepcopy(rng.choice(ODD_VALUES))  # later edits must not change the shared list
    if k == 4:
        return rng.choice([rng.randrange(-10, 10), rng.getrandbits(rng.choice([8, 31, 53, 54, 64, 200]))])
    if k == 5:
        return rng.choice([rng.random(), -rng.random() * 1e6, rng.uniform(-1, 1) * 10 ** rng.randrange(-320, 308)])
    if k == 6:
        return "".join(chr(rng.choice([rng.randrange(32, 127), rng.randrange(0, 0x3000), 0x2014, 0x0661]))
                       for _ in range(rng.randrange(12)))
    if k == 7:
        return _RAW + rng.choice(RAW_NUMBERS)
    if depth >= 2:
        return None
    if k == 8:
        return [json_value(rng, depth + 1) for _ in range(rng.randrange(3))]
    return {str(rng.randrange(100)): json_value(rng, depth + 1) for _ in range(rng.randrange(3))}


def mutate_json(rng: random.Random, doc) -> bytes:
    """`doc` with 1-3 structural edits: a value replaced by an odd one, a key deleted, one duplicated."""
    out = copy.deepcopy(doc)
    for _ in range(rng.randint(1, 3)):
        path = rng.choice(paths_of(out))
        action = rng.choice(["replace", "replace", "replace", "delete", "dup"])
        if not path and action != "replace":
            continue
        value = _RAW + "DEEP" if rng.randrange(200) == 0 else json_value(rng)
        out = _set(out, path, value, action)
    data = dumps_raw(out)
    return data.replace(json.dumps(_RAW + "DEEP").encode(), DEEP.encode())


SPECIAL = list(b"\x00\xff\"{}[],:0 9e-\\\n\xc3\xe2")


def mutate_bytes(rng: random.Random, data: bytes) -> bytes:
    """`data` with 1-4 byte-level edits: flip, set, delete a run, insert junk, truncate, duplicate a run."""
    b = bytearray(data)
    for _ in range(rng.randint(1, 4)):
        op = rng.choice(["flip", "delete", "insert", "truncate", "dup", "set"])
        n = len(b)
        i = rng.randrange(max(n, 1))
        if op == "flip" and n:
            b[i] ^= 1 << rng.randrange(8)
        elif op == "set" and n:
            b[i] = rng.choice(SPECIAL)
        elif op == "delete" and n:
            del b[i:i + rng.randint(1, 16)]
        elif op == "insert":
            b[i:i] = rng.randbytes(rng.randint(1, 8))
        elif op == "truncate":
            del b[i:]
        elif op == "dup" and n:
            b[i:i] = b[i:i + rng.randint(1, 32)]
    return bytes(b)


def byte_mutant(data: bytes):
    return SEEDS.map(lambda seed: mutate_bytes(random.Random(seed), data))


def json_mutant(doc):
    return SEEDS.map(lambda seed: mutate_json(random.Random(seed), doc))


def _both(seed: int, doc) -> bytes:
    rng = random.Random(seed)
    return mutate_bytes(rng, mutate_json(rng, doc))


def mutant(doc=None, data: bytes | None = None):
    """Byte mutants of a JSON document's bytes, structural mutants, and both."""
    data = data if data is not None else json.dumps(doc).encode()
    parts = [byte_mutant(data)]
    if doc is not None:
        parts += [json_mutant(doc), json_mutant(doc), SEEDS.map(lambda seed: _both(seed, doc))]
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
    from provenance.core.errors import ProvError
    from provenance.core.faults import one_line, os_error_code
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
