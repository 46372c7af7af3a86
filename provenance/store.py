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
import os
import re
import sqlite3
import stat
import time
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator

from . import tree as treemod
from .digest import CHUNK, Digest, digest_bytes, hash_file, stream
from .errors import ProvError, VerificationFailed

SCHEMA = """
CREATE TABLE IF NOT EXISTS objects(
    blake3 TEXT PRIMARY KEY, sha256 TEXT NOT NULL, size INTEGER NOT NULL,
    kind TEXT NOT NULL, added REAL NOT NULL, touched REAL NOT NULL) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS objects_sha256 ON objects(sha256);
CREATE TABLE IF NOT EXISTS links(parent TEXT NOT NULL, child TEXT NOT NULL,
    PRIMARY KEY(parent, child)) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS refs(name TEXT PRIMARY KEY, target TEXT NOT NULL,
    updated REAL NOT NULL) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS kinds(blake3 TEXT NOT NULL, kind TEXT NOT NULL, added REAL NOT NULL,
    PRIMARY KEY(blake3, kind)) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS store_meta(key TEXT PRIMARY KEY, value TEXT NOT NULL) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS statcache(path BLOB PRIMARY KEY, dev INTEGER, ino INTEGER,
    size INTEGER, mtime_ns INTEGER, ctime_ns INTEGER, sha256 TEXT, blake3 TEXT,
    recorded_ns INTEGER) WITHOUT ROWID;
"""
# Index schema versions (PRAGMA user_version): 0 had one kind per object (objects.kind, whoever
# stored the bytes first); 2 adds kinds(blake3, kind): the set of kinds an object was stored as.
SCHEMA_VERSION = 2
REF_NAME = re.compile(r"^[A-Za-z0-9._-]+(/[A-Za-z0-9._-]+)*$")
HEX = re.compile(r"^[0-9a-f]+$")
# Kernel file timestamps come from a coarse clock (one jiffy, up to 10 ms behind);
# a file modified this close to the moment we hashed it may change again unseen.
RACY_NS = 50_000_000
DEFAULT_GRACE = 3600.0
TMP_PREFIX = ".tmp-"  # staged, not yet an object: skipped by readers, reported by fsck, swept by gc
SMALL = CHUNK  # below this, file bytes are read whole and durability is batched

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


def default_store_path() -> Path:
    env = os.environ.get("PROV_STORE")
    if env:
        return Path(env)
    here = Path.cwd()
    for d in (here, *here.parents):
        if (d / ".git").exists() or (d / "dvc.yaml").exists():
            return d / "evidence" / "store"
    return here / "evidence" / "store"


@dataclass(frozen=True)
class ObjectInfo:
    blake3: str
    sha256: str
    size: int
    kind: str  # the most specific kind: the first non-blob kind it was stored as, else "blob"
    kinds: tuple[str, ...] = ()  # every kind it was stored as, oldest first

    def as_dict(self) -> dict:
        return {"kind": self.kind, "sha256": self.sha256, "blake3": self.blake3, "size": self.size}


_INFO = ("SELECT o.blake3, o.sha256, o.size, o.kind, (SELECT group_concat(kind, ' ') FROM "
         "(SELECT kind FROM kinds k WHERE k.blake3=o.blake3 ORDER BY added, kind)) FROM objects o ")


def _object_info(row) -> ObjectInfo:
    b3, sha, size, first, kinds = row
    ks = tuple(kinds.split()) if kinds else (first,)
    return ObjectInfo(b3, sha, size, next((k for k in ks if k != "blob"), "blob"), ks)


class Store:
    def __init__(self, root: str | os.PathLike | None = None, create: bool = False,
                 readonly: bool | None = None):
        self.root = Path(root) if root is not None else default_store_path()
        index = self.root / "index.sqlite"
        self.objects = self.root / "objects"
        self.tmp = self.root / "tmp"
        self.objects_str, self.tmp_str = str(self.objects), str(self.tmp)
        self._tmp_seq = 0
        self._lock_fd, self._lock_depth = None, 0
        exists = index.exists()
        if not exists:
            if not create:
                raise ProvError(f"{self.root}: no store here (prov add creates one; or pass --store / PROV_STORE)")
            for d in ("objects", "tmp"):
                (self.root / d).mkdir(parents=True, exist_ok=True)
        elif index.stat().st_size == 0 and _has_objects(self.objects):
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
        tables = {n for (n,) in db.execute("SELECT name FROM sqlite_master WHERE type='table'")}
        if existed and "objects" not in tables and _has_objects(self.objects):
            raise IndexDamaged(f"{self.root / 'index.sqlite'}: has no object table, yet objects/ holds objects; "
                               "prov fsck --repair rebuilds the index from the objects")
        version = db.execute("PRAGMA user_version").fetchone()[0]
        if version > SCHEMA_VERSION:
            raise ProvError(f"{self.root}: index schema v{version} is newer than this prov (v{SCHEMA_VERSION}); "
                            "upgrade prov")
        if self.readonly:
            if "kinds" not in tables:  # an old store we may not migrate: read its one kind per object
                db.execute("CREATE TEMP VIEW kinds AS SELECT blake3, kind, added FROM objects")
            if "store_meta" not in tables:
                db.execute("CREATE TEMP TABLE store_meta(key TEXT PRIMARY KEY, value TEXT NOT NULL)")
            return
        db.execute("PRAGMA journal_mode=WAL")
        db.execute("PRAGMA synchronous=FULL")
        db.execute("PRAGMA cache_size=-65536")  # 64 MiB: index inserts by hash land at random pages
        db.executescript(SCHEMA)
        if version < SCHEMA_VERSION:
            with self.transaction():  # migrate: every object's one kind becomes its first kind
                db.execute("INSERT OR IGNORE INTO kinds(blake3, kind, added) SELECT blake3, kind, added FROM objects")
                db.execute(f"PRAGMA user_version={SCHEMA_VERSION}")

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

    @property
    def log(self):
        """The evidence log kept in this store's index (provenance.translog)."""
        from .translog import Log
        if getattr(self, "_log", None) is None:
            self._log = Log(self.db)
        return self._log

    def log_object(self, b3: str, kind: str | None = None) -> tuple[int, bool]:
        """Append a stored object to the evidence log (idempotent): (leaf index, newly appended)."""
        from .translog import entry_bytes
        info = self.info(b3) or self._missing(b3)
        if kind is not None and kind not in info.kinds:
            raise ProvError(f"{b3}: not stored as a {kind} (it is {', '.join(info.kinds)})")
        return self.log.append(entry_bytes(kind or info.kind, info.sha256, info.blake3))

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
        row = self.db.execute(_INFO + "WHERE o.blake3=?", (b3,)).fetchone()
        return _object_info(row) if row else None

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
        for algo in algos:
            for row in self.db.execute(_INFO + f"WHERE o.{algo} >= ? AND o.{algo} < ? LIMIT 3", (text, text + "g")):
                hits[row[0]] = _object_info(row)
        if not hits:
            raise ProvError(f"{ref}: no such object in {self.root}")
        if len(hits) > 1:
            raise ProvError(f"{ref}: ambiguous digest prefix ({len(hits)} objects match; give more digits)")
        return next(iter(hits.values()))

    def _missing(self, what: str):
        raise ProvError(f"{what}: object missing from {self.root}")

    def _corrupt(self, b3: str, seen: str) -> VerificationFailed:
        return VerificationFailed(f"object {b3} at {self.path_of(b3)} is corrupt (its bytes hash to {seen}); "
                                  f"nothing was served: run prov fsck")

    def read_bytes(self, b3: str) -> bytes:
        """The object's bytes, re-hashed: a store altered on disk is noticed, never served."""
        try:
            data = self.path_of(b3).read_bytes()
        except FileNotFoundError:
            self._missing(b3)
        seen = digest_bytes(data).blake3
        if seen != b3:
            raise self._corrupt(b3, seen)
        return data

    def copy_out(self, b3: str, dest: str | os.PathLike, mode: int = 0o644) -> Digest:
        """Write the object to a new file `dest`, re-hashing the bytes as they are copied: what leaves
        the store to be run or read is what was hashed, or nothing (dest is removed)."""
        fd = os.open(dest, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, mode)
        try:
            with self.open(b3) as src:
                d = stream(src, lambda mv: _write_all(fd, mv))
        except BaseException:
            os.close(fd)
            os.unlink(dest)
            raise
        os.close(fd)
        if d.blake3 != b3:
            os.unlink(dest)
            raise self._corrupt(b3, d.blake3)
        return d

    def verify_object(self, b3: str) -> Digest:
        """Re-hash a stored object in place (before streaming it somewhere that cannot be undone)."""
        with self.open(b3) as f:
            d = stream(f)
        if d.blake3 != b3:
            raise self._corrupt(b3, d.blake3)
        return d

    def open(self, b3: str):
        try:
            return open(self.path_of(b3), "rb")
        except FileNotFoundError:
            self._missing(b3)

    def open_verified(self, b3: str, size: int | None = None) -> "VerifiedReader":
        """Open an object for reading that re-hashes as it goes: the read that reaches the end raises
        VerificationFailed (returning nothing) unless the bytes match their address. The one way
        bytes leave the store for a user (cat, export)."""
        return VerifiedReader(self.open(b3), b3, size)

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
            db.executemany("INSERT OR IGNORE INTO kinds(blake3, kind, added) VALUES(?,?,?)",
                           [(b3, k, time.time()) for k in kinds])

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
                p = os.path.abspath(p)  # every path below is then absolute: the stat cache's key
                b.load_statcache(p)
                return "tree", treemod.walk(
                    p, lambda f, s: b.put_file(f, s, progress),
                    lambda data, d: b.put_bytes(data, "blob"),
                    lambda data, d, entries: b.put_bytes(
                        data, "tree", tuple(e.blake3 for e in entries), d),
                    allow_unsafe_links)
            raise ProvError(f"{os.fsdecode(p)}: not a regular file or directory")

    def merge_from(self, other: "Store") -> int:
        """Copy every object (with its index row and links) that `other` has and we lack.
        Bytes are re-hashed on the way in: a corrupt source object is refused, not spread."""
        rows = list(other.db.execute("SELECT blake3, sha256, size, kind FROM objects"))
        other_kinds = list(other.db.execute("SELECT blake3, kind FROM kinds"))
        links = list(other.db.execute("SELECT parent, child FROM links"))
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
                self.copy_out(child, target)
                os.chmod(target, 0o755 if kind == "exec" else 0o644)

    # -- integrity ----------------------------------------------------------------------

    def fsck(self, progress: Callable[[int], None] | None = None) -> dict:
        """Re-hash every object; cross-check index, tree children and refs."""
        errors: list[str] = []
        notes: list[str] = []
        index = {r[0]: ObjectInfo(*r) for r in self.db.execute("SELECT blake3, sha256, size, kind FROM objects")}
        on_disk: set[str] = set()
        temps = [f for f in self.tmp.iterdir()] if self.tmp.exists() else []
        for sub in sorted(self.objects.iterdir()) if self.objects.exists() else ():
            for f in sorted(sub.iterdir()):
                name = f.name
                if name.startswith(TMP_PREFIX):
                    temps.append(f)
                    continue
                if f.parent.name != name[:2] or len(name) != 64 or not HEX.match(name):
                    errors.append(f"objects/{sub.name}/{name}: stray file in the object directory")
                    continue
                on_disk.add(name)
                d = hash_file(f, progress)
                if d.blake3 != name:
                    errors.append(f"object {name}: content does not match its BLAKE3 address (corrupt)")
                    continue
                info = index.get(name)
                if info is None:
                    notes.append(f"object {name}: complete but not indexed (interrupted add; gc collects it)")
                elif info.kind != "tree" and (d.sha256 != info.sha256 or d.size != info.size):
                    errors.append(f"object {name}: index sha256/size disagree with its content")
        for b3, info in index.items():
            if b3 not in on_disk:
                errors.append(f"object {b3}: indexed but missing from objects/")
            elif info.kind == "tree":
                errors.extend(self._fsck_tree(info, index))
        for name, target in self.list_refs():
            if target not in index or target not in on_disk:
                errors.append(f"ref {name}: dangling (points at missing object {target})")
        if temps:
            notes.append(f"{len(temps)} leftover temp file(s) from interrupted writes (gc removes them)")
        return {"ok": not errors, "objects": len(on_disk), "errors": errors, "notes": notes}

    def _fsck_tree(self, info: ObjectInfo, index: dict[str, ObjectInfo]) -> list[str]:
        try:
            rows = treemod.parse(self.read_bytes(info.blake3), info.blake3)
        except treemod.TreeError as e:
            return [f"tree {info.blake3}: {e}"]
        entries = []
        for kind, name, size, child in rows:
            ci = index.get(child)
            if ci is None:
                return [f"tree {info.blake3}: child {name} ({child}) missing"]
            entries.append(treemod.Entry(kind, name, size, ci.sha256, child))
        d, _ = treemod.tree_digest(entries)
        if d.sha256 != info.sha256 or d.size != info.size:
            return [f"tree {info.blake3}: SHA-256 view does not match the index"]
        return []

    def gc(self, grace: float = DEFAULT_GRACE, dry_run: bool = False) -> dict:
        """Drop objects unreachable from refs and untouched for `grace` seconds.

        The grace period is what makes gc safe beside a running add: an add touches
        every object it relies on when it commits, and stages new ones as fresh files.
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
        cutoff = time.time() - grace
        removed: list[str] = []
        with self.transaction() as db:
            live = {t for _, t in db.execute("SELECT name, target FROM refs")}
            frontier = list(live)
            while frontier:
                nxt = []
                for i in range(0, len(frontier), 500):
                    part = frontier[i:i + 500]
                    q = f"SELECT child FROM links WHERE parent IN ({','.join('?' * len(part))})"
                    nxt.extend(c for (c,) in db.execute(q, part) if c not in live)
                live.update(nxt)
                frontier = nxt
            dead = [b3 for b3, touched in db.execute("SELECT blake3, touched FROM objects")
                    if b3 not in live and touched < cutoff]
            indexed = {b3 for (b3,) in db.execute("SELECT blake3 FROM objects")}
            stale_temps = [f for f in self.tmp.iterdir() if f.stat().st_mtime < cutoff]
            for sub in self.objects.iterdir():
                for f in sub.iterdir():
                    if f.name.startswith(TMP_PREFIX):
                        if f.stat().st_mtime < cutoff:
                            stale_temps.append(f)
                    elif f.name not in indexed and f.stat().st_mtime < cutoff:
                        dead.append(f.name)
            if not dry_run:
                for b3 in dead:
                    try:
                        os.unlink(self.path_of(b3))
                    except FileNotFoundError:
                        pass
                    db.execute("DELETE FROM objects WHERE blake3=?", (b3,))
                    db.execute("DELETE FROM kinds WHERE blake3=?", (b3,))
                    db.execute("DELETE FROM links WHERE parent=?", (b3,))
                for f in stale_temps:
                    f.unlink(missing_ok=True)
            removed = dead
        return {"removed": len(removed), "objects": sorted(removed), "dry_run": dry_run}


class VerifiedReader:
    """A file object over a stored object that re-hashes what it reads (see Store.open_verified).
    A short read of a regular file is its end: that read is checked before its bytes are returned."""

    def __init__(self, f, b3: str, size: int | None):
        from blake3 import blake3
        self.f, self.b3, self.size, self.h, self.n, self.done = f, b3, size, blake3(), 0, False

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
                raise VerificationFailed(f"object {self.b3}: stored bytes do not match their address (corrupt); "
                                         "run prov fsck")
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
        self.present: set[str] = set()
        self.cached: dict[str, tuple[bytes, os.stat_result]] = {}  # b3 -> source, trusted from the stat cache
        self.deferred_sync = False
        self.statcache: dict[bytes, tuple] = {}
        self.preloaded = False  # True once every cache row under the tree is in `statcache`
        self.subdirs: set[str] = set()  # fan-out directories known to exist
        self.new_subdirs = False
        self.stat_rows: list[tuple] = []
        self.extra: list[tuple[str, str, tuple[str, ...]]] = []  # (b3, kind, children) of objects already known
        self._writing = None

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
            for tmp, *_ in self.new.values():
                if tmp is not None:
                    try:
                        os.unlink(tmp)
                    except FileNotFoundError:
                        pass

    def _tmp_name(self) -> str:
        # one flat tmp/ (measured: creating files there beats creating them across fan-out dirs)
        self.s._tmp_seq += 1
        return os.path.join(self.s.tmp_str, f"{TMP_PREFIX}{os.getpid()}-{time.monotonic_ns()}-{self.s._tmp_seq}")

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
        if self.s.db.execute("SELECT 1 FROM objects WHERE blake3=?", (b3,)).fetchone():
            self.present.add(b3)
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

    def load_statcache(self, prefix: bytes) -> None:
        self.preloaded = True
        for row in self.s.db.execute("SELECT * FROM statcache WHERE path >= ? AND path < ?",
                                     (prefix, prefix + b"\xff")):
            self.statcache[row[0]] = row[1:]

    def put_file(self, path: bytes, st: os.stat_result, progress=None, use_cache: bool = True) -> Digest:
        apath = path if path.startswith(b"/") else os.path.abspath(path)
        hit = self.statcache.get(apath) if use_cache else None
        if hit is None and use_cache and not self.preloaded:
            row = self.s.db.execute("SELECT * FROM statcache WHERE path=?", (apath,)).fetchone()
            hit = row[1:] if row else None
        if hit is not None:
            dev, ino, size, mtime_ns, ctime_ns, sha, b3, recorded_ns = hit
            if (dev, ino, size, mtime_ns, ctime_ns) == (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns,
                                                        st.st_ctime_ns) \
                    and max(mtime_ns, ctime_ns) < recorded_ns - RACY_NS:
                if not (b3 in self.new or b3 in self.present):
                    self.cached[b3] = (apath, st)  # existence checked in bulk at commit
                self.extra.append((b3, "blob", ()))
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
        if (now.st_mtime_ns, now.st_size) == (st.st_mtime_ns, st.st_size):
            self.stat_rows.append((apath, st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns,
                                   st.st_ctime_ns, d.sha256, d.blake3, started))
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
            self._commit()
        except _Restage as r:
            self._restage(r.args[0])
            self._commit()

    def _commit(self) -> None:
        s = self.s
        if self.new and self.deferred_sync:
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
        for d in dirs:
            _fsync_dir(d)
        now = time.time()
        with s.transaction() as db:
            db.execute("CREATE TEMP TABLE IF NOT EXISTS seen(b3 TEXT PRIMARY KEY) WITHOUT ROWID")
            db.execute("DELETE FROM temp.seen")
            db.executemany("INSERT OR IGNORE INTO temp.seen VALUES(?)",
                           ((b3,) for b3 in (*self.present, *self.cached) if b3 not in self.new))
            db.execute("UPDATE objects SET touched=? WHERE blake3 IN (SELECT b3 FROM temp.seen)", (now,))
            gone = [b3 for (b3,) in db.execute(
                "SELECT b3 FROM temp.seen WHERE b3 NOT IN (SELECT blake3 FROM objects)")]
            if gone:  # collected since we looked (gc), or a stale stat cache: stage them afresh
                raise _Restage(gone)
            db.executemany(
                "INSERT INTO objects(blake3, sha256, size, kind, added, touched) VALUES(?,?,?,?,?,?) "
                "ON CONFLICT(blake3) DO UPDATE SET touched=excluded.touched",
                [(b3, d.sha256, d.size, kind, now, now) for b3, (_, d, kind, _c) in self.new.items()])
            db.executemany("INSERT OR IGNORE INTO links(parent, child) VALUES(?,?)",
                           [(b3, c) for b3, (*_x, children) in self.new.items() for c in children]
                           + [(b3, c) for b3, _k, children in self.extra for c in children])
            db.executemany("INSERT OR IGNORE INTO kinds(blake3, kind, added) VALUES(?,?,?)",
                           [(b3, kind, now) for b3, (_, _d, kind, _c) in self.new.items()]
                           + [(b3, kind, now) for b3, kind, _c in self.extra])
            db.executemany("INSERT OR REPLACE INTO statcache VALUES(?,?,?,?,?,?,?,?,?)", self.stat_rows)
        self.new.clear()
        self.present.clear()
        self.cached.clear()
        self.stat_rows.clear()
        self.extra.clear()

    def _restage(self, gone: list[str]) -> None:
        for b3 in gone:
            self.present.discard(b3)
            src = self.cached.pop(b3, None)
            if src is None:
                raise ProvError(f"object {b3} was garbage-collected during this add; run it again")
            if self.put_file(*src, use_cache=False).blake3 != b3:
                raise ProvError(f"{os.fsdecode(src[0])}: changed while being added; run it again")
