"""RFC 6962 / RFC 9162 Merkle proofs, pure: leaf and node hashes, the logged entry's bytes, and the
verification of inclusion and consistency proofs (sections 2.1.3.2 and 2.1.4.2, step by step).
No store, no SQLite: a verifier imports this and nothing else of the log."""

from __future__ import annotations

import hashlib

from provenance.core.errors import VerificationFailed

HASH_LEN = 32


class LogProofError(VerificationFailed):
    """Any failure of a log proof or checkpoint, including malformed input. The one exception
    `verify_inclusion` and `verify_consistency` raise."""


def leaf_hash(data: bytes) -> bytes:
    return hashlib.sha256(b"\x00" + data).digest()


def node_hash(left: bytes, right: bytes) -> bytes:
    return hashlib.sha256(b"\x01" + left + right).digest()


EMPTY_ROOT = hashlib.sha256(b"").digest()


def largest_pow2_below(n: int) -> int:
    """k with k < n <= 2k (n > 1)."""
    return 1 << ((n - 1).bit_length() - 1)


def _check_hashes(what: str, *hashes) -> None:
    for h in hashes:
        if not isinstance(h, (bytes, bytearray)) or len(h) != HASH_LEN:
            raise LogProofError(f"{what}: hash of wrong type or length")


# -- pure verification (RFC 9162) ---------------------------------------------------------------

def verify_inclusion(leaf_hash: bytes, index: int, size: int, proof: list[bytes], root: bytes) -> None:
    """RFC 9162 2.1.3.2. Returns None when `leaf_hash` is leaf `index` of the tree of `size` with `root`."""
    _check_hashes("inclusion", leaf_hash, root, *proof)
    if not isinstance(index, int) or not isinstance(size, int) or index < 0 or size < 0:
        raise LogProofError("inclusion: index and size must be non-negative integers")
    # 1. leaf_index must be below tree_size
    if index >= size:
        raise LogProofError(f"inclusion: index {index} not below size {size}")
    # 2. fn = leaf_index, sn = tree_size - 1;  3. r = leaf_hash
    fn, sn, r = index, size - 1, bytes(leaf_hash)
    # 4. for each p in inclusion_path
    for p in proof:
        # a. if sn is 0, stop and fail
        if sn == 0:
            raise LogProofError("inclusion: proof too long")
        # b. if LSB(fn) is set, or fn equals sn
        if fn & 1 or fn == sn:
            r = node_hash(p, r)
            # if LSB(fn) is not set, right-shift fn and sn equally until LSB(fn) is set or fn is 0
            if not fn & 1:
                while fn and not fn & 1:
                    fn >>= 1
                    sn >>= 1
        else:
            r = node_hash(r, p)
        # c. right-shift both fn and sn one time
        fn >>= 1
        sn >>= 1
    # 5. sn must be 0 and r must equal the root
    if sn != 0:
        raise LogProofError("inclusion: proof too short")
    if r != root:
        raise LogProofError("inclusion: computed root does not match")


def verify_consistency(size1: int, size2: int, proof: list[bytes], root1: bytes, root2: bytes) -> None:
    """RFC 9162 2.1.4.2. Returns None when the tree of size2/root2 extends the tree of size1/root1."""
    _check_hashes("consistency", root1, root2, *proof)
    if not isinstance(size1, int) or not isinstance(size2, int) or size1 < 0 or size2 < 0:
        raise LogProofError("consistency: sizes must be non-negative integers")
    if size2 < size1:
        raise LogProofError(f"consistency: size2 {size2} below size1 {size1}")
    if size1 == size2:  # nothing to prove beyond equality
        if proof:
            raise LogProofError("consistency: proof must be empty for equal sizes")
        if root1 != root2:
            raise LogProofError("consistency: equal sizes with different roots")
        return
    if size1 == 0:  # the empty tree is a prefix of every tree
        if proof:
            raise LogProofError("consistency: proof must be empty from size 0")
        return
    # 1. an empty consistency_path fails;  2. if first is an exact power of 2, prepend first_hash
    path = list(proof)
    if size1 & (size1 - 1) == 0:
        path.insert(0, bytes(root1))
    if not path:
        raise LogProofError("consistency: empty proof")
    # 3. fn = first - 1, sn = second - 1
    fn, sn = size1 - 1, size2 - 1
    # 4. if LSB(fn) is set, right-shift fn and sn equally until LSB(fn) is not set
    while fn & 1:
        fn >>= 1
        sn >>= 1
    # 5. fr = sr = first element of the path
    fr = sr = path[0]
    # 6. for each subsequent c
    for c in path[1:]:
        # a. if sn is 0, stop and fail
        if sn == 0:
            raise LogProofError("consistency: proof too long")
        # b. if LSB(fn) is set, or fn equals sn
        if fn & 1 or fn == sn:
            fr = node_hash(c, fr)
            sr = node_hash(c, sr)
            # if LSB(fn) is not set, right-shift fn and sn equally until either LSB(fn) is set or fn is 0
            if not fn & 1:
                while fn and not fn & 1:
                    fn >>= 1
                    sn >>= 1
        else:
            sr = node_hash(sr, c)
        # c. right-shift both fn and sn one time
        fn >>= 1
        sn >>= 1
    # 7. fr == first_hash, sr == second_hash and sn == 0
    if sn != 0:
        raise LogProofError("consistency: proof too short")
    if fr != root1:
        raise LogProofError("consistency: old root does not match")
    if sr != root2:
        raise LogProofError("consistency: new root does not match")


# -- reference definitions (RFC 6962 2.1), over an in-memory list of leaf hashes ------------------

def mth(leaves: list[bytes]) -> bytes:
    n = len(leaves)
    if n == 0:
        return EMPTY_ROOT
    if n == 1:
        return leaves[0]
    k = largest_pow2_below(n)
    return node_hash(mth(leaves[:k]), mth(leaves[k:]))


def entry_bytes(kind: str, sha256: str, blake3: str) -> bytes:
    """The logged leaf data: canonical JSON naming what is logged."""
    from provenance.core import canonical
    return canonical.dumps({"kind": kind, "sha256": sha256, "blake3": blake3})
