"""Ed25519 keys and DSSE envelopes (https://github.com/secure-systems-lab/dsse).

A signature is over PAE(payloadType, payload), never over the JSON around it. A
signature's keyid is only a hint: verification tries every trusted key and counts
distinct keys, so one key signing twice counts once.
"""

from __future__ import annotations

import binascii
import hashlib
import os

from provenance.core.errors import ProvError
from provenance.core.files import read_input

TYPE_CHECKING = False  # cryptography's Python layer (typing, enum) stays off the verify path
if TYPE_CHECKING:
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

IN_TOTO = "application/vnd.in-toto+json"


def pae(payload_type: str, payload: bytes) -> bytes:
    t = payload_type.encode("utf-8")
    return b"DSSEv1 %d %s %d %s" % (len(t), t, len(payload), payload)


# `serialization` is imported where keys are written or private keys read: the verify path
# (public keys only) then starts without it.
_ED25519_SPKI = bytes.fromhex("302a300506032b6570032100")  # DER SubjectPublicKeyInfo header, RFC 8410


def ed25519_public(raw: bytes) -> Ed25519PublicKey:
    """The Ed25519 public key of 32 raw bytes, from cryptography's Rust core (the same object its
    public API returns) without importing that API's Python layer."""
    try:
        from cryptography.hazmat.bindings._rust import openssl as rust
        return rust.ed25519.from_public_bytes(raw)
    except ImportError:  # a cryptography whose layout differs: its public API, at its cost
        from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
        return Ed25519PublicKey.from_public_bytes(raw)


def verify_ed25519(pub: Ed25519PublicKey, signature: bytes, message: bytes) -> bool:
    """The one Ed25519 check: DSSE, SSHSIG, log checkpoints and trust chains all call it. Any failure
    (a bad signature, a malformed one) is False."""
    try:
        pub.verify(signature, message)
        return True
    except Exception:  # cryptography's InvalidSignature (importing it costs typing), or worse
        return False


def raw_public(pub: Ed25519PublicKey) -> bytes:
    return pub.public_bytes_raw()


def keyid(pub: Ed25519PublicKey) -> str:
    return hashlib.sha256(raw_public(pub)).hexdigest()


def public_pem(pub: Ed25519PublicKey) -> str:
    from cryptography.hazmat.primitives import serialization
    return pub.public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo).decode()


def _read_passphrase(passphrase_file: str | os.PathLike | None) -> bytes | None:
    if passphrase_file is None:
        return None
    data = read_input(passphrase_file).rstrip(b"\r\n")
    if not data:
        raise ProvError(f"{passphrase_file}: empty passphrase")
    return data


def generate_key(out_dir: str | os.PathLike, passphrase_file: str | os.PathLike | None = None) -> tuple:
    """Write DIR/key.pem (PKCS#8, 0600, encrypted with a passphrase) and DIR/key.pub.pem; never overwrite."""
    from pathlib import Path  # making keys, not the verify path
    out = Path(out_dir)
    priv_path, pub_path = out / "key.pem", out / "key.pub.pem"
    for p in (priv_path, pub_path):
        if os.path.lexists(p):
            raise ProvError(f"{p}: already exists; refusing to overwrite a key")
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
    passphrase = _read_passphrase(passphrase_file)
    out.mkdir(parents=True, exist_ok=True)
    key = Ed25519PrivateKey.generate()
    enc = (serialization.BestAvailableEncryption(passphrase) if passphrase else serialization.NoEncryption())
    pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, enc)
    fd = os.open(priv_path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        os.write(fd, pem)
        os.fsync(fd)
    finally:
        os.close(fd)
    fd = os.open(pub_path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
    try:
        os.write(fd, public_pem(key.public_key()).encode())
    finally:
        os.close(fd)
    return priv_path, pub_path, keyid(key.public_key())


def load_private(path: str | os.PathLike, passphrase_file: str | os.PathLike | None = None) -> Ed25519PrivateKey:
    data = read_input(path)
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
    passphrase = _read_passphrase(passphrase_file)
    try:
        key = serialization.load_pem_private_key(data, passphrase)
    except TypeError:
        raise ProvError(f"{path}: key is encrypted; pass --passphrase-file" if passphrase is None
                        else f"{path}: key is not encrypted; drop --passphrase-file") from None
    except ValueError:
        raise ProvError(f"{path}: not a PEM private key, or wrong passphrase") from None
    if not isinstance(key, Ed25519PrivateKey):
        raise ProvError(f"{path}: not an Ed25519 key")
    return key


def load_public_pem(data: bytes | str, where: str) -> Ed25519PublicKey:
    data = data.encode() if isinstance(data, str) else data
    lines = data.strip().splitlines()
    if len(lines) == 3 and lines[0] == b"-----BEGIN PUBLIC KEY-----" and lines[2] == b"-----END PUBLIC KEY-----":
        try:  # the one form we write: no need for cryptography's general PEM machinery
            der = b64_strict(lines[1])
        except ValueError:
            der = b""
        if len(der) == 44 and der.startswith(_ED25519_SPKI):
            return ed25519_public(der[12:])
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
    try:
        key = serialization.load_pem_public_key(data)
    except ValueError:
        raise ProvError(f"{where}: not a PEM public key") from None
    if not isinstance(key, Ed25519PublicKey):
        raise ProvError(f"{where}: not an Ed25519 public key")
    return key


def load_public(path: str | os.PathLike) -> Ed25519PublicKey:
    return load_public_pem(read_input(path), str(path))


def b64e(b: bytes) -> str:
    return binascii.b2a_base64(b, newline=False).decode("ascii")


def b64_strict(data: str | bytes) -> bytes:
    """base64.b64decode(data, validate=True), which is binascii's strict mode, without base64's
    import of re; ValueError (binascii.Error) when it is not base64."""
    if isinstance(data, str):
        data = data.encode("ascii")  # UnicodeEncodeError is a ValueError
    elif not isinstance(data, (bytes, bytearray)):
        raise TypeError(f"base64 of a {type(data).__name__}")
    return binascii.a2b_base64(data, strict_mode=True)


def b64d(s: str, what: str) -> bytes:
    try:
        return b64_strict(s)
    except (ValueError, TypeError):
        raise ProvError(f"{what}: not valid base64") from None


def sign(key: Ed25519PrivateKey, payload_type: str, payload: bytes) -> dict:
    return {"keyid": keyid(key.public_key()), "sig": b64e(key.sign(pae(payload_type, payload)))}


def envelope(payload: bytes, key: Ed25519PrivateKey, payload_type: str = IN_TOTO) -> dict:
    return {"payload": b64e(payload), "payloadType": payload_type, "signatures": [sign(key, payload_type, payload)]}


def verified_keys(payload_type: str, payload: bytes, signatures: list,
                  trusted: dict[str, Ed25519PublicKey]) -> set[str]:
    """Distinct trusted keyids with a valid signature over the PAE. keyid hints are ignored."""
    message = pae(payload_type, payload)
    good: set[str] = set()
    for s in signatures:
        sig = s.get("sig") if isinstance(s, dict) else None
        if not isinstance(sig, str):
            continue
        try:
            raw = b64_strict(sig)
        except ValueError:
            continue
        for kid, pub in trusted.items():
            if kid not in good and verify_ed25519(pub, raw, message):
                good.add(kid)
                break
    return good
