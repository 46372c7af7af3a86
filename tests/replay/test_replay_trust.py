"""A replay that cannot be fooled (issue 11): each attack of a hostile entrant, built on the
miniature, with its outcome and a host left as it was (no bytes outside scratch, no process
left, scratch removed)."""

import json
import os
import re
import shutil
import struct
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

from conftest import prov_json, run_prov
from needs.miniature import sample

pytest.importorskip("torch")
pytest.importorskip("av")

from provenance.contest import rules
from provenance.replay import intake  # noqa: E402
from provenance.contest.miniature import PROFILE  # noqa: E402
from provenance.replay.sandbox import Layout, Limits, Sandbox  # noqa: E402
from provenance.contest.policy import phase_views  # noqa: E402

MARK = "ESCAPED"


def hostile(tmp_path, mini, attack: str, base: str = "copy") -> Path:
    """A runtime that runs `attack` (bash) before its normal inflate line."""
    rt = tmp_path / "hostile" / "evil"
    shutil.copytree(sample(mini, base)[1], rt, symlinks=True)
    lines = (rt / "inflate.sh").read_text().splitlines()
    (rt / "inflate.sh").write_text("\n".join(lines[:-1] + [attack, lines[-1]]) + "\n")
    return rt


def replay(tmp_path, runtime, upstream, *extra, archive=None, mini=None):
    scratch = tmp_path / "tmpdir"
    scratch.mkdir(exist_ok=True)
    name = f"evil_{os.urandom(4).hex()}"  # every process of this replay carries it in its command line
    r = run_prov("replay", "--archive", archive or sample(mini, "copy")[0], "--runtime", runtime,
                 "--upstream", upstream, "--name", name, *extra, "--json",
                 store=tmp_path / "store", env={"TMPDIR": str(scratch)})
    r.record = json.loads(r.out)["record"] if r.returncode == 0 else None
    # the host afterwards: scratch removed, no process of the replay left
    assert os.listdir(scratch) == [], "scratch left behind"
    left = subprocess.run(["pgrep", "-af", f"submissions/{name}/"], capture_output=True, text=True).stdout
    assert left == "", f"processes left running: {left}"
    return r


def one_line_failure(r, phase: str, *words):
    assert r.returncode == 1, r.out + r.err
    lines = r.err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"prov: error: {phase}: "), r.err
    for w in words:
        assert w in lines[0], r.err
    assert MARK not in r.err
    return lines[0]


@pytest.fixture
def pristine(mini):
    before = prov_json("hash", mini / "upstream")["sha256"]
    yield mini
    assert prov_json("hash", mini / "upstream")["sha256"] == before, "the upstream checkout changed"


# -- phase views ------------------------------------------------------------------------------

def test_inflate_cannot_see_ground_truth_or_weights_and_cannot_nest_namespaces(tmp_path, pristine):
    up = pristine / "upstream"
    attack = " ; ".join([
        f'for p in "{up}/videos" "{up}/models" "{up}/videos/0.mkv" "{up}/models/posenet.safetensors" '
        '/upstream/videos /upstream/models /upstream/scorers.py /upstream/evaluate.py; do '
        f'[ -e "$p" ] && {{ echo "{MARK}: $p visible" >&2; exit 99; }}; done',
        f'ls "{up}" | grep -qE "^(videos|models)$" && {{ echo "{MARK}: listed" >&2; exit 99; }}',
        f'unshare -U true 2>/dev/null && {{ echo "{MARK}: userns" >&2; exit 99; }}',
        "python -c \"import os; os.unshare(os.CLONE_NEWUSER)\" 2>/dev/null && "
        f'{{ echo "{MARK}: userns via python" >&2; exit 99; }}',
        f'[ -e /prov-out ] && {{ echo "{MARK}: output dir visible" >&2; exit 99; }}',
        "true",
    ])
    r = replay(tmp_path, hostile(tmp_path, pristine, attack), up, mini=pristine)
    assert r.returncode == 0, r.err
    rec = r.record
    assert rec["grade"] == "A++"  # the miniature's official environment is this machine
    views = rec["sandbox"]["phases"]
    # allow-lists: inflate sees the names file of the upstream, evaluate the pinned files, nothing else
    assert {"upstream/videos/0.mkv", "upstream/models/posenet.safetensors", "upstream/models/segnet.safetensors",
            "upstream/evaluate.py", "upstream/scorers.py"} <= set(views["inflate"]["hidden"])
    assert [s for s in views["inflate"]["sees"] if s.startswith("upstream/")] == ["upstream/public_test_video_names.txt"]
    assert "upstream/videos/0.mkv" in views["evaluate"]["sees"]
    assert views["inflate"]["writes"] == ["submission/archive/", "submission/inflated/"]
    assert views["evaluate"]["writes"] == ["output/"]
    assert views["evaluate"]["hidden"] == ["upstream/comma_lab_profile", "upstream/evaluate.sh", "upstream/pyproject.toml"]
    assert "submission/ (read-only)" not in views["evaluate"]["sees"]  # only archive.zip and inflated/
    assert views["probe"]["sees"][0].startswith("/usr")  # no upstream, no submission
    assert len({v["sees_sha256"] for v in views.values()}) == 3
    assert rec["sandbox"]["no_new_user_namespaces"] is True
    assert rec["sandbox"]["limits"]["memory"] == Limits().memory
    import importlib.metadata
    assert rec["environment"]["torch"] == importlib.metadata.version("torch")  # read without importing torch


def test_inflate_that_decodes_the_ground_truth_fails(tmp_path, pristine):
    """An inflate.sh that ignores its archive and decodes the checkout's videos/ scores nothing."""
    up = pristine / "upstream"
    rt = hostile(tmp_path, pristine, f'set -- "{up}/videos" "$2" "$3"')
    r = replay(tmp_path, rt, up, archive=_tiny_zip(tmp_path), mini=pristine)
    one_line_failure(r, "inflate", "exited with status")


def _tiny_zip(tmp_path) -> Path:
    p = tmp_path / "tiny.zip"
    with zipfile.ZipFile(p, "w") as z:
        z.writestr("x", b"101 bytes is all it takes")
    return p


def library_box(tmp_path, mini, name, **limits):
    """A Sandbox over the miniature's upstream with an empty runtime copy (archive/, inflated/ and an
    archive.zip), for phases run directly; its phase views and its layout."""
    rc = tmp_path / "sub"
    for d in ("archive", "inflated"):
        (rc / d).mkdir(parents=True)
    (rc / "archive.zip").write_bytes(b"PK")
    (tmp_path / "out").mkdir()
    (tmp_path / "logs").mkdir()
    layout = Layout(upstream=mini / "upstream", name=name, runtime_copy=rc, out=tmp_path / "out")
    box = Sandbox(layout, limits=Limits(timeout=600, **limits))
    return box, phase_views(PROFILE, box.limits, 1 << 20), layout


def test_phase_views_at_library_level(tmp_path, mini):
    """The evaluate phase sees the submission read-only; inflate cannot write it or the output."""
    box, views, layout = library_box(tmp_path, mini, "probe_views")
    rc, sub = layout.runtime_copy, layout.submission

    def sh(view, script):
        return box.run(view, ["bash", "-c", script], tmp_path / "logs", views[view])

    assert sh("inflate", f"echo x > {sub}/inflated/a && echo x > {sub}/archive/b").ok
    assert not sh("inflate", f"echo x > {sub}/inflate.sh").ok
    assert not sh("inflate", f"test -e {mini}/upstream/videos").ok
    assert sh("evaluate", f"test -e {mini}/upstream/videos/0.mkv && echo x > /prov-out/report.txt").ok
    assert not sh("evaluate", f"echo x > {sub}/inflated/c").ok
    assert not sh("evaluate", f"echo x > {sub}/archive/c").ok
    assert (tmp_path / "out/report.txt").read_text() == "x\n"
    assert not (rc / "inflated/c").exists()


# -- the pinned evaluator -----------------------------------------------------------------------

def test_edited_evaluator_caps_the_grade(tmp_path, pristine):
    up = tmp_path / "upstream"
    shutil.copytree(pristine / "upstream", up)
    (up / "evaluate.py").write_text((up / "evaluate.py").read_text() + "\n# tuned\n")
    a, rt = sample(pristine, "half")
    r = replay(tmp_path, rt, up, archive=a, mini=pristine)
    assert r.returncode == 0, r.err
    pin = next(c for c in r.record["checks"] if c["name"] == "evaluator_pinned")
    assert pin["ok"] is False and pin["severity"] == "flag"
    expected = dict((p, s) for p, _, s in PROFILE.evaluator)["evaluate.py"]
    seen = prov_json("hash", up / "evaluate.py")["sha256"]
    assert f"evaluate.py: expected sha256 {expected}, seen {seen}" == pin["detail"]
    assert r.record["grade"] == "B"


def test_pins_match_the_generated_miniature_and_name_lfs_pointers(tmp_path, mini):
    assert rules.check_evaluator(PROFILE, mini / "upstream").ok
    up = tmp_path / "up"
    shutil.copytree(mini / "upstream", up)
    sha = dict((p, s) for p, _, s in PROFILE.evaluator)["models/segnet.safetensors"]
    (up / "models/segnet.safetensors").write_text(
        f"version https://git-lfs.github.com/spec/v1\noid sha256:{sha}\nsize 2428\n")
    (up / "videos/0.mkv").unlink()
    c = rules.check_evaluator(PROFILE, up)
    assert not c.ok
    assert "models/segnet.safetensors: a git-LFS pointer, not the file (run `git lfs pull`)" in c.detail
    assert "videos/0.mkv: missing" in c.detail
    # the official pin: a checkout of pointers is named as such, file by file
    off = tmp_path / "official"
    (off / "models").mkdir(parents=True)
    for rel, size, sha in rules.OFFICIAL.evaluator:
        if rel.startswith("models/"):
            (off / rel).write_text(f"version https://git-lfs.github.com/spec/v1\noid sha256:{sha}\nsize {size}\n")
    c = rules.check_evaluator(rules.OFFICIAL, off)
    assert c.detail.count("git lfs pull") == 2 and "evaluate.py: missing" in c.detail


def test_grade_table_caps_unpinned_evaluators():
    kw = dict(source="replay", samples=600, platform="linux-x86_64", custody_complete=True, canonical_env=True)
    assert rules.grade(rules.OFFICIAL, device="cuda", gpu_model="Tesla T4", evaluator_pinned=True, **kw)[0] == "A++"
    assert rules.grade(rules.OFFICIAL, device="cuda", gpu_model="Tesla T4", evaluator_pinned=False, **kw)[0] == "B"
    assert rules.grade(rules.OFFICIAL, device="cpu", gpu_model=None, evaluator_pinned=False, **kw)[0] == "B"
    assert rules.grade(rules.OFFICIAL, device="cpu", gpu_model=None, evaluator_pinned=False,
                         **{**kw, "samples": 5})[0] == "invalid"


# -- verified bytes -----------------------------------------------------------------------------

def test_store_object_altered_after_hashing_is_never_run_or_served(tmp_path, pristine):
    a, rt = sample(pristine, "half")
    st = tmp_path / "store"
    first = replay(tmp_path, rt, pristine / "upstream", archive=a, mini=pristine)
    assert first.returncode == 0, first.err
    entry = next(e for e in prov_json("ls", first.record["runtime"]["tree"]["blake3"], store=st)["entries"]
                 if e["name"] == "inflate.py")
    obj = st / "objects" / entry["blake3"][:2] / entry["blake3"]
    obj.chmod(0o644)
    obj.write_bytes(obj.read_bytes().replace(b"repeat(2", b"repeat(1"))
    r = replay(tmp_path, rt, pristine / "upstream", archive=a, mini=pristine)  # the stat cache skips the source
    assert r.returncode == 1 and len(r.err.strip().splitlines()) == 1, r.err
    assert f"object {entry['blake3']}" in r.err and "corrupt" in r.err and "prov fsck" in r.err
    cat = run_prov("cat", entry["blake3"], store=st)
    assert cat.returncode == 1 and cat.stdout == b"" and "prov fsck" in cat.err
    assert run_prov("export", first.record["runtime"]["tree"]["blake3"], tmp_path / "x", store=st).returncode == 1
    assert not (tmp_path / "x").exists()


# -- whole-phase limits ---------------------------------------------------------------------------

def test_memory_summed_over_processes_is_capped(tmp_path, pristine):
    hog = "python -c \"import time; b = b'x' * (120 << 20); time.sleep(600)\""
    rt = hostile(tmp_path, pristine, f"{hog} & {hog} & {hog} & wait")
    r = replay(tmp_path, rt, pristine / "upstream", "--memory", str(200 << 20), mini=pristine)
    one_line_failure(r, "inflate", "memory cap", f"cap {200 << 20:,} bytes")


def test_tmp_is_size_capped(tmp_path, pristine):
    rt = hostile(tmp_path, pristine, "head -c 200M /dev/zero > /tmp/fill")
    r = replay(tmp_path, rt, pristine / "upstream", "--tmp-size", str(16 << 20), mini=pristine)
    one_line_failure(r, "inflate", f"/tmp reached its cap of {16 << 20:,} bytes")


def test_disk_writes_are_capped_across_files(tmp_path, pristine):
    rt = hostile(tmp_path, pristine, 'for i in $(seq 40); do head -c 4M /dev/zero > "$2/junk$i"; done')
    r = replay(tmp_path, rt, pristine / "upstream", "--write-margin", str(8 << 20), mini=pristine)
    one_line_failure(r, "inflate", "write cap")


def test_one_large_file_hits_the_file_size_cap(tmp_path, pristine):
    rt = hostile(tmp_path, pristine, 'head -c 100M /dev/zero > "$2/big"')
    r = replay(tmp_path, rt, pristine / "upstream", "--write-margin", str(8 << 20), mini=pristine)
    line = one_line_failure(r, "inflate")
    # the per-file cap stops the write at once; the file then also fills the phase's write cap, and the
    # watchdog may kill the phase for that before the shell reports SIGXFSZ: either way, near the cap
    wrote = re.search(r"write cap: the phase wrote ([\d,]+) bytes, cap ([\d,]+) bytes", line)
    n, cap = (int(x.replace(",", "")) for x in wrote.groups()) if wrote else (0, 0)
    # (on a filesystem of exactly the cap, where root can make one, the kernel refuses the byte past it)
    assert "file-size cap of" in line or (wrote and n < 2 * cap) or "filled its filesystem of" in line, line
    assert os.path.getsize(tmp_path / "tmpdir") >= 0 and not list((tmp_path / "tmpdir").iterdir())


# -- the host never follows what the sandbox made -------------------------------------------------

def test_planted_link_output_is_refused_without_following(tmp_path, pristine):
    rt = hostile(tmp_path, pristine, "")
    lines = (rt / "inflate.sh").read_text().splitlines()
    lines[-1] = lines[-1].replace("exec ", "")
    lines.append('rm -f "$2/0.raw" && ln -s /etc/shadow "$2/0.raw"')
    (rt / "inflate.sh").write_text("\n".join(lines) + "\n")
    r = replay(tmp_path, rt, pristine / "upstream", mini=pristine)
    line = one_line_failure(r, "inflate", "inflated/0.raw is a symlink")
    if os.path.exists("/etc/shadow"):
        assert f"{os.stat('/etc/shadow').st_size:,}" not in line and str(os.stat('/etc/shadow').st_size) not in line


def test_deep_tree_in_inflated_fails_cleanly(tmp_path, pristine):
    deep = ("python -c \"import os,sys; os.chdir(sys.argv[1])\n"
            "for _ in range(3000): os.mkdir('d'); os.chdir('d')\" \"$2\"")
    rt = hostile(tmp_path, pristine, deep)
    r = replay(tmp_path, rt, pristine / "upstream", mini=pristine)
    one_line_failure(r, "inflate", "nests deeper than 64 levels")


# -- intake ----------------------------------------------------------------------------------------

def overlapping_bomb(path: Path, copies: int = 5) -> Path:
    """One compressed kernel, many central-directory entries pointing at it."""
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as z:
        z.writestr("k0", bytes(512 << 10))  # under the ratio floor: only the overlap gives it away
    data = path.read_bytes()
    cd_off = struct.unpack_from("<I", data, len(data) - 22 + 16)[0]
    cd = data[cd_off:len(data) - 22]
    entries = []
    for i in range(copies):
        e = bytearray(cd)
        e[46:46 + 2] = f"k{i}".encode()  # same length name, same local header offset
        entries.append(bytes(e))
    new_cd = b"".join(entries)
    eocd = bytearray(data[len(data) - 22:])
    struct.pack_into("<HHII", eocd, 8, copies, copies, len(new_cd), cd_off)
    path.write_bytes(data[:cd_off] + new_cd + bytes(eocd))
    return path


def test_overlapping_entry_bomb_is_refused_and_store_unchanged(tmp_path, pristine):
    bomb = overlapping_bomb(tmp_path / "bomb.zip")
    assert len(zipfile.ZipFile(bomb).infolist()) == 5
    with pytest.raises(intake.IntakeError, match=r"rule: overlap"):
        intake.check(bomb)
    r = replay(tmp_path, sample(pristine, "copy")[1], pristine / "upstream", archive=bomb, mini=pristine)
    assert r.returncode == 2 and "rule: overlap" in r.err and len(r.err.strip().splitlines()) == 1, r.err
    assert not (tmp_path / "store").exists() or prov_json("fsck", store=tmp_path / "store")["objects"] == 0


def raw_zip(path: Path, raw_name: bytes, flag: int = 0, system: int = 3, data: bytes = b"hi") -> Path:
    """A one-entry stored zip whose name bytes are exactly `raw_name`."""
    import zlib
    crc = zlib.crc32(data)
    local = struct.pack("<4sHHHHHIIIHH", b"PK\x03\x04", 20, flag, 0, 0, 0, crc, len(data), len(data),
                        len(raw_name), 0) + raw_name + data
    cd = struct.pack("<4sBBHHHHHIIIHHHHHII", b"PK\x01\x02", 20, system, 20, flag, 0, 0, 0, crc, len(data),
                     len(data), len(raw_name), 0, 0, 0, 0, 0o100644 << 16, 0) + raw_name
    path.write_bytes(local + cd + struct.pack("<4sHHHHIIH", b"PK\x05\x06", 0, 0, 1, 1, len(cd), len(local), 0))
    return path


def test_names_decode_as_unzip_does(tmp_path):
    unzip = shutil.which("unzip")
    assert unzip, "unzip is installed by .ci/setup"
    for i, raw in enumerate(["café/naïve.txt".encode(), "日本/ok.bin".encode()]):
        z = raw_zip(tmp_path / f"u{i}.zip", raw)  # UTF-8 bytes, no UTF-8 flag, Unix host
        subprocess.run([unzip, "-qo", str(z), "-d", str(tmp_path / f"unzip{i}")], check=True)
        intake.extract(z, tmp_path / f"ours{i}")
        assert prov_json("hash", tmp_path / f"ours{i}") == prov_json("hash", tmp_path / f"unzip{i}")
        assert (tmp_path / f"ours{i}" / raw.decode()).is_file()


@pytest.mark.parametrize("raw,flag,system,rule", [
    (b"caf\xe9.txt", 0x800, 3, "name-encoding"),  # not UTF-8 although flagged
    (b"caf\xe9.txt", 0, 3, "name-encoding"),  # unzip would write raw Latin-1 bytes
    (b"caf\x82.txt", 0, 0, "name-encoding"),  # DOS host: unzip maps it through its OEM table
    (b"a/" * 2100 + b"x", 0, 3, "path-depth"),
    (b"n" * 300, 0, 3, "name"),
])
def test_hostile_names_get_a_rule(tmp_path, raw, flag, system, rule):
    z = raw_zip(tmp_path / "n.zip", raw, flag, system)
    with pytest.raises(intake.IntakeError, match=f"rule: {rule}"):
        intake.extract(z, tmp_path / "out")
    assert not (tmp_path / "out").exists() and os.listdir(tmp_path) == ["n.zip"]


# -- custody ---------------------------------------------------------------------------------------

def test_large_binary_outside_the_archive_is_flagged(tmp_path, pristine):
    rt = hostile(tmp_path, pristine, "", base="half")
    (rt / "weights.bin").write_bytes(os.urandom(3 << 20))
    (rt / "big_source.py").write_text("# text\n" * 300_000)
    a, _ = sample(pristine, "half")
    r = replay(tmp_path, rt, pristine / "upstream", archive=a, mini=pristine)
    assert r.returncode == 0, r.err
    c = next(c for c in r.record["checks"] if c["name"] == "runtime_artifacts")
    assert c["ok"] is False and c["severity"] == "flag"
    assert f"weights.bin ({3 << 20:,} bytes)" in c["detail"] and "big_source.py" not in c["detail"]
    assert f"runtime tree holds {r.record['runtime']['tree']['size']:,} bytes" in c["detail"]
    # the artifact check is a flag for the judge; what caps the grade is custody (issue 24): 3 MiB of
    # random bytes are far past the allowance, whatever the file is called
    custody = next(c for c in r.record["checks"] if c["name"] == "runtime_custody")
    assert not custody["ok"] and "weights.bin" in custody["detail"].split("largest: ")[1].split(",")[0]
    assert r.record["grade"] == "B"


def test_the_tmp_cap_never_counts_the_hosts_disk():
    """Until bubblewrap pivots into the sandbox's root, a phase's process still sees the host's
    /tmp: the watchdog must not take the host disk's usage for the sandbox's /tmp (it did, and a
    legitimate evaluate was killed for 'memory' when it looked in that window)."""
    from provenance.replay.limits import _tmp_used
    assert _tmp_used([0, os.getpid()]) == 0


# -- what a legitimate program needs of /etc, and no more ------------------------------------------

def test_etc_holds_the_loader_and_an_account_for_the_phase_and_nothing_else(tmp_path, mini):
    box, views, _ = library_box(tmp_path, mini, "etc_view")
    r = box.run("inflate", ["bash", "-c", "stat -c %a /etc; head -c 4 /etc/ld.so.cache | od -An -c | tr -d ' '; "
                            "id -un; ls -A /etc | tr '\\n' ' '; echo; ffmpeg -version >/dev/null 2>&1; echo ffmpeg $?"],
                tmp_path / "logs", views["inflate"])
    assert r.ok, r.stderr
    assert len(r.stdout.decode().splitlines()) == 5, r.stdout
    mode, cache, user, listing, ff = r.stdout.decode().splitlines()
    assert mode == "755" and cache in ("glib", "ld.s") and user == "sandbox"
    assert set(listing.split()) <= {"ld.so.cache", "ld.so.conf", "ld.so.conf.d", "alternatives", "nsswitch.conf",
                                    "localtime", "os-release", "debian_version", "mime.types", "passwd", "group"}
    assert "shadow" not in listing and "hostname" not in listing
    if shutil.which("ffmpeg"):
        assert ff == "ffmpeg 0"  # a real runtime's tool runs: its shared libraries load


# -- every way out cleans -----------------------------------------------------------------------

@pytest.mark.parametrize("sig,code", [("SIGTERM", 143), ("SIGHUP", 129), ("SIGINT", 1)])
def test_signals_mid_inflate_leave_nothing_behind(tmp_path, pristine, sig, code):
    import signal
    import time
    marker = f"{7000 + int.from_bytes(os.urandom(2), 'big')}.{os.getpid()}"
    rt = hostile(tmp_path, pristine, f"sleep {marker}")
    scratch = tmp_path / "tmpdir"
    scratch.mkdir()
    name = f"sig_{os.urandom(4).hex()}"
    env = dict(os.environ, TMPDIR=str(scratch), PROV_STORE=str(tmp_path / "store"))
    p = subprocess.Popen([sys.executable, "-c", "import signal; signal.signal(signal.SIGINT, signal.default_int_handler);"
                          "from provenance.cli.app import main; main()", "replay", "--archive",
                          sample(pristine, "copy")[0], "--runtime", rt, "--upstream", pristine / "upstream",
                          "--name", name], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 300  # waits for the sleep to start, however loaded the machine
    while subprocess.run(["pgrep", "-f", f"sleep {marker}"], capture_output=True).returncode != 0:
        assert p.poll() is None and time.monotonic() < deadline, p.communicate()
        time.sleep(0.05)
    assert os.listdir(scratch)  # the replay's scratch exists now
    p.send_signal(getattr(signal, sig))
    out, err = p.communicate()
    assert p.returncode == code, err
    assert b"Traceback" not in err and len(err.decode().strip().splitlines()) <= 2, err
    assert os.listdir(scratch) == [], "scratch left behind"
    assert subprocess.run(["pgrep", "-f", f"sleep {marker}"], capture_output=True).returncode == 1


# -- limits the kernel keeps (cgroup v1 here: root may make them) -----------------------------------

needs_cgroup = pytest.mark.skipif(os.geteuid() != 0 or not os.path.isdir("/sys/fs/cgroup/memory"),
                                  reason="cgroups need root and a v1 memory hierarchy")
SMALL = str(96 << 20)
HIDDEN_MEMORY = {
    # memory the old watchdog never saw: none of it is any process's resident set
    "memfd": "import os, mmap\nfor i in range(40):\n    fd = os.memfd_create('m')\n    os.ftruncate(fd, 8 << 20)\n"
             "    os.pwrite(fd, b'x' * (8 << 20), 0)",
    "sysv_shm": "import ctypes\nlibc = ctypes.CDLL(None, use_errno=True)\nlibc.shmat.restype = ctypes.c_void_p\n"
                "for i in range(40):\n    sid = libc.shmget(0, 8 << 20, 0o1600)\n    p = libc.shmat(sid, None, 0)\n"
                "    ctypes.memset(p, 1, 8 << 20)\n    libc.shmdt(ctypes.c_void_p(p))",
    "empty_files": "import os\nfor i in range(1_000_000):\n    open(f'/tmp/f{i}', 'w').close()",
    "socket_buffers": "import socket\npairs = []\nfor i in range(4000):\n    a, b = socket.socketpair()\n"
                      "    a.setblocking(False)\n    try:\n        while True: a.send(b'x' * 65536)\n"
                      "    except BlockingIOError: pass\n    pairs.append((a, b))",
}


@needs_cgroup
@pytest.mark.parametrize("kind", sorted(HIDDEN_MEMORY))
def test_memory_no_process_holds_is_charged_to_the_phase(tmp_path, pristine, kind):
    (tmp_path / "hog.py").write_text(HIDDEN_MEMORY[kind] + "\nimport time\ntime.sleep(600)\n")
    rt = hostile(tmp_path, pristine, 'python "$(dirname "$0")/hog.py"')
    shutil.copy(tmp_path / "hog.py", rt / "hog.py")
    r = replay(tmp_path, rt, pristine / "upstream", "--memory", SMALL, "--timeout", "600", mini=pristine)
    one_line_failure(r, "inflate", "memory cap", f"cap {int(SMALL):,} bytes")


@needs_cgroup
def test_an_oom_kill_ends_the_phase_whichever_process_the_killer_chose(tmp_path, pristine):
    """A submission that offers the killer a sacrificial child (oom_score_adj 1000) and goes on to
    write honest outputs still fails: the cap bounds the phase, not the process that was killed."""
    victim = ("(echo 1000 > /proc/self/oom_score_adj; exec python -c \"b = bytearray(400 << 20); "
              "b[::4096] = b'x' * len(b[::4096])\") 2>/dev/null; true")
    rt = hostile(tmp_path, pristine, victim)
    r = replay(tmp_path, rt, pristine / "upstream", "--memory", SMALL, mini=pristine)
    one_line_failure(r, "inflate", "memory cap", "out-of-memory killer")


@needs_cgroup
def test_every_descendant_is_in_the_phase_cgroup_and_sees_its_cpus(tmp_path, mini):
    box, views, _ = library_box(tmp_path, mini, "cg_view", cpus=1)
    # a grandchild in a session of its own, started as fast as the phase can fork
    r = box.run("inflate", ["bash", "-c", "(setsid bash -c 'cat /proc/self/cgroup; nproc' &); "
                            "while [ ! -s /dev/null ] && pgrep -x setsid >/dev/null; do :; done; sleep 0.2"],
                tmp_path / "logs", views["inflate"])
    assert r.ok and r.kept_by == "cgroup-v1", r.stderr
    lines = r.stdout.decode().splitlines()
    for controller in ("memory", "pids", "cpuset", "freezer"):  # the root of its cgroup namespace: the phase's
        assert any(l.endswith(f":{controller}:/") for l in lines), lines
    assert lines[-1] == "1"
    from provenance.replay import cgroup
    assert not [d for d in cgroup._parent("memory").iterdir() if d.name.startswith(f"prov-{os.getpid()}-")]


_DISJOINT = """
import json, sys, threading
from provenance.replay.cgroup import Cgroup, _cpu_list
cpus = _cpu_list(open(sys.argv[1] + "/cpuset.effective_cpus").read())
made, barrier = [], threading.Barrier(2)

def make(i):
    barrier.wait()  # both choose at the same moment: the lock keeps them apart
    made.append(Cgroup.make(f"t{i}", 64 << 20, 64, 1))
threads = [threading.Thread(target=make, args=(i,)) for i in range(2)]
for t in threads:
    t.start()
for t in threads:
    t.join()
out = {"cpus": cpus, "made": [None if g is None else _cpu_list(g.cpus) for g in made]}
try:
    out["kernel"] = [_cpu_list(open(g.dirs["cpuset"] / "cpuset.cpus").read()) for g in made if g]
    third = Cgroup.make("t3", 64 << 20, 64, len(cpus) + 4)  # more than the machine has: all of it
    made.append(third)
    out["third"] = third and _cpu_list(third.cpus)
finally:
    for g in made:
        if g:
            g.remove()
print(json.dumps(out))
"""


@needs_cgroup
def test_concurrent_phases_get_disjoint_cpus_while_there_are_free_ones(tmp_path):
    """Two replays at once each take CPUs the other does not hold (a replay from another process
    counts the same: the claims are the prov-* cpusets themselves); once all are held, the least
    held are shared, never an empty set. Run in a cpuset of its own (not named prov-*, so no replay
    counts it as a claim): the other tests' replays on this machine hold CPUs of the parent's."""
    from provenance.replay import cgroup
    parent = cgroup._parent("cpuset")
    own = parent / f"test-disjoint-{os.getpid()}"
    own.mkdir()
    try:
        for f in ("cpuset.cpus", "cpuset.mems"):
            (own / f).write_text((parent / f.replace("cpuset.", "cpuset.effective_")).read_text())
        script = f"import os; open({str(own / 'cgroup.procs')!r}, 'w').write(str(os.getpid()))\n" + _DISJOINT
        r = subprocess.run([sys.executable, "-c", script, str(own)], capture_output=True, text=True)
        assert r.returncode == 0, r.stderr
        out = json.loads(r.stdout)
    finally:
        own.rmdir()
    if len(out["cpus"]) < 2:
        pytest.skip("one CPU: nothing to keep apart")
    assert len(out["made"]) == 2 and all(out["made"]), out
    a, b = (set(m) for m in out["made"])
    assert a and b and not a & b, (a, b)
    assert out["kernel"] == out["made"]  # what the kernel holds is what was chosen
    assert out["third"] == out["cpus"]


def test_without_a_cgroup_the_record_says_so_and_the_grade_is_capped(tmp_path, pristine, monkeypatch):
    from provenance.replay import cgroup
    from provenance.replay.run import replay as library_replay
    from provenance.store.objects import Store
    monkeypatch.setattr(cgroup, "ROOT", tmp_path / "no-cgroups")  # a machine without a v1 hierarchy
    a, rt = sample(pristine, "copy")
    res = library_replay(Store(tmp_path / "store", create=True), a, rt, pristine / "upstream",
                         scratch_base=str(tmp_path))
    assert set(res.record.sandbox.kept_by.values()) == {"watchdog"}
    assert res.record.grade == "B"
    kept = next(c for c in res.checks if c.name == "kernel_limits")
    assert not kept.ok and "watchdog" in kept.detail


# -- writes the old walk never counted: on a filesystem of exactly the cap, free space is the measure ---

HIDDEN_WRITES = {
    # each under the per-file cap, none with a size a walk would add up
    "fallocate_keep_size": 'for i in $(seq 40); do : > "$2/h$i"; fallocate --keep-size -l 5M "$2/h$i" || exit 1; done',
    "deleted_but_open": 'exec 3>"$2/gone"; rm "$2/gone"; head -c 200M /dev/zero >&3',
    "o_tmpfile": "python -c \"import os, sys; fd = os.open(sys.argv[1], os.O_TMPFILE | os.O_WRONLY, 0o600); "
                 "[os.write(fd, b'x' * (1 << 20)) for _ in range(200)]\" \"$2\"",
    "past_path_max": 'cd "$2" && for i in $(seq 300); do mkdir dddddddddddddddddddd && cd dddddddddddddddddddd; done; '
                     'head -c 200M /dev/zero > deep',
}


@needs_cgroup
@pytest.mark.parametrize("kind", sorted(HIDDEN_WRITES))
def test_writes_no_walk_sees_are_capped(tmp_path, pristine, kind):
    rt = hostile(tmp_path, pristine, HIDDEN_WRITES[kind] + "; sleep 600")
    r = replay(tmp_path, rt, pristine / "upstream", "--write-margin", str(8 << 20), "--timeout", "600", mini=pristine)
    line = one_line_failure(r, "inflate")
    assert "write cap" in line or "No space left" in line, line
    assert not [m for m in open("/proc/self/mountinfo").read().splitlines() if str(tmp_path) in m]


def test_a_flood_of_stdout_keeps_only_the_tail(tmp_path, pristine):
    rt = hostile(tmp_path, pristine, "head -c 300M /dev/zero | tr '\\0' 'y'; echo END-OF-FLOOD")
    r = replay(tmp_path, rt, pristine / "upstream", mini=pristine)
    assert r.returncode == 0, r.err
    st = tmp_path / "store"
    log = r.record["logs"]["inflate.stdout"]
    assert log["size"] <= 1 << 20
    assert run_prov("cat", log["sha256"], store=st, check=0).stdout.rstrip().endswith(b"END-OF-FLOOD")


def test_what_a_killed_replay_left_is_removed_at_the_next_start(tmp_path, pristine):
    """SIGKILL runs no `finally`: the next replay removes the dead one's mounts, scratch and cgroups."""
    import signal
    import time
    marker = f"{9000 + int.from_bytes(os.urandom(2), 'big')}.{os.getpid()}"
    rt = hostile(tmp_path, pristine, f"sleep {marker}")
    scratch = tmp_path / "tmpdir"
    scratch.mkdir()
    env = dict(os.environ, TMPDIR=str(scratch), PROV_STORE=str(tmp_path / "store"))
    p = subprocess.Popen([str(Path(sys.executable).parent / "prov"), "replay", "--archive", sample(pristine, "copy")[0],
                          "--runtime", rt, "--upstream", pristine / "upstream"], env=env,
                         stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 300
    while subprocess.run(["pgrep", "-f", f"sleep {marker}"], capture_output=True).returncode != 0:
        assert p.poll() is None and time.monotonic() < deadline
        time.sleep(0.05)
    p.send_signal(signal.SIGKILL)
    p.wait()
    left = os.listdir(scratch)
    assert left  # what the dead run left
    r = replay(tmp_path, sample(pristine, "copy")[1], pristine / "upstream", mini=pristine)  # asserts scratch is empty
    assert r.returncode == 0, r.err
    assert not [m for m in open("/proc/self/mountinfo").read().splitlines() if str(scratch) in m]
    assert subprocess.run(["pgrep", "-f", f"sleep {marker}"], capture_output=True).returncode == 1


# -- custody is a rule: information carried in the runtime, however encoded ---------------------------

def _clip(mini) -> bytes:
    return (mini / "upstream/videos/0.mkv").read_bytes()


CARRIERS = {
    "base64": lambda clip, rt: (rt / "frames.b64").write_bytes(__import__("base64").b64encode(clip)),
    "fake_elf": lambda clip, rt: (rt / "libcodec.so").write_bytes(b"\x7fELF\x02\x01\x01" + bytes(9) + clip),
    "behind_text": lambda clip, rt: (rt / "README.txt").write_bytes(b"notes\n" * 1400 + clip.hex().encode()),
    "file_names": lambda clip, rt: [(rt / "n" / __import__("base64").b32encode(clip[i:i + 120]).decode().rstrip("="))
                                     .parent.mkdir(exist_ok=True) or
                                     (rt / "n" / __import__("base64").b32encode(clip[i:i + 120]).decode().rstrip("="))
                                     .write_bytes(b"") for i in range(0, len(clip), 120)],
}


@pytest.mark.parametrize("carrier", sorted(CARRIERS))
def test_ground_truth_carried_in_the_runtime_caps_the_grade(tmp_path, pristine, carrier):
    rt = hostile(tmp_path, pristine, "")
    CARRIERS[carrier](_clip(pristine), rt)
    r = replay(tmp_path, rt, pristine / "upstream", mini=pristine)
    assert r.returncode == 0, r.err
    rec = r.record
    assert rec["grade"] == "B", rec["grade"]
    check = next(c for c in rec["checks"] if c["name"] == "runtime_custody")
    assert not check["ok"] and "grade capped at B" in check["detail"] and "allowance 2,048" in check["detail"]
    assert rec["runtime"]["information"] > PROFILE.custody_allowance
    assert rec["runtime"]["information_compressor"] == "zlib-9"
    # the allowance is not free score: the adjusted rate counts what the runtime carries
    assert rec["result"]["custody_adjusted_rate"] > rec["result"]["rate"]


def test_an_honest_runtime_is_within_custody_and_pays_nothing(tmp_path, pristine):
    r = replay(tmp_path, sample(pristine, "half")[1], pristine / "upstream", archive=sample(pristine, "half")[0])
    assert r.returncode == 0, r.err
    assert r.record["grade"] == "A++"
    assert r.record["runtime"]["information"] <= PROFILE.custody_allowance
    assert r.record["result"]["custody_adjusted_rate"] == r.record["archive"]["size"] / PROFILE.uncompressed_size


# -- the miniature's ground truth is not derivable from public code -----------------------------

REGEN = '''import hashlib, math, os, sys
import numpy as np
FRAMES, HEIGHT, WIDTH = {FRAMES}, {HEIGHT}, {WIDTH}
CELL, SHADE, GRAIN = {CELL}, {SHADE}, {GRAIN}
{scene}
{frames}
block = None
try:  # the block itself, if any phase could read it
    block = open({block!r}, "rb").read()
    print("ESCAPED: read the block", file=sys.stderr)
except OSError:
    pass
if block is None:
    block = bytes([128]) * 12288 if {guess!r} == "mean" else (bytes.fromhex({digest!r}) * 384)[:12288]
src, dst, names = sys.argv[1:4]
os.makedirs(dst, exist_ok=True)
frames(block).tofile(os.path.join(dst, "0.raw"))
'''


@pytest.mark.parametrize("guess", ["mean", "digest"])
def test_the_generator_without_the_block_scores_worse_than_the_frontier(tmp_path, pristine, guess):
    """The generator and the block's digest, with an empty archive, regenerate the clip as well as
    public code can: the block's detail is missing and the score is worse than the bundled frontier."""
    import hashlib
    import inspect
    from conftest import REPO
    from provenance.lab.miniature import build as mb
    rt = tmp_path / "regen"
    rt.mkdir()
    (rt / "inflate.sh").write_text('#!/usr/bin/env bash\nexec python "$(dirname "$0")/inflate.py" "$@"\n')
    (rt / "inflate.sh").chmod(0o755)
    (rt / "inflate.py").write_text(REGEN.format(
        FRAMES=mb.FRAMES, HEIGHT=mb.HEIGHT, WIDTH=mb.WIDTH, CELL=mb.CELL, SHADE=mb.SHADE, GRAIN=mb.GRAIN,
        scene=inspect.getsource(mb.scene), frames=inspect.getsource(mb.frames),
        block=str(REPO / "miniature/block.bin"), guess=guess,
        digest=hashlib.sha256((REPO / "miniature/block.bin").read_bytes()).hexdigest()))
    empty = tmp_path / "archive.zip"
    with zipfile.ZipFile(empty, "w") as z:
        z.writestr("0.txt", "")
    r = replay(tmp_path, rt, pristine / "upstream", archive=empty)
    assert r.returncode == 0 and MARK not in r.err, r.out + r.err
    regen = r.record
    assert regen["runtime"]["information"] <= PROFILE.custody_allowance, "the generator itself is within custody"
    front = replay(tmp_path, sample(pristine, "half_crf30")[1], pristine / "upstream",
                   archive=sample(pristine, "half_crf30")[0]).record
    assert front["grade"] == regen["grade"] == "A++"
    assert regen["result"]["canonical_score"] > front["result"]["canonical_score"] + 5, (regen["result"], front["result"])
