"""A store that notices its own damage (issue 13, items 4 and 5): fsck of the index itself,
fsck --repair, verified reads, gc racing adds, symlink chains, kinds, read-only stores."""

import json
import os
import shutil
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest
from click.testing import CliRunner

from conftest import make_tree, prov_json, run_prov
from provenance.core import canonical
from provenance.cli.app import cli
from provenance.log.translog import log_object
from provenance.store.objects import SCHEMA_VERSION, Store

RECORD_DOC = {"schema": "comma-lab/note/v1", "record": "0" * 64, "label": "x", "at": "2026-01-01T00:00:00Z"}


def _seed(tmp_path, store):
    rt = make_tree(tmp_path / "rt", {"a.txt": b"alpha\n", "sub": {"b.bin": bytes(range(200)) * 3},
                                     "l": ("link", "a.txt")})
    tree = prov_json("add", rt, "--ref", "runtimes/x", store=store)
    f = tmp_path / "one.txt"
    f.write_bytes(b"one file\n")
    blob = prov_json("add", f, "--ref", "files/one", store=store)
    return tree, blob


def _obj(store, b3):
    return Path(store) / "objects" / b3[:2] / b3


# -- fsck of the index itself ---------------------------------------------------------------------

def test_fsck_zero_length_index_is_damage_not_an_empty_store(tmp_path, store):
    tree, blob = _seed(tmp_path, store)
    (store / "index.sqlite").write_bytes(b"")
    for p in ("index.sqlite-wal", "index.sqlite-shm"):
        (store / p).unlink(missing_ok=True)
    r = run_prov("fsck", store=store, check=1)
    assert "zero length" in r.err + r.out and "fsck --repair" in r.err + r.out
    assert "Traceback" not in r.err
    # nothing else may treat it as a fresh store: gc would delete every object
    g = run_prov("gc", "--grace", "0", store=store, check=1)
    assert "fsck --repair" in g.err and len(g.err.strip().splitlines()) == 1
    a = run_prov("add", tmp_path / "one.txt", store=store, check=1)
    assert "fsck --repair" in a.err
    assert _obj(store, blob["blake3"]).exists() and (store / "index.sqlite").stat().st_size == 0


def _fill(store, n):
    """n more objects and refs (several index pages), written by the library, then flushed."""
    s = Store(store)
    for i in range(n):
        d = s.put_bytes(os.urandom(64), "blob")
        s.set_ref(f"f/{i}", d.blake3)
    s.close()
    _flush(store)


def _flush(store):
    s = Store(store)
    s.db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    s.db.execute("PRAGMA journal_mode=DELETE")
    s.close()


def test_fsck_truncated_index(tmp_path, store):
    _seed(tmp_path, store)
    _fill(store, 40)
    idx = store / "index.sqlite"
    data = idx.read_bytes()
    idx.write_bytes(data[: len(data) // 2])
    r = run_prov("fsck", "--json", store=store)
    assert r.returncode == 1, r.err
    rep = json.loads(r.out)
    assert rep["index"] == "damaged" and any("index.sqlite" in e for e in rep["errors"])
    assert any("fsck --repair" in n for n in rep["notes"])


def test_fsck_corrupt_page_then_add_does_not_crash(tmp_path, store):
    _seed(tmp_path, store)
    _fill(store, 40)
    idx = store / "index.sqlite"
    data = bytearray(idx.read_bytes())
    page = int.from_bytes(data[16:18], "big")
    assert len(data) >= 4 * page
    for off in range(page * 2 + 8, page * 3 - 8, 7):  # scribble over the third page's cells
        data[off] = (data[off] + 0x5A) & 0xFF
    idx.write_bytes(bytes(data))
    r = run_prov("fsck", store=store)
    assert r.returncode == 1 and "Traceback" not in r.err
    assert "index.sqlite" in r.out and "fsck --repair" in r.out
    (tmp_path / "new").write_bytes(b"new bytes")
    a = run_prov("add", tmp_path / "new", store=store)
    assert a.returncode in (0, 1) and "Traceback" not in a.err
    if a.returncode == 1:
        assert len(a.err.strip().splitlines()) == 1 and "fsck" in a.err


def test_repair_rebuilds_from_objects_and_keeps_readable_refs(tmp_path, store):
    tree, blob = _seed(tmp_path, store)
    (tmp_path / "note.json").write_bytes(canonical.dumps(RECORD_DOC))
    note = prov_json("add", tmp_path / "note.json", store=store)
    before = prov_json("ls", "runtimes/x", store=store)
    s = Store(store)
    s.db.execute("DELETE FROM obj")  # the index forgot everything but its refs
    s.close()
    rep = prov_json("fsck", "--repair", store=store)
    assert rep["refs_recovered"] == 2 and rep["objects"] >= 6 and not rep["errors"]
    assert rep["inferred_kinds"]["tree"] == 2 and rep["inferred_kinds"]["note"] == 1
    assert prov_json("ls", "runtimes/x", store=store) == before
    assert prov_json("fsck", store=store)["ok"]
    info = Store(store).info(note["blake3"])
    assert "note" in info.kinds
    assert (store / rep["damaged_index"]).exists()


def test_repair_of_zero_length_index_reports_lost_refs_and_gc_waits(tmp_path, store):
    tree, blob = _seed(tmp_path, store)
    (store / "index.sqlite").write_bytes(b"")
    rep = prov_json("fsck", "--repair", store=store)
    assert rep["refs_recovered"] == 0 and any(x.startswith("refs:") for x in rep["lost"])
    assert any(x.startswith("log:") for x in rep["lost"])
    # the tree is back (its SHA-256 view recomputed from the objects), refs are not guessed
    assert prov_json("ls", tree["sha256"], store=store)["tree"]["sha256"] == tree["sha256"]
    assert prov_json("ref", "list", store=store) == []
    g = run_prov("gc", "--grace", "0", store=store, check=2)
    assert "ref" in g.err and "--ack-repair" in g.err
    assert _obj(store, blob["blake3"]).exists()
    run_prov("ref", "set", "runtimes/x", tree["blake3"], store=store, check=0)
    run_prov("fsck", "--ack-repair", store=store, check=0)
    run_prov("gc", "--grace", "0", store=store, check=0)
    assert prov_json("fsck", store=store)["ok"]
    assert _obj(store, tree["blake3"]).exists()


def test_repair_keeps_a_log_that_checks_out(tmp_path, store):
    tree, blob = _seed(tmp_path, store)
    run_prov("log", "append", blob["blake3"], store=store, check=0)
    run_prov("log", "append", tree["blake3"], store=store, check=0)
    s = Store(store)
    s.db.execute("DELETE FROM obj")
    s.close()
    rep = prov_json("fsck", "--repair", store=store)
    assert rep["log_size"] == 2 and not rep["lost"]
    run_prov("log", "verify", store=store, check=0)
    run_prov("log", "prove", blob["sha256"], store=store, check=0)


# -- verified reads -------------------------------------------------------------------------------

def test_cat_of_a_corrupt_object_serves_nothing_and_exits_1(tmp_path, store):
    tree, blob = _seed(tmp_path, store)
    p = _obj(store, blob["blake3"])
    p.chmod(0o644)
    p.write_bytes(b"one filf\n")
    r = run_prov("cat", blob["sha256"], store=store)
    assert r.returncode == 1 and r.stdout == b"" and "corrupt" in r.err
    r = run_prov("cat", blob["sha256"], "--json", store=store)
    assert r.returncode == 1 and r.stdout == b""
    run_prov("cat", "runtimes/x", store=store, check=0)  # an intact object still reads


def test_cat_of_a_large_corrupt_object_exits_1(tmp_path, store):
    big = tmp_path / "big"
    big.write_bytes(os.urandom(3 << 20))
    d = prov_json("add", big, store=store)
    p = _obj(store, d["blake3"])
    p.chmod(0o644)
    with open(p, "r+b") as f:
        f.seek(3 << 20 - 10)
        f.write(b"X")
    r = run_prov("cat", d["blake3"], store=store)
    assert r.returncode == 1 and "corrupt" in r.err


# -- gc racing adds -------------------------------------------------------------------------------

GC_LOOP = """
import os, sys
from provenance.log.evidence import gc
from provenance.store.objects import Store
root, stop, ready = sys.argv[1], sys.argv[2], sys.argv[3]
n = 0
while n == 0 or not os.path.exists(stop):
    s = Store(root)
    gc(s, 0.0)
    s.close()
    n += 1
    open(ready, "w").close()
print(n)
"""


def test_gc_grace_0_racing_adds_loses_no_acknowledged_object(tmp_path, store):
    shared = make_tree(tmp_path / "shared", {"common.bin": b"shared bytes\n" * 100})
    prov_json("add", shared, store=store)  # unreferenced: every round gc may collect it
    stop = tmp_path / "stop"
    ready = tmp_path / "ready"
    gc = subprocess.Popen([sys.executable, "-c", GC_LOOP, str(store), str(stop), str(ready)], stdout=subprocess.PIPE)
    while not ready.exists():  # gc is collecting before the first add (a loaded machine starts it late)
        assert gc.poll() is None, "the gc loop died"
        time.sleep(0.01)
    runner = CliRunner()
    acked = {}
    try:
        for i in range(24):
            src = make_tree(tmp_path / f"t{i}", {"common.bin": b"shared bytes\n" * 100,
                                                 "own.txt": f"round {i}\n".encode(), "d": {"x": os.urandom(32)}})
            res = runner.invoke(cli, ["--store", str(store), "add", str(src), "--ref", f"r/{i}", "--json"])
            assert res.exit_code == 0, res.output
            acked[f"r/{i}"] = json.loads(res.stdout)["blake3"]
    finally:
        stop.write_text("")
        rounds = int(gc.communicate(timeout=300)[0] or 0)
    assert rounds >= 1
    s = Store(store)
    for name, b3 in acked.items():
        assert s.get_ref(name) == b3
    s.close()
    rep = prov_json("fsck", store=store)
    assert rep["ok"], rep["errors"]
    for name in acked:
        out = tmp_path / f"out-{name.replace('/', '-')}"
        run_prov("export", name, out, store=store, check=0)


# -- symlink chains -------------------------------------------------------------------------------

def test_symlink_chain_through_the_trees_own_links_is_refused(tmp_path, store):
    t = make_tree(tmp_path / "t", {"d": ("link", "."), "esc": ("link", "d/d/d/../../../etc/passwd")})
    r = run_prov("add", t, store=store, check=2)
    assert "escapes" in r.err and "esc" in r.err
    run_prov("hash", t, check=2)
    loop = make_tree(tmp_path / "loop", {"a": ("link", "b"), "b": ("link", "a")})
    assert "too many levels" in run_prov("hash", loop, check=2).err
    absl = make_tree(tmp_path / "absl", {"abs": ("link", "/etc"), "via": ("link", "abs/passwd")})
    run_prov("hash", absl, check=2)
    ok = make_tree(tmp_path / "ok", {"d": ("link", "."), "in": ("link", "d/d/sub/../f"), "f": b"x", "sub": {}})
    run_prov("hash", ok, check=0)


def test_export_refuses_a_stored_chain_that_escapes(tmp_path, store):
    t = make_tree(tmp_path / "t", {"d": ("link", "."), "esc": ("link", "d/d/d/../../../etc/passwd")})
    d = prov_json("add", t, "--allow-unsafe-links", store=store)
    r = run_prov("export", d["blake3"], tmp_path / "out", store=store, check=2)
    assert "escapes" in r.err
    assert not (tmp_path / "out").exists()


# -- kinds ----------------------------------------------------------------------------------------

def _record_bytes(tmp_path) -> bytes:
    from conftest import report
    (tmp_path / "report.txt").write_bytes(report())
    (tmp_path / "archive.zip").write_bytes(os.urandom(2_244_900))
    other = tmp_path / "other-store"
    out = prov_json("adjudicate", tmp_path / "report.txt", "--archive", tmp_path / "archive.zip", store=other)
    s = Store(other)
    data = s.read_bytes(s.resolve(out["digest"]["blake3"]).blake3)
    s.close()
    return data


def test_same_bytes_as_blob_then_record_are_both(tmp_path, store):
    from provenance.lab.ledger import runs
    data = _record_bytes(tmp_path)
    f = tmp_path / "record.json"
    f.write_bytes(data)
    blob = prov_json("add", f, store=store)
    s = Store(store)
    assert s.info(blob["blake3"]).kinds == ("blob",)
    d = s.put_bytes(data, "record")
    assert d.blake3 == blob["blake3"]
    info = s.info(d.blake3)
    assert info.kinds == ("blob", "record") and info.kind == "record"
    assert [r.blake3 for r in runs(s)] == [d.blake3]
    log_object(s, d.blake3)
    s.close()
    shown = prov_json("ledger", "show", store=store)
    assert [r["record"] for r in shown] == [blob["sha256"]]
    run_prov("log", "prove", blob["sha256"], store=store, check=0)


def test_old_store_is_migrated_to_kinds(tmp_path, store):
    f = tmp_path / "x"
    f.write_bytes(b"old bytes")
    d = prov_json("add", f, store=store)
    s = Store(store)  # rewrite the index as a v0 one (issue 15's test_scale_index covers v0 and v2 fully)
    for t in ("obj", "obj_kind", "link", "statcache"):
        s.db.execute(f"DROP TABLE {t}")
    s.db.execute("CREATE TABLE objects(blake3 TEXT PRIMARY KEY, sha256 TEXT NOT NULL, size INTEGER NOT NULL, "
                 "kind TEXT NOT NULL, added REAL NOT NULL, touched REAL NOT NULL) WITHOUT ROWID")
    s.db.execute("INSERT INTO objects VALUES(?,?,?,'note',1,1)", (d["blake3"], d["sha256"], d["size"]))
    s.db.execute("PRAGMA user_version=0")
    s.close()
    s = Store(store)
    assert s.db.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION
    assert s.info(d["blake3"]).kinds == ("note",)
    s.close()
    assert prov_json("fsck", store=store)["ok"]


def test_newer_index_schema_is_refused(tmp_path, store):
    _seed(tmp_path, store)
    s = Store(store)
    s.db.execute(f"PRAGMA user_version={SCHEMA_VERSION + 1}")
    s.close()
    r = run_prov("ref", "list", store=store, check=2)
    assert "newer" in r.err


# -- read-only store ------------------------------------------------------------------------------

def test_read_only_open_leaves_the_index_untouched(tmp_path, store):
    tree, blob = _seed(tmp_path, store)
    _flush(store)
    before = {p.name: p.read_bytes() for p in store.iterdir() if p.is_file()}
    s = Store(store, readonly=True)
    assert s.resolve("runtimes/x").blake3 == tree["blake3"]
    assert s.ls(tree["blake3"]) and s.list_refs()
    with pytest.raises(sqlite3.OperationalError):
        s.db.execute("DELETE FROM refs")
    s.close()
    after = {p.name: p.read_bytes() for p in store.iterdir() if p.is_file()}
    assert after == before


@pytest.mark.skipif(shutil.which("bwrap") is None, reason="needs bubblewrap for a read-only bind")
def test_read_commands_on_a_read_only_mount(tmp_path, store):
    tree, blob = _seed(tmp_path, store)
    run_prov("log", "append", blob["blake3"], store=store, check=0)
    from conftest import PROV
    out = tmp_path / "w"
    out.mkdir()

    def ro(*args):
        env = {k: v for k, v in os.environ.items() if k != "PROV_STORE"}
        return subprocess.run(["bwrap", "--bind", "/", "/", "--ro-bind", str(store), str(store), "--dev", "/dev",
                               "--proc", "/proc", PROV, "--store", str(store), *map(str, args)],
                              capture_output=True, env=env)
    for args in (["cat", blob["sha256"]], ["ls", "runtimes/x"], ["ref", "list"], ["ref", "get", "files/one"],
                 ["fsck"], ["export", "runtimes/x", out / "exp"], ["log", "verify"],
                 ["log", "prove", blob["sha256"]], ["ledger", "show"], ["frontier"], ["hash", tmp_path / "one.txt"]):
        r = ro(*args)
        assert r.returncode == 0, (args, r.stderr)
    assert (out / "exp" / "a.txt").read_bytes() == b"alpha\n"
    for args in (["add", tmp_path / "one.txt"], ["ref", "set", "x", blob["sha256"]], ["gc"]):
        r = ro(*args)
        assert r.returncode == 2, (args, r.returncode, r.stderr)
        assert b"Traceback" not in r.stderr and len(r.stderr.strip().splitlines()) == 1


def test_export_of_a_corrupt_file_publishes_nothing(tmp_path, store):
    tree, blob = _seed(tmp_path, store)
    p = _obj(store, Store(store).ls(tree["blake3"])[0]["blake3"])  # a.txt
    p.chmod(0o644)
    p.write_bytes(b"alphX\n")
    r = run_prov("export", "runtimes/x", tmp_path / "out", store=store, check=1)
    assert "corrupt" in r.err and not (tmp_path / "out").exists()


def test_missing_index_beside_objects_is_damage(tmp_path, store):
    tree, blob = _seed(tmp_path, store)
    for p in ("index.sqlite", "index.sqlite-wal", "index.sqlite-shm"):
        (store / p).unlink(missing_ok=True)
    r = run_prov("add", tmp_path / "one.txt", store=store, check=1)
    assert "missing" in r.err and "fsck --repair" in r.err and not (store / "index.sqlite").exists()
    assert "fsck --repair" in run_prov("fsck", store=store, check=1).out
    rep = prov_json("fsck", "--repair", store=store)
    assert rep["objects"] >= 5 and prov_json("fsck", store=store)["ok"]


def test_what_takes_an_objects_place_is_refused_in_one_line(tmp_path, store):
    """A directory, a FIFO or a device where an object belongs: every read names the path, never
    blocks on the FIFO nor reads the device without end (prov ls reads a tree whole, prov cat
    streams a file through open_verified)."""
    tree, blob = _seed(tmp_path, store)
    for cmd, b3 in (("ls", tree["blake3"]), ("cat", blob["blake3"])):
        p = _obj(store, b3)
        os.chmod(p.parent, 0o755)
        for kind in ("dir", "fifo", "device"):
            if p.is_dir() and not p.is_symlink():
                p.rmdir()
            elif p.exists() or p.is_symlink():
                p.unlink()
            if kind == "dir":
                p.mkdir()
            elif kind == "fifo":
                os.mkfifo(p)
            else:
                p.symlink_to("/dev/zero")
            r = run_prov(cmd, b3, store=store, timeout=120)
            assert r.returncode in (1, 2) and r.err.count("\n") == 1 and "Traceback" not in r.err, (cmd, kind, r.err)
            assert str(p) in r.err or p.name in r.err, (cmd, kind, r.err)


def test_gc_refuses_a_grace_that_is_not_a_duration(tmp_path, store):
    """NaN and negative graces counted every recent add as old: refused in one line, nothing removed."""
    tree, blob = _seed(tmp_path, store)
    f = tmp_path / "recent.txt"
    f.write_text("just added, under no ref")
    new = prov_json("add", f, store=store)
    for grace in ("nan", "-5"):
        r = run_prov("gc", "--grace", grace, store=store)
        assert r.returncode == 2 and "grace" in r.err and len(r.err.strip().splitlines()) == 1, r.err
    assert run_prov("cat", new["sha256"], store=store).returncode == 0
    assert prov_json("gc", "--grace", "inf", store=store)["removed"] == 0
