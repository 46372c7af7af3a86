import json
import os
import shutil
import socket
import stat
import subprocess
import sys
import threading
import time
import zipfile
from pathlib import Path

import pytest

from conftest import prov_json, run_prov
from needs.miniature import sample

pytest.importorskip("torch")
pytest.importorskip("av")

from provenance.replay import intake  # noqa: E402
from provenance.contest.miniature import PROFILE  # noqa: E402
from provenance.lab.miniature.build import build  # noqa: E402


def replay(store, archive, runtime, upstream, *extra, check=None, env=None):
    r = run_prov("replay", "--archive", archive, "--runtime", runtime, "--upstream", upstream, *extra, "--json",
                 store=store, env=env)
    if check is not None:
        assert r.returncode == check, r.out + r.err
    return r, (json.loads(r.out) if r.returncode in (0, 1) and r.out.strip() else None)


def test_miniature_is_deterministic(tmp_path, mini):
    again = build(tmp_path / "again")
    assert prov_json("hash", again) == prov_json("hash", mini)
    assert (mini / "upstream/videos/0.mkv").stat().st_size == PROFILE.uncompressed_size
    for n in ("copy", "half"):
        a, rt = sample(mini, n)
        assert a.is_file() and (rt / "inflate.sh").stat().st_mode & stat.S_IXUSR


def test_bundled_submissions_match_a_fresh_build(mini):
    """submissions/ (the pipeline's committed inputs) must be what the generator makes."""
    from conftest import REPO
    assert prov_json("hash", REPO / "submissions") == prov_json("hash", mini / "submissions"), \
        "submissions/ is stale: rebuild with prov miniature build and copy its submissions/"


def test_replay_both_samples_sandboxed(tmp_path, mini):
    scores = {}
    for n in ("copy", "half"):
        a, rt = sample(mini, n)
        t0 = time.monotonic()
        _, out = replay(tmp_path / "store", a, rt, mini / "upstream", check=0)
        assert time.monotonic() - t0 < 30
        rec = out["record"]
        assert rec["source"] == "replay" and rec["profile"] == "comma-miniature-v1"
        assert rec["grade"] == "A++" and rec["environment"]["sandboxed"] is True  # the miniature's official environment
        assert rec["environment"]["sandbox_env"]["HOME"] == "/tmp" and "torch" in rec["environment"]
        assert all(c["ok"] for c in out["checks"]), out["checks"]
        assert set(rec["timings"]) == {"probe", "inflate", "evaluate"}
        assert rec["inflated"]["size"] == PROFILE.frames * PROFILE.height * PROFILE.width * 3
        assert rec["upstream"]["scorer_weights"].keys() == {"posenet.safetensors", "segnet.safetensors"}
        assert "inflate.stderr" in rec["logs"]
        scores[n] = rec["result"]["canonical_score"]
    assert scores["copy"] != scores["half"]
    assert run_prov("fsck", store=tmp_path / "store").returncode == 0


def test_compare_reproduced_and_mismatch(tmp_path, mini):
    st = tmp_path / "store"
    a, rt = sample(mini, "half")
    _, out = replay(st, a, rt, mini / "upstream", check=0)
    rec = tmp_path / "record.json"
    rec.write_bytes(run_prov("cat", out["digest"]["sha256"], store=st, check=0).stdout)
    _, again = replay(st, a, rt, mini / "upstream", "--compare", rec, check=0)
    assert again["compare"]["verdict"] == "REPRODUCED"
    # a release manifest is a claim too
    run_prov("key", "generate", "--out", tmp_path / "k", check=0)
    m = tmp_path / "manifest.json"
    run_prov("release", "create", "--record", out["digest"]["sha256"], "--archive", a, "--runtime", rt, "--name",
             "half", "--key", tmp_path / "k/key.pem", "--out", m, store=st, check=0)
    _, again = replay(st, a, rt, mini / "upstream", "--compare", m, check=0)
    assert again["compare"]["verdict"] == "REPRODUCED"
    ca, crt = sample(mini, "copy")
    r, other = replay(st, ca, crt, mini / "upstream", "--compare", m, check=1)
    assert other["compare"]["verdict"] == "MISMATCH"
    assert {d["field"] for d in other["compare"]["fields"] if not d["same"]} >= {"canonical_score", "archive_sha256"}


def test_no_sandbox_is_recorded_and_capped(tmp_path, mini):
    a, rt = sample(mini, "half")
    _, out = replay(tmp_path / "store", a, rt, mini / "upstream", "--no-sandbox", check=0)
    assert out["record"]["environment"]["sandboxed"] is False and out["record"]["grade"] == "B"


def test_missing_bubblewrap_exit_3(tmp_path, mini):
    a, rt = sample(mini, "half")
    r, _ = replay(tmp_path / "store", a, rt, mini / "upstream",
                  env={"PATH": str(Path(sys.executable).parent)}, check=3)
    assert "apt-get install bubblewrap" in r.err


# -- intake --------------------------------------------------------------------------------

def zip_with(path, entries, **kw):
    with zipfile.ZipFile(path, "w", **kw) as z:
        for name, data, mode in entries:
            info = zipfile.ZipInfo(name, (2020, 1, 1, 0, 0, 0))
            info.create_system = 3
            info.external_attr = mode << 16
            info.compress_type = zipfile.ZIP_DEFLATED
            z.writestr(info, data)
    return path


def test_intake_matches_unzip_for_legit_archives(tmp_path):
    z = zip_with(tmp_path / "ok.zip", [("a.txt", b"hello", 0o100600), ("dir/", b"", 0o40755),
                                       ("dir/run.sh", b"#!/bin/sh\n", 0o100755), ("dir/sub/x.bin", os.urandom(5000), 0o100600)])
    subprocess.run(["unzip", "-qo", str(z), "-d", str(tmp_path / "unzip")], check=True)
    intake.extract(z, tmp_path / "ours")
    assert prov_json("hash", tmp_path / "ours") == prov_json("hash", tmp_path / "unzip")


def patch_declared_size(path: Path, name: str, new_size: int):
    """Rewrite an entry's declared uncompressed size in the local header and the central directory."""
    import struct
    data = bytearray(path.read_bytes())
    n = name.encode()
    for sig, off in ((b"PK\x03\x04", 22), (b"PK\x01\x02", 24)):
        i = data.find(sig)
        while i >= 0:
            nlen = struct.unpack_from("<H", data, i + (26 if sig == b"PK\x03\x04" else 28))[0]
            start = i + (30 if sig == b"PK\x03\x04" else 46)
            if bytes(data[start:start + nlen]) == n:
                struct.pack_into("<I", data, i + off, new_size)
            i = data.find(sig, i + 4)
    path.write_bytes(bytes(data))


def hostile_zip(tmp_path, case) -> Path:
    p = tmp_path / f"{case}.zip"
    if case == "absolute":
        return zip_with(p, [("/etc/evil", b"x", 0o100644)])
    if case == "parent":
        return zip_with(p, [("a/../../evil", b"x", 0o100644)])
    if case == "symlink":
        return zip_with(p, [("link", b"/etc/passwd", 0o120777)])
    if case == "device":
        return zip_with(p, [("dev", b"", 0o020644)])
    if case == "duplicate":
        with zipfile.ZipFile(p, "w") as z:
            z.writestr("same.txt", b"1")
            import warnings
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                z.writestr("same.txt", b"2")
        return p
    if case == "encrypted":
        zip_with(p, [("secret.bin", b"x" * 100, 0o100644)])
        data = bytearray(p.read_bytes())
        for sig, off in ((b"PK\x03\x04", 6), (b"PK\x01\x02", 8)):
            i = data.find(sig)
            data[i + off] |= 1
        p.write_bytes(bytes(data))
        return p
    if case == "size-mismatch":
        zip_with(p, [("frames.bin", os.urandom(4000), 0o100644)])
        patch_declared_size(p, "frames.bin", 1000)
        return p
    if case == "entry-count":
        return zip_with(p, [(f"f{i}", b"", 0o100644) for i in range(10_001)])
    if case == "corrupt":
        zip_with(p, [("frames.bin", os.urandom(4000) + bytes(40_000), 0o100644)])
        data = bytearray(p.read_bytes())
        for k in range(2000, 3000):
            data[k] ^= 0x5A
        p.write_bytes(bytes(data))
        return p
    if case == "lzma":
        with zipfile.ZipFile(p, "w", zipfile.ZIP_LZMA) as z:
            z.writestr("frames.bin", b"x" * 1000)
        return p
    if case == "bomb":
        with zipfile.ZipFile(p, "w", zipfile.ZIP_DEFLATED) as z:
            z.writestr("zeros.raw", bytes(50 << 20))
        return p
    raise AssertionError(case)


@pytest.mark.parametrize("case,rule", [("absolute", "absolute-path"), ("parent", "parent-path"),
                                       ("symlink", "special-entry"), ("device", "special-entry"),
                                       ("duplicate", "duplicate"), ("encrypted", "encrypted"),
                                       ("size-mismatch", "size-mismatch"), ("entry-count", "entry-count"),
                                       ("bomb", "compression-ratio"), ("corrupt", "corrupt|size-mismatch"),
                                       ("lzma", "unsupported")])
def test_hostile_archives_refused(tmp_path, mini, case, rule):
    z = hostile_zip(tmp_path, case)
    _, rt = sample(mini, "half")
    scratch = own_tmpdir(tmp_path)
    r, _ = replay(tmp_path / "store", z, rt, mini / "upstream", check=2, env={"TMPDIR": str(scratch)})
    lines = r.err.strip().splitlines()
    assert len(lines) == 1 and any(f"rule: {one}" in lines[0] for one in rule.split("|")), r.err
    assert not (tmp_path / "evil").exists() and not Path("/etc/evil").exists()
    assert os.listdir(scratch) == []  # scratch cleaned up
    assert not (tmp_path / "store").exists() or prov_json("fsck", store=tmp_path / "store")["objects"] == 0


def test_private_entries_replay_as_unzip_as_the_runner_makes_them(tmp_path, mini):
    """An archive zipped under umask 077: unzip run by the runner's user makes 0600 files it owns and
    reads; the sandbox's user owns what intake made, so the same score comes out."""
    a, rt = sample(mini, "half")
    private = tmp_path / "private.zip"
    with zipfile.ZipFile(a) as src, zipfile.ZipFile(private, "w") as dst:
        for info in src.infolist():
            info.create_system, info.external_attr = 3, (0o40700 if info.is_dir() else 0o100600) << 16
            dst.writestr(info, src.read(info))
    _, plain = replay(tmp_path / "store", a, rt, mini / "upstream", check=0)
    _, out = replay(tmp_path / "store", private, rt, mini / "upstream", check=0)
    assert out["record"]["grade"] == "A++"
    for term in ("posenet", "segnet"):
        assert out["record"]["result"][term] == plain["record"]["result"][term]
    assert out["record"]["inflated"] == plain["record"]["inflated"]


def test_intake_limits_are_configurable(tmp_path):
    z = zip_with(tmp_path / "big.zip", [("a", os.urandom(3000), 0o100644), ("b", os.urandom(3000), 0o100644)])
    with pytest.raises(intake.IntakeError, match="rule: entry-size"):
        intake.check(z, intake.IntakeLimits(max_entry_bytes=2000))
    with pytest.raises(intake.IntakeError, match="rule: total-size"):
        intake.check(z, intake.IntakeLimits(max_total_bytes=5000))
    with pytest.raises(intake.IntakeError, match="rule: entry-count"):
        intake.check(z, intake.IntakeLimits(max_entries=1))


def own_tmpdir(tmp_path) -> Path:
    """A TMPDIR of the test's own: other programs write to the shared /tmp."""
    d = tmp_path / "tmpdir"
    d.mkdir(exist_ok=True)
    return d


# -- escape suite --------------------------------------------------------------------------

def hostile_runtime(tmp_path, mini, attack: str) -> Path:
    rt = tmp_path / "hostile" / "evil"
    shutil.copytree(sample(mini, "copy")[1], rt, symlinks=True)
    normal = (rt / "inflate.sh").read_text().splitlines()
    (rt / "inflate.sh").write_text("\n".join(normal[:-1] + [attack, normal[-1]]) + "\n")
    return rt


def no_process(marker: str) -> bool:
    return subprocess.run(["pgrep", "-f", marker], capture_output=True).returncode == 1


@pytest.fixture
def host(tmp_path, mini):
    """Host state an escape would change: a loopback listener, a secret in HOME, the trees."""
    srv = socket.socket()
    srv.bind(("127.0.0.1", 0))
    srv.listen(5)
    srv.settimeout(0.2)
    seen = []
    stop = threading.Event()

    def accept():
        while not stop.is_set():
            try:
                seen.append(srv.accept())
            except OSError:
                pass
    t = threading.Thread(target=accept, daemon=True)
    t.start()
    home = tmp_path / "home"
    home.mkdir()
    (home / "secret.txt").write_text("hunter2")
    yield {"port": srv.getsockname()[1], "seen": seen, "home": home,
           "upstream_digest": prov_json("hash", mini / "upstream")["sha256"]}
    stop.set()
    t.join()
    srv.close()


LEAK = 'echo "ESCAPED: {what}" >&2; exit 99'
ATTACKS = {
    "tcp_to_host": ("python -c \"import socket; socket.create_connection(('127.0.0.1', {port}), timeout=2)\" "
                    "2>/dev/null && {{ " + LEAK.format(what="tcp") + "; }}; true"),
    "dns": "python -c \"import socket; socket.getaddrinfo('example.com', 80)\" 2>/dev/null && "
           "{{ " + LEAK.format(what="dns") + "; }}; true",
    "write_upstream": "(echo pwned >> {upstream}/evaluate.py || touch {upstream}/pwned) 2>/dev/null && "
                      "{{ " + LEAK.format(what="upstream") + "; }}; true",
    "write_original_runtime": "(echo pwned >> {runtime}/inflate.py) 2>/dev/null && "
                              "{{ " + LEAK.format(what="runtime") + "; }}; true",
    "write_own_runtime_copy": "(echo pwned >> \"$(dirname \"$0\")/inflate.py\") 2>/dev/null && "
                              "{{ " + LEAK.format(what="runtime copy") + "; }}; true",
    "read_home_secret": "cat {home}/secret.txt 2>/dev/null && {{ " + LEAK.format(what="secret") + "; }}; "
                        "test -e \"$HOME/secret.txt\" && {{ " + LEAK.format(what="secret") + "; }}; true",
    "allocate_100gb": "python -c \"b = bytearray(100 * 2**30)\" 2>/dev/null && "
                      "{{ " + LEAK.format(what="memory") + "; }}; true",
    "daemon": "setsid nohup sleep {sleep} >/dev/null 2>&1 &",
}


@pytest.mark.parametrize("attack", sorted(ATTACKS))
def test_escape_attempts_are_blocked(tmp_path, mini, host, attack):
    runtime = hostile_runtime(tmp_path, mini, "")
    # this test's own daemon, told apart from a neighbour's (tests run side by side)
    sleep = f"7771.{int.from_bytes(os.urandom(3), 'big'):08d}"
    script = ATTACKS[attack].format(port=host["port"], upstream=mini / "upstream", runtime=runtime,
                                    home=host["home"], sleep=sleep)
    runtime = hostile_runtime(tmp_path / attack, mini, script)
    orig_runtime = prov_json("hash", runtime)["sha256"]
    a, _ = sample(mini, "copy")
    r, out = replay(tmp_path / "store", a, runtime, mini / "upstream", "--name", "evil",
                    env={"HOME": str(host["home"])})
    assert r.returncode == 0, f"attempt was not contained cleanly: {r.err}"
    assert out["record"]["grade"] == "A++"
    assert host["seen"] == []
    assert prov_json("hash", mini / "upstream")["sha256"] == host["upstream_digest"]
    assert prov_json("hash", runtime)["sha256"] == orig_runtime
    assert no_process(f"sleep {sleep}")


@pytest.mark.parametrize("attack,timeout,outcomes", [
    ("sleep {sleep}", 4, {1}),  # must be killed at the wall-clock limit
    # the bomb hits the process limit; whether inflate then finishes or times out, it is contained
    (":(){ :|:& };: ; sleep 1", 8, {0, 1}),
    (":(){ :|:& };: ; wait", 6, {0, 1}),
])
def test_runaway_inflate_is_killed(tmp_path, mini, host, attack, timeout, outcomes):
    # this case's own sleep: another case (or test) may run beside it on another xdist worker
    sleep = f"7772.{int.from_bytes(os.urandom(3), 'big'):08d}"
    runtime = hostile_runtime(tmp_path, mini, attack.format(sleep=sleep) if "{sleep}" in attack else attack)
    a, _ = sample(mini, "copy")
    name = f"runaway_{os.urandom(4).hex()}"  # every process of this replay carries it in its command line
    t0 = time.monotonic()
    r, _ = replay(tmp_path / "store", a, runtime, mini / "upstream", "--name", name, "--timeout", str(timeout))
    assert r.returncode in outcomes, r.err
    if r.returncode == 1:
        assert r.err.startswith("prov: error: inflate: ") and len(r.err.strip().splitlines()) == 1, r.err
    assert time.monotonic() - t0 < timeout + 30
    deadline = time.monotonic() + 30  # a dying PID namespace takes a moment to reap (longer on a loaded machine)
    while not (no_process(f"sleep {sleep}") and no_process(f"submissions/{name}/")) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert no_process(f"sleep {sleep}")
    leftover = subprocess.run(["pgrep", "-af", f"submissions/{name}/"], capture_output=True, text=True).stdout
    assert leftover == "", f"processes of this replay left running: {leftover}"
    assert prov_json("hash", mini / "upstream")["sha256"] == host["upstream_digest"]
