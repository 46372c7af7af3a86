"""The log as C2SP tlog-tiles (https://c2sp.org/tlog-tiles), pure: paths, which tiles a tree has,
entry bundles, and the tree recomputed from bundles and tiles. Writing them is `log.publish`;
fetching and auditing them is `log.monitor`.

A tile at level L holds up to 256 consecutive Merkle tree hashes at height 8L (level 0: leaf hashes);
its path is tile/<L>/<N>, N in 3-digit elements (x001/x234/067), with .p/<W> for a partial tile of
width W. The entry bundle tile/entries/<N>[.p/<W>] holds the entries whose leaf hashes are level-0
tile N, each as a big-endian uint16 length and the entry's bytes."""

from __future__ import annotations

import hashlib

from provenance.log.proofs import EMPTY_ROOT, HASH_LEN, node_hash

HEIGHT = 8
WIDTH = 1 << HEIGHT
ENTRIES = "entries"
MAX_ENTRY = 0xFFFF


def index_path(n: int) -> str:
    """N as zero-padded 3-digit path elements, all but the last prefixed with x: 1234067 -> x001/x234/067."""
    parts = [f"{n % 1000:03d}"]
    n //= 1000
    while n:
        parts.append(f"x{n % 1000:03d}")
        n //= 1000
    return "/".join(reversed(parts))


def tile_path(level: int | str, n: int, width: int = WIDTH) -> str:
    """tile/<L>/<N>[.p/<W>]; level ENTRIES names the entry bundle."""
    p = f"tile/{level}/{index_path(n)}"
    return p if width == WIDTH else f"{p}.p/{width}"


def hash_tile_width(rel: str) -> int | None:
    """W of a hash tile's path tile/<L>/<N>[.p/<W>] (256 for a full one); None for any other path, an entry
    bundle's included. Exact: the path tile_path would write, and nothing else."""
    parts = rel.split("/")
    if len(parts) < 3 or parts[0] != "tile" or not (parts[1].isascii() and parts[1].isdigit()):
        return None
    width = WIDTH
    if len(parts) >= 4 and parts[-2].endswith(".p"):
        w = parts[-1]
        if not (w.isascii() and w.isdigit()) or not 1 <= int(w) < WIDTH or str(int(w)) != w:
            return None
        width, parts = int(w), parts[:-2] + [parts[-2][:-2]]
    digits = parts[2:]
    if not all(len(d) == 4 and d[0] == "x" and d[1:].isascii() and d[1:].isdigit() for d in digits[:-1]) \
            or not (len(digits[-1]) == 3 and digits[-1].isascii() and digits[-1].isdigit()):
        return None
    n = int("".join(d[-3:] for d in digits))
    return width if tile_path(int(parts[1]), n, width) == rel else None


def tiles_between(old: int, new: int) -> list[tuple[int, int, int]]:
    """(level, N, width) of every hash tile a tree of size `new` has that one of size `old` lacks (new tiles,
    and tiles grown wider); tiles_between(0, s) is every tile of size s. Entry bundles follow level 0."""
    out = []
    level = 0
    while new >> (HEIGHT * level):
        lo, hi = old >> (HEIGHT * level), new >> (HEIGHT * level)  # complete nodes at height 8L
        if hi > lo:
            out += [(level, n, min(WIDTH, hi - n * WIDTH)) for n in range(lo >> HEIGHT, ((hi - 1) >> HEIGHT) + 1)]
        level += 1
    return out


def bundle(entries) -> bytes:
    out = []
    for e in entries:
        if len(e) > MAX_ENTRY:
            raise ValueError(f"log entry of {len(e)} bytes: an entry bundle holds at most {MAX_ENTRY}")
        out.append(len(e).to_bytes(2, "big"))
        out.append(e)
    return b"".join(out)


def unbundle(data: bytes, width: int) -> list[bytes]:
    """Exactly `width` entries and nothing after them; ValueError otherwise."""
    out, i, n = [], 0, len(data)
    while i < n:
        if i + 2 > n:
            raise ValueError("truncated length prefix")
        ln = (data[i] << 8) | data[i + 1]
        if i + 2 + ln > n:
            raise ValueError("truncated entry")
        out.append(data[i + 2:i + 2 + ln])
        i += 2 + ln
    if len(out) != width:
        raise ValueError(f"{len(out)} entries where the tree has {width}")
    return out


def root_of(size: int, node) -> bytes:
    """The root of a tree of `size` from its complete subtrees: node(height, index) for each set bit of
    the size, folded from the right (RFC 6962's MTH, as the binary decomposition of the size)."""
    if size == 0:
        return EMPTY_ROOT
    r = None
    for h in range(size.bit_length()):
        if size >> h & 1:
            x = node(h, (size >> h) - 1)
            r = x if r is None else node_hash(x, r)
    return r


def roots_needed(size: int) -> set[tuple[int, int]]:
    return {(h, (size >> h) - 1) for h in range(size.bit_length()) if size >> h & 1}


class Recomputed:
    """What recompute() found: problems (each naming its tile), the roots asked for, leaves read."""

    def __init__(self) -> None:
        self.problems: list[str] = []
        self.roots: dict[int, bytes] = {}
        self.leaves = 0


def recompute(size: int, fetch, sizes=(), progress=None) -> Recomputed:
    """Recompute the tree of `size` from its entry bundles, and check every hash tile against it.

    `fetch(path)` returns a tile's bytes or None. The roots of `size` and of each of `sizes` (all at
    most `size`) come back in `.roots`, made from the leaves alone. Tier by tier: the entries give
    level 0; each full tile's 256 hashes give one hash of the tier above; the nodes the roots need are
    kept as they pass, so memory is one tile and the tier above."""
    out = Recomputed()
    want = set()
    for s in (size, *sizes):
        want |= roots_needed(s)
    kept: dict[tuple[int, int], bytes] = {}
    sha = hashlib.sha256  # leaf_hash and node_hash written out: two million calls in an audit of 1M leaves
    below: list[bytes] | None = None  # the tier's hashes, from the tier under it (None at level 0)
    level = 0
    while size >> (HEIGHT * level):
        count = size >> (HEIGHT * level)
        above: list[bytes] = []
        for n in range((count + WIDTH - 1) >> HEIGHT):
            width = min(WIDTH, count - n * WIDTH)
            if below is None:
                data = fetch(tile_path(ENTRIES, n, width))
                if data is None:
                    out.problems.append(f"{tile_path(ENTRIES, n, width)}: missing")
                    return out
                try:
                    hashes = [sha(b"\x00" + e).digest() for e in unbundle(data, width)]
                except ValueError as e:
                    out.problems.append(f"{tile_path(ENTRIES, n, width)}: {e}")
                    return out
                out.leaves += width
                if progress:
                    progress(width)
            else:
                hashes = below[n * WIDTH:n * WIDTH + width]
            path = tile_path(level, n, width)
            tile = fetch(path)
            if tile is None:
                out.problems.append(f"{path}: missing")
                return out
            if len(tile) != width * HASH_LEN or tile != b"".join(hashes):
                out.problems.append(f"{path}: does not match the leaf hashes of {tile_path(ENTRIES, n, width)}"
                                    if below is None else f"{path}: does not match the hashes recomputed "
                                                          "from the entries")
                return out
            h0 = HEIGHT * level
            for k, x in enumerate(hashes):
                if (h0, n * WIDTH + k) in want:
                    kept[(h0, n * WIDTH + k)] = x
            cur = hashes
            for h in range(h0 + 1, h0 + HEIGHT + 1):  # the heights inside this tile
                if len(cur) < 2:
                    break
                cur = [sha(b"\x01" + cur[i] + cur[i + 1]).digest() for i in range(0, len(cur) - 1, 2)]
                base = (n * WIDTH) >> (h - h0)
                for k, x in enumerate(cur):
                    if (h, base + k) in want:
                        kept[(h, base + k)] = x
            if width == WIDTH:
                above.append(cur[0])
        below = above
        level += 1
    for s in (size, *sizes):
        out.roots[s] = root_of(s, lambda h, i: kept[(h, i)])
    return out
