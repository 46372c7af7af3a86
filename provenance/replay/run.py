"""Replay: recompute the score from the exact stored bytes, in a sandbox.

intake -> inflate -> check every .raw -> evaluate -> parse -> adjudicate -> EvalRecord.
What runs is exactly what was hashed: the archive is copied into scratch as it is hashed and
unzipped from that copy (the store sees it only once intake accepts it), and the runtime tree
leaves the store re-hashed. The host reads nothing the submission made through a link, walks
what it made without recursion, and removes scratch on every way out.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import stat
import tempfile
import threading
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Callable

from provenance.contest import rules
from provenance.contest.policy import View, phase_views
from provenance.replay import intake
from provenance.replay import upstream as upstream_mod
from provenance.replay.upstream import NAMES_FILE, detect_profile
from provenance.replay.cgroup import pid_alive
from provenance.core.checks import Check
from provenance.core.digest import Digest, hash_file, stream
from provenance.core.errors import ProvError, VerificationFailed, helper_threads, terminate_on_signals
from provenance.core.files import remove_tree
from provenance.replay.frames import frame_pngs, keep_frames
from provenance.replay.interpreter import Interpreter
from provenance.replay.limits import PAGE, Limits, mount_capped, unmount, written_bytes
from provenance.replay.sandbox import Layout, PhaseResult, Sandbox

if TYPE_CHECKING:
    from provenance.records.models import EvalRecord

MAX_OUTPUT_DEPTH = 64  # levels under inflated/ the host will walk

# Versions from package metadata and nvidia-smi: importing torch here would cost seconds.
PROBE = r"""
import json, platform, re, shutil, subprocess, sys
from importlib import metadata, util
out = {"python": platform.python_version(), "platform": platform.system().lower() + "-" + platform.machine()}
try:
    out["torch"] = metadata.version("torch")
    spec = util.find_spec("torch")
    with open(spec.submodule_search_locations[0] + "/version.py") as f:
        m = re.search(r"^cuda\s*(?::[^=]*)?=\s*['\"]([^'\"]+)['\"]", f.read(), re.M)
    out["cuda"] = m.group(1) if m else None
except Exception as e:
    out["torch_error"] = type(e).__name__
# the environment evaluate runs in, as evidence: every distribution with the digest of its RECORD
# (the installer's list of files and their hashes), and what of the lab or a checkout it holds.
# From the .dist-info names, not importlib.metadata: parsing every METADATA would slow inflate beside it.
import hashlib, os, site
# A .pth a recorded distribution installed that only imports (setuptools' distutils hook) is part of it;
# any other is foreign: one that adds a path (an editable install of a checkout) or that no RECORD lists.
pkgs, rows, foreign = {}, [], []
for sp in site.getsitepackages():
    names = sorted(os.listdir(sp)) if os.path.isdir(sp) else []
    owned = set()
    for n in names:
        if n.endswith(".dist-info"):
            name, _, version = n[:-len(".dist-info")].partition("-")
            name = name.lower().replace("_", "-")
            try:
                with open(os.path.join(sp, n, "RECORD"), "rb") as f:
                    rec = f.read()
            except OSError:
                rec = b""
            pkgs[name] = version
            rows.append([name, version, hashlib.sha256(rec).hexdigest()])
            if name == "comma-lab":
                foreign.append("distribution comma-lab")
            else:
                owned.update(l.split(b",")[0].decode("utf-8", "replace") for l in rec.splitlines() if b".pth," in l)
    for n in names:
        if n.endswith(".pth"):
            try:
                with open(os.path.join(sp, n), "rb") as f:
                    lines = [l.strip() for l in f.read().splitlines()]
            except OSError:
                lines = [b"?"]
            adds_path = any(l and not l.startswith((b"#", b"import ", b"import\t")) for l in lines)
            if n not in owned or adds_path:
                foreign.append(n)
out["packages"] = dict(sorted(pkgs.items()))
out["env_sha256"] = hashlib.sha256(json.dumps(sorted(rows), separators=(",", ":")).encode()).hexdigest()
out["env_foreign"] = sorted(set(foreign))
if sys.argv[1] == "cuda" and shutil.which("nvidia-smi"):
    r = subprocess.run(["nvidia-smi", "--query-gpu=name,driver_version", "--format=csv,noheader"],
                       capture_output=True, text=True)
    if r.returncode == 0 and r.stdout.strip():
        name, driver = [x.strip() for x in r.stdout.splitlines()[0].split(",")[:2]]
        out.update(gpu_model=name, driver=driver)
print(json.dumps(out))
"""


class ReplayFailed(VerificationFailed):
    """The submission did not produce a score: a phase failed, timed out or left no output."""


@dataclass
class ReplayResult:
    record: EvalRecord
    digest: Digest
    checks: list[Check]
    phases: list[PhaseResult] = field(default_factory=list)


def default_name(runtime: Path) -> str:
    p = runtime.resolve()
    return p.parent.name if p.name == "runtime" else p.name


def _scratch_layout(scratch: Path, upstream: Path, name: str, sandboxed: bool) -> Layout:
    if sandboxed:
        return Layout(upstream=upstream, name=name, runtime_copy=scratch / "sub", out=scratch / "out",
                      inside="/upstream")
    view = scratch / "upstream"  # no mount namespace: build the same layout from symlinks
    (view / "submissions").mkdir(parents=True)
    for e in os.listdir(upstream):
        if e != "submissions":
            os.symlink(upstream / e, view / e)
    if (upstream / "submissions").is_dir():
        for f in (upstream / "submissions").iterdir():
            if f.is_file():
                os.symlink(f, view / "submissions" / f.name)
    return Layout(upstream=view, name=name, runtime_copy=view / "submissions" / name, out=scratch / "out")


def _stage(src: str | Path, dest: Path) -> Digest:
    """Copy a file into scratch, hashing the bytes as they are written."""
    try:
        with open(src, "rb") as f:
            fd = os.open(dest, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o644)
            try:
                return stream(f, lambda mv: os.write(fd, mv))
            finally:
                os.close(fd)
    except OSError as e:
        raise ProvError(f"{src}: {e.strerror}") from None


SCRATCH = "prov-replay-"  # + the pid of the replay that made it


def sweep_stale(scratch_base: str | None = None) -> list[str]:
    """Remove what replays killed outright (SIGKILL: no `finally` ran) left: their capped
    filesystems, wherever they were mounted, and their scratch in this run's scratch base."""
    gone, unmounted = [], set()
    pattern = re.compile(rf"^(.*/{SCRATCH}(\d+)-[^/]+)/(w|out)$")
    octal = re.compile(rb"\\([0-7]{3})")
    try:
        with open("/proc/self/mountinfo", "rb") as f:  # bytes: a mount point may be any name
            points = [os.fsdecode(octal.sub(lambda m: bytes([int(m.group(1), 8) & 0xFF]), line.split()[4]))
                      for line in f if len(line.split()) > 4]
    except OSError:
        points = []
    for mp in points:
        m = pattern.match(mp)
        if m and not pid_alive(int(m.group(2))):
            unmount(Path(mp))
            unmounted.add(mp)
            gone.append(m.group(1))
    base = scratch_base or tempfile.gettempdir()
    try:
        names = [n for n in os.listdir(base) if n.startswith(SCRATCH)]
    except OSError:
        names = []
    for n in names:
        pid = n[len(SCRATCH):].split("-", 1)[0]
        if pid.isdigit() and not pid_alive(int(pid)):
            gone.append(os.path.join(base, n))
    for d in dict.fromkeys(gone):
        if not any(p.startswith(d + "/") for p in points if p not in unmounted):  # never under a live mount
            remove_tree(d)
    return gone


def _upstream_facts(digest: Digest, info, files, views: dict[str, View]) -> dict:
    """What the record says of the stored upstream: its tree, commit, LFS files, and what no phase saw."""
    seen = {r for v in views.values() for r in v.upstream}
    ignored = sorted(set(files) - seen) + (info.excluded if info else [])
    return {"tree": {"sha256": digest.sha256, "blake3": digest.blake3, "size": digest.size},
            "commit": info.commit if info else None, "lfs": info.lfs if info else {}, "ignored": ignored}


def _place_writable(scratch: Path, layout: Layout, inflate_cap: int, entries: int, limits: Limits,
                    mounts: list[Path] | None) -> None:
    """archive/ and inflated/ on a filesystem of exactly inflate's cap, the report's directory on one
    of evaluate's (`mounts` collects them for the unmount); where none can be made (not root, or
    --keep-scratch, whose files must outlive the run) they stay in scratch under the watchdog."""
    if mounts is not None:
        w = scratch / "w"
        w.mkdir()
        if mount_capped(w, inflate_cap, limits.max_entries + entries + 16):
            mounts.append(w)
            layout.writable = w
            shutil.copytree(scratch / "unzipped", w / "archive", symlinks=True)
            remove_tree(scratch / "unzipped")
            (w / "inflated").mkdir()
            for d in ("archive", "inflated"):  # mount points in the read-only runtime copy
                (layout.runtime_copy / d).mkdir()
    if layout.writable is None:
        os.rename(scratch / "unzipped", layout.runtime_copy / "archive")
        (layout.runtime_copy / "inflated").mkdir()
    layout.out.mkdir()
    if mounts is not None and mount_capped(layout.out, limits.evaluate_writes, 1024):
        mounts.append(layout.out)


def check_outputs(inflated: Path, names: list[str], want: int, max_entries: int) -> Check:
    """Every .raw a regular file of the right size (lstat: a planted link is refused, never followed),
    and the rest of inflated/ shallow and small enough to walk."""
    for n in names:
        raw = inflated / (os.path.splitext(n)[0] + ".raw")
        try:
            st = os.lstat(raw)
        except FileNotFoundError:
            raise ReplayFailed(f"inflate: produced no inflated/{raw.name}") from None
        if not stat.S_ISREG(st.st_mode):
            what = "a symlink" if stat.S_ISLNK(st.st_mode) else "not a regular file"
            raise ReplayFailed(f"inflate: inflated/{raw.name} is {what}; outputs must be regular files")
        if st.st_size != want:
            raise ReplayFailed(f"inflate: inflated/{raw.name} has {st.st_size:,} bytes, expected {want:,}")
    todo, entries = [(os.fsencode(inflated), 0)], 0
    while todo:
        d, depth = todo.pop()
        if depth > MAX_OUTPUT_DEPTH:
            raise ReplayFailed(f"inflate: inflated/ nests deeper than {MAX_OUTPUT_DEPTH} levels")
        with os.scandir(d) as it:
            for e in it:
                entries += 1
                if entries > max_entries:
                    raise ReplayFailed(f"inflate: inflated/ holds more than {max_entries:,} entries")
                if e.is_dir(follow_symlinks=False):
                    todo.append((e.path, depth + 1))
                elif not (e.is_file(follow_symlinks=False) or e.is_symlink()):
                    raise ReplayFailed(f"inflate: inflated/ holds a special file "
                                       f"({os.fsdecode(e.path)[len(str(inflated)) + 1:]})")
    return Check("inflated_outputs", True, f"{len(names)} .raw file(s) of {want:,} bytes")


def read_report(out: Path) -> bytes:
    """report.txt from a directory only the evaluator could write, never through a link."""
    try:
        fd = os.open(out / "report.txt", os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK)
    except FileNotFoundError:
        raise ReplayFailed("evaluate: wrote no report.txt") from None
    except OSError as e:
        raise ReplayFailed(f"evaluate: report.txt cannot be read safely ({e.strerror})") from None
    with os.fdopen(fd, "rb") as f:
        st = os.fstat(f.fileno())
        if not stat.S_ISREG(st.st_mode) or st.st_size > rules.MAX_REPORT_BYTES:
            raise ReplayFailed("evaluate: report.txt is not a regular file of a report's size")
        return f.read(rules.MAX_REPORT_BYTES + 1)


def _background() -> None:
    """Host work beside a phase yields to it: this thread runs at the lowest priority (Linux
    lets a thread have its own nice value)."""
    try:
        os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), 19)
    except (OSError, AttributeError):
        pass


def _load_record_code() -> None:
    _background()
    import provenance.records.adjudicate  # noqa: F401


def _frame_pngs_beside(*args) -> dict:
    _background()  # the frames are the pool's last job: its thread ends with the replay
    return frame_pngs(*args)


def replay(store, archive: str | Path, runtime: str | Path, upstream: str | Path, name: str | None = None,
           device: str = "cpu", sandboxed: bool = True, limits: Limits = Limits(),
           progress: Callable[[str], None] | None = None, scratch_base: str | None = None,
           keep_scratch: bool = False, intake_limits: intake.IntakeLimits = intake.IntakeLimits(),
           python: Interpreter | None = None) -> ReplayResult:
    """`python`: the interpreter inflate and evaluate run (the upstream's own environment, `prov upstream
    env`); ours by default."""
    lock = threading.Lock()  # two phases may report at once

    def say(msg: str) -> None:
        if progress:
            with lock:
                progress(msg)
    runtime = Path(runtime)
    if device not in ("cpu", "cuda"):
        raise ProvError(f"--device {device}: must be cpu or cuda")
    name = name or default_name(runtime)
    if not name.isidentifier():
        raise ProvError(f"--name {name!r}: must be a Python identifier (it becomes submissions.<name>)")
    for reserved in ("archive", "inflated", "archive.zip"):
        if os.path.lexists(runtime / reserved):
            raise ProvError(f"{runtime}: runtime tree ships {reserved!r}, which the evaluator writes")
    with terminate_on_signals():  # SIGTERM and SIGHUP clean up as Ctrl-C does
        return _replay(store, archive, runtime, upstream, name, device, sandboxed, limits, say,
                       scratch_base, keep_scratch, intake_limits, python or Interpreter.current())


def _replay(store, archive, runtime, upstream_spec, name, device, sandboxed, limits, say, scratch_base,
            keep_scratch, intake_limits, python: Interpreter) -> ReplayResult:
    sweep_stale(scratch_base)
    scratch = Path(tempfile.mkdtemp(prefix=f"{SCRATCH}{os.getpid()}-", dir=scratch_base))
    mounts: list[Path] = []
    try:
        say("intake: copying archive.zip into scratch and unzipping it safely")
        staged = scratch / "archive.zip"
        _stage(archive, staged)
        intake.extract(staged, scratch / "unzipped", intake_limits, label=str(archive))
        say("storing the upstream's evaluator (only what the store holds runs)")
        up_digest, up_info = upstream_mod.obtain(store, upstream_spec, str(scratch))
        upstream = scratch / "up"
        upstream_mod.export_read_only(store, up_digest, upstream)  # fresh, re-hashed on the way out
        if not (upstream / "evaluate.py").is_file():
            raise ProvError(f"upstream {up_digest.sha256[:12]}: not an upstream checkout (no evaluate.py)")
        names_file = upstream / NAMES_FILE
        if not names_file.is_file():
            raise ProvError(f"upstream {up_digest.sha256[:12]}: no {NAMES_FILE}")
        files = upstream_mod.file_digests(store, up_digest)  # the export's digests, as the store has them
        profile = detect_profile(upstream, files)
        pointers = upstream_mod.lfs_pointers(profile, upstream)
        if pointers:
            raise ProvError(f"upstream {up_digest.sha256[:12]}: git-LFS pointers, not the files: {', '.join(pointers)} "
                            "(run `git lfs pull` in the checkout and store it again; for tests, labelled stand-ins: "
                            "scripts/official_standins.py)")
        names = [n.strip() for n in names_file.read_text().splitlines() if n.strip()]
        want = profile.frames * profile.height * profile.width * 3
        say(f"hashing archive and runtime into {store.root}")
        runtime_d = store.add_as(runtime, "tree", "runtime")
        archive_d = store.add_as(staged, "file", "archive")
        layout = _scratch_layout(scratch, upstream, name, sandboxed)
        store.export(runtime_d.blake3, layout.runtime_copy)  # re-hashed on the way out
        store.copy_out(archive_d.blake3, layout.runtime_copy / "archive.zip")
        unzipped, entries = written_bytes([scratch / "unzipped"], limits.max_entries)
        inflate_cap = unzipped + entries * PAGE + want * len(names) + limits.write_margin
        _place_writable(scratch, layout, inflate_cap, entries, limits, mounts if sandboxed and not keep_scratch else None)
        logs_dir = scratch / "logs"
        logs_dir.mkdir()
        views = phase_views(profile, limits, inflate_cap)
        box = Sandbox(layout, device, limits, sandboxed, python)
        sub, up = str(layout.submission), str(layout.upstream_inside)
        inflated_dir = layout.writable_dir("inflated")

        def run(label: str, argv: list[str]) -> PhaseResult:
            say(f"{label}: running{' in the sandbox' if sandboxed else ' WITHOUT a sandbox'}")
            r = box.run(label, argv, logs_dir, views[label])
            say(f"{label}: {'done' if r.ok else 'FAILED'} in {r.wall:.1f} s")
            return r

        def require(r: PhaseResult) -> PhaseResult:
            if not r.ok:
                last = (r.stderr.decode("utf-8", "replace").strip().splitlines() or [""])[-1][:300]
                raise ReplayFailed(f"{r.name}: {r.reason}" + (f": {last}" if last else ""))
            return r

        # Independent work overlaps: the probe runs beside inflate, the frame illustrations are made
        # on the host while the evaluator runs (inflate's processes are gone by then), and the
        # record's code (pydantic: a tenth of a second) loads while the sandbox works.
        with helper_threads():
            threading.Thread(target=_load_record_code, daemon=True).start()
        with ThreadPoolExecutor(max_workers=1) as pool:
            probe_argv = [python.executable, "-I", "-c", PROBE, device]
            with helper_threads():  # its one worker is made here
                probe_job = pool.submit(run, "probe", probe_argv)
            inflate = require(run("inflate", ["bash", f"{sub}/inflate.sh", f"{sub}/archive", f"{sub}/inflated",
                                              f"{up}/{NAMES_FILE}"]))
            probe = probe_job.result()
            if not probe.ok:
                # Both phases run as one host user, so an inflate that exhausts its process or memory
                # limits can starve the probe beside it: the probe gets its verdict alone.
                probe = run("probe", probe_argv)
            require(probe)
            raw_check = check_outputs(inflated_dir, names, want, limits.max_entries)
            frames_job = pool.submit(_frame_pngs_beside, profile, upstream, inflated_dir, names)
            evaluate = require(run("evaluate", [
                python.executable, "-s", "evaluate.py", "--submission-dir", sub, "--uncompressed-dir", f"{up}/videos",
                "--report", f"{box.out_inside}/report.txt", "--video-names-file", f"{up}/{NAMES_FILE}",
                "--device", device]))
            pngs = frames_job.result()
        phases = [probe, inflate, evaluate]
        try:
            env_seen = json.loads(probe.stdout.decode().strip().splitlines()[-1])
        except (ValueError, IndexError):
            raise ReplayFailed("probe: printed no environment") from None
        report = read_report(layout.out)
        from provenance.core import tree as treemod
        inflated = treemod.walk(inflated_dir, lambda p, s: hash_file(p), allow_unsafe_links=True)
        log_blobs = {}
        with store.batch() as b:
            for r in phases:
                log_blobs[f"{r.name}.stdout"] = b.put_bytes(r.stdout, "blob")
                log_blobs[f"{r.name}.stderr"] = b.put_bytes(r.stderr, "blob")
        from provenance.records.adjudicate import adjudicate_report
        from provenance.records.models import Environment, PhaseView, SandboxRecord
        env = Environment(device=device, gpu_model=env_seen.get("gpu_model"), driver=env_seen.get("driver"),
                          cuda=env_seen.get("cuda"), torch=env_seen.get("torch"), python=env_seen.get("python"),
                          interpreter=("a venv" if python.is_venv else "a base install")
                          + (", the one prov runs in" if python == Interpreter.current() else ", given with --python"),
                          platform=env_seen.get("platform"), sandboxed=sandboxed,
                          packages=env_seen.get("packages"), env_sha256=env_seen.get("env_sha256"),
                          env_foreign=env_seen.get("env_foreign"),
                          # the allow-list as used, with this machine's Python location left out
                          sandbox_env={k: v.replace(box.python_bin, "${PYTHON_BIN}") for k, v in box.env.items()})
        sandbox = SandboxRecord(
            phases={k: PhaseView(**v.describe(upstream, files)) for k, v in views.items()} if sandboxed else {},
            limits={k: v for k, v in limits.as_dict().items() if v is not None},
            no_new_user_namespaces=box.seccomp is not None, kept_by={r.name: r.kept_by for r in phases})
        kernel = [r.name for r in phases if r.kept_by != "watchdog"]
        capped_fs = layout.writable is not None and len(mounts) == 2
        why_not = ("no cgroup could be made (run as root on a machine with cgroups)" if len(kernel) < len(phases)
                   else None if capped_fs else "writes were not on filesystems of their caps (not root, or --keep-scratch)")
        kept = Check("kernel_limits", why_not is None,
                     why_not + ": limits were kept by a watchdog only; grade capped at B" if why_not else
                     "memory and processes kept by the kernel (cgroup-v1) in every phase, writes on filesystems of "
                     "exactly their caps", "flag")
        say("adjudicating")
        record, digest, checks = adjudicate_report(
            store, report, archive_d, runtime_d, upstream, profile, source="replay", environment=env,
            timings={r.name: round(r.wall, 3) for r in phases}, inflated=inflated, label=name,
            extra_checks=[raw_check, kept] + ([] if sandboxed else [Check("sandboxed", False,
                                                                    "replayed with --no-sandbox: grade capped below A",
                                                                    "flag")]),
            logs=log_blobs, sandbox=sandbox, upstream_facts=_upstream_facts(up_digest, up_info, files, views),
            frames=keep_frames(store, profile, upstream, inflated_dir, names, pngs))
        return ReplayResult(record, digest, checks, phases)
    finally:
        for m in reversed(mounts):
            unmount(m)
        if not keep_scratch:
            remove_tree(scratch)
        else:  # out of the stale sweep's way (it takes prov-replay-<dead pid>-*), and said where
            keep_at = scratch.with_name("prov-kept-" + scratch.name[len(SCRATCH):])
            os.rename(scratch, keep_at)
            say(f"scratch kept at {keep_at}")
