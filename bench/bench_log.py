"""Issue #5 benchmark: append 1,000,000 leaves to the persistent log, against the lower bound of
2,000,000 SHA-256 of 64 bytes in the same run; inclusion proof generation and verification at
that size (median), and proof length.

    .venv/bin/python bench/bench_log.py [--leaves 1000000]
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
from provenance.log import translog  # noqa: E402
from provenance.store.objects import Store  # noqa: E402

OUT = Path(os.environ.get("BENCH_OUT", Path(__file__).parent / "out")) / "log"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--leaves", type=int, default=1_000_000)
    ap.add_argument("--batch", type=int, default=100_000)
    a = ap.parse_args()
    shutil.rmtree(OUT, ignore_errors=True)
    store = Store(OUT / "store", create=True)
    log = translog.open_log(store)
    entries = [translog.entry_bytes("record", hashlib.sha256(b"%d" % i).hexdigest(),
                                    hashlib.sha256(b"b%d" % i).hexdigest()) for i in range(a.leaves)]

    block = os.urandom(64)
    t0 = time.perf_counter()
    sha = hashlib.sha256
    for _ in range(2 * a.leaves):
        sha(block).digest()
    bound = time.perf_counter() - t0

    t0 = time.perf_counter()
    for i in range(0, a.leaves, a.batch):
        log.append_many(entries[i:i + a.batch])
    append = time.perf_counter() - t0

    n = log.size()
    root = log.root(n)
    idxs = [(i * 7919) % n for i in range(200)]
    gen, ver, lengths = [], [], []
    for i in idxs:
        t0 = time.perf_counter()
        p = log.inclusion_proof(i, n)
        gen.append(time.perf_counter() - t0)
        leaf = translog.leaf_hash(entries[i])
        t0 = time.perf_counter()
        translog.verify_inclusion(leaf, i, n, p, root)
        ver.append(time.perf_counter() - t0)
        lengths.append(len(p))
    print(f"\n## evidence log, {n:,} leaves (batches of {a.batch:,})")
    print(f"  append all            {append:8.2f} s")
    print(f"  2x{a.leaves:,} SHA-256(64 B) {bound:8.2f} s   (lower bound)")
    print(f"  ratio append / bound  {append / bound:8.2f}")
    print(f"  inclusion proof gen   median {1e3 * statistics.median(gen):.3f} ms")
    print(f"  inclusion proof verify median {1e3 * statistics.median(ver):.3f} ms")
    print(f"  proof length          max {max(lengths)} hashes")
    print(f"  log verify (recompute) problems: {len(log.recompute())}")


if __name__ == "__main__":
    main()
