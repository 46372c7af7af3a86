"""A store that notices its own damage: fsck of the index itself, and `fsck --repair`, which
rebuilds index.sqlite from the objects and says plainly what it could not recover.

What the objects alone prove, repair restores: every object (re-hashed; its address is its
BLAKE3), its SHA-256 and size, every prov-tree-v1 tree (its bytes parse strictly and every
child is present, so its SHA-256 view is recomputed exactly) with its links, and the kind of
each document the caller recognizes by its bytes (`doc_kind`: the store knows no document; the
caller, provenance.log.translog.repair_store, passes records.kinds.kind_of). What only the index
knew (refs, annotations of which bytes were added as what) is copied from the damaged index when
its rows still read back and check out, and otherwise reported as lost: repair never guesses a ref.
(The layers above keep their tables in databases of their own beside the index, which repair does not
touch; repair_store carries over the log a v3 index still held.)
"""

from __future__ import annotations

import os
import sqlite3
import time
from pathlib import Path

from provenance.core import tree as treemod
from provenance.core.digest import hash_file
from provenance.store.batch import TMP_PREFIX
from provenance.store.index import HEX, IndexDamaged
from provenance.store.objects import Store

RECOVERY = ("prov fsck --repair rebuilds the index from the objects (refs are kept where the damaged "
            "index still reads, the evidence log lives beside it; what is lost is listed)")
DOC_MAX = 16 << 20  # a document is read whole to be recognized; larger objects are blobs


def _rehash_objects(root: Path, progress=None) -> tuple[dict, list[str]]:
    """blake3 -> Digest of every well-named object whose bytes match its name; and the faults."""
    good, errors = {}, []
    objects = root / "objects"
    for sub in sorted(objects.iterdir()) if objects.is_dir() else ():
        if not sub.is_dir():
            errors.append(f"objects/{sub.name}: stray file in the object directory")
            continue
        for f in sorted(sub.iterdir()):
            name = f.name
            if name.startswith(TMP_PREFIX):
                continue
            if sub.name != name[:2] or len(name) != 64 or not HEX.match(name):
                errors.append(f"objects/{sub.name}/{name}: stray file in the object directory")
                continue
            try:
                d = hash_file(f, progress)
            except OSError as e:
                errors.append(f"object {name}: unreadable ({e.strerror})")
                continue
            if d.blake3 != name:
                errors.append(f"object {name}: content does not match its BLAKE3 address (corrupt)")
                continue
            good[name] = d
    return good, errors


def index_problems(store: Store) -> list[str]:
    """Faults of index.sqlite itself: SQLite's integrity check, the schema version, the kinds table."""
    from provenance.store.index import SCHEMA_VERSION
    db = store.db
    try:
        from provenance.store.index import LEAN_CACHE
        db.execute(LEAN_CACHE)  # integrity_check reads every page once: a big cache only costs memory
        rows = [r[0] for r in db.execute("PRAGMA integrity_check(20)")]
        if rows != ["ok"]:
            return [f"index.sqlite: integrity check failed: {rows[0]}"
                    + (f" (and {len(rows) - 1} more)" if len(rows) > 1 else "")]
        version = db.execute("PRAGMA user_version").fetchone()[0]
        problems = []
        if version != SCHEMA_VERSION and not store.readonly:
            problems.append(f"index.sqlite: schema version {version}, expected {SCHEMA_VERSION}")
        n = db.execute("SELECT count(*) FROM obj WHERE id NOT IN (SELECT id FROM obj_kind)").fetchone()[0]
        if n:
            problems.append(f"index.sqlite: {n} object(s) with no kind")
        n = db.execute("SELECT count(*) FROM obj_kind WHERE id NOT IN (SELECT id FROM obj)").fetchone()[0]
        if n:
            problems.append(f"index.sqlite: {n} kind row(s) naming no object")
        return problems
    except sqlite3.DatabaseError as e:
        return [f"index.sqlite: cannot be read ({e})"]


def fsck(root: Path, progress=None) -> dict:
    """Store.fsck, preceded by the index's own checks. A damaged index is reported (with how to
    recover) and the objects are still re-hashed on their own."""
    try:
        store = Store(root)
    except IndexDamaged as e:
        return _damaged(root, [str(e)], progress)
    try:
        problems = index_problems(store)
        if problems:
            return _damaged(root, problems, progress)
        try:
            report = store.fsck(progress)
        except sqlite3.DatabaseError as e:
            return _damaged(root, [f"index.sqlite: cannot be read ({e})"], progress)
        if store.db.execute("SELECT 1 FROM store_meta WHERE key='refs_lost'").fetchone():
            report["notes"].append("this index was rebuilt by fsck --repair and lost refs; gc refuses until "
                                   "the refs are set again and prov fsck --ack-repair is run")
        report["index"] = "ok"
        return report
    finally:
        store.close()


def _damaged(root: Path, problems: list[str], progress) -> dict:
    good, errors = _rehash_objects(root, progress)
    return {"ok": False, "objects": len(good) + len(errors), "index": "damaged",
            "errors": problems + errors, "notes": [RECOVERY]}


def salvage(index: Path, queries: dict[str, tuple[str, ...]]) -> dict[str, list | None]:
    """What still reads from a damaged index: for each name, the rows of the first of its queries
    that reads, else None. The one salvage: the store's refs and kinds (here) and the log's tables
    (log.translog) are read through it."""
    out: dict[str, list | None] = dict.fromkeys(queries)
    if not index.exists() or index.stat().st_size == 0:
        return out
    try:
        db = sqlite3.connect(f"file:{index}?mode=ro", uri=True)
    except sqlite3.DatabaseError:
        return out
    try:
        for key, alternatives in queries.items():
            for q in alternatives:
                try:
                    out[key] = list(db.execute(q))
                    break
                except sqlite3.DatabaseError:
                    continue
    finally:
        db.close()
    return out


_STORE_ROWS = {"refs": ("SELECT name, target, updated FROM refs",),
               # what store_meta remembers of companions (Store.companion's kept ones): carried over
               "companions": ("SELECT key, value FROM store_meta WHERE key LIKE 'companion:%'",),
               # v3; a pre-v3 index: v2's kinds table, or v0's one kind per object
               "kinds": ("SELECT lower(hex(o.b3)), k.kind, k.added FROM obj_kind k JOIN obj o ON o.id=k.id",
                         "SELECT blake3, kind, added FROM kinds", "SELECT blake3, kind, added FROM objects")}


def repair(root: Path, progress=None, doc_kind=lambda data: None) -> dict:
    """Move the damaged index aside, rebuild it from the objects, restore what still reads. `doc_kind`
    names the kind an object's bytes show (None: a blob); what a document names by digest stays
    reachable with it."""
    root = Path(root)
    index = root / "index.sqlite"
    if not (root / "objects").is_dir():
        from provenance.core.errors import ProvError
        raise ProvError(f"{root}: no objects/ here; nothing to rebuild from")
    stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
    aside = root / f"index.sqlite.damaged-{stamp}"
    old = salvage(index, _STORE_ROWS)
    for suffix in ("", "-wal", "-shm"):
        p = root / f"index.sqlite{suffix}"
        if p.exists():
            os.replace(p, root / f"{aside.name}{suffix}")
    good, errors = _rehash_objects(root, progress)
    objects_dir = root / "objects"
    hidden = root / f"objects.repairing-{stamp}"  # Store() refuses objects without an index: build beside them
    os.replace(objects_dir, hidden)
    try:
        store = Store(root, create=True)
    finally:
        os.rmdir(objects_dir)
        os.replace(hidden, objects_dir)
    lost: list[str] = []
    now = time.time()
    rows, kinds, links = [], set(), set()
    by_sha = {d.sha256: b3 for b3, d in good.items()}
    # trees: parse strictly, children present; SHA-256 view recomputed bottom-up (memoised)
    tree_sha: dict[str, object] = {}

    def tree_view(b3: str, depth: int = 0):
        if b3 in tree_sha:
            return tree_sha[b3]
        tree_sha[b3] = None  # a cycle cannot happen with content addresses; guard anyway
        try:
            parsed = treemod.parse((root / "objects" / b3[:2] / b3).read_bytes(), b3)
        except (treemod.TreeError, OSError):
            return None

        def child_sha(kind: str, name: str, child: str) -> str | None:
            if child not in good:
                return None
            if kind != "tree":
                return good[child].sha256
            sub = tree_view(child, depth + 1) if depth < 4096 else None
            return sub and sub.sha256
        d = treemod.view_of(parsed, child_sha)
        if d is None or d.blake3 != b3:
            return None
        tree_sha[b3] = d
        return d

    inferred = {"tree": 0}
    for b3, d in good.items():
        head = b""
        with open(root / "objects" / b3[:2] / b3, "rb") as f:
            head = f.read(len(treemod.HEADER["blake3"]))
        kind, sha, size = "blob", d.sha256, d.size
        if head == treemod.HEADER["blake3"]:
            td = tree_view(b3)
            if td is not None:
                kind, sha, size = "tree", td.sha256, td.size
                inferred["tree"] += 1
                for _k, _n, _s, child in treemod.parse((root / "objects" / b3[:2] / b3).read_bytes(), b3):
                    links.add((b3, child))
        elif d.size < DOC_MAX:
            data = (root / "objects" / b3[:2] / b3).read_bytes()
            dk = doc_kind(data)
            if dk is not None:
                kind = dk
                inferred[dk] = inferred.get(dk, 0) + 1
                # what the document names by digest stays reachable with it
                import re
                for h in set(re.findall(rb"[0-9a-f]{64}", data)):
                    child = by_sha.get(h.decode()) or (h.decode() if h.decode() in good else None)
                    if child and child != b3:
                        links.add((b3, child))
        rows.append((b3, sha, size, kind, now, now))
        kinds.add((b3, kind, now))
    # kinds the old index knew beyond what the bytes say (blob bytes also stored as a record...)
    if old.get("kinds") is not None:
        known = {b3 for b3, *_ in rows}
        for b3, kind, added in old["kinds"]:
            if b3 in known and kind != "tree":
                kinds.add((b3, kind, added))
    else:
        lost.append("kinds: the damaged index could not be read; each object has the kind its bytes show "
                    f"({', '.join(['trees', *sorted({f'{k}s' for k in inferred if k != 'tree'})])}) "
                    "and is otherwise a blob")
    insert_rows(store, rows, kinds, links)
    refs_kept, refs_lost = 0, []
    if old.get("refs") is None:
        lost.append("refs: the damaged index could not be read; no ref was recovered")
        refs_lost.append("*")
    else:
        with store.transaction() as db:
            for name, target, updated in old["refs"]:
                if target in good:
                    db.execute("INSERT INTO refs(name, target, updated) VALUES(?,?,?)", (name, target, updated))
                    refs_kept += 1
                else:
                    refs_lost.append(name)
        if refs_lost:
            lost.append(f"refs: {len(refs_lost)} pointed at objects that are gone: {', '.join(refs_lost[:10])}")
    if refs_lost:
        with store.transaction() as db:
            db.execute("INSERT OR REPLACE INTO store_meta VALUES('refs_lost', ?)", (stamp,))
    if old.get("companions"):
        with store.transaction() as db:
            db.executemany("INSERT OR IGNORE INTO store_meta VALUES(?, ?)", old["companions"])
    store.close()
    return {"ok": not errors, "repaired": True, "objects": len(good), "damaged_index": aside.name,
            "inferred_kinds": inferred, "refs_recovered": refs_kept,
            "errors": errors, "lost": lost}


def insert_rows(store, rows, kinds=(), links=()) -> None:
    """Index rows for objects already in objects/ (fsck --repair): rows (b3, sha256, size, kind,
    added, touched), kinds (b3, kind, added), links (parent b3, child b3), all hex; one transaction."""
    with store.transaction() as db:
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


def ack_repair(store) -> None:
    """After a repair that lost refs, and the refs set again by hand: let gc run (`fsck --ack-repair`)."""
    with store.transaction() as db:
        db.execute("DELETE FROM store_meta WHERE key='refs_lost'")
