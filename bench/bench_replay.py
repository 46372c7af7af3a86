"""Issues #6 and #11: replay of a miniature sample.

1. sandboxed (phase views, whole-phase caps, seccomp) against --no-sandbox, alternated;
2. a whole `prov replay` (intake, store, verified export, probe, pinned evaluator, record)
   against running the miniature's own `evaluate.sh` on the same submission directly.

    .venv/bin/python bench/bench_replay.py [--rounds 7] [--sample half]
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from common import OUT, PROV, VENV_BIN, compare, fresh, report  # noqa: E402


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
    report(f"replay of miniature sample '{a.sample}' ({a.device}): sandbox overhead", res, "replay --no-sandbox")

    # the miniature's own evaluate.sh, run directly on a checkout holding the submission
    direct = work / "direct"
    shutil.copytree(mini / "upstream", direct)
    target = direct / "submissions" / a.sample
    shutil.copytree(sub / "runtime", target, symlinks=True)
    shutil.copyfile(sub / "archive.zip", target / "archive.zip")
    clean = f"rm -rf {target}/archive {target}/inflated {target}/report.txt"
    evaluate = f"{clean}; PATH={VENV_BIN}:$PATH bash {direct}/evaluate.sh --submission-dir {target} " \
               f"--device {a.device} >/dev/null"
    subprocess.run(evaluate, shell=True, check=True, capture_output=True)
    res = compare({"prov replay": base, "evaluate.sh directly": evaluate}, a.rounds)
    report(f"whole replay vs the miniature's evaluate.sh ('{a.sample}', {a.device})", res, "evaluate.sh directly")


if __name__ == "__main__":
    main()
