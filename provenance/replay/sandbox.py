"""The bubblewrap sandbox that inflate.sh and the evaluator run in.

Each phase sees a root built from scratch: /usr and the loader's files read-only, the Python
installation read-only, the upstream checkout read-only at its own path, the runtime copy
read-only at <upstream>/submissions/<name>/, a size-capped /tmp, and nothing else: no home, no
store, no keys. What else a phase sees is its `View`: inflate writes archive/ and inflated/ and
never sees what the profile hides (ground truth, scorer weights: absent, not merely
unreadable); evaluate sees everything of the upstream, the submission read-only, and writes
only its own output directory. All namespaces are unshared, so there is no network; a seccomp
filter refuses new user namespaces, so nothing inside regains capabilities. When the caller
is root, the user namespace is kept and the command drops to an unprivileged uid of its own with
no capabilities, so that process-count limits bind (the kernel exempts uid 0 from RLIMIT_NPROC)
and count this sandbox alone: RLIMIT_NPROC counts a uid's processes host-wide, so a fork bomb
under a shared uid (nobody) would starve every other sandbox on the machine.

Limits bind the whole phase. The kernel keeps them where it can (cgroup.py: memory of every kind,
processes, CPUs, and a kill that reaches every member); a watchdog sums the bytes under the
writable directories, and where no cgroup can be made it also sums the resident memory of every
process plus /tmp, and the record says the limits were the watchdog's (the grade is capped). One
wall-clock budget covers the whole evaluation, as the official runner's 30 minutes do.
"""


from __future__ import annotations

import json
import os
import resource
import secrets
import shutil
import signal
import stat
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path

from provenance.core.errors import MissingEnvironment, ProvError
from provenance.replay.cgroup import Cgroup

# uids no account uses (above systemd's container ranges, below the 32-bit overflow uid)
UID_BASE, UID_SPAN = 0x7000_0000, 1 << 24
# What a legitimate program reads of /etc (the loader's cache for ffmpeg and shared libraries, name
# service for `id`, time zone, mime types), bound read-only into an /etc that is otherwise empty;
# passwd and group are written for the sandbox, so no host account shows.
ETC_FILES = ("ld.so.cache", "ld.so.conf", "ld.so.conf.d", "alternatives", "nsswitch.conf",
             "localtime", "os-release", "debian_version", "mime.types")
LOG_TAIL = 1 << 20


MiB, GiB = 1 << 20, 1 << 30


@dataclass(frozen=True)
class Limits:
    """Per-phase limits. Defaults follow the official runners (CONTEST.md): 30 minutes, and the
    16 GB of RAM of the CPU runner for everything a phase holds at once."""
    timeout: float = 1800.0  # wall clock for the whole evaluation, every phase together: the official limit
    address_space: int | None = 16 * GiB  # per process; None for CUDA, whose drivers reserve vast address space
    file_size: int = 16 * GiB  # per file; a phase's write cap lowers it
    processes: int = 1024  # threads count too (torch starts one per core)
    cpu_seconds: int | None = None  # default: the wall-clock timeout
    memory: int = 16 * GiB  # every process of the phase together, plus its /tmp
    tmp_size: int = 2 * GiB  # the phase's private /tmp (a tmpfs, so it is memory)
    write_margin: int = 64 * MiB  # inflate may write the expected .raw bytes plus this
    evaluate_writes: int = 64 * MiB  # evaluate writes its report and nothing else of size
    max_entries: int = 100_000  # files and directories a phase may leave in what it writes
    cpus: int = 4  # the official CPU runner's count (fewer where the machine has fewer)
    poll: float = 0.05  # how often the watchdog looks

    def as_dict(self) -> dict:
        return {k: getattr(self, k) for k in ("timeout", "address_space", "file_size", "processes",
                                              "memory", "tmp_size", "write_margin", "evaluate_writes", "cpus")}


@dataclass(frozen=True)
class View:
    """What one phase sees besides the system, as an allow-list: the `upstream` files it lists (each
    bound alone, read-only), of the submission all of its runtime copy ("all"), only archive.zip and
    inflated/ ("outputs") or nothing ("none"), `writable` subdirectories of the runtime copy, and
    (`out`) its own output directory. A file that no list names is in no phase."""
    name: str
    upstream: tuple[str, ...] = ()
    submission: str = "all"
    writable: tuple[str, ...] = ()
    out: bool = False
    write_cap: int | None = None  # bytes the phase may leave in what it writes

    def seen(self, upstream: Path) -> list[str]:
        """The listed files the upstream holds as regular files, under real directories: bwrap would
        bind a link's target, so a listed name that is a link (frame_utils.py -> videos/0.mkv) is
        in no phase."""
        return sorted(r for r in self.upstream if _plain_file(upstream, r))

    def describe(self, upstream: Path, digests: dict[str, str]) -> dict:
        """In symbolic paths. `digests` (path -> sha256 of every file of the stored upstream, as the
        store knows them: the export was re-hashed on its way out) gives what it saw and did not."""
        import hashlib
        import json
        seen = self.seen(upstream)
        listing = [[r, digests[r]] for r in seen]
        sub = {"all": ["submission/ (read-only)"], "outputs": ["submission/archive.zip (read-only)",
                                                                 "submission/inflated/ (read-only)"]}.get(self.submission, [])
        return {"sees": [f"upstream/{r}" for r in seen] + sub
                + ["/usr, /etc (loader files), python (read-only)", "/tmp (private tmpfs)"],
                "writes": [f"submission/{d}/" for d in self.writable] + (["output/"] if self.out else []),
                "hidden": [f"upstream/{r}" for r in sorted(set(digests) - set(seen))],
                "write_cap": self.write_cap,
                "sees_sha256": hashlib.sha256(json.dumps(listing, separators=(",", ":")).encode()).hexdigest()}


def _plain_file(root: Path, rel: str) -> bool:
    p = root
    parts = rel.split("/")
    for i, part in enumerate(parts):
        p = p / part
        try:
            mode = os.lstat(p).st_mode
        except OSError:
            return False
        if not (stat.S_ISREG(mode) if i == len(parts) - 1 else stat.S_ISDIR(mode)):
            return False
    return True


@dataclass
class PhaseResult:
    name: str
    argv: list[str]
    returncode: int | None
    wall: float
    reason: str | None  # why it did not succeed, in words
    stdout: bytes = b""
    stderr: bytes = b""
    peak_memory: int = 0
    written: int = 0
    kept_by: str = "watchdog"  # or the kernel's mechanism ("cgroup-v1") that kept memory and processes

    @property
    def ok(self) -> bool:
        return self.returncode == 0 and self.reason is None


@dataclass
class Layout:
    """Where things are, outside and inside. Without a sandbox, `upstream` is a scratch view of
    the checkout (a symlink per entry) with the runtime copy really at submissions/<name>."""
    upstream: Path  # the fresh export of the stored upstream (read-only inside, at `inside`)
    name: str
    runtime_copy: Path  # scratch copy of the runtime tree; holds archive/ and inflated/
    out: Path  # scratch dir for the report (writable inside at /prov-out, by the evaluate phase only)
    inside_out: str = "/prov-out"
    writable: Path | None = None  # where archive/ and inflated/ really live (a capped filesystem), if not in runtime_copy
    inside: str | None = None  # the upstream's fixed path inside ("/upstream"): reports alike on every machine

    def writable_dir(self, d: str) -> Path:
        return (self.writable or self.runtime_copy) / d

    @property
    def upstream_inside(self) -> Path:
        return Path(self.inside) if self.inside else self.upstream

    @property
    def submission(self) -> Path:
        """The runtime's place as the phases see it: <upstream>/submissions/<name>."""
        return self.upstream_inside / "submissions" / self.name


def bwrap_path() -> str:
    path = shutil.which("bwrap")
    if not path:
        raise MissingEnvironment("bubblewrap is not installed: apt-get install bubblewrap "
                                 "(or pass --no-sandbox; the record will say so and the grade is capped)")
    return path


def env_allowlist(device: str, python_bin: str) -> dict[str, str]:
    env = {"PATH": f"{python_bin}:/usr/local/bin:/usr/bin:/bin", "HOME": "/tmp", "TMPDIR": "/tmp",
           "LANG": "C.UTF-8", "LC_ALL": "C.UTF-8", "PYTHONDONTWRITEBYTECODE": "1", "PYTHONHASHSEED": "0",
           "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    if device == "cuda" and os.environ.get("CUDA_VISIBLE_DEVICES"):
        env["CUDA_VISIBLE_DEVICES"] = os.environ["CUDA_VISIBLE_DEVICES"]
    return env


@dataclass(frozen=True)
class Interpreter:
    """The Python the phases run: ours by default, or the upstream's own environment (`--python`)."""
    executable: str  # as found in the venv's bin (not resolved: resolving it would lose site-packages)
    prefix: str
    base_prefix: str

    @property
    def bin_dir(self) -> str:
        return os.path.dirname(self.executable)

    @property
    def is_venv(self) -> bool:
        return os.path.realpath(self.prefix) != os.path.realpath(self.base_prefix)

    def roots(self) -> list[str]:
        """What the sandbox binds read-only at the same paths for this Python to run (never /usr: bound
        whole): the venv, and of the base installation its bin/ and lib/. A root that is / or holds the
        home, the working directory or the temporary directory (scratch, the store, keys) is refused:
        a Python installed there would show them to every phase."""
        base = os.path.realpath(self.base_prefix)
        roots = {os.path.realpath(self.prefix) if self.is_venv else os.path.join(base, "lib"),
                 os.path.join(base, "bin"), os.path.join(base, "lib"), os.path.dirname(os.path.realpath(self.executable))}
        roots = {r for r in roots if os.path.isdir(r) and not r.startswith("/usr/")}
        guarded = {os.path.realpath(p) for p in (os.path.expanduser("~"), os.getcwd(), tempfile.gettempdir())}
        for r in roots:
            if r == "/" or any(g == r or g.startswith(r.rstrip("/") + "/") for g in guarded):
                raise ProvError(f"--python: its installation at {r} holds the home, working or temporary "
                                "directory: a phase would see them (use a venv elsewhere)")
        return sorted(roots)

    @classmethod
    def current(cls) -> "Interpreter":
        return cls(sys.executable, sys.prefix, sys.base_prefix)

    @classmethod
    def at(cls, path: str | os.PathLike) -> "Interpreter":
        """A venv folder or an interpreter, asked where it lives (in isolated mode: nothing of ours runs)."""
        path = os.path.abspath(path)
        exe = os.path.join(path, "bin", "python") if os.path.isdir(path) else path
        if not os.path.isfile(exe) or not os.access(exe, os.X_OK):
            raise ProvError(f"--python {path}: no Python interpreter there (give a venv folder or its bin/python)")
        try:  # -S: no site, so no .pth of that environment runs on the host
            r = subprocess.run([exe, "-I", "-S", "-c", "import json, sys; print(json.dumps(sys.base_prefix))"],
                               capture_output=True, text=True, timeout=60)
            base = json.loads(r.stdout.strip().splitlines()[-1])
            if not isinstance(base, str):
                raise ValueError
        except (ValueError, IndexError, OSError, subprocess.TimeoutExpired):
            raise ProvError(f"--python {path}: does not run as Python") from None
        venv = os.path.dirname(os.path.dirname(exe))  # what site would make sys.prefix: the venv of pyvenv.cfg
        py = cls(exe, venv if os.path.isfile(os.path.join(venv, "pyvenv.cfg")) else base, base)
        py.roots()  # refused here, before anything runs
        return py


# -- no new user namespaces inside: a classic-BPF seccomp filter for bwrap --seccomp ---------------

_ARCH = {  # AUDIT_ARCH and syscall numbers of unshare, clone, clone3, setns
    "x86_64": (0xC000003E, 272, 56, 435, 308),
    "aarch64": (0xC00000B7, 97, 220, 435, 268),
}
CLONE_NEWUSER = 0x10000000


def seccomp_program() -> bytes | None:
    """unshare/clone with CLONE_NEWUSER and setns fail with EPERM; clone3 with ENOSYS (its flags sit
    in memory a filter cannot read, and libc then falls back to clone); foreign ABIs fail."""
    import platform
    import struct
    spec = _ARCH.get(platform.machine())
    if spec is None:
        return None
    audit, unshare, clone, clone3, setns = spec
    ld, jeq, jge, jset, ret = 0x20, 0x15, 0x35, 0x45, 0x06
    allow, eperm, enosys = 0x7FFF0000, 0x00050000 | 1, 0x00050000 | 38
    prog = [
        (ld, 0, 0, 4),             # 0: arch
        (jeq, 1, 0, audit),        # 1: native ABI -> 3
        (ret, 0, 0, eperm),        # 2
        (ld, 0, 0, 0),             # 3: syscall number
        (jge, 0, 1, 0x40000000),   # 4: x32 ABI -> 5, else 6
        (ret, 0, 0, eperm),        # 5
        (jeq, 0, 1, clone3),       # 6
        (ret, 0, 0, enosys),       # 7
        (jeq, 0, 1, setns),        # 8
        (ret, 0, 0, eperm),        # 9
        (jeq, 1, 0, unshare),      # 10: -> 12
        (jeq, 0, 3, clone),        # 11: neither -> 15
        (ld, 0, 0, 16),            # 12: low word of the first argument (the flags)
        (jset, 0, 1, CLONE_NEWUSER),  # 13
        (ret, 0, 0, eperm),        # 14
        (ret, 0, 0, allow),        # 15
    ]
    return b"".join(struct.pack("<HBBI", *i) for i in prog)


# -- the watchdog: whole-phase memory and write caps ---------------------------------------------

def _children(pid: int) -> list[int]:
    out = []
    try:
        for tid in os.listdir(f"/proc/{pid}/task"):
            with open(f"/proc/{pid}/task/{tid}/children") as f:
                out += [int(x) for x in f.read().split()]
    except OSError:
        pass
    return out


def _descendants(root: int) -> list[int]:
    seen, todo = [], [root]
    while todo:
        pid = todo.pop()
        seen.append(pid)
        todo += _children(pid)
    return seen


PAGE = os.sysconf("SC_PAGE_SIZE")


def _rss(pid: int) -> int:
    try:
        with open(f"/proc/{pid}/statm") as f:
            return int(f.read().split()[1]) * PAGE
    except (OSError, IndexError, ValueError):
        return 0


def _tmp_used(pids: list[int]) -> int:
    """Bytes in the sandbox's /tmp, seen through a sandboxed process's root. A process still on
    the host's root (bubblewrap before it pivots) is passed over: its /tmp is the host's disk."""
    host = os.stat("/")
    for pid in pids[1:]:
        try:
            root = os.stat(f"/proc/{pid}/root")
            if (root.st_dev, root.st_ino) == (host.st_dev, host.st_ino):
                continue
            v = os.statvfs(f"/proc/{pid}/root/tmp")
        except OSError:
            continue
        return (v.f_blocks - v.f_bfree) * v.f_frsize
    return 0


# -- what a phase may write lives on a filesystem of exactly its cap ----------------------------

MS_NOSUID, MS_NODEV, MNT_DETACH = 2, 4, 2


def _libc():
    import ctypes
    return ctypes.CDLL(None, use_errno=True)


def mount_capped(path: Path, size: int, inodes: int) -> bool:
    """A tmpfs of `size` bytes and `inodes` files at `path` (root only; False where it cannot be made).
    Free space is then the measure of what was written: `fallocate --keep-size`, a deleted file still
    open, an O_TMPFILE and a tree below a path too long to name all take it, and the kernel refuses
    the byte past the cap."""
    if os.geteuid() != 0:
        return False
    opts = f"size={max(size, PAGE)},nr_inodes={inodes},mode=0755".encode()
    return _libc().mount(b"tmpfs", os.fsencode(path), b"tmpfs", MS_NOSUID | MS_NODEV, opts) == 0


def unmount(path: Path) -> None:
    _libc().umount2(os.fsencode(path), MNT_DETACH)


def fs_used(path: Path) -> tuple[int, int]:
    """(bytes, inodes) in use on the filesystem at `path`."""
    v = os.statvfs(path)
    return (v.f_blocks - v.f_bfree) * v.f_frsize, v.f_files - v.f_ffree


def written_bytes(dirs: list[Path], max_entries: int) -> tuple[int, int]:
    """(bytes, entries) under `dirs`: apparent sizes, links not followed, iteratively."""
    total = entries = 0
    todo = [os.fsencode(d) for d in dirs]
    while todo and entries <= max_entries:
        try:
            it = os.scandir(todo.pop())
        except OSError:
            continue
        with it:
            for e in it:
                entries += 1
                try:
                    if e.is_dir(follow_symlinks=False):
                        todo.append(e.path)
                    else:
                        total += e.stat(follow_symlinks=False).st_size
                except OSError:
                    pass
    return total, entries


def _size(n: int) -> str:
    return f"{n / GiB:.2f} GiB" if n >= GiB else f"{n / MiB:.1f} MiB"


class _Watchdog(threading.Thread):
    def __init__(self, root: int, limits: Limits, dirs: list[Path], write_cap: int | None, kill, sandboxed: bool,
                 cgroup: Cgroup | None = None, capped_fs: Path | None = None):
        super().__init__(daemon=True)
        self.capped_fs = capped_fs
        self.root, self.lim, self.dirs, self.write_cap, self.kill = root, limits, dirs, write_cap, kill
        self.sandboxed, self.cgroup = sandboxed, cgroup
        self.stop = threading.Event()
        self.reason: str | None = None
        self.peak_memory = self.peak_tmp = self.written = 0

    def run(self) -> None:
        while not self.stop.wait(self.lim.poll):
            self.reason = self.look()
            if self.reason:
                self.kill()
                return

    def look(self) -> str | None:
        if self.cgroup is not None:  # the kernel keeps memory: an OOM kill anywhere ends the whole phase
            why = self.oom() or self.writes()
            return why and f"{why}; killed"
        pids = _descendants(self.root)
        tmp = _tmp_used(pids) if self.sandboxed else 0
        mem = sum(_rss(p) for p in pids) + tmp
        self.peak_memory, self.peak_tmp = max(self.peak_memory, mem), max(self.peak_tmp, tmp)
        if mem > self.lim.memory:
            return (f"memory cap: the phase's processes and /tmp held {_size(mem)} ({mem:,} bytes), "
                    f"cap {self.lim.memory:,} bytes; killed")
        why = self.writes()
        return why and f"{why}; killed"

    def oom(self) -> str | None:
        if self.cgroup is None or not self.cgroup.oom_kills():
            return None
        self.peak_memory = max(self.peak_memory, self.cgroup.peak_memory())
        return (f"memory cap: the kernel's out-of-memory killer fired in the phase's cgroup "
                f"(cap {self.lim.memory:,} bytes, peak {self.peak_memory:,})")

    def writes(self) -> str | None:
        """The write and entry caps, over what the phase's writable directories hold now: the
        filesystem's own count where they live on one of exactly the cap (mount_capped)."""
        if self.write_cap is None or not self.dirs:
            return None
        if self.capped_fs is not None:
            try:
                n, entries = fs_used(self.capped_fs)
            except OSError:  # gone: the run is over
                return None
            self.written = max(self.written, n)
            if n + PAGE > self.write_cap:
                return f"write cap: the phase filled its filesystem of {self.write_cap:,} bytes"
            if entries >= self.lim.max_entries:
                return f"entry cap: the phase made {self.lim.max_entries:,} files and directories"
            return None
        n, entries = written_bytes(self.dirs, self.lim.max_entries)
        self.written = max(self.written, n)
        if n > self.write_cap:
            return f"write cap: the phase wrote {n:,} bytes, cap {self.write_cap:,} bytes"
        if entries > self.lim.max_entries:
            return f"entry cap: the phase made more than {self.lim.max_entries:,} files and directories"
        return None


class Sandbox:
    def __init__(self, layout: Layout, device: str = "cpu", limits: Limits = Limits(), enabled: bool = True,
                 python: Interpreter | None = None):
        self.l, self.device, self.limits, self.enabled = layout, device, limits, enabled
        self.as_root = os.geteuid() == 0
        self.python = python or Interpreter.current()
        self.python_bin = self.python.bin_dir
        self.env = env_allowlist(device, self.python_bin)
        self.seccomp = seccomp_program() if enabled else None
        if enabled:
            self.bwrap = bwrap_path()
        self.deadline = time.monotonic() + limits.timeout  # one budget for every phase of the evaluation
        # one uid for the submission's phases (they share its files), another for our own probe
        self.uid, self.probe_uid = (UID_BASE + secrets.randbelow(UID_SPAN) for _ in range(2))
        if self.as_root and enabled:  # the sandboxed user must be able to write its outputs
            for d in (layout.writable_dir("archive"), layout.writable_dir("inflated"), layout.out):
                if d.is_dir():
                    os.chown(d, self.uid, self.uid)
            # and owns what unzip made, as the user who runs `unzip -o` does (a 0600 entry stays readable)
            for top, dirs, files in os.walk(layout.writable_dir("archive")):
                for n in dirs + files:
                    os.lchown(os.path.join(top, n), self.uid, self.uid)

    # -- the command line -------------------------------------------------------------------
    @property
    def out_inside(self) -> str:
        """The writable output directory as the sandboxed command sees it."""
        return self.l.inside_out if self.enabled else str(self.l.out)

    def etc_accounts(self, view: View) -> dict[str, bytes]:
        """/etc/passwd and /etc/group as the phase sees them: root, nobody and the phase's own uid."""
        uid = (self.probe_uid if view.name == "probe" else self.uid) if self.as_root else os.getuid()
        return {"/etc/passwd": (f"root:x:0:0:root:/root:/bin/sh\nsandbox:x:{uid}:{uid}:sandbox:/tmp:/bin/sh\n"
                                "nobody:x:65534:65534:nobody:/nonexistent:/usr/sbin/nologin\n").encode(),
                "/etc/group": f"root:x:0:\nsandbox:x:{uid}:\nnogroup:x:65534:\n".encode()}

    def bwrap_args(self, view: View, seccomp_fd: int | None = None, data_fds: dict[str, int] | None = None) -> list[str]:
        l = self.l
        a = [self.bwrap, "--die-with-parent", "--new-session"]
        if self.as_root:
            a += ["--unshare-ipc", "--unshare-pid", "--unshare-net", "--unshare-uts", "--unshare-cgroup-try"]
        else:
            a += ["--unshare-all"]
        if seccomp_fd is not None:
            a += ["--seccomp", str(seccomp_fd)]
        a += ["--ro-bind", "/usr", "/usr"]
        for d in ("/bin", "/sbin", "/lib", "/lib64", "/lib32", "/libx32"):
            if os.path.islink(d):
                a += ["--symlink", os.readlink(d), d]
            elif os.path.isdir(d):
                a += ["--ro-bind", d, d]
        a += ["--perms", "0755", "--dir", "/etc"]  # bwrap would make it 0700: unreadable to the phase's uid
        for f in ETC_FILES:
            if os.path.exists(f"/etc/{f}"):
                a += ["--ro-bind", f"/etc/{f}", f"/etc/{f}"]
        for dest, fd in (data_fds or {}).items():
            a += ["--perms", "0644", "--ro-bind-data", str(fd), dest]
        a += ["--dev", "/dev", "--proc", "/proc", "--perms", "1777", "--size", str(self.limits.tmp_size),
              "--tmpfs", "/tmp"]
        binds: list[tuple[str, str, str]] = [("--ro-bind", r, r) for r in self.python.roots()]
        up_in = str(l.upstream_inside)
        for rel in view.seen(l.upstream):  # each allowed file alone: nothing beside it comes along
            binds.append(("--ro-bind", str(l.upstream / rel), f"{up_in}/{rel}"))
        sub = str(l.submission)
        if view.submission == "all":
            binds.append(("--ro-bind", str(l.runtime_copy), sub))
            binds += [("--bind", str(l.writable_dir(d)), f"{sub}/{d}") for d in view.writable]
            if l.writable is not None:  # what inflate wrote elsewhere, read-only to the phases after it
                binds += [("--ro-bind", str(l.writable_dir(d)), f"{sub}/{d}") for d in ("archive", "inflated")
                          if d not in view.writable and l.writable_dir(d).is_dir()]
        elif view.submission == "outputs":  # the evaluator reads these two and nothing else of the submission
            binds += [("--ro-bind", str(l.runtime_copy / "archive.zip"), f"{sub}/archive.zip"),
                      ("--ro-bind", str(l.writable_dir("inflated")), f"{sub}/inflated")]
        if view.out:
            binds.append(("--bind", str(l.out), l.inside_out))
        # bwrap makes missing mount points 0700, which the unprivileged user cannot cross
        made = {"/", "/usr", "/dev", "/proc", "/tmp", "/etc"}
        for _, _, dst in binds:
            parts = Path(dst).parts
            for k in range(2, len(parts)):
                anc = str(Path(*parts[:k]))
                if anc not in made:
                    made.add(anc)
                    a += ["--perms", "0755", "--dir", anc]
        for flag, src, dst in binds:
            a += [flag, src, dst]
        if view.submission == "all" and l.inside:  # two real inflates run <root>/.venv/bin/python: the phases'
            py = self.python
            if py.is_venv:  # a venv: the same one, read-only, where they look
                a += ["--ro-bind", py.prefix, f"{up_in}/.venv"]
            else:
                a += ["--perms", "0755", "--dir", f"{up_in}/.venv", "--perms", "0755", "--dir", f"{up_in}/.venv/bin",
                      "--symlink", py.executable, f"{up_in}/.venv/bin/python"]
        if self.device == "cuda":
            for dev in sorted(Path("/dev").glob("nvidia*")):
                a += ["--dev-bind", str(dev), str(dev)]
            if os.path.isdir("/sys"):
                a += ["--ro-bind", "/sys", "/sys"]
        a += ["--clearenv"]
        for k, v in self.env.items():
            a += ["--setenv", k, v]
        a += ["--chdir", up_in if view.upstream or view.submission != "none" else "/tmp", "--"]
        if self.as_root:
            uid = self.probe_uid if view.name == "probe" else self.uid
            a += ["setpriv", f"--reuid={uid}", f"--regid={uid}", "--clear-groups",
                  "--inh-caps=-all", "--bounding-set=-all", "--"]
        return a

    def _limits(self, file_size: int, cgroup: Cgroup | None) -> None:
        """Runs in the child before exec: inherited by everything below, no child starts outside."""
        lim = self.limits
        os.setpgrp()
        if cgroup is not None:
            cgroup.join()
        files = min(4096, resource.getrlimit(resource.RLIMIT_NOFILE)[1])
        resource.setrlimit(resource.RLIMIT_NOFILE, (files, files))
        if lim.address_space:
            resource.setrlimit(resource.RLIMIT_AS, (lim.address_space, lim.address_space))
        cpu = int(lim.cpu_seconds or lim.timeout) + 1
        resource.setrlimit(resource.RLIMIT_CPU, (cpu, cpu))
        resource.setrlimit(resource.RLIMIT_FSIZE, (file_size, file_size))
        resource.setrlimit(resource.RLIMIT_NPROC, (lim.processes, lim.processes))
        resource.setrlimit(resource.RLIMIT_CORE, (0, 0))

    def writable_dirs(self, view: View) -> list[Path]:
        return [self.l.writable_dir(d) for d in view.writable] + ([self.l.out] if view.out else [])

    def capped_fs(self, view: View) -> Path | None:
        """The filesystem of exactly the phase's cap that holds all it may write, if there is one."""
        dirs = self.writable_dirs(view)
        if not dirs:
            return None
        tops = {self.l.writable if d != self.l.out else self.l.out for d in dirs}
        if len(tops) == 1 and None not in tops and os.path.ismount(next(iter(tops))):
            return next(iter(tops))
        return None

    # -- running a phase --------------------------------------------------------------------
    def run(self, name: str, argv: list[str], logs: Path, view: View | None = None) -> PhaseResult:
        view = view or View(name)
        fds: tuple[int, ...] = ()
        cmd, tmp_r = argv, None
        if self.enabled:
            seccomp_fd = None
            if self.seccomp:
                seccomp_fd, w = os.pipe()
                os.write(w, self.seccomp)  # a few hundred bytes: fits the pipe buffer
                os.close(w)
            data_fds = {}
            for dest, data in self.etc_accounts(view).items():  # small: each fits its pipe's buffer
                data_fds[dest], w = os.pipe()
                os.write(w, data)
                os.close(w)
            # /tmp dies with the mount namespace: the phase's last act is to say how full it was
            tmp_r, tmp_w = os.pipe()
            fds = tuple(fd for fd in (seccomp_fd, tmp_w, *data_fds.values()) if fd is not None)
            cmd = self.bwrap_args(view, seccomp_fd, data_fds) + ["bash", "-c", TMP_REPORT.format(fd=tmp_w), name] + argv
        file_size = min(self.limits.file_size, view.write_cap or self.limits.file_size)
        out_path, err_path = logs / f"{name}.stdout", logs / f"{name}.stderr"
        start = time.monotonic()
        budget = max(0.0, self.deadline - start)
        reason, dog, tails = None, None, []
        cg = Cgroup.make(name, self.limits.memory, self.limits.processes, self.limits.cpus)
        try:
            if True:  # logs come through pipes: a flood costs the host 1 MiB of each, never its disk
                p = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                     env=self.env, cwd=str(self.l.upstream), pass_fds=fds,
                                     preexec_fn=lambda: self._limits(file_size, cg))
                tails = [_Tail(p.stdout), _Tail(p.stderr)]
                dog = _Watchdog(p.pid, self.limits, self.writable_dirs(view), view.write_cap,
                                lambda: self._kill(p, cg), self.enabled, cg, self.capped_fs(view))
                dog.start()
                for fd in fds:  # the child has its copies; ours would keep the pipe open
                    os.close(fd)
                fds = ()
                # a blocking wait (Popen.wait with a timeout polls, and a phase's end would wait for
                # the next poll); the wall-clock limit is a timer that kills
                timed_out = threading.Event()

                def expire() -> None:
                    timed_out.set()
                    self._kill(p, cg)
                timer = threading.Timer(budget, expire)
                timer.daemon = True
                timer.start()
                try:
                    rc = p.wait()
                except BaseException:  # Ctrl-C, SIGTERM, SIGHUP: the phase goes before scratch does
                    self._kill(p, cg)
                    p.wait()
                    raise
                finally:
                    timer.cancel()
                if timed_out.is_set():
                    reason = (f"timed out: the evaluation's wall-clock budget of {self.limits.timeout:g} s "
                              f"ran out ({budget:.1f} s were left for this phase); killed")
                dog.stop.set()
                dog.join()
        finally:
            if dog is not None:  # on every way out, before scratch goes
                dog.stop.set()
                if dog is not threading.current_thread():
                    dog.join()
            if cg is not None:  # whatever the phase left running (a daemon, a fork) goes, then the check
                cg.kill_all()
                if dog is not None and dog.reason is None:
                    dog.reason = dog.oom() and f"{dog.oom()}; killed"
                    dog.peak_memory = max(dog.peak_memory, cg.peak_memory())
                cg.remove()
            for t in tails:  # every writer is gone now (the pid namespace or the cgroup took them)
                t.finish()
            for fd in fds:
                os.close(fd)
            if tmp_r is not None:
                used = _read_tmp_report(tmp_r)
                if dog is not None:
                    dog.peak_tmp = max(dog.peak_tmp, used)
        wall = time.monotonic() - start
        reason = dog.reason or reason
        if reason is None:  # a last look: what it left behind counts too
            reason = dog.writes()
        if reason is None and rc != 0:
            reason = _explain(rc, file_size)
            if dog.peak_tmp >= self.limits.tmp_size - MiB:
                reason += f"; /tmp reached its cap of {self.limits.tmp_size:,} bytes"
        out_path.write_bytes(tails[0].data)  # kept with the scratch for --keep-scratch
        err_path.write_bytes(tails[1].data)
        return PhaseResult(name, argv, rc, wall, reason, tails[0].data, tails[1].data,
                           dog.peak_memory, dog.written, "cgroup-v1" if cg is not None else "watchdog")

    def _kill(self, p: subprocess.Popen, cg: Cgroup | None = None) -> None:
        # bwrap dies -> its pid-1 child gets SIGKILL (--die-with-parent) -> the pid namespace and
        # every process in it go too. Without a sandbox, the process group is all we can reach.
        for target in (lambda: os.killpg(p.pid, signal.SIGKILL), lambda: p.kill()):
            try:
                target()
            except ProcessLookupError:
                pass
        if cg is not None:  # and every member, however it got away from the group
            cg.kill_all()


TMP_REPORT = '"$@"; rc=$?; stat -f -c "%b %f %S" /tmp >&{fd} 2>/dev/null; exit $rc'


def _read_tmp_report(fd: int) -> int:
    """Bytes used in /tmp as the phase's wrapper last saw them (0 if it said nothing sensible)."""
    try:
        os.set_blocking(fd, False)
        data = os.read(fd, 4096)
    except OSError:
        data = b""
    finally:
        os.close(fd)
    try:
        blocks, free, size = (int(x) for x in data.split(b"\n")[-2].split())
        return max(0, (blocks - free) * size)
    except (ValueError, IndexError):
        return 0


def _explain(rc: int, file_size: int) -> str:
    if rc < 0:
        sig = signal.Signals(-rc).name
        why = {"SIGXCPU": "CPU-time limit", "SIGXFSZ": f"file-size cap of {file_size:,} bytes", "SIGKILL": "killed",
               "SIGSEGV": "crashed"}.get(sig, "signal")
        return f"terminated by {sig} ({why})"
    if rc == 128 + signal.SIGXCPU:
        return "exceeded the CPU-time limit"
    if rc == 128 + signal.SIGXFSZ:
        return f"exceeded the file-size cap of {file_size:,} bytes"
    return f"exited with status {rc}"


class _Tail(threading.Thread):
    """Reads a phase's pipe to its end, keeping the last LOG_TAIL bytes."""

    def __init__(self, pipe):
        super().__init__(daemon=True)
        self.pipe, self.buf = pipe, bytearray()
        self.start()

    def run(self) -> None:
        fd = self.pipe.fileno()
        try:
            while chunk := os.read(fd, 1 << 16):
                self.buf += chunk
                if len(self.buf) > 2 * LOG_TAIL:
                    del self.buf[:-LOG_TAIL]
        except OSError:
            pass

    def finish(self) -> None:
        # a writer that outlived the phase (no cgroup and no sandbox to end it) cannot hold us
        self.join(5.0)
        self.pipe.close()

    @property
    def data(self) -> bytes:
        return bytes(self.buf[-LOG_TAIL:])
