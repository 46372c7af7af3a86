"""`prov log witness`: a witness cosigns a checkpoint (C2SP tlog-cosignature, `log.cosign`) only after it has
checked the log's signature and a consistency proof from the last checkpoint it cosigned for that origin.
It refuses a rollback (a smaller size) and a fork (the same size with another root, or a larger size the
proof cannot join to what it cosigned), and says which. Its state moves forward only.

The proof is the tlog-witness form: a line `old <size>`, then one base64 hash a line."""

from __future__ import annotations

import time

from provenance.core import signing
from provenance.core.errors import ProvError, VerificationFailed
from provenance.core.signing import b64_strict, b64e
from provenance.log import cosign
from provenance.log.checkpoint import parse_checkpoint, signed_by
from provenance.log.proofs import HASH_LEN, LogProofError, verify_consistency
from provenance.log.seen import Seen


def format_proof(old_size: int, proof: list[bytes]) -> str:
    return f"old {old_size}\n" + "".join(b64e(h) + "\n" for h in proof)


def parse_proof(text: str, where: str) -> tuple[int, list[bytes]]:
    lines = text.split("\n")
    if lines and lines[-1] == "":
        lines.pop()
    head = lines[0].split(" ") if lines else []
    if len(head) != 2 or head[0] != "old" or not (head[1].isascii() and head[1].isdigit()) \
            or (len(head[1]) > 1 and head[1][0] == "0"):
        raise ProvError(f"{where}: not a consistency proof (its first line must be 'old <size>')")
    hashes = []
    for i, ln in enumerate(lines[1:], 2):
        try:
            h = b64_strict(ln)
        except ValueError:
            h = b""
        if len(h) != HASH_LEN:
            raise ProvError(f"{where}: line {i} is not a base64 SHA-256 hash")
        hashes.append(h)
    return int(head[1]), hashes


def cosign_checkpoint(note: str, key, state: str, trusted: dict, proof: tuple[int, list[bytes]] | None = None,
                      name: str | None = None, now: int | None = None, origins=()) -> dict:
    """Cosign `note` for the witness with `key` and `state`; VerificationFailed on a rollback, a fork, a log
    it does not watch (one of `origins`, or one it cosigned before) or a checkpoint the trusted log keys did
    not sign. The cosigned note and what was checked."""
    raw = signing.raw_public(key.public_key())
    name = name or cosign.default_name(raw)
    cosign.check_name(name)
    try:
        cp = parse_checkpoint(note)
    except LogProofError as e:
        raise ProvError(f"not a checkpoint ({e})") from None
    try:
        signed_by(cp, trusted)
    except LogProofError as e:
        raise VerificationFailed(f"refused: {e}") from None
    with Seen(state) as seen:
        kept = seen.get(cp.origin)
        if kept is None and cp.origin not in origins:  # a fresh origin under the same key is a split view too
            raise VerificationFailed(f"refused: {cp.origin} is not a log this witness watches (its operator starts "
                                     "with --origin ORIGIN, or a trust policy that names it)")
        if kept is None:
            if proof is not None and proof[0] != 0:
                raise ProvError(f"this witness has cosigned nothing of {cp.origin}: a proof must be from size 0")
            checked = f"first checkpoint of {cp.origin} this witness cosigns"
        else:
            last, entry = kept
            if cp.size < last.size:
                raise VerificationFailed(f"refused: rollback: {cp.origin} size {cp.size} is below size {last.size} "
                                         "this witness cosigned")
            if cp.size == last.size:
                if cp.root != last.root:
                    raise VerificationFailed(f"refused: fork: {cp.origin} size {cp.size} has root {cp.root.hex()}, "
                                             f"but this witness cosigned root {last.root.hex()} at that size")
                checked = f"size {cp.size} again, same root"
            else:
                if proof is None:
                    raise ProvError(f"a consistency proof from size {last.size} is needed (prov log consistency "
                                    "WITNESSED.note CHECKPOINT --out PROOF)")
                if proof[0] != last.size:
                    raise ProvError(f"the proof is from size {proof[0]}, but this witness last cosigned size "
                                    f"{last.size} of {cp.origin}: prove from that size")
                try:
                    verify_consistency(last.size, cp.size, proof[1], last.root, cp.root)
                except LogProofError as e:
                    raise VerificationFailed(f"refused: fork: {cp.origin} size {cp.size} is not consistent with size "
                                             f"{last.size} this witness cosigned ({e})") from None
                checked = f"consistent with size {last.size} cosigned before"
        ts = int(time.time()) if now is None else now
        if kept is not None:
            last_ts = kept[1].get("time", 0)
            if type(last_ts) is not int:
                raise ProvError(f"{state}: the time kept for {cp.origin} is not an integer")
            ts = max(ts, last_ts)  # a witness's clock never runs back on a log
        line = cosign.sign(name, key, ts, cp.body)
        seen.accept(note, time=ts)
    return {"origin": cp.origin, "size": cp.size, "root": cp.root.hex(), "witness": name, "time": ts,
            "vkey": cosign.vkey(name, raw), "checked": checked, "cosignature": line, "note": note + line}
