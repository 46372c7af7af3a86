"""RFC 8785 bytes made by core.canonical, held value for value to the rfc8785 package (the
reference it replaced on the verify path), over random JSON and every edge JCS names."""

import math
import random
import struct

import pytest
import rfc8785

from provenance.core.canonical import dumps

EDGES = [0.0, -0.0, 1.0, -1.5, 123.0, 100.0, 1e16, 1e21, 1e20, 9.999999999999999e20, 1e22, 1e-6, 1e-7,
         1.234e-5, 5e-324, 1.7976931348623157e308, 0.1, 17.380452494177103, 2.5e-7, 333333333.3333333,
         2 ** 53 - 1, -(2 ** 53 - 1), 0, True, False, None, "", "\u2028\u2029", "\x7f", "\x00\x1f\"\\/",
         "é🎉", {"\U0001f600": 1, "\ufb01": 2, "a": 3, "": 4}, [], {}, [[[]]]]


def random_value(rnd: random.Random, depth: int = 0):
    kind = rnd.randrange(8 if depth < 4 else 5)
    if kind == 0:
        return rnd.choice([None, True, False])
    if kind == 1:
        return rnd.randint(-(2 ** 53 - 1), 2 ** 53 - 1) if rnd.random() < 0.5 else rnd.randint(-1000, 1000)
    if kind == 2:
        f = struct.unpack("d", rnd.getrandbits(64).to_bytes(8, "little"))[0]
        return 0.5 if math.isnan(f) or math.isinf(f) else f
    if kind == 3:
        return rnd.uniform(-10, 10) * 10 ** rnd.randint(-25, 25)
    if kind == 4:
        alphabet = "ab\"\\\n\t\x00\x1f\x7fé€\u2028\U0001f600\U00010000\uffff"
        return "".join(rnd.choice(alphabet) for _ in range(rnd.randrange(8)))
    if kind == 5:
        return [random_value(rnd, depth + 1) for _ in range(rnd.randrange(4))]
    keys = ["a", "b", "é", "\U0001f600", "\ufb01", "", "A", "aa", "\x00"]
    return {rnd.choice(keys) + str(rnd.randrange(3)): random_value(rnd, depth + 1) for _ in range(rnd.randrange(5))}


@pytest.mark.parametrize("value", EDGES, ids=repr)
def test_edges_match_the_reference(value):
    assert dumps(value) == rfc8785.dumps(value)


def test_random_json_matches_the_reference():
    rnd = random.Random(8785)
    for _ in range(20_000):
        v = random_value(rnd)
        assert dumps(v) == rfc8785.dumps(v), v


@pytest.mark.parametrize("value", [float("nan"), float("inf"), -float("inf"), 2 ** 53, -(2 ** 53), {1: 2},
                                   "\ud800", {"\udfff": 1}, object()],
                         ids=lambda v: type(v).__name__ if type(v) is object else repr(v))  # one id on every worker
def test_what_jcs_cannot_express_is_refused_as_the_reference_refuses_it(value):
    with pytest.raises(ValueError):
        rfc8785.dumps(value)
    with pytest.raises(ValueError):
        dumps(value)


# -- the verify path's readers without re or json: each held to the stdlib's own ----------------------

def _reference_loads(text):
    """The strict loader as it was written over json.loads (before the fast path): value and
    duplicate keys, or the error's text."""
    import json
    import re
    dupes = []

    def hook(pairs):
        d = {}
        for k, v in pairs:
            if k in d:
                dupes.append(k)
            d[k] = v
        return d

    def finite(t):
        f = float(t)
        if f in (math.inf, -math.inf):
            raise ValueError(f"number {t[:20]} is beyond a double")
        return f

    def safe_int(t):
        n = int(t)
        if abs(n) > 2 ** 53 - 1:
            raise ValueError(f"integer {t[:20]}{'...' if len(t) > 20 else ''} is beyond 2**53")
        return n

    def no_constant(c):
        raise ValueError(f"non-finite number {c}")
    try:
        obj = json.loads(text, object_pairs_hook=hook, parse_constant=no_constant, parse_float=finite,
                         parse_int=safe_int)
        if re.search(r"\\u[dD][89a-fA-F]", text):
            json.dumps(obj, ensure_ascii=False).encode("utf-8")
        return ("ok", obj, dupes)
    except (ValueError, UnicodeError) as e:
        return ("error", f"JSON: not valid JSON ({e})")
    except RecursionError:
        return ("error", "JSON: JSON nested too deeply")


def _ours(text):
    from provenance.core.canonical import loads_tracking
    from provenance.core.errors import ProvError
    try:
        obj, dupes = loads_tracking(text)
        return ("ok", obj, dupes)
    except ProvError as e:
        return ("error", str(e))


JSON_CASES = ['{"a": 1}', ' \n{"a": [1, 2.5, "x", null, true]}\r\t', '{"a": 1, "a": 2}', "", " ", "{", "[1,]",
              '{"a": 1} x', '{"a": 1}{}', "NaN", "[Infinity]", "-Infinity", "1e400", "[1E999]", str(2 ** 53),
              str(-(2 ** 53)), "12345678901234567890123", '"\\ud800"', '"\\ud83d\\ude80"', '"\\uD800x"', '"\\u00e9"',
              '"\\\\ud800"', "\ufeff{}", '"\x01"', '"a\\q"', "[" * 3000 + "]" * 3000, "0", "-0", "1.0", "01",
              '{"k": "é€🎉"}', "[1e-400]", '{"": {}}', "tru", "nul", "[1 2]", '{"a" 1}', '{1: 2}', "\u00a0{}"]


@pytest.mark.parametrize("text", JSON_CASES, ids=range(len(JSON_CASES)))
def test_the_fast_json_reader_is_json_loads(text):
    """Value, duplicates and every error's wording, as json.loads with the same hooks gave them."""
    assert _ours(text) == _reference_loads(text)


def test_random_json_reads_as_json_loads():
    import json
    rnd = random.Random(7)
    for _ in range(300):
        text = json.dumps(random_value(rnd), ensure_ascii=rnd.random() < 0.5)
        cut = text[:rnd.randrange(len(text) + 1)] if rnd.random() < 0.3 else text  # truncated, too
        assert _ours(cut) == _reference_loads(cut), cut


def test_b64_strict_is_base64_validate():
    import base64
    import binascii
    from provenance.core.signing import b64_strict
    rnd = random.Random(5)
    cases = ["", "QQ==", "QUI=", "QUJD", "QQ=", "QQ", "Q", "QQ===", "=QQ=", "QQ=A", "Q Q==", "QQ==\n", "-_8=",
             "QUJD\x00", "é", b"QUJD", b"QQ=\xff", "AAAA" * 50, "A==="]
    alphabet = "AB+/=-_ \n.é"
    cases += ["".join(rnd.choice(alphabet) for _ in range(rnd.randrange(9))) for _ in range(2000)]
    for c in cases:
        try:
            want = ("ok", base64.b64decode(c, validate=True))
        except ValueError:  # binascii.Error and the non-ASCII str refusal
            want = ("error",)
        try:
            got = ("ok", b64_strict(c))
        except ValueError:
            got = ("error",)
        assert got == want, repr(c)
    with pytest.raises(TypeError):
        b64_strict(None)
    assert binascii.b2a_base64(b"xy", newline=False) == base64.b64encode(b"xy")


def test_each_schema_pattern_is_matched_without_re_as_re_matches_it():
    """jsonschema_lite's plain matchers: every pattern the schemas carry has one (so verify never
    imports re), and each agrees with re under JSON Schema's (ECMA-262) `$`: end of text only."""
    import json
    import re
    from pathlib import Path
    from provenance.records import jsonschema_lite

    def patterns(node):
        if isinstance(node, dict):
            for k, v in node.items():
                if k == "pattern":
                    yield v
                else:
                    yield from patterns(v)
        elif isinstance(node, list):
            for v in node:
                yield from patterns(v)
    found = {p for f in Path(jsonschema_lite.SCHEMA_DIR).glob("*.json") for p in patterns(json.loads(f.read_text()))}
    assert found and found <= set(jsonschema_lite.PLAIN), found - set(jsonschema_lite.PLAIN)
    rnd = random.Random(3)
    alphabet = "0123456789abcdefABF/._-xé\n "
    samples = ["", "a" * 64, "0" * 64, "0" * 63, "0" * 65, "0" * 64 + "\n", "A" * 64, "a/b", "a//b", "/a", "a/", "a.b-c_d",
               "ä", "a b", "a/b\n", "x" * 64]
    samples += ["".join(rnd.choice(alphabet) for _ in range(rnd.choice([rnd.randrange(6), 64, 65]))) for _ in range(3000)]
    for pattern, plain in jsonschema_lite.PLAIN.items():
        ecma = re.compile(pattern[:-1] + r"\Z" if pattern.endswith("$") else pattern)
        for s in samples:
            assert plain(s) == bool(ecma.search(s)), (pattern, s)
        assert jsonschema_lite.matches(pattern, "0" * 64 + "\n") is False  # re's `$` would take it
