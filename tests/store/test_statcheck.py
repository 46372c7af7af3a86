"""Issue 15: the re-add of an unchanged tree from a stat check alone (store/statcheck.py). An equal
fingerprint must mean an unchanged tree: every change a user or a hostile process can make between
two adds is tried here, and each must send the add back to hashing."""

import json
import os
import sqlite3
import subprocess
import sys
import time

import pytest

from conftest import REPO, run_prov
from provenance.core.tree import hash_path
from provenance.store import objects, statcheck
from provenance.store.gc import gc
from provenance.store.objects import Store
from provenance.store.statcheck import RACY_NS, fingerprint, readd_unchanged


def _tree(root):
    for i in range(40):
        d = root / f"d{i % 5}" / ("deep" if i % 3 == 0 else "")
        d.mkdir(parents=True, exist_ok=True)
        (d / f"f{i}").write_bytes(b"%d\n" % i * 7)
    (root / "top.txt").write_bytes(b"top\n")
    (root / "run.sh").write_bytes(b"#!/bin/sh\n")
    os.chmod(root / "run.sh", 0o755)
    os.symlink("d1/f1", root / "link")
    (root / "empty").mkdir()
    # a lower bound, not a guess at speed: the add keeps a fingerprint only of entries older than
    # its start by the racy window
    time.sleep(RACY_NS / 1e9 + 0.02)
    return root


def _added(tmp_path):
    src, root = _tree(tmp_path / "src"), tmp_path / "store"
    s = Store(root, create=True)
    _, d = s.add(src)
    s.close()
    return src, root, d


def _fast(root, src):
    got = readd_unchanged(str(root), str(src))
    return None if got is None else got[1]


def test_unchanged_tree_is_answered_by_stat_alone(tmp_path):
    src, root, d = _added(tmp_path)
    assert readd_unchanged(str(root), str(src)) == (d.sha256, d.blake3, d.size)
    assert readd_unchanged(str(root), str(src) + "/") == (d.sha256, d.blake3, d.size)  # the same absolute path


MUTATIONS = {
    "same size and mtime, new bytes": lambda s: _rewrite_keep_times(s / "d1" / "f1", b"9\n" * 7),
    "chmod +x": lambda s: os.chmod(s / "top.txt", 0o755),
    "rename": lambda s: os.rename(s / "d2" / "f2", s / "d2" / "g2"),
    "new file deep": lambda s: (s / "d0" / "deep" / "new").write_bytes(b""),
    "delete": lambda s: os.unlink(s / "d4" / "f4"),
    "new empty dir": lambda s: (s / "empty" / "more").mkdir(),
    "symlink retargeted, same length": lambda s: (os.unlink(s / "link"), os.symlink("d1/f6", s / "link")),
    "file swapped for a dir": lambda s: (os.unlink(s / "top.txt"), (s / "top.txt").mkdir()),
    "hard link elsewhere written": lambda s: _write_through_link(s / "d3" / "f8", s.parent / "outside"),
    "root replaced": lambda s: (os.rename(s, s.parent / "old"), _tree_copy(s.parent / "old", s)),
}


def _rewrite_keep_times(p, data):
    st = os.stat(p)
    p.write_bytes(data)
    os.utime(p, ns=(st.st_atime_ns, st.st_mtime_ns))  # mtime back; ctime moves, and cannot be set


def _write_through_link(p, other):
    os.link(p, other)
    st = os.stat(p)
    with open(other, "r+b") as f:
        f.write(b"X")
    os.utime(other, ns=(st.st_atime_ns, st.st_mtime_ns))


def _tree_copy(src, dest):
    subprocess.run(["cp", "-a", str(src), str(dest)], check=True)  # -a keeps mtimes, not ctimes or inodes


@pytest.mark.parametrize("name", sorted(MUTATIONS))
def test_every_change_sends_the_add_back_to_hashing(tmp_path, name):
    src, root, d = _added(tmp_path)
    assert _fast(root, src) == d.blake3
    MUTATIONS[name](src)
    assert _fast(root, src) is None
    s = Store(root)
    _, again = s.add(src)
    s.close()
    assert again == hash_path(src)[1]
    if name not in ("root replaced",):
        assert again != d


def test_a_change_during_the_add_keeps_no_fingerprint(tmp_path, monkeypatch):
    """A file rewritten after it was hashed, before the add ends: the add's digest is of the old
    bytes, so a fingerprint of the new stat must not vouch for it."""
    src = _tree(tmp_path / "src")
    victim = os.fsencode(src / "d1" / "f1")
    put = objects.Batch.put_file

    def put_then_rewrite(self, path, st, *a, **k):
        d = put(self, path, st, *a, **k)
        if path == victim:
            _rewrite_keep_times(src / "d1" / "f1", b"8\n" * 7)
        return d
    monkeypatch.setattr(objects.Batch, "put_file", put_then_rewrite)
    s = Store(tmp_path / "store", create=True)
    _, d = s.add(src)
    assert s.db.execute("SELECT count(*) FROM treecache").fetchone()[0] == 0
    s.close()
    assert _fast(tmp_path / "store", src) is None
    assert hash_path(src)[1] != d  # the add hashed the old bytes: a second add must hash again


def test_fingerprint_is_the_same_forked_or_not(tmp_path):
    for n_dirs in (0, 1, 2, 3, 6):
        top = tmp_path / f"t{n_dirs}"
        top.mkdir()
        (top / "a").write_bytes(b"a")
        for i in range(n_dirs):
            (top / f"s{i}" / "x").mkdir(parents=True)
            (top / f"s{i}" / "x" / "f").write_bytes(b"%d" % i)
        one, two = fingerprint(os.fsencode(top)), fingerprint(os.fsencode(top), fork=True)
        assert one is not None and one == two
    assert fingerprint(os.fsencode(tmp_path / "t0" / "a")) is None  # not a directory
    assert fingerprint(os.fsencode(tmp_path / "missing"), fork=True) is None


def test_a_failed_child_gives_no_fingerprint(tmp_path, monkeypatch):
    top = tmp_path / "t"
    for i in range(4):
        (top / f"s{i}").mkdir(parents=True)
    parent = os.getpid()
    real = statcheck._dir_digest

    def fails_in_child(*a):
        if os.getpid() != parent:
            raise statcheck._Changed
        return real(*a)
    monkeypatch.setattr(statcheck, "_dir_digest", fails_in_child)
    assert fingerprint(os.fsencode(top), fork=True) is None
    assert fingerprint(os.fsencode(top)) is not None


def test_fast_readd_writes_nothing_unless_the_root_needs_a_touch(tmp_path):
    src, root, d = _added(tmp_path)
    db = sqlite3.connect(root / "index.sqlite", isolation_level=None)
    db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    idx = [root / "index.sqlite", root / "index.sqlite-wal"]
    before = [(p.stat().st_size, p.stat().st_mtime_ns) for p in idx]
    assert _fast(root, src) == d.blake3
    assert [(p.stat().st_size, p.stat().st_mtime_ns) for p in idx] == before
    old = int(time.time()) - 7200  # gc's grace would count it old: the re-add touches it, as the full add does
    db.execute("UPDATE obj SET added=?, touched=NULL WHERE b3=?", (old, bytes.fromhex(d.blake3)))
    assert _fast(root, src) == d.blake3
    touched = db.execute("SELECT touched FROM obj WHERE b3=?", (bytes.fromhex(d.blake3),)).fetchone()[0]
    assert touched >= int(time.time()) - statcheck.TOUCH_SLACK


def test_gc_drops_the_fingerprint_of_what_it_collects(tmp_path):
    src, root, d = _added(tmp_path)
    s = Store(root)
    s.db.execute("UPDATE obj SET added=added-7200, touched=NULL")
    assert gc(s, (), grace=60)["removed"] > 0
    assert s.db.execute("SELECT count(*) FROM treecache").fetchone()[0] == 0
    s.close()
    assert _fast(root, src) is None
    r = run_prov("add", src, store=root, check=0)  # the full add stores it again
    assert d.blake3 in r.out
    assert _fast(root, src) == d.blake3


def _entry(*args, store=None):
    """Run the console entry in a fresh interpreter; (stdout, whether click was imported)."""
    code = ("import sys\nfrom provenance.cli import entry\nsys.argv = ['prov', *sys.argv[1:]]\n"
            "try:\n    entry.main()\nfinally:\n    sys.stderr.write('CLICK=%s' % ('click' in sys.modules))\n")
    env = {**os.environ, "PROV_STORE": str(store)} if store else {k: v for k, v in os.environ.items() if k != "PROV_STORE"}
    r = subprocess.run([sys.executable, "-c", code, *map(str, args)], capture_output=True, env=env, cwd=REPO)
    return r.returncode, r.stdout.decode(), "CLICK=True" in r.stderr.decode()


def test_cli_fast_path_prints_what_the_full_add_prints(tmp_path):
    src = _tree(tmp_path / "src")
    root = tmp_path / "store"
    full = run_prov("add", src, store=root, check=0).out
    full_json = json.loads(run_prov("add", src, "--ref", "r/x", "--json", store=root, check=0).out)
    assert _entry("add", src, store=root) == (0, full, False)
    code, out, clicked = _entry("add", src, "--json", store=root)
    assert (code, json.loads(out), clicked) == (0, full_json, False)
    assert _entry("--store", root, "add", src) == (0, full, False)
    assert _entry("add", f"--store={root}", src) == (0, full, False)
    # anything else is click's: options the fast path does not know, a file, a tree never added
    assert _entry("add", src, "--ref", "r/y", store=root)[2]
    (tmp_path / "f").write_bytes(b"f")
    assert _entry("add", tmp_path / "f", store=root)[2]
    assert _entry("add", tmp_path / "other", store=root)[2]
    assert run_prov("add", tmp_path / "other", store=root, check=2).err.count("\n") == 1


def test_damaged_index_is_reported_not_vouched_for(tmp_path):
    src, root, d = _added(tmp_path)
    (root / "index.sqlite").write_bytes(b"garbage" * 1000)
    for p in root.glob("index.sqlite-*"):
        p.unlink()
    assert _fast(root, src) is None
    r = run_prov("add", src, store=root, check=1)
    assert "fsck --repair" in r.err and "Traceback" not in r.err


def test_a_symlinked_root_is_refused_as_before(tmp_path):
    src, root, d = _added(tmp_path)
    os.symlink(src, tmp_path / "via")
    assert _fast(root, tmp_path / "via") is None
    r = run_prov("add", tmp_path / "via", store=root, check=2)
    assert "not a regular file or directory" in r.err


def test_unsafe_links_add_keeps_no_fingerprint(tmp_path):
    src = _tree(tmp_path / "src")
    os.symlink("/etc/passwd", src / "abs")
    time.sleep(RACY_NS / 1e9 + 0.02)
    s = Store(tmp_path / "store", create=True)
    s.add(src, allow_unsafe_links=True)
    s.close()
    assert _fast(tmp_path / "store", src) is None  # the plain add must refuse this tree, not reuse it
    assert run_prov("add", src, store=tmp_path / "store", check=2).err.count("absolute") == 1


def test_statcheck_reads_the_index_version_the_store_writes():
    assert statcheck.SCHEMA_VERSION == objects.SCHEMA_VERSION



def test_a_parent_switched_mid_walk_keeps_no_fingerprint(tmp_path, monkeypatch):
    """`current -> releases/v1` flipped to v2 while the add walks: the add hashed a mixture, so no
    fingerprint of either tree may vouch for it (a second walk would see only v2, all of it old)."""
    for v in ("v1", "v2"):
        _tree(tmp_path / v / "T")
        (tmp_path / v / "T" / "d0" / "f5").write_bytes(v.encode())  # the two trees differ
    os.symlink(tmp_path / "v1", tmp_path / "current")
    time.sleep(RACY_NS / 1e9 + 0.02)
    src = tmp_path / "current" / "T"
    put, flipped = objects.Batch.put_file, []

    def put_then_flip(self, path, st, *a, **k):
        d = put(self, path, st, *a, **k)
        if not flipped:
            os.symlink(tmp_path / "v2", tmp_path / "next")
            os.rename(tmp_path / "next", tmp_path / "current")
            flipped.append(1)
        return d
    monkeypatch.setattr(objects.Batch, "put_file", put_then_flip)
    s = Store(tmp_path / "store", create=True)
    s.add(src)
    assert s.db.execute("SELECT count(*) FROM treecache").fetchone()[0] == 0
    s.close()
    assert _fast(tmp_path / "store", src) is None


def test_a_file_swapped_between_lstat_and_read_is_not_cached(tmp_path, monkeypatch):
    src = _tree(tmp_path / "src")
    victim = os.fsencode(src / "d1" / "f1")
    put = objects.Batch.put_file

    def swap_then_put(self, path, st, *a, **k):
        if path == victim:  # another inode, same name, same size: what is read is not what lstat saw
            (src / "d1" / "new").write_bytes(b"7\n" * 7)
            os.rename(src / "d1" / "new", src / "d1" / "f1")
        return put(self, path, st, *a, **k)
    monkeypatch.setattr(objects.Batch, "put_file", swap_then_put)
    s = Store(tmp_path / "store", create=True)
    s.add(src)
    assert s.db.execute("SELECT count(*) FROM treecache").fetchone()[0] == 0
    assert s.db.execute("SELECT count(*) FROM statcache WHERE path=?", (victim,)).fetchone()[0] == 0
    s.close()


def test_dotdot_after_a_symlink_is_the_kernels_path(tmp_path):
    """`L/../T` names what the kernel finds (elsewhere/T, a file), not the lexical ./T (a stored tree)."""
    src, root, d = _added(tmp_path)
    (tmp_path / "elsewhere" / "sub").mkdir(parents=True)
    (tmp_path / "elsewhere" / "src").write_bytes(b"a file\n")
    os.symlink(tmp_path / "elsewhere" / "sub", tmp_path / "L")
    assert _fast(root, tmp_path / "L" / ".." / "src") is None
    r = run_prov("add", tmp_path / "L" / ".." / "src", store=root, check=0)
    assert r.out.startswith("file") and r.out.split()[3] == hash_path(tmp_path / "elsewhere" / "src")[1].sha256
    assert _fast(root, src / "top.txt" / "..") is None  # ENOTDIR for the kernel, whatever abspath says
    run_prov("add", src / "top.txt" / "..", store=root, check=2)
    (tmp_path / "elsewhere" / "sub" / "x").mkdir()  # both directories: the add takes the kernel's
    os.symlink(tmp_path / "elsewhere" / "sub" / "x", tmp_path / "M")
    r = run_prov("add", tmp_path / "M" / "..", store=root, check=0)
    assert r.out.split()[5] == hash_path(tmp_path / "elsewhere" / "sub")[1].blake3


def test_whole_second_stamps_need_two_seconds_to_settle():
    s = 1_000_000_000
    assert statcheck.settled(10 * s + 1, 10 * s + 1 + RACY_NS + 1)
    assert not statcheck.settled(10 * s + 1, 10 * s + RACY_NS)
    assert not statcheck.settled(10 * s, 11 * s + 900_000_000)  # a write later in second 10 keeps the stamp
    assert statcheck.settled(10 * s, 12 * s + 1)


def test_one_whole_second_stamp_holds_the_tree_back(tmp_path):
    """A tree that spans a nanosecond filesystem and a whole-second one: each entry is judged by its
    own stamp, not by the tree's newest (here, a nanosecond ctime)."""
    src = _tree(tmp_path / "src")
    whole = int(time.time()) * 1_000_000_000  # this second's start: at or before now
    os.utime(src / "d1" / "f1", ns=(whole, whole))
    time.sleep(RACY_NS / 1e9 + 0.02)  # the ctime utime set has settled: only the whole-second mtime has not
    before = time.time_ns()
    s = Store(tmp_path / "store", create=True)
    s.add(src)
    kept = s.db.execute("SELECT count(*) FROM treecache").fetchone()[0]
    s.close()
    after = time.time_ns()
    if after < whole + 2_000_000_000:
        assert kept == 0
    elif before > whole + 2_000_000_000 + RACY_NS:  # a very slow machine: by then it had settled
        assert kept == 1


def test_the_fast_path_prints_the_trees_digests_not_the_first_storers(tmp_path):
    """The tree's bytes stored first as a plain file: the object's row holds that file's SHA-256 and
    size; a re-add of the tree prints the tree's, as the full add does."""
    src = _tree(tmp_path / "src")
    a = Store(tmp_path / "a", create=True)
    _, d = a.add(src)
    view = a.read_bytes(d.blake3)
    a.close()
    (tmp_path / "view").write_bytes(view)
    root = tmp_path / "store"
    blob = json.loads(run_prov("add", tmp_path / "view", "--json", store=root, check=0).out)
    assert blob["blake3"] == d.blake3 and blob["sha256"] != d.sha256
    full = json.loads(run_prov("add", src, "--json", store=root, check=0).out)
    assert (full["sha256"], full["size"]) == (d.sha256, d.size)
    assert readd_unchanged(str(root), str(src)) == (d.sha256, d.blake3, d.size)


def test_a_path_never_added_costs_no_walk(tmp_path, monkeypatch):
    src, root, d = _added(tmp_path)
    other = _tree(tmp_path / "other")
    monkeypatch.setattr(statcheck, "fingerprint", lambda *a, **k: pytest.fail("walked a tree the store has no row for"))
    assert readd_unchanged(str(root), str(other)) is None


def test_a_path_with_a_terminal_escape_is_click_s_to_print(tmp_path):
    src = _tree(tmp_path / "a\x1bb")
    root = tmp_path / "store"
    run_prov("add", src, store=root, check=0)
    assert _fast(root, src) is not None
    assert _entry("add", src, store=root)[2]


def test_deeper_than_the_stack_is_the_full_adds_to_report(tmp_path):
    p = tmp_path / "deep"
    (p / "/".join(["d"] * 400)).mkdir(parents=True)  # shallow enough for pytest's own clean-up
    limit = sys.getrecursionlimit()
    sys.setrecursionlimit(300)  # a stack shallower than the tree
    try:
        assert fingerprint(os.fsencode(p)) is None and fingerprint(os.fsencode(p), fork=True) is None
    finally:
        sys.setrecursionlimit(limit)
    assert fingerprint(os.fsencode(p / "/".join(["d"] * 350))) is not None  # 50 levels: the stack's


def test_group_options_stay_click_s(tmp_path):
    src, root, d = _added(tmp_path)
    code, out, clicked = _entry("--json", "add", src, store=root)
    assert (code, clicked) == (2, True)


def test_a_store_path_that_is_not_a_plain_uri(tmp_path):
    src = _tree(tmp_path / "src")
    root = tmp_path / "st?re%20#x"  # SQLite's URI form must quote these
    full = run_prov("add", src, store=root, check=0).out
    assert _entry("add", src, store=root) == (0, full, False)


def test_the_store_is_the_kernels_path_too(tmp_path):
    """`--store link/../store` is a/b/store for the kernel (and the full add), not ./store."""
    src, root, d = _added(tmp_path)  # tmp_path/store holds the tree
    (tmp_path / "a" / "b" / "real").mkdir(parents=True)
    os.symlink(tmp_path / "a" / "b" / "real", tmp_path / "link")
    other = tmp_path / "a" / "b" / "store"
    run_prov("add", tmp_path / "src" / "top.txt", store=other, check=0)  # a store of its own, without the tree
    code, out, _ = _entry("--store", tmp_path / "link" / ".." / "store", "add", src)
    assert code == 0 and d.blake3 in out
    s = Store(other)
    assert s.info(d.blake3) is not None  # stored where the kernel says, not answered from ./store
    s.close()


def test_a_store_the_full_add_may_not_write_is_not_answered(tmp_path):
    src, root, d = _added(tmp_path)
    if subprocess.run(["chattr", "+i", str(root / "index.sqlite")], capture_output=True).returncode:
        pytest.skip("no chattr +i on this filesystem")
    try:
        assert _fast(root, src) is None
        code, out, clicked = _entry("add", src, store=root)
        assert (code, clicked) == (2, True)
    finally:
        subprocess.run(["chattr", "-i", str(root / "index.sqlite")], check=True)


def test_stdout_on_a_full_disk_is_one_line(tmp_path):
    src, root, d = _added(tmp_path)
    with open("/dev/full", "w") as full:
        r = subprocess.run([sys.executable, "-c", "from provenance.cli.entry import main; import sys; "
                            "sys.argv = ['prov', 'add', sys.argv[1]]; main()", str(src)],
                           stdout=full, stderr=subprocess.PIPE, env={**os.environ, "PROV_STORE": str(root)}, cwd=REPO)
    assert r.returncode == 3 and r.stderr.decode() == "prov: error: No space left on device\n"
    # stderr closed as well: still 3, and the error line is not written to stdout instead
    code = "import sys; sys.argv = ['prov', 'add', sys.argv[1]]; from provenance.cli.entry import main; main()"
    with open("/dev/full", "w") as full:
        r = subprocess.run([sys.executable, "-c", code, str(src)], stdout=full, preexec_fn=lambda: os.close(2),
                           env={**os.environ, "PROV_STORE": str(root)}, cwd=REPO)
    assert r.returncode == 3


def test_ctrl_c_across_the_fork_leaves_no_child(tmp_path):
    """A Ctrl-C that arrives while SIGINT is blocked across fork goes off when it is unblocked: the
    child must still be killed and reaped, and the pipe closed. In a process of one thread, as the
    console entry is (in a threaded one, another thread takes the signal at once)."""
    top = tmp_path / "t"
    for i in range(6):
        (top / f"d{i}").mkdir(parents=True)
    code = """
import os, signal, sys
from provenance.store.statcheck import fingerprint
signal.signal(signal.SIGINT, signal.default_int_handler)  # not inherited ignored (a background job's)
real_fork, kids = os.fork, []
def fork():
    os.kill(os.getpid(), signal.SIGINT)  # pending: SIGINT is blocked here
    pid = real_fork()
    if pid:
        kids.append(pid)
    return pid
os.fork = fork
def pipes():
    return {fd for fd in os.listdir("/proc/self/fd") if os.path.exists(f"/proc/self/fd/{fd}")
            and os.readlink(f"/proc/self/fd/{fd}").startswith("pipe:")}
before = pipes()
try:
    fingerprint(os.fsencode(sys.argv[1]), fork=True)
    print("no interrupt")
except KeyboardInterrupt:
    try:
        os.waitpid(kids[0], os.WNOHANG)
        print("child not reaped")
    except ChildProcessError:
        print("leaked pipes:", sorted(pipes() - before))
"""
    r = subprocess.run([sys.executable, "-c", code, str(top)], capture_output=True, text=True, cwd=REPO)
    assert r.stdout == "leaked pipes: []\n", r.stdout + r.stderr
