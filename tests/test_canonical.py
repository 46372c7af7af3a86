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
