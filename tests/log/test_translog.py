import json
import random
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest

from conftest import prov_json, run_prov
from provenance.log import translog as t
from provenance.store.objects import Store

# Published RFC 6962 reference vectors (certificate-transparency / transparency-dev merkle testonly)
_V = json.loads((Path(__file__).parents[1] / "data" / "rfc6962.json").read_text())
LEAVES = [bytes.fromhex(x) for x in _V["leaves"]]
ROOTS = _V["roots"]
INCLUSION = {(v["index"], v["size"]): v["proof"] for v in _V["inclusion"]}
CONSISTENCY = {(v["old"], v["new"]): v["proof"] for v in _V["consistency"]}
H = bytes.fromhex


def mem_log(n: int, leaves=None) -> t.Log:
    log = t.Log(sqlite3.connect(":memory:", isolation_level=None))
    data = leaves if leaves is not None else [b"leaf %d" % i for i in range(n)]
    for i in range(0, len(data), 7):  # several transactions: exercises the cross-batch frontier
        log.append_many(data[i:i + 7])
    return log


def test_reference_roots_sizes_0_to_8():
    hashes = [t.leaf_hash(x) for x in LEAVES]
    log = mem_log(8, LEAVES)
    for n in range(9):
        assert t.mth(hashes[:n]).hex() == ROOTS[n]  # from the RFC definition
        assert log.root(n).hex() == ROOTS[n]  # from the stored log


def test_reference_proofs():
    log = mem_log(8, LEAVES)
    for (i, n), proof in INCLUSION.items():
        assert [h.hex() for h in log.inclusion_proof(i, n)] == proof
        t.verify_inclusion(t.leaf_hash(LEAVES[i]), i, n, [H(h) for h in proof], H(ROOTS[n]))
    for (a, b), proof in CONSISTENCY.items():
        assert [h.hex() for h in log.consistency_proof(a, b)] == proof
        t.verify_consistency(a, b, [H(h) for h in proof], H(ROOTS[a]), H(ROOTS[b]))


def flip(h: bytes, bit: int = 0) -> bytes:
    b = bytearray(h)
    b[bit // 8 % 32] ^= 1 << (bit % 8)
    return bytes(b)


def raises(fn, *args):
    with pytest.raises(t.LogProofError):
        fn(*args)


@pytest.fixture(scope="module")
def log64():
    log = mem_log(64)
    return log, [log.root(n) for n in range(65)], [t.leaf_hash(b"leaf %d" % i) for i in range(64)]


def test_inclusion_every_index_every_size_and_mutations(log64):
    log, roots, leaves = log64
    bad_root = flip(roots[5])
    for n in range(1, 65):
        for i in range(n):
            p = log.inclusion_proof(i, n)
            assert len(p) <= 6
            t.verify_inclusion(leaves[i], i, n, p, roots[n])
            for k in range(len(p)):  # a bit flip in any element
                raises(t.verify_inclusion, leaves[i], i, n, p[:k] + [flip(p[k], 3 * k)] + p[k + 1:], roots[n])
            raises(t.verify_inclusion, flip(leaves[i]), i, n, p, roots[n])
            for j in (i - 1, i + 1):
                if 0 <= j:
                    raises(t.verify_inclusion, leaves[i], j, n, p, roots[n])
            for m in (2 * n, n // 2):
                if m != n and m <= 64:
                    raises(t.verify_inclusion, leaves[i], i, m, p, roots[m] if m else roots[0])
            raises(t.verify_inclusion, leaves[i], i, n, p + [roots[1]], roots[n])
            if p:
                raises(t.verify_inclusion, leaves[i], i, n, p[:-1], roots[n])
                raises(t.verify_inclusion, leaves[i], i, n, p[1:], roots[n])
            raises(t.verify_inclusion, leaves[i], i, n, p, bad_root if n != 5 else roots[4])


def test_consistency_every_pair_and_mutations(log64):
    log, roots, _ = log64
    for a in range(0, 65):
        for b in range(a, 65):
            p = log.consistency_proof(a, b)
            t.verify_consistency(a, b, p, roots[a], roots[b])
            for k in range(len(p)):
                raises(t.verify_consistency, a, b, p[:k] + [flip(p[k], k)] + p[k + 1:], roots[a], roots[b])
            if a > 0 and a != b:
                raises(t.verify_consistency, a, b, p, flip(roots[a]), roots[b])
                raises(t.verify_consistency, a, b, p, roots[a], flip(roots[b]))
                raises(t.verify_consistency, a, b, p + [roots[1]], roots[a], roots[b])
                if p:
                    raises(t.verify_consistency, a, b, p[:-1], roots[a], roots[b])
                for a2 in (a - 1, a + 1):
                    if 0 < a2 < b and a2 != a:
                        raises(t.verify_consistency, a2, b, p, roots[a], roots[b])
                for b2 in (2 * b, b // 2):
                    if a < b2 <= 64 and b2 != b:
                        raises(t.verify_consistency, a, b2, p, roots[a], roots[b])
            if a == b and a > 0:
                raises(t.verify_consistency, a, b, [roots[1]], roots[a], roots[b])
                raises(t.verify_consistency, a, b, [], roots[a], flip(roots[b]))
    raises(t.verify_consistency, 5, 3, [], roots[5], roots[3])


def test_malformed_inputs_raise_the_one_error():
    good = t.leaf_hash(b"x")
    raises(t.verify_inclusion, good[:31], 0, 1, [], good)
    raises(t.verify_inclusion, good, 0, 1, [b"short"], good)
    raises(t.verify_inclusion, "not bytes", 0, 1, [], good)
    raises(t.verify_inclusion, good, 0, 0, [], t.EMPTY_ROOT)  # size 0 holds nothing
    raises(t.verify_inclusion, good, -1, 1, [], good)
    raises(t.verify_consistency, 1, 2, [good[:5]], good, good)
    raises(t.verify_consistency, -1, 2, [], good, good)
    raises(t.verify_consistency, 3, 4, [], good, good)  # non-power-of-two size1 needs a path
    assert issubclass(t.LogProofError, Exception)


def test_proofs_are_logarithmic_at_scale():
    log = mem_log(0)
    log.append_many([b"%d" % i for i in range(5000)])
    root = log.root()
    for i in (0, 1, 2499, 4095, 4096, 4999):
        p = log.inclusion_proof(i, 5000)
        assert len(p) <= 13
        t.verify_inclusion(t.leaf_hash(b"%d" % i), i, 5000, p, root)
    assert log.recompute() == []


APPENDER = r"""
import os, sys
sys.path.insert(0, {repo!r})
from provenance.store.objects import Store
from provenance.core import signing
from provenance.log import logbook
from provenance.log.translog import open_log
s = Store({store!r}, create=True)
key = signing.load_private({key!r})
i = int(sys.argv[1])
print("ready", flush=True)  # the store exists: from here on a kill may land anywhere
while True:
    open_log(s).append_many([b"entry %d %s" % (i, os.urandom(8).hex().encode())])
    i += 1
    print(i, flush=True)
    if i % 7 == 0:
        logbook.checkpoint(s, key)
"""


def test_sigkill_during_appends_no_torn_leaf_no_overreaching_checkpoint(tmp_path):
    from conftest import REPO
    run_prov("key", "generate", "--out", tmp_path / "k", check=0)
    store = tmp_path / "store"
    script = tmp_path / "appender.py"
    script.write_text(APPENDER.format(repo=str(REPO), store=str(store), key=str(tmp_path / "k/key.pem")))
    rng = random.Random(99)
    reported = 0
    for round_ in range(25):
        p = subprocess.Popen([sys.executable, str(script), str(reported)], stdout=subprocess.PIPE, text=True)
        assert p.stdout.readline().strip() == "ready"  # however slow the start, kill only a running appender
        time.sleep(rng.uniform(0.0, 0.4))
        p.send_signal(signal.SIGKILL)
        out, _ = p.communicate()
        lines = out.split()
        if lines:
            reported = max(reported, int(lines[-1]))
        s = Store(store)
        log = t.open_log(s)
        assert log.size() >= reported, "a reported append was lost"
        assert log.recompute() == [], "torn leaf or node, or a checkpoint beyond the durable leaves"
        for size, note in log.checkpoints():
            assert size <= log.size()
        reported = log.size()
        s.close()
    assert reported > 25


@pytest.fixture
def logged_lab(lab):
    d = lab["dir"]
    trust = d / "trust-log.json"
    run_prov("trust", "init", "--release-key", lab["pub"]("a"), "--log-key", lab["pub"]("b"),
             "--expires", "2099-01-01T00:00:00Z", "--out", trust, check=0)
    lab["trust_log"] = trust
    return lab



def release(lab, out):
    return run_prov("release", "create", "--record", lab["record"]["digest"]["sha256"], "--archive", lab["archive"],
                    "--runtime", lab["rt"], "--name", "demo", "--key", lab["key"]("a"), "--log-key", lab["key"]("b"),
                    "--out", out, store=lab["store"], check=0)


def vjson(lab, manifest, *extra, check):
    r = run_prov("verify", manifest, "--trust", lab["trust_log"], "--archive", lab["archive"], "--runtime",
                 lab["rt"], *extra, "--json")
    assert r.returncode == check, r.out + r.err
    return json.loads(r.out)


def test_release_embeds_log_proofs_and_since(logged_lab):
    lab = logged_lab
    d = lab["dir"]
    m1, m2 = d / "m1.json", d / "m2.json"
    release(lab, m1)
    out = vjson(lab, m1, check=0)
    names = [c["name"] for c in out["checks"]]
    assert "log_checkpoint" in names and "log_inclusion" in names
    cp1 = d / "cp1.note"
    cp1.write_text(json.load(open(m1))["log"]["checkpoint"])
    # more evidence, a second release, then the judge checks the log only grew
    run_prov("log", "append", lab["record"]["digest"]["sha256"], store=lab["store"], check=0)
    release(lab, m2)
    out = vjson(lab, m2, "--since", cp1, check=0)
    assert any(c["name"] == "log_consistency" and c["ok"] for c in out["checks"])
    # a forged old checkpoint (different root, signed by the log key) is caught
    from provenance.core import signing
    cp = t.parse_checkpoint(cp1.read_text())
    forged = t.sign_checkpoint(cp.origin, cp.size, flip(cp.root), signing.load_private(lab["key"]("b")))
    (d / "forged.note").write_text(forged)
    out = vjson(lab, m2, "--since", d / "forged.note", check=1)
    assert {c["name"] for c in out["checks"] if not c["ok"]} == {"log_consistency"}
    # a manifest whose log proof was tampered
    env = json.load(open(m2))
    env["log"]["index"] += 1
    (d / "m3.json").write_text(json.dumps(env))
    out = vjson(lab, d / "m3.json", check=1)
    assert {c["name"] for c in out["checks"] if not c["ok"]} == {"log_inclusion"}
    # a policy that names a log key requires the proof
    env = json.load(open(m2))
    del env["log"]
    (d / "m4.json").write_text(json.dumps(env))
    out = vjson(lab, d / "m4.json", check=1)
    assert {c["name"] for c in out["checks"] if not c["ok"]} == {"log_checkpoint"}
    # checkpoint signed by an untrusted key
    env = json.load(open(m2))
    c = t.parse_checkpoint(env["log"]["checkpoint"])
    env["log"]["checkpoint"] = t.sign_checkpoint(c.origin, c.size, c.root, signing.load_private(lab["key"]("c")))
    (d / "m5.json").write_text(json.dumps(env))
    out = vjson(lab, d / "m5.json", check=1)
    assert {c["name"] for c in out["checks"] if not c["ok"]} == {"log_checkpoint"}


def test_verify_with_single_keys(logged_lab):
    lab = logged_lab
    m = lab["dir"] / "m1.json"
    release(lab, m)
    base = ["verify", m, "--key", lab["pub"]("a"), "--no-files", "--json"]
    out = json.loads(run_prov(*base, "--log-key", lab["pub"]("b"), check=0).out)
    assert any(c["name"] == "log_inclusion" and c["ok"] for c in out["checks"])
    out = json.loads(run_prov(*base, check=1).out)  # the release key does not sign this log
    assert {c["name"] for c in out["checks"] if not c["ok"]} == {"log_checkpoint"}
    out = json.loads(run_prov(*base, "--log-key", lab["pub"]("c"), check=1).out)
    assert {c["name"] for c in out["checks"] if not c["ok"]} == {"log_checkpoint"}


def test_log_cli(logged_lab):
    lab = logged_lab
    st, d = lab["store"], lab["dir"]
    rec = lab["record"]["digest"]["sha256"]
    a = prov_json("log", "append", rec, store=st)
    assert a["appended"] is False  # adjudicate already logged the record
    cp1 = prov_json("log", "checkpoint", "--key", lab["key"]("b"), "--out", d / "c1.note", store=st)
    f = d / "more.txt"
    f.write_text("more evidence")
    blob = prov_json("add", f, store=st)
    assert prov_json("log", "append", blob["sha256"], store=st)["appended"] is True
    prov_json("log", "checkpoint", "--key", lab["key"]("b"), "--out", d / "c2.note", store=st)
    pr = prov_json("log", "prove", rec, "--size", cp1["size"], store=st)
    assert pr["size"] == cp1["size"] and pr["root"] == cp1["root"]
    c = prov_json("log", "consistency", d / "c1.note", d / "c2.note", "--trust", lab["trust_log"], store=st)
    assert c["ok"] and c["size1"] < c["size2"]
    assert prov_json("log", "verify", store=st)["ok"]
    # rewrite history behind the log's back: verify recomputes and objects
    s = Store(st)
    t.open_log(s).db.execute("UPDATE log_leaves SET entry = ? WHERE idx = 0", (b"rewritten",))
    s.close()
    r = run_prov("log", "verify", store=st)
    assert r.returncode == 1 and "does not match" in r.out
    assert run_prov("log", "consistency", d / "c2.note", d / "c1.note", store=st).returncode == 2  # reversed
    assert run_prov("log", "prove", "ab" * 32, store=st).returncode == 2


def test_gc_keeps_what_the_log_names(tmp_path, runtime):
    """A logged record is evidence whether or not a ref names it: gc --grace 0 keeps its bytes (and what
    it names), so the log's leaf still resolves; an unlogged one goes. The store's own gc keeps only its
    refs and the roots it is handed."""
    from conftest import report
    from provenance.log.evidence import gc as evidence_gc
    from provenance.store.gc import gc as store_gc
    st = tmp_path / "store"
    rep = tmp_path / "report.txt"
    rep.write_bytes(report())
    rec = prov_json("adjudicate", rep, "--runtime", runtime, store=st)  # logged, under no ref
    unlogged = tmp_path / "note.txt"
    unlogged.write_text("not evidence")
    blob = prov_json("add", unlogged, store=st)
    g = prov_json("gc", "--grace", "0", store=st)
    assert blob["blake3"] in g["objects"] and rec["digest"]["blake3"] not in g["objects"]
    assert run_prov("cat", rec["digest"]["sha256"], store=st).returncode == 0
    assert prov_json("fsck", store=st)["ok"] and prov_json("log", "verify", store=st)["ok"]
    assert prov_json("log", "prove", rec["digest"]["sha256"], store=st)["size"] == 1
    s = Store(st)
    assert evidence_gc(s, 0.0)["removed"] == 0  # nothing more to drop
    assert store_gc(s, (), 0.0, dry_run=True)["removed"] > 0  # unless the log is not asked
    s.set_ref("keep", rec["digest"]["blake3"])
    assert store_gc(s, (), 0.0, dry_run=True)["removed"] == 0  # the store's own refs it always keeps
    s.close()
