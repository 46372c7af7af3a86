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

import os
import resource
import secrets
import shutil
import signal
import subprocess
import threading
import time
from dataclasses import dataclass
from pathlib import Path

from provenance.contest.policy import View
from provenance.core.errors import MissingEnvironment, helper_threads
from provenance.replay.cgroup import Cgroup
from provenance.replay.interpreter import Interpreter
from provenance.replay.limits import MiB, Limits, Watchdog
from provenance.replay.seccomp import seccomp_program

# uids no account uses (above systemd's container ranges, below the 32-bit overflow uid)
UID_BASE, UID_SPAN = 0x7000_0000, 1 << 24
# What a legitimate program reads of /etc (the loader's cache for ffmpeg and shared libraries, name
# service for `id`, time zone, mime types), bound read-only into an /etc that is otherwise empty;
# passwd and group are written for the sandbox, so no host account shows.
ETC_FILES = ("ld.so.cache", "ld.so.conf", "ld.so.conf.d", "alternatives", "nsswitch.conf",
             "localtime", "os-release", "debian_version", "mime.types")
LOG_TAIL = 1 << 20


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
                with helper_threads():  # the signals that end a replay go to the thread that waits below
                    tails = [_Tail(p.stdout), _Tail(p.stderr)]
                    dog = Watchdog(p.pid, self.limits, self.writable_dirs(view), view.write_cap,
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
                with helper_threads():
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
