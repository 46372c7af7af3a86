"""Limits the kernel keeps: one cgroup per phase, joined before exec so no child starts outside it.

cgroup v1 (what these machines mount, writable by root): `memory` charges everything the phase
holds (resident pages, its tmpfs, memfds, SysV shared memory, and the kernel's own objects such as
the inodes of a million empty files) against one limit, with swap (`memsw`) and socket buffers
(`kmem.tcp`) too; `pids` caps processes and threads; `cpuset` gives the phase the official runner's
CPU count, on CPUs no concurrent replay's phase holds (while there are free ones); `freezer` stops everything at once, so the kill at the end reaches every process however
fast it forks. The memory cgroup's out-of-memory kill ends the whole phase (`oom_kill` counts it),
whichever process the killer chose: `oom_score_adj` cannot steer a phase past its cap.

Each cgroup lives under this process's own (so a harness that placed us in one still bounds us)
and is named `prov-<pid>-<phase>-<random>`: cgroups of runs that died are removed at the next start.
Where none can be made (not root, no v1 hierarchy) `make` returns None and the watchdog remains.
"""

from __future__ import annotations

import os
import secrets
import signal
import time
from pathlib import Path

ROOT = Path("/sys/fs/cgroup")
CONTROLLERS = ("memory", "pids", "cpuset", "freezer")
PREFIX = "prov-"


def _own_path(controller: str) -> str | None:
    try:
        with open("/proc/self/cgroup") as f:
            for line in f:
                _, names, path = line.rstrip("\n").split(":", 2)
                if controller in names.split(","):
                    return path
    except OSError:
        pass
    return None


def _parent(controller: str) -> Path | None:
    own = _own_path(controller)
    if own is None:
        return None
    d = ROOT / controller / own.lstrip("/")
    return d if (d / "cgroup.procs").exists() else None


def _read(path: Path) -> str:
    with open(path) as f:
        return f.read()


def _write(path: Path, value) -> None:
    with open(path, "w") as f:
        f.write(str(value))


def _procs(d: Path) -> list[int]:
    try:
        return [int(x) for x in _read(d / "cgroup.procs").split()]
    except (OSError, ValueError):
        return []


class Cgroup:
    """One phase's cgroups, one directory per controller."""

    def __init__(self, dirs: dict[str, Path], memory: int, processes: int, cpus: str):
        self.dirs, self.memory, self.processes, self.cpus = dirs, memory, processes, cpus

    @classmethod
    def make(cls, phase: str, memory: int, processes: int, cpus: int) -> "Cgroup | None":
        if os.geteuid() != 0:
            return None
        parents = {c: _parent(c) for c in CONTROLLERS}
        if any(p is None for p in parents.values()):
            return None
        sweep_stale(parents)
        name = f"{PREFIX}{os.getpid()}-{phase}-{secrets.token_hex(4)}"
        dirs: dict[str, Path] = {}
        try:
            for c, p in parents.items():
                dirs[c] = p / name
                dirs[c].mkdir()
            mem = dirs["memory"]
            _write(mem / "memory.limit_in_bytes", memory)
            if (mem / "memory.memsw.limit_in_bytes").exists():  # swap counts too, where it is accounted
                _write(mem / "memory.memsw.limit_in_bytes", memory)
            else:  # where it is not, the phase may not swap at all
                _write(mem / "memory.swappiness", 0)
            if (mem / "memory.kmem.tcp.limit_in_bytes").exists():  # v1 charges socket buffers only once set
                _write(mem / "memory.kmem.tcp.limit_in_bytes", min(memory // 4, 256 << 20))
            _write(dirs["pids"] / "pids.max", processes)
            chosen = _claim_cpus(dirs["cpuset"], parents["cpuset"], cpus)
        except OSError:
            Cgroup(dirs, memory, processes, "").remove()
            return None
        return cls(dirs, memory, processes, chosen)

    def join(self) -> None:
        """Move the calling process in (the phase's child, between fork and exec)."""
        pid = str(os.getpid())
        for d in self.dirs.values():
            _write(d / "cgroup.procs", pid)

    # -- what the kernel saw ----------------------------------------------------------------
    def oom_kills(self) -> int:
        try:
            for line in _read(self.dirs["memory"] / "memory.oom_control").splitlines():
                if line.startswith("oom_kill "):
                    return int(line.split()[1])
        except (OSError, ValueError):
            pass
        return 0

    def peak_memory(self) -> int:
        try:
            return int(_read(self.dirs["memory"] / "memory.max_usage_in_bytes"))
        except (OSError, ValueError):
            return 0

    # -- the end ------------------------------------------------------------------------------
    def kill_all(self, patience: float = 60.0) -> bool:
        """Freeze, SIGKILL every member, thaw, and wait until the cgroup is empty. True when it is."""
        fr = self.dirs.get("freezer")
        procs_dir = fr or next(iter(self.dirs.values()))
        deadline = time.monotonic() + patience
        while True:
            members = _procs(procs_dir)
            if not members:
                return True
            if time.monotonic() > deadline:
                return False
            try:
                if fr:
                    _write(fr / "freezer.state", "FROZEN")
                for pid in members:
                    try:
                        os.kill(pid, signal.SIGKILL)
                    except ProcessLookupError:
                        pass
            except OSError:
                pass
            finally:
                if fr:
                    try:
                        _write(fr / "freezer.state", "THAWED")
                    except OSError:
                        pass
            time.sleep(0.01)  # the killed are reaped by their parents; nothing here depends on how soon

    def remove(self) -> None:
        for d in self.dirs.values():
            try:
                d.rmdir()
            except OSError:
                pass


def _claim_cpus(cs: Path, parent: Path, cpus: int) -> str:
    """Give a phase `cpus` CPUs that no other replay's phase holds, so concurrent replays on one
    machine do not share cores (and time each other). Siblings named prov-* are the claims; one
    lock on the parent cpuset makes choosing and writing atomic across processes. When every CPU
    is held, the least held ones are shared."""
    import fcntl
    lock = os.open(parent, os.O_RDONLY | os.O_DIRECTORY)
    try:
        fcntl.flock(lock, fcntl.LOCK_EX)
        allowed = _cpu_list(_read(parent / "cpuset.effective_cpus"))
        held = {c: 0 for c in allowed}
        for d in parent.iterdir():
            if d != cs and d.name.startswith(PREFIX) and d.is_dir():
                try:
                    for c in _cpu_list(_read(d / "cpuset.cpus")):
                        if c in held:
                            held[c] += 1
                except (OSError, ValueError):
                    continue
        want = max(1, min(cpus, len(allowed)))
        chosen = sorted(sorted(allowed, key=lambda c: (held[c], c))[:want])  # free ones first, in order
        _write(cs / "cpuset.cpus", ",".join(map(str, chosen)))
        _write(cs / "cpuset.mems", _read(parent / "cpuset.effective_mems").strip())
        return ",".join(map(str, chosen))
    finally:
        os.close(lock)  # the lock goes with the descriptor


def _cpu_list(text: str) -> list[int]:
    out: list[int] = []
    for part in text.strip().split(","):
        if "-" in part:
            a, b = part.split("-")
            out += range(int(a), int(b) + 1)
        elif part:
            out.append(int(part))
    return out


def pid_alive(pid: int) -> bool:
    """Whether a process of this pid exists (the owner of a cgroup or a scratch directory)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def sweep_stale(parents: dict[str, Path | None] | None = None) -> int:
    """Remove the cgroups that runs which died left behind (their pid is gone), killing what is in
    them first. Returns how many were removed."""
    parents = parents or {c: _parent(c) for c in CONTROLLERS}
    removed = 0
    # the freezer first: a leftover frozen there would stall the kill in every other controller
    for c, p in sorted(parents.items(), key=lambda cp: cp[0] != "freezer"):
        if p is None:
            continue
        try:
            entries = list(p.iterdir())
        except OSError:
            continue
        for d in entries:
            if not d.name.startswith(PREFIX) or not d.is_dir():
                continue
            try:
                pid = int(d.name[len(PREFIX):].split("-", 1)[0])
            except ValueError:
                continue
            if pid_alive(pid):
                continue
            Cgroup({c: d}, 0, 0, "").kill_all(patience=5.0)
            try:
                d.rmdir()
                removed += 1
            except OSError:
                pass
    return removed
