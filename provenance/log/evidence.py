"""Log this record: the step after adjudication, in one home. Every record the house makes (adjudicated
from a report, imported from a legacy record, replayed) is kept by its maker and appended to the store's
evidence log here; the commands and the lab call these, never the log's tables.

The log ranks above replay and records in the flow (intake, replay, adjudicate, log), so it may call
them: `adjudicate`, `import_legacy` and `replay` are each one library call that makes and logs. What
the log holds is live: `gc` hands the store its roots (every logged object)."""

from __future__ import annotations

import os

from provenance.core.errors import ProvError
from provenance.log.translog import log_object, logged_objects
from provenance.store.gc import DEFAULT_GRACE, gc as collect


def log_record(store, blake3: str) -> int:
    """Append a stored record to the evidence log (idempotent); its leaf index. Logged under the kind it
    was first stored as, as every record has been."""
    return log_object(store, blake3)[0]


def _exists(*paths) -> None:
    for p in paths:
        if p is not None and not os.path.exists(p):
            raise ProvError(f"{p}: no such file")


def _opened(store):
    """A Store, or a callable that opens one: the inputs are checked before a store is made."""
    return store() if callable(store) else store


def adjudicate(store, report, archive=None, runtime=None, upstream=None, profile: str = "official"):
    """`prov adjudicate`: a report turned into a graded record, kept and logged. (record, digest, checks)"""
    from provenance.contest import get_profile
    from provenance.records.adjudicate import adjudicate_report
    _exists(report, archive)
    prof = get_profile(profile)
    store = _opened(store)
    record, digest, checks = adjudicate_report(store, report, archive, runtime, upstream, prof)
    log_record(store, digest.blake3)
    return record, digest, checks


def import_legacy(store, record_file, archive=None, runtime=None):
    """`prov import-legacy`: a comma-lab v1 record converted, kept and logged. (record, digest, checks)"""
    from provenance.records import legacy
    _exists(record_file, archive)
    store = _opened(store)
    record, digest, checks = legacy.import_legacy(store, record_file, archive, runtime)
    log_record(store, digest.blake3)
    return record, digest, checks


def replay(store, *args, **kw):
    """`prov replay` (replay.run.replay's arguments): the submission replayed, its record kept and logged."""
    from provenance.replay.run import replay as run
    res = run(store, *args, **kw)
    log_record(store, res.digest.blake3)
    return res


def gc(store, grace: float = DEFAULT_GRACE, dry_run: bool = False) -> dict:
    """`prov gc`: drop what no ref and no logged object reaches, nor anything recent (store.gc). A logged
    record is evidence whether or not a ref still names it: the log's leaf must keep its bytes. The
    log is read lazily, once gc holds the write lock, so a record logged by a writer it waited for
    is seen."""
    return collect(store, logged_objects(store), grace, dry_run)


def fsck(root, repair: bool = False, ack_repair: bool = False, progress=None) -> dict:
    """`prov fsck`: the store's objects and index (store.check.fsck) and the log's own database; or, with
    `repair`, the index rebuilt from the objects (translog.repair_store). `ack_repair` first lets gc run
    again after a repair that lost refs and the refs were set by hand."""
    from pathlib import Path
    from provenance.log.translog import integrity, repair_store
    from provenance.store import check
    from provenance.store.objects import Store
    root = Path(root)
    if not (root / "index.sqlite").exists() and not (root / "objects").is_dir():
        raise ProvError(f"{root}: no store here")
    if ack_repair:
        store = Store(root)
        try:
            check.ack_repair(store)
        finally:
            store.close()
    if repair:
        return repair_store(root, progress)
    report = check.fsck(root, progress)
    problems = integrity(root)
    if problems:
        report["errors"] = problems + report["errors"]
        report["ok"] = False
    return report
