"""The object store: byte-exact objects addressed by BLAKE3, an SQLite index, refs.

Layout under the store root:
    objects/ab/<blake3 hex>   immutable, mode 0444
    tmp/                      staging for writes (same filesystem, so rename is atomic)
    index.sqlite              objects (sha256 -> blake3, size, kind, times), links, refs, stat cache

Write protocol (a batch): stage every new object as a temp file; make the temps
durable (fsync for large files, one syncfs for many small ones); rename them into
objects/; fsync the directories; then commit the index rows in one transaction.
So an object is visible only once complete, and an index row never names a
missing object. SIGKILL at any point leaves at most stray temps and complete
unindexed objects, both harmless; fsck treats them as notes, not faults.
"""

from __future__ import annotations

import ctypes
import errno
import os
import re
import shutil
import sqlite3
import stat
import time
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator

from provenance.core import tree as treemod
from provenance.core.digest import CHUNK, Digest, digest_bytes, hash_file, stream
from provenance.core.errors import ProvError, VerificationFailed
from provenance.store import default_store_path
from provenance.store.statcheck import TOUCH, TOUCH_SLACK, WalkPrint, fingerprint, settled, walk_root

SCHEMA = """
CREATE TABLE IF NOT EXISTS obj(id INTEGER PRIMARY KEY AUTOINCREMENT, b3 BLOB NOT NULL, sha BLOB NOT NULL,
    size INTEGER NOT NULL, added INTEGER NOT NULL, touched INTEGER);
CREATE UNIQUE INDEX IF NOT EXISTS obj_b3 ON obj(b3);
CREATE INDEX IF NOT EXISTS obj_sha ON obj(substr(sha, 1, 8));
CREATE TABLE IF NOT EXISTS obj_kind(id INTEGER NOT NULL, kind TEXT NOT NULL, added INTEGER,
    PRIMARY KEY(id, kind)) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS obj_kind_doc ON obj_kind(kind, id) WHERE kind NOT IN ('blob', 'tree');
CREATE TABLE IF NOT EXISTS link(parent INTEGER NOT NULL, child INTEGER NOT NULL,
    PRIMARY KEY(parent, child)) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS refs(name TEXT PRIMARY KEY, target TEXT NOT NULL,
    updated REAL NOT NULL) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS store_meta(key TEXT PRIMARY KEY, value TEXT NOT NULL) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS statcache(path BLOB PRIMARY KEY, dev INTEGER, ino INTEGER,
    size INTEGER, mtime_ns INTEGER, ctime_ns INTEGER, sha BLOB, b3 BLOB,
    recorded_ns INTEGER) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS treecache(path BLOB PRIMARY KEY, fp BLOB NOT NULL, b3 BLOB NOT NULL,
    sha BLOB NOT NULL, size INTEGER NOT NULL) WITHOUT ROWID;
"""
# Index schema versions (PRAGMA user_version): 0 had one kind per object (objects.kind, whoever
# stored the bytes first); 2 added kinds(blake3, kind): the set of kinds an object was stored as;
# 3 keys objects by an integer id with binary digests (obj.b3 unique, obj.sha indexed by its first
# 8 bytes), kinds and links by id, times in whole seconds (touched NULL: never touched since added).
# Each row is written once: 3 turns v0/v2's 512 bytes an object into under 200, and random hex keys
# in three B-trees into one append-ordered table and two small indexes.
SCHEMA_VERSION = 3
KIND_DOC = "kind NOT IN ('blob', 'tree')"  # spelled as in obj_kind_doc, so SQLite uses that partial index
CENSUS_MUL, CENSUS_MOD = 2654435761, 4294967291  # an id's term of census_of_kind's checksum (exact in int64)


def census_term(oid: int) -> int:
    """An id's term of census_of_kind's checksum, as SQLite computes it."""
    return (oid * CENSUS_MUL) % CENSUS_MOD


REF_NAME = re.compile(r"^[A-Za-z0-9._-]+(/[A-Za-z0-9._-]+)*$")
HEX = re.compile(r"^[0-9a-f]+$")
DEFAULT_GRACE = 3600.0
TMP_PREFIX = ".tmp-"  # staged, not yet an object: skipped by readers, reported by fsck, swept by gc
SMALL = CHUNK  # below this, file bytes are read whole and durability is batched
LEAN_CACHE = "PRAGMA cache_size=-8192"  # 8 MiB: a pass over the whole index gains nothing from more
PARALLEL_FSCK = 5_000  # objects: below this, forking workers costs more than it saves
FEW = 8  # a batch of at most this many small objects fsyncs each rather than the filesystem

_libc = ctypes.CDLL(None, use_errno=True)


class IndexDamaged(VerificationFailed):
    """index.sqlite cannot be trusted (zero length, no schema, corrupt pages): exit 1, and say how to recover."""


def _connect(index: Path, readonly: bool) -> sqlite3.Connection:
    if not readonly:
        return sqlite3.connect(index, timeout=120, isolation_level=None)
    from urllib.parse import quote
    wal = index.with_name(index.name + "-wal")
    # no WAL to replay: nobody can be writing a store we may not write, so skip locking altogether
    extra = "" if wal.exists() and wal.stat().st_size else "&immutable=1"
    return sqlite3.connect(f"file:{quote(str(index.resolve()))}?mode=ro{extra}", uri=True, timeout=120,
                           isolation_level=None)


def _has_objects(objects: Path) -> bool:
    try:
        return any(any(True for _ in sub.iterdir()) for sub in objects.iterdir() if sub.is_dir())
    except OSError:
        return False


def _unhex(text):
    return bytes.fromhex(text) if isinstance(text, str) else text


def _create_schema(db: sqlite3.Connection, temp: bool = False) -> None:
    for stmt in SCHEMA.split(";"):
        if stmt.strip():
            if temp:  # the object tables in the connection's temp schema (a read-only old store)
                if re.search(r"\b(refs|store_meta|statcache|treecache)\(", stmt):
                    continue
                stmt = re.sub(r"CREATE TABLE", "CREATE TEMP TABLE", stmt)
                stmt = re.sub(r"(INDEX IF NOT EXISTS )(\w+)", r"\1temp.\2", stmt)
            db.execute(stmt)


def _migrate(db: sqlite3.Connection, tables: set[str]) -> None:
    """Copy a v0/v2 index (hex text keys) into the v3 tables: ids in the order objects were added."""
    db.execute("INSERT INTO obj(b3, sha, size, added, touched) SELECT unhex(blake3), unhex(sha256), size, "
               "CAST(added AS INTEGER), NULLIF(MAX(CAST(touched AS INTEGER), CAST(added AS INTEGER)), "
               "CAST(added AS INTEGER)) FROM objects ORDER BY added, blake3")
    src = "kinds" if "kinds" in tables else "objects"
    db.execute(f"INSERT OR IGNORE INTO obj_kind(id, kind, added) SELECT o.id, k.kind, CAST(k.added AS INTEGER) "
               f"FROM {src} k JOIN obj o ON o.b3 = unhex(k.blake3)")
    if "links" in tables:
        db.execute("INSERT OR IGNORE INTO link(parent, child) SELECT p.id, c.id FROM links l "
                   "JOIN obj p ON p.b3 = unhex(l.parent) JOIN obj c ON c.b3 = unhex(l.child)")


def _syncfs(fd: int) -> None:
    if getattr(_libc, "syncfs", None) is None or _libc.syncfs(fd) != 0:
        os.sync()


_sync_file_range = getattr(_libc, "sync_file_range", None)
if _sync_file_range is not None:
    _sync_file_range.argtypes = [ctypes.c_int, ctypes.c_int64, ctypes.c_int64, ctypes.c_uint]


def _start_writeback(fd: int, offset: int, nbytes: int) -> None:
    """Ask the kernel to start writing a range now (SYNC_FILE_RANGE_WRITE), so fsync finds less to do."""
    if _sync_file_range is not None:
        _sync_file_range(fd, offset, nbytes, 2)


def _fsync_dir(path: str | Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _write_all(fd: int, mv: memoryview) -> None:
    while mv:
        mv = mv[os.write(fd, mv):]


@dataclass(frozen=True)
class ObjectInfo:
    blake3: str
    sha256: str
    size: int
    kind: str  # the most specific kind: the first non-blob kind it was stored as, else "blob"
    kinds: tuple[str, ...] = ()  # every kind it was stored as, oldest first

    def as_dict(self) -> dict:
        return {"kind": self.kind, "sha256": self.sha256, "blake3": self.blake3, "size": self.size}


_INFO = ("SELECT o.b3, o.sha, o.size, (SELECT group_concat(kind, ' ') FROM "
         "(SELECT kind FROM obj_kind k WHERE k.id=o.id ORDER BY added, kind)) FROM obj o ")


def _object_info(row) -> ObjectInfo:
    b3, sha, size, kinds = row
    ks = tuple(kinds.split()) if kinds else ("blob",)
    return ObjectInfo(b3.hex(), sha.hex(), size, next((k for k in ks if k != "blob"), "blob"), ks)


def _key(hexdigest: str) -> bytes:
    """A full hex digest as the index's binary key (a malformed one matches nothing)."""
    try:
        return bytes.fromhex(hexdigest)
    except (ValueError, TypeError):
        return b""


def _prefix_range(text: str) -> tuple[bytes, bytes]:
    """The binary keys a hex prefix covers, inclusive."""
    return bytes.fromhex(text.ljust(64, "0")), bytes.fromhex(text.ljust(64, "f"))


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
            if _has_objects(self.objects):  # objects without their index: damage, never a new store
                raise IndexDamaged(f"{index}: missing, yet objects/ holds objects; "
                                   "prov fsck --repair rebuilds the index from the objects")
            if not create:
                raise ProvError(f"{self.root}: no store here (prov add creates one; or pass --store / PROV_STORE)")
            for d in ("objects", "tmp"):
                (self.root / d).mkdir(parents=True, exist_ok=True)
        elif index.stat().st_size == 0 and _has_objects(self.objects) and not (
                index.with_name("index.sqlite-wal").exists() and index.with_name("index.sqlite-wal").stat().st_size):
            # an empty index beside objects is damage, not a new store: gc would delete everything
            raise IndexDamaged(f"{index}: zero length, yet objects/ holds objects; "
                               "prov fsck --repair rebuilds the index from the objects")
        if readonly is None:  # a store we may not write (read-only mount, no permission) is opened to read
            readonly = exists and not (os.access(self.root, os.W_OK) and os.access(index, os.W_OK))
        self.readonly = readonly
        try:
            self.db = _connect(index, readonly)
            self._open_schema(exists)
        except sqlite3.DatabaseError as e:
            if isinstance(e, sqlite3.OperationalError) and "locked" in str(e):
                raise
            raise IndexDamaged(f"{index}: cannot be read ({e}); prov fsck --repair rebuilds it from the objects") \
                from None

    def _open_schema(self, existed: bool) -> None:
        db = self.db
        db.create_function("unhex", 1, _unhex, deterministic=True)
        tables = {n for (n,) in db.execute("SELECT name FROM sqlite_master WHERE type='table'")}
        if existed and not tables & {"objects", "obj"} and _has_objects(self.objects):
            raise IndexDamaged(f"{self.root / 'index.sqlite'}: has no object table, yet objects/ holds objects; "
                               "prov fsck --repair rebuilds the index from the objects")
        version = db.execute("PRAGMA user_version").fetchone()[0]
        if version > SCHEMA_VERSION:
            raise ProvError(f"{self.root}: index schema v{version} is newer than this prov (v{SCHEMA_VERSION}); "
                            "upgrade prov")
        if self.readonly:
            if "obj" not in tables:  # an old store we may not migrate: migrate a copy of its index in memory
                db.execute("PRAGMA temp_store=MEMORY")
                _create_schema(db, temp=True)
                if "objects" in tables:
                    _migrate(db, tables)
            if "store_meta" not in tables:
                db.execute("CREATE TEMP TABLE store_meta(key TEXT PRIMARY KEY, value TEXT NOT NULL)")
            return
        db.execute("PRAGMA journal_mode=WAL")
        db.execute("PRAGMA synchronous=FULL")
        db.execute("PRAGMA cache_size=-65536")  # 64 MiB: index inserts by hash land at random pages
        if version == SCHEMA_VERSION and "obj" in tables:
            if "treecache" not in tables:  # a v3 index from before the fast re-add
                _create_schema(db)
            return
        with self.transaction():
            if "objects" in tables:  # v0 (main before kinds) or v2 (kinds table): move to integer ids
                db.execute("DROP TABLE IF EXISTS statcache")  # a cache; it refills on the next add
            _create_schema(db)
            if "objects" in tables:
                _migrate(db, tables)
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

    @contextmanager
    def transaction(self) -> Iterator[sqlite3.Connection]:
        self.db.execute("BEGIN IMMEDIATE")
        try:
            yield self.db
        except BaseException:
            if self.db.in_transaction:  # SQLite rolls back itself on SQLITE_FULL and friends
                self.db.execute("ROLLBACK")
            raise
        self.db.execute("COMMIT")

    def path_of(self, b3: str) -> Path:
        return self.objects / b3[:2] / b3

    # -- reading ------------------------------------------------------------------------

    def info(self, b3: str) -> ObjectInfo | None:
        row = self.db.execute(_INFO + "WHERE o.b3=?", (_key(b3),)).fetchone()
        return _object_info(row) if row else None

    def by_sha256(self, sha: str) -> ObjectInfo | None:
        key = _key(sha)
        row = self.db.execute(_INFO + "WHERE substr(o.sha, 1, 8)=? AND o.sha=?", (key[:8], key)).fetchone()
        return _object_info(row) if row else None

    def object_id(self, b3: str) -> int | None:
        row = self.db.execute("SELECT id FROM obj WHERE b3=?", (_key(b3),)).fetchone()
        return row[0] if row else None

    def object_id_by_sha256(self, sha: str) -> int | None:
        key = _key(sha)
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
        lo, hi = _prefix_range(text)
        for algo in algos:
            where = ("o.b3 BETWEEN ? AND ?" if algo == "blake3" else
                     "substr(o.sha, 1, 8) BETWEEN ? AND ? AND o.sha BETWEEN ? AND ?")
            args = (lo, hi) if algo == "blake3" else (lo[:8], hi[:8], lo, hi)
            for row in self.db.execute(_INFO + f"WHERE {where} LIMIT 3", args):
                hits[row[0]] = _object_info(row)
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
                    _write_all(fd, memoryview(chunk))
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

    def insert_rows(self, rows, kinds=(), links=()) -> None:
        """Index rows for objects already in objects/ (fsck --repair): rows (b3, sha256, size, kind,
        added, touched), kinds (b3, kind, added), links (parent b3, child b3), all hex; one transaction."""
        with self.transaction() as db:
            row = db.execute("SELECT seq FROM sqlite_sequence WHERE name='obj'").fetchone()
            first = (row[0] if row else 0) + 1
            order = sorted(rows, key=lambda r: r[0])
            db.executemany("INSERT OR IGNORE INTO obj(id, b3, sha, size, added) VALUES(?,?,?,?,?)",
                           [(first + i, bytes.fromhex(b3), bytes.fromhex(sha), size, int(added))
                            for i, (b3, sha, size, _k, added, _t) in enumerate(order)])
            ids = {b3.hex(): i for b3, i in db.execute("SELECT b3, id FROM obj")}
            db.executemany("INSERT OR IGNORE INTO obj_kind(id, kind, added) VALUES(?,?,?)",
                           sorted((ids[b3], k, int(a)) for b3, k, a in
                                  [*((r[0], r[3], r[4]) for r in order), *kinds] if b3 in ids))
            db.executemany("INSERT OR IGNORE INTO link(parent, child) VALUES(?,?)",
                           sorted((ids[p], ids[c]) for p, c in links if p in ids and c in ids))

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
        """Copy every object (with its index row and links) that `other` has and we lack.
        Bytes are re-hashed on the way in: a corrupt source object is refused, not spread."""
        rows = [(b3.hex(), sha.hex(), size, kind) for b3, sha, size, kind in other.db.execute(
            "SELECT b3, sha, size, (SELECT kind FROM obj_kind k WHERE k.id=o.id ORDER BY kind='blob', added, kind "
            "LIMIT 1) FROM obj o")]
        other_kinds = [(b3.hex(), kind) for b3, kind in other.db.execute(
            "SELECT o.b3, k.kind FROM obj_kind k JOIN obj o ON o.id=k.id")]
        links = [(p.hex(), c.hex()) for p, c in other.db.execute(
            "SELECT p.b3, c.b3 FROM link l JOIN obj p ON p.id=l.parent JOIN obj c ON c.id=l.child")]
        children: dict[str, list[str]] = {}
        for parent, child in links:
            children.setdefault(parent, []).append(child)
        copied = 0
        with self.batch() as b:
            for b3, sha, size, kind in rows:
                if b._known(b3):
                    continue
                with other.open(b3) as src:
                    tmp = b._tmp_name()
                    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o444)
                    try:
                        d = stream(src, lambda mv: _write_all(fd, mv))
                    finally:
                        os.close(fd)
                if d.blake3 != b3:
                    os.unlink(tmp)
                    raise VerificationFailed(f"{other.root}: object {b3} is corrupt; not merged")
                b.deferred_sync = True
                b.new[b3] = (tmp, Digest(sha, b3, size), kind, tuple(children.get(b3, ())))
                copied += 1
            b.extra.extend((b3, kind, ()) for b3, kind in other_kinds)
        return copied

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
        """Re-hash every object; cross-check index, tree children and refs.

        Streams: one fan-out directory at a time, in directory order, against that directory's
        slice of the index, so memory stays bounded by the largest directory, not the store."""
        self.db.execute(LEAN_CACHE)
        errors: list[str] = []
        notes: list[str] = []
        temps = _count_temps(self.tmp)
        count = 0
        subs = set()
        if self.objects.is_dir():
            with os.scandir(self.objects) as it:
                for e in it:
                    if len(e.name) == 2 and HEX.match(e.name) and e.is_dir(follow_symlinks=False):
                        subs.add(e.name)
                    else:
                        errors.append(f"objects/{e.name}: stray file in the object directory")
        for e, n, c, t in self._fsck_prefixes(subs, progress):
            errors += e
            notes += n
            count += c
            temps += t
        for name, target in self.list_refs():
            if self.info(target) is None or not os.path.exists(self.path_of(target)):
                errors.append(f"ref {name}: dangling (points at missing object {target})")
        if temps:
            notes.append(f"{temps} leftover temp file(s) from interrupted writes (gc removes them)")
        return {"ok": not errors, "objects": count, "errors": errors, "notes": notes}

    def _fsck_prefixes(self, subs: set[str], progress=None):
        """(errors, notes, objects, temps) of each fan-out directory, in order. A large store
        is checked by one forked worker a core (each with its own index connection): re-hashing a
        million small objects is bound by the interpreter's work per file, not by the disk."""
        from provenance.core.parallel import fork_imap
        jobs = [(p, f"{p:02x}" in subs) for p in range(256)]
        big = (self.db.execute("SELECT max(id) FROM obj").fetchone()[0] or 0) >= PARALLEL_FSCK
        if not big or self.readonly:
            yield from (_fsck_prefix(self, p, present, progress) for p, present in jobs)
            return
        parent, own = os.getpid(), []

        def job(j: tuple[int, bool]):
            """A directory's result, and the bytes it hashed (for the parent's progress). A worker
            opens its own connection: the one it inherited by fork is never used."""
            if os.getpid() == parent:
                store = self
            else:
                if not own:
                    own.append(Store(self.root))  # as the parent opened it: WAL locking, never `immutable`
                    own[0].db.execute(LEAN_CACHE)
                store = own[0]
            hashed: list[int] = []
            return _fsck_prefix(store, *j, hashed.append), sum(hashed)
        for result, nbytes in fork_imap(job, jobs, min_items=1):  # the index and the objects are only read
            if progress and nbytes:
                progress(nbytes)
            yield result

    def _slice(self, p: int):
        """Index rows (b3, id, sha, size, is_tree) whose BLAKE3 starts with byte p, in key order."""
        q = ("SELECT o.b3, o.id, o.sha, o.size, EXISTS(SELECT 1 FROM obj_kind k WHERE k.id=o.id AND k.kind='tree') "
             "FROM obj o WHERE o.b3 >= ?")
        if p == 255:
            return self.db.execute(q, (b"\xff",))
        return self.db.execute(q + " AND o.b3 < ?", (bytes([p]), bytes([p + 1])))

    def _fsck_tree(self, b3: str, sha: str, size: int, data: bytes | None) -> list[str]:
        try:
            rows = treemod.parse(data if data is not None else self.read_bytes(b3), b3)
        except (treemod.TreeError, VerificationFailed) as e:
            return [f"tree {b3}: {e}"]
        entries = []
        linked = {c: sha for c, sha in self.db.execute(  # one query: the children the index links it to
            "SELECT c.b3, c.sha FROM link l JOIN obj c ON c.id=l.child WHERE l.parent=(SELECT id FROM obj WHERE b3=?)",
            (_key(b3),))}
        for kind, name, csize, child in rows:
            key = _key(child)
            csha = linked.get(key)
            if csha is None:
                row = self.db.execute("SELECT sha FROM obj WHERE b3=?", (key,)).fetchone()
                if row is None:
                    return [f"tree {b3}: child {name} ({child}) missing"]
                csha = row[0]
            entries.append(treemod.Entry(kind, name, csize, csha.hex(), child))
        d, _ = treemod.tree_digest(entries)
        if d.sha256 != sha or d.size != size:
            return [f"tree {b3}: SHA-256 view does not match the index"]
        return []

    def gc(self, grace: float = DEFAULT_GRACE, dry_run: bool = False) -> dict:
        """Drop objects that neither a ref nor an object added or touched in the last `grace`
        seconds reaches.

        A running add is safe by the write lock (gc waits for it); the grace keeps what an add
        stored until a ref is set on it. An add touches only the roots of what it stored (a
        tree's top, and that only when its last touch is over TOUCH_SLACK old): whatever a
        recent root reaches is kept with it, so a re-add of a stored tree writes nothing.
        """
        import fcntl
        if self.db.execute("SELECT 1 FROM store_meta WHERE key='refs_lost'").fetchone():
            raise ProvError(f"{self.root}: fsck --repair rebuilt this index and could not recover every ref; "
                            "gc would delete what they kept alive. Set the refs again (prov ref set), "
                            "then run prov fsck --ack-repair")
        lock = os.open(self.root / "lock", os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(lock, fcntl.LOCK_EX)  # wait for in-flight writers (see Store.writing)
            return self._gc(grace, dry_run)
        finally:
            os.close(lock)

    def _gc(self, grace: float, dry_run: bool) -> dict:
        """Live: what refs or a recently touched object reach. Computed in SQLite (temp tables spill
        to disk), the object directories walked one at a time: memory stays bounded."""
        self.db.execute(LEAN_CACHE)
        cutoff = time.time() - grace
        removed: list[str] = []
        stale_temps: list[str] = []
        with self.transaction() as db:
            db.execute("CREATE TEMP TABLE IF NOT EXISTS gc_live(id INTEGER PRIMARY KEY)")
            db.execute("DELETE FROM temp.gc_live")
            db.execute("INSERT OR IGNORE INTO temp.gc_live SELECT o.id FROM refs r JOIN obj o ON o.b3=unhex(r.target)")
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
                    os.unlink(self.path_of(b3.hex()))
                except FileNotFoundError:
                    pass
                db.execute("DELETE FROM obj WHERE id=?", (oid,))
                db.execute("DELETE FROM obj_kind WHERE id=?", (oid,))
                db.execute("DELETE FROM link WHERE parent=?", (oid,))
            if removed and not dry_run:  # a stat-cache row must never vouch for a collected object
                db.execute("DELETE FROM statcache WHERE b3 NOT IN (SELECT b3 FROM obj)")
                db.execute("DELETE FROM treecache WHERE b3 NOT IN (SELECT b3 FROM obj)")
            if self.tmp.is_dir():
                stale_temps = [e.path for e in os.scandir(self.tmp) if e.stat(follow_symlinks=False).st_mtime < cutoff]
            with os.scandir(self.objects) as subs:
                for sub in subs:
                    if not (len(sub.name) == 2 and HEX.match(sub.name) and sub.is_dir(follow_symlinks=False)):
                        continue
                    indexed = {b3.hex() for b3, *_ in self._slice(int(sub.name, 16))}
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


def _fsck_prefix(store: "Store", p: int, present: bool, progress=None) -> tuple[list[str], list[str], int, int]:
    """Re-hash one fan-out directory against its slice of the index, in directory order."""
    import hashlib
    from blake3 import blake3
    errors: list[str] = []
    notes: list[str] = []
    count = temps = 0
    prefix = f"{p:02x}"
    index = {b3: row for b3, *row in store._slice(p)}
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
                key = _key(name) if len(name) == 64 and name[:2] == prefix else b""
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
                    errors.extend(store._fsck_tree(name, row[1].hex(), row[2],
                                                   bytes(data) if data is not None else None))
                elif n != row[2] or (hashlib.sha256(data).digest() if data is not None
                                     else bytes.fromhex(d.sha256)) != row[1]:
                    errors.append(f"object {name}: index sha256/size disagree with its content")
    finally:
        os.close(dfd)
    errors.extend(f"object {b3.hex()}: indexed but missing from objects/" for b3 in index)
    return errors, notes, count, temps


def _hash_object(path: str, buf: bytearray, progress=None) -> tuple[Digest, bytes | None]:
    """Digest of a stored object; a small one is read with one read into `buf` (and returned)."""
    fd = os.open(path, os.O_RDONLY)
    try:
        n = os.readv(fd, [buf])
        if n < len(buf):
            data = bytes(memoryview(buf)[:n])
            if progress:
                progress(n)
            return digest_bytes(data), data
    finally:
        os.close(fd)
    return hash_file(path, progress), None


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


class _Restage(Exception):
    """Objects we counted on vanished before commit; the batch stages them again."""


WINDOW = 16 << 20  # page-aligned copy/hash window; at most INFLIGHT of them mapped at once
INFLIGHT = 3


def _copy_and_hash(src_fd: int, out_fd: int, progress) -> Digest:
    """Copy src into out in the kernel, window by window, while two threads hash each
    finished window of *out* through mmap: the digest is that of the bytes we keep,
    even if the source changes under us, and no byte crosses into user space twice."""
    import hashlib
    import mmap
    import queue
    import threading
    from blake3 import blake3

    hashers = [hashlib.sha256(), blake3()]
    queues = [queue.SimpleQueue() for _ in hashers]
    slots = threading.Semaphore(INFLIGHT)
    refs: dict[int, list] = {}
    lock = threading.Lock()

    def release(key: int) -> None:
        with lock:
            refs[key][0] -= 1
            if refs[key][0] == 0:
                refs.pop(key)[1].close()
                slots.release()

    def work(h, q) -> None:
        while (item := q.get()) is not None:
            key, mm = item
            h.update(mm)
            release(key)

    threads = [threading.Thread(target=work, args=(h, q), daemon=True) for h, q in zip(hashers, queues)]
    for t in threads:
        t.start()
    offset = 0
    try:
        while True:
            n = 0
            while n < WINDOW:
                got = os.copy_file_range(src_fd, out_fd, WINDOW - n)
                if got == 0:
                    break
                n += got
            if n == 0:
                break
            _start_writeback(out_fd, offset, n)  # so the final fsync finds little left to do
            slots.acquire()
            mm = mmap.mmap(out_fd, n, offset=offset, access=mmap.ACCESS_READ)
            refs[offset] = [len(queues), mm]
            for q in queues:
                q.put((offset, mm))
            offset += n
            if progress:
                progress(n)
            if n < WINDOW:
                break
    finally:
        for q in queues:
            q.put(None)
        for t in threads:
            t.join()
    return Digest(hashers[0].hexdigest(), hashers[1].hexdigest(), offset)


class Batch:
    """Stage objects, then make them durable and visible together (see module doc)."""

    def __init__(self, store: Store):
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

    def _known(self, b3: str) -> bool:
        if b3 in self.new or b3 in self.present or b3 in self.cached:
            return True
        row = self.s.db.execute("SELECT id FROM obj WHERE b3=?", (bytes.fromhex(b3),)).fetchone()
        if row:
            self.present[b3] = row[0]
            return True
        return False

    def put_bytes(self, data: bytes, kind: str, children: tuple[str, ...] = (),
                  tree: Digest | None = None) -> Digest:
        """Stage a small object. A tree passes its tree digest (SHA-256 view, total size) as `tree`."""
        d = digest_bytes(data)
        if tree is not None:
            assert tree.blake3 == d.blake3
            d = tree
        if not self._known(d.blake3):
            tmp = self._tmp_name()
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o444)
            try:
                _write_all(fd, memoryview(data))
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
                d = _copy_and_hash(src_fd, out, progress)
            except OSError:  # no in-kernel copy here (old kernel, odd filesystem): stream through us
                os.lseek(src_fd, 0, os.SEEK_SET)
                os.ftruncate(out, 0)
                os.lseek(out, 0, os.SEEK_SET)
                with open(src_fd, "rb", buffering=0, closefd=False) as src:
                    d = stream(src, lambda mv: _write_all(out, mv), progress)
            if self._known(d.blake3):
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
                    _syncfs(fd)
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
                _syncfs(fd)
            finally:
                os.close(fd)
        else:
            for d in dirs:
                _fsync_dir(d)
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
