"""gc: drop what neither a ref, the caller's roots nor a recently added or touched object reaches,
with the store's write lock held exclusively (writers hold it shared), and sweep stale temps.

The store keeps what its own refs name (it never leaves one dangling) and otherwise does not choose
what is live: what the layers above hold (the evidence log) is theirs to say, as dvc's repo hands its
used objects to the cache (provenance.log.evidence.gc)."""

from __future__ import annotations

import os
import shutil
import time
from itertools import islice
from typing import Iterable

from provenance.core.errors import ProvError
from provenance.store.batch import TMP_PREFIX
from provenance.store.index import HEX, LEAN_CACHE, slice_rows

DEFAULT_GRACE = 3600.0


def gc(store, roots: Iterable[str], grace: float = DEFAULT_GRACE, dry_run: bool = False) -> dict:
    """Drop objects that neither a ref, `roots` (BLAKE3 hex of the objects the caller keeps, read once
    the write lock is held) nor an object added or touched in the last `grace` seconds reaches.

    A running add is safe by the write lock (gc waits for it); the grace keeps what an add
    stored until a ref is set on it. An add touches only the roots of what it stored (a
    tree's top, and that only when its last touch is over TOUCH_SLACK old): whatever a
    recent root reaches is kept with it, so a re-add of a stored tree writes nothing.
    """
    import fcntl
    if not grace >= 0:  # NaN or negative: every recent add would count as old
        raise ProvError(f"grace {grace}: give a number of seconds, 0 or more")
    if store.db.execute("SELECT 1 FROM store_meta WHERE key='refs_lost'").fetchone():
        raise ProvError(f"{store.root}: fsck --repair rebuilt this index and could not recover every ref; "
                        "gc would delete what they kept alive. Set the refs again (prov ref set), "
                        "then run prov fsck --ack-repair")
    lock = os.open(store.root / "lock", os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(lock, fcntl.LOCK_EX)  # wait for in-flight writers (see objects.Store.writing)
        return _collect(store, roots, grace, dry_run)
    finally:
        os.close(lock)


def _key(b3: str) -> bytes | None:
    """A root's index key; None for what is not a BLAKE3 (it names nothing stored)."""
    try:
        key = bytes.fromhex(b3)
    except (ValueError, TypeError):
        return None
    return key if len(key) == 32 else None


def _collect(store, roots: Iterable[str], grace: float, dry_run: bool) -> dict:
    """Live: what refs, the roots or a recently touched object reach. Computed in SQLite (temp tables spill
    to disk), the object directories walked one at a time: memory stays bounded."""
    store.db.execute(LEAN_CACHE)
    cutoff = time.time() - grace
    removed: list[str] = []
    stale_temps: list[str] = []
    with store.transaction() as db:
        db.execute("CREATE TEMP TABLE IF NOT EXISTS gc_live(id INTEGER PRIMARY KEY)")
        db.execute("DELETE FROM temp.gc_live")
        db.execute("INSERT OR IGNORE INTO temp.gc_live SELECT o.id FROM refs r JOIN obj o ON o.b3=unhex(r.target)")
        db.execute("CREATE TEMP TABLE IF NOT EXISTS gc_roots(b3 BLOB)")
        db.execute("DELETE FROM temp.gc_roots")
        roots = iter(roots)
        while chunk := list(islice(roots, 65536)):  # bounded memory, any count
            db.executemany("INSERT INTO temp.gc_roots VALUES(?)",
                           [(b,) for b in map(_key, chunk) if b is not None])
        db.execute("INSERT OR IGNORE INTO temp.gc_live SELECT o.id FROM temp.gc_roots r JOIN obj o ON o.b3=r.b3")
        db.execute("INSERT OR IGNORE INTO temp.gc_live SELECT id FROM obj WHERE COALESCE(touched, added) >= ?",
                   (cutoff,))
        db.execute("INSERT OR IGNORE INTO temp.gc_live WITH RECURSIVE r(id) AS (SELECT id FROM temp.gc_live "
                   "UNION SELECT l.child FROM link l JOIN r ON l.parent=r.id) SELECT id FROM r")
        dead = db.execute("SELECT id, b3 FROM obj WHERE id NOT IN (SELECT id FROM temp.gc_live)")
        for oid, b3 in dead.fetchall() if not dry_run else dead:
            removed.append(b3.hex())
            if dry_run:
                continue
            try:
                os.unlink(store.path_of(b3.hex()))
            except FileNotFoundError:
                pass
            db.execute("DELETE FROM obj WHERE id=?", (oid,))
            db.execute("DELETE FROM obj_kind WHERE id=?", (oid,))
            db.execute("DELETE FROM link WHERE parent=?", (oid,))
        if removed and not dry_run:  # a stat-cache row must never vouch for a collected object
            db.execute("DELETE FROM statcache WHERE b3 NOT IN (SELECT b3 FROM obj)")
            db.execute("DELETE FROM treecache WHERE b3 NOT IN (SELECT b3 FROM obj)")
        if store.tmp.is_dir():
            stale_temps = [e.path for e in os.scandir(store.tmp) if e.stat(follow_symlinks=False).st_mtime < cutoff]
        with os.scandir(store.objects) as subs:
            for sub in subs:
                if not (len(sub.name) == 2 and HEX.match(sub.name) and sub.is_dir(follow_symlinks=False)):
                    continue
                indexed = {b3.hex() for b3, *_ in slice_rows(store.db, int(sub.name, 16))}
                with os.scandir(sub.path) as it:
                    for f in it:
                        if f.name.startswith(TMP_PREFIX):
                            if f.stat().st_mtime < cutoff:
                                stale_temps.append(f.path)
                        elif f.name not in indexed and f.stat().st_mtime < cutoff \
                                and len(f.name) == 64 and HEX.match(f.name):
                            removed.append(f.name)
                            if not dry_run:
                                os.unlink(f.path)
        if not dry_run:
            for f in stale_temps:  # best effort: a temp gc cannot remove must not undo the collection
                try:
                    if os.path.isdir(f) and not os.path.islink(f):  # a crashed writer's staging directory
                        shutil.rmtree(f, ignore_errors=True)
                    else:
                        os.unlink(f)
                except OSError:
                    pass
    return {"removed": len(removed), "objects": sorted(removed), "dry_run": dry_run}
