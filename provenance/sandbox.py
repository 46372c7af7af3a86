"""The bubblewrap sandbox that inflate.sh and the evaluator run in.

The sandbox sees a root built from scratch: /usr and the loader's files read-only, the
Python installation read-only, the upstream checkout read-only at its own path, the
runtime copy read-only at <upstream>/submissions/<name>/ with only archive/ and inflated/
writable there, a fresh /tmp, and nothing else: no home, no store, no keys. All namespaces
are unshared, so there is no network. When the caller is root, the user namespace is
kept and the command drops to nobody with no capabilities, so that process-count limits
bind (the kernel exempts uid 0 from RLIMIT_NPROC).
"""

from __future__ import annotations

import os
import resource
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from .errors import MissingEnvironment

NOBODY = 65534
ETC_FILES = ("ld.so.cache", "ld.so.conf", "ld.so.conf.d", "alternatives", "passwd", "group", "nsswitch.conf",
             "localtime", "os-release", "debian_version", "mime.types")
LOG_TAIL = 1 << 20


@dataclass(frozen=True)
class Limits:
    timeout: float = 1800.0  # wall clock per phase: the official limit
    address_space: int | None = 16 << 30  # None for CUDA, whose drivers reserve vast address space
    file_size: int = 16 << 30
    processes: int = 1024  # threads count too (torch starts one per core)
    cpu_seconds: int | None = None  # default: the wall-clock timeout


@dataclass
class PhaseResult:
    name: str
    argv: list[str]
    returncode: int | None
    wall: float
    reason: str | None  # why it did not succeed, in words
    stdout: bytes = b""
    stderr: bytes = b""

    @property
    def ok(self) -> bool:
        return self.returncode == 0 and self.reason is None


@dataclass
class Layout:
    """Where things are, outside and inside. Without a sandbox, `upstream` is a scratch view of
    the checkout (a symlink per entry) with the runtime copy really at submissions/<name>."""
    upstream: Path  # the real checkout (read-only inside, at the same path)
    name: str
    runtime_copy: Path  # scratch copy of the runtime tree; holds archive/ and inflated/
    out: Path  # scratch dir for the report and probe output (writable inside at /prov-out)
    inside_out: str = "/prov-out"

    @property
    def submission(self) -> Path:
        return self.upstream / "submissions" / self.name


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


def _python_roots() -> list[str]:
    roots = {os.path.realpath(p) for p in (sys.prefix, sys.base_prefix, os.path.dirname(os.path.realpath(sys.executable)))}
    return sorted(r for r in roots if not r.startswith("/usr/"))


class Sandbox:
    def __init__(self, layout: Layout, device: str = "cpu", limits: Limits = Limits(), enabled: bool = True):
        self.l, self.device, self.limits, self.enabled = layout, device, limits, enabled
        self.as_root = os.geteuid() == 0
        self.python_bin = os.path.dirname(sys.executable)  # the venv's bin (not resolved: keeps site-packages)
        self.env = env_allowlist(device, self.python_bin)
        if enabled:
            self.bwrap = bwrap_path()
        if self.as_root and enabled:  # the sandboxed user must be able to write its outputs
            for d in (layout.runtime_copy / "inflated", layout.out):
                os.chown(d, NOBODY, NOBODY)

    # -- the command line -------------------------------------------------------------------
    @property
    def out_inside(self) -> str:
        """The writable output directory as the sandboxed command sees it."""
        return self.l.inside_out if self.enabled else str(self.l.out)

    def bwrap_args(self) -> list[str]:
        l = self.l
        a = [self.bwrap, "--die-with-parent", "--new-session"]
        if self.as_root:
            a += ["--unshare-ipc", "--unshare-pid", "--unshare-net", "--unshare-uts", "--unshare-cgroup-try"]
        else:
            a += ["--unshare-all"]
        a += ["--ro-bind", "/usr", "/usr"]
        for d in ("/bin", "/sbin", "/lib", "/lib64", "/lib32", "/libx32"):
            if os.path.islink(d):
                a += ["--symlink", os.readlink(d), d]
            elif os.path.isdir(d):
                a += ["--ro-bind", d, d]
        for f in ETC_FILES:
            if os.path.exists(f"/etc/{f}"):
                a += ["--ro-bind", f"/etc/{f}", f"/etc/{f}"]
        a += ["--dev", "/dev", "--proc", "/proc", "--perms", "1777", "--tmpfs", "/tmp"]
        binds: list[tuple[str, str, str]] = [("--ro-bind", r, r) for r in _python_roots()]
        up = str(l.upstream)
        for entry in sorted(os.listdir(up)):
            if entry != "submissions":
                binds.append(("--ro-bind", f"{up}/{entry}", f"{up}/{entry}"))
        subs = l.upstream / "submissions"
        if subs.is_dir():  # shared files (e.g. __init__.py) stay; other submissions stay out of sight
            for f in sorted(subs.iterdir()):
                if f.is_file() and not f.is_symlink():
                    binds.append(("--ro-bind", str(f), str(f)))
        sub = str(l.submission)
        binds.append(("--ro-bind", str(l.runtime_copy), sub))
        binds += [("--bind", str(l.runtime_copy / d), f"{sub}/{d}") for d in ("archive", "inflated")]
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
        if self.device == "cuda":
            for dev in sorted(Path("/dev").glob("nvidia*")):
                a += ["--dev-bind", str(dev), str(dev)]
            if os.path.isdir("/sys"):
                a += ["--ro-bind", "/sys", "/sys"]
        a += ["--clearenv"]
        for k, v in self.env.items():
            a += ["--setenv", k, v]
        a += ["--chdir", up, "--"]
        if self.as_root:
            a += ["setpriv", f"--reuid={NOBODY}", f"--regid={NOBODY}", "--clear-groups",
                  "--inh-caps=-all", "--bounding-set=-all", "--"]
        return a

    def _limits(self) -> None:  # runs in the child before exec: inherited by everything below
        lim = self.limits
        os.setpgrp()
        if lim.address_space:
            resource.setrlimit(resource.RLIMIT_AS, (lim.address_space, lim.address_space))
        cpu = int(lim.cpu_seconds or lim.timeout) + 1
        resource.setrlimit(resource.RLIMIT_CPU, (cpu, cpu))
        resource.setrlimit(resource.RLIMIT_FSIZE, (lim.file_size, lim.file_size))
        resource.setrlimit(resource.RLIMIT_NPROC, (lim.processes, lim.processes))
        resource.setrlimit(resource.RLIMIT_CORE, (0, 0))

    # -- running a phase --------------------------------------------------------------------
    def run(self, name: str, argv: list[str], logs: Path) -> PhaseResult:
        cmd = (self.bwrap_args() + argv) if self.enabled else argv
        out_path, err_path = logs / f"{name}.stdout", logs / f"{name}.stderr"
        start = time.monotonic()
        reason = None
        with open(out_path, "wb") as out, open(err_path, "wb") as err:
            p = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=out, stderr=err,
                                 env=self.env, cwd=str(self.l.upstream),
                                 preexec_fn=self._limits)
            try:
                rc = p.wait(timeout=self.limits.timeout)
            except subprocess.TimeoutExpired:
                reason = f"timed out after {self.limits.timeout:g} s (wall-clock limit); killed"
                self._kill(p)
                rc = p.wait()
        wall = time.monotonic() - start
        if reason is None and rc != 0:
            reason = _explain(rc)
        return PhaseResult(name, argv, rc, wall, reason, _tail(out_path), _tail(err_path))

    def _kill(self, p: subprocess.Popen) -> None:
        # bwrap dies -> its pid-1 child gets SIGKILL (--die-with-parent) -> the pid namespace and
        # every process in it go too. Without a sandbox, the process group is all we can reach.
        for target in (lambda: os.killpg(p.pid, signal.SIGKILL), lambda: p.kill()):
            try:
                target()
            except ProcessLookupError:
                pass


def _explain(rc: int) -> str:
    if rc < 0:
        sig = signal.Signals(-rc).name
        why = {"SIGXCPU": "CPU-time limit", "SIGXFSZ": "file-size limit", "SIGKILL": "killed",
               "SIGSEGV": "crashed"}.get(sig, "signal")
        return f"terminated by {sig} ({why})"
    if rc == 128 + signal.SIGXCPU:
        return "exceeded the CPU-time limit"
    return f"exited with status {rc}"


def _tail(path: Path) -> bytes:
    size = path.stat().st_size
    with open(path, "rb") as f:
        if size > LOG_TAIL:
            f.seek(size - LOG_TAIL)
        return f.read()
