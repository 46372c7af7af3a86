"""Each run's published view, cached in the lab's database (lab.sqlite beside the store's index, with
the ledger's rows) by the digest of what it is made from, so a rebuild reads only the records whose
rows changed."""

from __future__ import annotations

import hashlib
import json

from provenance.core import sanitize
from provenance.lab import ledger, ledgerindex
from provenance.lab.site import pages
from provenance.store.index import write_transaction
from provenance.store.objects import Store


def _view(r: ledger.Run, href: str) -> dict:
    res = r.record.result
    return {"record": r.sha256, "label": r.label, "track": r.track, "era": r.era, "notes": r.notes, "grade": r.record.grade,
            "score": res.canonical_score, "score_repr": repr(res.canonical_score), "bytes": r.archive_bytes,
            "source": r.record.source, "verdict": r.verdict, "reason": r.reason, "flags": r.flags, "href": href,
            "samples": res.samples, "segnet": f"{res.segnet:.3g}", "posenet": f"{res.posenet:.3g}",
            "segnet_exact": res.printed.get("segnet", repr(res.segnet)),
            "posenet_exact": res.printed.get("posenet", repr(res.posenet)),
            "rate": f"{res.rate:.6g}", "archive": r.record.archive.sha256 if r.record.archive else None,
            "runtime": r.record.runtime.tree.sha256 if r.record.runtime.tree else
            r.record.runtime.legacy_v1_sha256, "page": pages.run_href(r.sha256), "name": pages.name_of(r),
            "axis": r.axis, "profile": r.record.profile, "device": r.record.environment.device,
            "platform": r.record.environment.platform, "gpu": r.record.environment.gpu_model}


VIEW_VERSION = 4  # bumped whenever _view's fields change: cached rows of another shape are remade


class _ViewCache:
    """Each run's redacted table row, kept in the lab's database (never published) under what it was
    made from: the run's annotations and verdict, and the hygiene rules. A rebuild reads and redacts
    only the runs whose row would change; with the row, what its run page was made from, so an
    unchanged page (and its frames) is carried over from the last bundle."""

    def __init__(self, store: Store, rules: str, write: bool):
        import sqlite3
        self.store, self.rules, self.dirty = store, rules, {}
        self.write = write and not getattr(store, "readonly", False)
        self.db = ledgerindex.lab_db(store, self.write)
        if self.write:
            # a rowid table: a row (~1 KB of JSON) is past what a WITHOUT ROWID page keeps in place, and
            # each would spill to an overflow page of its own (site_view, the earlier layout: 4x the bytes,
            # dropped from a v3 index with the ledger's rows)
            self.db.execute("CREATE TABLE IF NOT EXISTS site_rows(sha BLOB PRIMARY KEY, key TEXT NOT NULL, "
                            "entry TEXT NOT NULL)")
        try:
            self.rows = {sha.hex(): (key, entry) for sha, key, entry in self.db.execute("SELECT * FROM site_rows")} \
                if self.db is not None else {}
        except sqlite3.OperationalError:  # never cached
            self.rows = {}
        self.keys: dict[str, str] = {}
        self.made: dict[str, dict] = {}  # rows made in this process (a parent's row, asked for twice)

    def key(self, r: ledger.Run) -> str:
        """What the run's row is made from: its annotations and verdict, and the hygiene rules."""
        key = self.keys.get(r.sha256)
        if key is None:
            key = self.keys[r.sha256] = hashlib.sha256(json.dumps(
                [VIEW_VERSION, self.rules, r.label, r.track, r.era, r.notes, r.verdict, r.reason, r.flags, r.parent,
                 r.axis]).encode()).hexdigest()
        return key

    def get(self, r: ledger.Run) -> tuple[dict, bool]:
        """The run's row, and whether it was made now (not cached)."""
        key = self.key(r)
        hit = self.rows.get(r.sha256)
        if hit is not None and hit[0] == key:
            return json.loads(hit[1]), False
        made = self.made.get(r.sha256)
        if made is None:
            made = self.made[r.sha256] = {
                "created": r.record.created_at, "profile": r.record.profile,
                "view": sanitize.redact(_view(r, f"evidence/records/{r.sha256}.json"))}  # annotations are published
        return made, True

    def put(self, sha: str, key: str, row: str) -> None:
        """A run's row (JSON) to keep, made from `key`."""
        self.dirty[sha] = (key, row)

    def save(self) -> None:
        if self.dirty and self.write:
            with write_transaction(self.db) as db:
                db.executemany("INSERT OR REPLACE INTO site_rows VALUES(?,?,?)",
                               [(bytes.fromhex(sha), key, row) for sha, (key, row) in sorted(self.dirty.items())])
