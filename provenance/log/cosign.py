"""Witness cosignatures (C2SP tlog-cosignature, `cosignature/v1`, Ed25519): made, and counted against a
trust policy's witness role. Pure: no store, no state (the witness that keeps state is `log.witness`).

A cosignature is one more signed-note line on a checkpoint: `— <name> base64(key ID || timestamp || sig)`,
key ID SHA-256(name || "\\n" || 0x04 || public key)[:4], timestamp a big-endian u64 of POSIX seconds, and
the Ed25519 signature over "cosignature/v1\\n" "time <timestamp>\\n" and the checkpoint's whole body. The
key ID commits to the name; the signed message does not, so each witness has a key of its own."""

from __future__ import annotations

import hashlib

from provenance.core import signing
from provenance.core.checks import Check
from provenance.core.errors import ProvError
from provenance.core.signing import b64e
from provenance.log import checkpoint

COSIGNATURE_V1 = 0x04  # the signature type byte of an Ed25519 cosigner's key ID and vkey
MAX_TIMESTAMP = (1 << 63) - 1
SKEW = 300  # seconds a cosignature may be ahead of the verifier's clock


def key_hash(name: str, raw_pub: bytes) -> bytes:
    return checkpoint.key_id(name, COSIGNATURE_V1, raw_pub)


def default_name(raw_pub: bytes) -> str:
    """A witness's key name when it chooses none: stable, so a trust policy can name it from the key alone."""
    return f"comma-lab.dev/witness/{hashlib.sha256(raw_pub).hexdigest()[:16]}"


def vkey(name: str, raw_pub: bytes) -> str:
    """The witness's verifier key (C2SP signed-note vkey, type 0x04): `name+hash+base64(0x04 || key)`."""
    return checkpoint.vkey(name, COSIGNATURE_V1, raw_pub)


def parse_vkey(text: str, where: str) -> tuple[str, bytes]:
    """(name, raw Ed25519 public key) of a cosigner vkey; ProvError unless it is exactly one."""
    try:
        return checkpoint.parse_vkey(text, COSIGNATURE_V1)
    except ValueError as e:
        raise ProvError(f"{where}: {e} (a cosignature/v1 vkey)") from None


def check_name(name: str) -> None:
    """A key name a signed note can carry: not empty, no '+' (the vkey's separator), no space or control."""
    if not name or "+" in name or any(c.isspace() or not c.isprintable() for c in name):
        raise ProvError(f"witness name {name!r}: must be non-empty, without '+', spaces or control characters")


def message(body: str, timestamp: int) -> bytes:
    """What a cosigner signs: the header line, the time line, the checkpoint's body (its signatures excluded)."""
    return f"cosignature/v1\ntime {timestamp}\n{body}".encode()


def sign(name: str, key, timestamp: int, body: str) -> str:
    """One signature line, newline-terminated, to append to the checkpoint note."""
    if not 0 <= timestamp <= MAX_TIMESTAMP:
        raise ProvError(f"cosignature timestamp {timestamp} out of range")
    check_name(name)
    raw = signing.raw_public(key.public_key())
    sig = key.sign(message(body, timestamp))
    return f"\u2014 {name} {b64e(key_hash(name, raw) + timestamp.to_bytes(8, 'big') + sig)}\n"


class Witness:
    """A witness a verifier trusts: its key ID in the policy, its note name and public key."""

    __slots__ = ("keyid", "name", "pub", "hash")

    def __init__(self, keyid: str, name: str, pub) -> None:
        self.keyid, self.name, self.pub = keyid, name, pub
        self.hash = key_hash(name, signing.raw_public(pub))


def check(cp, witnesses: list[Witness], threshold: int, at: int, max_age: int | None) -> Check:
    """The role's threshold of fresh, valid cosignatures on checkpoint `cp` (log.checkpoint.Checkpoint), from
    distinct witness keys; every witness without one is named with the reason."""
    good: dict[str, int] = {}
    why: dict[str, str] = {}
    for name, kh, raw in cp.signatures:
        for w in witnesses:
            if name != w.name or kh != w.hash or w.keyid in good:
                continue
            if len(raw) != 72:
                why[w.keyid] = "malformed cosignature (not a u64 timestamp and a 64-byte signature)"
                continue
            ts = int.from_bytes(raw[:8], "big")
            if ts > MAX_TIMESTAMP or not signing.verify_ed25519(w.pub, raw[8:], message(cp.body, ts)):
                why[w.keyid] = "cosignature does not verify over this checkpoint"
            elif ts > at + SKEW:
                why[w.keyid] = f"cosigned at {ts}, after the time of verification ({at})"
            elif max_age is not None and ts < at - max_age:
                why[w.keyid] = f"cosigned at {ts}, {at - ts} s before the time of verification: older than " \
                               f"the policy's {max_age} s"
            else:
                good[w.keyid] = ts
                why.pop(w.keyid, None)
    names = {w.keyid: w.name for w in witnesses}
    missing = [f"{names[k]}: {why.get(k, 'no cosignature')}" for k in sorted(names, key=names.get) if k not in good]
    ok = len(good) >= threshold
    detail = (f"{len(good)} of {threshold} required witness cosignature(s) on {cp.origin} size {cp.size}"
              + (f" ({', '.join(sorted(names[k] for k in good))})" if good else ""))
    if missing and (not ok or why):
        detail += "; " + "; ".join(missing)
    return Check("log_witnesses", ok, detail)
