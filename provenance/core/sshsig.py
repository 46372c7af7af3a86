"""OpenSSH signatures (SSHSIG, openssh PROTOCOL.sshsig) with the release's own Ed25519 keys.

So a judge can check a release with stock OpenSSH and no trust in our Python:

    ssh-keygen -Y verify -f allowed_signers -I IDENTITY -n comma-lab-release -s statement.json.IDENTITY.sig < statement.json

The signed message is the statement's exact bytes (the DSSE payload); the SSHSIG blob
binds namespace and a SHA-512 of the message, so the signature cannot be replayed as a
DSSE signature or for another namespace.
"""

from __future__ import annotations

import hashlib

from provenance.core.errors import ProvError
from provenance.core.signing import b64_strict, b64e, ed25519_public, raw_public, verify_ed25519

NAMESPACE = "comma-lab-release"
MAGIC = b"SSHSIG"
ARMOR_BEGIN = "-----BEGIN SSH SIGNATURE-----"
ARMOR_END = "-----END SSH SIGNATURE-----"
KEY_TYPE = b"ssh-ed25519"


def _s(b: bytes) -> bytes:
    return len(b).to_bytes(4, "big") + b


def identity(keyid: str) -> str:
    """The principal a key signs as: derived from the key alone, so every file agrees on it."""
    return f"comma-lab-{keyid[:16]}"


def public_blob(raw32: bytes) -> bytes:
    return _s(KEY_TYPE) + _s(raw32)


def _signed_data(message: bytes, namespace: str, hash_alg: str) -> bytes:
    h = hashlib.new(hash_alg, message).digest()
    return MAGIC + _s(namespace.encode()) + _s(b"") + _s(hash_alg.encode()) + _s(h)


def sign(key, message: bytes, namespace: str = NAMESPACE) -> str:
    """Armored SSHSIG of `message` by an Ed25519 private key (cryptography's Ed25519PrivateKey)."""
    sig = key.sign(_signed_data(message, namespace, "sha512"))
    blob = (MAGIC + (1).to_bytes(4, "big") + _s(public_blob(raw_public(key.public_key()))) + _s(namespace.encode())
            + _s(b"") + _s(b"sha512") + _s(_s(KEY_TYPE) + _s(sig)))
    b64 = b64e(blob)
    return "\n".join([ARMOR_BEGIN, *(b64[i:i + 70] for i in range(0, len(b64), 70)), ARMOR_END]) + "\n"


class _Reader:
    def __init__(self, data: bytes):
        self.data, self.pos = data, 0

    def take(self, n: int) -> bytes:
        if self.pos + n > len(self.data):
            raise ValueError("truncated")
        out = self.data[self.pos:self.pos + n]
        self.pos += n
        return out

    def string(self) -> bytes:
        return self.take(int.from_bytes(self.take(4), "big"))


def parse(armored: str) -> tuple[bytes, str, str, bytes]:
    """(raw 32-byte public key, namespace, hash algorithm, 64-byte signature); ProvError if malformed."""
    try:
        lines = armored.strip().splitlines()
        if lines[0] != ARMOR_BEGIN or lines[-1] != ARMOR_END:
            raise ValueError("no SSH SIGNATURE armor")
        r = _Reader(b64_strict("".join(lines[1:-1])))
        if r.take(6) != MAGIC or int.from_bytes(r.take(4), "big") != 1:
            raise ValueError("not an SSHSIG v1 blob")
        pk = _Reader(r.string())
        if pk.string() != KEY_TYPE:
            raise ValueError("not an ssh-ed25519 key")
        raw = pk.string()
        namespace, _reserved, hash_alg = r.string().decode(), r.string(), r.string().decode()
        sg = _Reader(r.string())
        if sg.string() != KEY_TYPE:
            raise ValueError("not an ssh-ed25519 signature")
        sig = sg.string()
        if len(raw) != 32 or len(sig) != 64 or r.pos != len(r.data) or hash_alg not in ("sha256", "sha512"):
            raise ValueError("malformed fields")
        return raw, namespace, hash_alg, sig
    except (ValueError, IndexError, UnicodeDecodeError) as e:
        raise ProvError(f"SSH signature: {e}") from None


def verify(armored: str, message: bytes, namespace: str = NAMESPACE) -> bytes | None:
    """The raw public key whose valid SSHSIG this is over `message` in `namespace`, else None."""
    try:
        raw, ns, hash_alg, sig = parse(armored)
        pub = ed25519_public(raw)
    except (ProvError, ValueError):
        return None
    if ns != namespace or not verify_ed25519(pub, sig, _signed_data(message, namespace, hash_alg)):
        return None
    return raw
