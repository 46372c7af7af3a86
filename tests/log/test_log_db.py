"""The store's index holds only the store's tables (#26): the evidence log keeps its own database beside
it (log.sqlite), the lab its rows (lab.sqlite); a v3 index that still holds them is moved or dropped by
the first writer, a crash mid-move loses nothing, a read-only v3 store still reads its log, and gc
keeps what the log names."""

import json
import sqlite3

import pytest

from conftest import prov_json, record_bytes, run_prov
from provenance.lab import ledger
from provenance.log import translog
from provenance.store.objects import SCHEMA_VERSION, Store

# the store's own tables, as an allow-list: anything else in index.sqlite is a layer above's
STORE_TABLES = {"obj", "obj_kind", "link", "refs", "store_meta", "statcache", "treecache", "sqlite_sequence"}


def _tables(path):
    db = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
    try:
        return {n for (n,) in db.execute("SELECT name FROM sqlite_master WHERE type='table'")}
    finally:
        db.close()


def _lab(tmp_path, n=4):
    """A store with records, a logged note and verdict, a signed checkpoint and a cached site."""
    root = tmp_path / "store"
    run_prov("key", "generate", "--out", tmp_path / "k", check=0)
    s = Store(root, create=True)
    shas = [s.put_bytes(record_bytes(i, 3.0 - i / 10), "record").sha256 for i in range(n)]
    for sha in shas:
        translog.log_object(s, s.resolve(sha).blake3)
    ledger.annotate(s, shas[1], "one", "codec", None)
    ledger.verdict(s, shas[0], "promote", "first")
    s.close()
    cp = prov_json("log", "checkpoint", "--key", tmp_path / "k/key.pem", store=root)
    run_prov("site", "build", "--out", tmp_path / "site", "--cache", store=root, check=0)
    return root, shas, cp


def _back_to_v3(root):
    """The layout an index of v3 had: the log's and the lab's tables inside index.sqlite, no companions."""
    idx = sqlite3.connect(root / "index.sqlite", isolation_level=None)
    for name in ("log", "lab"):
        idx.execute(f"ATTACH '{root / (name + '.sqlite')}' AS {name}")
        for (kind, t, sql) in list(idx.execute(f"SELECT type, name, sql FROM {name}.sqlite_master "
                                               "WHERE type IN ('table', 'index') AND sql IS NOT NULL ORDER BY type DESC")):
            idx.execute(sql)
            if kind == "table":
                idx.execute(f"INSERT INTO main.{t} SELECT * FROM {name}.{t}")
        idx.execute(f"DETACH {name}")
    idx.execute("DELETE FROM store_meta WHERE key LIKE 'companion:%'")  # v4's memory of its companions
    idx.execute("PRAGMA user_version=3")
    idx.close()
    for name in ("log", "lab"):
        for suffix in ("", "-wal", "-shm"):
            (root / f"{name}.sqlite{suffix}").unlink(missing_ok=True)


def test_the_index_holds_only_the_stores_tables(tmp_path):
    root, shas, cp = _lab(tmp_path)
    assert _tables(root / "index.sqlite") <= STORE_TABLES
    assert {"log_leaves", "log_nodes", "log_meta", "log_checkpoints"} <= _tables(root / "log.sqlite")
    assert {"ledger_run", "site_rows"} <= _tables(root / "lab.sqlite")
    s = Store(root)
    assert s.db.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION == 4
    s.close()
    assert prov_json("log", "verify", store=root)["size"] == len(shas) + 2  # the records, a note, a verdict


def test_a_v3_index_moves_out_on_first_write(tmp_path):
    root, shas, cp = _lab(tmp_path)
    before = prov_json("log", "prove", shas[2], "--size", cp["size"], store=root)
    runs = [r["record"] for r in prov_json("ledger", "show", store=root)]
    _back_to_v3(root)
    assert {"log_leaves", "ledger_run", "site_rows"} <= _tables(root / "index.sqlite")
    # a read-only open moves nothing and still reads the log where v3 kept it
    s = Store(root, readonly=True)
    assert translog.open_log(s).size() == cp["size"] and translog.checkpoints_of(s)
    s.close()
    assert not (root / "log.sqlite").exists()
    # the first writer: the index is v4, the log moved whole (same root, same proofs, same checkpoints)
    assert prov_json("log", "prove", shas[2], "--size", cp["size"], store=root) == before
    assert prov_json("log", "verify", store=root)["ok"]
    assert [r["record"] for r in prov_json("ledger", "show", store=root)] == runs  # a reader: from the objects
    assert not {t for t in _tables(root / "index.sqlite") if t.startswith("log_")}
    run_prov("site", "build", "--out", tmp_path / "site2", "--cache", store=root, check=0)  # a writer of rows
    assert _tables(root / "index.sqlite") <= STORE_TABLES
    assert [r["record"] for r in prov_json("ledger", "show", store=root)] == runs


def test_a_crash_between_copy_and_drop_loses_nothing(tmp_path):
    """The copy is one transaction: a crash leaves log.sqlite empty (copied again) or the very log (the
    index's dropped); a read-only store reads the index's copy meanwhile. A log.sqlite holding another
    log (an index restored from a backup, an old prov's) is never overwritten: the open is refused."""
    root, shas, cp = _lab(tmp_path)
    _back_to_v3(root)
    full = tmp_path / "full.sqlite"
    for state in ("empty", "copied", "other"):
        _back_to_v3(root) if state != "empty" else None
        stray = sqlite3.connect(root / "log.sqlite", isolation_level=None)
        log = translog.Log(stray)
        if state == "copied":
            src = sqlite3.connect(full)
            src.backup(stray)
            src.close()
        elif state == "other":
            log.append_many([b"a leaf the index never held"])
        stray.close()
        s = Store(root, readonly=True)  # meanwhile: the index's copy, nothing written
        assert translog.open_log(s).size() == cp["size"]
        s.close()
        if state == "other":
            r = run_prov("log", "verify", store=root)
            assert r.returncode == 1 and "two evidence logs" in r.err and len(r.err.strip().splitlines()) == 1
            assert "log_leaves" in _tables(root / "index.sqlite")  # both kept
            continue
        s = Store(root)
        log = translog.open_log(s)
        assert log.size() == cp["size"] and not log.recompute()
        assert [size for size, _note in log.checkpoints()] == [cp["size"]]
        s.close()
        assert not {t for t in _tables(root / "index.sqlite") if t.startswith("log_")}
        assert prov_json("log", "verify", store=root)["ok"]
        if state == "empty":
            src = sqlite3.connect(root / "log.sqlite")
            dst = sqlite3.connect(full)
            src.backup(dst)
            src.close()
            dst.close()


def test_gc_reads_the_log_where_it_is(tmp_path):
    """A v3 index's log (not yet moved) and log.sqlite alike keep what they name through gc --grace 0."""
    root, shas, cp = _lab(tmp_path)
    for layout in ("v4", "v3"):
        if layout == "v3":
            _back_to_v3(root)
        g = prov_json("gc", "--grace", "0", store=root)
        s = Store(root, readonly=True)
        assert all(s.by_sha256(sha) is not None for sha in shas), (layout, g)
        s.close()


def test_a_leaf_that_is_not_an_entry_stops_gc(tmp_path):
    root, shas, cp = _lab(tmp_path, n=2)
    s = Store(root)
    translog.open_log(s).db.execute("UPDATE log_leaves SET entry = ? WHERE idx = 0", (b"not json",))
    s.close()
    r = run_prov("gc", "--grace", "0", store=root)
    assert r.returncode == 1 and "not an entry" in r.err and len(r.err.strip().splitlines()) == 1, r.err
    s = Store(root, readonly=True)
    assert all(s.by_sha256(sha) is not None for sha in shas)
    s.close()


def test_repair_of_the_index_leaves_the_log_alone(tmp_path):
    root, shas, cp = _lab(tmp_path)
    (root / "index.sqlite").write_bytes(b"")
    for p in ("index.sqlite-wal", "index.sqlite-shm"):
        (root / p).unlink(missing_ok=True)
    rep = prov_json("fsck", "--repair", store=root)
    assert rep["log_size"] == cp["size"] and not any(x.startswith("log") for x in rep["lost"]), rep
    assert prov_json("log", "verify", store=root)["ok"]
    assert rep["inferred_kinds"]["record"] == len(shas)


def test_a_reader_of_a_store_without_lab_rows_creates_nothing(tmp_path):
    root = tmp_path / "store"
    s = Store(root, create=True)
    sha = s.put_bytes(record_bytes(1, 2.0), "record").sha256
    s.close()
    assert [r["record"] for r in prov_json("ledger", "show", store=root)] == [sha]
    run_prov("site", "build", "--out", tmp_path / "site", store=root, check=0)  # without --cache: only reads
    assert not (root / "lab.sqlite").exists() and not (root / "log.sqlite").exists()


def test_fsck_checks_the_logs_own_database(tmp_path):
    """index.sqlite's integrity check covered the log while it lived there: fsck checks log.sqlite too."""
    root, shas, cp = _lab(tmp_path, n=2)
    assert prov_json("fsck", store=root)["ok"]
    s = Store(root)
    log = translog.open_log(s)
    log.db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    page = log.db.execute("PRAGMA page_size").fetchone()[0]
    s.close()
    data = bytearray((root / "log.sqlite").read_bytes())
    assert len(data) >= 3 * page
    data[page:3 * page] = b"\xa5" * (2 * page)  # pages 2 and 3: b-tree pages of the log's tables
    (root / "log.sqlite").write_bytes(bytes(data))
    r = run_prov("fsck", "--json", store=root)
    rep = json.loads(r.out)
    assert r.returncode == 1 and not rep["ok"] and rep["errors"][0].startswith("log.sqlite: "), rep
    assert run_prov("fsck", store=root).returncode == 1


@pytest.mark.parametrize("damage", ["missing", "empty", "dangling link", "a fresh database"])
def test_a_lost_log_database_is_damage_not_a_fresh_log(tmp_path, damage):
    """Once the store made log.sqlite, losing it is damage: gc must not collect what the log named, an
    append must not start a new log, fsck says so; each in one line."""
    root, shas, cp = _lab(tmp_path, n=2)
    path = root / "log.sqlite"
    for p in (path, root / "log.sqlite-wal", root / "log.sqlite-shm"):
        p.unlink(missing_ok=True)
    if damage == "empty":
        path.write_bytes(b"")
    elif damage == "dangling link":
        path.symlink_to(tmp_path / "gone.sqlite")
    elif damage == "a fresh database":
        sqlite3.connect(path).execute("CREATE TABLE t(x)").connection.close()
    for args, rc in ((["gc", "--grace", "0"], 1), (["log", "verify"], 1), (["log", "append", shas[0]], 1),
                     (["fsck"], 1)):
        r = run_prov(*args, store=root)
        assert r.returncode == rc and "log.sqlite" in r.out + r.err, (args, r.out, r.err)
        assert "Traceback" not in r.err and len(r.err.strip().splitlines()) <= 1
    s = Store(root, readonly=True)
    assert all(s.by_sha256(sha) is not None for sha in shas)
    s.close()


def test_a_garbage_companion_is_named(tmp_path):
    root, shas, cp = _lab(tmp_path, n=2)
    runs = [r["record"] for r in prov_json("ledger", "show", store=root)]
    for name in ("lab", "log"):  # no WAL left to stand in for the page the garbage replaces
        for p in (root / f"{name}.sqlite-wal", root / f"{name}.sqlite-shm"):
            p.unlink(missing_ok=True)
    (root / "lab.sqlite").write_bytes(b"not a database at all" * 200)
    assert [r["record"] for r in prov_json("ledger", "show", store=root)] == runs  # a reader: from the objects
    r = run_prov("ledger", "annotate", shas[0], "--label", "x", store=root)
    assert r.returncode == 1 and "lab.sqlite" in r.err and "delete it" in r.err, r.err
    (root / "log.sqlite").write_bytes(b"not a database at all" * 200)
    r = run_prov("log", "verify", store=root)
    assert r.returncode == 1 and "log.sqlite: cannot be read" in r.err and "index.sqlite" not in r.err, r.err


def test_a_leaf_of_another_type_stops_gc_in_one_line(tmp_path):
    root, shas, cp = _lab(tmp_path, n=2)
    s = Store(root)
    translog.open_log(s).db.execute("UPDATE log_leaves SET entry = 'text, not bytes' WHERE idx = 0")
    s.close()
    r = run_prov("gc", "--grace", "0", store=root)
    assert r.returncode == 1 and "not an entry" in r.err and "internal error" not in r.err, r.err


def test_an_append_waits_for_gc(tmp_path):
    """An append holds the store's write lock as any writer does: while gc holds it, the append waits
    (seen in /proc/locks, not by timing), so an object it checked cannot be collected under it."""
    import fcntl
    import os
    import subprocess
    import sys
    root, shas, cp = _lab(tmp_path, n=2)
    f = tmp_path / "late.txt"
    f.write_text("old evidence")
    blob = prov_json("add", f, store=root)
    lock = os.open(root / "lock", os.O_RDWR)
    fcntl.flock(lock, fcntl.LOCK_EX)  # as gc holds it
    from conftest import PROV
    p = subprocess.Popen([PROV, "--store", str(root), "log", "append", blob["sha256"]], stdout=subprocess.PIPE,
                         stderr=subprocess.PIPE)
    try:
        while f"{p.pid} " not in "".join(ln for ln in open("/proc/locks") if "->" in ln and "FLOCK" in ln):
            assert p.poll() is None, p.communicate()
        assert p.poll() is None
    finally:
        os.close(lock)
    out, err = p.communicate(timeout=300)
    assert p.returncode == 0, err


def test_two_appenders_of_one_entry_make_one_leaf(tmp_path):
    import multiprocessing as mp
    root, shas, cp = _lab(tmp_path, n=2)
    s = Store(root)
    b3s = [s.put_bytes(b"object %d" % i, "blob").blake3 for i in range(40)]
    s.close()
    procs = [mp.get_context("spawn").Process(target=_append_all, args=(str(root), b3s)) for _ in range(3)]
    [p.start() for p in procs]
    [p.join() for p in procs]
    assert all(p.exitcode == 0 for p in procs)
    s = Store(root)
    log = translog.open_log(s)
    entries = [e for _i, e in log.leaves()]
    assert len(entries) == len(set(entries)) == cp["size"] + len(b3s) and not log.recompute()
    s.close()


def _append_all(root, b3s):
    s = Store(root)
    for b3 in b3s:
        translog.log_object(s, b3)
    s.close()


def test_repair_after_an_interrupted_move_keeps_the_log(tmp_path):
    """A crash mid-copy leaves an empty log.sqlite beside a v3 index that holds the log; a repair of that
    index then carries the log into log.sqlite rather than keep the empty one."""
    root, shas, cp = _lab(tmp_path)
    _back_to_v3(root)
    translog.Log(sqlite3.connect(root / "log.sqlite", isolation_level=None))  # tables, no rows: the crash
    idx = sqlite3.connect(root / "index.sqlite", isolation_level=None)
    idx.execute("DELETE FROM obj_kind")  # damage the index's kinds so repair has cause to rebuild
    idx.close()
    rep = prov_json("fsck", "--repair", store=root)
    assert rep["log_size"] == cp["size"] and not [x for x in rep["lost"] if x.startswith("log")], rep
    assert prov_json("log", "verify", store=root)["ok"]
