"""The store's index (index.sqlite): its schema and migrations, the binary keys, and the rows an
object's information is read from. Opening a store (objects.Store) applies these; fsck, gc and
transfer query them."""

from __future__ import annotations

import re
import sqlite3
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

from provenance.core.errors import VerificationFailed

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
# in three B-trees into one append-ordered table and two small indexes. 4 holds only the store's own
# tables: the layers above keep theirs in companion databases (the evidence log in log.sqlite, the
# lab's rows in lab.sqlite); a v3 index may still hold them until their owner moves them out, and a
# prov that knows only v3 refuses a v4 index rather than start a second log in it.
SCHEMA_VERSION = 4
KIND_DOC = "kind NOT IN ('blob', 'tree')"  # spelled as in obj_kind_doc, so SQLite uses that partial index
CENSUS_MUL, CENSUS_MOD = 2654435761, 4294967291  # an id's term of census_of_kind's checksum (exact in int64)


def census_term(oid: int) -> int:
    """An id's term of census_of_kind's checksum, as SQLite computes it."""
    return (oid * CENSUS_MUL) % CENSUS_MOD


REF_NAME = re.compile(r"^[A-Za-z0-9._-]+(/[A-Za-z0-9._-]+)*$")
HEX = re.compile(r"^[0-9a-f]+$")
LEAN_CACHE = "PRAGMA cache_size=-8192"  # 8 MiB: a pass over the whole index gains nothing from more


class IndexDamaged(VerificationFailed):
    """index.sqlite cannot be trusted (zero length, no schema, corrupt pages): exit 1, and say how to recover."""


def connect(index: Path, readonly: bool) -> sqlite3.Connection:
    if not readonly:
        return sqlite3.connect(index, timeout=120, isolation_level=None)
    from urllib.parse import quote
    wal = index.with_name(index.name + "-wal")
    # no WAL to replay: nobody can be writing a store we may not write, so skip locking altogether
    extra = "" if wal.exists() and wal.stat().st_size else "&immutable=1"
    return sqlite3.connect(f"file:{quote(str(index.resolve()))}?mode=ro{extra}", uri=True, timeout=120,
                           isolation_level=None)


COMPANION = re.compile(r"^[a-z]+$")


def companion(root: Path, name: str, readonly: bool) -> sqlite3.Connection | None:
    """A database that a layer above keeps beside index.sqlite (`<name>.sqlite`), opened as the index
    is (WAL, synchronous FULL, read-only where the store is). The store knows nothing of its tables.
    None where the store is read-only and the database was never made."""
    if not COMPANION.match(name) or name == "index":
        raise ValueError(f"not a companion database name: {name!r}")
    path = Path(root) / f"{name}.sqlite"
    if readonly and not path.exists():
        return None
    db = connect(path, readonly)
    if not readonly:
        db.execute("PRAGMA journal_mode=WAL")
        db.execute("PRAGMA synchronous=FULL")
    return db


def companion_present(path: Path) -> bool:
    """A companion database file that is there and not empty (through a link to a file, too)."""
    import os
    wal = Path(f"{path}-wal")
    return os.path.isfile(path) and (os.path.getsize(path) > 0 or (wal.is_file() and wal.stat().st_size > 0))


@contextmanager
def write_transaction(db: sqlite3.Connection) -> Iterator[sqlite3.Connection]:
    """One write transaction, taken at once (BEGIN IMMEDIATE: a reader never turns writer, which WAL
    would refuse without waiting); rolled back on any error. The store's and its companions' one."""
    db.execute("BEGIN IMMEDIATE")
    try:
        yield db
    except BaseException:
        if db.in_transaction:  # SQLite rolls back itself on SQLITE_FULL and friends
            db.execute("ROLLBACK")
        raise
    db.execute("COMMIT")


def has_table(db: sqlite3.Connection, name: str) -> bool:
    return db.execute("SELECT 1 FROM sqlite_master WHERE type='table' AND name=?", (name,)).fetchone() is not None


def has_objects(objects: Path) -> bool:
    try:
        return any(any(True for _ in sub.iterdir()) for sub in objects.iterdir() if sub.is_dir())
    except OSError:
        return False


def unhex_sql(text):
    return bytes.fromhex(text) if isinstance(text, str) else text


def create_schema(db: sqlite3.Connection, temp: bool = False) -> None:
    for stmt in SCHEMA.split(";"):
        if stmt.strip():
            if temp:  # the object tables in the connection's temp schema (a read-only old store)
                if re.search(r"\b(refs|store_meta|statcache|treecache)\(", stmt):
                    continue
                stmt = re.sub(r"CREATE TABLE", "CREATE TEMP TABLE", stmt)
                stmt = re.sub(r"(INDEX IF NOT EXISTS )(\w+)", r"\1temp.\2", stmt)
            db.execute(stmt)


def migrate(db: sqlite3.Connection, tables: set[str]) -> None:
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


@dataclass(frozen=True)
class ObjectInfo:
    blake3: str
    sha256: str
    size: int
    kind: str  # the most specific kind: the first non-blob kind it was stored as, else "blob"
    kinds: tuple[str, ...] = ()  # every kind it was stored as, oldest first

    def as_dict(self) -> dict:
        return {"kind": self.kind, "sha256": self.sha256, "blake3": self.blake3, "size": self.size}


INFO_QUERY = ("SELECT o.b3, o.sha, o.size, (SELECT group_concat(kind, ' ') FROM "
         "(SELECT kind FROM obj_kind k WHERE k.id=o.id ORDER BY added, kind)) FROM obj o ")


def object_info(row) -> ObjectInfo:
    b3, sha, size, kinds = row
    ks = tuple(kinds.split()) if kinds else ("blob",)
    return ObjectInfo(b3.hex(), sha.hex(), size, next((k for k in ks if k != "blob"), "blob"), ks)


def key_of(hexdigest: str) -> bytes:
    """A full hex digest as the index's binary key (a malformed one matches nothing)."""
    try:
        return bytes.fromhex(hexdigest)
    except (ValueError, TypeError):
        return b""


def prefix_range(text: str) -> tuple[bytes, bytes]:
    """The binary keys a hex prefix covers, inclusive."""
    return bytes.fromhex(text.ljust(64, "0")), bytes.fromhex(text.ljust(64, "f"))


def slice_rows(db: sqlite3.Connection, p: int):
    """Index rows (b3, id, sha, size, is_tree) whose BLAKE3 starts with byte p, in key order."""
    q = ("SELECT o.b3, o.id, o.sha, o.size, EXISTS(SELECT 1 FROM obj_kind k WHERE k.id=o.id AND k.kind='tree') "
         "FROM obj o WHERE o.b3 >= ?")
    if p == 255:
        return db.execute(q, (b"\xff",))
    return db.execute(q + " AND o.b3 < ?", (bytes([p]), bytes([p + 1])))
