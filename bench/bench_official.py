"""Issue #25: the official evaluator on CPU, in its own environment, on labelled stand-ins.

1. a whole `prov replay --python ENV` (intake, store, verified export, probe, the official evaluator in
   the sandbox, record) against the official `evaluate.sh` run directly on the same inputs, alternated
   (both single-threaded, as the sandbox runs: the same result bits);
2. what a full replay costs here: the official evaluate.sh at two clip lengths; the difference gives
   wall seconds per 100 samples, beside the peak memory of the larger run.

Needs the environment scripts/official.sh builds (.cache/official/env, or OFFICIAL_ENV) and ffmpeg.

    .venv/bin/python bench/bench_official.py [--rounds 3] [--frames 20] [--long 60] [--sample no_compress]
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from common import OUT, PROV, compare, fresh, report, run  # noqa: E402

REPO = Path(__file__).resolve().parent.parent
TAR = Path(os.environ.get("OFFICIAL_TAR", REPO.parent / "shared/official/official-d0013db.tar.gz"))
ENV = Path(os.environ.get("OFFICIAL_ENV", REPO / ".cache/official/env"))


def upstream(work: Path, frames: int, sample: str) -> Path:
    up = fresh(work / f"up{frames}")
    subprocess.run(["tar", "-xzf", TAR, "-C", up], check=True)
    subprocess.run([ENV / "bin/python", REPO / "scripts/official_standins.py", up, "--frames", str(frames)],
                   check=True, capture_output=True)
    subprocess.run(["bash", f"submissions/{sample}/compress.sh"], cwd=up, check=True, capture_output=True,
                   env=dict(os.environ, PATH=f"{ENV / 'bin'}:{os.environ['PATH']}"))
    return up


def evaluate_cmd(up: Path, sample: str) -> str:
    target = up / "submissions" / sample
    return (f"rm -rf {target}/archive {target}/inflated {target}/report.txt; cd {up} && OMP_NUM_THREADS=1 "
            f"MKL_NUM_THREADS=1 PATH={ENV / 'bin'}:$PATH bash evaluate.sh --submission-dir {target} --device cpu")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--frames", type=int, default=20)
    ap.add_argument("--long", type=int, default=60, help="frames of the longer clip for the per-sample cost")
    ap.add_argument("--sample", default="no_compress")
    a = ap.parse_args()
    if not (ENV / "prov-env.json").is_file():
        raise SystemExit(f"bench_official: {ENV}: the official environment is not built (bash scripts/official.sh)")
    work = fresh(OUT / "official")
    up = upstream(work, a.frames, a.sample)
    rt = work / "runtime"
    shutil.copytree(up / "submissions" / a.sample, rt, ignore=shutil.ignore_patterns("archive", "archive.zip"))
    archive = work / "archive.zip"
    shutil.copyfile(up / "submissions" / a.sample / "archive.zip", archive)
    replay = (f"PROV_STORE={work}/store {PROV} replay --archive {archive} --runtime {rt} --upstream {up} "
              f"--python {ENV} --name {a.sample}")
    subprocess.run(replay, shell=True, check=True, capture_output=True)  # warm caches and the store
    direct = evaluate_cmd(up, a.sample)
    res = compare({"prov replay --python": replay, "evaluate.sh directly": direct}, a.rounds)
    report(f"whole replay vs the official evaluate.sh ('{a.sample}', {a.frames // 2} samples, cpu)", res,
           "evaluate.sh directly")

    longer = upstream(work, a.long, a.sample)
    short_w, _ = min(run(direct) for _ in range(a.rounds))
    long_cmd = evaluate_cmd(longer, a.sample)
    long_w, rss = min(run(long_cmd) for _ in range(a.rounds))
    per100 = (long_w - short_w) / ((a.long - a.frames) // 2) * 100
    print(f"\n## the official evaluator on CPU here ({a.sample}, single-threaded)")
    print(f"  {a.frames // 2} samples {short_w:.1f} s, {a.long // 2} samples {long_w:.1f} s: "
          f"{per100:.0f} s per 100 samples; peak RSS {rss:.0f} MiB")
    print(f"  a full 600-sample replay: about {short_w + per100 * (600 - a.frames // 2) / 100:.0f} s")


if __name__ == "__main__":
    main()
