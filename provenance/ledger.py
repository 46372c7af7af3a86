"""The lab notebook's ledger: every EvalRecord in the store is a run; verdicts (promote,
reject) and annotations (label, track, notes) are stored and logged records of their own.

The promotion rule lives in `promotion()` and nowhere else."""

from __future__ import annotations

from dataclasses import dataclass, field

from . import canonical
from .adjudicate import now_rfc3339
from .errors import ProvError, VerificationFailed
from .models import EvalRecord, load_record
from .store import Store

VERDICT_SCHEMA = "comma-lab/verdict/v1"
NOTE_SCHEMA = "comma-lab/note/v1"
FRONTIER_REF = "ledger/frontier"


@dataclass
class Run:
    sha256: str
    blake3: str
    record: EvalRecord
    label: str | None = None
    track: str | None = None
    notes: str | None = None
    verdict: str | None = None  # "promote" | "reject" | None
    reason: str | None = None
    flags: list[str] = field(default_factory=list)

    @property
    def score(self) -> float:
        return self.record.result.canonical_score

    @property
    def archive_bytes(self) -> int | None:
        """The archive's real size, or what the report claims for a claim without its archive."""
        rec = self.record
        return rec.archive.size if rec.archive else rec.result.archive_size_reported


def _records(store: Store):
    for _id, b3, sha in store.of_kind("record"):
        yield b3, sha, load_record(store.read_bytes(b3), sha)


def _docs(store: Store, kind: str):
    for _id, b3, _sha in store.of_kind(kind):
        yield canonical.loads(store.read_bytes(b3), b3)


def _runs_full(store: Store) -> list[Run]:
    """Every run computed from every document (a store we may not write keeps no ledger rows)."""
    out = {sha: Run(sha, b3, rec, label=rec.label) for b3, sha, rec in _records(store)}
    for note in sorted(_docs(store, "note"), key=lambda d: d["at"]):  # later annotations win
        r = out.get(note["record"])
        if r:
            r.label = note.get("label") or r.label
            r.track = note.get("track") or r.track
            r.notes = note.get("notes") or r.notes
    for v in sorted(_docs(store, "verdict"), key=lambda d: d["at"]):
        r = out.get(v["record"])
        if r:
            r.verdict, r.reason, r.flags = v["verdict"], v["reason"], v.get("flags", [])
    return list(out.values())


def _run(store: Store, row: dict) -> Run:
    b3 = store.db.execute("SELECT b3 FROM obj WHERE id=?", (row["id"],)).fetchone()[0].hex()
    return Run(row["sha"], b3, load_record(store.read_bytes(b3), row["sha"]), label=row["label"],
               track=row["track"], notes=row["notes"], verdict=row["verdict"], reason=row["reason"],
               flags=row["flags"])


def runs(store: Store, limit: int | None = None) -> list[Run]:
    """Every run in the order stored; with `limit`, the latest `limit` of them (only those are read)."""
    from . import ledgerindex
    if not ledgerindex.sync(store):
        everything = _runs_full(store)
        return everything[-limit:] if limit else everything
    if limit is None:
        return [_run(store, r) for r in ledgerindex.rows(store)]
    return [_run(store, r) for r in reversed(ledgerindex.rows(store, order="id DESC", limit=limit))]


def _run_by_b3(store: Store, b3: str) -> Run | None:
    from . import ledgerindex
    if not ledgerindex.sync(store):
        return next((r for r in _runs_full(store) if r.blake3 == b3), None)
    oid = store.object_id(b3)
    found = ledgerindex.rows(store, "WHERE id=?", (oid,)) if oid is not None else []
    return _run(store, found[0]) if found else None


def resolve_run(store: Store, ref: str) -> Run:
    info = store.resolve(ref)
    if "record" not in info.kinds:
        raise ProvError(f"{ref}: not an evaluation record (it is a {info.kind})")
    run = _run_by_b3(store, info.blake3)
    if run is None:
        raise ProvError(f"{ref}: record not found")
    return run


def frontier(store: Store) -> Run | None:
    b3 = store.get_ref(FRONTIER_REF)
    if b3 is None:
        return None
    return _run_by_b3(store, b3)


def promotion(candidate: EvalRecord, current: EvalRecord | None) -> tuple[bool, str, list[str]]:
    """(allowed, why, flags). Only A++ sets the frontier; A may, flagged as needing confirmation
    on the official GPU; nothing promotes unless it beats the current frontier."""
    flags = []
    if candidate.grade == "A":
        flags.append("needs Tesla T4 confirmation")
    elif candidate.grade != "A++":
        return False, f"grade {candidate.grade} cannot set the frontier (only A++, or A flagged)", flags
    if current is not None and not candidate.result.canonical_score < current.result.canonical_score:
        return False, (f"score {candidate.result.canonical_score!r} does not beat the frontier "
                       f"{current.result.canonical_score!r}"), flags
    return True, "beats the frontier" if current else "first frontier", flags


def _store_logged(store: Store, doc: dict, kind: str, children: tuple[str, ...]) -> str:
    d = store.put_bytes(canonical.dumps(doc), kind, children)
    store.log_object(d.blake3)
    return d.sha256


def verdict(store: Store, ref: str, action: str, reason: str) -> tuple[Run, str, list[str]]:
    if not reason.strip():
        raise ProvError("--reason is required: say why")
    run = resolve_run(store, ref)
    current = frontier(store)
    flags: list[str] = []
    if action == "promote":
        ok, why, flags = promotion(run.record, current.record if current else None)
        if not ok:
            raise VerificationFailed(f"cannot promote {run.sha256[:16]}: {why}")
    doc = {"schema": VERDICT_SCHEMA, "record": run.sha256, "verdict": action, "reason": reason,
           "flags": flags, "previous_frontier": current.sha256 if current else None, "at": now_rfc3339()}
    sha = _store_logged(store, doc, "verdict", (run.blake3,))
    if action == "promote":
        store.set_ref(FRONTIER_REF, run.blake3, expect=current.blake3 if current else "")
    return run, sha, flags


def annotate(store: Store, ref: str, label: str | None, track: str | None, notes: str | None) -> str:
    run = resolve_run(store, ref)
    doc = {"schema": NOTE_SCHEMA, "record": run.sha256, "label": label, "track": track, "notes": notes,
           "at": now_rfc3339()}
    return _store_logged(store, {k: v for k, v in doc.items() if v is not None}, "note", (run.blake3,))


def release_of(store: Store, record_sha256: str) -> dict | None:
    """The newest release statement that names this record, if any."""
    best = None
    for name, b3 in store.list_refs():
        if not name.startswith("releases/"):
            continue
        st = canonical.loads(store.read_bytes(b3), name)
        if st["predicate"]["record"]["sha256"] == record_sha256:
            if best is None or st["predicate"]["version"] > best["predicate"]["version"]:
                best = st
    return best
