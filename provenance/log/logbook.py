"""What releases carry from the evidence log, and how verify checks it offline.

A manifest's extra top-level field `log` (ignored by DSSE verifiers) holds the signed
checkpoint, the statement's leaf entry and inclusion proof, and one consistency proof: from
the log's previous checkpoint (the previous release's), and from the checkpoint a judge named
with `prov release create --since`. A bundle stays O(log n) however many releases came before;
a judge holding an older checkpoint asks the lab for that proof (`prov log consistency OLD NEW`).
"""

from __future__ import annotations

import hashlib

from provenance.log import checkpoint as notes, proofs  # pure: verify reads these; the store's log is imported where used
from provenance.core.checks import Check
from provenance.core.errors import ProvError
from provenance.core.signing import b64_strict, b64e


def unb64(s, what: str) -> bytes:
    try:
        return b64_strict(s)
    except (ValueError, TypeError):
        raise proofs.LogProofError(f"{what}: not base64") from None


def checkpoint(store, key) -> str:
    """Sign a checkpoint of the log as it is now (only committed, hence durable, leaves)."""
    from provenance.log import translog
    log = translog.open_log(store)
    size = log.size()
    note = notes.sign_checkpoint(log.origin(), size, log.root(size), key, name=notes.NOTE_KEY_NAME)
    return log.record_checkpoint(size, note)


def add_cosignatures(store, cosigned: list[tuple[str, str]], manifests: list[str] = (), witnesses=None) -> dict:
    """`prov log cosign-add`: the signature lines of cosigned copies [(where, note)] of this log's checkpoints,
    merged into the checkpoints the store keeps and into the release manifests that carry the same checkpoint
    (their `log` field lies outside the signed payload). With `witnesses` (log.cosign.Witness), every line
    added must be a valid cosignature by one of them. Everything is checked before anything is written."""
    from provenance.log import cosign, translog
    from provenance.core.canonical import loads_tracking
    from provenance.core.files import read_input, write_json
    log = translog.open_log(store)
    kept = {notes.parse_checkpoint(n).body: [size, n] for size, n in log.checkpoints()}
    added = 0
    for where, text in cosigned:
        try:
            cp = notes.parse_checkpoint(text)
        except proofs.LogProofError as e:
            raise ProvError(f"{where}: {e}") from None
        if cp.body not in kept:
            raise ProvError(f"{where}: not a checkpoint this store's log signed ({cp.origin} size {cp.size})")
        slot = kept[cp.body]
        merged = notes.merge_signatures(slot[1], text)
        new = notes.signature_lines(merged)[len(notes.signature_lines(slot[1])):]
        if witnesses is not None:
            for line in new:
                one = notes.parse_checkpoint(cp.body + "\n" + line + "\n")
                c = cosign.check(one, witnesses, 1, cosign.MAX_TIMESTAMP, None)  # valid; freshness is verify's
                if not c.ok:
                    raise ProvError(f"{where}: {line.split(' ')[1]}: not a valid cosignature by a witness of the "
                                    f"trust policy ({c.detail})")
        added += len(new)
        slot[1] = merged
    docs = []
    for m in manifests:
        env, _ = loads_tracking(read_input(m), m)
        note = env.get("log", {}).get("checkpoint") if isinstance(env, dict) and isinstance(env.get("log"), dict) else None
        try:
            body = notes.parse_checkpoint(note).body if isinstance(note, str) else None
        except proofs.LogProofError as e:
            raise ProvError(f"{m}: its log checkpoint does not parse ({e})") from None
        if body not in kept:
            raise ProvError(f"{m}: carries no checkpoint this store's log signed")
        env["log"]["checkpoint"] = notes.merge_signatures(note, kept[body][1])
        docs.append((m, env))
    with translog.transaction(log.db):
        for size, note in kept.values():
            log.record_checkpoint(size, note)
    for m, env in docs:
        write_json(m, env)
    return {"added": added, "manifests": [m for m, _ in docs]}


def release_log_bundle(store, statement_b3: str, key, since_note: str | None = None) -> dict:
    from provenance.log import translog
    log = translog.open_log(store)
    since = None
    if since_note is not None:  # checked before anything is logged or signed
        since = notes.parse_checkpoint(since_note)
        if since.origin != log.origin():
            raise ProvError(f"--since: a checkpoint of another log ({since.origin})")
        if since.size > log.size() or log.root(since.size) != since.root:
            raise ProvError(f"--since: size {since.size} is not a state of this log")
    index, _ = translog.log_object(store, statement_b3, "statement")
    row = log.db.execute("SELECT MAX(size) FROM log_checkpoints").fetchone()
    previous = row[0] if row else None
    note = checkpoint(store, key)
    cp = notes.parse_checkpoint(note)
    info = store.info(statement_b3)
    sizes = sorted({s for s in (previous, since.size if since else None) if s and 0 < s < cp.size})
    return {
        "checkpoint": note,
        "leaf": b64e(proofs.entry_bytes("statement", info.sha256, info.blake3)),
        "index": index,
        "inclusion": [b64e(h) for h in log.inclusion_proof(index, cp.size)],
        "consistency": {str(size): [b64e(h) for h in log.consistency_proof(size, cp.size)] for size in sizes},
    }


def check_release_log(bundle, payload: bytes, trusted_log_keys: dict, since_note: str | None,
                      threshold: int = 1, witnesses=(), witness_threshold: int = 0, witness_max_age=None,
                      at: int | None = None, origins: tuple = ()) -> list[Check]:
    """The checks of a manifest's log bundle; raise nothing on failure. The checkpoint needs
    `threshold` distinct trusted log keys (the trust policy's log role) and, where the policy names
    witnesses, `witness_threshold` of their cosignatures no older than `witness_max_age` at time `at`.
    Its origin must be each of `origins` given (the policy's pinned log, the statement's own)."""
    from blake3 import blake3
    out = []
    if not isinstance(bundle, dict) or not isinstance(bundle.get("checkpoint"), str):
        return [Check("log_checkpoint", False, "manifest carries no log checkpoint")]
    if not trusted_log_keys:
        return [Check("log_checkpoint", False, "the trust policy names no log key")]
    try:
        cp, good = notes.verify_checkpoint(bundle["checkpoint"], trusted_log_keys)
        wrong = [o for o in origins if o is not None and o != cp.origin]
        if wrong:
            return [Check("log_checkpoint", False, f"the checkpoint is of the log {cp.origin}, not {wrong[0]} "
                                                   "(the log the trust policy or the statement names)")]
        if len(good) < threshold:
            return [Check("log_checkpoint", False, f"{cp.origin} size {cp.size} signed by {len(good)} of {threshold} "
                                                   "required distinct log key(s)")]
        out.append(Check("log_checkpoint", True, f"{cp.origin} size {cp.size} signed by {len(good)} trusted log key(s)"))
    except proofs.LogProofError as e:
        return [Check("log_checkpoint", False, str(e))]
    if witness_threshold:
        from provenance.log import cosign
        out.append(cosign.check(cp, list(witnesses), witness_threshold, at, witness_max_age))
    try:
        leaf = unb64(bundle.get("leaf"), "log leaf")
        want = proofs.entry_bytes("statement", hashlib.sha256(payload).hexdigest(), blake3(payload).hexdigest())
        if leaf != want:
            raise proofs.LogProofError("logged entry is not this manifest's statement")
        proof = [unb64(h, "inclusion proof") for h in _list(bundle.get("inclusion", []), "inclusion proof")]
        proofs.verify_inclusion(proofs.leaf_hash(leaf), bundle.get("index"), cp.size, proof, cp.root)
        out.append(Check("log_inclusion", True, f"statement is leaf {bundle['index']} of {cp.size}"))
    except proofs.LogProofError as e:
        out.append(Check("log_inclusion", False, str(e)))
    if since_note is not None:
        try:
            old, _ = notes.verify_checkpoint(since_note, trusted_log_keys)
            if old.origin != cp.origin:
                raise proofs.LogProofError(f"old checkpoint is of another log ({old.origin})")
            if old.size == cp.size or old.size == 0:
                proof = []
            else:
                carried = bundle.get("consistency", {})
                raw = carried.get(str(old.size)) if isinstance(carried, dict) else None
                if raw is None:
                    raise proofs.LogProofError(
                        f"manifest has no consistency proof from size {old.size} (it carries one from the "
                        f"previous release's checkpoint); the lab proves any other with "
                        f"prov log consistency OLD NEW")
                proof = [unb64(h, "consistency proof") for h in _list(raw, "consistency proof")]
            proofs.verify_consistency(old.size, cp.size, proof, old.root, cp.root)
            out.append(Check("log_consistency", True, f"log grew from {old.size} to {cp.size} without rewriting"))
        except proofs.LogProofError as e:
            out.append(Check("log_consistency", False, str(e)))
    return out


def _list(v, what: str) -> list:
    if not isinstance(v, list):  # the bundle sits outside the signed payload: any type may come
        raise proofs.LogProofError(f"{what}: not a list")
    return v


def read_note(path: str) -> str:
    try:
        with open(path, encoding="utf-8") as f:
            return f.read()
    except (OSError, UnicodeDecodeError) as e:
        raise ProvError(f"{path}: cannot read checkpoint ({e})") from None


def read_since(path: str) -> str:
    """A checkpoint a judge or monitor holds (--since): unreadable, or not a checkpoint, is bad input (exit 2);
    whether a trusted key signed it is the check's to say."""
    text = read_note(path)
    try:
        notes.parse_checkpoint(text)
    except proofs.LogProofError as e:
        raise ProvError(f"{path}: not a log checkpoint ({e})") from None
    return text


def prove_inclusion(store, ref: str, size: int | None = None) -> dict:
    """An inclusion proof of a stored, logged object (checked before it is returned)."""
    from provenance.log import translog
    info = store.resolve(ref)
    log = translog.open_log(store)
    index = leaf = None
    for kind in (info.kind, *info.kinds):  # logged as whichever kind it was stored as
        leaf = proofs.leaf_hash(proofs.entry_bytes(kind, info.sha256, info.blake3))
        index = log.index_of(leaf)
        if index is not None:
            break
    if index is None:
        raise ProvError(f"{ref}: not in the log (prov log append it first)")
    size = log.size() if size is None else size
    if not index < size <= log.size():
        raise ProvError(f"--size {size}: must be above the leaf's index {index} and at most {log.size()}")
    proof, root = log.inclusion_proof(index, size), log.root(size)
    proofs.verify_inclusion(leaf, index, size, proof, root)
    return {"index": index, "size": size, "leaf_hash": leaf.hex(), "root": root.hex(), "proof": [h.hex() for h in proof]}


def checkpoint_pair(old_note: str, new_note: str, trusted: dict | None = None) -> tuple:
    """Two checkpoints of one log, parsed (and signed by a trusted log key when `trusted` is given)."""
    pair = (old_note, new_note)
    a, b = ([notes.verify_checkpoint(n, trusted)[0] for n in pair] if trusted is not None
            else [notes.parse_checkpoint(n) for n in pair])
    if a.origin != b.origin:
        raise ProvError(f"checkpoints are of different logs ({a.origin}, {b.origin})")
    return a, b


def prove_consistency(store, a, b, where: str = "new") -> dict:
    """A consistency proof, from this store's log, that checkpoint `b` extends checkpoint `a`
    (see checkpoint_pair); checked before it is returned."""
    from provenance.log import translog
    log = translog.open_log(store)
    if b.size > log.size():
        raise ProvError(f"{where}: size {b.size} is beyond this store's log ({log.size()})")
    proof = log.consistency_proof(a.size, b.size)
    proofs.verify_consistency(a.size, b.size, proof, a.root, b.root)
    return {"ok": True, "size1": a.size, "size2": b.size, "proof": [h.hex() for h in proof]}
