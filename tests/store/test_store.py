import hashlib
import json
import os
import random
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

from conftest import PROV, REPO, RUNTIME_SPEC, make_tree, prov_json, run_prov
from provenance.core import tree as treemod
from provenance.store.gc import gc
from provenance.store.objects import Store


def snapshot(path: Path) -> list:
    """Everything export must reproduce: names, types, bytes, exec bits, link targets."""
    out = []
    for dirpath, dirnames, filenames in os.walk(path):
        dirnames.sort()
        rel = os.path.relpath(dirpath, path)
        out.append(("dir", rel))
        for name in sorted(filenames + [d for d in dirnames if os.path.islink(os.path.join(dirpath, d))]):
            full = os.path.join(dirpath, name)
            if os.path.islink(full):
                out.append(("link", rel, name, os.readlink(full)))
            else:
                out.append(("file", rel, name, Path(full).read_bytes(), os.stat(full).st_mode & 0o100))
    return out


def store_state(store: Path) -> tuple:
    objs = sorted(p.name for p in (store / "objects").rglob("*") if p.is_file()) if store.exists() else []
    rows = []
    if (store / "index.sqlite").exists():
        s = Store(store)
        rows = sorted((b.hex(), h.hex()) for b, h in s.db.execute("SELECT b3, sha FROM obj"))
        s.close()
    return objs, rows


def test_hash_json_shape_and_file_digest(tmp_path):
    f = tmp_path / "a.bin"
    f.write_bytes(os.urandom(3 << 20))  # several chunks: exercises the threaded path
    out = prov_json("hash", f)
    data = f.read_bytes()
    assert out == {"kind": "file", "sha256": hashlib.sha256(data).hexdigest(),
                   "blake3": __import__("blake3").blake3(data).hexdigest(), "size": len(data)}


def test_round_trip_add_export(tmp_path, store, runtime):
    added = prov_json("add", runtime, store=store)
    assert added["kind"] == "tree"
    assert added == prov_json("hash", runtime)
    out = tmp_path / "exported"
    run_prov("export", added["sha256"][:12], out, store=store, check=0)
    assert snapshot(out) == snapshot(runtime)
    assert (out / "empty").is_dir() and not any((out / "empty").iterdir())
    assert prov_json("hash", out) == prov_json("hash", runtime)
    listing = prov_json("ls", added["blake3"], store=store)
    assert [e["name"] for e in listing["entries"]] == ["empty", "inflate.sh", "lib", "model.bin", "src"]
    run_prov("fsck", store=store, check=0)


def test_cat_by_sha256_prefix_and_blake3(tmp_path, store):
    f = tmp_path / "x"
    f.write_bytes(b"hello world\n")
    d = prov_json("add", f, store=store)
    assert run_prov("cat", d["sha256"][:6], store=store, check=0).stdout == b"hello world\n"
    assert run_prov("cat", d["blake3"], store=store, check=0).stdout == b"hello world\n"


def test_stdlib_snippet_in_formats_doc_matches(tmp_path, runtime):
    code = re.search(r"```python\n(.*?)```", (REPO / "docs/FORMATS.md").read_text(), re.S).group(1)
    script = tmp_path / "snippet.py"
    script.write_text(code)
    r = subprocess.run([sys.executable, "-I", str(script), str(runtime)], capture_output=True, text=True, check=True)
    assert r.stdout.strip() == prov_json("hash", runtime)["sha256"]


@pytest.mark.parametrize("change", ["byte", "name", "exec", "link", "add_empty_dir"])
def test_digest_changes_for_content_not_mtime(tmp_path, change):
    root = make_tree(tmp_path / "t", RUNTIME_SPEC)
    before = prov_json("hash", root)
    for p in root.rglob("*"):
        if not p.is_symlink():
            os.utime(p, (1, 1))
    assert prov_json("hash", root) == before, "mtime must not count"
    if change == "byte":
        data = bytearray((root / "model.bin").read_bytes())
        data[5000] ^= 1
        (root / "model.bin").write_bytes(bytes(data))
    elif change == "name":
        (root / "model.bin").rename(root / "model.bim")
    elif change == "exec":
        (root / "src/codec.py").chmod(0o755)
    elif change == "link":
        os.unlink(root / "lib/libSvtAv1Enc.so.2")
        os.symlink("libSvtAv1Enc.so.2.3.1", root / "lib/libSvtAv1Enc.so.2")
    else:
        (root / "src/newdir").mkdir()
    after = prov_json("hash", root)
    assert after["sha256"] != before["sha256"] and after["blake3"] != before["blake3"]


def _hostile(tmp_path, case) -> Path:
    root = make_tree(tmp_path / f"hostile-{case}", {"ok.txt": b"fine", "sub": {"a": b"a"}})
    if case == "absolute_link":
        os.symlink("/etc/passwd", root / "sub/pw")
    elif case == "escaping_link":
        os.symlink("../../outside", root / "sub/esc")
    elif case == "fifo":
        os.mkfifo(root / "sub/pipe")
    elif case == "non_utf8":
        with open(os.path.join(os.fsencode(root / "sub"), b"bad\xff\xfename"), "wb") as f:
            f.write(b"x")
    return root


@pytest.mark.parametrize("case,needle", [("absolute_link", "absolute"), ("escaping_link", "escapes"),
                                         ("fifo", "FIFO"), ("non_utf8", "UTF-8")])
def test_hostile_trees_rejected_store_unchanged(tmp_path, store, runtime, case, needle):
    prov_json("add", runtime, store=store)
    before = store_state(store)
    root = _hostile(tmp_path, case)
    for cmd in ("hash", "add"):
        r = run_prov(cmd, root, store=store)
        assert r.returncode == 2, r.err
        lines = r.err.strip().splitlines()
        assert len(lines) == 1 and needle in lines[0] and str(root / "sub") in lines[0], r.err
        assert "Traceback" not in r.err
    assert store_state(store) == before
    assert not any((store / "tmp").iterdir()) and not list(store.rglob(".tmp-*"))


def test_unsafe_links_allowed_on_request(tmp_path):
    root = _hostile(tmp_path, "absolute_link")
    run_prov("hash", root, "--allow-unsafe-links", check=0)


def test_unreadable_file_rejected(tmp_path):
    base = Path(tempfile.mkdtemp(prefix="prov-unreadable-"))
    try:
        base.chmod(0o755)
        root = make_tree(base / "t", {"ok": b"ok", "secret": b"s"})
        (root / "secret").chmod(0)
        cmd = [PROV, "hash", str(root)]
        if os.geteuid() == 0:  # root reads anything: drop to nobody to make the file unreadable
            if not shutil.which("setpriv"):
                pytest.skip("needs setpriv to drop root")
            cmd = ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups", *cmd]
        r = subprocess.run(cmd, capture_output=True, text=True)
        assert r.returncode == 2, r.stderr
        assert "secret" in r.stderr and "cannot read" in r.stderr and len(r.stderr.strip().splitlines()) == 1
    finally:
        shutil.rmtree(base)


def test_unknown_and_ambiguous_digests(tmp_path, store, runtime):
    prov_json("add", runtime, store=store)
    r = run_prov("cat", "ab" * 32, store=store)
    assert r.returncode == 2 and "no such object" in r.err
    r = run_prov("export", "00" * 32, tmp_path / "x", store=store)
    assert r.returncode == 2 and not (tmp_path / "x").exists()
    # enough small blobs that two share a 4-digit prefix
    s = Store(store)
    with s.batch() as b:
        digests = [b.put_bytes(b"blob %d" % i, "blob") for i in range(2000)]
    s.close()
    seen = {}
    prefix = None
    for d in digests:
        if d.blake3[:4] in seen:
            prefix = d.blake3[:4]
            break
        seen[d.blake3[:4]] = d
    assert prefix is not None
    r = run_prov("cat", prefix, store=store)
    assert r.returncode == 2 and "ambiguous" in r.err


def test_missing_store_is_a_clear_error(tmp_path):
    r = run_prov("ls", "abcd", store=tmp_path / "nope")
    assert r.returncode == 2 and "no store here" in r.err


def test_fsck_detects_flipped_byte(tmp_path, store, runtime):
    added = prov_json("add", runtime, store=store)
    target = next(p for p in (store / "objects").rglob("*") if p.is_file()
                  and Store(store).info(p.name).kind == "blob" and p.stat().st_size > 100)
    target.chmod(0o644)
    data = bytearray(target.read_bytes())
    data[len(data) // 2] ^= 0x01
    target.write_bytes(bytes(data))
    r = run_prov("fsck", store=store)
    assert r.returncode == 1 and target.name in r.out and "corrupt" in r.out
    rep = prov_json("fsck", store=store, check=1)
    assert not rep["ok"] and any(target.name in e for e in rep["errors"])
    assert added


def test_refs_compare_and_swap_and_dangling(tmp_path, store, runtime):
    a = prov_json("add", runtime, store=store)
    f = tmp_path / "f"
    f.write_bytes(b"other")
    b = prov_json("add", f, store=store)
    run_prov("ref", "set", "releases/demo", a["sha256"], "--expect", "", store=store, check=0)
    r = run_prov("ref", "set", "releases/demo", b["blake3"], "--expect", "", store=store)
    assert r.returncode == 1 and "expected (absent)" in r.err
    r = run_prov("ref", "set", "releases/demo", b["blake3"], "--expect", b["blake3"], store=store)
    assert r.returncode == 1
    run_prov("ref", "set", "releases/demo", b["blake3"], "--expect", a["blake3"], store=store, check=0)
    assert prov_json("ref", "get", "releases/demo", store=store)["target"]["blake3"] == b["blake3"]
    assert run_prov("ref", "set", "bad name!", a["blake3"], store=store).returncode == 2
    # a ref resolves like a digest
    assert run_prov("cat", "releases/demo", store=store, check=0).stdout == b"other"
    # dangling ref: remove the object behind the index's back
    p = Store(store).path_of(b["blake3"])
    p.unlink()
    rep = prov_json("fsck", store=store, check=1)
    assert any("dangling" in e and "releases/demo" in e for e in rep["errors"])


def test_gc_keeps_reachable_drops_unreachable(tmp_path, store, runtime):
    a = prov_json("add", runtime, "--ref", "keep/runtime", store=store)
    f = tmp_path / "junk"
    f.write_bytes(b"unreferenced")
    j = prov_json("add", f, store=store)
    assert prov_json("gc", store=store)["removed"] == 0  # inside the grace period
    rep = prov_json("gc", "--grace", "0", store=store)
    assert rep["objects"] == [j["blake3"]]
    run_prov("fsck", store=store, check=0)
    run_prov("export", a["blake3"], tmp_path / "out", store=store, check=0)
    assert snapshot(tmp_path / "out") == snapshot(runtime)
    assert run_prov("cat", j["sha256"], store=store).returncode == 2


def test_each_batch_stages_in_its_own_directory_and_gc_sweeps_a_crashed_ones(tmp_path, store, runtime):
    """Staging never reuses a directory (an ext4 directory never shrinks: one that once staged a
    million files makes every later create slow), and a crashed writer's directory is gc's to sweep."""
    prov_json("add", runtime, store=store)
    assert list((store / "tmp").iterdir()) == []
    crashed = store / "tmp" / ".tmp-999999-1-1"
    crashed.mkdir()
    (crashed / ".tmp-1").write_bytes(b"half-written")
    (crashed / ".tmp-2").write_bytes(b"staged")
    old = time.time() - 7200
    os.utime(crashed, (old, old))
    assert any("2 leftover temp file(s)" in n for n in prov_json("fsck", store=store)["notes"])
    assert prov_json("gc", "--grace", "3600", store=store)["removed"] == 0
    assert list((store / "tmp").iterdir()) == []
    run_prov("fsck", store=store, check=0)


def test_a_batch_whose_commit_fails_leaves_nothing_staged(tmp_path, monkeypatch, runtime):
    import provenance.store.objects as sm
    s = Store(tmp_path / "store", create=True)

    def failing(self):
        raise OSError(28, "No space left on device")
    monkeypatch.setattr(sm.Batch, "_commit", failing)
    with pytest.raises(OSError):
        s.add(runtime)
    assert list(s.tmp.iterdir()) == []


def test_fsck_workers_that_cannot_open_the_store_fail_it_not_hang(tmp_path):
    """Workers that cannot open the store (a Pool whose initializer raised restarted them for ever),
    or that die: fsck ends in one error, never a hang."""
    s = Store(tmp_path / "store", create=True)
    for i in range(20):
        s.put_bytes(b"object %d" % i, "blob")
    s.close()
    code = f"""
import os, sys
import provenance.store.fsck as fk
import provenance.store.objects as sm
fk.PARALLEL_FSCK = 1
os.sched_getaffinity = lambda pid: {{0, 1}}
parent, real = os.getpid(), sm.Store.__init__
def init(self, *a, **k):
    if os.getpid() != parent:
        raise sm.ProvError("worker cannot open the store")
    real(self, *a, **k)
sm.Store.__init__ = init
try:
    sm.Store({str(tmp_path / "store")!r}).fsck()
except sm.ProvError as e:
    print("ERROR", e)
"""
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=600)
    assert r.stdout.strip() == "ERROR worker cannot open the store", (r.stdout, r.stderr[-2000:])
    died = code.replace('raise sm.ProvError("worker cannot open the store")', "os._exit(9)  # as the OOM killer would")
    r = subprocess.run([sys.executable, "-c", died], capture_output=True, text=True, timeout=600)
    assert r.stdout.startswith("ERROR a worker process died"), (r.stdout, r.stderr[-2000:])


class ReadCounter:
    def __init__(self, monkeypatch, root: Path):
        import provenance.store.objects as sm
        self.paths = []
        real = sm.os.open
        prefix = os.fsencode(root)

        def counting_open(path, *a, **k):
            if os.fsencode(path).startswith(prefix):
                self.paths.append(path)
            return real(path, *a, **k)
        monkeypatch.setattr(sm.os, "open", counting_open)


def test_stat_cache_skips_unchanged_and_catches_racy_and_changed(tmp_path, monkeypatch, runtime):
    s = Store(tmp_path / "store", create=True)
    # files hashed moments after being written are racy: they must be re-read, and then cached.
    # Hash them "the instant they were written" whatever the load, so the first add is racy.
    import provenance.store.objects as sm
    written = max(p.lstat().st_ctime_ns for p in runtime.rglob("*"))
    monkeypatch.setattr(sm.time, "time_ns", lambda: written)
    first = s.add(runtime)
    monkeypatch.undo()
    counter = ReadCounter(monkeypatch, runtime)
    time.sleep(0.1)
    assert s.add(runtime) == first
    assert counter.paths, "files modified within the racy window must be re-hashed"
    counter.paths.clear()
    assert s.add(runtime) == first
    assert counter.paths == [], "unchanged files must come from the stat cache"
    # same size, same mtime, different bytes: ctime gives it away
    f = runtime / "model.bin"
    st = f.stat()
    data = bytearray(f.read_bytes())
    data[0] ^= 0xFF
    f.write_bytes(bytes(data))
    os.utime(f, ns=(st.st_atime_ns, st.st_mtime_ns))
    assert s.add(runtime)[1] != first[1]


def _kill_loop_tree(base: Path, i: int, rng: random.Random) -> Path:
    spec = {f"f{j}.bin": rng.randbytes(rng.choice([10, 5000, 70000])) for j in range(rng.randint(5, 30))}
    spec["big.bin"] = rng.randbytes(rng.choice([2, 3]) << 20)
    spec["dir"] = {"x": ("exec", b"#!/bin/sh\n" + str(i).encode()), "l": ("link", "x")}
    return make_tree(base / f"t{i}", spec)


def test_sigkill_during_add_leaves_store_consistent(tmp_path, store):
    rng = random.Random(1234)
    env = dict(os.environ, PROV_STORE=str(store))
    succeeded = []
    kills = 0
    for i in range(60):
        root = _kill_loop_tree(tmp_path / "src", i, rng)
        p = subprocess.Popen([PROV, "add", str(root), "--json"], stdout=subprocess.PIPE,
                             stderr=subprocess.PIPE, env=env)
        time.sleep(rng.uniform(0.0, 0.5))
        p.send_signal(signal.SIGKILL)
        out, err = p.communicate()
        if p.returncode == 0:
            succeeded.append(json.loads(out))
        else:
            kills += 1
            assert p.returncode == -signal.SIGKILL, err
    assert kills >= 10
    rep = prov_json("fsck", store=store)
    assert rep["ok"], rep["errors"]
    s = Store(store)
    for d in succeeded:
        assert s.info(d["blake3"]) is not None
        assert s.resolve(d["sha256"]).blake3 == d["blake3"]
    if succeeded:
        run_prov("export", succeeded[-1]["blake3"], tmp_path / "exp", store=store, check=0)
    assert prov_json("gc", "--grace", "0", store=store)["removed"] >= 0
    assert prov_json("fsck", store=store)["ok"]


def test_four_concurrent_adders_overlapping_trees(tmp_path, store):
    rng = random.Random(7)
    shared = {f"s{j}": rng.randbytes(3000) for j in range(200)}
    roots = []
    for k in range(4):
        spec = dict(shared)
        spec.update({f"own{k}-{j}": rng.randbytes(2000) for j in range(50)})
        spec["big"] = rng.randbytes(3 << 20) if k % 2 else shared["s0"] * 1000
        roots.append(make_tree(tmp_path / f"c{k}", spec))
    env = dict(os.environ, PROV_STORE=str(store))
    for rnd in range(3):
        procs = [subprocess.Popen([PROV, "add", str(r), "--json"], stdout=subprocess.PIPE,
                                  stderr=subprocess.PIPE, env=env) for r in roots]
        results = [p.communicate() + (p.returncode,) for p in procs]
        for out, err, rc in results:
            assert rc == 0, err.decode()
        for (out, _, _), r in zip(results, roots):
            assert json.loads(out) == prov_json("hash", r)
    assert prov_json("fsck", store=store)["ok"]
    s = Store(store)
    for r in roots:
        assert s.info(prov_json("hash", r)["blake3"]) is not None


def test_cli_hash_imports_nothing_heavy(tmp_path):
    f = tmp_path / "small"
    f.write_bytes(b"abc")
    code = ("import sys; from click.testing import CliRunner; from provenance.cli.app import cli; "
            f"r = CliRunner().invoke(cli, ['hash', {str(f)!r}, '--json']); assert r.exit_code == 0, r.output; "
            "bad = [m for m in ('torch', 'av', 'dvc', 'numpy') if m in sys.modules]; "
            "assert not bad, bad; print('clean')")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert r.stdout.strip() == "clean", r.stderr


def test_tree_parse_rejects_malformed():
    e = treemod.Entry("file", "a", 1, "0" * 64, "1" * 64)
    good = treemod.encode([e], "blake3")
    assert treemod.parse(good)[0][1] == "a"
    for bad in (good[:-1], good.replace(b"file", b"fil3"), good + good[len(treemod.HEADER["blake3"]):],
                good.replace(b" a\0", b" ../a\0"), b"junk"):
        with pytest.raises(treemod.TreeError):
            treemod.parse(bad)


def test_stat_cache_hit_whose_object_was_collected_is_restaged(tmp_path, runtime):
    s = Store(tmp_path / "store", create=True)
    time.sleep(0.1)
    first = s.add(runtime)
    time.sleep(0.1)
    s.add(runtime)  # the stat cache now vouches for every file
    removed = gc(s, (), grace=0)["removed"]  # nothing refers to the tree: all of it goes
    assert removed > 0 and s.info(first[1].blake3) is None
    assert s.add(runtime) == first
    assert s.fsck()["ok"]
    s.export(first[1].blake3, tmp_path / "out")
    assert snapshot(tmp_path / "out") == snapshot(runtime)


def test_every_command_takes_json_and_help():
    """DESIGN: every command that reports takes --json; every command explains itself."""
    import click
    from provenance.cli.app import cli
    missing, undocumented = [], []

    def walk(cmd, path):
        if isinstance(cmd, click.Group):
            for name, sub in cmd.commands.items():
                walk(sub, path + [name])
            return
        if not any(p.name == "as_json" for p in cmd.params):
            missing.append(" ".join(path))
        if not (cmd.help or "").strip():
            undocumented.append(" ".join(path))
    walk(cli, [])
    assert missing == [], f"commands without --json: {missing}"
    assert undocumented == [], f"commands without help: {undocumented}"


def test_fsck_by_forked_workers_reports_what_one_process_does(tmp_path, monkeypatch, runtime):
    """A large store is re-hashed by a worker a core: every kind of damage is still found, in the
    same order, with the same counts, as by the single-process pass."""
    import provenance.store.objects as sm
    s = Store(tmp_path / "store", create=True)
    s.add(runtime)
    blobs = [s.put_bytes(b"object %d" % i, "blob").blake3 for i in range(300)]
    corrupt, missing = blobs[0], blobs[1]
    os.chmod(s.path_of(corrupt), 0o644)
    s.path_of(corrupt).write_bytes(b"rot")
    s.path_of(missing).unlink()
    (s.objects / blobs[2][:2] / ("ab" * 32)).write_bytes(b"stray")
    (s.objects / "zz").write_bytes(b"stray file")
    s.close()
    serial = Store(tmp_path / "store").fsck()
    import provenance.store.fsck as fk
    monkeypatch.setattr(fk, "PARALLEL_FSCK", 1)
    monkeypatch.setattr(sm.os, "sched_getaffinity", lambda pid: {0, 1, 2}, raising=False)
    seen = []
    parallel = Store(tmp_path / "store").fsck(seen.append)
    assert parallel == serial and not parallel["ok"] and parallel["objects"] >= 300
    assert any(corrupt in e for e in parallel["errors"]) and any(missing in e for e in parallel["errors"])
    assert sum(seen) > 0
