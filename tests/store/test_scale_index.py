"""Issue 15: the v3 index (integer ids, binary digests), its migration from v0 and v2 stores, a
re-add that writes nothing, and gc that keeps what a recent root reaches."""

import hashlib
import os
import sqlite3
import time

from blake3 import blake3

from conftest import prov_json
from provenance.core import tree as treemod
from provenance.store.objects import SCHEMA_VERSION, Store
from provenance.store.statcheck import RACY_NS

# the index schema of main before issue 13 (user_version 0), verbatim
V0 = """
CREATE TABLE IF NOT EXISTS objects(
    blake3 TEXT PRIMARY KEY, sha256 TEXT NOT NULL, size INTEGER NOT NULL,
    kind TEXT NOT NULL, added REAL NOT NULL, touched REAL NOT NULL) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS objects_sha256 ON objects(sha256);
CREATE TABLE IF NOT EXISTS links(parent TEXT NOT NULL, child TEXT NOT NULL,
    PRIMARY KEY(parent, child)) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS refs(name TEXT PRIMARY KEY, target TEXT NOT NULL,
    updated REAL NOT NULL) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS statcache(path BLOB PRIMARY KEY, dev INTEGER, ino INTEGER,
    size INTEGER, mtime_ns INTEGER, ctime_ns INTEGER, sha256 TEXT, blake3 TEXT,
    recorded_ns INTEGER) WITHOUT ROWID;
"""
# issue 13's v2 adds the set of kinds per object
V2 = V0 + """
CREATE TABLE IF NOT EXISTS kinds(blake3 TEXT NOT NULL, kind TEXT NOT NULL, added REAL NOT NULL,
    PRIMARY KEY(blake3, kind)) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS store_meta(key TEXT PRIMARY KEY, value TEXT NOT NULL) WITHOUT ROWID;
"""


def _put(root, data: bytes) -> tuple[str, str]:
    b3, sha = blake3(data).hexdigest(), hashlib.sha256(data).hexdigest()
    d = root / "objects" / b3[:2]
    d.mkdir(parents=True, exist_ok=True)
    (d / b3).write_bytes(data)
    return b3, sha


def make_old_store(root, version: int) -> dict:
    """A store as the older code wrote it: a tree of two files, a record-kind blob, a ref."""
    (root / "tmp").mkdir(parents=True)
    a, b = b"alpha\n", b"beta beta\n"
    ea, eb = _put(root, a), _put(root, b)
    entries = [treemod.Entry("file", "a", len(a), ea[1], ea[0]), treemod.Entry("exec", "b", len(b), eb[1], eb[0])]
    d, view = treemod.tree_digest(entries)
    _put(root, view)
    doc = b'{"schema":"comma-lab/note/v1"}'
    nb3, nsha = _put(root, doc)
    db = sqlite3.connect(root / "index.sqlite")
    db.executescript(V2 if version == 2 else V0)
    t0 = time.time() - 7200
    rows = [(ea[0], ea[1], len(a), "blob"), (eb[0], eb[1], len(b), "blob"),
            (d.blake3, d.sha256, d.size, "tree"), (nb3, nsha, len(doc), "note")]
    db.executemany("INSERT INTO objects VALUES(?,?,?,?,?,?)", [(*r, t0 + i, t0 + i) for i, r in enumerate(rows)])
    db.executemany("INSERT INTO links VALUES(?,?)", [(d.blake3, ea[0]), (d.blake3, eb[0])])
    if version == 2:
        db.executemany("INSERT INTO kinds VALUES(?,?,?)", [(r[0], r[3], t0) for r in rows]
                       + [(nb3, "blob", t0 + 9)])
        db.execute("PRAGMA user_version=2")
    db.execute("INSERT INTO refs VALUES('runtimes/old', ?, ?)", (d.blake3, t0))
    db.execute("INSERT INTO statcache VALUES(?,?,?,?,?,?,?,?,?)", (b"/nowhere", 1, 2, 3, 4, 5, "00", "00", 6))
    db.commit()
    db.close()
    return {"tree": d, "a": ea, "b": eb, "note": (nb3, nsha)}


def _check_migrated(root, old, version):
    s = Store(root)
    assert s.db.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION
    tables = {n for (n,) in s.db.execute("SELECT name FROM sqlite_master WHERE type='table'")}
    assert not tables & {"objects", "links", "kinds"}
    info = s.info(old["tree"].blake3)
    assert (info.sha256, info.size, info.kind) == (old["tree"].sha256, old["tree"].size, "tree")
    assert s.resolve(old["a"][1][:10]).blake3 == old["a"][0]  # sha256 prefix
    assert s.resolve(old["b"][0][:9]).sha256 == old["b"][1]  # odd-length blake3 prefix
    assert s.by_sha256(old["note"][1]).kinds == (("note", "blob") if version == 2 else ("note",))
    assert [b3 for _i, b3, _s in s.of_kind("note")] == [old["note"][0]]
    assert s.get_ref("runtimes/old") == old["tree"].blake3
    assert s.db.execute("SELECT count(*) FROM statcache").fetchone()[0] == 0  # a cache: dropped
    s.close()
    rep = prov_json("fsck", store=root)
    assert rep["ok"] and rep["objects"] == 4, rep
    assert prov_json("ls", "runtimes/old", store=root)["tree"]["sha256"] == old["tree"].sha256
    # links survived: gc keeps the ref's children and drops only the unreferenced old note
    g = prov_json("gc", "--grace", "0", store=root)
    assert g["objects"] == [old["note"][0]]
    assert prov_json("fsck", store=root)["ok"]


def test_v0_store_migrates(tmp_path):
    root = tmp_path / "store"
    _check_migrated(root, make_old_store(root, 0), 0)


def test_v2_store_migrates(tmp_path):
    root = tmp_path / "store"
    _check_migrated(root, make_old_store(root, 2), 2)


def test_read_only_old_store_is_read_without_writing(tmp_path):
    root = tmp_path / "store"
    old = make_old_store(root, 2)
    before = (root / "index.sqlite").read_bytes()
    s = Store(root, readonly=True)
    assert s.info(old["tree"].blake3).kind == "tree"
    assert s.resolve("runtimes/old").blake3 == old["tree"].blake3
    s.close()
    assert (root / "index.sqlite").read_bytes() == before


def _files(root, n):
    past = time.time() - 3600  # out of the racy window, so the second add trusts its stat cache
    for i in range(n):
        d = root / f"d{i % 7}"
        d.mkdir(parents=True, exist_ok=True)
        (d / f"f{i}").write_bytes(b"%d\n" % i * 3)
        os.utime(d / f"f{i}", (past, past))
    # utime set each ctime to now: wait out the racy window (a lower bound, not a guess at speed) so
    # the first add's stat rows are trusted by the next
    time.sleep(RACY_NS / 1e9 + 0.02)


def test_re_add_of_an_unchanged_tree_writes_nothing(tmp_path):
    src, root = tmp_path / "src", tmp_path / "store"
    _files(src, 300)
    s = Store(root, create=True)
    _, first = s.add(src)
    s.db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    idx = [root / "index.sqlite", root / "index.sqlite-wal"]
    sizes = [(p.stat().st_size, p.stat().st_mtime_ns) for p in idx]
    changes = s.db.total_changes
    _, again = s.add(src)
    assert again == first
    assert s.db.total_changes == changes
    assert [(p.stat().st_size, p.stat().st_mtime_ns) for p in idx] == sizes
    # one changed file: its blob, its directory's tree and the root are new (with their kinds and
    # links: 43 + 7 children), the file's stat row is rewritten; nothing else is written
    (src / "d3" / "f3").write_bytes(b"changed")
    _, third = s.add(src)
    assert third != first
    assert s.db.total_changes - changes == 3 * 2 + 43 + 7 + 1
    s.close()
    assert prov_json("fsck", store=root)["ok"]


def test_gc_keeps_what_a_recent_root_reaches(tmp_path):
    src, root = tmp_path / "src", tmp_path / "store"
    _files(src, 20)
    s = Store(root, create=True)
    _, d = s.add(src)
    # age every object past the grace, then re-add: only the root is touched, and it keeps the rest
    s.db.execute("UPDATE obj SET added = added - 7200, touched = NULL")
    changes = s.db.total_changes
    s.add(src)
    assert s.db.total_changes - changes == 1
    s.close()
    assert prov_json("gc", "--grace", "600", store=root)["removed"] == 0
    s = Store(root)
    s.db.execute("UPDATE obj SET added = added - 7200, touched = NULL")
    s.close()
    assert prov_json("gc", "--grace", "600", store=root)["removed"] == 28  # 20 files, 7 directories, the root
    assert prov_json("fsck", store=root)["objects"] == 0
