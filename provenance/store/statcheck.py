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


def _dir_digest(path: bytes, st: os.stat_result, newest: list[int]) -> bytes:
    """Digest of one directory: its own stat, then each entry's, a subdirectory by its digest."""
    try:
        names = sorted(os.listdir(path))
    except OSError:
        raise _Changed from None
    base = path + b"/"
    parts = [b"%d %d %d %d %d\n" % (st.st_dev, st.st_mode, st.st_mtime_ns, st.st_ctime_ns, st.st_ino)]
    top = max(st.st_mtime_ns, st.st_ctime_ns)
    for name in names:
        try:
            s = os.lstat(base + name)
        except OSError:
            raise _Changed from None
        # a name ends at its NUL (names cannot hold one), the numbers at their newline
        parts.append(b"%s\0%d %d %d %d %d\n" % (name, s.st_mode, s.st_size, s.st_mtime_ns, s.st_ctime_ns, s.st_ino))
        if S_ISDIR(s.st_mode):
            parts.append(_dir_digest(base + name, s, newest))
        elif s.st_ctime_ns > top or s.st_mtime_ns > top:
            top = max(s.st_mtime_ns, s.st_ctime_ns)
    if top > newest[0]:
        newest[0] = top
    return blake3(b"".join(parts)).digest()


def fingerprint(root: bytes, fork: bool = False) -> tuple[bytes, int] | None:
    """(fingerprint, newest mtime or ctime under root in ns), or None where root is not a directory
    or changes while walked. With `fork`, a child process walks every other subdirectory of the root
    (lstat is a system call: two cores make twice the calls); only where no threads run."""
    try:
        st = os.lstat(root)
    except OSError:
        return None
    if not S_ISDIR(st.st_mode):
        return None
    newest = [0]
    try:
        if not fork:
            return _dir_digest(root, st, newest), newest[0]
        return _forked(root, st)
    except _Changed:
        return None


def _forked(root: bytes, st: os.stat_result) -> tuple[bytes, int] | None:
    try:
        names = sorted(os.listdir(root))
    except OSError:
        raise _Changed from None
    base = root + b"/"
    stats = []
    for name in names:
        try:
            stats.append(os.lstat(base + name))
        except OSError:
            raise _Changed from None
    subdirs = [i for i, s in enumerate(stats) if S_ISDIR(s.st_mode)]
    theirs = set(subdirs[1::2])
    digests: dict[int, bytes] = {}
    newest = [max(st.st_mtime_ns, st.st_ctime_ns, *(max(s.st_mtime_ns, s.st_ctime_ns) for s in stats))]
    pid = -1
    if theirs:
        r, w = os.pipe()
        pid = os.fork()
        if pid == 0:  # the child: digests of its share, then the newest time; a failure sends nothing
            code = 1
            try:
                os.close(r)
                mine = [0]
                out = b"".join(_dir_digest(base + names[i], stats[i], mine) for i in sorted(theirs))
                out += mine[0].to_bytes(8, "big")
                while out:
                    out = out[os.write(w, out):]
                code = 0
            finally:
                os._exit(code)
        os.close(w)
    try:
        for i in subdirs:
            if i not in theirs:
                digests[i] = _dir_digest(base + names[i], stats[i], newest)
        if pid > 0:
            got = bytearray()
            while chunk := os.read(r, 1 << 16):
                got += chunk
            if len(got) != 32 * len(theirs) + 8:
                raise _Changed
            for k, i in enumerate(sorted(theirs)):
                digests[i] = bytes(got[32 * k:32 * k + 32])
            newest[0] = max(newest[0], int.from_bytes(got[-8:], "big"))
    finally:
        if pid > 0:
            os.close(r)
            _, status = os.waitpid(pid, 0)
    if pid > 0 and status != 0:
        raise _Changed
    parts = [b"%d %d %d %d %d\n" % (st.st_dev, st.st_mode, st.st_mtime_ns, st.st_ctime_ns, st.st_ino)]
    for i, (name, s) in enumerate(zip(names, stats)):
        parts.append(b"%s\0%d %d %d %d %d\n" % (name, s.st_mode, s.st_size, s.st_mtime_ns, s.st_ctime_ns, s.st_ino))
        if i in digests:
            parts.append(digests[i])
    return blake3(b"".join(parts)).digest(), newest[0]


def readd_unchanged(store_root: str, path: str) -> tuple[str, str, int] | None:
    """(sha256, blake3, size) of the tree at `path` where the store holds it and it has not changed
    since it was added; else None, and the full add decides. Touches the tree as the full add would."""
    import fcntl
    import sqlite3
    import time
    index = os.path.join(store_root, "index.sqlite")
    if not os.path.isfile(index):
        return None
    root = os.path.abspath(os.fsencode(path))
    fp = fingerprint(root, fork=cpus() > 1)  # before SQLite: no connection crosses the fork
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
