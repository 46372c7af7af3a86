"""The lab notebook's ledger: every EvalRecord in the store is a run; verdicts (promote,
reject) and annotations (label, track, notes) are stored and logged records of their own.

The promotion rule lives in `promotion()` and nowhere else."""

from __future__ import annotations

from typing import TYPE_CHECKING

from provenance.core import canonical
from provenance.core.clock import now_rfc3339
from provenance.core.errors import ProvError, VerificationFailed
from provenance.store.objects import Store
from provenance.log.translog import log_object
from provenance.records.envelope import statement_bytes
from provenance.records.kinds import NOTE_SCHEMA, VERDICT_SCHEMA

if TYPE_CHECKING:
    from provenance.records.models import EvalRecord

FRONTIER_REF = "ledger/frontier"


def load_record(data: bytes, where: str):
    from provenance.records.models import load_record as load  # pydantic is imported only by what reads whole records
    return load(data, where)


class Run:
    """A run: its record (read from the store on first use) and what the ledger says of it. Built
    from a ledger row, its score, grade, source and archive size need no record at all."""

    def __init__(self, sha256: str, blake3: str, record: "EvalRecord | None" = None, label: str | None = None,
                 track: str | None = None, notes: str | None = None, verdict: str | None = None,
                 reason: str | None = None, flags: list[str] | None = None, parent: str | None = None,
                 axis: str | None = None, previous_frontier: str | None = None, *, store: Store | None = None,
                 summary: dict | None = None, era: str | None = None):
        self.sha256, self.blake3, self._record = sha256, blake3, record
        self.label, self.track, self.notes = label, track, notes
        self.verdict, self.reason, self.flags = verdict, reason, flags if flags is not None else []
        self.parent = parent  # sha256 of the run this one varies (an annotation)
        self.axis = axis  # what it changed against its parent
        self.era = era  # a chapter of the lab's story its runs belong to (an annotation)
        self.previous_frontier = previous_frontier  # the frontier a verdict was judged against
        self._store, self._summary, self._bytes = store, summary, None

    def __repr__(self) -> str:
        return f"Run({self.sha256[:16]}, label={self.label!r}, verdict={self.verdict!r})"

    @property
    def record(self) -> "EvalRecord":
        if self._record is None:
            self._bytes = self._store.read_bytes(self.blake3)
            self._record = load_record(self._bytes, self.sha256)
        return self._record

    def record_bytes(self, store: Store) -> bytes:
        """The record's stored bytes (kept from reading the record, not read twice)."""
        return self._bytes if self._bytes is not None else store.read_bytes(self.blake3)

    def _get(self, key: str, compute):
        return self._summary[key] if self._summary is not None else compute(self.record)

    @property
    def score(self) -> float:
        return self._get("score", lambda rec: rec.result.canonical_score)

    @property
    def grade(self) -> str:
        return self._get("grade", lambda rec: rec.grade)

    @property
    def source(self) -> str:
        return self._get("source", lambda rec: rec.source)

    @property
    def created(self) -> str:
        got = self._summary.get("created") if self._summary is not None else None
        return got if got is not None else self.record.created_at  # a row an older prov wrote has none

    @property
    def archive_bytes(self) -> int | None:
        """The archive's real size, or what the report claims for a claim without its archive."""
        return self._get("archive_bytes", lambda rec: rec.archive.size if rec.archive
                         else rec.result.archive_size_reported)


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
            r.parent = note.get("parent") or r.parent
            r.axis = note.get("axis") or r.axis
            r.era = note.get("era") or r.era
    for v in sorted(_docs(store, "verdict"), key=lambda d: d["at"]):
        r = out.get(v["record"])
        if r:
            r.verdict, r.reason, r.flags = v["verdict"], v["reason"], v.get("flags", [])
            r.previous_frontier = v.get("previous_frontier")
    return list(out.values())


def _run(store: Store, row: dict) -> Run:
    b3 = store.blake3_of_id(row["id"])
    return Run(row["sha"], b3, None, label=row["label"], track=row["track"], notes=row["notes"],
               verdict=row["verdict"], reason=row["reason"], flags=row["flags"], parent=row["parent"],
               axis=row["axis"], previous_frontier=row["previous_frontier"], store=store, era=row["era"],
               summary={k: row[k] for k in ("score", "grade", "source", "archive_bytes", "created")})


def runs(store: Store, limit: int | None = None, write: bool = True) -> list[Run]:
    """Every run in the order stored; with `limit`, the latest `limit` of them (only those are read).
    Without `write`, the ledger rows are used only if they are already up to date."""
    from provenance.lab import ledgerindex
    if not ledgerindex.sync(store, write):
        everything = _runs_full(store)
        return everything[-limit:] if limit else everything
    if limit is None:
        return [_run(store, r) for r in ledgerindex.rows(store)]
    return [_run(store, r) for r in reversed(ledgerindex.rows(store, order="id DESC", limit=limit))]


def _run_by_b3(store: Store, b3: str, write: bool = True) -> Run | None:
    from provenance.lab import ledgerindex
    if not ledgerindex.sync(store, write):
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


def frontier(store: Store, write: bool = True) -> Run | None:
    """The frontier run. Without `write`, the ledger rows are used only if current (a reader of a
    store that a pipeline tracks must not change it)."""
    b3 = store.get_ref(FRONTIER_REF)
    if b3 is None:
        return None
    return _run_by_b3(store, b3, write)


def promotion_score(record: EvalRecord) -> float:
    """What the lab ranks by: the official formula with the custody-adjusted rate, so a runtime's
    information past the profile's free part costs as archive bytes do (the canonical score where a
    record has no custody figure, e.g. an imported claim)."""
    r = record.result
    if r.custody_adjusted_rate is None:
        return r.canonical_score
    from provenance.contest import get_profile
    return get_profile(record.profile).score(r.posenet, r.segnet, r.custody_adjusted_rate)


def promotion(candidate: EvalRecord, current: EvalRecord | None) -> tuple[bool, str, list[str]]:
    """(allowed, why, flags). Only A++ sets the frontier; A may, flagged as needing confirmation
    on the official GPU; nothing promotes unless it beats the current frontier."""
    flags = []
    if candidate.grade == "A":
        from provenance.contest import get_profile
        p = get_profile(candidate.profile)
        flags.append(f"needs {p.official_gpu} confirmation" if p.official_device == "cuda"
                     else f"needs confirmation on {p.official_environment}")
    elif candidate.grade != "A++":
        return False, f"grade {candidate.grade} cannot set the frontier (only A++, or A flagged)", flags
    if current is not None and candidate.profile != current.profile:
        return False, (f"profile {candidate.profile} is not the frontier's ({current.profile}): "
                       "their scores do not compare"), flags
    if current is not None and not promotion_score(candidate) < promotion_score(current):
        return False, (f"score {candidate.result.canonical_score!r} (custody-adjusted "
                       f"{promotion_score(candidate)!r}) does not beat the frontier's "
                       f"{current.result.canonical_score!r} (custody-adjusted {promotion_score(current)!r})"), flags
    return True, "beats the frontier" if current else "first frontier", flags


def _store_logged(store: Store, doc: dict, kind: str, children: tuple[str, ...]) -> str:
    d = store.put_bytes(canonical.dumps(doc), kind, children)
    log_object(store, d.blake3)
    from provenance.lab import ledgerindex
    ledgerindex.sync(store)  # a writer leaves the rows current, so readers (which never write) use them
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


def annotate(store: Store, ref: str, label: str | None, track: str | None, notes: str | None,
             parent: str | None = None, axis: str | None = None, era: str | None = None) -> str:
    run = resolve_run(store, ref)
    parent_sha = resolve_run(store, parent).sha256 if parent else None
    if parent_sha == run.sha256:
        raise ProvError(f"{ref}: a run cannot be its own parent")
    doc = {"schema": NOTE_SCHEMA, "record": run.sha256, "label": label, "track": track, "notes": notes,
           "parent": parent_sha, "axis": axis, "era": era, "at": now_rfc3339()}
    return _store_logged(store, {k: v for k, v in doc.items() if v is not None}, "note", (run.blake3,))


def release_of(store: Store, record_sha256: str) -> dict | None:
    """The newest release statement that names this record, if any."""
    best = None
    for name, b3 in store.list_refs():
        if not name.startswith("releases/"):
            continue
        st = statement_bytes(store.read_bytes(b3), name)
        if st["predicate"]["record"]["sha256"] == record_sha256:
            if best is None or st["predicate"]["version"] > best["predicate"]["version"]:
                best = st
    return best
