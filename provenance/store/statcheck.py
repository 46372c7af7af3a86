"""What a stat check alone can say about a directory: its fingerprint, and the re-add of a tree
that has not changed since it was stored.

A tree's fingerprint is a BLAKE3 Merkle digest over what `lstat` says of every entry under it
(name, mode, size, mtime, ctime, inode; a directory's device and the digest of its entries), the
root's own included. Writing, truncating, renaming, `chmod`, adding or removing an entry all move
a ctime the entry's owner cannot set back, so an equal fingerprint means nothing changed, as long
as the fingerprint was taken after every entry's last change (see `fingerprint`'s `newest_ns`).

`prov add DIR` stores one per tree it adds (table treecache). The console entry calls
`readd_unchanged` first: a walk of `lstat` calls, split between this process and one forked
child, and one indexed row. It imports neither click nor the store, so re-adding an unchanged
tree costs little more than the interpreter's start-up and the `lstat` calls git would make.
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
SCHEMA_VERSION = 3  # the index version whose tables the fast re-add reads (objects.SCHEMA_VERSION; a test holds them equal)


class _Changed(Exception):
    """An entry vanished or could not be read mid-walk: no fingerprint, the full add decides."""


def settled(newest_ns: int, started_ns: int) -> bool:
    """Whether a change stamped `newest_ns` came before `started_ns` by more than the filesystem's
    clock can blur: a jiffy, or two seconds where stamps are whole seconds (ext4 with small inodes,
    FAT), since there a write later in the same second keeps the same stamp."""
    margin = RACY_NS if newest_ns % 1_000_000_000 else 2_000_000_000
    return newest_ns < started_ns - margin


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


def _newest(st: os.stat_result, stats) -> int:
    return max(st.st_mtime_ns, st.st_ctime_ns, *(max(s.st_mtime_ns, s.st_ctime_ns) for s in stats))


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


def _base(path: bytes) -> bytes:
    return path if path.endswith(b"/") else path + b"/"  # as tree.walk joins


def _dir_digest(path: bytes, st: os.stat_result, newest: list[int]) -> bytes:
    try:
        names = sorted(os.listdir(path))
        base = _base(path)
        stats = [os.lstat(base + name) for name in names]
    except OSError:
        raise _Changed from None
    newest[0] = max(newest[0], _newest(st, stats))
    return _digest(st, names, stats, lambda i: _dir_digest(base + names[i], stats[i], newest))


class WalkPrint:
    """The fingerprint of a tree from the very stat results of the walk that digested it (tree.walk's
    `seen`, which hears each directory after its subdirectories). A fingerprint taken by a second walk
    could describe another tree than the one hashed: a parent directory switched mid-walk moves no
    ctime inside either tree. Memory: the digests of directories whose parent is not done yet."""

    def __init__(self) -> None:
        self.sub: dict[bytes, bytes] = {}
        self.newest = 0

    def __call__(self, path: bytes, st: os.stat_result, names: list[bytes], stats: list[os.stat_result]) -> None:
        base = _base(path)
        self.sub[path] = _digest(st, names, stats, lambda i: self.sub.pop(base + names[i]))
        self.newest = max(self.newest, _newest(st, stats))

    def result(self, root: bytes) -> tuple[bytes, int]:
        return self.sub[root], self.newest


def fingerprint(root: bytes, fork: bool = False) -> tuple[bytes, int] | None:
    """(fingerprint, newest mtime or ctime under root in ns) of the tree at the absolute path `root`,
    or None where root is not a directory or changes while walked. With `fork`, a child process walks
    every other subdirectory of the root (lstat is a system call: two cores make twice the calls);
    only where no threads run."""
    try:
        st = os.lstat(root)
        if not S_ISDIR(st.st_mode):
            return None
        newest = [0]
        if not fork:
            return _dir_digest(root, st, newest), newest[0]
        return _forked(root, st)
    except (_Changed, OSError, RecursionError):  # a tree deeper than the interpreter's stack: the full add says
        return None


def _forked(root: bytes, st: os.stat_result) -> tuple[bytes, int] | None:
    try:
        names = sorted(os.listdir(root))
        base = _base(root)
        stats = [os.lstat(base + name) for name in names]
    except OSError:
        raise _Changed from None
    subdirs = [i for i, s in enumerate(stats) if S_ISDIR(s.st_mode)]
    theirs = subdirs[1::2]
    digests: dict[int, bytes] = {}
    newest = [_newest(st, stats)]
    pid = -1
    if theirs:
        r, w = os.pipe()
        pid = os.fork()
        if pid == 0:  # the child: digests of its share, then the newest time; a failure sends nothing
            code = 1
            try:
                os.close(r)
                mine = [0]
                out = b"".join(_dir_digest(base + names[i], stats[i], mine) for i in theirs)
                out += mine[0].to_bytes(8, "big")
                while out:
                    out = out[os.write(w, out):]
                code = 0
            finally:
                os._exit(code)
        os.close(w)
    status = 0
    try:
        for i in subdirs[0::2]:
            digests[i] = _dir_digest(base + names[i], stats[i], newest)
        if pid > 0:
            got = bytearray()
            while chunk := os.read(r, 1 << 16):
                got += chunk
            if len(got) != 32 * len(theirs) + 8:
                raise _Changed
            for k, i in enumerate(theirs):
                digests[i] = bytes(got[32 * k:32 * k + 32])
            newest[0] = max(newest[0], int.from_bytes(got[-8:], "big"))
    finally:
        if pid > 0:
            os.close(r)
            _, status = os.waitpid(pid, 0)
    if status != 0:
        raise _Changed
    return _digest(st, names, stats, digests.__getitem__), newest[0]


def readd_unchanged(store_root: str, path: str) -> tuple[str, str, int] | None:
    """(sha256, blake3, size) of the tree at `path` where the store holds it and it has not changed
    since it was added; else None, and the full add decides. Touches the tree as the full add would."""
    import fcntl
    import sqlite3
    import time
    index = os.path.join(store_root, "index.sqlite")
    if not os.path.isfile(index):
        return None
    try:
        st = os.lstat(os.fsencode(path))  # the path as typed, as the full add finds it
    except OSError:
        return None
    root = walk_root(os.fsencode(path), st) if S_ISDIR(st.st_mode) else None
    fp = fingerprint(root, fork=cpus() > 1) if root else None  # before SQLite: no connection crosses the fork
    if fp is None:
        return None
    try:
        lock = os.open(os.path.join(store_root, "lock"), os.O_RDWR | os.O_CREAT, 0o644)
    except OSError:
        return None
    db = None
    try:
        fcntl.flock(lock, fcntl.LOCK_SH)  # as Store.writing: gc cannot collect the tree while we vouch for it
        db = sqlite3.connect(index, timeout=120, isolation_level=None)
        if db.execute("PRAGMA user_version").fetchone()[0] != SCHEMA_VERSION:
            return None
        row = db.execute("SELECT o.id, o.sha, o.b3, o.size, COALESCE(o.touched, o.added) FROM treecache t "
                         "JOIN obj o ON o.b3 = t.b3 WHERE t.path = ? AND t.fp = ?", (root, fp[0])).fetchone()
        if row is None:
            return None
        oid, sha, b3, size, stamp = row
        now = int(time.time())
        if stamp < now - TOUCH_SLACK:
            db.execute("BEGIN IMMEDIATE")
            db.execute("UPDATE obj SET touched=? WHERE id=? AND COALESCE(touched, added) < ?",
                       (now, oid, now - TOUCH_SLACK))
            db.execute("COMMIT")
        return sha.hex(), b3.hex(), size
    except sqlite3.Error:  # no such table, a damaged index, a read-only store: the full add says
        return None
    finally:
        if db is not None:
            db.close()
        os.close(lock)
