"""Issue #2 benchmarks: prov hash / add against openssl, b3sum, cp+sync, dvc add and git add.

    .venv/bin/python bench/bench_store.py [--size-gib 2] [--files 20000] [--rounds 3]
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from common import OUT, PROV, VENV_BIN, compare, drop, fresh, report, run  # noqa: E402


def big_file(path: Path, gib: float) -> Path:
    if not path.exists() or path.stat().st_size != int(gib * (1 << 30)):
        block = os.urandom(1 << 24)
        with open(path, "wb") as f:
            for i in range(int(gib * 64)):
                f.write(block[i % 7:] + block[:i % 7])
    subprocess.run(["cat", str(path)], stdout=subprocess.DEVNULL, check=True)  # warm the page cache
    return path


def bench_hash(f: Path, rounds: int) -> None:
    tools = {"prov hash (sha256+blake3)": [PROV, "hash", str(f)],
             "openssl dgst -sha256": ["openssl", "dgst", "-sha256", str(f)]}
    if shutil.which("b3sum"):
        tools["b3sum"] = ["b3sum", "--num-threads", "1", str(f)]
        tools["b3sum (all cores)"] = ["b3sum", str(f)]
    report(f"hash a {f.stat().st_size / (1 << 30):.1f} GiB file", compare(tools, rounds), "openssl dgst -sha256")


def bench_add(f: Path, rounds: int, work: Path) -> None:
    store, cpdst, dvcdir = work / "store", work / "copy.bin", work / "dvcrepo"
    env_store = f"PROV_STORE={store}"
    tools = {"prov add (durable)": f"{env_store} {PROV} add {f}",
             "cp + sync": f"cp {f} {cpdst} && sync"}
    setup = {"prov add (durable)": drop(store), "cp + sync": lambda: cpdst.unlink(missing_ok=True)}
    dvc = VENV_BIN / "dvc"
    if dvc.exists():
        def dvc_setup():
            fresh(dvcdir)
            subprocess.run(["git", "init", "-q"], cwd=dvcdir, check=True)
            subprocess.run([str(dvc), "init", "-q"], cwd=dvcdir, check=True)
            shutil.copyfile(f, dvcdir / "data.bin")
            subprocess.run(["sync"], check=True)
        tools["dvc add"] = f"cd {dvcdir} && {dvc} add -q data.bin && sync"
        setup["dvc add"] = dvc_setup
    report(f"store a {f.stat().st_size / (1 << 30):.1f} GiB file durably", compare(tools, rounds, setup), "cp + sync")


def bench_tree(n: int, rounds: int, work: Path) -> None:
    src = work / "tree"
    if not (src / "done").exists():
        fresh(src)
        for i in range(n):
            d = src / f"d{i // 500:03d}"
            d.mkdir(exist_ok=True)
            (d / f"f{i:05d}.bin").write_bytes(os.urandom(4096))
        (src / "done").write_text("")
    store, git_repo = work / "tstore", work / "gitrepo"
    first, readd, gitadd = [], [], []
    for _ in range(rounds):
        drop(store)()
        first.append(run(f"PROV_STORE={store} {PROV} add {src}")[0])
        readd.append(run(f"PROV_STORE={store} {PROV} add {src}")[0])
        fresh(git_repo)
        subprocess.run(["git", "init", "-q"], cwd=git_repo, check=True)
        gitadd.append(run(f"git --git-dir={git_repo}/.git --work-tree={src} add -A")[0])
    import statistics as st
    f, r, g = st.median(first), st.median(readd), st.median(gitadd)
    print(f"\n## tree of {n} files x 4 KiB")
    print(f"  prov add (first)       median {f:8.4f} s  ratio vs git add -A: {f / g:5.2f}")
    print(f"  prov add (unchanged)   median {r:8.4f} s  = {100 * r / f:5.1f}% of first")
    print(f"  git add -A (fresh)     median {g:8.4f} s")


def bench_startup(rounds: int, work: Path) -> None:
    small = work / "small.txt"
    small.write_bytes(b"hello\n" * 100)
    tools = {"prov --help": [PROV, "--help"], "prov hash small": [PROV, "hash", str(small)],
             "openssl dgst -sha256 small": ["openssl", "dgst", "-sha256", str(small)]}
    report("whole-process start-up", compare(tools, rounds), "openssl dgst -sha256 small")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--size-gib", type=float, default=2.0)
    ap.add_argument("--files", type=int, default=20000)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--only", choices=["hash", "add", "tree", "startup"])
    a = ap.parse_args()
    work = OUT / "store"
    work.mkdir(parents=True, exist_ok=True)
    if a.only in (None, "startup"):
        bench_startup(max(a.rounds, 20), work)
    if a.only in (None, "hash", "add"):
        f = big_file(work / "big.bin", a.size_gib)
        if a.only in (None, "hash"):
            bench_hash(f, a.rounds)
        if a.only in (None, "add"):
            bench_add(f, a.rounds, work)
    if a.only in (None, "tree"):
        bench_tree(a.files, a.rounds, work)


if __name__ == "__main__":
    main()
