"""What a stat check alone can say about a directory: its fingerprint, and the re-add of a tree
that has not changed since it was stored.

A tree's fingerprint is a BLAKE3 Merkle digest over what `lstat` says of every entry under it
(name, device, mode, size, mtime, ctime, inode; a directory followed by its own digest), the root's
own stat first. Writing, truncating, renaming, `chmod`, adding or removing an entry all move a ctime
that no user can set back, so an equal fingerprint means nothing changed, provided it was taken after
every entry's last change had settled (`horizon`).

`prov add DIR` keeps one per tree it adds (table treecache, with the tree's digests). The console
entry calls `readd_unchanged` first: one indexed row, then a walk of `lstat` calls split between this
process and one forked child. It imports neither click nor the rest of the store, so re-adding an
unchanged tree costs little more than the interpreter's start-up and the `lstat` calls git makes.

What this cannot see, like the stat cache and git: writes through a shared memory map after the
first (they move no stamp), a clock set back, and filesystems whose ctime is not the kernel's own
(vfat and exFAT report the settable mtime; NFS reports the server's clock).
"""

from __future__ import annotations

import os
from stat import S_ISDIR

from blake3 import blake3

from provenance.core.parallel import cpus

# Kernel file timestamps come from a coarse clock (one jiffy, up to 10 ms behind);
# a file modified this close to the moment we hashed it may change again unseen.
RACY_NS = 50_000_000
# gc counts an object touched within this long of its last use as touched now: a re-add of what is
# already stored writes nothing unless its root was last touched longer ago than this
TOUCH_SLACK = 60
# a root an add relied on, touched where gc's grace would count it old (the full add and the fast one)
TOUCH = "UPDATE obj SET touched=? WHERE id=? AND COALESCE(touched, added) < ?"
SCHEMA_VERSION = 4  # the index version whose tables the fast re-add reads (objects.SCHEMA_VERSION; a test holds them equal)


class _Changed(Exception):
    """An entry vanished or could not be read mid-walk: no fingerprint, the full add decides."""


def horizon(stamp_ns: int) -> int:
    """The latest moment a change stamped `stamp_ns` can have happened: a jiffy later, or two seconds
    where stamps are whole seconds (FAT, ext4 with small inodes: a later write in the same second keeps
    the stamp). A tree's horizon is the latest of its entries', each judged by its own filesystem."""
    return stamp_ns + (RACY_NS if stamp_ns % 1_000_000_000 else 2_000_000_000)


def settled(stamp_ns: int, started_ns: int) -> bool:
    """Whether a change stamped `stamp_ns` surely came before `started_ns`."""
    return horizon(stamp_ns) < started_ns


def walk_root(path: bytes, st: os.stat_result) -> bytes | None:
    """The absolute path to walk for `path`, whose lstat is `st`: its abspath, unless `..` after a
    symlink makes that another directory than the kernel found; then its realpath; None if neither is."""
    for candidate in (os.path.abspath, os.path.realpath):
        p = candidate(path)
        try:
            s = os.lstat(p)
        except OSError:
            continue
        if (s.st_dev, s.st_ino) == (st.st_dev, st.st_ino):
            return p
    return None


def _horizon(st: os.stat_result, stats) -> int:
    return max(horizon(st.st_mtime_ns), horizon(st.st_ctime_ns),
               *(max(horizon(s.st_mtime_ns), horizon(s.st_ctime_ns)) for s in stats))


def _digest(st: os.stat_result, names: list[bytes], stats: list[os.stat_result], sub) -> bytes:
    """One directory's digest: its own stat, then each entry's, a subdirectory followed by sub(i),
    its digest. A name ends at its NUL (names cannot hold one), the numbers at their newline."""
    parts = [b"%d %d %d %d %d\n" % (st.st_dev, st.st_mode, st.st_mtime_ns, st.st_ctime_ns, st.st_ino)]
    for i, (name, s) in enumerate(zip(names, stats)):
        parts.append(b"%s\0%d %d %d %d %d %d\n" % (name, s.st_dev, s.st_mode, s.st_size, s.st_mtime_ns,
                                                   s.st_ctime_ns, s.st_ino))
        if S_ISDIR(s.st_mode):
            parts.append(sub(i))
    return blake3(b"".join(parts)).digest()


def _listing(path: bytes) -> tuple[bytes, list[bytes], list[os.stat_result]]:
    """(path joined as tree.walk joins, sorted names, their lstat)."""
    try:
        names = sorted(os.listdir(path))
        base = path if path.endswith(b"/") else path + b"/"
        return base, names, [os.lstat(base + name) for name in names]
    except OSError:
        raise _Changed from None


def _dir_digest(path: bytes, st: os.stat_result) -> bytes:
    base, names, stats = _listing(path)
    return _digest(st, names, stats, lambda i: _dir_digest(base + names[i], stats[i]))


class WalkPrint:
    """The fingerprint and horizon of a tree from the very stat results of the walk that digested it
    (tree.walk's `seen`, called for each directory after its subdirectories, in name order: their
    digests are the last ones made). A fingerprint taken by a second walk could describe another tree
    than the one hashed: a parent directory switched mid-walk moves no ctime inside either tree."""

    def __init__(self) -> None:
        self.done: list[bytes] = []  # digests of the directories whose parent is not done yet
        self.horizon = 0

    def __call__(self, path: bytes, st: os.stat_result, names: list[bytes], stats: list[os.stat_result]) -> None:
        subs = [i for i, s in enumerate(stats) if S_ISDIR(s.st_mode)]
        mine = dict(zip(subs, self.done[len(self.done) - len(subs):]))
        del self.done[len(self.done) - len(subs):]
        self.done.append(_digest(st, names, stats, mine.__getitem__))
        self.horizon = max(self.horizon, _horizon(st, stats))

    def result(self) -> tuple[bytes, int]:
        (root,) = self.done
        return root, self.horizon


def fingerprint(root: bytes, fork: bool = False) -> bytes | None:
    """The fingerprint of the tree at the absolute path `root`, or None where root is not a directory
    or changes while walked. With `fork`, a child process walks every other subdirectory of the root
    (lstat is a system call: two cores make twice the calls); only where no threads run."""
    try:
        st = os.lstat(root)
        if not S_ISDIR(st.st_mode):
            return None
        return _forked(root, st) if fork else _dir_digest(root, st)
    except (_Changed, OSError, RecursionError):  # a tree deeper than the interpreter's stack: the full add says
        return None


def _forked(root: bytes, st: os.stat_result) -> bytes:
    import signal
    base, names, stats = _listing(root)
    subdirs = [i for i, s in enumerate(stats) if S_ISDIR(s.st_mode)]
    theirs = subdirs[1::2]
    digests: dict[int, bytes] = {}
    pid, r, w = -1, -1, -1
    if theirs:
        r, w = os.pipe()
        # Ctrl-C between fork and the child's try would run the parent's code in the child
        old = signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT})
        try:
            pid = os.fork()
        except OSError:
            signal.pthread_sigmask(signal.SIG_SETMASK, old)
            os.close(r)
            os.close(w)
            raise _Changed from None
        if pid == 0:  # the child: digests of its share; a failure sends nothing
            code = 1
            try:
                signal.signal(signal.SIGINT, signal.SIG_DFL)
                signal.pthread_sigmask(signal.SIG_SETMASK, old)
                os.close(r)
                out = b"".join(_dir_digest(base + names[i], stats[i]) for i in theirs)
                while out:
                    out = out[os.write(w, out):]
                code = 0
            finally:
                os._exit(code)
    status, done = 0, False
    try:
        if pid > 0:
            signal.pthread_sigmask(signal.SIG_SETMASK, old)  # a pending Ctrl-C goes off here: inside the try
            os.close(w)
            w = -1
        for i in subdirs[0::2]:
            digests[i] = _dir_digest(base + names[i], stats[i])
        if pid > 0:
            got = bytearray()
            while chunk := os.read(r, 1 << 16):
                got += chunk
            if len(got) != 32 * len(theirs):
                raise _Changed
            digests.update((i, bytes(got[32 * k:32 * k + 32])) for k, i in enumerate(theirs))
        done = True
    finally:
        if pid > 0:
            for fd in (r, w):
                if fd >= 0:
                    os.close(fd)
            if not done:  # this side failed: the child's share is not wanted
                os.kill(pid, signal.SIGKILL)
            _, status = os.waitpid(pid, 0)
    if status != 0:
        raise _Changed
    return _digest(st, names, stats, digests.__getitem__)


def readd_unchanged(store_root: str, path: str) -> tuple[str, str, int] | None:
    """(sha256, blake3, size) of the tree at `path` where the store holds it and it has not changed
    since it was added; else None, and the full add decides. Touches the tree as the full add would."""
    import fcntl
    import sqlite3
    import time
    # the kernel's path, as the full add opens it (abspath would read `link/../store` as ./store)
    store_root = os.path.realpath(store_root)
    index = os.path.join(store_root, "index.sqlite")
    try:
        st = os.lstat(os.fsencode(path))  # the path as typed, as the full add finds it
    except OSError:
        return None
    root = walk_root(os.fsencode(path), st) if S_ISDIR(st.st_mode) else None
    if root is None or not os.path.isfile(index):
        return None
    if not (os.access(store_root, os.W_OK) and os.access(index, os.W_OK)):  # the full add refuses it
        return None
    # mode=rw: an index that vanished since is not created empty (which Store would call damage)
    uri = "file:%s?mode=rw" % index.replace("%", "%25").replace("?", "%3f").replace("#", "%23")
    lock, db = None, None
    try:
        db = sqlite3.connect(uri, uri=True, timeout=120, isolation_level=None)
        if db.execute("PRAGMA user_version").fetchone()[0] != SCHEMA_VERSION:
            return None
        kept = db.execute("SELECT fp FROM treecache WHERE path = ?", (root,)).fetchone()
        db.close()  # no connection crosses the fork
        db = None
        if kept is None or fingerprint(root, fork=cpus() > 1) != kept[0]:
            return None
        lock = os.open(os.path.join(store_root, "lock"), os.O_RDWR | os.O_CREAT, 0o644)
        fcntl.flock(lock, fcntl.LOCK_SH)  # as Store.writing: gc cannot collect the tree while we vouch for it
        db = sqlite3.connect(uri, uri=True, timeout=120, isolation_level=None)
        row = db.execute("SELECT o.id, t.sha, t.b3, t.size, COALESCE(o.touched, o.added) FROM treecache t "
                         "JOIN obj o ON o.b3 = t.b3 WHERE t.path = ? AND t.fp = ?", (root, kept[0])).fetchone()
        if row is None:
            return None
        oid, sha, b3, size, stamp = row
        now = int(time.time())
        if stamp < now - TOUCH_SLACK:
            db.execute("BEGIN IMMEDIATE")
            db.execute(TOUCH, (now, oid, now - TOUCH_SLACK))
            db.execute("COMMIT")
        return sha.hex(), b3.hex(), size
    except (sqlite3.Error, OSError):  # no such table, a damaged index, a read-only store: the full add says
        return None
    finally:
        if db is not None:
            db.close()
        if lock is not None:
            os.close(lock)
