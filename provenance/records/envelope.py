"""The one reader of release manifests: a DSSE envelope holding an in-toto Statement.

Reading is not believing: nothing here checks a signature. `release.verify.authenticate` does,
before anything in the payload counts. Light: no pydantic (the verify path reads through here).
"""

from __future__ import annotations

import os

from provenance.core import canonical, signing
from provenance.core.errors import ProvError
from provenance.core.files import read_input


def envelope_shape(env, where: str) -> dict:
    """The envelope itself, when it has DSSE's shape (payload, payloadType, signatures)."""
    if not isinstance(env, dict) or not isinstance(env.get("payload"), str) \
            or not isinstance(env.get("payloadType"), str) or not isinstance(env.get("signatures"), list):
        raise ProvError(f"{where}: not a DSSE envelope (needs payload, payloadType, signatures)")
    return env


def read_envelope(path: str | os.PathLike) -> tuple[dict, list[str]]:
    """(envelope, duplicate keys found while parsing) of a manifest file; strict JSON."""
    env, dupes = canonical.loads_tracking(read_input(path), str(path))
    return envelope_shape(env, str(path)), dupes


def payload_of(env: dict, where: str = "payload") -> bytes:
    return signing.b64d(env["payload"], where)


def statement_bytes(data: bytes, where: str = "statement") -> dict:
    """A statement from its bytes (as signed, or as the store keeps them)."""
    return canonical.loads(data, where)


def statement_of(env: dict, where: str = "payload") -> dict:
    """The statement inside an envelope (unverified)."""
    return statement_bytes(payload_of(env, where), where)


def subject_digests(stmt: dict) -> dict[str, tuple[str | None, str | None]]:
    """{subject name: (sha256, blake3)}; a tree's digest is read under its own algorithm's keys
    (`prov-tree-v1-sha256`) or, for releases made before those keys, under plain `sha256`."""
    out = {}
    for s in stmt.get("subject", []):
        d = s.get("digest", {})
        out[s.get("name")] = (d.get("prov-tree-v1-sha256", d.get("sha256")),
                              d.get("prov-tree-v1-blake3", d.get("blake3")))
    return out
