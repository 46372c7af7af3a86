"""fsck: re-hash every object against its address, cross-check the index, each tree's children
and the refs. One fan-out directory at a time (forked workers for a large store); memory stays
bounded by the largest directory."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Callable

from provenance.core import tree as treemod
from provenance.core.digest import hash_file
from provenance.core.errors import VerificationFailed
from provenance.store.batch import SMALL, TMP_PREFIX
from provenance.store.index import HEX, LEAN_CACHE, key_of, slice_rows

PARALLEL_FSCK = 5_000  # objects: below this, forking workers costs more than it saves


def fsck(store, progress: Callable[[int], None] | None = None) -> dict:
    """Re-hash every object; cross-check index, tree children and refs.

    Streams: one fan-out directory at a time, in directory order, against that directory's
    slice of the index, so memory stays bounded by the largest directory, not the store."""
    store.db.execute(LEAN_CACHE)
    errors: list[str] = []
    notes: list[str] = []
    temps = _count_temps(store.tmp)
    count = 0
    subs = set()
    if store.objects.is_dir():
        with os.scandir(store.objects) as it:
            for e in it:
                if len(e.name) == 2 and HEX.match(e.name) and e.is_dir(follow_symlinks=False):
                    subs.add(e.name)
                else:
                    errors.append(f"objects/{e.name}: stray file in the object directory")
    for e, n, c, t in _fsck_prefixes(store, subs, progress):
        errors += e
        notes += n
        count += c
        temps += t
    for name, target in store.list_refs():
        if store.info(target) is None or not os.path.exists(store.path_of(target)):
            errors.append(f"ref {name}: dangling (points at missing object {target})")
    if temps:
        notes.append(f"{temps} leftover temp file(s) from interrupted writes (gc removes them)")
    return {"ok": not errors, "objects": count, "errors": errors, "notes": notes}


def _fsck_prefixes(store, subs: set[str], progress=None):
    """(errors, notes, objects, temps) of each fan-out directory, in order. A large store
    is checked by one forked worker a core (each with its own index connection): re-hashing a
    million small objects is bound by the interpreter's work per file, not by the disk."""
    from provenance.core.parallel import fork_imap
    jobs = [(p, f"{p:02x}" in subs) for p in range(256)]
    big = (store.db.execute("SELECT max(id) FROM obj").fetchone()[0] or 0) >= PARALLEL_FSCK
    if not big or store.readonly:
        yield from (_fsck_prefix(store, p, present, progress) for p, present in jobs)
        return
    parent, own = os.getpid(), []

    def job(j: tuple[int, bool]):
        """A directory's result, and the bytes it hashed (for the parent's progress). A worker
        opens its own connection: the one it inherited by fork is never used."""
        if os.getpid() == parent:
            mine = store
        else:
            if not own:
                own.append(type(store)(store.root))  # as the parent opened it: WAL locking, never `immutable`
                own[0].db.execute(LEAN_CACHE)
            mine = own[0]
        hashed: list[int] = []
        return _fsck_prefix(mine, *j, hashed.append), sum(hashed)
    for result, nbytes in fork_imap(job, jobs, min_items=1):  # the index and the objects are only read
        if progress and nbytes:
            progress(nbytes)
        yield result


def _fsck_tree(store, b3: str, sha: str, size: int, data: bytes | None) -> list[str]:
    try:
        rows = treemod.parse(data if data is not None else store.read_bytes(b3), b3)
    except (treemod.TreeError, VerificationFailed) as e:
        return [f"tree {b3}: {e}"]
    linked = {c: sha for c, sha in store.db.execute(  # one query: the children the index links it to
        "SELECT c.b3, c.sha FROM link l JOIN obj c ON c.id=l.child WHERE l.parent=(SELECT id FROM obj WHERE b3=?)",
        (key_of(b3),))}
    missing: list[str] = []

    def child_sha(kind: str, name: str, child: str) -> str | None:
        key = key_of(child)
        csha = linked.get(key)
        if csha is None:
            row = store.db.execute("SELECT sha FROM obj WHERE b3=?", (key,)).fetchone()
            if row is None:
                missing.append(f"tree {b3}: child {name} ({child}) missing")
                return None
            csha = row[0]
        return csha.hex()
    d = treemod.view_of(rows, child_sha)
    if d is None:
        return missing
    if d.sha256 != sha or d.size != size:
        return [f"tree {b3}: SHA-256 view does not match the index"]
    return []


def _count_temps(tmp: Path) -> int:
    """Files left in tmp/: flat (older prov) or in a batch's staging directory."""
    n = 0
    try:
        with os.scandir(tmp) as it:
            for e in it:
                if e.is_dir(follow_symlinks=False):
                    try:
                        n += sum(1 for _ in os.scandir(e.path))
                    except OSError:
                        n += 1
                else:
                    n += 1
    except (FileNotFoundError, NotADirectoryError):
        pass
    return n


def _fsck_prefix(store, p: int, present: bool, progress=None) -> tuple[list[str], list[str], int, int]:
    """Re-hash one fan-out directory against its slice of the index, in directory order."""
    import hashlib
    from blake3 import blake3
    errors: list[str] = []
    notes: list[str] = []
    count = temps = 0
    prefix = f"{p:02x}"
    index = {b3: row for b3, *row in slice_rows(store.db, p)}
    if not present:
        errors.extend(f"object {b3.hex()}: indexed but missing from objects/" for b3 in index)
        return errors, notes, count, temps
    buf = bytearray(SMALL)
    view = memoryview(buf)
    dfd = os.open(os.path.join(store.objects_str, prefix), os.O_RDONLY | os.O_DIRECTORY)
    try:
        with os.scandir(dfd) as it:  # directory order; names relative to dfd: no path walks
            for e in it:
                name = e.name
                if name.startswith(TMP_PREFIX):
                    temps += 1
                    continue
                key = key_of(name) if len(name) == 64 and name[:2] == prefix else b""
                if len(key) != 32 or not HEX.match(name):
                    errors.append(f"objects/{prefix}/{name}: stray file in the object directory")
                    continue
                count += 1
                fd = os.open(name, os.O_RDONLY, dir_fd=dfd)
                try:
                    n = os.readv(fd, [buf])  # one read for a small object
                finally:
                    os.close(fd)
                if n < len(buf):
                    data = view[:n]
                    b3_ok = blake3(data).digest() == key
                    if progress:
                        progress(n)
                else:
                    d = hash_file(os.path.join(store.objects_str, prefix, name), progress)
                    data, b3_ok, n = None, d.blake3 == name, d.size
                if not b3_ok:
                    errors.append(f"object {name}: content does not match its BLAKE3 address (corrupt)")
                    index.pop(key, None)
                    continue
                row = index.pop(key, None)
                if row is None:
                    notes.append(f"object {name}: complete but not indexed (interrupted add; gc collects it)")
                elif row[3]:
                    errors.extend(_fsck_tree(store, name, row[1].hex(), row[2],
                                                   bytes(data) if data is not None else None))
                elif n != row[2] or (hashlib.sha256(data).digest() if data is not None
                                     else bytes.fromhex(d.sha256)) != row[1]:
                    errors.append(f"object {name}: index sha256/size disagree with its content")
    finally:
        os.close(dfd)
    errors.extend(f"object {b3.hex()}: indexed but missing from objects/" for b3 in index)
    return errors, notes, count, temps
