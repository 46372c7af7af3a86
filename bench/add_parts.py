"""Issue 15: where the cost of adding 10k objects into a large store goes, part by part. The whole
`prov add` is timed by bench/scale.py; this times its two parts that grow with the store, each
alone, into a store of n objects and into an empty one, alternately, in the same run:

- index: the add's SQLite work (10k lookups by BLAKE3, the rows inserted in one transaction, the
  commit and the checkpoint at close), on the store's own index (Store: its schema and pragmas);
- files: staging 10k small files, syncfs, renaming them into the objects/xx/ fan-out, syncfs,
  as Batch._commit does.

    .venv/bin/python bench/add_parts.py [--n 1000000] [--rounds 3]

The store of n objects is built once and kept under bench/out/add_parts/ for the next run.
"""

from __future__ import annotations

import argparse
import hashlib
import os
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from common import OUT, fresh  # noqa: E402

from provenance.store.durable import syncfs as _syncfs  # noqa: E402
from provenance.store.objects import Store  # noqa: E402

WORK = OUT / "add_parts"
K = 10_000


def _rows(tag: bytes, n: int, start: int = 0):
    for i in range(start, start + n):
        b3 = hashlib.blake2b(tag + b"%d" % i, digest_size=32).digest()
        yield b3, hashlib.sha256(b3).digest(), 136, 0


def build_index(root: Path, n: int) -> None:
    s = Store(root, create=True)
    for start in range(0, n, 100_000):
        with s.transaction() as db:
            db.executemany("INSERT INTO obj(b3, sha, size, added) VALUES(?,?,?,?)",
                           _rows(b"base", min(100_000, n - start), start))
    s.db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    s.close()


def time_index(root: Path, tag: bytes) -> float:
    """What an add of 10k new objects asks of the index, from open to close."""
    rows = list(_rows(tag, K))
    t = time.perf_counter()
    s = Store(root)
    for b3, *_ in rows:
        s.db.execute("SELECT id FROM obj WHERE b3=?", (b3,)).fetchone()
    with s.transaction() as db:
        db.executemany("INSERT INTO obj(b3, sha, size, added) VALUES(?,?,?,?)", rows)
    s.close()
    return time.perf_counter() - t


def build_files(root: Path, n: int) -> None:
    objects = root / "objects"
    for i in range(256):
        (objects / f"{i:02x}").mkdir(parents=True, exist_ok=True)
    for i in range(n):
        name = hashlib.blake2b(b"file %d" % i, digest_size=32).hexdigest()
        fd = os.open(os.path.join(objects, name[:2], name), os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o444)
        os.write(fd, b"x" * 136)
        os.close(fd)


def time_files(root: Path, tag: bytes) -> float:
    objects, tmp = root / "objects", root / "tmp"
    tmp.mkdir(parents=True, exist_ok=True)
    for i in range(256):
        (objects / f"{i:02x}").mkdir(parents=True, exist_ok=True)
    t = time.perf_counter()
    staged = []
    for i in range(K):
        name = hashlib.blake2b(tag + b"%d" % i, digest_size=32).hexdigest()
        path = os.path.join(tmp, f".tmp-{name}")
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o444)
        os.write(fd, b"y" * 136)
        os.close(fd)
        staged.append((path, name))
    for d in (tmp, objects):
        fd = os.open(d, os.O_RDONLY | os.O_DIRECTORY)
        _syncfs(fd)
        os.close(fd)
        if d == tmp:
            for path, name in staged:
                os.rename(path, os.path.join(objects, name[:2], name))
    return time.perf_counter() - t


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--n", type=int, default=1_000_000)
    ap.add_argument("--rounds", type=int, default=3)
    a = ap.parse_args()
    WORK.mkdir(parents=True, exist_ok=True)
    big, t0 = WORK / f"big-{a.n}", time.perf_counter()
    if not (big / "built").exists():  # kept between runs: deleting a million files makes the next
        fresh(big)                    # minutes' file creation cost several times its system time
        build_index(big, a.n)
        build_files(big, a.n)
        (big / "built").touch()
        print(f"built a store of {a.n:,} index rows and files in {time.perf_counter() - t0:.0f} s", flush=True)
    parts = {"index": time_index, "files": time_files}
    got: dict[str, dict[str, list[float]]] = {p: {"big": [], "empty": []} for p in parts}
    stamp = os.urandom(4).hex()  # new empty stores each run; the old ones are left for `rm -r bench/out`
    empties = [WORK / f"empty-{stamp}-{k}" for k in range(a.rounds)]
    for k in range(a.rounds):  # each round into an empty store of its own, made first
        Store(empties[k], create=True).close()
        for p, fn in parts.items():
            for which, root in (("big", big), ("empty", empties[k])):
                os.sync()  # untimed: a syncfs inside a part then flushes only what that part wrote
                got[p][which].append(fn(root, os.urandom(8)))
    print(f"\n| part of an add of {K:,} objects | into {a.n:,} (s) | into an empty store (s) | ratio | extra (s) |")
    print("|---|---|---|---|---|")
    for p in parts:
        b, e = statistics.median(got[p]["big"]), statistics.median(got[p]["empty"])
        each = {k: [round(x, 3) for x in v] for k, v in got[p].items()}
        print(f"| {p} | {b:.3f} {each['big']} | {e:.3f} {each['empty']} | {b / e:.2f} | {b - e:+.3f} |")


if __name__ == "__main__":
    main()
