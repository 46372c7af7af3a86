"""Transfer between stores: every object another store has and this one lacks, its bytes re-hashed
on the way in (a corrupt source object is refused, not spread)."""

from __future__ import annotations

from provenance.core.digest import Digest
from provenance.core.errors import VerificationFailed


def merge_from(store, other) -> int:
    """Copy every object (with its index row and links) that `other` has and we lack.
    Bytes are re-hashed on the way in: a corrupt source object is refused, not spread."""
    rows = [(b3.hex(), sha.hex(), size, kind) for b3, sha, size, kind in other.db.execute(
        "SELECT b3, sha, size, (SELECT kind FROM obj_kind k WHERE k.id=o.id ORDER BY kind='blob', added, kind "
        "LIMIT 1) FROM obj o")]
    other_kinds = [(b3.hex(), kind) for b3, kind in other.db.execute(
        "SELECT o.b3, k.kind FROM obj_kind k JOIN obj o ON o.id=k.id")]
    links = [(p.hex(), c.hex()) for p, c in other.db.execute(
        "SELECT p.b3, c.b3 FROM link l JOIN obj p ON p.id=l.parent JOIN obj c ON c.id=l.child")]
    children: dict[str, list[str]] = {}
    for parent, child in links:
        children.setdefault(parent, []).append(child)
    copied = 0
    with store.batch() as b:
        for b3, sha, size, kind in rows:
            if b.known(b3):
                continue
            with other.open(b3) as src:
                d = b.stage_verified(src, b3, kind, tuple(children.get(b3, ())), Digest(sha, b3, size))
            if d.blake3 != b3:
                raise VerificationFailed(f"{other.root}: object {b3} is corrupt; not merged")
            copied += 1
        b.extra.extend((b3, kind, ()) for b3, kind in other_kinds)
    return copied
