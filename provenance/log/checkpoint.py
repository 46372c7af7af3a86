"""Log checkpoints: C2SP tlog-checkpoint bodies in C2SP signed notes (Go's sumdb/note format), made,
parsed and checked against trusted Ed25519 keys. Pure: no store."""

from __future__ import annotations

import hashlib

from provenance.core import signing
from provenance.core.signing import b64_strict, b64e
from provenance.log.proofs import HASH_LEN, LogProofError


class Checkpoint:
    """A parsed checkpoint (a plain class: the verify path imports no dataclasses)."""

    __slots__ = ("origin", "size", "root", "body", "signatures")

    def __init__(self, origin: str, size: int, root: bytes, body: str, signatures: list[tuple[str, bytes, bytes]]):
        self.origin, self.size, self.root = origin, size, root
        self.body = body  # the signed text: origin, size, root, each ending in a newline
        self.signatures = signatures  # (key name, 4-byte key hash, signature)


# C2SP signed-note keys, one home for both kinds a note here carries: the log's signature (type 0x01,
# Ed25519, what Go's sumdb/note reads) and witnesses' cosignatures (type 0x04, log.cosign)
NOTE_ED25519 = 0x01


def key_id(name: str, sig_type: int, raw_pub: bytes) -> bytes:
    """A signed-note key ID: SHA-256(name || "\\n" || type || key)[:4]."""
    return hashlib.sha256(name.encode() + b"\n" + bytes([sig_type]) + raw_pub).digest()[:4]


def vkey(name: str, sig_type: int, raw_pub: bytes) -> str:
    """A signed-note verifier key: `name+hash+base64(type || key)`."""
    return f"{name}+{key_id(name, sig_type, raw_pub).hex()}+{b64e(bytes([sig_type]) + raw_pub)}"


def parse_vkey(text: str, sig_type: int) -> tuple[str, bytes]:
    """(name, raw Ed25519 public key) of a vkey of this type; ValueError naming what is wrong."""
    parts = text.strip().split("+", 2)  # the name holds no '+'; base64 may
    if len(parts) != 3 or not parts[0] or any(c.isspace() for c in parts[0]):
        raise ValueError("not a vkey (name+hash+base64)")
    name, kh, data = parts
    try:
        raw = b64_strict(data)
    except ValueError:
        raise ValueError("vkey key material is not base64") from None
    if len(raw) != 33 or raw[0] != sig_type:
        raise ValueError(f"not a type 0x{sig_type:02x} (Ed25519) vkey")
    if key_id(name, sig_type, raw[1:]).hex() != kh:
        raise ValueError("vkey hash does not match its name and key")
    return name, raw[1:]


def note_key_hash(name: str, raw_pub: bytes) -> bytes:
    """signed-note key ID for Ed25519: SHA-256(name || "\\n" || 0x01 || key)[:4]."""
    return key_id(name, NOTE_ED25519, raw_pub)


NOTE_KEY_NAME = "comma-lab.dev/provenance/log"  # stable, so a trust policy can publish the verifier key


def note_verifier(name: str, raw_pub: bytes) -> str:
    """The signed-note verifier key `name+hash+base64(0x01 || key)` (C2SP signed-note; Go's note.NewVerifier)."""
    return vkey(name, NOTE_ED25519, raw_pub)


def parse_note_verifiers(data: bytes, where: str) -> dict:
    """{keyid: public key} of signed-note verifier keys, one a line (a judge's packet's log.vkey)."""
    from provenance.core.errors import ProvError
    out = {}
    for i, line in enumerate(data.decode("utf-8", "replace").splitlines(), 1):
        if not line.strip():
            continue
        try:
            pub = signing.ed25519_public(parse_vkey(line, NOTE_ED25519)[1])
        except ValueError:
            raise ProvError(f"{where}: line {i} is not an Ed25519 signed-note verifier key (name+hash+base64)") \
                from None
        out[signing.keyid(pub)] = pub
    if not out:
        raise ProvError(f"{where}: no verifier key")
    return out


def sign_checkpoint(origin: str, size: int, root: bytes, key, name: str | None = None) -> str:
    body = f"{origin}\n{size}\n{b64e(root)}\n"
    name = name or origin
    kh = note_key_hash(name, signing.raw_public(key.public_key()))
    sig = key.sign(body.encode())
    return body + "\n" + f"\u2014 {name} {b64e(kh + sig)}\n"


def parse_checkpoint(text: str) -> Checkpoint:
    if "\n\n" not in text or not text.endswith("\n"):
        raise LogProofError("checkpoint: not a signed note (no blank line / trailing newline)")
    body, sigs = text.split("\n\n", 1)
    body += "\n"
    lines = body.split("\n")[:-1]
    if len(lines) < 3:
        raise LogProofError("checkpoint: needs origin, size and root lines")
    origin, size_s, root_s = lines[0], lines[1], lines[2]
    if not origin or not (size_s.isascii() and size_s.isdigit()) or len(size_s) > 19 \
            or (len(size_s) > 1 and size_s[0] == "0"):  # "١٢" and "²" are digits to str.isdigit
        raise LogProofError("checkpoint: bad origin or size line")
    try:
        root = b64_strict(root_s)
    except ValueError:
        raise LogProofError("checkpoint: root is not base64") from None
    if len(root) != HASH_LEN:
        raise LogProofError("checkpoint: root is not a SHA-256 hash")
    signatures = []
    for line in sigs.split("\n")[:-1]:
        if not line.startswith("\u2014 "):
            raise LogProofError("checkpoint: malformed signature line")
        parts = line[2:].split(" ")
        if len(parts) != 2:
            raise LogProofError("checkpoint: malformed signature line")
        try:
            raw = b64_strict(parts[1])
        except ValueError:
            raise LogProofError("checkpoint: signature is not base64") from None
        if len(raw) < 5:
            raise LogProofError("checkpoint: signature too short")
        signatures.append((parts[0], raw[:4], raw[4:]))
    if not signatures:
        raise LogProofError("checkpoint: unsigned")
    return Checkpoint(origin, int(size_s), root, body, signatures)


def signature_lines(note: str) -> list[str]:
    return note.split("\n\n", 1)[1].split("\n")[:-1]


def merge_signatures(note: str, other: str) -> str:
    """`note` with the signature lines of `other` (a copy of the same body: cosigned, say) it lacks."""
    body, sigs = note.split("\n\n", 1)
    if other.split("\n\n", 1)[0] != body:
        raise LogProofError("checkpoint: not the same checkpoint body")
    have = signature_lines(note)
    return note + "".join(ln + "\n" for ln in dict.fromkeys(signature_lines(other)) if ln not in have)


def verify_checkpoint(text: str, trusted: dict) -> tuple[Checkpoint, set[str]]:
    """Parse and check signatures against trusted log keys {keyid: public key}; raise unless one verifies."""
    cp = parse_checkpoint(text)
    return cp, signed_by(cp, trusted)


def signed_by(cp: Checkpoint, trusted: dict) -> set[str]:
    """The trusted log keys {keyid: public key} whose signatures on a parsed checkpoint verify; raise if none."""
    good = set()
    for name, kh, sig in cp.signatures:
        for kid, pub in trusted.items():
            if note_key_hash(name, signing.raw_public(pub)) == kh and signing.verify_ed25519(pub, sig, cp.body.encode()):
                good.add(kid)
    if not good:
        raise LogProofError("checkpoint: no valid signature by a trusted log key")
    return good
