"""Release statements (in-toto Statement v1 in a DSSE envelope): create and co-sign (the packet: release.packet)."""

from __future__ import annotations

import os
from pathlib import Path

from provenance.core import canonical, signing
from provenance.core.clock import now_rfc3339
from provenance.core.digest import Digest
from provenance.core.errors import ProvError, VerificationFailed
from provenance.records.models import (DigestSet, TreeDigestSet, EvalRecord, ReleasePredicate, Score, Statement, Subject, load_record)
from provenance.store.objects import Store
from provenance.log.evidence import log_record
from provenance.log.translog import log_object, open_log
from provenance.records.envelope import envelope_shape, payload_of, statement_bytes

TREE_ANNOTATION = {"digestAlgorithm": "prov-tree-v1"}


def resolve_record(store: Store, ref: str) -> tuple[EvalRecord, Digest]:
    """A record given as a file (stored on the way) or as a digest/ref in the store."""
    if os.path.isfile(ref):
        record = load_record(Path(ref).read_bytes(), ref)
        return record, store.put_bytes(record.canonical_bytes(), "record")
    info = store.resolve(ref)
    if "record" not in info.kinds:
        raise ProvError(f"{ref}: not an evaluation record (it is a {info.kind})")
    data = store.read_bytes(info.blake3)
    return load_record(data, ref), Digest(info.sha256, info.blake3, info.size)


def create_release(store: Store, record_ref: str, archive: str | Path, runtime: str | Path, name: str,
                   key_path: str | Path, passphrase_file=None, expires: str | None = None,
                   log_key_path: str | Path | None = None, log_passphrase_file=None,
                   since_note: str | None = None) -> tuple[dict, Digest]:
    key = signing.load_private(key_path, passphrase_file)
    log_key = signing.load_private(log_key_path, log_passphrase_file) if log_key_path else None
    log_origin = open_log(store).origin() if log_key else None
    record, record_d = resolve_record(store, record_ref)
    archive_d = store.add_as(archive, "file", "archive")
    runtime_d = store.add_as(runtime, "tree", "runtime")
    from provenance.core.tree import listing
    listed_d, runtime_listing = listing(runtime)
    if (listed_d.sha256, listed_d.blake3) != (runtime_d.sha256, runtime_d.blake3):
        raise VerificationFailed(f"{runtime}: changed while it was released")
    odd = next((e["path"] for e in runtime_listing if any(c in e["path"] for c in "\n\r\\")), None)
    if odd is not None:  # a checksum file's line cannot name it as sha256sum -c reads it
        raise VerificationFailed(f"{runtime}: {odd!r}: a newline, carriage return or backslash in a name cannot "
                                 "be listed in the release's checksum files")
    ra, rt = record.archive, record.runtime.tree
    if ra is None:
        raise VerificationFailed("the record is a claim not bound to an archive: it cannot be released")
    if ra.sha256 != archive_d.sha256 or ra.size != archive_d.size or (ra.blake3 and ra.blake3 != archive_d.blake3):
        raise VerificationFailed(f"{archive}: does not match the record (record sha256 {ra.sha256}, "
                                 f"file {archive_d.sha256})")
    if rt is None:
        raise VerificationFailed("the record has no runtime tree digest: it cannot bind a runtime")
    if (rt.sha256, rt.blake3) != (runtime_d.sha256, runtime_d.blake3):
        raise VerificationFailed(f"{runtime}: does not match the record (record tree {rt.sha256}, "
                                 f"directory {runtime_d.sha256})")
    ref = f"releases/{name}"
    prev_b3 = store.get_ref(ref)
    version, previous = 1, None
    if prev_b3:
        prev = statement_bytes(store.read_bytes(prev_b3), ref)
        version = prev["predicate"]["version"] + 1
        previous = store.info(prev_b3).sha256
    res = record.result
    statement = Statement(
        subject=[Subject(name="archive.zip", digest=DigestSet(sha256=archive_d.sha256, blake3=archive_d.blake3)),
                 Subject(name="runtime/", digest=TreeDigestSet(tree_sha256=runtime_d.sha256,
                                                               tree_blake3=runtime_d.blake3),
                         annotations=TREE_ANNOTATION)],
        predicate=ReleasePredicate(
            name=name, version=version, previous=previous, issued_at=now_rfc3339(), expires=expires,
            profile=record.profile, score=Score(canonical=res.canonical_score, posenet=res.posenet,
                                                segnet=res.segnet, rate=res.rate, samples=res.samples),
            archive_size=archive_d.size, grade=record.grade, axis=record.axis,
            record=DigestSet(sha256=record_d.sha256, blake3=record_d.blake3), upstream=record.upstream,
            log={"origin": log_origin} if log_origin else None, runtime_listing=runtime_listing))
    payload = canonical.dumps(statement.to_json_obj())
    env = signing.envelope(payload, key)
    env["ssh"] = [ssh_signature(key, payload)]
    stmt_d = store.put_bytes(payload, "statement", (record_d.blake3, archive_d.blake3, runtime_d.blake3))
    store.set_ref(ref, stmt_d.blake3, expect=prev_b3 or "")  # a concurrent release of this name loses here
    if log_key is not None:
        from provenance.log.logbook import release_log_bundle
        log_record(store, record_d.blake3)
        env["log"] = release_log_bundle(store, stmt_d.blake3, log_key, since_note)
    else:
        log_object(store, stmt_d.blake3)
    return env, stmt_d


def cosign(manifest: dict, key_path: str | Path, passphrase_file=None) -> dict:
    key = signing.load_private(key_path, passphrase_file)
    payload = payload_of(envelope_shape(manifest, "manifest"))
    ptype = manifest["payloadType"]
    kid = signing.keyid(key.public_key())
    if signing.verified_keys(ptype, payload, manifest["signatures"], {kid: key.public_key()}):
        raise ProvError(f"manifest: already signed by key {kid[:16]}")
    out = dict(manifest)
    out["signatures"] = [*manifest["signatures"], signing.sign(key, ptype, payload)]
    out["ssh"] = [*manifest.get("ssh", []), ssh_signature(key, payload)]
    return out


def ssh_signature(key, payload: bytes) -> dict:
    """SSHSIGs by the same key, carried outside the signed payload (as DSSE allows): of the statement
    bytes, and of the packet's SHA256SUMS, which follows from them (release.packet)."""
    from provenance.core import sshsig
    from provenance.release.packet import judge_sums
    out = {"keyid": signing.keyid(key.public_key()), "sshsig": sshsig.sign(key, payload)}
    sums = judge_sums(payload)
    if sums is not None:
        out["sums_sshsig"] = sshsig.sign(key, sums[0])
    return out
