"""Issue 15: a lab of a million objects and ten thousand runs. Builds stores of 10k, 100k and 1M small
objects (straight through the store's batch API) and labs of 1k and 10k runs, times every operation
of the issue's target table against its named peer in the same run, and prints the table with
growth exponents (time ~ n^k between the sizes measured).

    .venv/bin/python bench/scale.py [--sizes 10000,100000,1000000] [--runs 1000,10000] [--rounds 3]
    .venv/bin/python bench/scale.py --quick      # 10k objects, 1k runs, one round: a smoke run
"""

from __future__ import annotations

import argparse
import json
import math
import os
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from common import LAST_CPU, OUT, PROV, fresh, run  # noqa: E402

from provenance.core import canonical
from provenance.lab import ledger
from provenance.log import logbook
from provenance.log import translog  # noqa: E402
from provenance.store.objects import Store  # noqa: E402

WORK = OUT / "scale"
PAD = os.urandom(96)  # ~136-byte objects, as in the measurements


def env(store: Path) -> dict:
    return {**os.environ, "PROV_STORE": str(store)}


def timed(cmd, store: Path | None = None, rounds: int = 3, setup=None, shell=False) -> tuple[float, float]:
    """(median seconds, peak RSS MiB) of a whole command."""
    walls, rss = [], []
    for _ in range(rounds):
        if setup:
            setup()
        w, r = run(cmd if not shell else cmd, None, env=env(store) if store else None)
        walls.append(w)
        rss.append(r)
    return statistics.median(walls), max(rss)


def build_store(root: Path, n: int, chunk: int = 50_000) -> float:
    t0 = time.perf_counter()
    s = Store(root, create=True)
    for start in range(0, n, chunk):
        with s.batch() as b:
            for i in range(start, min(n, start + chunk)):
                b.put_bytes(b"scale object %d " % i + PAD, "blob")
    s.db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    s.close()
    return time.perf_counter() - t0


def build_log(root: Path, n: int, chunk: int = 100_000) -> None:
    s = Store(root)
    for start in range(0, n, chunk):
        translog.open_log(s).append_many([translog.entry_bytes("blob", f"{i:064x}", f"{i:064x}")
                           for i in range(start, min(n, start + chunk))])
    s.close()


def small_tree(path: Path, n: int, tag: str) -> Path:
    fresh(path)
    for i in range(n):
        d = path / f"d{i % 100:02d}"
        if i < 100:
            d.mkdir()
        (d / f"f{i}").write_bytes(b"%s %d " % (tag.encode(), i) + PAD)
    return path


def record_bytes(i: int, score: float, grade: str) -> bytes:
    return canonical.dumps({
        "schema": "comma-lab/eval-record/v1", "profile": "comma-official-v1", "source": "replay",
        "archive": {"sha256": f"{i:064x}", "size": 100_000 + i},
        "result": {"samples": 600, "posenet": 0.01, "segnet": 0.02, "rate": 0.05 + i * 1e-6,
                   "canonical_score": score},
        "grade": grade, "axis": "scale bench", "allowed_use": "bench", "label": f"run {i}",
        "created_at": "2026-01-01T00:00:00Z"})


def build_lab(root: Path, n: int) -> list[str]:
    s = Store(root, create=True)
    shas = []
    with s.batch() as b:
        for i in range(n):
            grade = "A++" if i % 3 == 0 else ("A" if i % 3 == 1 else "B")
            shas.append(b.put_bytes(record_bytes(i, 3.0 - i / n + (i % 7) * 0.01, grade), "record").sha256)
    for i in range(0, n, max(1, n // 50)):  # a few annotations and verdicts, as a lab has
        ledger.annotate(s, shas[i], f"label {i}", "codec" if i % 2 else "model", None)
    best = min(range(0, n, 3), key=lambda i: 3.0 - i / n + (i % 7) * 0.01)
    ledger.verdict(s, shas[best], "promote", "best A++")
    ledger.verdict(s, shas[1], "reject", "not better")
    s.close()
    return shas


def exponent(a: tuple[int, float], b: tuple[int, float]) -> float:
    return math.log(b[1] / a[1]) / math.log(b[0] / a[0]) if a[1] > 0 and b[1] > 0 else float("nan")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--sizes", default="10000,100000,1000000")
    ap.add_argument("--runs", default="1000,10000")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--skip-readd", action="store_true")
    a = ap.parse_args()
    sizes = [10_000] if a.quick else [int(x) for x in a.sizes.split(",") if int(x)]
    labs = [1_000] if a.quick else [int(x) for x in a.runs.split(",") if int(x)]
    rounds = 1 if a.quick else a.rounds
    # Nothing is deleted while anything is timed: on ext4 without a journal (this VM) the kernel skips
    # recently freed inodes when it allocates one, so files created for a while after many were
    # deleted cost 5-20x in system time (a site build's system time went from 1.4 s to 3-6 s). The
    # bench cleans up after itself; what an interrupted run left is deleted first, then a pause.
    stale = _clean()
    if stale:
        time.sleep(120)
    WORK.mkdir(parents=True, exist_ok=True)
    rows: list[tuple[str, str, str]] = []  # (operation, measured, target)
    res: dict = {"store": {}, "lab": {}}

    help_s, _ = timed([PROV, "--help"], rounds=max(3, rounds))
    res["prov --help"] = help_s

    # -- stores of n objects ---------------------------------------------------------------
    for n in sizes:
        root = WORK / f"store-{n}"
        build_s = build_store(root, n)
        idx = root / "index.sqlite"  # the object index alone (the log of n leaves is added next)
        r = res["store"][n] = {"build_s": build_s, "index_bytes_per_object": idx.stat().st_size / n}
        build_log(root, n)
        adds, adds_empty = [], []
        trees = [small_tree(WORK / f"add10k-{n}-{k}{e}", 10_000, f"{n}-{k}{e}-{os.urandom(4).hex()}")
                 for k in range(rounds) for e in ("", "e")]  # made first: no deletion between timed adds
        for k in range(rounds):  # 10k new objects into this store, and into an empty one, alternately
            # untimed sync first: an add's syncfs then flushes what it wrote, not the trees made above
            adds.append((run([PROV, "add", str(trees[2 * k])], os.sync, env=env(root))[0], *LAST_CPU))
            adds_empty.append((run([PROV, "add", str(trees[2 * k + 1])], os.sync,
                                   env=env(WORK / f"empty-{n}-{k}"))[0], *LAST_CPU))
        r["add10k_s"], r["add10k_empty_s"] = (statistics.median(a[0] for a in adds),
                                              statistics.median(a[0] for a in adds_empty))
        r["add10k_runs"] = [[round(x, 2) for x in a] for a in adds]  # (wall, user, sys) of each
        r["add10k_empty_runs"] = [[round(x, 2) for x in a] for a in adds_empty]
        r["fsck_s"], r["fsck_rss"] = timed([PROV, "fsck", "--json"], root, rounds)
        r["b3sum_s"], _ = timed(f"find {root / 'objects'} -type f -print0 | xargs -0 b3sum > /dev/null",
                                rounds=rounds, shell=True)
        r["gc_s"], r["gc_rss"] = timed([PROV, "gc", "--json"], root, rounds)
        r["logverify_s"], r["logverify_rss"] = timed([PROV, "log", "verify", "--json"], root, rounds)
        print(f"store {n}: {json.dumps(r)}", flush=True)

    # -- re-add an unchanged tree of 20k 4 KiB files against git add -A ----------------------
    if not a.skip_readd:
        tree = fresh(WORK / "readd")
        for i in range(20_000):
            d = tree / f"d{i % 200:03d}"
            d.mkdir(exist_ok=True)
            (d / f"f{i}").write_bytes(os.urandom(4096))
        gitdir = WORK / "readd.git"  # outside the tree: prov adds the tree, git tracks it
        shutil.rmtree(gitdir, ignore_errors=True)
        git = ["git", f"--git-dir={gitdir}", f"--work-tree={tree}"]
        subprocess.run(["git", "init", "-q", "--bare", str(gitdir)], check=True)
        subprocess.run([*git, "add", "-A"], check=True)
        rstore = WORK / "readd-store"
        shutil.rmtree(rstore, ignore_errors=True)
        time.sleep(0.1)  # out of the stat cache's racy window
        run([PROV, "add", str(tree)], None, env=env(rstore))
        prov_s, _ = timed([PROV, "add", str(tree)], rstore, max(3, rounds))
        git_s, _ = timed([*git, "add", "-A"], rounds=max(3, rounds))
        wal = rstore / "index.sqlite-wal"
        before = wal.stat().st_size if wal.exists() else 0
        run([PROV, "add", str(tree)], None, env=env(rstore))
        res["readd"] = {"prov_s": prov_s, "git_s": git_s, "wal_growth_bytes":
                        (wal.stat().st_size if wal.exists() else 0) - before}

    # -- labs of n runs -----------------------------------------------------------------------
    for n in labs:
        root = WORK / f"lab-{n}"
        shutil.rmtree(root, ignore_errors=True)
        t0 = time.perf_counter()
        shas = build_lab(root, n)
        r = res["lab"][n] = {"build_s": time.perf_counter() - t0}
        run([PROV, "frontier"], None, env=env(root))  # the ledger rows catch up once
        r["frontier_s"], _ = timed([PROV, "frontier"], root, max(3, rounds))
        it = iter(range(10**6))
        r["annotate_s"] = statistics.median(
            run([PROV, "ledger", "annotate", shas[(next(it) * 7919) % n], "--label", "bench"], None,
                env=env(root))[0] for _ in range(max(3, rounds)))
        r["reject_s"] = statistics.median(
            run([PROV, "ledger", "reject", shas[(next(it) * 104729) % n], "--reason", "bench"], None,
                env=env(root))[0] for _ in range(max(3, rounds)))
        r["show_limit_s"], _ = timed([PROV, "ledger", "show", "--limit", "20"], root, max(3, rounds))
        # the first build, `rounds` times: each of a copy of the lab as it stands (no view cached yet)
        # into a directory that has never existed; user and system CPU of each alongside
        copies = [WORK / f"lab-{n}-copy{k}" for k in range(rounds)]
        for c in copies:
            shutil.copytree(root, c)
        firsts = []
        for k, c in enumerate(copies):
            w, _ = run([PROV, "site", "build", "--cache", "--out", str(WORK / f"site-{n}-{k}")], None, env=env(c))
            firsts.append((w, *LAST_CPU))
        r["site_s"] = statistics.median(w for w, _, _ in firsts)
        r["site_runs"] = [[round(x, 2) for x in f] for f in firsts]  # (wall, user, sys) of each
        site = WORK / f"site-{n}-0"
        r["index_html_bytes"] = (site / "index.html").stat().st_size if (site / "index.html").exists() else None
        s = Store(copies[0])  # one new run, then the rebuild
        s.put_bytes(record_bytes(n, 0.5, "A++"), "record")
        s.close()
        r["site_rebuild_s"], _ = run([PROV, "site", "build", "--cache", "--out", str(site)], None, env=env(copies[0]))
        print(f"lab {n}: {json.dumps(r)}", flush=True)

    # -- a release's log bundle after 999 releases ---------------------------------------------
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
    lroot = WORK / "releases"
    shutil.rmtree(lroot, ignore_errors=True)
    s = Store(lroot, create=True)
    key = Ed25519PrivateKey.generate()
    for i in range(999):
        translog.open_log(s).append(translog.entry_bytes("statement", f"{i:064x}", f"{i:064x}"))
        logbook.checkpoint(s, key)
    b3 = s.put_bytes(canonical.dumps({"_type": "https://in-toto.io/Statement/v1", "n": 1000}), "statement").blake3
    res["bundle_bytes"] = len(json.dumps(logbook.release_log_bundle(s, b3, key)))
    s.close()

    # -- the table ------------------------------------------------------------------------------
    st = res["store"]
    for k in st:
        rows.append((f"add 10k objects into a {k:,} store / into an empty store",
                     f"{st[k]['add10k_s'] / st[k]['add10k_empty_s']:.2f} (wall, user, sys: {st[k]['add10k_runs']} / "
                     f"{st[k]['add10k_empty_runs']})", "<= 1.3"))
    if st:
        rows.append(("index bytes per object",
                     " / ".join(f"{st[k]['index_bytes_per_object']:.0f} ({k:,})" for k in st), "<= 200"))
    if "readd" in res:
        rr = res["readd"]
        rows.append(("re-add unchanged 20k files / `git add -A` re-add",
                     f"{rr['prov_s'] / rr['git_s']:.2f} ({rr['prov_s']:.3f} s / {rr['git_s']:.3f} s; "
                     f"WAL +{rr['wal_growth_bytes']} B)", "<= 3"))
    for k in st:
        rows.append((f"fsck {k:,} objects / `find | xargs b3sum`",
                     f"{st[k]['fsck_s'] / st[k]['b3sum_s']:.2f}; peak RSS {st[k]['fsck_rss']:.0f} MiB", "<= 1.5; <= 100 MiB"))
    for k in st:
        rows.append((f"gc and `log verify` peak RSS at {k:,}",
                     f"{st[k]['gc_rss']:.0f} / {st[k]['logverify_rss']:.0f} MiB "
                     f"({st[k]['gc_s']:.2f} s / {st[k]['logverify_s']:.2f} s)", "<= 100 MiB"))
    for n, r in res["lab"].items():
        rows.append((f"`frontier`, `annotate` at {n:,} runs / `prov --help`",
                     f"{r['frontier_s'] / help_s:.2f}, {r['annotate_s'] / help_s:.2f} "
                     f"(reject {r['reject_s'] / help_s:.2f}, show --limit 20 {r['show_limit_s'] / help_s:.2f})", "<= 2"))
        rows.append((f"`site build` at {n:,} runs (first; after one new run); index page",
                     f"{r['site_s']:.2f} s (wall, user, sys: {r['site_runs']}); "
                     f"{r['site_rebuild_s']:.2f} s ({r['site_rebuild_s'] / help_s:.0f}x --help); "
                     f"{(r['index_html_bytes'] or 0) / 1024:.0f} KB", "<= 5 s; <= 300 KB"))
    rows.append(("release log bundle after 999 releases", f"{res['bundle_bytes']:,} bytes", "<= 4 KB"))
    print(f"\n`prov --help`: {help_s:.3f} s; {len(os.sched_getaffinity(0))} cores\n")
    print("| operation | measured (ratio) | target |\n|---|---|---|")
    for op, m, t in rows:
        print(f"| {op} | {m} | {t} |")
    if len(st) > 1:
        print("\ngrowth exponents (time ~ n^k) between store sizes:")
        ks = sorted(st)
        for op in ("add10k_s", "fsck_s", "b3sum_s", "gc_s", "logverify_s"):
            print(f"  {op:14s} " + "  ".join(f"{ks[i]:,}->{ks[i + 1]:,}: {exponent((ks[i], st[ks[i]][op]), (ks[i + 1], st[ks[i + 1]][op])):.2f}"
                                              for i in range(len(ks) - 1)))
    if len(res["lab"]) > 1:
        ks = sorted(res["lab"])
        print("growth exponents between lab sizes:")
        for op in ("frontier_s", "annotate_s", "reject_s", "show_limit_s", "site_s", "site_rebuild_s"):
            lab = res["lab"]
            print(f"  {op:14s} " + "  ".join(f"{ks[i]:,}->{ks[i + 1]:,}: {exponent((ks[i], lab[ks[i]][op]), (ks[i + 1], lab[ks[i + 1]][op])):.2f}"
                                              for i in range(len(ks) - 1)))
    _clean()
    (WORK / "results.json").write_text(json.dumps(res, indent=1, default=str))


def _clean() -> int:
    """Delete what a run made under WORK (results.json stays); how many entries went."""
    stale = [p for p in WORK.iterdir() if p.name != "results.json"] if WORK.exists() else []
    for old in stale:
        shutil.rmtree(old) if old.is_dir() else old.unlink()
    return len(stale)


if __name__ == "__main__":
    main()
