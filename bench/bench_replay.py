"""Issue #6 benchmark: replay of a miniature sample with the sandbox against --no-sandbox,
alternated in the same run.

    .venv/bin/python bench/bench_replay.py [--rounds 7] [--sample half]
"""

from __future__ import annotations

import argparse
import subprocess
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from common import OUT, PROV, compare, fresh, report  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--rounds", type=int, default=7)
    ap.add_argument("--sample", default="half")
    ap.add_argument("--device", default="cpu")
    a = ap.parse_args()
    work = fresh(OUT / "replay")
    mini = work / "mini"
    subprocess.run([PROV, "miniature", "build", str(mini)], check=True, capture_output=True)
    sub = mini / "submissions" / a.sample
    base = f"PROV_STORE={work}/store {PROV} replay --archive {sub}/archive.zip --runtime {sub}/runtime " \
           f"--upstream {mini}/upstream --device {a.device}"
    subprocess.run(base, shell=True, check=True, capture_output=True)  # warm caches and the store
    res = compare({"replay (sandboxed)": base, "replay --no-sandbox": base + " --no-sandbox"}, a.rounds)
    report(f"replay of miniature sample '{a.sample}' ({a.device})", res, "replay --no-sandbox")


if __name__ == "__main__":
    main()
