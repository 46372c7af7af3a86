"""Issue #17 benchmark: eight miniature replays as one batch, Ray (embedded, this machine's
cores) against sequential `--engine local`, alternated in the same run; then Ray's own
overhead per task (start-up, moving inputs and outputs by digest) as a share of one replay.

    .venv/bin/python bench/bench_batch.py [--rounds 1] [--n 8]
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from common import OUT, PROV, compare, fresh, report  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--rounds", type=int, default=1)
    ap.add_argument("--n", type=int, default=8)
    a = ap.parse_args()
    work = fresh(OUT / "batch")
    mini = work / "mini"
    subprocess.run([PROV, "miniature", "build", str(mini)], check=True, capture_output=True)
    subs = work / "subs"
    for i in range(a.n):  # the two samples, alternately, under their own names
        shutil.copytree(mini / "submissions" / ("copy", "half")[i % 2], subs / f"s{i}", symlinks=True)
    cmd = f"{PROV} --store {{store}} batch replay --submissions {subs} --upstream {mini}/upstream --json " \
          f"--out {work}/{{store_name}}-out --engine {{engine}}"
    tools = {e: cmd.format(store=work / f"store-{e}", store_name=e, engine=e) for e in ("ray", "local")}
    setup = {e: (lambda e=e: shutil.rmtree(work / f"store-{e}", ignore_errors=True)) for e in tools}
    res = compare({f"batch --engine {e}": c for e, c in tools.items()}, a.rounds, setup)
    report(f"{a.n} miniature replays, one batch (embedded Ray on this machine vs one after another)", res,
           "batch --engine local")
    local = json.loads((work / "local-out" / "batch.json").read_text())["results"]
    one = statistics.median(r["wall"] for r in local)

    # Ray's own cost: start an embedded Ray and run one empty task; move one task's inputs and outputs
    code = ("import time,ray;from provenance.lab.batch import _loopback_only;_loopback_only(None);t=time.perf_counter();"
            "ray.init(include_dashboard=False,object_store_memory=128<<20,log_to_driver=False);"
            "ray.get(ray.remote(lambda:1).remote());print(time.perf_counter()-t);ray.shutdown()")
    startup = float(subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                                   check=True).stdout.split()[-1])
    from provenance.lab import batch as B
    from provenance.store.objects import Store
    lab = Store(work / "store-local")
    b = B.ReplayBatch(lab, B.collect(subs, ["s1"]), mini / "upstream")
    meet = {"kind": "dir", "path": str(fresh(work / "meet"))}
    t = time.perf_counter()
    task = b.tasks(meet)[0]  # hash (cached) and publish the inputs
    rec = next(r for r in local if r["name"] == "s1")
    outs = B.closure(lab, [lab.resolve(rec["record"]).blake3])
    B.publish(lab, outs, B.meeting(meet))
    worker = Store(fresh(work / "worker") / "store", create=True)
    B.fetch(worker, task["inputs"] + outs, B.meeting(meet))  # what a worker and the head fetch, re-hashed
    transfer = time.perf_counter() - t
    print(f"\n## Ray's overhead per task, as a share of one replay (median replay {one:.2f} s)")
    print(f"  start-up (embedded Ray, one empty task)  {startup / one:6.1%}  (once per batch; "
          f"{startup / one / a.n:5.1%} per task over {a.n})")
    print(f"  transfer by digest (publish + fetch + re-hash, inputs and outputs)  {transfer / one:6.1%}")


if __name__ == "__main__":
    main()
