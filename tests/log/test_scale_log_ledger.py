"""Issue 15: O(log n) release log bundles, and the ledger as indexed rows (incremental = rebuilt)."""

import json

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from conftest import prov_json, record_bytes, run_prov
from provenance.core import canonical
from provenance.core.signing import b64e
from provenance.lab import ledger, ledgerindex
from provenance.log import logbook
from provenance.log import translog
from provenance.store.objects import Store


def _statement(store, i: int) -> str:
    return store.put_bytes(canonical.dumps({"_type": "https://in-toto.io/Statement/v1", "n": i}),
                           "statement").blake3


def test_release_bundle_stays_small_after_999_releases(tmp_path):
    s = Store(tmp_path / "store", create=True)
    key = Ed25519PrivateKey.generate()
    trusted = {"log": key.public_key()}
    log = translog.open_log(s)
    notes = []
    for i in range(999):  # 999 earlier releases: a statement logged and a checkpoint signed for each
        log.append(translog.entry_bytes("statement", f"{i:064x}", f"{i:064x}"))
        notes.append(logbook.checkpoint(s, key))
    b3 = _statement(s, 1000)
    bundle = logbook.release_log_bundle(s, b3, key)
    size = len(json.dumps(bundle))
    assert size <= 4096, size
    assert list(bundle["consistency"]) == ["999"]  # from the previous release's checkpoint only
    payload = s.read_bytes(b3)
    checks = {c.name: c.ok for c in logbook.check_release_log(bundle, payload, trusted, notes[-1])}
    assert checks == {"log_checkpoint": True, "log_inclusion": True, "log_consistency": True}
    # an older checkpoint the bundle does not carry: refused, and told where to get the proof
    old = logbook.check_release_log(bundle, payload, trusted, notes[10])
    bad = [c.detail for c in old if not c.ok]
    assert len(bad) == 1 and "prov log consistency" in bad[0]
    # ...which the lab answers on demand, and which verifies
    cp, old_cp = translog.parse_checkpoint(bundle["checkpoint"]), translog.parse_checkpoint(notes[10])
    translog.verify_consistency(old_cp.size, cp.size, log.consistency_proof(old_cp.size, cp.size),
                                old_cp.root, cp.root)
    # a verifier's checkpoint named at release time travels in the bundle
    b3 = _statement(s, 1001)
    bundle = logbook.release_log_bundle(s, b3, key, since_note=notes[10])
    assert sorted(bundle["consistency"], key=int) == ["11", str(cp.size)]
    assert len(json.dumps(bundle)) <= 4096
    checks = logbook.check_release_log(bundle, s.read_bytes(b3), trusted, notes[10])
    assert all(c.ok for c in checks), checks
    # an old-style bundle (a proof from every checkpoint) still verifies
    legacy = dict(bundle, consistency={str(k): [b64e(h) for h in log.consistency_proof(k, log.size())]
                                       for k in (5, 11, 500)})
    checks = logbook.check_release_log(legacy, s.read_bytes(b3), trusted, notes[499])
    assert all(c.ok for c in checks), checks
    s.close()


def _view(runs):
    return [(r.sha256, r.blake3, r.label, r.track, r.notes, r.parent, r.axis, r.verdict, r.reason, r.flags,
             r.previous_frontier, r.score, r.grade, r.source, r.archive_bytes, r.created) for r in runs]


def test_ledger_rows_incremental_equal_rebuilt_and_full(tmp_path):
    root = tmp_path / "store"
    s = Store(root, create=True)
    shas = [s.put_bytes(record_bytes(i, 3.0 - i / 10), "record").sha256 for i in range(12)]
    assert _view(ledger.runs(s)) == _view(ledger._runs_full(s))
    ledger.annotate(s, shas[3], "three", "codec", None)
    ledger.annotate(s, shas[3], None, None, "later notes")
    ledger.verdict(s, shas[0], "promote", "first")
    ledger.verdict(s, shas[5], "promote", "better")
    ledger.verdict(s, shas[2], "reject", "worse")
    more = [s.put_bytes(record_bytes(i, 5.0), "record").sha256 for i in range(12, 15)]
    ledger.annotate(s, more[1], "late", None, None)
    incremental = _view(ledger.runs(s))
    assert incremental == _view(ledger._runs_full(s))
    assert ledger.frontier(s).sha256 == shas[5]
    assert _view(ledger.runs(s, limit=2)) == incremental[-2:]
    # nothing new: a ledger read writes nothing
    lab = ledgerindex.lab_db(s, True)  # the rows' own database beside the index
    changes = (s.db.total_changes, lab.total_changes)
    ledger.runs(s, limit=3)
    ledger.frontier(s)
    assert (s.db.total_changes, lab.total_changes) == changes
    # rebuilt from scratch (as after fsck --repair): the same rows
    for t in ("ledger_run", "ledger_seen", "ledger_orphan"):
        lab.execute(f"DELETE FROM {t}")
    assert _view(ledger.runs(s)) == incremental
    s.close()
    # the CLI: --limit reads the latest runs
    rows = prov_json("ledger", "show", "--limit", "3", store=root)
    assert [r["record"] for r in rows] == [v[0] for v in incremental[-3:]]
    assert prov_json("frontier", store=root)["frontier"]["record"] == shas[5]


def test_ledger_rows_follow_gc_and_notes_before_records(tmp_path):
    """A note stored before its record (as a merge may order them) still applies; gc'd runs leave."""
    src = Store(tmp_path / "a", create=True)
    sha = src.put_bytes(record_bytes(1, 2.0), "record").sha256
    ledger.annotate(src, sha, "merged", None, None)
    dst = Store(tmp_path / "b", create=True)
    note_only = Store(tmp_path / "c", create=True)
    # copy the note first (its own batch), then the record
    note = next(iter(src.of_kind("note")))
    note_only.put_bytes(src.read_bytes(note[1]), "note")
    dst.merge_from(note_only)
    assert ledger.runs(dst) == []
    dst.merge_from(src)
    assert [r.label for r in ledger.runs(dst)] == ["merged"]
    dst.close()
    run_prov("gc", "--grace", "0", store=tmp_path / "b", check=0)
    assert Store(tmp_path / "b").db and ledger.runs(Store(tmp_path / "b")) == []


def test_ledger_rows_see_a_kind_gained_as_another_is_collected(tmp_path):
    """Between two syncs gc collects one record and an older object (stored first as a blob) gains the
    record kind: the count of records is unchanged and the new one is below the last id seen, so a
    count alone missed both (the rows kept the collected run, and a site build failed on it)."""
    s = Store(tmp_path / "s", create=True)
    kept = [s.put_bytes(record_bytes(i, 2.0 + i), "record").sha256 for i in range(3)]
    blob = record_bytes(50, 1.5)
    s.set_ref("keep/blob", s.put_bytes(blob, "blob").blake3)
    for sha in kept:
        s.set_ref(f"keep/{sha[:8]}", s.resolve(sha).blake3)
    victim = s.put_bytes(record_bytes(60, 1.0), "record").sha256
    assert victim in {r.sha256 for r in ledger.runs(s)}
    s.close()
    run_prov("gc", "--grace", "0", store=tmp_path / "s", check=0)
    s = Store(tmp_path / "s")
    gained = s.put_bytes(blob, "record").sha256
    assert {r.sha256 for r in ledger.runs(s)} == set(kept) | {gained}
    assert [r.score for r in ledger.runs(s)] == [r.score for r in ledger._runs_full(s)]
    s.close()
