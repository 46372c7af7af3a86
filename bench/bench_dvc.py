"""Issue #7 benchmark: wall time of a full `dvc repro` split per stage, and of a no-op `dvc repro`,
in a temporary clone of the working tree.

    .venv/bin/python bench/bench_dvc.py [--noop-rounds 5]
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))
sys.path.insert(0, str(Path(__file__).parent))
from common import OUT, VENV_BIN, fresh  # noqa: E402
from test_dvc import clone_worktree  # noqa: E402

ENV = dict(os.environ, PATH=f"{VENV_BIN}:{os.environ['PATH']}")


def timed(cmd, cwd) -> float:
    t = time.perf_counter()
    subprocess.run(cmd, cwd=cwd, env=ENV, check=True, capture_output=True)
    return time.perf_counter() - t


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--noop-rounds", type=int, default=5)
    a = ap.parse_args()
    repo = clone_worktree(fresh(OUT / "dvc"))
    dvc = str(VENV_BIN / "dvc")
    stages = ["miniature", "replay@copy", "replay@half", "release", "verify", "site"]
    per = {s: timed([dvc, "repro", "--single-item", s], repo) for s in stages}
    total = sum(per.values())
    print("\n## full dvc repro, per stage (dvc repro --single-item, in pipeline order)")
    for s, t in per.items():
        print(f"  {s:14s} {t:7.2f} s  ({100 * t / total:4.1f}%)")
    print(f"  {'total':14s} {total:7.2f} s")
    noop = [timed([dvc, "repro"], repo) for _ in range(a.noop_rounds)]
    print(f"\n## no-op dvc repro: median {statistics.median(noop):.2f} s over {len(noop)} runs")


if __name__ == "__main__":
    main()
