"""Issue #29 benchmark: the log published as C2SP tlog-tiles, and audited.

- publish a log of 1,000,000 leaves from scratch;
- publish incrementally after 1,000 more leaves, against those leaves' own tiles: the same 1,000 leaves
  as a log of their own, published from scratch by the same code (goal <= 2x: the cost follows the new
  leaves, not the log's size); and against the floor, the same files written with their bytes in hand
  (temp file, rename, one syncfs). Each side is timed after os.sync();
- audit the 1M-leaf folder (signature, every bundle and tile, the root) against recomputing the tree
  from the entries alone (read the bundles, hash the leaves, fold the root): goal <= 2x.
Both sides of each ratio run in the same process, alternating, and the median ratio is reported.

    .venv/bin/python bench/bench_tiles.py [--leaves 1000000] [--rounds 25]
"""

from __future__ import annotations

import argparse
import hashlib
import os
import shutil
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey  # noqa: E402

from provenance.core import signing  # noqa: E402
from provenance.log import logbook, tiles, translog  # noqa: E402
from provenance.log.monitor import audit  # noqa: E402
from provenance.log.publish import publish  # noqa: E402
from provenance.store.durable import syncfs  # noqa: E402
from provenance.store.objects import Store  # noqa: E402

OUT = Path(os.environ.get("BENCH_OUT", Path(__file__).parent / "out")) / "tiles"


def entries(a: int, b: int) -> list[bytes]:
    return [translog.entry_bytes("record", hashlib.sha256(b"%d" % i).hexdigest(), hashlib.sha256(b"b%d" % i).hexdigest())
            for i in range(a, b)]


def write_files(root: Path, files: dict[str, bytes]) -> None:
    """The baseline writer: what publishing those tiles costs at least, the bytes in hand."""
    for rel, data in files.items():
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.parent / f".{path.name}.tmp"
        with open(tmp, "wb") as f:
            f.write(data)
        os.replace(tmp, path)
    fd = os.open(root, os.O_RDONLY | os.O_DIRECTORY)
    try:
        syncfs(fd)
    finally:
        os.close(fd)


def recompute_root(folder: Path, size: int) -> bytes:
    """The baseline audit: the root from the entry bundles alone (no tiles, no signature, no state)."""
    sha = hashlib.sha256
    level = []
    for n in range((size + 255) // 256):
        width = min(256, size - n * 256)
        data = (folder / tiles.tile_path(tiles.ENTRIES, n, width)).read_bytes()
        i = 0
        while i < len(data):
            ln = int.from_bytes(data[i:i + 2], "big")
            level.append(sha(b"\x00" + data[i + 2:i + 2 + ln]).digest())
            i += 2 + ln
    stack = []  # complete subtrees, level by level, then folded from the right
    while len(level) > 1:
        if len(level) & 1:
            stack.append(level.pop())
        level = [sha(b"\x01" + level[i] + level[i + 1]).digest() for i in range(0, len(level), 2)]
    r = None
    for x in stack + level:  # MTH folds from the right: the lowest lone node is the rightmost
        r = x if r is None else sha(b"\x01" + x + r).digest()
    return r


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--leaves", type=int, default=1_000_000)
    ap.add_argument("--more", type=int, default=1_000)
    ap.add_argument("--rounds", type=int, default=25)
    a = ap.parse_args()
    shutil.rmtree(OUT, ignore_errors=True)
    store = Store(OUT / "store", create=True)
    log = translog.open_log(store)
    key = Ed25519PrivateKey.generate()
    t0 = time.perf_counter()
    for i in range(0, a.leaves, 100_000):
        log.append_many(entries(i, min(a.leaves, i + 100_000)))
    logbook.checkpoint(store, key)
    print(f"log of {log.size():,} leaves built in {time.perf_counter() - t0:.1f} s")

    pub = OUT / "pub"
    os.sync()
    t0 = time.perf_counter()
    r = publish(store, str(pub))
    scratch = time.perf_counter() - t0
    print(f"publish from scratch: {scratch:.2f} s, {r['files']:,} files ({scratch / a.leaves * 1e6:.2f} us a leaf)")

    ratios, scaling = [], []
    for k in range(a.rounds):
        old = log.size()
        log.append_many(entries(old, old + a.more))
        logbook.checkpoint(store, key)
        os.sync()  # both sides start from a clean page cache: neither pays for the store's own writes
        t0 = time.perf_counter()
        r = publish(store, str(pub))
        inc = time.perf_counter() - t0
        new = log.size()
        own = {tiles.tile_path(level, n, w): (pub / tiles.tile_path(level, n, w)).read_bytes()
               for level, n, w in tiles.tiles_between(old, new)}
        own.update({tiles.tile_path(tiles.ENTRIES, n, w): (pub / tiles.tile_path(tiles.ENTRIES, n, w)).read_bytes()
                    for level, n, w in tiles.tiles_between(old, new) if level == 0})
        assert len(own) == r["files"]
        base_dir = OUT / f"base-{k}"
        os.sync()
        t0 = time.perf_counter()
        write_files(base_dir, own)
        base = time.perf_counter() - t0
        # the same leaves as a log of their own, published from scratch by the same code: what they cost alone
        alone = Store(OUT / f"alone-{k}", create=True)
        translog.open_log(alone).append_many(entries(old, new))
        logbook.checkpoint(alone, key)
        os.sync()
        t0 = time.perf_counter()
        publish(alone, str(OUT / f"alone-pub-{k}"))
        solo = time.perf_counter() - t0
        alone.close()
        ratios.append(inc / base)
        scaling.append(inc / solo)
        print(f"  round {k}: +{a.more} leaves: publish {inc * 1e3:.1f} ms; their {len(own)} files written with the "
              f"bytes in hand {base * 1e3:.1f} ms ({inc / base:.2f}x); those leaves published as a log of their "
              f"own {solo * 1e3:.1f} ms ({inc / solo:.2f}x)")
    print(f"incremental publish onto {a.leaves:,} leaves vs the same {a.more:,} leaves published as a log of their "
          f"own: median {statistics.median(scaling):.2f}x (goal <= 2: its cost follows the new leaves)")
    print(f"incremental publish vs writing its files with the bytes in hand (the floor): median "
          f"{statistics.median(ratios):.2f}x")

    size = log.size()
    trusted = {signing.keyid(key.public_key()): key.public_key()}
    ratios = []
    for k in range(max(3, a.rounds // 2)):
        t0 = time.perf_counter()
        rep = audit(str(pub), trusted)
        t_audit = time.perf_counter() - t0
        assert rep["ok"] and rep["entries_read"] == size, rep["problems"]
        t0 = time.perf_counter()
        root = recompute_root(pub, size)
        t_base = time.perf_counter() - t0
        assert root == log.root(size)
        ratios.append(t_audit / t_base)
        print(f"  round {k}: audit {t_audit:.2f} s, recompute from entries {t_base:.2f} s: {t_audit / t_base:.2f}x")
    print(f"audit of {size:,} leaves vs recomputing the tree from the entries alone: median "
          f"{statistics.median(ratios):.2f}x (goal <= 2)")
    store.close()


if __name__ == "__main__":
    main()
