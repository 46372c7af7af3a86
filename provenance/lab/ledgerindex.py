"""The ledger as indexed rows: one row per run (its score, annotations and latest verdict), derived
from the record, note and verdict objects and rebuildable from them at any time.

Each ledger command first brings the rows up to date with what was stored since (objects past the
last id seen, as the store lists them by kind): O(new documents), not O(runs). A census (count and
a checksum of ids) that disagrees with what was seen (gc collected a document, fsck --repair built
a new index, a kind was added to an old object, or both at once) rebuilds the rows from scratch, so
they never drift from the objects.

The rows live in the lab's own database beside the store's index (lab.sqlite, a store companion,
with the site's cached views): the store's index holds none of them. A v3 index's rows are derived,
so a writer drops them.
"""

from __future__ import annotations

import json
import sqlite3
import weakref

from provenance.core import canonical
from provenance.core.errors import VerificationFailed
from provenance.store.index import census_term, has_table, write_transaction

KINDS = ("record", "note", "verdict")
SCHEMA = """
CREATE TABLE IF NOT EXISTS ledger_run(id INTEGER PRIMARY KEY, sha BLOB NOT NULL, score REAL NOT NULL,
    grade TEXT NOT NULL, source TEXT NOT NULL, archive_bytes INTEGER, created TEXT, label TEXT, label_at TEXT,
    track TEXT, track_at TEXT, notes TEXT, notes_at TEXT, parent TEXT, parent_at TEXT, axis TEXT, axis_at TEXT,
    era TEXT, era_at TEXT,
    verdict TEXT, reason TEXT, flags TEXT, previous_frontier TEXT, verdict_at TEXT);
CREATE INDEX IF NOT EXISTS ledger_run_score ON ledger_run(score);
CREATE TABLE IF NOT EXISTS ledger_seen(kind TEXT PRIMARY KEY, last_id INTEGER NOT NULL, n INTEGER NOT NULL,
    ids INTEGER NOT NULL) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS ledger_orphan(id INTEGER PRIMARY KEY, kind TEXT NOT NULL);
"""
COLUMNS = ("id", "sha", "score", "grade", "source", "archive_bytes", "created", "label", "track", "notes", "parent",
           "axis", "era", "verdict", "reason", "flags", "previous_frontier")
FIELDS = ("label", "track", "notes", "parent", "axis", "era")  # note fields: the latest note that sets one wins
NOTHING = (0, 0, 0)  # (last id, count, id checksum) of a kind never seen
LAB_DB = "lab"
OLD_TABLES = ("ledger_run", "ledger_seen", "ledger_orphan", "site_rows", "site_view")  # in a v3 index
_OPEN: "weakref.WeakKeyDictionary" = weakref.WeakKeyDictionary()


def lab_db(store, write: bool) -> sqlite3.Connection | None:
    """The lab's database (lab.sqlite beside the store's index); None where it was never made and may
    not be now (`write` False, or a read-only store): a reader never creates it. The first writer drops
    the derived rows a v3 index still holds."""
    kept = _OPEN.get(store)
    if kept is None or kept[0] is not store.db:
        kept = _OPEN[store] = [store.db, None, False]
    write = write and not store.readonly
    if kept[1] is None:
        if not write and not (store.root / f"{LAB_DB}.sqlite").exists():
            return None
        try:
            kept[1] = store.companion(LAB_DB)
        except VerificationFailed as e:  # derived rows: a reader computes from the objects instead
            if not write:
                return None
            raise VerificationFailed(f"{e}: it holds only rows derived from the objects: delete it and run "
                                     "again") from None
    if write and not kept[2]:
        kept[2] = True
        if any(has_table(store.db, t) for t in OLD_TABLES):
            with store.transaction() as index:
                for t in OLD_TABLES:
                    index.execute(f"DROP TABLE IF EXISTS {t}")
    return kept[1]


def sync(store, write: bool = True) -> bool:
    """Bring the ledger rows up to date; False where they are not and the store cannot (read-only)
    or may not (`write` False) be written."""
    if not write or getattr(store, "readonly", False):
        return current(store)
    db = lab_db(store, True)
    with store.transaction(), write_transaction(db):  # the store's for a census that holds still
        if not _layout_current(db, missing_ok=True):  # rows of an older layout: derived, so rebuilt
            for t in ("ledger_run", "ledger_seen", "ledger_orphan"):
                db.execute(f"DROP TABLE IF EXISTS {t}")
        for stmt in SCHEMA.split(";"):
            if stmt.strip():
                db.execute(stmt)
        seen = {k: (last, n, ids) for k, last, n, ids in db.execute("SELECT kind, last_id, n, ids FROM ledger_seen")}
        fresh = {k: list(store.of_kind(k, seen.get(k, NOTHING)[0])) for k in KINDS}

        def expected(k: str) -> tuple[int, int]:  # the census if all that changed is what `fresh` lists
            _last, n, ids = seen.get(k, NOTHING)
            return n + len(fresh[k]), ids + sum(census_term(i) for i, _b, _s in fresh[k])
        if any(store.census_of_kind(k) != expected(k) for k in KINDS):
            for t in ("ledger_run", "ledger_seen", "ledger_orphan"):
                db.execute(f"DELETE FROM {t}")
            fresh = {k: list(store.of_kind(k)) for k in KINDS}
        _apply(store, db, fresh)
        for k in KINDS:
            now = (max((i for i, _b, _s in fresh[k]), default=seen.get(k, NOTHING)[0]), *store.census_of_kind(k))
            if seen.get(k) != now:  # nothing new: nothing written
                db.execute("INSERT OR REPLACE INTO ledger_seen VALUES(?,?,?,?)", (k, *now))
    return True


def _layout_current(db, missing_ok: bool) -> bool:
    """Whether the ledger tables have this prov's columns (absent tables count as current where
    `missing_ok`: there is nothing to drop)."""
    run = {r[1] for r in db.execute("PRAGMA table_info(ledger_run)")}
    seen = {r[1] for r in db.execute("PRAGMA table_info(ledger_seen)")}
    if not run and not seen:
        return missing_ok
    return set(COLUMNS) <= run and "ids" in seen


def current(store) -> bool:
    """Whether the rows already account for every record, note and verdict (read only)."""
    db = lab_db(store, False)
    if db is None:
        return False
    try:
        if not _layout_current(db, missing_ok=False):
            return False
        seen = {k: (last, n, ids) for k, last, n, ids in db.execute("SELECT kind, last_id, n, ids FROM ledger_seen")}
    except sqlite3.OperationalError:
        return False
    return all(k in seen and store.census_of_kind(k) == seen[k][1:] and next(store.of_kind(k, seen[k][0]), None) is None
               for k in KINDS)


def _apply(store, db, fresh: dict) -> None:
    for oid, b3, sha in fresh["record"]:
        from provenance.records.models import load_record  # only when there are new records to read
        rec = load_record(store.read_bytes(b3), sha)
        size = rec.archive.size if rec.archive else rec.result.archive_size_reported
        db.execute("INSERT OR REPLACE INTO ledger_run(id, sha, score, grade, source, archive_bytes, created, "
                   "label) VALUES(?,?,?,?,?,?,?,?)", (oid, bytes.fromhex(sha), rec.result.canonical_score,
                                                      rec.grade, rec.source, size, rec.created_at, rec.label))
    docs = [(oid, kind, canonical.loads(store.read_bytes(b3), b3))
            for kind in ("note", "verdict") for oid, b3, _s in fresh[kind]]
    if fresh["record"]:  # a note stored before its record (a merge orders by digest) applies now
        for oid, kind in list(db.execute("SELECT id, kind FROM ledger_orphan")):
            b3 = store.blake3_of_id(oid)
            if b3:
                docs.append((oid, kind, canonical.loads(store.read_bytes(b3), b3)))
        db.execute("DELETE FROM ledger_orphan")
    # later documents win (by their time; among equal times, the one stored later)
    for oid, kind, doc in sorted(docs, key=lambda d: (d[2].get("at", ""), d[0])):
        rid = store.object_id_by_sha256(doc["record"])
        row = None if rid is None else db.execute(
            f"SELECT id, {', '.join(f + '_at' for f in FIELDS)}, verdict_at FROM ledger_run WHERE id=?", (rid,)).fetchone()
        if row is None:
            db.execute("INSERT OR REPLACE INTO ledger_orphan VALUES(?,?)", (oid, kind))
            continue
        at = doc.get("at", "")
        if kind == "note":
            for f, old in zip(FIELDS, row[1:1 + len(FIELDS)]):
                if doc.get(f) and (old is None or at >= old):
                    db.execute(f"UPDATE ledger_run SET {f}=?, {f}_at=? WHERE id=?", (doc[f], at, row[0]))
        elif row[-1] is None or at >= row[-1]:
            db.execute("UPDATE ledger_run SET verdict=?, reason=?, flags=?, previous_frontier=?, verdict_at=? "
                       "WHERE id=?", (doc["verdict"], doc["reason"], json.dumps(doc.get("flags", [])),
                                      doc.get("previous_frontier"), at, row[0]))


def rows(store, where: str = "", args: tuple = (), order: str = "id", limit: int | None = None) -> list[dict]:
    q = f"SELECT {', '.join(COLUMNS)} FROM ledger_run {where} ORDER BY {order}"
    if limit is not None:
        q += f" LIMIT {int(limit)}"
    out = []
    for r in lab_db(store, False).execute(q, args):
        d = dict(zip(COLUMNS, r))
        d["sha"] = d["sha"].hex()
        d["flags"] = json.loads(d["flags"]) if d["flags"] else []
        out.append(d)
    return out
