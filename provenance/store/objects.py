"""The object store: byte-exact objects addressed by BLAKE3, an SQLite index, refs.

Layout under the store root:
    objects/ab/<blake3 hex>   immutable, mode 0444
    tmp/                      staging for writes (same filesystem, so rename is atomic)
    index.sqlite              objects (sha256 -> blake3, size, kind, times), links, refs, stat cache

Store opens the index (store.index) and reads, adds and exports objects and sets refs; the write
batch (store.batch), fsck (store.fsck), gc (store.gc) and the transfer between stores
(store.transfer) each have a module of their own.
"""

from __future__ import annotations

import errno
import os
import sqlite3
import stat
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Callable, Iterator

from provenance.core import tree as treemod
from provenance.core.digest import CHUNK, Digest
from provenance.core.errors import ProvError, VerificationFailed
from provenance.store import default_store_path, fsck as fsckmod, transfer
from provenance.store.batch import Batch
from provenance.store.durable import write_all
from provenance.store.index import (CENSUS_MOD, CENSUS_MUL, HEX, INFO_QUERY, KIND_DOC, REF_NAME, SCHEMA_VERSION,
                                    IndexDamaged, ObjectInfo, companion, companion_present, connect, create_schema,
                                    has_objects, key_of, migrate, object_info, prefix_range, unhex_sql,
                                    write_transaction)
from provenance.store.statcheck import WalkPrint, walk_root

__all__ = ["Store", "VerifiedReader", "Batch", "IndexDamaged", "ObjectInfo", "SCHEMA_VERSION"]


class Store:
    def __init__(self, root: str | os.PathLike | None = None, create: bool = False,
                 readonly: bool | None = None):
        self.root = Path(root if root is not None else default_store_path())
        index = self.root / "index.sqlite"
        self.objects = self.root / "objects"
        self.tmp = self.root / "tmp"
        self.objects_str, self.tmp_str = str(self.objects), str(self.tmp)
        self._tmp_seq = 0
        self._lock_fd, self._lock_depth = None, 0
        exists = index.exists()
        if not exists:
            if has_objects(self.objects):  # objects without their index: damage, never a new store
                raise IndexDamaged(f"{index}: missing, yet objects/ holds objects; "
                                   "prov fsck --repair rebuilds the index from the objects")
            if not create:
                raise ProvError(f"{self.root}: no store here (prov add creates one; or pass --store / PROV_STORE)")
            for d in ("objects", "tmp"):
                (self.root / d).mkdir(parents=True, exist_ok=True)
        elif index.stat().st_size == 0 and has_objects(self.objects) and not (
                index.with_name("index.sqlite-wal").exists() and index.with_name("index.sqlite-wal").stat().st_size):
            # an empty index beside objects is damage, not a new store: gc would delete everything
            raise IndexDamaged(f"{index}: zero length, yet objects/ holds objects; "
                               "prov fsck --repair rebuilds the index from the objects")
        if readonly is None:  # a store we may not write (read-only mount, no permission) is opened to read
            readonly = exists and not (os.access(self.root, os.W_OK) and os.access(index, os.W_OK))
        self.readonly = readonly
        try:
            self.db = connect(index, readonly)
            self._open_schema(exists)
        except sqlite3.DatabaseError as e:
            if isinstance(e, sqlite3.OperationalError) and "locked" in str(e):
                raise
            raise IndexDamaged(f"{index}: cannot be read ({e}); prov fsck --repair rebuilds it from the objects") \
                from None

    def _open_schema(self, existed: bool) -> None:
        db = self.db
        db.create_function("unhex", 1, unhex_sql, deterministic=True)
        tables = {n for (n,) in db.execute("SELECT name FROM sqlite_master WHERE type='table'")}
        if existed and not tables & {"objects", "obj"} and has_objects(self.objects):
            raise IndexDamaged(f"{self.root / 'index.sqlite'}: has no object table, yet objects/ holds objects; "
                               "prov fsck --repair rebuilds the index from the objects")
        version = db.execute("PRAGMA user_version").fetchone()[0]
        if version > SCHEMA_VERSION:
            raise ProvError(f"{self.root}: index schema v{version} is newer than this prov (v{SCHEMA_VERSION}); "
                            "upgrade prov")
        if self.readonly:
            if "obj" not in tables:  # an old store we may not migrate: migrate a copy of its index in memory
                db.execute("PRAGMA temp_store=MEMORY")
                create_schema(db, temp=True)
                if "objects" in tables:
                    migrate(db, tables)
            if "store_meta" not in tables:
                db.execute("CREATE TEMP TABLE store_meta(key TEXT PRIMARY KEY, value TEXT NOT NULL)")
            return
        db.execute("PRAGMA journal_mode=WAL")
        db.execute("PRAGMA synchronous=FULL")
        db.execute("PRAGMA cache_size=-65536")  # 64 MiB: index inserts by hash land at random pages
        if version == SCHEMA_VERSION and "obj" in tables:
            if "treecache" not in tables:  # a v3 index from before the fast re-add
                create_schema(db)
            return
        with self.transaction():
            if "objects" in tables:  # v0 (main before kinds) or v2 (kinds table): move to integer ids
                db.execute("DROP TABLE IF EXISTS statcache")  # a cache; it refills on the next add
            create_schema(db)
            if "objects" in tables:
                migrate(db, tables)
                for t in ("objects", "links", "kinds"):
                    db.execute(f"DROP TABLE IF EXISTS {t}")
            db.execute(f"PRAGMA user_version={SCHEMA_VERSION}")
        if "objects" in tables:
            db.execute("VACUUM")  # the old tables' pages back to the filesystem

    @contextmanager
    def writing(self) -> Iterator[None]:
        """Hold the store's shared write lock: gc (which takes it exclusively) waits until every
        writer has committed its objects and refs, so no grace is too short to honour."""
        import fcntl
        if self._lock_depth == 0:
            fd = os.open(self.root / "lock", os.O_RDWR | os.O_CREAT, 0o644)
            fcntl.flock(fd, fcntl.LOCK_SH)
            self._lock_fd = fd
        self._lock_depth += 1
        try:
            yield
        finally:
            self._lock_depth -= 1
            if self._lock_depth == 0:
                os.close(self._lock_fd)  # releases the flock
                self._lock_fd = None

    def close(self) -> None:
        self.db.close()

    def companion(self, name: str, kept: bool = False) -> sqlite3.Connection | None:
        """A layer above's own database beside the index (store.index.companion): its tables are not
        the store's, so index.sqlite holds none of them. `kept`: it holds what nothing else rebuilds
        (the evidence log): once made the store remembers it, and a missing or empty one is damage,
        never a fresh start. One that cannot be read is refused naming it, not the index."""
        path = self.root / f"{name}.sqlite"
        made = kept and self.companion_made(name)
        if made and not companion_present(path):
            raise VerificationFailed(f"{path}: missing or empty, yet this store keeps its {name} there; restore "
                                     "it from a copy (nothing is collected or appended until then)")
        try:
            db = companion(self.root, name, self.readonly)
            if db is not None:
                db.execute("SELECT count(*) FROM sqlite_master").fetchone()
        except sqlite3.DatabaseError as e:
            raise VerificationFailed(f"{path}: cannot be read ({e})") from None
        if kept and not made and db is not None and not self.readonly:
            self.db.execute("INSERT OR IGNORE INTO store_meta VALUES(?, '1')", (f"companion:{name}",))
        return db

    def companion_made(self, name: str) -> bool:
        """Whether this store made the kept companion `name` (store_meta remembers it)."""
        return self.db.execute("SELECT 1 FROM store_meta WHERE key=?", (f"companion:{name}",)).fetchone() is not None

    def transaction(self):
        """One write transaction on the index (store.index.write_transaction)."""
        return write_transaction(self.db)

    def path_of(self, b3: str) -> Path:
        return self.objects / b3[:2] / b3

    # -- reading ------------------------------------------------------------------------

    def info(self, b3: str) -> ObjectInfo | None:
        row = self.db.execute(INFO_QUERY + "WHERE o.b3=?", (key_of(b3),)).fetchone()
        return object_info(row) if row else None

    def by_sha256(self, sha: str) -> ObjectInfo | None:
        key = key_of(sha)
        row = self.db.execute(INFO_QUERY + "WHERE substr(o.sha, 1, 8)=? AND o.sha=?", (key[:8], key)).fetchone()
        return object_info(row) if row else None

    def object_id(self, b3: str) -> int | None:
        row = self.db.execute("SELECT id FROM obj WHERE b3=?", (key_of(b3),)).fetchone()
        return row[0] if row else None

    def object_id_by_sha256(self, sha: str) -> int | None:
        key = key_of(sha)
        row = self.db.execute("SELECT id FROM obj WHERE substr(sha, 1, 8)=? AND sha=?", (key[:8], key)).fetchone()
        return row[0] if row else None

    def blake3_of_id(self, oid: int) -> str | None:
        row = self.db.execute("SELECT b3 FROM obj WHERE id=?", (oid,)).fetchone()
        return row[0].hex() if row else None

    def census_of_kind(self, kind: str) -> tuple[int, int]:
        """How many objects are stored as `kind` (not blob or tree), and a checksum of their ids
        (census_term summed): one object that loses the kind and another that gains it between two
        looks leave the count as it was, not the checksum."""
        n, ids = self.db.execute(f"SELECT count(*), COALESCE(sum((id * {CENSUS_MUL}) % {CENSUS_MOD}), 0) "
                                 f"FROM obj_kind WHERE kind=? AND {KIND_DOC}", (kind,)).fetchone()
        return n, ids

    def of_kind(self, kind: str, after_id: int = 0) -> Iterator[tuple[int, str, str]]:
        """(id, blake3, sha256) of the objects stored as `kind` (not blob or tree), in the order added."""
        for i, b3, sha in self.db.execute(
                f"SELECT o.id, o.b3, o.sha FROM obj_kind k JOIN obj o ON o.id=k.id WHERE k.kind=? AND k.id>? "
                f"AND k.{KIND_DOC} ORDER BY k.id", (kind, after_id)):
            yield i, b3.hex(), sha.hex()

    def resolve(self, ref: str) -> ObjectInfo:
        """A digest (sha256 or blake3, any unique hex prefix of 4+) or a ref name -> object."""
        text = ref.strip().lower()
        if text.startswith(("sha256:", "blake3:")):
            algo, text = text.split(":", 1)
            algos = (algo,)
        else:
            algos = ("blake3", "sha256")
        if not (4 <= len(text) <= 64 and HEX.match(text)):
            target = self.get_ref(ref) if REF_NAME.match(ref) else None
            if target is None:
                raise ProvError(f"{ref}: not a digest (4 to 64 hex digits) or a known ref")
            return self.info(target) or self._missing(ref)
        hits: dict[str, ObjectInfo] = {}
        lo, hi = prefix_range(text)
        for algo in algos:
            where = ("o.b3 BETWEEN ? AND ?" if algo == "blake3" else
                     "substr(o.sha, 1, 8) BETWEEN ? AND ? AND o.sha BETWEEN ? AND ?")
            args = (lo, hi) if algo == "blake3" else (lo[:8], hi[:8], lo, hi)
            for row in self.db.execute(INFO_QUERY + f"WHERE {where} LIMIT 3", args):
                hits[row[0]] = object_info(row)
        if not hits:
            raise ProvError(f"{ref}: no such object in {self.root}")
        if len(hits) > 1:
            raise ProvError(f"{ref}: ambiguous digest prefix ({len(hits)} objects match; give more digits)")
        return next(iter(hits.values()))

    def _missing(self, what: str):
        raise ProvError(f"{what}: object missing from {self.root}")

    def read_bytes(self, b3: str) -> bytes:
        """The object's bytes, re-hashed: a store altered on disk is noticed, never served. Read with
        os calls (a site of 10k runs reads 10k records: a file object and pathlib cost more than the
        read)."""
        from blake3 import blake3
        fd, path = self._open_fd(b3)
        try:
            parts = []
            while chunk := os.read(fd, CHUNK):
                parts.append(chunk)
        finally:
            os.close(fd)
        data = b"".join(parts)
        if blake3(data).hexdigest() != b3:
            raise _corrupt(b3, path)
        return data

    def copy_out(self, b3: str, dest: str | os.PathLike, mode: int = 0o644) -> None:
        """Write the object to a new file `dest`, re-hashing the bytes as they are copied: what leaves
        the store to be run or read is what was hashed, or nothing (dest is removed)."""
        fd = os.open(dest, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, mode)
        try:
            with self.open_verified(b3) as src:
                while chunk := src.read(CHUNK):
                    write_all(fd, memoryview(chunk))
        except BaseException:
            os.close(fd)
            os.unlink(dest)
            raise
        os.close(fd)

    def verify_object(self, b3: str) -> None:
        """Re-hash a stored object in place (before streaming it somewhere that cannot be undone)."""
        with self.open_verified(b3) as f:
            while f.read(CHUNK):
                pass

    def _open_fd(self, b3: str) -> tuple[int, str]:
        """A descriptor on the object's file, and its path: only a regular file. A FIFO put in an
        object's place does not block the open (O_NONBLOCK) and is refused, as a device is (it would
        read without end); a directory is the OSError it always was."""
        path = os.path.join(self.objects_str, b3[:2], b3)
        try:
            fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC | os.O_NONBLOCK)
        except FileNotFoundError:
            self._missing(b3)
        try:
            mode = os.fstat(fd).st_mode
            if stat.S_ISDIR(mode):
                raise IsADirectoryError(errno.EISDIR, os.strerror(errno.EISDIR), path)
            if not stat.S_ISREG(mode):
                raise VerificationFailed(f"object {b3} at {path} is not a regular file: run prov fsck")
        except BaseException:
            os.close(fd)
            raise
        return fd, path

    def open(self, b3: str):
        return os.fdopen(self._open_fd(b3)[0], "rb")

    def open_verified(self, b3: str, size: int | None = None) -> "VerifiedReader":
        """Open an object for reading that re-hashes as it goes: the read that reaches the end raises
        VerificationFailed (returning nothing) unless the bytes match their address. The one way
        bytes leave the store for a user (cat, export)."""
        return VerifiedReader(self.open(b3), b3, size, self.path_of(b3))

    def walk_tree(self, b3: str) -> Iterator[tuple[str, str, int, str]]:
        """(kind, path, size, blake3) of every entry under a stored tree, iteratively: each directory's
        entries in name order, then its subdirectories in name order (a directory's path ends in /)."""
        todo = [("", b3)]
        while todo:
            prefix, d = todo.pop()
            subtrees = []
            for kind, name, size, child in treemod.parse(self.read_bytes(d), d):
                path = prefix + name + ("/" if kind == "tree" else "")
                yield kind, path, size, child
                if kind == "tree":
                    subtrees.append((path, child))
            todo += reversed(subtrees)

    def ls(self, b3: str) -> list[dict]:
        rows = []
        for kind, name, size, child in treemod.parse(self.read_bytes(b3), b3):
            ci = self.info(child)
            rows.append({"kind": kind, "name": name, "size": size, "blake3": child,
                         "sha256": ci.sha256 if ci else None})
        return rows

    # -- writing ------------------------------------------------------------------------

    def batch(self) -> "Batch":
        return Batch(self)

    def add_kinds(self, b3: str, kinds: tuple[str, ...]) -> None:
        """Record that a stored object is also of these kinds (same bytes, another role)."""
        with self.transaction() as db:
            if self.info(b3) is None:
                self._missing(b3)
            oid = self.object_id(b3)
            db.executemany("INSERT OR IGNORE INTO obj_kind(id, kind, added) VALUES(?,?,?)",
                           [(oid, k, int(time.time())) for k in kinds])

    def put_bytes(self, data: bytes, kind: str, children: tuple[str, ...] = ()) -> Digest:
        with self.batch() as b:
            return b.put_bytes(data, kind, children)

    def add(self, path: str | os.PathLike, progress: Callable[[int], None] | None = None,
            allow_unsafe_links: bool = False) -> tuple[str, Digest]:
        """Store a file or a directory tree; returns ('file'|'tree', digest)."""
        p = os.fsencode(path)
        try:
            st = os.lstat(p)
        except OSError as e:
            raise ProvError(f"{os.fsdecode(p)}: {e.strerror}") from None
        with self.batch() as b:
            if stat.S_ISREG(st.st_mode):
                return "file", b.put_file(p, st, progress)
            if stat.S_ISDIR(st.st_mode):
                # absolute, and the directory the kernel found (`..` after a symlink): the stat cache's key
                p = walk_root(p, st)
                if p is None:
                    raise ProvError(f"{os.fsdecode(path)}: changed while being added; run it again")
                b.load_statcache(p)
                started = time.time_ns()
                seen = WalkPrint() if not allow_unsafe_links else None  # a refused tree keeps no fingerprint
                d = treemod.walk(
                    p, lambda f, s: b.put_file(f, s, progress),
                    lambda data, d: b.put_bytes(data, "blob"),
                    lambda data, d, entries: b.put_bytes(
                        data, "tree", tuple(e.blake3 for e in entries), d),
                    allow_unsafe_links, seen)
                if seen is not None:
                    b.note_tree(p, d, started, seen.result())
                return "tree", d
            raise ProvError(f"{os.fsdecode(p)}: not a regular file or directory")

    def children(self, b3: str) -> list[str]:
        """The objects an object links to (a tree's entries, a record's evidence), sorted."""
        return sorted(c.hex() for (c,) in self.db.execute(
            "SELECT c.b3 FROM link l JOIN obj p ON p.id=l.parent JOIN obj c ON c.id=l.child WHERE p.b3=?",
            (bytes.fromhex(b3),)))

    def merge_from(self, other: "Store") -> int:
        """Copy every object `other` has and this store lacks (store.transfer)."""
        return transfer.merge_from(self, other)

    def add_as(self, path: str | os.PathLike, kind: str, what: str) -> Digest:
        """Add a path that must be a file (kind 'file') or a directory ('tree')."""
        got, d = self.add(path)
        if got != kind:
            raise ProvError(f"{path}: {what} must be a {'file' if kind == 'file' else 'directory'}")
        return d

    # -- refs ---------------------------------------------------------------------------

    def get_ref(self, name: str) -> str | None:
        row = self.db.execute("SELECT target FROM refs WHERE name=?", (name,)).fetchone()
        return row[0] if row else None

    def list_refs(self) -> list[tuple[str, str]]:
        return list(self.db.execute("SELECT name, target FROM refs ORDER BY name"))

    def set_ref(self, name: str, target_b3: str, expect: str | None = None) -> None:
        """Point `name` at an object; with `expect`, only if it currently points there ('' = absent)."""
        if not REF_NAME.match(name):
            raise ProvError(f"{name}: invalid ref name (letters, digits, . _ - separated by /)")
        with self.transaction() as db:
            if self.info(target_b3) is None:
                raise ProvError(f"{target_b3}: no such object; refs may only point at stored objects")
            cur = self.get_ref(name)
            if expect is not None and (cur or "") != expect:
                raise VerificationFailed(f"ref {name}: expected {expect or '(absent)'}, found {cur or '(absent)'}")
            db.execute("INSERT INTO refs(name, target, updated) VALUES(?,?,?) "
                       "ON CONFLICT(name) DO UPDATE SET target=excluded.target, updated=excluded.updated",
                       (name, target_b3, time.time()))

    def delete_ref(self, name: str, expect: str | None = None) -> None:
        with self.transaction() as db:
            cur = self.get_ref(name)
            if cur is None or (expect is not None and cur != expect):
                raise VerificationFailed(f"ref {name}: expected {expect or '(present)'}, found {cur or '(absent)'}")
            db.execute("DELETE FROM refs WHERE name=?", (name,))

    # -- export -------------------------------------------------------------------------

    def export(self, b3: str, dest: str | os.PathLike) -> None:
        """Materialize a tree at `dest` (which must not exist): bytes, exec bits, symlinks, empty dirs."""
        dest = Path(dest)
        if os.path.lexists(dest):
            raise ProvError(f"{dest}: already exists; export writes a new directory")
        info = self.info(b3)
        if info is None or info.kind != "tree":
            raise ProvError(f"{b3}: not a tree (use prov cat for a blob)")
        dest.parent.mkdir(parents=True, exist_ok=True)
        work = dest.parent / f".{dest.name}.prov-export-{os.getpid()}"
        try:
            self._export_tree(b3, work, 0)
            treemod.check_links_within(os.fsencode(work))
            os.rename(work, dest)
        except BaseException:
            import shutil
            shutil.rmtree(work, ignore_errors=True)
            raise

    def _export_tree(self, b3: str, at: Path, depth: int) -> None:
        at.mkdir()
        for kind, name, size, child in treemod.parse(self.read_bytes(b3), b3):
            target = at / name
            if kind == "tree":
                self._export_tree(child, target, depth + 1)
            elif kind == "link":
                link = self.read_bytes(child)
                treemod.check_link(link, depth, str(target))
                os.symlink(link, target)
            else:
                self.copy_out(child, target)  # re-hashed as copied; a corrupt object leaves no file
                os.chmod(target, 0o755 if kind == "exec" else 0o644)

    # -- integrity ----------------------------------------------------------------------

    def fsck(self, progress: Callable[[int], None] | None = None) -> dict:
        """Re-hash every object; cross-check index, tree children and refs (store.fsck)."""
        return fsckmod.fsck(self, progress)


def _corrupt(b3: str, path) -> VerificationFailed:
    return VerificationFailed(f"object {b3} at {path} is corrupt: its bytes do not match their address; "
                              "nothing of it was served: run prov fsck")


class VerifiedReader:
    """A file object over a stored object that re-hashes what it reads (see Store.open_verified).
    A short read of a regular file is its end: that read is checked before its bytes are returned."""

    def __init__(self, f, b3: str, size: int | None, path: Path):
        from blake3 import blake3
        self.f, self.b3, self.size, self.h, self.n, self.done = f, b3, size, blake3(), 0, False
        self.path = path

    def read(self, n: int = -1) -> bytes:
        whole = n is None or n < 0
        data = self.f.read() if whole else self.f.read(n)
        if self.done:
            if data:
                raise VerificationFailed(f"object {self.b3}: grew while being read")
            return data
        self.h.update(data)
        self.n += len(data)
        if whole or len(data) < n:
            self.done = True
            if self.h.hexdigest() != self.b3 or (self.size is not None and self.n != self.size):
                raise _corrupt(self.b3, self.path)
        return data

    def close(self) -> None:
        self.f.close()

    def __enter__(self) -> "VerifiedReader":
        return self

    def __exit__(self, *exc) -> None:
        self.close()
