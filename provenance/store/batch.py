"""The write batch: stage every new object as a temp file (in the batch's own directory under tmp/);
make the temps durable (fsync for large files, one syncfs for many small ones); rename them into
objects/; fsync the directories; then commit the index rows in one transaction. So an object is
visible only once complete, and an index row never names a missing object. SIGKILL at any point
leaves at most stray temps and complete unindexed objects, both harmless; fsck treats them as notes,
not faults."""

from __future__ import annotations

import os
import sqlite3
import time

from provenance.core import tree as treemod
from provenance.core.digest import CHUNK, Digest, digest_bytes, stream
from provenance.core.errors import ProvError
from provenance.store.durable import copy_and_hash, fsync_dir, syncfs, write_all
from provenance.store.index import IndexDamaged
from provenance.store.statcheck import TOUCH, TOUCH_SLACK, fingerprint, settled

TMP_PREFIX = ".tmp-"  # staged, not yet an object: skipped by readers, reported by fsck, swept by gc
SMALL = CHUNK  # below this, file bytes are read whole and durability is batched
FEW = 8  # a batch of at most this many small objects fsyncs each rather than the filesystem


class _Restage(Exception):
    """Objects we counted on vanished before commit; the batch stages them again."""


class Batch:
    """Stage objects, then make them durable and visible together (see module doc)."""

    def __init__(self, store):
        self.s = store
        self.new: dict[str, tuple[str, Digest, str, tuple[str, ...]]] = {}  # b3 -> (tmp, digest, kind, children)
        self.present: dict[str, int] = {}  # b3 -> id of objects the index already has
        # b3 -> source, trusted from the stat cache (gc drops the cache rows of what it collects, and
        # cannot run while this batch holds the write lock)
        self.cached: dict[str, tuple[bytes, os.stat_result]] = {}
        self.deferred_sync = False
        self.statcache: dict[bytes, tuple] = {}
        self.preloaded = False  # True once every cache row under the tree is in `statcache`
        self.subdirs: set[str] = set()  # fan-out directories known to exist
        self.new_subdirs = False
        self.stat_rows: list[tuple] = []
        self.tree_rows: list[tuple] = []  # (root path, fingerprint, blake3, sha256, size): statcheck's fast re-add
        self.torn = False  # a file read was not the inode its lstat saw, or changed while read
        self.extra: list[tuple[str, str, tuple[str, ...]]] = []  # (b3, kind, children) of objects already known
        self._writing = None
        self.stage: str | None = None  # this batch's own staging directory under tmp/

    def __enter__(self) -> "Batch":
        self._writing = self.s.writing()
        self._writing.__enter__()
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        try:
            self._exit(exc_type)
        finally:
            if self._writing is not None:
                self._writing.__exit__(None, None, None)
                self._writing = None

    def _exit(self, exc_type) -> None:
        if exc_type is None:
            self.commit()
        else:
            self._discard()

    def _discard(self) -> None:
        """Remove what is staged and not published (a failed batch)."""
        for tmp, *_ in self.new.values():
            if tmp is not None:
                try:
                    os.unlink(tmp)
                except OSError:  # the error being raised matters more; gc sweeps what stays
                    pass
        self._drop_stage()

    def _tmp_name(self) -> str:
        # Staged in a directory of this batch's own, made now and removed once its files are published:
        # an ext4 directory never shrinks, and creating files in a tmp/ that once staged a million of
        # them cost 2.5x a fresh one. One flat directory (measured: beats the fan-out directories).
        self.s._tmp_seq += 1
        if self.stage is None:
            stage = os.path.join(self.s.tmp_str, f"{TMP_PREFIX}{os.getpid()}-{time.monotonic_ns()}-{self.s._tmp_seq}")
            os.mkdir(stage)  # the umask's mode, as tmp/'s own files had: anyone's gc may sweep it
            self.stage = stage
        return os.path.join(self.stage, f"{TMP_PREFIX}{self.s._tmp_seq}")

    def _drop_stage(self) -> None:
        if self.stage is not None:
            try:
                os.rmdir(self.stage)
            except OSError:  # not empty: a file left for gc's sweep, as before
                pass
            self.stage = None

    def _ensure_subdir(self, prefix: str, sub: str) -> None:
        if prefix not in self.subdirs:
            try:
                os.mkdir(sub)
                self.new_subdirs = True
            except FileExistsError:  # another writer made it first
                pass
            self.subdirs.add(prefix)

    def known(self, b3: str) -> bool:
        if b3 in self.new or b3 in self.present or b3 in self.cached:
            return True
        row = self.s.db.execute("SELECT id FROM obj WHERE b3=?", (bytes.fromhex(b3),)).fetchone()
        if row:
            self.present[b3] = row[0]
            return True
        return False

    def stage_verified(self, src, b3: str, kind: str, children: tuple[str, ...] = (),
                       as_digest: Digest | None = None) -> Digest:
        """Stage the bytes readable from `src` as object `b3`, hashed as they are written: the one
        verified ingest (another store's objects, a meeting point's). Returns the bytes' digest; where
        they are not b3's bytes nothing stays staged, and the digest says what they hash to (the
        caller words the refusal). `as_digest` is what the index records (a tree's SHA-256 view)."""
        tmp = self._tmp_name()
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o444)
        try:
            d = stream(src, lambda mv: write_all(fd, mv))
        except BaseException:
            os.close(fd)
            os.unlink(tmp)
            raise
        os.close(fd)
        if d.blake3 != b3:
            os.unlink(tmp)
            return d
        self.deferred_sync = True
        self.new[b3] = (tmp, as_digest or d, kind, tuple(children))
        return d

    def put_bytes(self, data: bytes, kind: str, children: tuple[str, ...] = (),
                  tree: Digest | None = None) -> Digest:
        """Stage a small object. A tree passes its tree digest (SHA-256 view, total size) as `tree`."""
        d = digest_bytes(data)
        if tree is not None:
            assert tree.blake3 == d.blake3
            d = tree
        if not self.known(d.blake3):
            tmp = self._tmp_name()
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o444)
            try:
                write_all(fd, memoryview(data))
            finally:
                os.close(fd)
            self.deferred_sync = True
            self.new[d.blake3] = (tmp, d, kind, children)
        elif d.blake3 not in self.new or self.new[d.blake3][2] != kind:
            self.extra.append((d.blake3, kind, children))
        return d

    def note_tree(self, root: bytes, d: Digest, started_ns: int, walked: tuple[bytes, int]) -> None:
        """Keep the fingerprint of the tree the walk hashed (statcheck), with the tree's digests (an
        object's row holds those of whoever stored its bytes first), where every change under it had
        settled before the add began (then any later one moves a ctime it holds), every file read was
        the inode the walk saw, and the tree at `root` is still that tree (not so where a parent
        directory was switched mid-walk)."""
        fp, horizon = walked
        if self.torn or horizon >= started_ns:
            return
        row = (root, fp, bytes.fromhex(d.blake3), bytes.fromhex(d.sha256), d.size)
        if self.s.db.execute("SELECT 1 FROM treecache WHERE path=? AND fp=? AND b3=? AND sha=? AND size=?",
                             row).fetchone() is None and fingerprint(root) == fp:
            self.tree_rows.append(row)

    def load_statcache(self, prefix: bytes) -> None:
        self.preloaded = True
        for row in self.s.db.execute("SELECT * FROM statcache WHERE path >= ? AND path < ?",
                                     (prefix, prefix + b"\xff")):
            self.statcache[row[0]] = row[1:]

    def _stat_hit(self, apath: bytes):
        row = self.s.db.execute("SELECT * FROM statcache WHERE path=?", (apath,)).fetchone()
        return row[1:] if row else None

    def put_file(self, path: bytes, st: os.stat_result, progress=None, use_cache: bool = True) -> Digest:
        apath = path if path.startswith(b"/") else os.path.abspath(path)
        hit = self.statcache.get(apath) if use_cache else None
        if hit is None and use_cache and not self.preloaded:
            hit = self._stat_hit(apath)
        if hit is not None:
            dev, ino, size, mtime_ns, ctime_ns, sha, b3, recorded_ns = hit
            sha, b3 = sha.hex(), b3.hex()
            if (dev, ino, size, mtime_ns, ctime_ns) == (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns,
                                                        st.st_ctime_ns) \
                    and settled(mtime_ns, recorded_ns) and settled(ctime_ns, recorded_ns):
                if not (b3 in self.new or b3 in self.present):
                    self.cached[b3] = (apath, st)
                if progress:
                    progress(size)
                return Digest(sha, b3, size)
        started = time.time_ns()
        try:
            fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW)
        except OSError as e:
            raise treemod.TreeError(f"{os.fsdecode(path)}: cannot read file ({e.strerror})") from None
        try:
            if st.st_size < SMALL:
                try:
                    data = os.read(fd, st.st_size + 1)  # a short read of a regular file means EOF
                    if len(data) > st.st_size:  # it grew since lstat: read the rest
                        while more := os.read(fd, 1 << 16):
                            data += more
                except OSError as e:
                    raise treemod.TreeError(f"{os.fsdecode(path)}: cannot read file ({e.strerror})") from None
                d = self.put_bytes(data, "blob")
                if progress:
                    progress(d.size)
            else:
                d = self._put_large(fd, progress)
            now = os.fstat(fd)
        finally:
            os.close(fd)
        # the inode read is the one lstat saw, unchanged while read: else neither cache may vouch for it
        if (now.st_dev, now.st_ino, now.st_mtime_ns, now.st_size) == (st.st_dev, st.st_ino, st.st_mtime_ns,
                                                                      st.st_size):
            self.stat_rows.append((apath, st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns,
                                   st.st_ctime_ns, bytes.fromhex(d.sha256), bytes.fromhex(d.blake3), started))
        else:
            self.torn = True
        return d

    def _put_large(self, src_fd: int, progress) -> Digest:
        tmp = self._tmp_name()
        out = os.open(tmp, os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o444)
        try:
            try:
                d = copy_and_hash(src_fd, out, progress)
            except OSError:  # no in-kernel copy here (old kernel, odd filesystem): stream through us
                os.lseek(src_fd, 0, os.SEEK_SET)
                os.ftruncate(out, 0)
                os.lseek(out, 0, os.SEEK_SET)
                with open(src_fd, "rb", buffering=0, closefd=False) as src:
                    d = stream(src, lambda mv: write_all(out, mv), progress)
            if self.known(d.blake3):
                os.unlink(tmp)
                self.extra.append((d.blake3, "blob", ()))
                return d
            os.fsync(out)
        except BaseException:
            os.unlink(tmp)
            raise
        finally:
            os.close(out)
        self.new[d.blake3] = (tmp, d, "blob", ())
        return d

    def commit(self) -> None:
        try:
            try:
                self._commit()
            except _Restage as r:
                self._restage(r.args[0])
                self._commit()
        except BaseException:  # what is still staged was never published: it goes now, not at gc
            self._discard()
            raise

    def _commit(self) -> None:
        s = self.s
        if self.new and self.deferred_sync:
            staged = [tmp for tmp, *_ in self.new.values() if tmp is not None]
            if len(staged) <= FEW:  # a record, a note: syncing the whole filesystem costs more
                for tmp in staged:
                    fd = os.open(tmp, os.O_RDONLY)
                    try:
                        os.fsync(fd)
                    finally:
                        os.close(fd)
            else:
                fd = os.open(s.tmp, os.O_RDONLY | os.O_DIRECTORY)
                try:
                    syncfs(fd)
                finally:
                    os.close(fd)
            self.deferred_sync = False
        dirs: set[str] = set()
        for b3, (tmp, *rest) in self.new.items():
            if tmp is None:  # published by an earlier attempt of this commit
                continue
            sub = os.path.join(s.objects_str, b3[:2])
            self._ensure_subdir(b3[:2], sub)
            dirs.add(sub)
            os.rename(tmp, os.path.join(sub, b3))
            self.new[b3] = (None, *rest)
        if self.new_subdirs:
            dirs.add(s.objects_str)
            self.new_subdirs = False
        if len(dirs) > FEW:  # renames across many fan-out directories: one journal commit for them all
            fd = os.open(s.objects, os.O_RDONLY | os.O_DIRECTORY)
            try:
                syncfs(fd)
            finally:
                os.close(fd)
        else:
            for d in dirs:
                fsync_dir(d)
        if not (self.new or self.extra or self.stat_rows or self.tree_rows):
            roots = self._roots()
            if not roots:
                self._clear()
                return
        now = int(time.time())
        with s.transaction() as db:
            ids = self._insert_new(db, now)
            lookup = self._id_lookup(db, ids)
            kinds = [(ids[b3], kind, now) for b3, (_, _d, kind, _c) in self.new.items()]
            links = [(ids[b3], c) for b3, (*_x, children) in self.new.items() for c in children]
            for b3, kind, children in self.extra:
                oid = lookup(b3)
                if oid is None:
                    raise _Restage([b3])
                # a kind this object did not have: record it, and the links its bytes make as that kind
                if db.execute("INSERT OR IGNORE INTO obj_kind(id, kind, added) VALUES(?,?,?)",
                              (oid, kind, now)).rowcount:
                    links.extend((oid, c) for c in children)
            db.executemany("INSERT OR IGNORE INTO obj_kind(id, kind, added) VALUES(?,?,?)", kinds)
            rows = []
            for parent, child in links:
                cid = lookup(child)
                if cid is None:  # a stat-cache hit whose object is gone (a store of an older prov's gc)
                    raise _Restage([child])
                rows.append((parent, cid))
            rows.sort()
            db.executemany("INSERT OR IGNORE INTO link(parent, child) VALUES(?,?)", rows)
            # a root of this batch that gc's grace would count as old is touched; nothing else is
            # written for what was already stored (gc keeps whatever a recent root reaches)
            for b3 in self._roots():
                if b3 not in self.new:
                    oid = lookup(b3)
                    if oid is None:
                        raise _Restage([b3])
                    db.execute(TOUCH, (now, oid, now - TOUCH_SLACK))
            if self.stat_rows:
                self.stat_rows.sort()
                db.executemany("INSERT OR REPLACE INTO statcache VALUES(?,?,?,?,?,?,?,?,?)", self.stat_rows)
            if self.tree_rows:
                db.executemany("INSERT OR REPLACE INTO treecache VALUES(?,?,?,?,?)", self.tree_rows)
        self._clear()

    def _clear(self) -> None:
        self._drop_stage()
        self.new.clear()
        self.present.clear()
        self.cached.clear()
        self.stat_rows.clear()
        self.tree_rows.clear()
        self.torn = False
        self.extra.clear()

    def _roots(self) -> list[str]:
        """What this batch stored or relied on that nothing else in it names as a child."""
        named = {c for *_x, children in self.new.values() for c in children}
        named.update(c for _b, _k, children in self.extra for c in children)
        return [b3 for b3 in (*self.new, *self.present, *self.cached) if b3 not in named]

    def _insert_new(self, db: sqlite3.Connection, now: int) -> dict[str, int]:
        """Index rows for the new objects, in key order (neighbouring keys share pages): b3 -> id."""
        if not self.new:
            return {}
        order = sorted(self.new)
        row = db.execute("SELECT seq FROM sqlite_sequence WHERE name='obj'").fetchone()
        first = (row[0] if row else 0) + 1
        ids = {b3: first + i for i, b3 in enumerate(order)}
        n = db.executemany("INSERT OR IGNORE INTO obj(id, b3, sha, size, added) VALUES(?,?,?,?,?)",
                           [(ids[b3], bytes.fromhex(b3), bytes.fromhex(self.new[b3][1].sha256),
                             self.new[b3][1].size, now) for b3 in order]).rowcount
        if n != len(order):  # another writer indexed some of the same objects first: use its ids
            for b3 in order:
                row = db.execute("SELECT id FROM obj WHERE b3=?", (bytes.fromhex(b3),)).fetchone()
                if row is None:  # neither inserted nor there: the index contradicts itself
                    raise IndexDamaged(f"{self.s.root}/index.sqlite: object {b3} could not be indexed; "
                                       "prov fsck --repair rebuilds the index from the objects")
                ids[b3] = row[0]
        return ids

    def _id_lookup(self, db: sqlite3.Connection, ids: dict[str, int]):
        def lookup(b3: str) -> int | None:
            oid = ids.get(b3) or self.present.get(b3)
            if oid is None:
                row = db.execute("SELECT id FROM obj WHERE b3=?", (bytes.fromhex(b3),)).fetchone()
                oid = ids[b3] = row[0] if row else None
            return oid
        return lookup

    def _restage(self, gone: list[str]) -> None:
        for b3 in gone:
            self.present.pop(b3, None)
            src = self.cached.pop(b3, None)
            if src is None:
                raise ProvError(f"object {b3} was garbage-collected during this add; run it again")
            if self.put_file(*src, use_cache=False).blake3 != b3:
                raise ProvError(f"{os.fsdecode(src[0])}: changed while being added; run it again")
