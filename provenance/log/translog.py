"""An append-only Merkle log (RFC 6962 / RFC 9162) inside the store, with C2SP signed checkpoints.

Storage: every complete subtree hash is a row (level, index) in SQLite; level 0 holds the
leaf hashes. Appending leaf n adds it and the parents it completes, in one transaction, so
a leaf is either wholly there or absent and any root or proof is O(log n) lookups.

Verification is pure and lives apart: `log.proofs` (RFC 9162 proofs) and `log.checkpoint`
(signed notes), which import nothing from the store.
"""

from __future__ import annotations

import os
import sqlite3
import weakref
from pathlib import Path

from provenance.core.errors import ProvError, VerificationFailed
from provenance.store.index import connect, has_table, write_transaction as transaction
from provenance.log.checkpoint import (NOTE_KEY_NAME, Checkpoint, merge_signatures, note_key_hash, note_verifier,
                                       parse_checkpoint, sign_checkpoint, verify_checkpoint)
from provenance.log.proofs import (EMPTY_ROOT, HASH_LEN, LogProofError, entry_bytes, leaf_hash, mth, node_hash,
                                   verify_consistency, verify_inclusion, largest_pow2_below)

# the proofs and checkpoints have their own homes (pure, what a verifier imports); the log's API names them
__all__ = ["EMPTY_ROOT", "HASH_LEN", "LogProofError", "entry_bytes", "leaf_hash", "mth", "node_hash",
           "verify_consistency", "verify_inclusion", "NOTE_KEY_NAME", "Checkpoint", "note_key_hash",
           "note_verifier", "parse_checkpoint", "sign_checkpoint", "verify_checkpoint", "Log", "LOG_TABLES",
           "open_log", "transaction", "checkpoints_of", "logged_objects", "log_object", "repair_store"]

# -- the persistent log -------------------------------------------------------------------------

SCHEMA = """
CREATE TABLE IF NOT EXISTS log_meta(key TEXT PRIMARY KEY, value TEXT NOT NULL) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS log_nodes(id INTEGER PRIMARY KEY, hash BLOB NOT NULL);
CREATE TABLE IF NOT EXISTS log_leaves(idx INTEGER PRIMARY KEY, entry BLOB NOT NULL);
CREATE INDEX IF NOT EXISTS log_leaf_hash ON log_nodes(hash) WHERE id < 1099511627776;
CREATE TABLE IF NOT EXISTS log_checkpoints(size INTEGER PRIMARY KEY, note TEXT NOT NULL);
"""


NODE_SHIFT = 40  # node (level, idx) is row level << 40 | idx: an integer key is SQLite's fastest path


class Log:
    def __init__(self, db: sqlite3.Connection, create: bool = True):
        self.db = db
        if create:
            db.executescript(SCHEMA)

    # reading
    def size(self) -> int:
        return self.db.execute("SELECT COALESCE(MAX(idx) + 1, 0) FROM log_leaves").fetchone()[0]

    def stored_origin(self) -> str | None:
        row = self.db.execute("SELECT value FROM log_meta WHERE key='origin'").fetchone()
        return row[0] if row else None

    def origin(self) -> str:
        """The log's origin line, made (once, at random) by its first use."""
        origin = self.stored_origin()
        if origin:
            return origin
        self.db.execute("INSERT OR IGNORE INTO log_meta VALUES('origin', ?)",
                        (f"comma-lab.dev/provenance/log/{os.urandom(8).hex()}",))
        return self.stored_origin()

    def _node(self, level: int, idx: int) -> bytes:
        row = self.db.execute("SELECT hash FROM log_nodes WHERE id=?", (level << NODE_SHIFT | idx,)).fetchone()
        if row is None:
            raise ProvError(f"log: node ({level}, {idx}) missing")
        return row[0]

    def _mth(self, start: int, end: int) -> bytes:
        """Root of leaves [start, end); aligned power-of-two ranges are single lookups."""
        n = end - start
        if n == 0:
            return EMPTY_ROOT
        if n & (n - 1) == 0 and start % n == 0:
            return self._node(n.bit_length() - 1, start // n)
        k = largest_pow2_below(n)
        return node_hash(self._mth(start, start + k), self._mth(start + k, end))

    def root(self, size: int | None = None) -> bytes:
        size = self.size() if size is None else size
        return self._mth(0, size)

    def index_of(self, leaf: bytes) -> int | None:
        row = self.db.execute("SELECT id FROM log_nodes WHERE id < 1099511627776 AND hash=? ORDER BY id LIMIT 1",
                              (leaf,)).fetchone()
        return row[0] if row else None

    def inclusion_proof(self, index: int, size: int) -> list[bytes]:
        if not 0 <= index < size <= self.size():
            raise ProvError(f"log: no leaf {index} in a tree of size {size} (log size {self.size()})")
        proof: list[bytes] = []
        start, end, m = 0, size, index
        while end - start > 1:  # RFC 6962 PATH(m, D[start:end]), iteratively; collected leaf-first
            k = largest_pow2_below(end - start)
            if m < k:
                proof.append(self._mth(start + k, end))
                end = start + k
            else:
                proof.append(self._mth(start, start + k))
                start, m = start + k, m - k
        return proof[::-1]

    def consistency_proof(self, size1: int, size2: int) -> list[bytes]:
        if not 0 <= size1 <= size2 <= self.size():
            raise ProvError(f"log: cannot prove {size1} -> {size2} (log size {self.size()})")
        if size1 == 0 or size1 == size2:
            return []
        proof: list[bytes] = []
        start, end, m, b = 0, size2, size1, True
        while True:  # RFC 6962 SUBPROOF(m, D[start:end], b)
            if m == end - start:
                if not b:
                    proof.append(self._mth(start, end))
                break
            k = largest_pow2_below(end - start)
            if m <= k:
                proof.append(self._mth(start + k, end))
                end = start + k
            else:
                proof.append(self._mth(start, start + k))
                start, m, b = start + k, m - k, False
        return proof[::-1]

    # writing
    def append_many(self, entries: list[bytes]) -> list[int]:
        """Append leaves in one transaction; returns their indices."""
        with transaction(self.db):
            return self._append(entries)

    def _append(self, entries: list[bytes]) -> list[int]:
        db = self.db
        n = self.size()
        self.origin()
        nodes, leaves, cache = [], [], {}
        for i, data in enumerate(entries):
            idx = n + i
            h = leaf_hash(data)
            leaves.append((idx, data))
            level, j = 0, idx
            nodes.append((j, h))
            cache[(0, j)] = h
            while j & 1:  # this node completes its parent
                left = cache.get((level, j - 1)) or self._node(level, j - 1)
                h = node_hash(left, h)
                level, j = level + 1, j >> 1
                nodes.append((level << NODE_SHIFT | j, h))
                cache[(level, j)] = h
            if len(cache) > 4096:  # keep the right frontier: left children whose sibling is incomplete
                cache = {k: v for k, v in cache.items() if k[1] & 1 == 0 and (k[1] + 2) << k[0] > idx + 1}
        db.executemany("INSERT INTO log_leaves(idx, entry) VALUES(?,?)", leaves)
        db.executemany("INSERT INTO log_nodes(id, hash) VALUES(?,?)", nodes)
        return list(range(n, n + len(entries)))

    def append(self, entry: bytes) -> tuple[int, bool]:
        """Append unless this exact entry is already logged; (index, newly appended). The look and the
        append are one transaction, so two appenders of one entry make one leaf."""
        with transaction(self.db):
            existing = self.index_of(leaf_hash(entry))
            if existing is not None:
                return existing, False
            return self._append([entry])[0], True

    def same_as(self, other: "Log") -> bool:
        """Whether two copies hold the same log: leaves, origin and signed checkpoints."""
        return (self.size() == other.size() and self.stored_origin() == other.stored_origin()
                and self.checkpoints() == other.checkpoints() and list(self.leaves()) == list(other.leaves()))

    def empty(self) -> bool:
        return self.size() == 0 and not self.checkpoints()

    def leaves(self, upto: int | None = None):
        q = "SELECT idx, entry FROM log_leaves" + (" WHERE idx < ?" if upto is not None else "") + " ORDER BY idx"
        return self.db.execute(q, (upto,) if upto is not None else ())

    def checkpoints(self) -> list[tuple[int, str]]:
        return list(self.db.execute("SELECT size, note FROM log_checkpoints ORDER BY size"))

    def record_checkpoint(self, size: int, note: str) -> str:
        """Keep a signed checkpoint; a checkpoint of the same body keeps the cosignatures it had. The note kept."""
        row = self.db.execute("SELECT note FROM log_checkpoints WHERE size=?", (size,)).fetchone()
        if row is not None:
            try:
                note = merge_signatures(row[0], note)
            except LogProofError:  # another body at this size: the newer signing wins, as before
                pass
        self.db.execute("INSERT OR REPLACE INTO log_checkpoints(size, note) VALUES(?,?)", (size, note))
        return note

    def recompute(self) -> list[str]:
        """Rebuild every node from the leaves and compare with what is stored and signed.

        Level by level, in bounded memory: each level's hashes go to a scratch file (32 bytes a
        node) and are compared, in key order, with the stored nodes of that level."""
        import tempfile
        self.db.execute("PRAGMA cache_size=-8192")  # one pass over every node: a big cache only costs memory
        problems: list[str] = []
        expected_idx = 0
        count = 0
        with tempfile.TemporaryFile() as cur, tempfile.TemporaryFile() as nxt:
            for idx, entry in self.leaves():
                if idx != expected_idx:
                    problems.append(f"leaf {expected_idx} missing")
                    break
                expected_idx += 1
                cur.write(leaf_hash(entry))
            n_leaves = expected_idx
            n, level = n_leaves, 0
            while n and not problems:
                cur.seek(0)
                stored = self.db.execute("SELECT id, hash FROM log_nodes WHERE id >= ? AND id < ? ORDER BY id",
                                         (level << NODE_SHIFT, (level + 1) << NODE_SHIFT))
                nxt.seek(0)
                nxt.truncate()
                left = None
                for i in range(n):
                    h = cur.read(32)
                    row = stored.fetchone()
                    count += 1
                    if row is None or row != (level << NODE_SHIFT | i, h):
                        problems.append(f"node ({level}, {i}) does not match its leaves")
                        break
                    if i & 1:
                        nxt.write(node_hash(left, h))
                    left = h
                else:
                    if stored.fetchone() is not None:
                        problems.append(f"stored node(s) at level {level} not derived from any leaves")
                cur, nxt = nxt, cur
                n, level = n // 2, level + 1
            if not problems:
                total = self.db.execute("SELECT count(*) FROM log_nodes").fetchone()[0]
                if total != count:
                    problems.append(f"{total - count} stored node(s) not derived from any leaves")
        if problems:  # roots from unverified nodes would prove nothing
            return problems
        for size, note in self.checkpoints():  # every node now matches the leaves: O(log n) per root
            cp = parse_checkpoint(note)
            if size > n_leaves or cp.size != size or cp.root != self.root(size):
                problems.append(f"checkpoint at size {size} does not match the leaves")
        return problems


# -- the log of a store ------------------------------------------------------------------------
# The log keeps its tables in a database of its own beside the store's index (log.sqlite, a store
# companion): the store knows nothing of them, and logging an object is its caller's step (records,
# releases, the ledger). An index of v3 held them; the first writer to open the log moves them out.
LOG_TABLES = ("log_meta", "log_leaves", "log_nodes", "log_checkpoints")
LOG_DB = "log"
_OPEN: "weakref.WeakKeyDictionary" = weakref.WeakKeyDictionary()


def _in_index(store) -> bool:
    """A v3 index's log, not yet moved out."""
    return has_table(store.db, "log_leaves")


def _has_log(store) -> bool:
    return (store.root / f"{LOG_DB}.sqlite").exists() or _in_index(store) or store.companion_made(LOG_DB)


def open_log(store) -> Log:
    """The evidence log of this store. A read-only store reads a v3 index's log where it is (an interrupted
    move-out included), or an empty one where it never kept a log. A log.sqlite this store made that is
    now missing, empty or without the log's tables is damage (gc would otherwise collect what it named)."""
    kept = _OPEN.get(store)
    if kept is not None and kept[0] is store.db:
        return kept[1]
    if store.readonly and _in_index(store):
        db = store.db
    else:
        made = store.companion_made(LOG_DB)
        db = store.companion(LOG_DB, kept=True)
        if db is None:
            db = sqlite3.connect(":memory:", isolation_level=None)
        elif _in_index(store):
            _move_out(store, db)
        elif made and not has_table(db, "log_leaves"):
            raise VerificationFailed(f"{store.root / (LOG_DB + '.sqlite')}: holds no evidence log, yet this store "
                                     "kept its log there; restore it from a copy (nothing is collected or appended "
                                     "until then)")
    log = Log(db)
    _OPEN[store] = (store.db, log)
    return log


def _move_out(store, db: sqlite3.Connection) -> None:
    """A v3 index's log tables into log.sqlite: copied whole in one transaction of the log's, then dropped
    from the index in one of the store's (which also keeps a second mover waiting). The copy is all or
    nothing, so after a crash log.sqlite is empty (copied again) or the very log (the index's dropped).
    A log.sqlite that holds another log is never overwritten: both are kept and the open refused."""
    target = Log(db)
    with store.transaction() as index:
        if not has_table(index, "log_leaves"):  # another opener moved it while we waited
            return
        old = Log(index, create=False)
        if not target.empty() and not target.same_as(old):
            raise VerificationFailed(
                f"{store.root}: two evidence logs: index.sqlite holds a v3 log of {old.size()} leaves and "
                f"log.sqlite another of {target.size()}; neither is dropped: move aside the one you do not "
                "trust and run again")
        if target.empty():
            _fill(db, {t: index.execute(f"SELECT * FROM {t}") for t in LOG_TABLES if has_table(index, t)})
        for t in LOG_TABLES:
            index.execute(f"DROP TABLE IF EXISTS {t}")


def _fill(db: sqlite3.Connection, tables: dict) -> None:
    """Replace the log's rows in `db` with `tables` ({table: rows}; a table not named is left empty), in
    one transaction of the log's: the move-out's copy and the repair's carry-over alike. Every log
    table is two columns."""
    with transaction(db):
        for t in LOG_TABLES:
            db.execute(f"DELETE FROM {t}")
            db.executemany(f"INSERT INTO {t} VALUES(?, ?)", tables.get(t, ()))


def checkpoints_of(store) -> list[tuple[int, str]]:
    """The log's signed checkpoints (size, note); none where the store has never kept a log (opening
    one would create its database: a write a read-only store refuses)."""
    return open_log(store).checkpoints() if _has_log(store) else []


def logged_objects(store):
    """The BLAKE3 of every object this store's log names (repeats possible); none where it has never kept
    a log. Lazy: nothing is read until the first is asked for, and nothing is moved or written (gc reads
    it inside a transaction of the store's). Each leaf is entry_bytes, canonical JSON whose first field
    is the BLAKE3 (read by position: a JSON parse of every leaf tripled gc's cost); a leaf of any other
    shape stops the reading, since what it names is unknown."""
    if not _has_log(store):
        return
    head = entry_bytes("blob", "0" * 64, "0" * 64)[:11]  # b'{"blake3":"'
    db = store.db if _in_index(store) else open_log(store).db
    for (entry,) in db.execute("SELECT entry FROM log_leaves"):
        if not isinstance(entry, bytes) or entry[:11] != head or entry[75:77] != b'",':
            raise VerificationFailed(f"{store.root}: the evidence log holds a leaf that is not an entry "
                                     f"({str(entry)[:40]!r}); prov log verify says more; nothing is collected")
        yield entry[11:75].decode("ascii", "replace")


def integrity(root) -> list[str]:
    """Faults of log.sqlite itself (SQLite's integrity check), as fsck reports the index's; none where
    the store keeps no log database. Read-only: a check never writes."""
    from urllib.parse import quote
    from provenance.store.index import companion_present
    from provenance.store.objects import Store
    path = Path(root) / f"{LOG_DB}.sqlite"
    try:
        store = Store(root)
    except Exception:  # the index's own damage is fsck's to report
        return []
    try:
        made = store.companion_made(LOG_DB)
    finally:
        store.close()
    lost = [f"{LOG_DB}.sqlite: missing, empty or without the log's tables, yet this store keeps its evidence log "
            "there; restore it from a copy (gc and appends refuse until then)"] if made else []
    if not companion_present(path):
        return lost
    try:  # where nothing may be written (a read-only mount), opened as a read-only store's index is
        db = connect(path, True) if not (os.access(path.parent, os.W_OK) and os.access(path, os.W_OK)) \
            else sqlite3.connect(f"file:{quote(str(path.resolve()))}?mode=ro", uri=True)
        try:
            rows = [r[0] for r in db.execute("PRAGMA integrity_check(20)")]
            tables = has_table(db, "log_leaves")
        finally:
            db.close()
    except sqlite3.DatabaseError as e:
        return [f"{LOG_DB}.sqlite: cannot be read ({e}); signed checkpoints and releases still prove what it held"]
    if rows != ["ok"]:
        return [f"{LOG_DB}.sqlite: integrity check failed: {rows[0]}" + (f" (and {len(rows) - 1} more)" if len(rows) > 1
                                                                           else "")]
    return [] if tables else lost


def log_object(store, b3: str, kind: str | None = None) -> tuple[int, bool]:
    """Append a stored object to the store's evidence log (idempotent): (leaf index, newly appended)."""
    with store.writing():  # as a writer: gc waits, so what is checked here is there when the leaf lands
        info = store.info(b3)
        if info is None:
            raise ProvError(f"{b3}: object missing from {store.root}")
        if kind is not None and kind not in info.kinds:
            raise ProvError(f"{b3}: not stored as a {kind} (it is {', '.join(info.kinds)})")
        return open_log(store).append(entry_bytes(kind or info.kind, info.sha256, info.blake3))


def _salvage(index: Path) -> dict | None:
    """A v3 index's log rows that still read from a damaged index (store.check.salvage); None when any
    does not."""
    from provenance.store.check import salvage
    got = salvage(index, {t: (f"SELECT * FROM {t}",) for t in LOG_TABLES})
    return None if any(rows is None for rows in got.values()) else got


def repair_store(root, progress=None) -> dict:
    """`prov fsck --repair`: the store rebuilds its index from the objects. The log's own database is not
    the index's and is kept as it is. A log that a damaged v3 index still held is carried into an empty
    log.sqlite when its rows read and the tree they make checks out; one that differs from log.sqlite's
    is left in the damaged index, and said."""
    from provenance.records.kinds import kind_of
    from provenance.store import check
    from provenance.store.objects import Store
    root = Path(root)
    had_own = (root / f"{LOG_DB}.sqlite").exists()
    old = _salvage(root / "index.sqlite")
    report = check.repair(root, progress, kind_of)
    store = Store(root)
    try:
        log = open_log(store)
        if old is not None and old["log_leaves"]:
            if log.empty():
                _fill(log.db, old)
                problems = log.recompute()
                if problems:
                    _fill(log.db, {})
                    report["lost"].append(f"log: what still read does not check out ({problems[0]}); not recovered")
            elif [tuple(r) for r in old["log_leaves"]] != [tuple(r) for r in log.leaves()]:
                report["lost"].append(f"log: the damaged index held a v3 log of {len(old['log_leaves'])} leaves "
                                      f"that is not log.sqlite's ({log.size()}); log.sqlite kept, the other is "
                                      f"still in {report['damaged_index']}")
        elif old is None and not had_own:
            report["lost"].append("log: the damaged index could not be read; the evidence log was not recovered "
                                  "(signed checkpoints and releases still prove what it held)")
        report["log_size"] = log.size()
    finally:
        store.close()
    return report
