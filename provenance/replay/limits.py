"""A phase's limits, and what keeps them where the kernel cannot or does not count: the watchdog
(resident memory and /tmp where no cgroup could be made, an OOM kill where one was, the bytes and
entries a phase wrote) and the filesystem of exactly the write cap a phase writes into."""

from __future__ import annotations

import os
import threading
from dataclasses import dataclass
from pathlib import Path

from provenance.replay.cgroup import Cgroup

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


class Watchdog(threading.Thread):
    """Looks at a running phase every `limits.poll` seconds; kills it, saying why, past a cap."""

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
